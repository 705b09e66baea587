// Muon of the CUDA backend: momentum, Newton-Schulz orthogonalisation on
// cuBLASLt, and the update with f32 master weights, on a stack of `count`
// matrices (rows, cols) at once (the same function as kernels/cpu/muon.cpp).
//
//   muon_momentum_kernel<TG>   grid (G, count): buf = beta buf + (1 - beta) g gs,
//                              u = nesterov ? beta buf + (1 - beta) g gs : buf,
//                              X (f32 work) = u; each block writes its partial sum
//                              of u^2 (f32 in registers, f64 across the block)
//   muon_scale_kernel          X *= 1 / (||u||_F + 1e-7), the G partials of each
//                              matrix added in block order (deterministic)
//   three batched GEMMs per Newton-Schulz step, f32 data with TF32 tensor-core
//   compute (CUBLAS_COMPUTE_32F_FAST_TF32; kernels.muon: fp32 computes in full
//   f32, CUBLAS_COMPUTE_32F), strided over the stack:
//       A  = X X^T (wide) or X^T X (tall)                         (s,s), s = min(rows, cols)
//       Bm = c A A + b A         (one GEMM: C = A, alpha = c, beta = b)
//       Y  = a X + Bm X (wide) or a X + X Bm (tall)  (C = X, beta = a), then X <-> Y
//     The tall form works on X as it is (no transpose): with X tall, X Bm with
//     Bm a polynomial in X^T X is the transpose of the wide iteration on X^T.
//   muon_update_kernel<MASTER> p -= lr wd p + lr sqrt(max(1, rows/cols)) X; with
//                              MASTER the f32 master weights are updated and the
//                              bf16 parameters get their rounding (stochastic:
//                              the same counter-based stream as adamw.cu)
// Scratch (Context::kMuon): X, Y (count*rows*cols f32), A, Bm (count*s*s f32),
// the norm partials (count*G f64). Plans (descriptor, layouts, heuristic
// result) are cached per shape and context; a product cuBLASLt has no
// algorithm for runs muon_naive_gemm_kernel (f32, slow, never wrong).
//
// Precision: TF32 keeps 10 mantissa bits (bf16 7), so the orthogonalised
// update matches the CPU's f32 one to ~1e-3 relative; Newton-Schulz is
// self-correcting, which is why modded-nanogpt runs it in bf16.
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int kNormChunks = 16;  // G: blocks per matrix for the norm's partials

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

// Sum over a block in a fixed order (valid in thread 0).
__device__ double block_sum(double s) {
    __shared__ double red[32];
    s = warp_sum(s);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) red[warp] = s;
    __syncthreads();
    double t = 0.0;
    if (warp == 0) t = warp_sum(lane < int(blockDim.x / 32) ? red[lane] : 0.0);
    return t;
}

// Block (g, k): chunk g of matrix k's m elements.
template <class TG>
__global__ void muon_momentum_kernel(float* X, double* partial, float* buf, const TG* grads, size_t m, float beta, float gs,
                                     bool nesterov) {
    const int k = blockIdx.y, g = blockIdx.x, G = gridDim.x;
    const size_t chunk = (m + G - 1) / G, lo = size_t(g) * chunk, hi = min(m, lo + chunk);
    const size_t base = size_t(k) * m;
    double ss = 0.0;
    for (size_t e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        const float gi = to_float(grads[base + e]) * gs;
        const float bi = beta * buf[base + e] + (1.0f - beta) * gi;
        buf[base + e] = bi;
        const float u = nesterov ? beta * bi + (1.0f - beta) * gi : bi;
        X[base + e] = u;
        ss += double(u) * u;
    }
    ss = block_sum(ss);
    if (threadIdx.x == 0) partial[size_t(k) * G + g] = ss;
}

__global__ void muon_scale_kernel(float* X, const double* partial, size_t m, int count, int G) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(count) * m; i += size_t(gridDim.x) * blockDim.x) {
        const size_t k = i / m;
        double ss = 0.0;
        for (int g = 0; g < G; g++) ss += partial[k * G + g];
        X[i] *= float(1.0 / (sqrt(ss) + 1e-7));
    }
}

// splitmix64 of a counter: 32 random bits for element idx (as adamw.cu's random_bits).
__device__ __forceinline__ uint32_t random_bits(uint64_t key, uint64_t idx) {
    uint64_t z = key + (idx + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return uint32_t(z >> 32);
}

template <bool MASTER>
__global__ void muon_update_kernel(void* params, float* master, const float* X, size_t n, float lr_wd, float lr_scaled, uint64_t key,
                                   bool sr) {
    float* w = MASTER ? master : static_cast<float*>(params);
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const float p = w[i] - lr_wd * w[i] - lr_scaled * X[i];
        w[i] = p;
        if constexpr (MASTER) {
            bf16* pb = static_cast<bf16*>(params);
            if (!sr || !isfinite(p)) pb[i] = __float2bfloat16_rn(p);
            else pb[i] = __ushort_as_bfloat16(static_cast<unsigned short>((__float_as_uint(p) + (random_bits(key, i) & 0xFFFFu)) >> 16));
        }
    }
}

// D = alpha op(A) op(B) + beta C, column-major, batched with strides; f32.
__global__ void muon_naive_gemm_kernel(float* D, const float* A, const float* B, const float* C, int m, int n, int k, bool ta, bool tb,
                                       int lda, int ldb, int ldd, long long sa, long long sb, long long sd, float alpha, float beta) {
    const int b = blockIdx.z;
    const int i = blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= m || j >= n) return;
    const float* Ab = A + b * sa;
    const float* Bb = B + b * sb;
    float acc = 0.0f;
    for (int p = 0; p < k; p++)
        acc += (ta ? Ab[p + size_t(i) * lda] : Ab[i + size_t(p) * lda]) * (tb ? Bb[j + size_t(p) * ldb] : Bb[p + size_t(j) * ldb]);
    const size_t d = b * sd + i + size_t(j) * ldd;
    D[d] = alpha * acc + (beta != 0.0f ? beta * C[d] : 0.0f);
}

uint64_t splitmix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------
// Batched f32 products on cuBLASLt.

struct GemmKey {
    int m, n, k;
    bool ta, tb;
    int lda, ldb, ldd, batch;
    long long sa, sb, sd;
    int align;
    bool tf32;
    auto tie() const { return std::tie(m, n, k, ta, tb, lda, ldb, ldd, batch, sa, sb, sd, align, tf32); }
    bool operator<(const GemmKey& o) const { return tie() < o.tie(); }
};

struct GemmPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulHeuristicResult_t result{};
    int n_results = 0;
    GemmPlan() = default;
    GemmPlan(const GemmPlan&) = delete;
    GemmPlan& operator=(const GemmPlan&) = delete;
    ~GemmPlan() {
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

std::mutex g_mutex;
std::map<const Context*, std::map<GemmKey, std::unique_ptr<GemmPlan>>> g_plans;

cublasLtMatrixLayout_t batched_layout(int rows, int cols, int ld, int batch, long long stride) {
    cublasLtMatrixLayout_t l = nullptr;
    GPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, CUDA_R_32F, rows, cols, ld));
    const int32_t bc = batch;
    const int64_t st = stride;
    GPT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
    GPT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st));
    return l;
}

GemmPlan& plan_for(Context& ctx, const GemmKey& k) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto& cache = g_plans[&ctx];
    auto it = cache.find(k);
    if (it != cache.end()) return *it->second;
    auto p = std::make_unique<GemmPlan>();
    GPT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, k.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    GPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    p->a = batched_layout(k.ta ? k.k : k.m, k.ta ? k.m : k.k, k.lda, k.batch, k.sa);
    p->b = batched_layout(k.tb ? k.n : k.k, k.tb ? k.k : k.n, k.ldb, k.batch, k.sb);
    p->d = batched_layout(k.m, k.n, k.ldd, k.batch, k.sd);
    cublasLtMatmulPreference_t pref = nullptr;
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = ctx.lt_workspace_bytes;
    const uint32_t al = uint32_t(k.align);
    GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
        GPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof al));
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &p->result, &p->n_results);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) p->n_results = 0;
    else if (s != CUBLAS_STATUS_SUCCESS) fail_cublas(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
    return *cache.emplace(k, std::move(p)).first->second;
}

// The largest power of two up to 16 dividing every address the batch touches.
int alignment(std::initializer_list<const void*> ptrs, std::initializer_list<long long> strides) {
    uintptr_t bits = 16;
    for (const void* p : ptrs) bits |= reinterpret_cast<uintptr_t>(p);
    for (long long s : strides) bits |= uintptr_t(s * 4);
    return int(std::min<uintptr_t>(16, bits & (~bits + 1)));
}

// D = alpha op(A) op(B) + beta C for `batch` column-major f32 matrices.
void batched_gemm(Context& ctx, int m, int n, int k, bool ta, bool tb, const float* A, int lda, long long sa, const float* B, int ldb,
                  long long sb, const float* C, float* D, int ldd, long long sd, int batch, float alpha, float beta) {
    const GemmKey key{m, n, k, ta, tb, lda, ldb, ldd, batch, sa, sb, sd, alignment({A, B, C, D}, {sa, sb, sd}),
                      ctx.kernels.variant("muon") == "tf32"};
    GemmPlan& p = plan_for(ctx, key);
    if (p.n_results > 0) {
        GPT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, C ? C : D, p.d, D, p.d, &p.result.algo,
                                        ctx.lt_workspace, ctx.lt_workspace_bytes, ctx.stream));
        return;
    }
    const dim3 block(16, 16), grid((m + 15) / 16, (n + 15) / 16, batch);
    muon_naive_gemm_kernel<<<grid, block, 0, ctx.stream>>>(D, A, B, C, m, n, k, ta, tb, lda, ldb, ldd, sa, sb, sd, alpha, beta);
    GPT_CUDA_LAUNCH_CHECK();
}

unsigned grid_for(const Context& ctx, size_t n) {
    return unsigned(std::max<size_t>(1, std::min((n + kThreads - 1) / kThreads, size_t(std::max(1, ctx.prop.multiProcessorCount)) * 16)));
}

}  // namespace

void muon_update(Context& ctx, const Muon& a) {
    if (!a.momentum || a.momentum.dtype != DType::f32) run_failed("muon_update: momentum must be f32");
    if (!a.grads || (a.grads.dtype != DType::bf16 && a.grads.dtype != DType::f32)) run_failed("muon_update: grads must be bf16 or f32");
    const bool with_master = bool(a.master);
    if (with_master && (a.master.dtype != DType::f32 || a.params.dtype != DType::bf16))
        run_failed("muon_update: with master weights, master must be f32 and params bf16");
    if (!with_master && a.params.dtype != DType::f32) run_failed("muon_update: params must be f32 without master weights");
    if (a.count <= 0 || a.rows <= 0 || a.cols <= 0) return;
    const int rows = a.rows, cols = a.cols, count = a.count;
    const bool tall = rows > cols;
    const int s = tall ? cols : rows;
    const size_t m = size_t(rows) * cols, ss = size_t(s) * s, n = size_t(count) * m;
    const int G = kNormChunks;

    // Scratch: X | Y | A | Bm | partials, each 256-byte aligned.
    auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    const size_t xb = round(n * 4), ab = round(size_t(count) * ss * 4), pb = round(size_t(count) * G * 8);
    char* base = static_cast<char*>(ctx.scratch(Context::kMuon, 2 * xb + 2 * ab + pb));
    float* X = reinterpret_cast<float*>(base);
    float* Y = reinterpret_cast<float*>(base + xb);
    float* A = reinterpret_cast<float*>(base + 2 * xb);
    float* Bm = reinterpret_cast<float*>(base + 2 * xb + ab);
    double* partial = reinterpret_cast<double*>(base + 2 * xb + 2 * ab);

    const dim3 mgrid(G, count);
    const float beta = float(a.beta), gs = float(a.grad_scale);
    if (a.grads.dtype == DType::bf16)
        muon_momentum_kernel<bf16><<<mgrid, kThreads, 0, ctx.stream>>>(X, partial, a.momentum.as<float>(), a.grads.as<bf16>(), m, beta, gs,
                                                                       a.nesterov);
    else
        muon_momentum_kernel<float><<<mgrid, kThreads, 0, ctx.stream>>>(X, partial, a.momentum.as<float>(), a.grads.as<float>(), m, beta,
                                                                        gs, a.nesterov);
    GPT_CUDA_LAUNCH_CHECK();
    muon_scale_kernel<<<grid_for(ctx, n), kThreads, 0, ctx.stream>>>(X, partial, m, count, G);
    GPT_CUDA_LAUNCH_CHECK();

    // Row-major X (rows, cols) is column-major X^T (cols, rows), ld cols.
    const long long sm = (long long)m, sq = (long long)ss;
    for (int step = 0; step < a.ns_steps; step++) {
        if (!tall)  // A (rows,rows) = X X^T: column-major T(Xmem) N(Xmem)
            batched_gemm(ctx, s, s, cols, true, false, X, cols, sm, X, cols, sm, nullptr, A, s, sq, count, 1.0f, 0.0f);
        else  // A (cols,cols) = X^T X: column-major N(Xmem) T(Xmem)
            batched_gemm(ctx, s, s, rows, false, true, X, cols, sm, X, cols, sm, nullptr, A, s, sq, count, 1.0f, 0.0f);
        // Bm = c A A + b A
        batched_gemm(ctx, s, s, s, false, false, A, s, sq, A, s, sq, A, Bm, s, sq, count, float(kMuonNsC), float(kMuonNsB));
        // A's and Bm's memory read column-major is the row-major A and Bm of
        // kernels/cpu/muon.cpp, hence the transposes below.
        if (!tall)  // Y = a X + Bm X: column-major Y^T (cols,rows) = X^T Bm^T = N(Xmem) T(Bm mem)
            batched_gemm(ctx, cols, rows, rows, false, true, X, cols, sm, Bm, s, sq, X, Y, cols, sm, count, 1.0f, float(kMuonNsA));
        else  // Y = a X + X Bm: column-major Y^T = Bm^T X^T = T(Bm mem) N(Xmem)
            batched_gemm(ctx, cols, rows, cols, true, false, Bm, s, sq, X, cols, sm, X, Y, cols, sm, count, 1.0f, float(kMuonNsA));
        std::swap(X, Y);
    }

    const float lr_wd = float(a.lr * a.weight_decay), lr_scaled = float(a.lr * std::sqrt(std::max(1.0, double(rows) / cols)));
    const uint64_t key = splitmix64(a.seed ^ splitmix64(uint64_t(uint32_t(a.t))));
    const bool sr = with_master && a.stochastic_rounding && ctx.kernels.param("adamw", "stochastic_rounding") != 0;
    if (with_master)
        muon_update_kernel<true><<<grid_for(ctx, n), kThreads, 0, ctx.stream>>>(a.params.ptr, a.master.as<float>(), X, n, lr_wd, lr_scaled,
                                                                                key, sr);
    else
        muon_update_kernel<false><<<grid_for(ctx, n), kThreads, 0, ctx.stream>>>(a.params.ptr, nullptr, X, n, lr_wd, lr_scaled, key, sr);
    GPT_CUDA_LAUNCH_CHECK();
}

void muon_release(Context& ctx) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_plans.erase(&ctx);
}

}  // namespace gpt::cuda
