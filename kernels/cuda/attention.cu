// Causal multi-head self-attention on the GPU: forward, backward, KV-cache decode.
//
// Shapes (kernels/ops.h): qkv (B,T,3C) bf16, row (b,t) = [q(C) | k(C) | v(C)],
// head h at columns h*hd .. h*hd+hd-1 of each third, hd = C/NH; out (B,T,C)
// bf16; lse (B,NH,T) f32 = natural log-sum-exp of each scaled softmax row
// (scale = 1/sqrt(hd)), as kernels/cpu/attention.cpp defines it; dqkv (B,T,3C)
// is overwritten. No kernel here keeps a T x T buffer or uses float atomics.
//
// Variants (kernels.attention):
//   flash   FlashAttention-2 style tensor-core kernels for hd 64 and 128
//           (mma.sync m16n8k16 bf16 -> f32, ldmatrix, cp.async double
//           buffering). Tile sizes block_q x block_k come from the registry;
//           every combination is instantiated. The backward is atomic-free:
//           one kernel per key tile accumulates dK, dV over the query tiles at
//           or after it, a second per query tile accumulates dQ over the key
//           tiles up to the diagonal; both recompute P = exp(S*scale - lse).
//           In the backward block_q is the outer tile (the key rows of a dK/dV
//           block, the query rows of a dQ block) and block_k the inner one.
//           P and dS are rounded to bf16 for the tensor-core products.
//           D = rowsum(dO * O) comes from a pass of its own, or (fold_d = 1)
//           from the dQ kernel, which then runs before the dK/dV kernel.
//           Other head sizes (and unaligned pointers) take the row-wise
//           kernels below: one warp per query (or key) row, online softmax,
//           hd spread over the lanes, f32 throughout; O(T) memory, slower.
//   cudnn   cuDNN's fused SDPA through its graph API (attention_cudnn.cu).
//   wgmma   the forward on Hopper's warpgroup MMA (attention_hopper.cu, sm_90a
//           only; head sizes 64 and 128, else flash's), its tiles loaded by
//           cp.async or (tma = 1, 2) by a TMA producer warpgroup; the backward flash's,
//           or with wgmma_bwd = 1 a 5-product warpgroup-MMA kernel per 128
//           keys whose dQ parts are summed in a fixed order (no atomics).
// Decode (sampling) is one small kernel for every variant.
//
// Resources of the flash kernels (ptxas, sm_90; block_q/block_k = 128/64, the
// default): registers fwd 175 (hd 64) / 181 (hd 128), dK/dV 216 / 255, dQ
// 160 / 212; dynamic shared memory fwd 54 / 102 KiB, dK/dV 73 / 137 KiB, dQ
// 72 / 136 KiB. No instance spills except dK/dV hd 64 at 64/64 (12 bytes).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/cuda/ptx.cuh"

namespace gpt::cuda {
namespace {

using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------------------
// PTX helpers (the cp.async ones are in ptx.cuh). Fragment layouts of
// mma.m16n8k16 (bf16), lane = 4*group + tig:
//   A (16x16, row-major) a0: (group, 2tig..+1)  a1: (group+8, 2tig..+1)
//                        a2: (group, 2tig+8..+9) a3: (group+8, 2tig+8..+9)
//   B (16x8, "col")      b0: (k 2tig..+1, n group) b1: (k 2tig+8..+9, n group)
//   C (16x8, f32)        c0,c1: (group, 2tig..+1)  c2,c3: (group+8, 2tig..+1)
// The lower-indexed element of a pair sits in the low 16 bits of its register.

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i,
// register i receives matrix i: lane holds (row lane/4, cols 2(lane%4)..+1).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}
// Transposed: lane holds (rows 2(lane%4)..+1, col lane/4) of each stored matrix.
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

// c (16x8 f32) += a (16x16 bf16) * b (16x8 bf16)
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared-memory tiles are row-major ROWS x HD bf16 with a row stride of HD+8
// elements: the 16-byte pad shifts consecutive rows by 4 banks, so the 8 row
// addresses of an ldmatrix hit 32 distinct banks.
template <int HD>
struct Tile {
    static constexpr int kLd = HD + 8;
};

// Address of the ldmatrix row this lane supplies for an A operand (16x16 block
// at row r0, col c0 of a row-major tile), or, identically, for the trans-B
// operand of a [k][n] tile (k16 block at r0, two n8 tiles at c0, c0+8):
// matrices (r0, c0), (r0+8, c0), (r0, c0+8), (r0+8, c0+8).
template <int LD>
__device__ __forceinline__ const bf16* frag_a(const bf16* s, int r0, int c0, int lane) {
    return s + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 + (lane >> 4) * 8;
}
// Address for a non-trans B operand read from a [n][k] tile (B = tile^T): two
// n8 tiles at rows r0, r0+8 and one k16 block at col c0: matrices (r0, c0),
// (r0, c0+8), (r0+8, c0), (r0+8, c0+8) -> b0, b1 of n-tile r0; b0, b1 of r0+8.
template <int LD>
__device__ __forceinline__ const bf16* frag_bt(const bf16* s, int r0, int c0, int lane) {
    return s + (r0 + (lane & 7) + (lane >> 4) * 8) * LD + c0 + ((lane >> 3) & 1) * 8;
}

// Rows r0 .. r0+ROWS-1 of a (T, HD) slice of a row-major matrix with row
// stride ld elements, into a padded tile; rows >= T are zero-filled.
template <int ROWS, int HD, int NT>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, size_t ld, int r0, int T, int tid) {
    constexpr int kChunks = HD / 8;  // 16-byte chunks per row
    for (int i = tid; i < ROWS * kChunks; i += NT) {
        const int r = i / kChunks, c = (i % kChunks) * 8;
        const bool ok = r0 + r < T;
        cp_async16(s + r * Tile<HD>::kLd + c, g + (ok ? size_t(r0 + r) * ld : 0) + c, ok);
    }
}
// ROWS f32 values g[r0 ..] (zero beyond T).
template <int ROWS, int NT>
__device__ __forceinline__ void load_vec(float* s, const float* g, int r0, int T, int tid) {
    for (int i = tid; i < ROWS; i += NT) {
        const bool ok = r0 + i < T;
        cp_async4(s + i, g + (ok ? r0 + i : 0), ok);
    }
}

// ---------------------------------------------------------------------------
// Flash forward. Grid (ceil(T/BQ), NH, B), BQ/16 warps; warp w owns query rows
// q0+16w .. +15. Loops over key tiles 0 .. the diagonal with K, V double
// buffered in shared memory. Scores are kept in the log2 domain
// (x = s * scale * log2 e) so exp2f is one instruction.
// Shared memory: Q (BQ x HD+8) + 2 x K, 2 x V (BK x HD+8), bf16.
template <int HD, int BQ, int BK>
constexpr size_t fwd_smem_bytes() {
    return size_t(BQ + 4 * BK) * Tile<HD>::kLd * sizeof(bf16);
}

template <int HD, int BQ, int BK>
__global__ void __launch_bounds__(BQ * 2) attention_fwd_flash_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                                     const bf16* __restrict__ qkv, int T, int C,
                                                                     int NH, float scale_log2) {
    constexpr int NT = BQ * 2, LD = Tile<HD>::kLd;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // BQ x LD
    bf16* sK = sQ + BQ * LD;                        // 2 x BK x LD
    bf16* sV = sK + 2 * BK * LD;                    // 2 x BK x LD

    // Longest rows (most key tiles) first, for a shorter tail.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
    const int h = blockIdx.y, b = blockIdx.z;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * HD;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    const int qw = q0 + warp * 16;  // first query row of this warp
    const int nkt = (min(T, q0 + BQ) + BK - 1) / BK;

    load_tile<BQ, HD, NT>(sQ, base, ld, q0, T, tid);
    load_tile<BK, HD, NT>(sK, base + C, ld, 0, T, tid);
    load_tile<BK, HD, NT>(sV, base + 2 * size_t(C), ld, 0, T, tid);
    cp_async_commit();

    uint32_t qf[HD / 16][4];  // this warp's 16 x HD Q block as A fragments
    float o[HD / 8][4];       // 16 x HD output accumulator
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};  // running max of rows group, group+8
    float l[2] = {0.f, 0.f};              // this thread's part of the running sums

    for (int j = 0; j < nkt; j++) {
        const int buf = j & 1;
        cp_async_prefetch(j + 1 < nkt, [&] {
            load_tile<BK, HD, NT>(sK + (buf ^ 1) * BK * LD, base + C, ld, (j + 1) * BK, T, tid);
            load_tile<BK, HD, NT>(sV + (buf ^ 1) * BK * LD, base + 2 * size_t(C), ld, (j + 1) * BK, T, tid);
        });
        __syncthreads();
        if (j == 0) {
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) ldsm_x4(qf[kk], frag_a<LD>(sQ, warp * 16, kk * 16, lane));
        }
        const int k0 = j * BK;
        const bf16* k_s = sK + buf * BK * LD;
        const bf16* v_s = sV + buf * BK * LD;
        if (k0 <= qw + 15) {  // else every key of the tile is after every row of this warp
            float s[BK / 8][4];
#pragma unroll
            for (int i = 0; i < BK / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
                for (int nn = 0; nn < BK / 16; nn++) {
                    uint32_t r[4];
                    ldsm_x4(r, frag_bt<LD>(k_s, nn * 16, kk * 16, lane));
                    mma_bf16(s[2 * nn], qf[kk], r[0], r[1]);
                    mma_bf16(s[2 * nn + 1], qf[kk], r[2], r[3]);
                }
            }
            // Scale, mask (above the diagonal and beyond T), softmax step; O rescaled.
            online_softmax_tile(s, o, m, l, k0, qw, T, scale_log2, (k0 + BK - 1 > qw) || (k0 + BK > T), group, tig);
            // O += P V, P as bf16 A fragments straight from the accumulators.
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                uint32_t pa[4];
                acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int dn = 0; dn < HD / 16; dn++) {
                    uint32_t r[4];
                    ldsm_x4_t(r, frag_a<LD>(v_s, kk * 16, dn * 16, lane));
                    mma_bf16(o[2 * dn], pa, r[0], r[1]);
                    mma_bf16(o[2 * dn + 1], pa, r[2], r[3]);
                }
            }
        }
        __syncthreads();  // everyone is done with buffer `buf` before it is refilled
    }

    // Normalise, write out (bf16) and lse (natural log).
    store_rows(o, m, l, out + size_t(b) * T * C + size_t(h) * HD, lse + (size_t(b) * NH + h) * T, qw, T, C, group, tig);
}

// ---------------------------------------------------------------------------
// Backward preprocessing: D (B,NH,T) f32 = rowsum(dout * out) per head; one
// warp per (b, t, h), lanes over hd. Shared by the flash and row-wise paths.
__global__ void attention_bwd_dot_kernel(float* __restrict__ D, const bf16* __restrict__ dout,
                                         const bf16* __restrict__ out, int B, int T, int C, int NH) {
    const long row = long(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;  // (b, h, t)
    const int lane = threadIdx.x % 32;
    if (row >= long(B) * NH * T) return;
    const int t = int(row % T), h = int((row / T) % NH), b = int(row / (long(T) * NH));
    const int hd = C / NH;
    const size_t off = (size_t(b) * T + t) * C + size_t(h) * hd;
    float acc = 0.f;
    for (int d = lane; d < hd; d += 32) acc += to_f32(dout[off + d]) * to_f32(out[off + d]);
    acc = warp_sum(acc);
    if (lane == 0) D[row] = acc;
}

// Flash backward, dK and dV. Grid (ceil(T/BKO), NH, B), BKO/16 warps; warp w
// owns key rows k0+16w .. +15 and accumulates their dK, dV (16 x HD each, f32
// registers) over the query tiles (BQI rows) from the diagonal to T, with Q,
// dO, lse and D double buffered. Per tile, transposed so keys are the rows:
//   S^T = K Q^T, P^T = exp(S^T scale - lse), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q;  finally dK *= scale.
// Shared memory: K, V (BKO x HD+8) + 2 x Q, 2 x dO (BQI x HD+8) bf16 + 2 x lse, D (BQI) f32.
template <int HD, int BKO, int BQI>
constexpr size_t bwd_dkdv_smem_bytes() {
    return size_t(2 * BKO + 4 * BQI) * Tile<HD>::kLd * sizeof(bf16) + 4 * BQI * sizeof(float);
}

template <int HD, int BKO, int BQI>
__global__ void __launch_bounds__(BKO * 2)
    attention_bwd_dkdv_flash_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                    const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                    const float* __restrict__ Dg, int T, int C, int NH, float scale,
                                    float scale_log2) {
    constexpr int NT = BKO * 2, LD = Tile<HD>::kLd;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // BKO x LD
    bf16* sV = sK + BKO * LD;                       // BKO x LD
    bf16* sQ = sV + BKO * LD;                       // 2 x BQI x LD
    bf16* sO = sQ + 2 * BQI * LD;                   // 2 x BQI x LD (dO)
    float* sL = reinterpret_cast<float*>(sO + 2 * BQI * LD);  // 2 x BQI, lse
    float* sD = sL + 2 * BQI;                                  // 2 x BQI, D

    const int k0 = blockIdx.x * BKO, h = blockIdx.y, b = blockIdx.z;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * HD;
    const bf16* dbase = dout + size_t(b) * T * C + size_t(h) * HD;
    const float* lrow = lse + (size_t(b) * NH + h) * T;
    const float* drow = Dg + (size_t(b) * NH + h) * T;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    const int kw = k0 + warp * 16;          // first key row of this warp
    const int qstart = (k0 / BQI) * BQI;    // the query tile holding row k0
    const int nqt = (T - qstart + BQI - 1) / BQI;

    load_tile<BKO, HD, NT>(sK, base + C, ld, k0, T, tid);
    load_tile<BKO, HD, NT>(sV, base + 2 * size_t(C), ld, k0, T, tid);
    load_tile<BQI, HD, NT>(sQ, base, ld, qstart, T, tid);
    load_tile<BQI, HD, NT>(sO, dbase, C, qstart, T, tid);
    load_vec<BQI, NT>(sL, lrow, qstart, T, tid);
    load_vec<BQI, NT>(sD, drow, qstart, T, tid);
    cp_async_commit();

    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;

    for (int j = 0; j < nqt; j++) {
        const int buf = j & 1, q0 = qstart + j * BQI;
        cp_async_prefetch(j + 1 < nqt, [&] {
            const int qn = q0 + BQI, nb = buf ^ 1;
            load_tile<BQI, HD, NT>(sQ + nb * BQI * LD, base, ld, qn, T, tid);
            load_tile<BQI, HD, NT>(sO + nb * BQI * LD, dbase, C, qn, T, tid);
            load_vec<BQI, NT>(sL + nb * BQI, lrow, qn, T, tid);
            load_vec<BQI, NT>(sD + nb * BQI, drow, qn, T, tid);
        });
        __syncthreads();
        const bf16* q_s = sQ + buf * BQI * LD;
        const bf16* o_s = sO + buf * BQI * LD;
        const float* l_s = sL + buf * BQI;
        const float* d_s = sD + buf * BQI;
        if (q0 + BQI - 1 >= kw) {  // else every query of the tile is before every key of this warp
            // S^T (16 x BQI) = K_w Q^T
            float p[BQI / 8][4];
#pragma unroll
            for (int i = 0; i < BQI / 8; i++) p[i][0] = p[i][1] = p[i][2] = p[i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t ka[4];
                ldsm_x4(ka, frag_a<LD>(sK, warp * 16, kk * 16, lane));
#pragma unroll
                for (int nn = 0; nn < BQI / 16; nn++) {
                    uint32_t r[4];
                    ldsm_x4(r, frag_bt<LD>(q_s, nn * 16, kk * 16, lane));
                    mma_bf16(p[2 * nn], ka, r[0], r[1]);
                    mma_bf16(p[2 * nn + 1], ka, r[2], r[3]);
                }
            }
            // P^T = exp2(S^T scale log2e - lse log2e), zero where query < key or query >= T.
#pragma unroll
            for (int nt = 0; nt < BQI / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qc = nt * 8 + tig * 2 + (e & 1);  // query column within the tile
                    const int key = kw + group + (e >> 1) * 8;
                    const int query = q0 + qc;
                    p[nt][e] = (query >= key && query < T) ? exp2f(p[nt][e] * scale_log2 - l_s[qc] * kLog2e) : 0.f;
                }
            }
            // dV += P^T dO
#pragma unroll
            for (int kk = 0; kk < BQI / 16; kk++) {
                uint32_t pa[4];
                acc_to_a(pa, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
                for (int dn = 0; dn < HD / 16; dn++) {
                    uint32_t r[4];
                    ldsm_x4_t(r, frag_a<LD>(o_s, kk * 16, dn * 16, lane));
                    mma_bf16(dv[2 * dn], pa, r[0], r[1]);
                    mma_bf16(dv[2 * dn + 1], pa, r[2], r[3]);
                }
            }
            // dP^T (16 x BQI) = V_w dO^T
            float ds[BQI / 8][4];
#pragma unroll
            for (int i = 0; i < BQI / 8; i++) ds[i][0] = ds[i][1] = ds[i][2] = ds[i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t va[4];
                ldsm_x4(va, frag_a<LD>(sV, warp * 16, kk * 16, lane));
#pragma unroll
                for (int nn = 0; nn < BQI / 16; nn++) {
                    uint32_t r[4];
                    ldsm_x4(r, frag_bt<LD>(o_s, nn * 16, kk * 16, lane));
                    mma_bf16(ds[2 * nn], va, r[0], r[1]);
                    mma_bf16(ds[2 * nn + 1], va, r[2], r[3]);
                }
            }
            // dS^T = P^T (dP^T - D)
#pragma unroll
            for (int nt = 0; nt < BQI / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) ds[nt][e] = p[nt][e] * (ds[nt][e] - d_s[nt * 8 + tig * 2 + (e & 1)]);
            }
            // dK += dS^T Q
#pragma unroll
            for (int kk = 0; kk < BQI / 16; kk++) {
                uint32_t sa[4];
                acc_to_a(sa, ds[2 * kk], ds[2 * kk + 1]);
#pragma unroll
                for (int dn = 0; dn < HD / 16; dn++) {
                    uint32_t r[4];
                    ldsm_x4_t(r, frag_a<LD>(q_s, kk * 16, dn * 16, lane));
                    mma_bf16(dk[2 * dn], sa, r[0], r[1]);
                    mma_bf16(dk[2 * dn + 1], sa, r[2], r[3]);
                }
            }
        }
        __syncthreads();  // buffer `buf` is refilled next iteration
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = kw + group + r * 8;
        if (key >= T) continue;
        bf16* krow = dqkv + (size_t(b) * T + key) * ld + C + size_t(h) * HD;
        bf16* vrow = krow + C;
#pragma unroll
        for (int nt = 0; nt < HD / 8; nt++) {
            *reinterpret_cast<__nv_bfloat162*>(krow + nt * 8 + tig * 2) =
                __floats2bfloat162_rn(dk[nt][2 * r] * scale, dk[nt][2 * r + 1] * scale);
            *reinterpret_cast<__nv_bfloat162*>(vrow + nt * 8 + tig * 2) =
                __floats2bfloat162_rn(dv[nt][2 * r], dv[nt][2 * r + 1]);
        }
    }
}

// Flash backward, dQ. Grid (ceil(T/BQO), NH, B), BQO/16 warps; warp w owns
// query rows q0+16w .. +15 and accumulates their dQ over key tiles (BKI rows)
// 0 .. the diagonal, K and V double buffered:
//   S = Q K^T, P = exp(S scale - lse), dP = dO V^T, dS = P (dP - D), dQ += dS K;
// finally dQ *= scale. Shared memory: Q, dO (BQO x HD+8) + 2 x K, 2 x V (BKI x HD+8).
// With `out` given (kernels.attention.fold_d = 1) the kernel computes D of its
// own rows first, instead of reading it from attention_bwd_dot_kernel: it
// already reads dO, so the separate pass's second read of dO (and a launch) is
// saved. It writes D to Dg for the dK/dV kernel, which then runs after it.
// The sum is the dot kernel's, term for term and in the same order, so D and
// every gradient are bit-identical to the unfolded path.
template <int HD, int BQO, int BKI>
constexpr size_t bwd_dq_smem_bytes() {
    return size_t(2 * BQO + 4 * BKI) * Tile<HD>::kLd * sizeof(bf16);
}

template <int HD, int BQO, int BKI>
__global__ void __launch_bounds__(BQO * 2)
    attention_bwd_dq_flash_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                  const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                  float* __restrict__ Dg, const bf16* __restrict__ out, int T, int C, int NH, float scale,
                                  float scale_log2) {
    constexpr int NT = BQO * 2, LD = Tile<HD>::kLd;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // BQO x LD
    bf16* sO = sQ + BQO * LD;                       // BQO x LD (dO)
    bf16* sK = sO + BQO * LD;                       // 2 x BKI x LD
    bf16* sV = sK + 2 * BKI * LD;                   // 2 x BKI x LD

    const int q0 = (gridDim.x - 1 - blockIdx.x) * BQO;
    const int h = blockIdx.y, b = blockIdx.z;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * HD;
    const bf16* dbase = dout + size_t(b) * T * C + size_t(h) * HD;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    const int qw = q0 + warp * 16;
    const int nkt = (min(T, q0 + BQO) + BKI - 1) / BKI;

    load_tile<BQO, HD, NT>(sQ, base, ld, q0, T, tid);
    load_tile<BQO, HD, NT>(sO, dbase, C, q0, T, tid);
    load_tile<BKI, HD, NT>(sK, base + C, ld, 0, T, tid);
    load_tile<BKI, HD, NT>(sV, base + 2 * size_t(C), ld, 0, T, tid);
    cp_async_commit();

    // lse (log2 domain) and D of this thread's rows group, group+8.
    float lr[2], dr[2] = {0.f, 0.f};
    if (out) {
        // D of the warp's 16 rows, one row at a time across the lanes (the dot
        // kernel's order); rows >= T keep D = 0 and write nothing.
        for (int rr = 0; rr < 16; rr++) {
            const int row = qw + rr;
            if (row >= T) break;
            const size_t off = (size_t(b) * T + row) * C + size_t(h) * HD;
            float acc = 0.f;
            for (int d = lane; d < HD; d += 32) acc += to_f32(dout[off + d]) * to_f32(out[off + d]);
            acc = warp_sum(acc);
            if (rr == group) dr[0] = acc;
            if (rr == group + 8) dr[1] = acc;
            if (lane == 0) Dg[(size_t(b) * NH + h) * T + row] = acc;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = qw + group + r * 8;
        const size_t i = (size_t(b) * NH + h) * T + row;
        lr[r] = row < T ? lse[i] * kLog2e : 0.f;
        if (!out) dr[r] = row < T ? Dg[i] : 0.f;
    }

    float dq[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

    for (int j = 0; j < nkt; j++) {
        const int buf = j & 1;
        cp_async_prefetch(j + 1 < nkt, [&] {
            load_tile<BKI, HD, NT>(sK + (buf ^ 1) * BKI * LD, base + C, ld, (j + 1) * BKI, T, tid);
            load_tile<BKI, HD, NT>(sV + (buf ^ 1) * BKI * LD, base + 2 * size_t(C), ld, (j + 1) * BKI, T, tid);
        });
        __syncthreads();
        const int k0 = j * BKI;
        const bf16* k_s = sK + buf * BKI * LD;
        const bf16* v_s = sV + buf * BKI * LD;
        if (k0 <= qw + 15) {
            // S = Q_w K^T and dP = dO_w V^T (16 x BKI each)
            float p[BKI / 8][4], ds[BKI / 8][4];
#pragma unroll
            for (int i = 0; i < BKI / 8; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) p[i][e] = ds[i][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t qa[4], oa[4];
                ldsm_x4(qa, frag_a<LD>(sQ, warp * 16, kk * 16, lane));
                ldsm_x4(oa, frag_a<LD>(sO, warp * 16, kk * 16, lane));
#pragma unroll
                for (int nn = 0; nn < BKI / 16; nn++) {
                    uint32_t r[4];
                    ldsm_x4(r, frag_bt<LD>(k_s, nn * 16, kk * 16, lane));
                    mma_bf16(p[2 * nn], qa, r[0], r[1]);
                    mma_bf16(p[2 * nn + 1], qa, r[2], r[3]);
                    ldsm_x4(r, frag_bt<LD>(v_s, nn * 16, kk * 16, lane));
                    mma_bf16(ds[2 * nn], oa, r[0], r[1]);
                    mma_bf16(ds[2 * nn + 1], oa, r[2], r[3]);
                }
            }
            // P, then dS = P (dP - D); zero where key > query or query >= T.
#pragma unroll
            for (int nt = 0; nt < BKI / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = k0 + nt * 8 + tig * 2 + (e & 1);
                    const int row = qw + group + (e >> 1) * 8;
                    const float pv =
                        (key <= row && row < T) ? exp2f(p[nt][e] * scale_log2 - lr[e >> 1]) : 0.f;
                    ds[nt][e] = pv * (ds[nt][e] - dr[e >> 1]);
                }
            }
            // dQ += dS K
#pragma unroll
            for (int kk = 0; kk < BKI / 16; kk++) {
                uint32_t sa[4];
                acc_to_a(sa, ds[2 * kk], ds[2 * kk + 1]);
#pragma unroll
                for (int dn = 0; dn < HD / 16; dn++) {
                    uint32_t r[4];
                    ldsm_x4_t(r, frag_a<LD>(k_s, kk * 16, dn * 16, lane));
                    mma_bf16(dq[2 * dn], sa, r[0], r[1]);
                    mma_bf16(dq[2 * dn + 1], sa, r[2], r[3]);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = qw + group + r * 8;
        if (row >= T) continue;
        bf16* qrow = dqkv + (size_t(b) * T + row) * ld + size_t(h) * HD;
#pragma unroll
        for (int nt = 0; nt < HD / 8; nt++) {
            *reinterpret_cast<__nv_bfloat162*>(qrow + nt * 8 + tig * 2) =
                __floats2bfloat162_rn(dq[nt][2 * r] * scale, dq[nt][2 * r + 1] * scale);
        }
    }
}

// ---------------------------------------------------------------------------
// Row-wise kernels for any hd <= kRowMaxHd: one warp per row, element d of the
// head on lane d % 32 (slot d / 32), online softmax over the keys, every dot
// product reduced across the warp. O(T) work per row, no tensor cores.
constexpr int kRowMaxHd = 256;
constexpr int kRowSlots = kRowMaxHd / 32;
constexpr int kRowWarps = 4;  // warps per block

// Grid over B*NH*T rows (b, h, t): out and lse of query row t.
__global__ void __launch_bounds__(kRowWarps * 32)
    attention_fwd_rowwise_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ qkv,
                                 int B, int T, int C, int NH, float scale) {
    const long row = long(blockIdx.x) * kRowWarps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= long(B) * NH * T) return;
    const int t = int(row % T), h = int((row / T) % NH), b = int(row / (long(T) * NH));
    const int hd = C / NH;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * hd;
    float q[kRowSlots], acc[kRowSlots];
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        q[i] = d < hd ? to_f32(base[size_t(t) * ld + d]) : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int u = 0; u <= t; u++) {
        const bf16* k = base + size_t(u) * ld + C;
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            if (d < hd) dot += q[i] * to_f32(k[d]);
        }
        const float x = warp_sum(dot) * scale;
        const float mnew = fmaxf(m, x);
        const float alpha = __expf(m - mnew), p = __expf(x - mnew);
        l = l * alpha + p;
        m = mnew;
        const bf16* v = k + C;
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            acc[i] = acc[i] * alpha + (d < hd ? p * to_f32(v[d]) : 0.f);
        }
    }
    bf16* o = out + (size_t(b) * T + t) * C + size_t(h) * hd;
    const float inv = 1.f / l;
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        if (d < hd) o[d] = to_bf16(acc[i] * inv);
    }
    if (lane == 0) lse[row] = m + logf(l);
}

// dQ of query row t (grid over (b, h, t)): dq = scale sum_{u<=t} p (dO.v_u - D) k_u.
__global__ void __launch_bounds__(kRowWarps * 32)
    attention_bwd_dq_rowwise_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                    const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                    const float* __restrict__ Dg, int B, int T, int C, int NH, float scale) {
    const long row = long(blockIdx.x) * kRowWarps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= long(B) * NH * T) return;
    const int t = int(row % T), h = int((row / T) % NH), b = int(row / (long(T) * NH));
    const int hd = C / NH;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * hd;
    const bf16* dorow = dout + (size_t(b) * T + t) * C + size_t(h) * hd;
    float q[kRowSlots], g[kRowSlots], acc[kRowSlots];
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        q[i] = d < hd ? to_f32(base[size_t(t) * ld + d]) : 0.f;
        g[i] = d < hd ? to_f32(dorow[d]) : 0.f;
        acc[i] = 0.f;
    }
    const float lt = lse[row], Dt = Dg[row];
    for (int u = 0; u <= t; u++) {
        const bf16* k = base + size_t(u) * ld + C;
        const bf16* v = k + C;
        float qk = 0.f, gv = 0.f;
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            if (d < hd) {
                qk += q[i] * to_f32(k[d]);
                gv += g[i] * to_f32(v[d]);
            }
        }
        qk = warp_sum(qk);
        gv = warp_sum(gv);
        const float ds = __expf(qk * scale - lt) * (gv - Dt);
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            if (d < hd) acc[i] += ds * to_f32(k[d]);
        }
    }
    bf16* dq = dqkv + (size_t(b) * T + t) * ld + size_t(h) * hd;
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        if (d < hd) dq[d] = to_bf16(acc[i] * scale);
    }
}

// dK, dV of key row u (grid over (b, h, u)): over queries t >= u,
// dk = scale sum_t p (dO_t.v - D_t) q_t,  dv = sum_t p dO_t.
__global__ void __launch_bounds__(kRowWarps * 32)
    attention_bwd_dkdv_rowwise_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                      const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                      const float* __restrict__ Dg, int B, int T, int C, int NH, float scale) {
    const long row = long(blockIdx.x) * kRowWarps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= long(B) * NH * T) return;
    const int u = int(row % T), h = int((row / T) % NH), b = int(row / (long(T) * NH));
    const int hd = C / NH;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * hd;
    const float* lrow = lse + (row - u);  // (b, h, 0)
    const float* drow = Dg + (row - u);
    float k[kRowSlots], v[kRowSlots], ak[kRowSlots], av[kRowSlots];
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        k[i] = d < hd ? to_f32(base[size_t(u) * ld + C + d]) : 0.f;
        v[i] = d < hd ? to_f32(base[size_t(u) * ld + 2 * size_t(C) + d]) : 0.f;
        ak[i] = av[i] = 0.f;
    }
    for (int t = u; t < T; t++) {
        const bf16* q = base + size_t(t) * ld;
        const bf16* g = dout + (size_t(b) * T + t) * C + size_t(h) * hd;
        float qk = 0.f, gv = 0.f;
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            if (d < hd) {
                qk += to_f32(q[d]) * k[i];
                gv += to_f32(g[d]) * v[i];
            }
        }
        qk = warp_sum(qk);
        gv = warp_sum(gv);
        const float p = __expf(qk * scale - lrow[t]);
        const float ds = p * (gv - drow[t]);
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            if (d < hd) {
                ak[i] += ds * to_f32(q[d]);
                av[i] += p * to_f32(g[d]);
            }
        }
    }
    bf16* dk = dqkv + (size_t(b) * T + u) * ld + C + size_t(h) * hd;
    bf16* dv = dk + C;
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        if (d < hd) {
            dk[d] = to_bf16(ak[i] * scale);
            dv[d] = to_bf16(av[i]);
        }
    }
}

// ---------------------------------------------------------------------------
// Decode: grid (NH, B), kDecodeWarps warps. The block stores this token's k, v
// (its head's slice) at cache row pos, then each warp runs an online softmax
// over keys u = warp, warp + kDecodeWarps, ... <= pos; the warps' partial
// (max, sum, acc) are merged in shared memory. Only this block touches its
// (b, h) slice of the caches, so __syncthreads orders the write and the reads.
constexpr int kDecodeWarps = 4;

__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_kernel(bf16* __restrict__ out, const bf16* __restrict__ qkv, bf16* __restrict__ kc,
                            bf16* __restrict__ vc, int pos, int maxT, int C, int NH, float scale) {
    __shared__ float s_m[kDecodeWarps], s_l[kDecodeWarps];
    __shared__ float s_acc[kDecodeWarps][kRowMaxHd];
    const int h = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int hd = C / NH;
    const bf16* qrow = qkv + size_t(b) * 3 * C + size_t(h) * hd;
    bf16* kb = kc + size_t(b) * maxT * C + size_t(h) * hd;  // row u at kb + u*C
    bf16* vb = vc + size_t(b) * maxT * C + size_t(h) * hd;
    for (int d = tid; d < hd; d += blockDim.x) {
        kb[size_t(pos) * C + d] = qrow[C + d];
        vb[size_t(pos) * C + d] = qrow[2 * size_t(C) + d];
    }
    __syncthreads();

    float q[kRowSlots], acc[kRowSlots];
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        q[i] = d < hd ? to_f32(qrow[d]) : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int u = warp; u <= pos; u += kDecodeWarps) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            if (d < hd) dot += q[i] * to_f32(kb[size_t(u) * C + d]);
        }
        const float x = warp_sum(dot) * scale;
        const float mnew = fmaxf(m, x);
        const float alpha = __expf(m - mnew), p = __expf(x - mnew);
        l = l * alpha + p;
        m = mnew;
#pragma unroll
        for (int i = 0; i < kRowSlots; i++) {
            const int d = lane + 32 * i;
            acc[i] = acc[i] * alpha + (d < hd ? p * to_f32(vb[size_t(u) * C + d]) : 0.f);
        }
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < kRowSlots; i++) {
        const int d = lane + 32 * i;
        if (d < hd) s_acc[warp][d] = acc[i];
    }
    __syncthreads();
    // Merge: a warp that saw no key has m = -inf and weight exp(-inf) = 0.
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; w++) M = fmaxf(M, s_m[w]);
    float L = 0.f, wgt[kDecodeWarps];
#pragma unroll
    for (int w = 0; w < kDecodeWarps; w++) {
        wgt[w] = s_m[w] == -INFINITY ? 0.f : __expf(s_m[w] - M);
        L += wgt[w] * s_l[w];
    }
    bf16* o = out + size_t(b) * C + size_t(h) * hd;
    for (int d = tid; d < hd; d += blockDim.x) {
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; w++) a += wgt[w] * s_acc[w][d];
        o[d] = to_bf16(a / L);
    }
}

// ---------------------------------------------------------------------------
// Launchers.

void check_dtypes(View x, View y, View stats, const char* op) {
    if (x.dtype != DType::bf16 || y.dtype != DType::bf16 || stats.dtype != DType::f32)
        run_failed(std::string(op) + ": the CUDA backend expects bf16 activations and an f32 lse");
}

void check_shape(int B, int T, int C, int NH, const char* op) {
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0 || C % NH != 0)
        bad_input(std::string(op) + ": need B, T, C, NH > 0 and C divisible by NH (B=" + std::to_string(B) +
                  " T=" + std::to_string(T) + " C=" + std::to_string(C) + " NH=" + std::to_string(NH) + ")");
    if (C / NH > kRowMaxHd)
        bad_input(std::string(op) + ": head size " + std::to_string(C / NH) + " is above the supported maximum of " +
                  std::to_string(kRowMaxHd));
}

// The flash kernels need hd in {64, 128} and 16-byte aligned rows (cp.async,
// bf16x2 stores): C % 8 == 0 follows from hd % 8 == 0.
bool flash_ok(int hd, std::initializer_list<const void*> ptrs) {
    if (hd != 64 && hd != 128) return false;
    for (const void* p : ptrs)
        if (!aligned16(p)) return false;
    return true;
}

template <class K>
void set_smem(Context& ctx, K kernel, size_t bytes) {
    set_max_dynamic_smem(ctx, reinterpret_cast<const void*>(kernel), bytes);
}

void check_smem(Context& ctx, size_t bytes) {
    if (bytes > ctx.prop.sharedMemPerBlockOptin)
        bad_input("attention: flash tile needs " + std::to_string(bytes) + " bytes of shared memory, the device allows " +
                  std::to_string(ctx.prop.sharedMemPerBlockOptin) + "; choose smaller kernels.attention.block_q/block_k");
}

template <int HD, int BQ, int BK>
void attention_fwd_flash(Context& ctx, const AttentionFwd& a) {
    constexpr size_t smem = fwd_smem_bytes<HD, BQ, BK>();
    check_smem(ctx, smem);
    auto kernel = attention_fwd_flash_kernel<HD, BQ, BK>;
    set_smem(ctx, kernel, smem);
    const dim3 grid((a.T + BQ - 1) / BQ, a.NH, a.B);
    const float scale_log2 = kLog2e / std::sqrt(float(HD));
    kernel<<<grid, BQ * 2, smem, ctx.stream>>>(a.out.as<bf16>(), a.lse.as<float>(), a.qkv.as<bf16>(), a.T, a.C, a.NH,
                                               scale_log2);
    GPT_CUDA_LAUNCH_CHECK();
}

// D (B,NH,T) f32 is scratch. fold_d: the dQ kernel computes D and runs first;
// otherwise the dot kernel has filled D and dK/dV runs first.
template <int HD, int BQ, int BK>
void attention_bwd_flash(Context& ctx, const AttentionBwd& a, float* D, bool fold_d) {
    const float scale = 1.f / std::sqrt(float(HD)), scale_log2 = scale * kLog2e;
    const dim3 grid((a.T + BQ - 1) / BQ, a.NH, a.B);
    auto dkdv = [&] {
        constexpr size_t smem = bwd_dkdv_smem_bytes<HD, BQ, BK>();
        check_smem(ctx, smem);
        auto kernel = attention_bwd_dkdv_flash_kernel<HD, BQ, BK>;
        set_smem(ctx, kernel, smem);
        kernel<<<grid, BQ * 2, smem, ctx.stream>>>(a.dqkv.as<bf16>(), a.dout.as<bf16>(), a.qkv.as<bf16>(),
                                                   a.lse.as<float>(), D, a.T, a.C, a.NH, scale, scale_log2);
        GPT_CUDA_LAUNCH_CHECK();
    };
    auto dq = [&] {
        constexpr size_t smem = bwd_dq_smem_bytes<HD, BQ, BK>();
        check_smem(ctx, smem);
        auto kernel = attention_bwd_dq_flash_kernel<HD, BQ, BK>;
        set_smem(ctx, kernel, smem);
        kernel<<<grid, BQ * 2, smem, ctx.stream>>>(a.dqkv.as<bf16>(), a.dout.as<bf16>(), a.qkv.as<bf16>(),
                                                   a.lse.as<float>(), D, fold_d ? a.out.as<bf16>() : nullptr, a.T,
                                                   a.C, a.NH, scale, scale_log2);
        GPT_CUDA_LAUNCH_CHECK();
    };
    if (fold_d) {
        dq();
        dkdv();
    } else {
        dkdv();
        dq();
    }
}

// Runtime (hd, block_q, block_k) -> template instance: hd picks the outer
// level (attention_*_flash below), the tile pair the inner one (*_hd).
struct FlashChoice {
    int block_q, block_k;
    bool fold_d;  // backward: D inside the dQ kernel
};

FlashChoice flash_choice(Context& ctx) {
    const FlashChoice c{ctx.kernels.param("attention", "block_q"), ctx.kernels.param("attention", "block_k"),
                        ctx.kernels.param("attention", "fold_d") != 0};
    const bool ok = (c.block_q == 128 || c.block_q == 64) && (c.block_k == 64 || c.block_k == 32);
    if (!ok)
        bad_input("attention: unsupported flash tile block_q=" + std::to_string(c.block_q) +
                  " block_k=" + std::to_string(c.block_k) + " (block_q in {128, 64}, block_k in {64, 32})");
    return c;
}

template <int HD>
void flash_forward_hd(Context& ctx, const AttentionFwd& a, FlashChoice c) {
    if (c.block_q == 128 && c.block_k == 64) return attention_fwd_flash<HD, 128, 64>(ctx, a);
    if (c.block_q == 128 && c.block_k == 32) return attention_fwd_flash<HD, 128, 32>(ctx, a);
    if (c.block_q == 64 && c.block_k == 64) return attention_fwd_flash<HD, 64, 64>(ctx, a);
    return attention_fwd_flash<HD, 64, 32>(ctx, a);
}

template <int HD>
void flash_backward_hd(Context& ctx, const AttentionBwd& a, float* D, FlashChoice c) {
    if (c.block_q == 128 && c.block_k == 64) return attention_bwd_flash<HD, 128, 64>(ctx, a, D, c.fold_d);
    if (c.block_q == 128 && c.block_k == 32) return attention_bwd_flash<HD, 128, 32>(ctx, a, D, c.fold_d);
    if (c.block_q == 64 && c.block_k == 64) return attention_bwd_flash<HD, 64, 64>(ctx, a, D, c.fold_d);
    return attention_bwd_flash<HD, 64, 32>(ctx, a, D, c.fold_d);
}

unsigned rowwise_blocks(int B, int T, int NH) {
    return unsigned((long(B) * NH * T + kRowWarps - 1) / kRowWarps);
}

void attention_forward_flash(Context& ctx, const AttentionFwd& a) {
    const int hd = a.C / a.NH;
    const FlashChoice c = flash_choice(ctx);
    if (flash_ok(hd, {a.out.ptr, a.qkv.ptr})) {
        if (hd == 64) return flash_forward_hd<64>(ctx, a, c);
        return flash_forward_hd<128>(ctx, a, c);
    }
    attention_fwd_rowwise_kernel<<<rowwise_blocks(a.B, a.T, a.NH), kRowWarps * 32, 0, ctx.stream>>>(
        a.out.as<bf16>(), a.lse.as<float>(), a.qkv.as<bf16>(), a.B, a.T, a.C, a.NH, 1.f / std::sqrt(float(hd)));
    GPT_CUDA_LAUNCH_CHECK();
}

// kernels.attention: wgmma with wgmma_bwd = 1 (attention_hopper.cu): D from
// the dot kernel, then the 5-product kernel; its scratch follows D's.
void attention_backward_wgmma_path(Context& ctx, const AttentionBwd& a) {
    const size_t rows = size_t(a.B) * a.NH * a.T, d_bytes = (rows * sizeof(float) + 255) / 256 * 256;
    char* s = static_cast<char*>(ctx.scratch(Context::kAttention, d_bytes + attention_wgmma_bwd_scratch_bytes(a)));
    float* D = reinterpret_cast<float*>(s);  // (B,NH,T)
    attention_bwd_dot_kernel<<<unsigned((rows + 7) / 8), 256, 0, ctx.stream>>>(D, a.dout.as<bf16>(), a.out.as<bf16>(), a.B,
                                                                               a.T, a.C, a.NH);
    GPT_CUDA_LAUNCH_CHECK();
    attention_backward_wgmma(ctx, a, D, s + d_bytes);
}

void attention_backward_flash(Context& ctx, const AttentionBwd& a) {
    const int hd = a.C / a.NH;
    const FlashChoice c = flash_choice(ctx);
    const size_t rows = size_t(a.B) * a.NH * a.T;
    float* D = static_cast<float*>(ctx.scratch(Context::kAttention, rows * sizeof(float)));  // (B,NH,T)
    const bool flash = flash_ok(hd, {a.dqkv.ptr, a.dout.ptr, a.qkv.ptr});
    if (!(flash && c.fold_d)) {
        attention_bwd_dot_kernel<<<unsigned((rows + 7) / 8), 256, 0, ctx.stream>>>(D, a.dout.as<bf16>(), a.out.as<bf16>(),
                                                                                   a.B, a.T, a.C, a.NH);
        GPT_CUDA_LAUNCH_CHECK();
    }
    if (flash) {
        if (hd == 64) return flash_backward_hd<64>(ctx, a, D, c);
        return flash_backward_hd<128>(ctx, a, D, c);
    }
    const float scale = 1.f / std::sqrt(float(hd));
    const unsigned blocks = rowwise_blocks(a.B, a.T, a.NH);
    attention_bwd_dq_rowwise_kernel<<<blocks, kRowWarps * 32, 0, ctx.stream>>>(
        a.dqkv.as<bf16>(), a.dout.as<bf16>(), a.qkv.as<bf16>(), a.lse.as<float>(), D, a.B, a.T, a.C, a.NH, scale);
    GPT_CUDA_LAUNCH_CHECK();
    attention_bwd_dkdv_rowwise_kernel<<<blocks, kRowWarps * 32, 0, ctx.stream>>>(
        a.dqkv.as<bf16>(), a.dout.as<bf16>(), a.qkv.as<bf16>(), a.lse.as<float>(), D, a.B, a.T, a.C, a.NH, scale);
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points.

void attention_forward(Context& ctx, const AttentionFwd& a) {
    check_shape(a.B, a.T, a.C, a.NH, "attention_forward");
    check_dtypes(a.out, a.qkv, a.lse, "attention_forward");
    const std::string v = ctx.kernels.variant("attention");
    if (v == "cudnn") return attention_forward_cudnn(ctx, a);
    if (v == "wgmma" && attention_wgmma_can_run(ctx, a)) return attention_forward_wgmma(ctx, a);
    if (v != "flash" && v != "wgmma") run_failed("attention: unknown variant '" + v + "'");
    attention_forward_flash(ctx, a);
}

void attention_backward(Context& ctx, const AttentionBwd& a) {
    check_shape(a.B, a.T, a.C, a.NH, "attention_backward");
    check_dtypes(a.dqkv, a.qkv, a.lse, "attention_backward");
    check_dtypes(a.dout, a.out, a.lse, "attention_backward");
    const std::string v = ctx.kernels.variant("attention");
    if (v == "cudnn") return attention_backward_cudnn(ctx, a);
    if (v != "flash" && v != "wgmma") run_failed("attention: unknown variant '" + v + "'");
    if (v == "wgmma" && ctx.kernels.param("attention", "wgmma_bwd") != 0 && attention_wgmma_bwd_can_run(ctx, a))
        return attention_backward_wgmma_path(ctx, a);
    attention_backward_flash(ctx, a);  // wgmma's backward is flash's unless wgmma_bwd = 1
}

void attention_decode(Context& ctx, const AttentionDecode& a) {
    check_shape(a.B, 1, a.C, a.NH, "attention_decode");
    if (a.pos < 0 || a.pos >= a.maxT)
        bad_input("attention_decode: position " + std::to_string(a.pos) + " is outside the KV cache of " +
                  std::to_string(a.maxT) + " rows");
    if (a.out.dtype != DType::bf16 || a.qkv.dtype != DType::bf16 || a.kcache.dtype != DType::bf16 ||
        a.vcache.dtype != DType::bf16)
        run_failed("attention_decode: the CUDA backend expects bf16 tensors");
    const int hd = a.C / a.NH;
    attention_decode_kernel<<<dim3(a.NH, a.B), kDecodeWarps * 32, 0, ctx.stream>>>(
        a.out.as<bf16>(), a.qkv.as<bf16>(), a.kcache.as<bf16>(), a.vcache.as<bf16>(), a.pos, a.maxT, a.C, a.NH,
        1.f / std::sqrt(float(hd)));
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace gpt::cuda
