// LayerNorm of the CUDA backend (eps 1e-5, biased variance, as kernels/cpu/layernorm.cpp).
//
// Kernels (bf16 tensors, f32 statistics and accumulation):
//   ln_fwd_kernel<VEC>           one warp per row: mean, then variance around it
//                                (two-pass, the row re-read from L1/L2), then the
//                                normalized output; saves mean, rstd (N) in f32
//   residual_ln_fwd_kernel<VEC>  the residual add fused in front: residual = a + b
//                                rounded to bf16 and written, then the same row
//                                routine on the ROUNDED residual, so its outputs
//                                are bit-identical to residual_forward followed by
//                                layernorm_forward (the `separate` variant)
//   ln_bwd_kernel<VEC, RES>      one warp per row for dinp (+=, the residual-stream
//                                gradient); each warp also accumulates its rows'
//                                dweight/dbias terms into its own shared-memory
//                                row (each lane owns fixed channels, so no races),
//                                and the block writes the sum of its warps, in
//                                warp order, as one partial (2C) into scratch.
//                                RES (LayerNormBwd::dres_bias, bias_grad: folded):
//                                a third row sums the updated dinp as stored
//                                (bf16-rounded), the projection's bias gradient a
//                                separate column sum would read: partial (3C)
//   ln_bwd_reduce_kernel         sums the per-block partials in block order and
//                                adds them into dweight, dbias (and dres_bias)
//                                (bf16, rounded once)
// No atomics: the backward's result depends only on N and C, not on timing.
//
// The other norms of the architecture choices (model.norm, model.norm_params,
// model.bias) have their own kernels beside these, so GPT-2's path is untouched:
//   gnorm_fwd_kernel<VEC,RMS>, residual_gnorm_fwd_kernel<VEC,RMS>,
//   gnorm_bwd_kernel<VEC,RMS> + gnorm_bwd_reduce_kernel
//                                RMSNorm (RMS: no mean, out = x * rstd * weight)
//                                and LayerNorm/RMSNorm with a null weight (1) or
//                                bias (0); the same warp-per-row structure and
//                                block partials as above, with the absent
//                                gradients skipped
//   qknorm_fwd_kernel / qknorm_bwd_kernel
//                                QK-norm: one warp per (row, head) vector of hs
//                                elements of qkv's q and k thirds, in place; rstd
//                                (N, 2NH) saved in f32
//
// VEC (8 bf16 per lane, 128-bit loads) when C % 8 == 0 and every pointer is
// 16-byte aligned; otherwise one element per lane (awkward C such as 72 or 200
// still works when aligned; C = 100 takes the scalar path).
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr float kEps = 1e-5f;
constexpr int kFwdWarps = 8;           // rows per forward block
constexpr int kBwdMaxWarps = 8;        // rows in flight per backward block
constexpr int kBwdMaxBlocks = 512;     // cap on backward blocks = partial rows in scratch
constexpr int kReduceCols = 32;        // reduce kernel: channels per block
constexpr int kReduceRows = 8;         // reduce kernel: partial rows summed in parallel

void expect(View v, DType t, const char* op, const char* what) {
    if (!v) run_failed(std::string(op) + ": " + what + " is null");
    if (v.dtype != t)
        run_failed(std::string(op) + ": " + what + " must be " + dtype_name(t) + ", got " + dtype_name(v.dtype));
}

// Lane `lane` of a warp owns channels c = lane*8 + 256*k (+0..7) when VEC, and
// c = lane + 32*k otherwise; every loop below walks the same channels, so a
// lane reads back only what it wrote itself.

// LayerNorm of one row x (C) into out (C); the whole warp calls it.
template <bool VEC>
__device__ __forceinline__ void ln_row(bf16* out, float* mean, float* rstd, const bf16* x, const bf16* w,
                                       const bf16* b, int C, int lane) {
    float s = 0.0f;
    if constexpr (VEC) {
        for (int c = lane * 8; c < C; c += 256) {
            float f[8];
            load8(x + c, f);
#pragma unroll
            for (int k = 0; k < 8; k++) s += f[k];
        }
    } else {
        for (int c = lane; c < C; c += 32) s += to_f32(x[c]);
    }
    const float m = warp_sum(s) / float(C);

    float v = 0.0f;
    if constexpr (VEC) {
        for (int c = lane * 8; c < C; c += 256) {
            float f[8];
            load8(x + c, f);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float d = f[k] - m;
                v += d * d;
            }
        }
    } else {
        for (int c = lane; c < C; c += 32) {
            const float d = to_f32(x[c]) - m;
            v += d * d;
        }
    }
    const float r = 1.0f / sqrtf(warp_sum(v) / float(C) + kEps);

    if constexpr (VEC) {
        for (int c = lane * 8; c < C; c += 256) {
            float f[8], fw[8], fb[8], o[8];
            load8(x + c, f);
            load8(w + c, fw);
            load8(b + c, fb);
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = (f[k] - m) * r * fw[k] + fb[k];
            store8(out + c, o);
        }
    } else {
        for (int c = lane; c < C; c += 32)
            out[c] = to_bf16((to_f32(x[c]) - m) * r * to_f32(w[c]) + to_f32(b[c]));
    }
    if (lane == 0) {
        if (mean) *mean = m;
        if (rstd) *rstd = r;
    }
}

// inp, out (N,C); weight, bias (C); mean, rstd (N) f32 (may be null).
template <bool VEC>
__global__ void ln_fwd_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w, const bf16* b,
                              int N, int C) {
    const int lane = threadIdx.x % 32;
    const long row = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const size_t off = size_t(row) * C;
    ln_row<VEC>(out + off, mean ? mean + row : nullptr, rstd ? rstd + row : nullptr, inp + off, w, b, C, lane);
}

// residual = a + b (N,C), rounded to bf16 and stored, then LayerNorm of it.
// residual may alias a or b: each element is read before it is written, by
// the same lane. add_vec (a, b 16-byte aligned too) only picks the load width
// of the add; the statistics follow VEC, as layernorm_forward's would.
template <bool VEC>
__global__ void residual_ln_fwd_kernel(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a,
                                       const bf16* bb, const bf16* w, const bf16* b, int N, int C, bool add_vec) {
    const int lane = threadIdx.x % 32;
    const long row = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const size_t off = size_t(row) * C;
    if (VEC && add_vec) {
        for (int c = lane * 8; c < C; c += 256) {
            float fa[8], fb[8], o[8];
            load8(a + off + c, fa);
            load8(bb + off + c, fb);
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = fa[k] + fb[k];
            store8(residual + off + c, o);
        }
    } else {
        for (int c = lane; c < C; c += 32) residual[off + c] = to_bf16(to_f32(a[off + c]) + to_f32(bb[off + c]));
    }
    // The row routine reads the rounded residual back; with the scalar add a
    // lane reads other lanes' stores, which the warp barrier makes visible.
    __syncwarp();
    ln_row<VEC>(out + off, mean ? mean + row : nullptr, rstd ? rstd + row : nullptr, residual + off, w, b, C, lane);
}

// dinp (N,C) += LayerNorm input gradient; partial (gridDim.x, K*C), K = 2 or
// 3 (RES) = this block's sums of dout*norm (first C), dout (next C) and, with
// RES, the updated dinp as stored (last C).
// Dynamic shared memory: (blockDim.x/32) x K*C floats, one row per warp.
template <bool VEC, bool RES>
__global__ void ln_bwd_kernel(bf16* dinp, float* partial, const bf16* dout, const bf16* inp, const bf16* w,
                              const float* mean, const float* rstd, int N, int C) {
    constexpr int K = RES ? 3 : 2;
    extern __shared__ float acc_all[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float* acc_w = acc_all + size_t(warp) * K * C;  // dweight terms of this warp's rows (C)
    float* acc_b = acc_w + C;                       // dbias terms (C)
    float* acc_r = acc_b + C;                       // RES: the updated dinp (C)
    for (int c = lane; c < K * C; c += 32) acc_w[c] = 0.0f;
    __syncwarp();

    for (long row = long(blockIdx.x) * warps + warp; row < N; row += long(gridDim.x) * warps) {
        const size_t off = size_t(row) * C;
        const bf16* x = inp + off;
        const bf16* d = dout + off;
        bf16* di = dinp + off;
        const float m = mean[row], r = rstd[row];

        // g = dout * weight; the two row means of g and g * norm.
        float gs = 0.0f, gns = 0.0f;
        if constexpr (VEC) {
            for (int c = lane * 8; c < C; c += 256) {
                float fx[8], fd[8], fw[8];
                load8(x + c, fx);
                load8(d + c, fd);
                load8(w + c, fw);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const float g = fd[k] * fw[k];
                    gs += g;
                    gns += g * ((fx[k] - m) * r);
                }
            }
        } else {
            for (int c = lane; c < C; c += 32) {
                const float g = to_f32(d[c]) * to_f32(w[c]);
                gs += g;
                gns += g * ((to_f32(x[c]) - m) * r);
            }
        }
        const float g_mean = warp_sum(gs) / float(C);
        const float gn_mean = warp_sum(gns) / float(C);

        if constexpr (VEC) {
            for (int c = lane * 8; c < C; c += 256) {
                float fx[8], fd[8], fw[8], fi[8];
                load8(x + c, fx);
                load8(d + c, fd);
                load8(w + c, fw);
                load8(di + c, fi);
                // The accumulators as float4: 128-bit shared accesses keep the
                // lanes' 8-float strides to 2-way bank conflicts.
                float4* aw = reinterpret_cast<float4*>(acc_w + c);
                float4* ab = reinterpret_cast<float4*>(acc_b + c);
                float4 w0 = aw[0], w1 = aw[1], b0 = ab[0], b1 = ab[1];
                float nw[8];
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const float norm = (fx[k] - m) * r;
                    const float g = fd[k] * fw[k];
                    fi[k] += (g - g_mean - norm * gn_mean) * r;
                    nw[k] = fd[k] * norm;
                }
                w0.x += nw[0]; w0.y += nw[1]; w0.z += nw[2]; w0.w += nw[3];
                w1.x += nw[4]; w1.y += nw[5]; w1.z += nw[6]; w1.w += nw[7];
                b0.x += fd[0]; b0.y += fd[1]; b0.z += fd[2]; b0.w += fd[3];
                b1.x += fd[4]; b1.y += fd[5]; b1.z += fd[6]; b1.w += fd[7];
                aw[0] = w0; aw[1] = w1; ab[0] = b0; ab[1] = b1;
                store8(di + c, fi);
                if constexpr (RES) {
                    float4* ar = reinterpret_cast<float4*>(acc_r + c);
                    float q[8];
#pragma unroll
                    for (int k = 0; k < 8; k++) q[k] = to_f32(to_bf16(fi[k]));  // what store8 wrote
                    float4 r0 = ar[0], r1 = ar[1];
                    r0.x += q[0]; r0.y += q[1]; r0.z += q[2]; r0.w += q[3];
                    r1.x += q[4]; r1.y += q[5]; r1.z += q[6]; r1.w += q[7];
                    ar[0] = r0; ar[1] = r1;
                }
            }
        } else {
            for (int c = lane; c < C; c += 32) {
                const float fd = to_f32(d[c]);
                const float norm = (to_f32(x[c]) - m) * r;
                const float g = fd * to_f32(w[c]);
                const bf16 updated = to_bf16(to_f32(di[c]) + (g - g_mean - norm * gn_mean) * r);
                di[c] = updated;
                acc_w[c] += fd * norm;
                acc_b[c] += fd;
                if constexpr (RES) acc_r[c] += to_f32(updated);
            }
        }
    }
    __syncthreads();
    // The block's partial: its warps' rows added in warp order.
    float* out = partial + size_t(blockIdx.x) * K * C;
    for (int c = threadIdx.x; c < K * C; c += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < warps; k++) s += acc_all[size_t(k) * K * C + c];
        out[c] = s;
    }
}

// dweight (C) += sum_g partial[g, 0:C]; dbias (C) += sum_g partial[g, C:2C];
// with dres (K = 3), dres (C) += sum_g partial[g, 2C:3C].
// Block (kReduceCols, kReduceRows): column x sums partial rows y, y+8, ... in
// order, then row 0 adds the kReduceRows sums in order.
__global__ void ln_bwd_reduce_kernel(bf16* dweight, bf16* dbias, bf16* dres, const float* partial, int G, int C, int K) {
    __shared__ float part[kReduceRows][kReduceCols];
    const int col = blockIdx.x * kReduceCols + threadIdx.x;
    float s = 0.0f;
    if (col < K * C)
        for (int g = threadIdx.y; g < G; g += kReduceRows) s += partial[size_t(g) * K * C + col];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || col >= K * C) return;
    float total = 0.0f;
#pragma unroll
    for (int y = 0; y < kReduceRows; y++) total += part[y][threadIdx.x];
    bf16* dst = col < C ? dweight + col : col < 2 * C ? dbias + (col - C) : dres + (col - 2 * C);
    *dst = to_bf16(to_f32(*dst) + total);
}

unsigned ceil_div(long a, long b) { return unsigned((a + b - 1) / b); }

// ---------------------------------------------------------------------------
// RMSNorm, and norms without weight or bias.

// 8 (VEC) or 1 values of an optional vector: the default when it is absent.
template <bool VEC>
__device__ __forceinline__ void load_opt(const bf16* p, int c, float (&f)[8], float dflt) {
    if (!p) {
#pragma unroll
        for (int k = 0; k < 8; k++) f[k] = dflt;
    } else if constexpr (VEC) {
        load8(p + c, f);
    } else {
        f[0] = to_f32(p[c]);
    }
}

// One row; the whole warp calls it. RMS: no centring, the statistic is mean(x^2).
template <bool VEC, bool RMS>
__device__ __forceinline__ void gnorm_row(bf16* out, float* mean, float* rstd, const bf16* x, const bf16* w, const bf16* b, int C,
                                          int lane) {
    constexpr int W = VEC ? 8 : 1, STEP = 32 * W;
    float m = 0.0f;
    if constexpr (!RMS) {
        float s = 0.0f;
        for (int c = lane * W; c < C; c += STEP) {
            float f[8];
            load_opt<VEC>(x, c, f, 0.0f);
#pragma unroll
            for (int k = 0; k < W; k++) s += f[k];
        }
        m = warp_sum(s) / float(C);
    }
    float v = 0.0f;
    for (int c = lane * W; c < C; c += STEP) {
        float f[8];
        load_opt<VEC>(x, c, f, 0.0f);
#pragma unroll
        for (int k = 0; k < W; k++) v += (f[k] - m) * (f[k] - m);
    }
    const float r = 1.0f / sqrtf(warp_sum(v) / float(C) + kEps);
    for (int c = lane * W; c < C; c += STEP) {
        float f[8], fw[8], fb[8], o[8];
        load_opt<VEC>(x, c, f, 0.0f);
        load_opt<VEC>(w, c, fw, 1.0f);
        load_opt<VEC>(b, c, fb, 0.0f);
#pragma unroll
        for (int k = 0; k < W; k++) o[k] = (f[k] - m) * r * fw[k] + fb[k];
        if constexpr (VEC) store8(out + c, o);
        else out[c] = to_bf16(o[0]);
    }
    if (lane == 0) {
        if (mean) *mean = m;
        if (rstd) *rstd = r;
    }
}

template <bool VEC, bool RMS>
__global__ void gnorm_fwd_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w, const bf16* b, int N, int C) {
    const int lane = threadIdx.x % 32;
    const long row = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const size_t off = size_t(row) * C;
    gnorm_row<VEC, RMS>(out + off, mean ? mean + row : nullptr, rstd ? rstd + row : nullptr, inp + off, w, b, C, lane);
}

// residual = a + b rounded to bf16, then the norm of the rounded row (as residual_ln_fwd_kernel).
template <bool VEC, bool RMS>
__global__ void residual_gnorm_fwd_kernel(bf16* residual, bf16* out, float* mean, float* rstd, const bf16* a, const bf16* bb,
                                          const bf16* w, const bf16* b, int N, int C) {
    const int lane = threadIdx.x % 32;
    const long row = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const size_t off = size_t(row) * C;
    if constexpr (VEC) {
        for (int c = lane * 8; c < C; c += 256) {
            float fa[8], fb[8], o[8];
            load8(a + off + c, fa);
            load8(bb + off + c, fb);
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = fa[k] + fb[k];
            store8(residual + off + c, o);
        }
    } else {
        for (int c = lane; c < C; c += 32) residual[off + c] = to_bf16(to_f32(a[off + c]) + to_f32(bb[off + c]));
    }
    __syncwarp();
    gnorm_row<VEC, RMS>(out + off, mean ? mean + row : nullptr, rstd ? rstd + row : nullptr, residual + off, w, b, C, lane);
}

// dinp (N,C) +=; partial (gridDim.x, 2C): this block's sums of dout*norm and
// dout (only when dweight / dbias are wanted: want_w, want_b). Shared memory:
// (blockDim.x/32) x 2C floats.
template <bool VEC, bool RMS>
__global__ void gnorm_bwd_kernel(bf16* dinp, float* partial, const bf16* dout, const bf16* inp, const bf16* w, const float* mean,
                                 const float* rstd, int N, int C, bool want_w, bool want_b) {
    extern __shared__ float acc_all[];
    constexpr int W = VEC ? 8 : 1, STEP = 32 * W;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float* acc_w = acc_all + size_t(warp) * 2 * C;
    float* acc_b = acc_w + C;
    for (int c = lane; c < 2 * C; c += 32) acc_w[c] = 0.0f;
    __syncwarp();
    for (long row = long(blockIdx.x) * warps + warp; row < N; row += long(gridDim.x) * warps) {
        const size_t off = size_t(row) * C;
        const float m = RMS ? 0.0f : mean[row], r = rstd[row];
        float gs = 0.0f, gns = 0.0f;
        for (int c = lane * W; c < C; c += STEP) {
            float fx[8], fd[8], fw[8];
            load_opt<VEC>(inp + off, c, fx, 0.0f);
            load_opt<VEC>(dout + off, c, fd, 0.0f);
            load_opt<VEC>(w, c, fw, 1.0f);
#pragma unroll
            for (int k = 0; k < W; k++) {
                const float g = fd[k] * fw[k];
                gs += g;
                gns += g * ((fx[k] - m) * r);
            }
        }
        const float g_mean = RMS ? 0.0f : warp_sum(gs) / float(C);
        const float gn_mean = warp_sum(gns) / float(C);
        for (int c = lane * W; c < C; c += STEP) {
            float fx[8], fd[8], fw[8], fi[8];
            load_opt<VEC>(inp + off, c, fx, 0.0f);
            load_opt<VEC>(dout + off, c, fd, 0.0f);
            load_opt<VEC>(w, c, fw, 1.0f);
            load_opt<VEC>(dinp + off, c, fi, 0.0f);
#pragma unroll
            for (int k = 0; k < W; k++) {
                const float norm = (fx[k] - m) * r;
                fi[k] += (fd[k] * fw[k] - g_mean - norm * gn_mean) * r;
                if (want_w) acc_w[c + k] += fd[k] * norm;
                if (want_b) acc_b[c + k] += fd[k];
            }
            if constexpr (VEC) store8(dinp + off + c, fi);
            else dinp[off + c] = to_bf16(fi[0]);
        }
    }
    if (!want_w && !want_b) return;
    __syncthreads();
    float* out = partial + size_t(blockIdx.x) * 2 * C;
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < warps; k++) s += acc_all[size_t(k) * 2 * C + c];
        out[c] = s;
    }
}

// As ln_bwd_reduce_kernel, with either output absent.
__global__ void gnorm_bwd_reduce_kernel(bf16* dweight, bf16* dbias, const float* partial, int G, int C) {
    __shared__ float part[kReduceRows][kReduceCols];
    const int col = blockIdx.x * kReduceCols + threadIdx.x;
    float s = 0.0f;
    if (col < 2 * C)
        for (int g = threadIdx.y; g < G; g += kReduceRows) s += partial[size_t(g) * 2 * C + col];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || col >= 2 * C) return;
    float total = 0.0f;
#pragma unroll
    for (int y = 0; y < kReduceRows; y++) total += part[y][threadIdx.x];
    bf16* dst = col < C ? dweight : dbias;
    if (!dst) return;
    dst += col < C ? col : col - C;
    *dst = to_bf16(to_f32(*dst) + total);
}

// QK-norm: warp `id` of N * 2NH normalises head j = id % 2NH of row id / 2NH;
// q heads (j < NH) and k heads (NH <= j < 2NH) both start at j * hs in the row.
__global__ void qknorm_fwd_kernel(bf16* qkv, float* rstd, int N, int C, int NH) {
    const int lane = threadIdx.x % 32, hs = C / NH;
    const long id = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (id >= long(N) * 2 * NH) return;
    const long row = id / (2 * NH);
    const int j = int(id % (2 * NH));
    bf16* x = qkv + size_t(row) * 3 * C + size_t(j) * hs;
    float ss = 0.0f;
    for (int i = lane; i < hs; i += 32) ss += to_f32(x[i]) * to_f32(x[i]);
    const float r = 1.0f / sqrtf(warp_sum(ss) / float(hs) + kEps);
    for (int i = lane; i < hs; i += 32) x[i] = to_bf16(to_f32(x[i]) * r);
    if (lane == 0) rstd[id] = r;
}

// dx = rstd (dy - y mean(dy y)) in place on dqkv; y = qkv (the normalised values).
__global__ void qknorm_bwd_kernel(bf16* dqkv, const bf16* qkv, const float* rstd, int N, int C, int NH) {
    const int lane = threadIdx.x % 32, hs = C / NH;
    const long id = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (id >= long(N) * 2 * NH) return;
    const size_t off = size_t(id / (2 * NH)) * 3 * C + size_t(id % (2 * NH)) * hs;
    bf16* d = dqkv + off;
    const bf16* y = qkv + off;
    float s = 0.0f;
    for (int i = lane; i < hs; i += 32) s += to_f32(d[i]) * to_f32(y[i]);
    const float dot = warp_sum(s) / float(hs), r = rstd[id];
    for (int i = lane; i < hs; i += 32) d[i] = to_bf16(r * (to_f32(d[i]) - to_f32(y[i]) * dot));
}

// The general forward (rms, or a null weight / bias), with or without the residual add.
void gnorm_forward(Context& ctx, const char* op, bf16* residual, const bf16* ra, const bf16* rb, bf16* out, float* mean, float* rstd,
                   const bf16* inp, const bf16* w, const bf16* b, int N, int C, bool rms) {
    if (!rms && !mean) run_failed(std::string(op) + ": mean is null");
    if (!rstd) run_failed(std::string(op) + ": rstd is null");
    if (rms && b) run_failed(std::string(op) + ": RMSNorm takes no bias");
    const bf16* x = residual ? residual : inp;
    bool vec = C % 8 == 0 && aligned16(out) && aligned16(x) && (!w || aligned16(w)) && (!b || aligned16(b));
    if (residual) vec = vec && aligned16(ra) && aligned16(rb);
    const unsigned blocks = ceil_div(N, kFwdWarps), threads = kFwdWarps * 32;
    // Two levels of dispatch: the vector width, then the norm.
    auto launch = [&](auto vec_tag, auto rms_tag) {
        constexpr bool V = decltype(vec_tag)::value, R = decltype(rms_tag)::value;
        if (residual)
            residual_gnorm_fwd_kernel<V, R><<<blocks, threads, 0, ctx.stream>>>(residual, out, mean, rstd, ra, rb, w, b, N, C);
        else
            gnorm_fwd_kernel<V, R><<<blocks, threads, 0, ctx.stream>>>(out, mean, rstd, inp, w, b, N, C);
    };
    using T = std::true_type;
    using F = std::false_type;
    if (vec) rms ? launch(T{}, T{}) : launch(T{}, F{});
    else rms ? launch(F{}, T{}) : launch(F{}, F{});
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void layernorm_forward(Context& ctx, const LayerNormFwd& a) {
    const char* op = "layernorm_forward";
    expect(a.out, DType::bf16, op, "out");
    expect(a.inp, DType::bf16, op, "inp");
    if (a.rms || !a.weight || !a.bias) {
        if (a.weight) expect(a.weight, DType::bf16, op, "weight");
        if (a.bias) expect(a.bias, DType::bf16, op, "bias");
        if (a.mean) expect(a.mean, DType::f32, op, "mean");
        expect(a.rstd, DType::f32, op, "rstd");
        if (a.N <= 0) return;
        gnorm_forward(ctx, op, nullptr, nullptr, nullptr, a.out.as<bf16>(), a.mean.as<float>(), a.rstd.as<float>(), a.inp.as<bf16>(),
                      a.weight.as<bf16>(), a.bias.as<bf16>(), a.N, a.C, a.rms);
        return;
    }
    expect(a.weight, DType::bf16, op, "weight");
    expect(a.bias, DType::bf16, op, "bias");
    if (a.mean) expect(a.mean, DType::f32, op, "mean");
    if (a.rstd) expect(a.rstd, DType::f32, op, "rstd");
    if (a.N <= 0) return;
    bf16* out = a.out.as<bf16>();
    const bf16 *inp = a.inp.as<bf16>(), *w = a.weight.as<bf16>(), *b = a.bias.as<bf16>();
    float *mean = a.mean.as<float>(), *rstd = a.rstd.as<float>();
    const bool vec = a.C % 8 == 0 && aligned16(out) && aligned16(inp) && aligned16(w) && aligned16(b);
    const unsigned blocks = ceil_div(a.N, kFwdWarps);
    if (vec)
        ln_fwd_kernel<true><<<blocks, kFwdWarps * 32, 0, ctx.stream>>>(out, mean, rstd, inp, w, b, a.N, a.C);
    else
        ln_fwd_kernel<false><<<blocks, kFwdWarps * 32, 0, ctx.stream>>>(out, mean, rstd, inp, w, b, a.N, a.C);
    GPT_CUDA_LAUNCH_CHECK();
}

void residual_layernorm_forward(Context& ctx, const ResidualLayerNormFwd& a) {
    const char* op = "residual_layernorm_forward";
    expect(a.residual, DType::bf16, op, "residual");
    expect(a.out, DType::bf16, op, "out");
    expect(a.a, DType::bf16, op, "a");
    expect(a.b, DType::bf16, op, "b");
    if (a.rms || !a.weight || !a.bias) {
        if (a.weight) expect(a.weight, DType::bf16, op, "weight");
        if (a.bias) expect(a.bias, DType::bf16, op, "bias");
        if (a.mean) expect(a.mean, DType::f32, op, "mean");
        expect(a.rstd, DType::f32, op, "rstd");
        if (a.N <= 0) return;
        gnorm_forward(ctx, op, a.residual.as<bf16>(), a.a.as<bf16>(), a.b.as<bf16>(), a.out.as<bf16>(), a.mean.as<float>(),
                      a.rstd.as<float>(), nullptr, a.weight.as<bf16>(), a.bias.as<bf16>(), a.N, a.C, a.rms);
        return;
    }
    expect(a.weight, DType::bf16, op, "weight");
    expect(a.bias, DType::bf16, op, "bias");
    if (a.mean) expect(a.mean, DType::f32, op, "mean");
    if (a.rstd) expect(a.rstd, DType::f32, op, "rstd");
    if (a.N <= 0) return;
    bf16 *res = a.residual.as<bf16>(), *out = a.out.as<bf16>();
    const bf16 *x = a.a.as<bf16>(), *y = a.b.as<bf16>(), *w = a.weight.as<bf16>(), *b = a.bias.as<bf16>();
    float *mean = a.mean.as<float>(), *rstd = a.rstd.as<float>();
    // The same VEC decision as layernorm_forward makes for inp = residual, so
    // the statistics are summed in the same order as the separate path.
    const bool vec = a.C % 8 == 0 && aligned16(res) && aligned16(out) && aligned16(w) && aligned16(b);
    const bool add_vec = aligned16(x) && aligned16(y);
    const unsigned blocks = ceil_div(a.N, kFwdWarps);
    if (vec)
        residual_ln_fwd_kernel<true>
            <<<blocks, kFwdWarps * 32, 0, ctx.stream>>>(res, out, mean, rstd, x, y, w, b, a.N, a.C, add_vec);
    else
        residual_ln_fwd_kernel<false>
            <<<blocks, kFwdWarps * 32, 0, ctx.stream>>>(res, out, mean, rstd, x, y, w, b, a.N, a.C, add_vec);
    GPT_CUDA_LAUNCH_CHECK();
}

// The backward of the general norms: RMSNorm, or a LayerNorm missing a weight or bias.
static void general_norm_backward(Context& ctx, const LayerNormBwd& a) {
    const char* op = "layernorm_backward";
    expect(a.dinp, DType::bf16, op, "dinp");
    expect(a.dout, DType::bf16, op, "dout");
    expect(a.inp, DType::bf16, op, "inp");
    expect(a.rstd, DType::f32, op, "rstd");
    if (!a.rms) expect(a.mean, DType::f32, op, "mean");
    if (a.weight) expect(a.weight, DType::bf16, op, "weight");
    if (a.dweight) expect(a.dweight, DType::bf16, op, "dweight");
    if (a.dbias) expect(a.dbias, DType::bf16, op, "dbias");
    if (a.dres_bias) expect(a.dres_bias, DType::bf16, op, "dres_bias");
    if (a.N <= 0 || a.C <= 0) return;
    const int N = a.N, C = a.C;
    const bool want_w = bool(a.dweight), want_b = bool(a.dbias);
    const size_t warp_bytes = size_t(2) * C * sizeof(float);
    const size_t smem_limit = ctx.prop.sharedMemPerBlockOptin ? ctx.prop.sharedMemPerBlockOptin : 48 * 1024;
    int warps = kBwdMaxWarps;
    while (warps > 1 && warps * warp_bytes > smem_limit) warps /= 2;
    const size_t smem = warps * warp_bytes;
    if (smem > smem_limit)
        run_failed("layernorm_backward: C = " + std::to_string(C) + " needs " + std::to_string(smem) +
                   " bytes of shared memory, the device allows " + std::to_string(smem_limit));
    const int G = int(std::min<long>(ceil_div(N, warps), kBwdMaxBlocks));
    float* partial = (want_w || want_b) ? static_cast<float*>(ctx.scratch(Context::kLayerNorm, size_t(G) * 2 * C * sizeof(float))) : nullptr;
    bf16* dinp = a.dinp.as<bf16>();
    const bf16 *dout = a.dout.as<bf16>(), *inp = a.inp.as<bf16>(), *w = a.weight.as<bf16>();
    const float *mean = a.mean.as<float>(), *rstd = a.rstd.as<float>();
    const bool vec = C % 8 == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && (!w || aligned16(w));
    auto launch = [&](auto kernel) {
        if (smem > 48 * 1024) GPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        kernel<<<G, warps * 32, smem, ctx.stream>>>(dinp, partial, dout, inp, w, mean, rstd, N, C, want_w, want_b);
    };
    if (vec) a.rms ? launch(gnorm_bwd_kernel<true, true>) : launch(gnorm_bwd_kernel<true, false>);
    else a.rms ? launch(gnorm_bwd_kernel<false, true>) : launch(gnorm_bwd_kernel<false, false>);
    GPT_CUDA_LAUNCH_CHECK();
    // bias_grad: folded: the column sums of the updated dinp, as a pass of their own here.
    if (a.dres_bias) column_sum_into(ctx, a.dres_bias.as<bf16>(), dinp, N, C);
    if (!want_w && !want_b) return;
    const dim3 rblock(kReduceCols, kReduceRows);
    gnorm_bwd_reduce_kernel<<<ceil_div(2L * C, kReduceCols), rblock, 0, ctx.stream>>>(a.dweight.as<bf16>(), a.dbias.as<bf16>(), partial,
                                                                                      G, C);
    GPT_CUDA_LAUNCH_CHECK();
}

void layernorm_backward(Context& ctx, const LayerNormBwd& a) {
    const char* op = "layernorm_backward";
    if (a.rms || !a.weight || !a.dweight || !a.dbias) {
        general_norm_backward(ctx, a);
        return;
    }
    expect(a.dinp, DType::bf16, op, "dinp");
    expect(a.dweight, DType::bf16, op, "dweight");
    expect(a.dbias, DType::bf16, op, "dbias");
    expect(a.dout, DType::bf16, op, "dout");
    expect(a.inp, DType::bf16, op, "inp");
    expect(a.weight, DType::bf16, op, "weight");
    expect(a.mean, DType::f32, op, "mean");
    expect(a.rstd, DType::f32, op, "rstd");
    if (a.dres_bias) expect(a.dres_bias, DType::bf16, op, "dres_bias");
    if (a.N <= 0 || a.C <= 0) return;
    const int N = a.N, C = a.C;
    const bool res = bool(a.dres_bias);
    const int K = res ? 3 : 2;

    // Warps per block: as many as the per-warp accumulators (K*C floats each)
    // allow in the opt-in shared memory, at most kBwdMaxWarps.
    const size_t warp_bytes = size_t(K) * C * sizeof(float);
    const size_t smem_limit = ctx.prop.sharedMemPerBlockOptin ? ctx.prop.sharedMemPerBlockOptin : 48 * 1024;
    int warps = kBwdMaxWarps;
    while (warps > 1 && warps * warp_bytes > smem_limit) warps /= 2;
    const size_t smem = warps * warp_bytes;
    if (smem > smem_limit)
        run_failed("layernorm_backward: C = " + std::to_string(C) + " needs " + std::to_string(smem) +
                   " bytes of shared memory, the device allows " + std::to_string(smem_limit));

    // The block count depends only on N: the partials, and so the bits of
    // dweight/dbias, are the same on every run and every device.
    const int G = int(std::min<long>(ceil_div(N, warps), kBwdMaxBlocks));
    float* partial = static_cast<float*>(ctx.scratch(Context::kLayerNorm, size_t(G) * K * C * sizeof(float)));

    bf16* dinp = a.dinp.as<bf16>();
    const bf16 *dout = a.dout.as<bf16>(), *inp = a.inp.as<bf16>(), *w = a.weight.as<bf16>();
    const float *mean = a.mean.as<float>(), *rstd = a.rstd.as<float>();
    const bool vec = C % 8 == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(w);
    auto launch = [&](auto kernel) {
        if (smem > 48 * 1024) GPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        kernel<<<G, warps * 32, smem, ctx.stream>>>(dinp, partial, dout, inp, w, mean, rstd, N, C);
    };
    if (vec) {
        if (res) launch(ln_bwd_kernel<true, true>);
        else launch(ln_bwd_kernel<true, false>);
    } else {
        if (res) launch(ln_bwd_kernel<false, true>);
        else launch(ln_bwd_kernel<false, false>);
    }
    GPT_CUDA_LAUNCH_CHECK();

    const dim3 rblock(kReduceCols, kReduceRows);
    ln_bwd_reduce_kernel<<<ceil_div(long(K) * C, kReduceCols), rblock, 0, ctx.stream>>>(
        a.dweight.as<bf16>(), a.dbias.as<bf16>(), a.dres_bias.as<bf16>(), partial, G, C, K);
    GPT_CUDA_LAUNCH_CHECK();
}

void qknorm_forward(Context& ctx, const QKNormFwd& a) {
    expect(a.qkv, DType::bf16, "qknorm_forward", "qkv");
    expect(a.rstd, DType::f32, "qknorm_forward", "rstd");
    if (a.NH <= 0 || a.C % a.NH != 0) run_failed("qknorm_forward: C is not a multiple of NH");
    const long warps = long(a.N) * 2 * a.NH;
    if (warps <= 0) return;
    qknorm_fwd_kernel<<<ceil_div(warps, kFwdWarps), kFwdWarps * 32, 0, ctx.stream>>>(a.qkv.as<bf16>(), a.rstd.as<float>(), a.N, a.C, a.NH);
    GPT_CUDA_LAUNCH_CHECK();
}

void qknorm_backward(Context& ctx, const QKNormBwd& a) {
    expect(a.dqkv, DType::bf16, "qknorm_backward", "dqkv");
    expect(a.qkv, DType::bf16, "qknorm_backward", "qkv");
    expect(a.rstd, DType::f32, "qknorm_backward", "rstd");
    if (a.NH <= 0 || a.C % a.NH != 0) run_failed("qknorm_backward: C is not a multiple of NH");
    const long warps = long(a.N) * 2 * a.NH;
    if (warps <= 0) return;
    qknorm_bwd_kernel<<<ceil_div(warps, kFwdWarps), kFwdWarps * 32, 0, ctx.stream>>>(a.dqkv.as<bf16>(), a.qkv.as<bf16>(),
                                                                                      a.rstd.as<float>(), a.N, a.C, a.NH);
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace gpt::cuda
