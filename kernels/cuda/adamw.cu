// AdamW and the global gradient norm of the CUDA backend.
//
// adamw_update: ONE launch over the whole parameter buffer (the ranges of the
// layout, clipped to this rank's shard), same arithmetic as kernels/cpu/adamw.cpp:
//   g = grads[i] * grad_scale
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   p -= lr_r * (m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps) + (decay ? weight_decay * p : 0))
// in f32, with the bias corrections computed once in double on the host, and
// lr_r = lr * the range's lr_scale (parameter groups), in double, rounded to f32.
// Elements outside every range are left untouched.
//   adamw_kernel<TG, MASTER>  TG = grad type (bf16 or f32). MASTER: the f32 master
//                             weights are updated and params (bf16) receive
//                             their rounding, stochastic or to nearest; else
//                             params are f32 and updated in place. m, v are f32.
// Range lookup: the ranges travel in the kernel's parameter block (no copy,
// no host sync), each with its first block index; a block finds its range by
// a binary search over those (uniform per block, a few constant-bank reads),
// then handles kTile elements of it: 4 consecutive elements per thread with
// 128-bit f32 (64-bit bf16) accesses when the range's start and every pointer
// are aligned, else 4 strided scalar elements. More than kMaxRanges ranges
// take one launch per kMaxRanges (GPT-2's layout has 16).
//
// Stochastic rounding: the f32 master value's 32 bits plus 16 random bits,
// truncated to the upper 16 (round up with probability equal to the dropped
// fraction). The random bits are splitmix64 of a per-step key (seed and t,
// mixed on the host) plus the element's index within the params view, so a
// step is deterministic for a given seed and independent of the launch shape.
//
// grad_norm_squared: sum of grads^2 in f64. Stage 1, sumsq_kernel: a fixed
// grid (a function of n only, at most kNormBlocks) of block partials (f64, in
// scratch slot kNorm); stage 2, sumsq_final_kernel: one block sums them in a
// fixed tree. grad_norm_squared copies the result (8 bytes) to the host, which
// waits for the stream; grad_sumsq leaves it in device memory.
//
// Values in device memory (AdamW::hyper, norm_sq, for a recorded step):
// adamw_hyper_kernel, one thread, computes lr, the bias corrections, the
// rounding key and the clip scale min(1, clip / sqrt(norm_sq)) of the step
// into scratch slot kAdamW, and adamw_kernel reads them from there.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kMaxRanges = 64;
constexpr int kAdamThreads = 256;
constexpr int kAdamPerThread = 4;
constexpr int kTile = kAdamThreads * kAdamPerThread;  // elements per block
constexpr int kNormThreads = 256;
constexpr int kNormBlocks = 1024;                    // stage-2 block size too

// The ranges of one launch; passed by value in the kernel parameter block (~1.9 KB).
struct RangeTable {
    uint64_t offset[kMaxRanges];          // first element, in the params view
    uint64_t size[kMaxRanges];            // elements
    uint32_t first_block[kMaxRanges + 1]; // prefix sums of ceil(size / kTile)
    double lr_scale[kMaxRanges];          // the range's learning rate as a multiple of the step's (parameter groups)
    uint8_t decay[kMaxRanges];
    uint8_t vec[kMaxRanges];              // 4-element vector accesses allowed
    int n;
};

struct AdamHyper {
    double lr;  // the step's; a range's is float(lr * RangeTable::lr_scale), as the CPU rounds it
    float b1, omb1, b2, omb2, eps, wd, gs, ic1, ic2;
    uint64_t key;  // stochastic rounding stream of this step
    bool sr;
    bool skip;  // a non-finite gradient norm or guard value: nothing is updated
};

__host__ __device__ inline uint64_t splitmix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// 32 random bits for element idx of the step keyed by key (splitmix64 of the
// counter key + idx * golden gamma, as splitmix64's own stream).
__device__ __forceinline__ uint32_t random_bits(uint64_t key, uint64_t idx) {
    uint64_t z = key + (idx + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return uint32_t(z >> 32);
}

__device__ __forceinline__ bf16 round_bf16(float x, const AdamHyper& h, uint64_t idx) {
    if (!h.sr || !isfinite(x)) return __float2bfloat16_rn(x);
    const uint32_t bits = __float_as_uint(x) + (random_bits(h.key, idx) & 0xFFFFu);
    return __ushort_as_bfloat16(static_cast<unsigned short>(bits >> 16));
}

// One element's update at learning rate lr; returns the new parameter, updates m and v.
__device__ __forceinline__ float adam_step(float graw, float& m, float& v, float p, float lr, float wd, const AdamHyper& h) {
    const float g = graw * h.gs;
    const float mi = h.b1 * m + h.omb1 * g;
    const float vi = h.b2 * v + h.omb2 * g * g;
    m = mi;
    v = vi;
    return p - lr * (mi * h.ic1 / (sqrtf(vi * h.ic2) + h.eps) + wd * p);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

// 4 consecutive values to/from f32 (the pointer aligned to 4 elements).
__device__ __forceinline__ void load4(const float* p, float (&f)[4]) {
    const float4 u = *reinterpret_cast<const float4*>(p);
    f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w;
}
__device__ __forceinline__ void load4(const bf16* p, float (&f)[4]) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float (&f)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
}

// params (n): bf16 when MASTER (master f32 holds the weights), else f32;
// grads (n) TG; m, v (n) f32. Block b handles tile (b - first_block[r]) of range r.
template <class TG, bool MASTER>
__global__ void __launch_bounds__(kAdamThreads)
    adamw_kernel(void* params, const TG* grads, float* m, float* v, float* master, const __grid_constant__ RangeTable rt,
                 const AdamHyper h_arg, const AdamHyper* __restrict__ h_dev) {
    // The step's values: from the launch, or computed on the device by
    // adamw_hyper_kernel (read by every thread: one broadcast load).
    const AdamHyper h = h_dev ? *h_dev : h_arg;
    if (h.skip) return;
    // The range of this block: the last r with first_block[r] <= blockIdx.x
    // (empty ranges share their successor's first block and are skipped).
    int lo = 0, hi = rt.n - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (rt.first_block[mid] <= blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    const int r = lo;
    const uint64_t begin = rt.offset[r] + uint64_t(blockIdx.x - rt.first_block[r]) * kTile;
    const uint64_t end = rt.offset[r] + rt.size[r] < begin + kTile ? rt.offset[r] + rt.size[r] : begin + kTile;
    const float wd = rt.decay[r] ? h.wd : 0.0f;
    const float lr = float(h.lr * rt.lr_scale[r]);
    float* weights = MASTER ? master : static_cast<float*>(params);
    bf16* pbf = static_cast<bf16*>(params);
    // One element, scalar: ragged range ends and unaligned ranges.
    auto update = [&](uint64_t j) {
        float mj = m[j], vj = v[j];
        const float pj = adam_step(to_float(grads[j]), mj, vj, weights[j], lr, wd, h);
        m[j] = mj;
        v[j] = vj;
        weights[j] = pj;
        if constexpr (MASTER) pbf[j] = round_bf16(pj, h, j);
    };

    if (rt.vec[r]) {
        const uint64_t i = begin + uint64_t(threadIdx.x) * kAdamPerThread;
        if (i + kAdamPerThread <= end) {
            float g[4], mm[4], vv[4], p[4];
            load4(grads + i, g);
            load4(m + i, mm);
            load4(v + i, vv);
            load4(weights + i, p);
#pragma unroll
            for (int k = 0; k < 4; k++) p[k] = adam_step(g[k], mm[k], vv[k], p[k], lr, wd, h);
            store4(m + i, mm);
            store4(v + i, vv);
            store4(weights + i, p);
            if constexpr (MASTER) {
                __nv_bfloat162 lo2, hi2;
                lo2.x = round_bf16(p[0], h, i);
                lo2.y = round_bf16(p[1], h, i + 1);
                hi2.x = round_bf16(p[2], h, i + 2);
                hi2.y = round_bf16(p[3], h, i + 3);
                uint2 u;
                u.x = *reinterpret_cast<const uint32_t*>(&lo2);
                u.y = *reinterpret_cast<const uint32_t*>(&hi2);
                *reinterpret_cast<uint2*>(pbf + i) = u;
            }
            return;
        }
        // The range's ragged end (size % 4 elements): this thread, scalar.
        for (uint64_t j = i; j < end; j++) update(j);
        return;
    }
#pragma unroll
    for (int k = 0; k < kAdamPerThread; k++) {
        const uint64_t j = begin + uint64_t(k) * kAdamThreads + threadIdx.x;
        if (j >= end) break;
        update(j);
    }
}

// hyper (f64 {lr, t}), norm_sq and guard (f64) in device memory, any may be null:
// out = base with lr, the bias corrections, the stochastic-rounding key and the
// clip scale of this step, and skip when norm_sq or guard is not finite. One
// thread; runs before the update in the stream.
__global__ void adamw_hyper_kernel(AdamHyper* out, AdamHyper base, const double* hyper, const double* norm_sq, const double* guard,
                                   double lr, double t, double grad_scale, double grad_clip, double beta1, double beta2, uint64_t seed) {
    if (hyper) {
        lr = hyper[0];
        t = hyper[1];
    }
    base.skip = (norm_sq && !isfinite(*norm_sq)) || (guard && !isfinite(*guard));
    if (norm_sq && grad_clip > 0) {
        const double norm = sqrt(*norm_sq);
        if (norm > grad_clip) grad_scale *= grad_clip / norm;
    }
    base.lr = lr;
    base.gs = float(grad_scale);
    base.ic1 = float(1.0 / (1.0 - pow(beta1, t)));
    base.ic2 = float(1.0 / (1.0 - pow(beta2, t)));
    base.key = splitmix64(seed ^ splitmix64(uint64_t(uint32_t(int(t)))));
    *out = base;
}

template <class TG, bool MASTER>
void launch_adamw(Context& ctx, const AdamW& a, const AdamHyper& h, const AdamHyper* h_dev) {
    void* params = a.params.ptr;
    const TG* grads = a.grads.as<TG>();
    float *m = a.m.as<float>(), *v = a.v.as<float>(), *master = a.master.as<float>();
    // Base pointers allow 4-element accesses when the f32 arrays are 16-byte
    // and the bf16 ones 8-byte aligned; a range also needs offset % 4 == 0.
    auto aligned = [](const void* p, uintptr_t k) { return (reinterpret_cast<uintptr_t>(p) % k) == 0; };
    const bool base_vec = aligned(grads, 4 * sizeof(TG)) && aligned(m, 16) && aligned(v, 16) &&
                          (MASTER ? aligned(master, 16) && aligned(params, 8) : aligned(params, 16));
    for (int r0 = 0; r0 < a.n_ranges; r0 += kMaxRanges) {
        RangeTable rt{};
        rt.n = std::min(kMaxRanges, a.n_ranges - r0);
        uint64_t blocks = 0;
        for (int k = 0; k < rt.n; k++) {
            const ParamRange& pr = a.ranges[r0 + k];
            rt.offset[k] = pr.offset;
            rt.size[k] = pr.size;
            rt.decay[k] = pr.decay ? 1 : 0;
            rt.lr_scale[k] = pr.lr_scale;
            rt.vec[k] = base_vec && pr.offset % kAdamPerThread == 0 ? 1 : 0;
            rt.first_block[k] = uint32_t(blocks);
            blocks += (pr.size + kTile - 1) / kTile;
        }
        rt.first_block[rt.n] = uint32_t(blocks);
        if (blocks == 0) continue;
        if (blocks > 0x7fffffffull) run_failed("adamw_update: parameter buffer too large for one launch");
        adamw_kernel<TG, MASTER><<<unsigned(blocks), kAdamThreads, 0, ctx.stream>>>(params, grads, m, v, master, rt, h, h_dev);
        GPT_CUDA_LAUNCH_CHECK();
    }
}

__device__ __forceinline__ double sq(float x) { return double(x) * double(x); }

// Sum of squares of n values into partial[blockIdx.x]. Elements [0, head)
// (up to the first 16-byte boundary) and the tail are read one by one, the
// rest 16 bytes at a time; every thread strides by the whole grid.

template <class TG>
__global__ void __launch_bounds__(kNormThreads) sumsq_kernel(double* partial, const TG* g, size_t n, size_t head) {
    constexpr int V = 16 / sizeof(TG);
    const size_t tid = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t stride = size_t(gridDim.x) * blockDim.x;
    double s = 0.0;
    for (size_t i = tid; i < head; i += stride) s += sq(to_float(g[i]));
    const size_t nvec = (n - head) / V;
    const TG* gv = g + head;
    for (size_t k = tid; k < nvec; k += stride) {
        const uint4 u = *reinterpret_cast<const uint4*>(gv + k * V);
        const TG* e = reinterpret_cast<const TG*>(&u);
#pragma unroll
        for (int j = 0; j < V; j++) s += sq(to_float(e[j]));
    }
    for (size_t i = head + nvec * V + tid; i < n; i += stride) s += sq(to_float(g[i]));
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[0] = sum of partial[0..G), G <= blockDim.x = kNormBlocks, in a fixed tree.
__global__ void __launch_bounds__(kNormBlocks) sumsq_final_kernel(double* out, const double* partial, int G) {
    const double s = block_sum(int(threadIdx.x) < G ? partial[threadIdx.x] : 0.0);
    if (threadIdx.x == 0) *out = s;
}

// out (one f64 of device memory) = sum of g[i]^2, enqueued.
template <class TG>
void enqueue_sumsq(Context& ctx, const TG* g, size_t n, double* out) {
    // Elements before the first 16-byte boundary (views may start anywhere).
    const uintptr_t mis = reinterpret_cast<uintptr_t>(g) % 16;
    size_t head = mis ? (16 - mis) / sizeof(TG) : 0;
    if (mis % sizeof(TG)) run_failed("grad_norm_squared: gradients are not aligned to their element size");
    if (head > n) head = n;
    const size_t want = (n + size_t(kNormThreads) * 8 - 1) / (size_t(kNormThreads) * 8);
    const int G = int(want < size_t(kNormBlocks) ? want : size_t(kNormBlocks));
    double* buf = static_cast<double*>(ctx.scratch(Context::kNorm, (kNormBlocks + 1) * sizeof(double)));
    sumsq_kernel<TG><<<G, kNormThreads, 0, ctx.stream>>>(buf, g, n, head);
    GPT_CUDA_LAUNCH_CHECK();
    sumsq_final_kernel<<<1, kNormBlocks, 0, ctx.stream>>>(out, buf, G);
    GPT_CUDA_LAUNCH_CHECK();
}

void enqueue_sumsq_view(Context& ctx, View grads, size_t n, double* out) {
    if (!grads) run_failed("grad_norm_squared: grads is null");
    switch (grads.dtype) {
        case DType::bf16: return enqueue_sumsq(ctx, grads.as<bf16>(), n, out);
        case DType::f32: return enqueue_sumsq(ctx, grads.as<float>(), n, out);
        default: run_failed(std::string("grad_norm_squared: unsupported gradient dtype ") + dtype_name(grads.dtype));
    }
}

void expect(View v, DType t, const char* what) {
    if (!v) run_failed(std::string("adamw_update: ") + what + " is null");
    if (v.dtype != t)
        run_failed(std::string("adamw_update: ") + what + " must be " + dtype_name(t) + ", got " + dtype_name(v.dtype));
}

}  // namespace

double grad_norm_squared(Context& ctx, View grads, size_t n) {
    if (n == 0) return 0.0;
    // The result in the slot after the block partials, then to the host.
    double* out = static_cast<double*>(ctx.scratch(Context::kNorm, (kNormBlocks + 1) * sizeof(double))) + kNormBlocks;
    enqueue_sumsq_view(ctx, grads, n, out);
    double result = 0.0;
    GPT_CUDA_CHECK(cudaMemcpyAsync(&result, out, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
    GPT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    return result;
}

namespace {
// dst (n) f32 += src (n), grid-stride: a pass of memory bandwidth (6 bytes per
// bf16 gradient), once per micro-batch.
template <class TS>
__global__ void accumulate_kernel(float* __restrict__ dst, const TS* __restrict__ src, size_t n) {
    const size_t stride = size_t(gridDim.x) * blockDim.x;
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] += static_cast<float>(src[i]);
}
}  // namespace

void accumulate(Context& ctx, const Accumulate& a) {
    if (!a.dst || a.dst.dtype != DType::f32) run_failed("accumulate: dst must be f32");
    if (!a.src || (a.src.dtype != DType::bf16 && a.src.dtype != DType::f32))
        run_failed(std::string("accumulate: src must be bf16 or f32, got ") + (a.src ? dtype_name(a.src.dtype) : "null"));
    if (a.n == 0) return;
    const unsigned blocks = unsigned(std::min<size_t>((a.n + 255) / 256, size_t(std::max(1, ctx.prop.multiProcessorCount)) * 16));
    if (a.src.dtype == DType::bf16)
        accumulate_kernel<bf16><<<blocks, 256, 0, ctx.stream>>>(a.dst.as<float>(), a.src.as<bf16>(), a.n);
    else
        accumulate_kernel<float><<<blocks, 256, 0, ctx.stream>>>(a.dst.as<float>(), a.src.as<float>(), a.n);
    GPT_CUDA_LAUNCH_CHECK();
}

void grad_sumsq(Context& ctx, const GradSumSq& a) {
    if (!a.out || a.out.dtype != DType::f64) run_failed("grad_sumsq: out must be one f64 element");
    if (a.n == 0) {
        GPT_CUDA_CHECK(cudaMemsetAsync(a.out.ptr, 0, sizeof(double), ctx.stream));
        return;
    }
    enqueue_sumsq_view(ctx, a.grads, a.n, a.out.as<double>());
}

void adamw_update(Context& ctx, const AdamW& a) {
    expect(a.m, DType::f32, "m");
    expect(a.v, DType::f32, "v");
    if (!a.grads || (a.grads.dtype != DType::bf16 && a.grads.dtype != DType::f32))
        run_failed("adamw_update: grads must be bf16 or f32");
    const bool with_master = bool(a.master);
    if (with_master) {
        expect(a.master, DType::f32, "master");
        expect(a.params, DType::bf16, "params (with f32 master weights)");
    } else {
        expect(a.params, DType::f32, "params (without master weights)");
    }
    if (a.n_ranges <= 0) return;
    if (!a.ranges) run_failed("adamw_update: ranges is null");

    AdamHyper h;
    h.lr = a.lr;
    h.skip = false;
    h.b1 = float(a.beta1);
    h.omb1 = 1.0f - h.b1;
    h.b2 = float(a.beta2);
    h.omb2 = 1.0f - h.b2;
    h.eps = float(a.eps);
    h.wd = float(a.weight_decay);
    h.gs = float(a.grad_scale);
    h.ic1 = float(1.0 / (1.0 - std::pow(a.beta1, a.t)));
    h.ic2 = float(1.0 / (1.0 - std::pow(a.beta2, a.t)));
    h.key = splitmix64(a.seed ^ splitmix64(uint64_t(uint32_t(a.t))));
    // Stochastic rounding when the op asks for it and the registry's
    // adamw.stochastic_rounding (default 1) has not turned it off.
    h.sr = with_master && a.stochastic_rounding && ctx.kernels.param("adamw", "stochastic_rounding") != 0;

    // With values in device memory (a recorded step: lr, t and the clip scale
    // change from step to step), one thread computes the step's AdamHyper
    // into scratch first and the update reads it there.
    AdamHyper* h_dev = nullptr;
    if (a.hyper || a.norm_sq || a.guard) {
        if ((a.hyper && a.hyper.dtype != DType::f64) || (a.norm_sq && a.norm_sq.dtype != DType::f64) || (a.guard && a.guard.dtype != DType::f64))
            run_failed("adamw_update: hyper, norm_sq and guard must be f64");
        h_dev = static_cast<AdamHyper*>(ctx.scratch(Context::kAdamW, sizeof(AdamHyper)));
        adamw_hyper_kernel<<<1, 1, 0, ctx.stream>>>(h_dev, h, a.hyper.as<double>(), a.norm_sq.as<double>(), a.guard.as<double>(), a.lr, double(a.t),
                                                    a.grad_scale, a.grad_clip, a.beta1, a.beta2, a.seed);
        GPT_CUDA_LAUNCH_CHECK();
    }
    const bool g16 = a.grads.dtype == DType::bf16;
    if (with_master) {
        if (g16) launch_adamw<bf16, true>(ctx, a, h, h_dev);
        else launch_adamw<float, true>(ctx, a, h, h_dev);
    } else {
        if (g16) launch_adamw<bf16, false>(ctx, a, h, h_dev);
        else launch_adamw<float, false>(ctx, a, h, h_dev);
    }
}

}  // namespace gpt::cuda
