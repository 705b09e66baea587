// Dense layers through cuBLASLt: bf16 inputs and outputs, f32 accumulation.
//
// Row-major tensors are column-major transposes, so every product below is
// written for cuBLASLt's column-major D (m,n) = op(A) (m,k) @ op(B) (k,n):
//
//   forward   out (N,OC)  = inp (N,C) @ W (OC,C)^T + bias
//             col-major out^T (OC,N) = T(W memory, (C,OC) ld C) @ N(inp memory, (C,N) ld C)
//             m=OC n=N k=C; the bias has one value per row of D (per OC), as BIAS wants.
//   dinp      dinp (N,C)  = dout (N,OC) @ W (OC,C)
//             col-major dinp^T (C,N) = N(W memory, (C,OC) ld C) @ N(dout memory, (OC,N) ld OC)
//             m=C n=N k=OC, beta 0 (activation gradients are overwritten)
//   dweight   dweight (OC,C) += dout^T @ inp
//             col-major dweight^T (C,OC) = N(inp memory, (C,N) ld C) @ T(dout memory, (OC,N) ld OC)
//             m=C n=OC k=N, beta 1 (parameter gradients accumulate)
//   dbias     dbias (OC) += sum_n dout[n,:]   own deterministic two-stage column sum
//
// Epilogues: BIAS, GELU_AUX / GELU_AUX_BIAS (aux = pre_act, the pre-activation
// the backward needs; out = gelu(pre)), DGELU (aux = dact_pre: dinp = (dout @ W)
// * gelu'(pre)). ReLU² (model.activation: relu2) has no cuBLASLt epilogue: the
// plain product is followed by one fused elementwise pass, bias_relu2_kernel
// (pre = product + bias, out = relu(pre)^2, one read and two writes of (N,OC))
// and in the backward drelu2_kernel (dinp *= 2 relu(pre)).
// With MatmulBwd::dact_dbias and kernels.matmul.bgrad = 1 (GELU only),
// DGELU_BGRAD: the same dinp plus its column sums (one per row of the
// column-major D, m = C) into an f32 scratch vector, added into dact_dbias by
// a small kernel; otherwise (bgrad = 0, the default, or ReLU²) those sums are
// our own fixed-order column sum of dinp (bias_grad), as a separate backward
// would take them. The aux matrix must have a leading dimension that is a
// multiple of 8 and a 16-byte aligned pointer; where that fails, or cuBLASLt
// offers no algorithm for the epilogue, the plan falls back to the plain
// product followed by one of the elementwise kernels below (same function, one
// extra pass over the output). A plain product cuBLASLt has no algorithm for
// (odd leading dimensions, misaligned operands) runs a naive kernel instead. The bias gradient never uses BGRADB: that
// epilogue OVERWRITES its vector and its reduction order is unspecified, so a
// fixed-order column sum of our own keeps dbias accumulating and bit-stable.
//
// Plans: one per (shape, transposes, epilogue, pointer alignment class) and
// context, holding the matmul descriptor, the four layouts, the preference and
// up to kMaxAlgos heuristic results. kernels.matmul.algo picks the index among
// them (clamped to the number returned), or with -1 the fastest of them, timed
// on the shape at first use (tuned_index). Per call only the bias/aux pointers
// are set on the cached descriptor; there is never a heuristic query per call.
//
// kernels.matmul.dw_stream = 1: matmul_backward enqueues dweight and dbias on
// a second stream (a Lane: stream, cuBLASLt workspace, scratch slot), forked
// from the main stream before the dinp product, so the two products of a
// layer run side by side and the weight gradients overlap the next dinp too.
// Same products, same order of accumulation into each gradient: the results
// are bit-identical to dw_stream = 0. The join rules are in common.cuh.
#include <algorithm>
#include <limits>
#include <array>
#include <initializer_list>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

constexpr int kMaxAlgos = 8;

// Where products and the bias-gradient sums are enqueued: the main stream, or
// the side stream of kernels.matmul.dw_stream. Each lane has its own cuBLASLt
// workspace (of ctx.lt_workspace_bytes) and scratch slot, since two lanes'
// work may run at the same time.
struct Lane {
    cudaStream_t stream;
    void* workspace;
    Context::Slot partials;
};
Lane main_lane(const Context& ctx) { return Lane{ctx.stream, ctx.lt_workspace, Context::kMatmul}; }

// ---------------------------------------------------------------------------
// Elementwise kernels for the fallback paths and the bias gradient.

__device__ __forceinline__ float gelu_tanh(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    const float th = tanhf(u);
    const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

// out (N,OC) += bias (OC), in f32, rounded once.
__global__ void add_bias_kernel(__nv_bfloat16* out, const __nv_bfloat16* bias, size_t total, int OC) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x)
        out[i] = to_bf16(to_f32(out[i]) + to_f32(bias[i % OC]));
}

// pre (N,OC) holds inp @ W^T; pre += bias (optional); out = gelu(pre), with
// the GELU taken of the f32 sum as the epilogue does.
__global__ void bias_gelu_kernel(__nv_bfloat16* out, __nv_bfloat16* pre, const __nv_bfloat16* bias, size_t total, int OC) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
        const float p = to_f32(pre[i]) + (bias ? to_f32(bias[i % OC]) : 0.0f);
        pre[i] = to_bf16(p);
        out[i] = to_bf16(gelu_tanh(p));
    }
}

// pre (N,OC) holds inp @ W^T; pre += bias (optional); out = relu(pre)^2.
__global__ void bias_relu2_kernel(__nv_bfloat16* out, __nv_bfloat16* pre, const __nv_bfloat16* bias, size_t total, int OC) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
        const float p = to_f32(pre[i]) + (bias ? to_f32(bias[i % OC]) : 0.0f);
        const float r = fmaxf(p, 0.0f);
        pre[i] = to_bf16(p);
        out[i] = to_bf16(r * r);
    }
}

// dinp (N,C) *= relu2'(pre (N,C)) = 2 relu(pre).
__global__ void drelu2_kernel(__nv_bfloat16* dinp, const __nv_bfloat16* pre, size_t total) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
        const float p = to_f32(pre[i]);
        dinp[i] = to_bf16(p > 0.0f ? 2.0f * p * to_f32(dinp[i]) : 0.0f);
    }
}

// dinp (N,C) *= gelu'(pre (N,C)).
__global__ void dgelu_kernel(__nv_bfloat16* dinp, const __nv_bfloat16* pre, size_t total) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x)
        dinp[i] = to_bf16(to_f32(dinp[i]) * gelu_tanh_grad(to_f32(pre[i])));
}

// D (m,n) = op(A) @ op(B) + beta * D, column-major like cuBLASLt, one thread
// per output element, f32 accumulation in k order. Only for products cuBLASLt
// has no algorithm for (odd leading dimensions, misaligned operands): slow,
// but the op never fails for a shape it accepts.
__global__ void naive_gemm_kernel(__nv_bfloat16* D, const __nv_bfloat16* A, const __nv_bfloat16* B, int m, int n, int k, bool ta,
                                  bool tb, int lda, int ldb, int ldd, float beta) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m) return;
    for (int j = blockIdx.y * blockDim.y + threadIdx.y; j < n; j += gridDim.y * blockDim.y) {
        float acc = 0.0f;
        for (int p = 0; p < k; p++) {
            const float a = to_f32(ta ? A[p + size_t(i) * lda] : A[i + size_t(p) * lda]);
            const float b = to_f32(tb ? B[j + size_t(p) * ldb] : B[p + size_t(j) * ldb]);
            acc += a * b;
        }
        __nv_bfloat16& d = D[i + size_t(j) * ldd];
        d = to_bf16(beta != 0.0f ? acc + beta * to_f32(d) : acc);
    }
}

// Bias gradient, stage 1. Block (32, kBiasLanes): 32 consecutive columns (one
// per lane, so a warp reads 64 contiguous bytes of a row) by kBiasLanes row
// lanes. Block (x, y) sums rows [y*kBiasRows, (y+1)*kBiasRows) of its columns:
// each lane strides rows by kBiasLanes in order, then the lanes are added in
// lane order through shared memory. With kDirect (one row chunk) the result is
// added straight into dbias; otherwise partial (chunks, OC) f32 is written.
constexpr int kBiasLanes = 8;
constexpr int kBiasRows = 512;

template <bool kDirect>
__global__ void bias_grad_partial_kernel(float* partial, __nv_bfloat16* dbias, const __nv_bfloat16* dout, int N, int OC) {
    __shared__ float sums[kBiasLanes][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * kBiasRows, r1 = min(N, r0 + kBiasRows);
    float acc = 0.0f;
    if (col < OC)
        for (int r = r0 + threadIdx.y; r < r1; r += kBiasLanes) acc += to_f32(dout[size_t(r) * OC + col]);
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y != 0 || col >= OC) return;
    float s = 0.0f;
    for (int l = 0; l < kBiasLanes; l++) s += sums[l][threadIdx.x];
    if constexpr (kDirect)
        dbias[col] = to_bf16(to_f32(dbias[col]) + s);
    else
        partial[size_t(blockIdx.y) * OC + col] = s;
}

// dbias (n) += src (n) f32, rounded once: DGELU_BGRAD's column sums into the gradient.
__global__ void add_f32_kernel(__nv_bfloat16* dbias, const float* src, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dbias[i] = to_bf16(to_f32(dbias[i]) + src[i]);
}

// Bias gradient, stage 2: dbias[c] += sum over chunks of partial[chunk][c], in chunk order.
__global__ void bias_grad_reduce_kernel(__nv_bfloat16* dbias, const float* partial, int chunks, int OC) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= OC) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; k++) s += partial[size_t(k) * OC + col];
    dbias[col] = to_bf16(to_f32(dbias[col]) + s);
}

// Grid for a grid-stride elementwise kernel over `total` elements.
unsigned elementwise_blocks(const Context& ctx, size_t total, int threads) {
    const size_t want = (total + threads - 1) / threads;
    const size_t cap = size_t(std::max(1, ctx.prop.multiProcessorCount)) * 16;
    return unsigned(std::max<size_t>(1, std::min(want, cap)));
}

void bias_grad(Context& ctx, const Lane& lane, __nv_bfloat16* dbias, const __nv_bfloat16* dout, int N, int OC) {
    const int chunks = (N + kBiasRows - 1) / kBiasRows;
    const dim3 block(32, kBiasLanes), grid((OC + 31) / 32, chunks);
    if (chunks == 1) {
        bias_grad_partial_kernel<true><<<grid, block, 0, lane.stream>>>(nullptr, dbias, dout, N, OC);
        GPT_CUDA_LAUNCH_CHECK();
        return;
    }
    float* partial = static_cast<float*>(ctx.scratch(lane.partials, size_t(chunks) * OC * sizeof(float)));
    bias_grad_partial_kernel<false><<<grid, block, 0, lane.stream>>>(partial, nullptr, dout, N, OC);
    GPT_CUDA_LAUNCH_CHECK();
    bias_grad_reduce_kernel<<<(OC + 255) / 256, 256, 0, lane.stream>>>(dbias, partial, chunks, OC);
    GPT_CUDA_LAUNCH_CHECK();
}
void bias_grad(Context& ctx, __nv_bfloat16* dbias, const __nv_bfloat16* dout, int N, int OC) {
    bias_grad(ctx, main_lane(ctx), dbias, dout, N, OC);
}

// ---------------------------------------------------------------------------
// Plans.

// Largest power of two (up to 16) dividing the address: cuBLASLt picks kernels
// by the alignment it is promised, so plans are keyed by it.
int align_class(const void* p) {
    if (!p) return 16;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return int(std::min<uintptr_t>(16, a & (~a + 1)));
}

struct PlanKey {
    int m, n, k;
    bool ta, tb;
    int lda, ldb, ldd;
    int epilogue;  // cublasLtEpilogue_t
    int align_a, align_b, align_d, align_bias, align_aux;
    auto tie() const { return std::tie(m, n, k, ta, tb, lda, ldb, ldd, epilogue, align_a, align_b, align_d, align_bias, align_aux); }
    bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    std::array<cublasLtMatmulHeuristicResult_t, kMaxAlgos> results{};
    int n_results = 0;  // 0: cuBLASLt offers nothing for this epilogue (the caller falls back)
    int tuned = -1;     // matmul.algo = -1: the fastest result on this shape, once timed
    bool warned = false;  // the naive-kernel notice was printed for this plain product

    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
        // Destroy errors are ignored: this runs from the backend's destructor.
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

// The plan caches of every live Context, released by matmul_release.
std::mutex g_mutex;
std::map<const Context*, std::map<PlanKey, std::unique_ptr<Plan>>> g_plans;

// Operand pointers and epilogue of one product. bias and aux may be null.
struct Gemm {
    PlanKey key;
    const void* A;
    const void* B;
    void* D;
    const void* bias;
    const void* aux;  // GELU pre-activation (aux ld = ldd)
    float beta;
};

std::unique_ptr<Plan> make_plan(Context& ctx, const Gemm& g) {
    const PlanKey& k = g.key;
    auto p = std::make_unique<Plan>();
    GPT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    const cublasLtEpilogue_t epi = cublasLtEpilogue_t(k.epilogue);
    GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (g.bias) {
        // The bias gradient of DGELU_BGRAD goes to f32 scratch; a bias read by BIAS/GELU_AUX_BIAS is bf16.
        const cudaDataType_t bt = epi == CUBLASLT_EPILOGUE_DGELU_BGRAD ? CUDA_R_32F : CUDA_R_16BF;
        GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias));
    }
    if (g.aux) {
        const int64_t ld = k.ldd;
        GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
        GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof g.aux));
    }
    // Stored shapes: A is (m,k) after op, so (k,m) in memory when transposed.
    GPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k.ta ? k.k : k.m, k.ta ? k.m : k.k, k.lda));
    GPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k.tb ? k.n : k.k, k.tb ? k.k : k.n, k.ldb));
    GPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, CUDA_R_16BF, k.m, k.n, k.ldd));
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&p->pref));
    const uint64_t ws = ctx.lt_workspace_bytes;
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    const uint32_t aa = k.align_a, ab = k.align_b, ad = k.align_d;
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa));
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab));
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof ad));
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof ad));
    // NOT_SUPPORTED (or zero results) means no kernel implements this
    // combination: an empty plan, which the callers answer with a fallback.
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p->desc, p->a, p->b, p->d, p->d, p->pref, kMaxAlgos,
                                                            p->results.data(), &p->n_results);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) p->n_results = 0;
    else if (s != CUBLAS_STATUS_SUCCESS) fail_cublas(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
    return p;
}

// The cached plan for g, created on first use (heuristic query included);
// its n_results is 0 when cuBLASLt has no algorithm for it.
Plan& plan_for(Context& ctx, const Gemm& g) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto& cache = g_plans[&ctx];
    auto it = cache.find(g.key);
    if (it == cache.end()) it = cache.emplace(g.key, make_plan(ctx, g)).first;
    return *it->second;
}

// kernels.matmul.algo = -1: times every heuristic result on this shape at its
// first use (a warm-up run, then the best of three, with events) and keeps the
// fastest for the life of the plan. With beta = 0 the candidates write the
// real output D itself (and the epilogue's aux or bias-gradient output): the
// real run that follows rewrites all of them, so no extra memory is needed
// (the lm_head's D at B=64 is 6.6 GB). An accumulating product (beta = 1, the
// weight gradients) must not add into the real D: its candidates write a
// scratch copy, allocated for the timing only and freed after it, and a D
// larger than kTuneScratchMax is not timed (heuristic order, index 0, with a
// notice). All candidates compute the same product up to f32 summation order;
// the search's autotuner checks the training losses of the whole choice
// before keeping it.
constexpr size_t kTuneScratchMax = size_t(512) << 20;

int tuned_index(Context& ctx, const Lane& lane, Plan& p, const Gemm& g) {
    if (p.tuned >= 0) return p.tuned;
    void* d = g.D;
    if (g.beta != 0.0f) {
        const size_t bytes = size_t(g.key.ldd) * size_t(g.key.n) * sizeof(__nv_bfloat16);
        if (bytes > kTuneScratchMax) {
            std::fprintf(stderr, "gpt: matmul.algo=-1: not timing m=%d n=%d k=%d (an accumulating product of %zu MiB, above the %zu MiB "
                         "timing scratch); using cuBLASLt's first choice\n", g.key.m, g.key.n, g.key.k, bytes >> 20,
                         kTuneScratchMax >> 20);
            p.tuned = 0;
            return 0;
        }
        d = ctx.scratch(Context::kMatmulTune, bytes);
    }
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    GPT_CUDA_CHECK(cudaEventCreate(&e0));
    GPT_CUDA_CHECK(cudaEventCreate(&e1));
    const float alpha = 1.0f;
    float best = std::numeric_limits<float>::infinity();
    int best_i = 0;
    for (int i = 0; i < p.n_results; i++) {
        float fastest = std::numeric_limits<float>::infinity();
        for (int r = 0; r < 4; r++) {
            GPT_CUDA_CHECK(cudaEventRecord(e0, lane.stream));
            const cublasStatus_t s = cublasLtMatmul(ctx.lt, p.desc, &alpha, g.A, p.a, g.B, p.b, &g.beta, d, p.d, d, p.d, &p.results[i].algo,
                                                    lane.workspace, ctx.lt_workspace_bytes, lane.stream);
            GPT_CUDA_CHECK(cudaEventRecord(e1, lane.stream));
            GPT_CUDA_CHECK(cudaEventSynchronize(e1));
            if (s != CUBLAS_STATUS_SUCCESS) break;  // this candidate cannot run here: never chosen
            float ms = 0;
            GPT_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
            if (r > 0) fastest = std::min(fastest, ms);
        }
        if (fastest < best) best = fastest, best_i = i;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (d != g.D) ctx.release_scratch(Context::kMatmulTune);
    p.tuned = best_i;
    return best_i;
}

void run_plan(Context& ctx, const Lane& lane, Plan& p, const Gemm& g) {
    if (g.bias) GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias));
    if (g.aux) GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof g.aux));
    const int algo = ctx.kernels.param("matmul", "algo");
    const int idx = algo < 0 ? tuned_index(ctx, lane, p, g) : std::clamp(algo, 0, p.n_results - 1);
    const float alpha = 1.0f;
    GPT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.desc, &alpha, g.A, p.a, g.B, p.b, &g.beta, g.D, p.d, g.D, p.d, &p.results[idx].algo,
                                    lane.workspace, ctx.lt_workspace_bytes, lane.stream));
}

// Runs g with its epilogue when cuBLASLt supports it, returning true; else
// returns false without running anything (the caller then runs the plain
// product and its own elementwise kernel).
bool try_epilogue(Context& ctx, const Gemm& g) {
    Plan& p = plan_for(ctx, g);
    if (p.n_results == 0) return false;
    run_plan(ctx, main_lane(ctx), p, g);
    return true;
}

// Runs the product of g with no epilogue: through cuBLASLt, or through the
// naive kernel where cuBLASLt has no algorithm for it.
void run_plain(Context& ctx, const Lane& lane, Gemm g) {
    g.key.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    g.key.align_bias = g.key.align_aux = 16;
    g.bias = g.aux = nullptr;
    Plan& p = plan_for(ctx, g);
    if (p.n_results > 0) {
        run_plan(ctx, lane, p, g);
        return;
    }
    const PlanKey& k = g.key;
    if (!p.warned) {
        // Once per shape, so that a slow step is explained rather than silent.
        std::fprintf(stderr, "gpt: matmul: cuBLASLt has no algorithm for m=%d n=%d k=%d (lda=%d ldb=%d ldd=%d); using the naive kernel\n",
                     k.m, k.n, k.k, k.lda, k.ldb, k.ldd);
        p.warned = true;
    }
    const dim3 block(32, 8), grid(unsigned((k.m + 31) / 32), unsigned(std::min((k.n + 7) / 8, 4096)));
    naive_gemm_kernel<<<grid, block, 0, lane.stream>>>(static_cast<__nv_bfloat16*>(g.D), static_cast<const __nv_bfloat16*>(g.A),
                                                       static_cast<const __nv_bfloat16*>(g.B), k.m, k.n, k.k, k.ta, k.tb, k.lda, k.ldb,
                                                       k.ldd, g.beta);
    GPT_CUDA_LAUNCH_CHECK();
}
void run_plain(Context& ctx, Gemm g) { run_plain(ctx, main_lane(ctx), g); }

PlanKey make_key(int m, int n, int k, bool ta, bool tb, int lda, int ldb, int ldd, cublasLtEpilogue_t epi, const void* A,
                 const void* B, const void* D, const void* bias, const void* aux) {
    return PlanKey{m, n, k, ta, tb, lda, ldb, ldd, int(epi), align_class(A), align_class(B), align_class(D), align_class(bias),
                   align_class(aux)};
}

void check_bf16(const char* op, std::initializer_list<std::pair<const char*, View>> views) {
    for (const auto& [arg, v] : views)
        if (v && v.dtype != DType::bf16)
            run_failed(std::string("backend cuda: ") + op + ": argument '" + arg + "' has dtype " + dtype_name(v.dtype) + ", expected bf16");
}

}  // namespace

void matmul_forward(Context& ctx, const MatmulFwd& a) {
    check_bf16("matmul_forward", {{"out", a.out}, {"inp", a.inp}, {"weight", a.weight}, {"bias", a.bias}, {"pre_act", a.pre_act}});
    const int N = a.N, C = a.C, OC = a.OC;
    if (N == 0 || OC == 0) return;
    if (C == 0) run_failed("matmul_forward: C = 0");
    const auto* inp = a.inp.as<__nv_bfloat16>();
    const auto* w = a.weight.as<__nv_bfloat16>();
    const auto* bias = a.bias.as<__nv_bfloat16>();
    auto* out = a.out.as<__nv_bfloat16>();
    auto* pre = a.pre_act.as<__nv_bfloat16>();
    const size_t total = size_t(N) * OC;

    if (pre && a.act == Activation::relu2) {
        // No ReLU² epilogue: the plain product into pre, then bias + ReLU² in one pass.
        Gemm g{make_key(OC, N, C, true, false, C, C, OC, CUBLASLT_EPILOGUE_DEFAULT, w, inp, pre, nullptr, nullptr), w, inp, pre, nullptr,
               nullptr, 0.0f};
        run_plain(ctx, g);
        bias_relu2_kernel<<<elementwise_blocks(ctx, total, 256), 256, 0, ctx.stream>>>(out, pre, bias, total, OC);
        GPT_CUDA_LAUNCH_CHECK();
        return;
    }
    if (pre) {
        // out = gelu(pre), pre = inp @ W^T + bias. The aux matrix (pre) shares D's ld (OC).
        const cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
        Gemm g{make_key(OC, N, C, true, false, C, C, OC, epi, w, inp, out, bias, pre), w, inp, out, bias, pre, 0.0f};
        // The bias vector is read by the epilogue with vector loads too: a bias
        // view at an odd offset (a layer slice with C % 8 != 0) takes the fallback
        // rather than a cublasLtMatmul that may reject it at run time.
        if (OC % 8 == 0 && align_class(pre) == 16 && align_class(bias) == 16 && try_epilogue(ctx, g)) return;
        g.D = pre;
        g.key.align_d = align_class(pre);
        run_plain(ctx, g);
        bias_gelu_kernel<<<elementwise_blocks(ctx, total, 256), 256, 0, ctx.stream>>>(out, pre, bias, total, OC);
        GPT_CUDA_LAUNCH_CHECK();
        return;
    }
    const cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    Gemm g{make_key(OC, N, C, true, false, C, C, OC, epi, w, inp, out, bias, nullptr), w, inp, out, bias, nullptr, 0.0f};
    if (!bias) {
        run_plain(ctx, g);
        return;
    }
    if (align_class(bias) == 16 && try_epilogue(ctx, g)) return;  // misaligned bias: fallback, as above
    run_plain(ctx, g);
    add_bias_kernel<<<elementwise_blocks(ctx, total, 256), 256, 0, ctx.stream>>>(out, bias, total, OC);
    GPT_CUDA_LAUNCH_CHECK();
}

namespace {

// The side lane of kernels.matmul.dw_stream; its stream, events and cuBLASLt
// workspace are created on first use (an eager step always precedes a
// recorded one, so never while recording).
Lane side_lane(Context& ctx) {
    if (!ctx.side_workspace) {
        if (!ctx.side) GPT_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx.side, cudaStreamNonBlocking));
        if (!ctx.side_fork) GPT_CUDA_CHECK(cudaEventCreateWithFlags(&ctx.side_fork, cudaEventDisableTiming));
        if (!ctx.side_done) GPT_CUDA_CHECK(cudaEventCreateWithFlags(&ctx.side_done, cudaEventDisableTiming));
        GPT_CUDA_CHECK(cudaMalloc(&ctx.side_workspace, ctx.lt_workspace_bytes));
    }
    return Lane{ctx.side, ctx.side_workspace, Context::kMatmulSide};
}


// dweight (OC,C) += dout^T @ inp (beta 1 reads and writes the same matrix),
// then dbias (OC) += the column sums of dout, on `lane`.
void weight_grads(Context& ctx, const Lane& lane, const MatmulBwd& a) {
    const int N = a.N, C = a.C, OC = a.OC;
    const auto* dout = a.dout.as<__nv_bfloat16>();
    const auto* inp = a.inp.as<__nv_bfloat16>();
    if (a.dweight) {
        auto* dw = a.dweight.as<__nv_bfloat16>();
        Gemm g{make_key(C, OC, N, false, true, C, OC, C, CUBLASLT_EPILOGUE_DEFAULT, inp, dout, dw, nullptr, nullptr), inp, dout, dw,
               nullptr, nullptr, 1.0f};
        run_plain(ctx, lane, g);
    }
    if (a.dbias) bias_grad(ctx, lane, a.dbias.as<__nv_bfloat16>(), dout, N, OC);
}

}  // namespace

void matmul_side_join_if_race(Context& ctx, std::initializer_list<SideRange> ranges) {
    if (ctx.side_pending && ranges_race(ranges, ctx.side_ranges)) matmul_side_join(ctx);
}

void matmul_side_join(Context& ctx, bool must_not_throw) {
    if (!ctx.side_pending) return;
    ctx.side_pending = false;
    ctx.side_ranges.clear();
    const cudaError_t e = cudaStreamWaitEvent(ctx.stream, ctx.side_done, 0);
    if (e == cudaSuccess) return;
    if (!must_not_throw) fail_cuda(e, "cudaStreamWaitEvent(side_done)", __FILE__, __LINE__);
    cudaGetLastError();
}

void matmul_backward(Context& ctx, const MatmulBwd& a) {
    check_bf16("matmul_backward", {{"dinp", a.dinp}, {"dweight", a.dweight}, {"dbias", a.dbias}, {"dout", a.dout}, {"inp", a.inp},
                                   {"weight", a.weight}, {"dact_pre", a.dact_pre}, {"dact_dbias", a.dact_dbias}});
    const int N = a.N, C = a.C, OC = a.OC;
    if (N == 0 || C == 0 || OC == 0) return;
    const auto* dout = a.dout.as<__nv_bfloat16>();
    const auto* w = a.weight.as<__nv_bfloat16>();

    // kernels.matmul.dw_stream: the weight gradients go to the side stream,
    // forked here, before the dinp product, which the main stream runs beside
    // them. Earlier side work that this call's main-stream products would race
    // (a dinp written over a buffer a pending dweight product still reads) is
    // waited for first; with dw_stream = 0 nothing is ever pending.
    const size_t e = sizeof(__nv_bfloat16);
    const bool on_side = (a.dweight || a.dbias) && ctx.kernels.param("matmul", "dw_stream") == 1;
    if (ctx.side_pending &&
        (!on_side || ranges_race({side_range(dout, size_t(N) * OC * e, false), side_range(w, size_t(OC) * C * e, false),
                                  side_range(a.dact_pre.ptr, size_t(N) * C * e, false), side_range(a.dinp.ptr, size_t(N) * C * e, true),
                                  side_range(a.dact_dbias.ptr, size_t(C) * e, true)},
                                 ctx.side_ranges)))
        matmul_side_join(ctx);
    if (on_side) {
        const Lane side = side_lane(ctx);
        GPT_CUDA_CHECK(cudaEventRecord(ctx.side_fork, ctx.stream));
        GPT_CUDA_CHECK(cudaStreamWaitEvent(ctx.side, ctx.side_fork, 0));
        weight_grads(ctx, side, a);
        GPT_CUDA_CHECK(cudaEventRecord(ctx.side_done, ctx.side));
        ctx.side_pending = true;
        for (const auto& r : {side_range(dout, size_t(N) * OC * e, false), side_range(a.inp.ptr, size_t(N) * C * e, false),
                              side_range(a.dweight.ptr, size_t(OC) * C * e, true), side_range(a.dbias.ptr, size_t(OC) * e, true)})
            if (r.begin != r.end) ctx.side_ranges.push_back(r);
    }

    if (a.dinp) {
        // dinp (N,C) = dout @ W, optionally times act'(dact_pre) (aux ld = C).
        auto* dinp = a.dinp.as<__nv_bfloat16>();
        const auto* pre = a.dact_pre.as<__nv_bfloat16>();
        const bool relu2 = pre && a.act == Activation::relu2;
        auto* act_dbias = pre ? a.dact_dbias.as<__nv_bfloat16>() : nullptr;
        bool dbias_done = false;
        if (act_dbias && !relu2 && ctx.kernels.param("matmul", "bgrad") == 1 && C % 8 == 0 && align_class(pre) == 16) {
            // DGELU_BGRAD: dinp and its column sums in one pass (f32 scratch, added below).
            float* sums = static_cast<float*>(ctx.scratch(Context::kBiasSums, size_t(C) * sizeof(float)));
            Gemm g{make_key(C, N, OC, false, false, C, OC, C, CUBLASLT_EPILOGUE_DGELU_BGRAD, w, dout, dinp, sums, pre), w, dout, dinp, sums,
                   pre, 0.0f};
            if (try_epilogue(ctx, g)) {
                add_f32_kernel<<<(C + 255) / 256, 256, 0, ctx.stream>>>(act_dbias, sums, C);
                GPT_CUDA_LAUNCH_CHECK();
                dbias_done = true;
            }
        }
        if (!dbias_done) {
            const cublasLtEpilogue_t epi = pre && !relu2 ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT;
            Gemm g{make_key(C, N, OC, false, false, C, OC, C, epi, w, dout, dinp, nullptr, relu2 ? nullptr : pre), w, dout, dinp, nullptr,
                   relu2 ? nullptr : pre, 0.0f};
            if (relu2) {
                run_plain(ctx, g);
                const size_t total = size_t(N) * C;
                drelu2_kernel<<<elementwise_blocks(ctx, total, 256), 256, 0, ctx.stream>>>(dinp, pre, total);
                GPT_CUDA_LAUNCH_CHECK();
            } else if (!pre) {
                run_plain(ctx, g);
            } else if (!(C % 8 == 0 && align_class(pre) == 16 && try_epilogue(ctx, g))) {
                run_plain(ctx, g);
                const size_t total = size_t(N) * C;
                dgelu_kernel<<<elementwise_blocks(ctx, total, 256), 256, 0, ctx.stream>>>(dinp, pre, total);
                GPT_CUDA_LAUNCH_CHECK();
            }
            // The activation layer's bias gradient: the same fixed-order column sum its own backward would take.
            if (act_dbias) bias_grad(ctx, act_dbias, dinp, N, C);
        }
    }
    if (!on_side) weight_grads(ctx, main_lane(ctx), a);
}

void column_sum_into(Context& ctx, __nv_bfloat16* dst, const __nv_bfloat16* src, int N, int C) { bias_grad(ctx, dst, src, N, C); }

void matmul_release(Context& ctx) {
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_plans.erase(&ctx);
    }
    // Errors ignored: this runs from the backend's teardown.
    if (ctx.side) cudaStreamSynchronize(ctx.side);
    if (ctx.side_workspace) cudaFree(ctx.side_workspace);
    if (ctx.side_done) cudaEventDestroy(ctx.side_done);
    if (ctx.side_fork) cudaEventDestroy(ctx.side_fork);
    if (ctx.side) cudaStreamDestroy(ctx.side);
    ctx.side_workspace = nullptr;
    ctx.side_done = ctx.side_fork = nullptr;
    ctx.side = nullptr;
    ctx.side_pending = false;
    ctx.side_ranges.clear();
}

}  // namespace gpt::cuda
