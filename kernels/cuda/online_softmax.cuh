// The forward attention kernels' per-warp arithmetic on a 16-row slice of
// scores and outputs held in mma.m16n8's C fragment layout (lane = 4 group +
// tig; tile nt, element e: row group + 8 (e >> 1), column 8 nt + 2 tig +
// (e & 1)), shared by flash (attention.cu, mma.sync) and wgmma
// (attention_hopper.cu, whose accumulators have the same layout per warp).
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

namespace gpt::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
    return *reinterpret_cast<uint32_t*>(&v);
}

// The A fragments of a 16x16 block of a warp's 16 x N f32 accumulator tile
// (C layout, n-tiles 2kk and 2kk+1), rounded to bf16: the C layout of two
// adjacent n-tiles is exactly the A layout of one k16 block.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// One key tile of the online softmax, in the log2 domain. s (16 x 8 NT) holds
// the raw scores of keys k0 .. of the warp's rows qw .. qw + 15 and leaves with
// P = exp2(s scale_log2 - max); keys above the diagonal or at or beyond T are
// masked when `mask`. m (running max) and l (this thread's part of the running
// sums) of rows group, group + 8 are updated; alpha gets the factor by which
// the output accumulator of each row must be rescaled (rescale_rows), which a
// caller overlapping the products may do later, once the accumulator is free.
template <int NT>
__device__ __forceinline__ void softmax_tile(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&alpha)[2], int k0, int qw,
                                             int T, float scale_log2, bool mask, int group, int tig) {
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float x = s[nt][e] * scale_log2;
            if (mask) {
                const int key = k0 + nt * 8 + tig * 2 + (e & 1);
                const int row = qw + group + (e >> 1) * 8;
                if (key > row || key >= T) x = -INFINITY;
            }
            s[nt][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    }
    float mu[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float mnew = fmaxf(m[r], mx[r]);
        mu[r] = mnew == -INFINITY ? 0.f : mnew;  // a fully masked row stays at p = 0
        alpha[r] = exp2f(m[r] - mu[r]);
        m[r] = mnew;
    }
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[nt][e] = exp2f(s[nt][e] - mu[e >> 1]);
            rs[e >> 1] += s[nt][e];
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + rs[r];
}

// o (16 x 8 OT) rows group, group + 8 times alpha[0], alpha[1].
template <int OT>
__device__ __forceinline__ void rescale_rows(float (&o)[OT][4], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < OT; i++) {
        o[i][0] *= alpha[0];
        o[i][1] *= alpha[0];
        o[i][2] *= alpha[1];
        o[i][3] *= alpha[1];
    }
}

// softmax_tile, then o (16 x 8 OT) rescaled by the change of the max.
template <int NT, int OT>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NT][4], float (&o)[OT][4], float (&m)[2], float (&l)[2], int k0,
                                                    int qw, int T, float scale_log2, bool mask, int group, int tig) {
    float alpha[2];
    softmax_tile(s, m, l, alpha, k0, qw, T, scale_log2, mask, group, tig);
    rescale_rows(o, alpha);
}

// Normalise and write the warp's rows qw .. qw + 15: out points at row 0's
// first column of the head (rows C elements apart, 8 OT columns each), lse at
// row 0's log-sum-exp (natural log, one f32 per row); rows at or beyond T are
// skipped.
template <int OT>
__device__ __forceinline__ void store_rows(const float (&o)[OT][4], const float (&m)[2], float (&l)[2], __nv_bfloat16* out,
                                           float* lse, int qw, int T, int C, int group, int tig) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        inv[r] = 1.f / l[r];
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = qw + group + r * 8;
        if (row >= T) continue;
        __nv_bfloat16* orow = out + size_t(row) * C;
#pragma unroll
        for (int nt = 0; nt < OT; nt++) {
            *reinterpret_cast<__nv_bfloat162*>(orow + nt * 8 + tig * 2) =
                __floats2bfloat162_rn(o[nt][2 * r] * inv[r], o[nt][2 * r + 1] * inv[r]);
        }
        if (tig == 0) lse[row] = m[r] * kLn2 + logf(l[r]);
    }
}

}  // namespace gpt::cuda
