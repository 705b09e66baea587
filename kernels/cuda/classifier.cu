// Fused softmax + cross-entropy + dlogits of the CUDA backend, in place.
//
// logits (N,Vp) bf16, targets (N) in [0,V), losses (N) f32 (may be null):
//   lse_n    = log sum_{j<V} exp(logits[n,j])
//   losses_n = lse_n - logits[n, targets[n]]
// With grad, logits is overwritten by dlogits = (softmax - onehot) * dloss in
// bf16, the padded columns V..Vp by 0; without grad it is left unchanged.
// Same function as kernels/cpu/classifier.cpp (which accumulates in double;
// here f32 per thread over a few dozen values, then a tree across the block).
//
// One kernel, one block per row (blockDim from kernels.classifier.threads:
// 1024/512/256). Fusing saves the (N,Vp) probability buffer and two extra
// passes over the largest activation of the model: the row is read once for
// the online max/sum (each thread keeps a running max and a sum rescaled when
// the max grows; the block merges the pairs) and, with grad, read once more
// and written once. The target's logit is read before the block barrier that
// precedes any write, so the in-place update cannot clobber it.
//
// Variants (kernels.classifier):
//   fused     classifier_kernel<true>: 8 logits per thread with 128-bit
//             loads/stores, when Vp % 8 == 0 and logits is 16-byte aligned
//             (GPT-2: Vp = 50304); columns >= V are masked. The row is read
//             twice (max/sum, then dlogits) and written once.
//             classifier_kernel<false>: one logit per thread per step, any Vp.
//   onepass   classifier_onepass_kernel: the row is read from global memory
//             once, into shared memory (Vp bf16: 98 KiB for GPT-2), which the
//             dlogits pass reads back: one read and one write per element
//             instead of two reads and a write (6.6 GB less traffic per step
//             at B=64, T=1024). Exponentials as ex2.approx.ftz on values
//             pre-scaled by log2(e) (one MUFU op; its relative error, about
//             2^-22, is far below bf16's 2^-9; denormal results flush to 0,
//             which a probability that small is anyway). Needs Vp % 8 == 0, a
//             16-byte aligned row and Vp * 2 bytes of shared memory; else the
//             fused kernel runs. Not with a soft cap (below): then fused runs.
//
// sum_into (the step's loss, kept on the device): one block of 1024 threads,
// each summing a strided set of values in f64, then block_sum's fixed tree;
// dst[0] += scale * sum. Deterministic; one small launch per micro-step.
//   <.., CAP>  the logit soft cap (model.logit_softcap), on the fused kernel:
//             every logit read becomes z = cap * tanh(x / cap) before the
//             softmax, and dlogits takes the cap's derivative 1 - (z / cap)^2;
//             recomputed from x where it is needed (no capped copy of the row)
//   softcap_kernel  without targets (sampling): z in place of the first V
//             logits of each row, nothing else
#include <algorithm>
#include <cfloat>
#include <map>
#include <mutex>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

// A running softmax denominator: sum of exp(x - m) over the values seen.
// The empty state is m = -FLT_MAX (finite, so merging two empty states gives
// exp(0) * 0 = 0 rather than exp(-inf + inf) = NaN), s = 0.
struct MaxSum {
    float m, s;
};

// The onepass variant keeps its state in the log2 domain (below): LOG2
// merges with 2^x (ex2.approx) instead of e^x.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

template <bool LOG2>
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    if constexpr (LOG2) return {m, a.s * ex2(a.m - m) + b.s * ex2(b.m - m)};
    else return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Block-wide merge; every thread gets the result. Uses red[32] shared slots.
template <bool LOG2>
__device__ __forceinline__ MaxSum block_merge(MaxSum v, MaxSum* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
        v = merge<LOG2>(v, other);
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    MaxSum w = lane < warps ? red[lane] : MaxSum{-FLT_MAX, 0.0f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other{__shfl_xor_sync(0xffffffffu, w.m, o), __shfl_xor_sync(0xffffffffu, w.s, o)};
        w = merge<LOG2>(w, other);
    }
    return w;
}

// The logit as the softmax sees it: capped when CAP.
template <bool CAP>
__device__ __forceinline__ float capped(float x, float cap) {
    if constexpr (CAP) return cap * tanhf(x / cap);
    else return x;
}

// The onepass variant's state, in the log2 domain: m = max of x * log2(e)
// over the values seen, s = sum of 2^(x * log2(e) - m). Empty: m = -FLT_MAX, s = 0.
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// logits (N,Vp) bf16 (Vp % 8 == 0, rows 16-byte aligned), in place with grad;
// losses (N) f32 or null. Dynamic shared memory: Vp bf16, the row.
__global__ void classifier_onepass_kernel(bf16* logits, float* losses, const int32_t* targets, int V, int Vp, float dloss,
                                          bool grad) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* srow = reinterpret_cast<bf16*>(smem_raw);
    __shared__ MaxSum red[32];
    bf16* row = logits + size_t(blockIdx.x) * Vp;
    const int target = targets[blockIdx.x];

    MaxSum acc{-FLT_MAX, 0.0f};
    for (int j = threadIdx.x * 8; j < Vp; j += blockDim.x * 8) {
        const uint4 u = *reinterpret_cast<const uint4*>(row + j);
        *reinterpret_cast<uint4*>(srow + j) = u;  // the only read of the row from global memory
        float f[8];
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 x = __bfloat1622float2(h[k]);
            f[2 * k] = x.x * kLog2e;
            f[2 * k + 1] = x.y * kLog2e;
        }
        float mc = -FLT_MAX;
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (j + k < V) mc = fmaxf(mc, f[k]);
        if (mc > acc.m) {
            acc.s *= ex2(acc.m - mc);
            acc.m = mc;
        }
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (j + k < V) acc.s += ex2(f[k] - acc.m);
    }
    // block_merge's barrier also makes every thread's part of srow visible to all.
    const MaxSum tot = block_merge<true>(acc, red);
    const float lse2 = tot.m + log2f(tot.s);  // log2 of sum_j exp(x_j)
    if (threadIdx.x == 0 && losses) losses[blockIdx.x] = (lse2 - to_f32(srow[target]) * kLog2e) * kLn2;
    if (!grad) return;
    for (int j = threadIdx.x * 8; j < Vp; j += blockDim.x * 8) {
        float f[8];
        load8(srow + j, f);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int c = j + k;
            f[k] = c < V ? (ex2(f[k] * kLog2e - lse2) - (c == target ? 1.0f : 0.0f)) * dloss : 0.0f;
        }
        store8(row + j, f);
    }
}

// logits (N,Vp) bf16, in place with grad; losses (N) f32 or null.
template <bool VEC, bool CAP>
__global__ void classifier_kernel(bf16* logits, float* losses, const int32_t* targets, int V, int Vp, float dloss,
                                  bool grad, float cap) {
    __shared__ MaxSum red[32];
    bf16* row = logits + size_t(blockIdx.x) * Vp;
    const int target = targets[blockIdx.x];
    // Read before block_merge's barrier, hence before any thread writes the row.
    const float target_logit = threadIdx.x == 0 ? capped<CAP>(to_f32(row[target]), cap) : 0.0f;

    MaxSum acc{-FLT_MAX, 0.0f};
    if constexpr (VEC) {
        for (int j = threadIdx.x * 8; j < V; j += blockDim.x * 8) {
            float f[8];
            load8(row + j, f);  // in bounds: j + 8 <= Vp as Vp % 8 == 0
#pragma unroll
            for (int k = 0; k < 8; k++) f[k] = capped<CAP>(f[k], cap);
            float mc = -FLT_MAX;
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (j + k < V) mc = fmaxf(mc, f[k]);
            if (mc > acc.m) {
                acc.s *= expf(acc.m - mc);
                acc.m = mc;
            }
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (j + k < V) acc.s += expf(f[k] - acc.m);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            const float x = capped<CAP>(to_f32(row[j]), cap);
            if (x > acc.m) {
                acc.s = acc.s * expf(acc.m - x) + 1.0f;
                acc.m = x;
            } else {
                acc.s += expf(x - acc.m);
            }
        }
    }
    const MaxSum tot = block_merge<false>(acc, red);
    const float lse = tot.m + logf(tot.s);
    if (threadIdx.x == 0 && losses) losses[blockIdx.x] = lse - target_logit;
    if (!grad) return;

    if constexpr (VEC) {
        for (int j = threadIdx.x * 8; j < Vp; j += blockDim.x * 8) {
            float f[8];
            load8(row + j, f);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int c = j + k;
                const float z = capped<CAP>(f[k], cap);
                const float dz = CAP ? 1.0f - (z / cap) * (z / cap) : 1.0f;
                f[k] = c < V ? (expf(z - lse) - (c == target ? 1.0f : 0.0f)) * dloss * dz : 0.0f;
            }
            store8(row + j, f);
        }
    } else {
        for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
            const float z = capped<CAP>(to_f32(row[j]), cap);
            const float dz = CAP ? 1.0f - (z / cap) * (z / cap) : 1.0f;
            const float p = j < V ? (expf(z - lse) - (j == target ? 1.0f : 0.0f)) * dloss * dz : 0.0f;
            row[j] = to_bf16(p);
        }
    }
}

// The cap alone, in place on the first V logits of each of the N rows.
__global__ void softcap_kernel(bf16* logits, int N, int V, int Vp, float cap) {
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(N) * V; i += size_t(gridDim.x) * blockDim.x) {
        bf16* x = logits + i / V * Vp + i % V;
        *x = to_bf16(cap * tanhf(to_f32(*x) / cap));
    }
}

// dst[0] += scale * sum_i src[i], f64 accumulation (one block).
template <class TS>
__global__ void __launch_bounds__(1024) sum_into_kernel(double* dst, const TS* src, size_t n, double scale) {
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += double(src[i]);
    s = block_sum(s);
    if (threadIdx.x == 0) *dst += scale * s;
}

}  // namespace

void sum_into(Context& ctx, const SumInto& a) {
    if (!a.dst || a.dst.dtype != DType::f64) run_failed("sum_into: dst must be one f64 element");
    if (a.n == 0) return;
    if (a.src.dtype == DType::f32)
        sum_into_kernel<float><<<1, 1024, 0, ctx.stream>>>(a.dst.as<double>(), a.src.as<float>(), a.n, a.scale);
    else if (a.src.dtype == DType::f64)
        sum_into_kernel<double><<<1, 1024, 0, ctx.stream>>>(a.dst.as<double>(), a.src.as<double>(), a.n, a.scale);
    else
        run_failed(std::string("sum_into: src must be f32 or f64, got ") + dtype_name(a.src.dtype));
    GPT_CUDA_LAUNCH_CHECK();
}

void classifier(Context& ctx, const ClassifierFwdBwd& a) {
    if (!a.logits || a.logits.dtype != DType::bf16)
        run_failed(std::string("classifier: logits must be bf16, got ") + (a.logits ? dtype_name(a.logits.dtype) : "null"));
    if (a.losses && a.losses.dtype != DType::f32)
        run_failed(std::string("classifier: losses must be f32, got ") + dtype_name(a.losses.dtype));
    if (a.V <= 0 || a.V > a.Vp) run_failed("classifier: need 0 < V <= Vp");
    if (a.N <= 0) return;
    const int threads = ctx.kernels.param("classifier", "threads");
    if (threads < 32 || threads > 1024 || threads % 32 != 0)
        run_failed("classifier: threads must be a multiple of 32 in [32, 1024], got " + std::to_string(threads));
    bf16* logits = a.logits.as<bf16>();
    float* losses = a.losses.as<float>();
    const float dloss = float(a.dloss), cap = float(a.softcap);
    if (!a.targets) {
        if (cap > 0) {
            const size_t n = size_t(a.N) * a.V;
            softcap_kernel<<<unsigned(std::min<size_t>((n + 255) / 256, 65535)), 256, 0, ctx.stream>>>(logits, a.N, a.V, a.Vp, cap);
            GPT_CUDA_LAUNCH_CHECK();
        }
        return;
    }
    const size_t smem = size_t(a.Vp) * sizeof(bf16);  // plus the kernel's static 32 MaxSum
    if (ctx.kernels.variant("classifier") == "onepass" && cap == 0 && a.Vp % 8 == 0 && aligned16(logits) &&
        smem + 32 * sizeof(MaxSum) <= ctx.prop.sharedMemPerBlockOptin) {
        static std::mutex mutex;
        static std::map<int, size_t> raised;  // device -> dynamic shared memory the kernel is allowed
        {
            std::lock_guard<std::mutex> lock(mutex);
            if (smem > 48 * 1024 && smem > raised[ctx.device]) {
                GPT_CUDA_CHECK(cudaFuncSetAttribute(classifier_onepass_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
                raised[ctx.device] = smem;
            }
        }
        classifier_onepass_kernel<<<a.N, threads, smem, ctx.stream>>>(logits, losses, a.targets, a.V, a.Vp, dloss, a.grad);
        GPT_CUDA_LAUNCH_CHECK();
        return;
    }
    const bool vec = a.Vp % 8 == 0 && aligned16(logits);
    if (vec && cap > 0)
        classifier_kernel<true, true><<<a.N, threads, 0, ctx.stream>>>(logits, losses, a.targets, a.V, a.Vp, dloss, a.grad, cap);
    else if (vec)
        classifier_kernel<true, false><<<a.N, threads, 0, ctx.stream>>>(logits, losses, a.targets, a.V, a.Vp, dloss, a.grad, cap);
    else if (cap > 0)
        classifier_kernel<false, true><<<a.N, threads, 0, ctx.stream>>>(logits, losses, a.targets, a.V, a.Vp, dloss, a.grad, cap);
    else
        classifier_kernel<false, false><<<a.N, threads, 0, ctx.stream>>>(logits, losses, a.targets, a.V, a.Vp, dloss, a.grad, cap);
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace gpt::cuda
