// Causal self-attention on Hopper's warpgroup MMA (wgmma), for sm_90a only:
// kernels.attention: wgmma. Built into its own object library with sm_90a as
// its only target (CMakeLists.txt), so the rest of the backend still runs on
// sm_80+. The forward is below; the backward is flash's (attention.cu; out and
// lse mean the same, kernels/ops.h) or, with kernels.attention.wgmma_bwd = 1,
// the 5-product kernel further down (attention_bwd_wgmma_kernel).
//
// Layout of the work (one block = kWG warpgroups of 128 threads, 64 query rows
// each, kBQ = 64 kWG rows; grid (ceil(T/kBQ), NH, B), longest rows first):
//   for each key tile of kBK = 64 keys up to the diagonal, K and V double
//   buffered with cp.async by all threads:
//     S (64 x kBK, f32 registers) = Q_g K^T    wgmma m64n64k16, A = Q and B = K
//                                                from shared memory, HD/16 steps
//     online softmax on S in registers (the flash kernel's: log2 domain, causal
//     and T masks, running max and sum per row)
//     P (bf16) -> shared memory, then O (64 x HD, f32 registers) += P V
//                                                wgmma m64n{HD}k16, A = P and
//                                                B = V from shared memory, kBK/16 steps;
//                                                with p_regs = 1 A = P from registers
//   O / l -> out (bf16), m + log l -> lse (natural log).
//
// Shared-memory operands use no swizzle: each 8 x 8 bf16 "core matrix" is 128
// contiguous bytes, and a descriptor names the start, the byte distance between
// core matrices adjacent along K (LBO, 128 here) and along M/N (SBO). Q, K and
// P are K-major (8 consecutive K elements of one row are 16 contiguous bytes:
// kmajor below); V is N-major (8 consecutive head dims of one key: mnmajor, the
// transposed core order, wgmma's trans-b = 1), so each 16-byte chunk of a row
// of Q, K or V lands contiguously and cp.async fills the tiles directly.
// Accumulator fragments (per warp w of a warpgroup, lane = 4 group + tig):
// d[4 nt + e] holds row 16w + group + 8 (e >> 1), column 8 nt + 2 tig + (e & 1),
// mma.m16n8's C layout repeated over N / 8 column tiles.
//
// The TMA kernel after this one (kernels.attention.tma = 1) adds
// FlashAttention-3's producer warpgroup, and with tma = 2 its intra-warpgroup
// overlap of one tile's softmax with the previous tile's P V product.
//
// Never run on a GPU yet. p_regs = 0 (the default) relies only on the
// shared-memory operand layouts, p_regs = 1 also on the register A layout, so
// a first run tells the two apart; tma = 1 also on the 128-byte swizzle and
// the mbarrier ring; the backward (wgmma_bwd = 1) also on M-major (trans-a)
// and N-major operands with LBO != 128 and on the turn counters.
// tools/emulate_wgmma_attention.py replays all of them on the host.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/cuda/ptx.cuh"

namespace gpt::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWG = 2;            // consumer warpgroups per block
constexpr int kBQ = 64 * kWG;     // query rows per block
constexpr int kBK = 64;           // keys per tile
constexpr int kThreads = 128 * kWG;

// Element (mn, k) of an MN x K operand tile, in elements from the tile's
// start: core matrices in MN-block-major, K-block-minor order, 64 elements
// each; inside one, K-major puts 8 consecutive k of a row together, N-major
// 8 consecutive mn of a k.
__host__ __device__ constexpr int kmajor(int mn, int k, int K) { return ((mn >> 3) * (K >> 3) + (k >> 3)) * 64 + (mn & 7) * 8 + (k & 7); }
__host__ __device__ constexpr int mnmajor(int mn, int k, int K) { return ((mn >> 3) * (K >> 3) + (k >> 3)) * 64 + (k & 7) * 8 + (mn & 7); }

// Shared-memory matrix descriptor, no swizzle: start address, LBO = lbo bytes
// (the next core matrix along K), SBO = sbo bytes (the next along M/N); each
// field in units of 16 bytes. This is PTX's canonical no-swizzle layout for
// both majors: K-major ((8,m),(T,2k)):((1T,SBO),(1,LBO)), MN-major
// ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)), T = 8 bf16. In the forward's tiles a
// k16 step advances the start by 2 core matrices (128 elements, LBO 128).
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t sbo, uint32_t lbo = 128) {
    const uint32_t a = smem_addr(p);
    return uint64_t((a & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) | (uint64_t((sbo & 0x3FFFF) >> 4) << 32);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// A wait on another thread's progress (an mbarrier phase, another block's dQ
// turn) that lasts kHangNs means a bug: trap, so the launch fails with an
// error naming the kernel instead of hanging the GPU (and a first GPU run's
// whole time budget). Legitimate waits here last microseconds.
constexpr uint64_t kHangNs = 5'000'000'000ull;
__device__ __forceinline__ uint64_t global_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    return t;
}
// Generic-proxy writes to shared memory (cp.async, st.shared) before the async
// proxy (wgmma's operand reads) sees them.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>  // until at most N of this warpgroup's commit groups are pending
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { wgmma_wait<0>(); }
// The accumulators are written asynchronously: keep the compiler from moving
// their reads or writes across the wgmma region (CUTLASS's fence_operand).
template <int NT>
__device__ __forceinline__ void fence_regs(float (&d)[NT][4]) {
#pragma unroll
    for (int i = 0; i < NT; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[i][e])::"memory");
}
// The same for A fragments held in registers (their wgmma reads them asynchronously).
template <int K>
__device__ __forceinline__ void fence_regs(uint32_t (&a)[K][4]) {
#pragma unroll
    for (int i = 0; i < K; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+r"(a[i][e])::"memory");
}
// The 128 threads of warpgroup g (named barrier 1 + g; 0 is __syncthreads).
// Immediate ids: with a register id ptxas reserves all 16 barriers.
static_assert(kWG == 2, "warpgroup_sync names one barrier per warpgroup");
__device__ __forceinline__ void warpgroup_sync(int g) {
    if (g == 0) asm volatile("bar.sync 1, 128;\n" ::: "memory");
    else asm volatile("bar.sync 2, 128;\n" ::: "memory");
}

// The accumulator operands of wgmma.m64n32k16 (16 registers), m64n64k16 (32)
// and m64n128k16 (64): the register list of the instruction text and the asm
// outputs, d being a warp's C fragments (N / 8 column tiles of 4).
#define GPT_WGMMA_R16 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}"
#define GPT_WGMMA_R32 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15, "\
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define GPT_WGMMA_R64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15, "\
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31, "\
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47, "\
    "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define GPT_WGMMA_D16 \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
    "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
#define GPT_WGMMA_D32 \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
    "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
    "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
    "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define GPT_WGMMA_D64 \
    GPT_WGMMA_D32, \
    "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
    "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
    "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
    "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])

// D (64 x N, f32) += A (64 x 16) B (16 x N), both from shared memory; TA = 1:
// A is M-major (trans-a), TB = 1: B is N-major (trans-b).
template <int N, int TA, int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db) {
    if constexpr (N == 32)
        asm volatile("wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " GPT_WGMMA_R16 ", %16, %17, 1, 1, 1, %18, %19;\n"
                     : GPT_WGMMA_D16
                     : "l"(da), "l"(db), "n"(TA), "n"(TB));
    else if constexpr (N == 64)
        asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GPT_WGMMA_R32 ", %32, %33, 1, 1, 1, %34, %35;\n"
                     : GPT_WGMMA_D32
                     : "l"(da), "l"(db), "n"(TA), "n"(TB));
    else
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " GPT_WGMMA_R64 ", %64, %65, 1, 1, 1, %66, %67;\n"
                     : GPT_WGMMA_D64
                     : "l"(da), "l"(db), "n"(TA), "n"(TB));
}

// The same with A (64 x 16) from registers: per warp w, rows 16 w .. 16 w + 15
// in mma.m16n8k16's A fragment layout (a0: row group, k 2 tig, +1; a1: row
// group + 8; a2, a3: k + 8).
template <int N, int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db) {
    if constexpr (N == 64)
        asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GPT_WGMMA_R32 ", {%32, %33, %34, %35}, %36, 1, 1, 1, %37;\n"
                     : GPT_WGMMA_D32
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));
    else
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " GPT_WGMMA_R64 ", {%64, %65, %66, %67}, %68, 1, 1, 1, %69;\n"
                     : GPT_WGMMA_D64
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));
}
#undef GPT_WGMMA_R16
#undef GPT_WGMMA_D16
#undef GPT_WGMMA_R32
#undef GPT_WGMMA_R64
#undef GPT_WGMMA_D32
#undef GPT_WGMMA_D64

#endif

// Rows r0 .. r0+ROWS-1 (HD bf16 each, row stride ld) into a tiled operand;
// rows at or beyond T are zero-filled. NMAJOR: the tile is V's (N = HD, K =
// ROWS keys, mnmajor); else K-major with K = HD.
template <int ROWS, int HD, bool NMAJOR>
__device__ __forceinline__ void load_tiled(bf16* s, const bf16* g, size_t ld, int r0, int T, int tid) {
    constexpr int kChunks = HD / 8;
    for (int i = tid; i < ROWS * kChunks; i += kThreads) {
        const int r = i / kChunks, c = i % kChunks;
        const bool ok = r0 + r < T;
        bf16* dst = s + (NMAJOR ? mnmajor(c * 8, r, ROWS) : kmajor(r, c * 8, HD));
        cp_async16(dst, g + (ok ? size_t(r0 + r) * ld : 0) + c * 8, ok);
    }
}

// P (bf16) into a warpgroup's K-major 64 x kBK tile (no swizzle): row 16 warp
// + group (+ 8), keys 8 nt + 2 tig, + 1 of the warp's accumulator fragments.
__device__ __forceinline__ void stage_p(bf16* sPg, const float (&p)[kBK / 8][4], int warp, int group, int tig) {
#pragma unroll
    for (int nt = 0; nt < kBK / 8; nt++) {
        const int row = 16 * warp + group, key = 8 * nt + 2 * tig;
        *reinterpret_cast<__nv_bfloat162*>(sPg + kmajor(row, key, kBK)) = __floats2bfloat162_rn(p[nt][0], p[nt][1]);
        *reinterpret_cast<__nv_bfloat162*>(sPg + kmajor(row + 8, key, kBK)) = __floats2bfloat162_rn(p[nt][2], p[nt][3]);
    }
}

template <int HD>
constexpr size_t wgmma_smem_bytes() {
    return size_t(kBQ * HD + 4 * kBK * HD + kWG * 64 * kBK) * sizeof(bf16);
}

// PREGS (kernels.attention.p_regs = 1): P stays in registers as the A operand
// of O += P V (the C fragment of two n8 column tiles is the A fragment of one
// k16 block), instead of going through the warpgroup's shared-memory tile.
template <int HD, bool PREGS>
__global__ void __launch_bounds__(kThreads) attention_fwd_wgmma_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                                      const bf16* __restrict__ qkv, int T, int C, int NH,
                                                                      float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // kBQ x HD, K-major
    bf16* sK = sQ + kBQ * HD;                       // 2 x kBK x HD, K-major
    bf16* sV = sK + 2 * kBK * HD;                   // 2 x (HD x kBK), N-major
    bf16* sP = sV + 2 * kBK * HD;                   // kWG x 64 x kBK, K-major

    const int q0 = (gridDim.x - 1 - blockIdx.x) * kBQ;
    const int h = blockIdx.y, b = blockIdx.z;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * HD;
    const int tid = threadIdx.x, g = tid / 128, warp = (tid % 128) / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    const int qg = q0 + 64 * g;         // first query row of this warpgroup
    const int qw = qg + 16 * warp;      // first query row of this warp
    const int nkt = (min(T, q0 + kBQ) + kBK - 1) / kBK;
    const bf16* sQg = sQ + kmajor(64 * g, 0, HD);
    bf16* sPg = sP + g * 64 * kBK;
    constexpr uint32_t kSboHD = (HD / 8) * 128, kSboBK = (kBK / 8) * 128;  // bytes between core-matrix rows

    load_tiled<kBQ, HD, false>(sQ, base, ld, q0, T, tid);
    load_tiled<kBK, HD, false>(sK, base + C, ld, 0, T, tid);
    load_tiled<kBK, HD, true>(sV, base + 2 * size_t(C), ld, 0, T, tid);
    cp_async_commit();

    float o[HD / 8][4];  // this warp's 16 x HD slice of the warpgroup's 64 x HD output accumulator
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};  // running max of rows group, group+8
    float l[2] = {0.f, 0.f};              // this thread's part of the running sums

    for (int j = 0; j < nkt; j++) {
        const int buf = j & 1;
        cp_async_prefetch(j + 1 < nkt, [&] {
            load_tiled<kBK, HD, false>(sK + (buf ^ 1) * kBK * HD, base + C, ld, (j + 1) * kBK, T, tid);
            load_tiled<kBK, HD, true>(sV + (buf ^ 1) * kBK * HD, base + 2 * size_t(C), ld, (j + 1) * kBK, T, tid);
        });
        fence_proxy_async();
        __syncthreads();
        const int k0 = j * kBK;
        const bf16* k_s = sK + buf * kBK * HD;
        const bf16* v_s = sV + buf * kBK * HD;
        if (k0 <= qg + 63) {  // else every key of the tile is after every row of this warpgroup
            // S = Q_g K^T
            float s[kBK / 8][4];
#pragma unroll
            for (int i = 0; i < kBK / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
            fence_regs(s);
            wgmma_fence();
#pragma unroll
            for (int kt = 0; kt < HD / 16; kt++)
                wgmma_ss<kBK, 0, 0>(s, smem_desc(sQg + 128 * kt, kSboHD), smem_desc(k_s + 128 * kt, kSboHD));
            wgmma_commit();
            wgmma_wait_all();
            fence_regs(s);

            // Scale, mask (above the diagonal and beyond T), softmax step; O rescaled.
            online_softmax_tile(s, o, m, l, k0, qw, T, scale_log2, (k0 + kBK - 1 > qw) || (k0 + kBK > T), group, tig);
            if constexpr (PREGS) {
                // O += P V, P (bf16) as A fragments: k16 block kt is column tiles 2 kt, 2 kt + 1.
                uint32_t pa[kBK / 16][4];
#pragma unroll
                for (int kt = 0; kt < kBK / 16; kt++) acc_to_a(pa[kt], s[2 * kt], s[2 * kt + 1]);
                fence_regs(o);
                wgmma_fence();
#pragma unroll
                for (int kt = 0; kt < kBK / 16; kt++) wgmma_rs<HD, 1>(o, pa[kt], smem_desc(v_s + 128 * kt, kSboBK));
                wgmma_commit();
                wgmma_wait_all();
                fence_regs(o);
            } else {
                stage_p(sPg, s, warp, group, tig);
                fence_proxy_async();
                warpgroup_sync(g);
                // O += P V
                fence_regs(o);
                wgmma_fence();
#pragma unroll
                for (int kt = 0; kt < kBK / 16; kt++)
                    wgmma_ss<HD, 0, 1>(o, smem_desc(sPg + 128 * kt, kSboBK), smem_desc(v_s + 128 * kt, kSboBK));
                wgmma_commit();
                wgmma_wait_all();
                fence_regs(o);
            }
        }
        __syncthreads();  // everyone is done with buffer `buf` before it is refilled
    }

    // Normalise, write out (bf16) and lse (natural log).
    store_rows(o, m, l, out + size_t(b) * T * C + size_t(h) * HD, lse + (size_t(b) * NH + h) * T, qw, T, C, group, tig);
#else
    __trap();  // built for sm_90a only (CMakeLists.txt): never reached
#endif
}

// ---------------------------------------------------------------------------
// The forward with TMA and a producer warpgroup (kernels.attention.tma = 1):
// FlashAttention-3's warp specialization. Warpgroup 0 is the producer: one
// thread loads Q once and K, V tiles into a ring of kStages stages with TMA
// (cp.async.bulk.tensor), each stage guarded by two mbarriers: `full` (the
// producer's expected bytes, completed by the TMA unit) and `empty` (every
// consumer thread arrives when its products have read the stage). Warpgroups
// 1 and 2 are the consumers, 64 query rows each, with the same products,
// online softmax and P paths as the cp.async kernel above; they never wait for
// a load they did not need, and the producer runs up to kStages tiles ahead.
// OVERLAP (tma = 2) issues tile j's S product and tile j - 1's P V product
// together, runs tile j's softmax while P V runs, and rescales O after it.
// PINGPONG (tma = 3, with OVERLAP) adds FlashAttention-3's ping-pong between
// the consumers: they take turns issuing their rounds of products (below,
// sched_wait / sched_pass), so one warpgroup's softmax runs while the other's
// products hold the tensor cores. Each warpgroup's arithmetic is unchanged:
// tma 1, 2 and 3 are bit-identical.
//
// TMA writes 128-byte-swizzled tiles (CU_TENSOR_MAP_SWIZZLE_128B): a box is 64
// columns (128 bytes) x 64 rows, row r at r x 128 bytes with its 16-byte chunks
// permuted (chunk ^= r % 8), each tile 1024-byte aligned. The wgmma
// descriptors say the same (layout type 1, SWIZZLE_128B): Q and K K-major (SBO
// = 1024, the next 8 rows; a k16 step adds 32 bytes inside a row, the second
// half of hd 128 is the next box), V N-major (N = head dims: 64 contiguous per
// row, LBO = the next box of 64 columns; K = keys, SBO = 1024 per 8 keys).
// The qkv tensor map is 3-d (3C columns, T rows, B), so rows at or beyond T
// are zero-filled per sequence.
constexpr int kStages = 2;
constexpr int kTmaThreads = 128 * (kWG + 1);

// Byte offsets from the 1024-aligned base of the dynamic shared memory.
template <int HD>
struct TmaLayout {
    static constexpr uint32_t kQHalf = kBQ * 128, kKVHalf = kBK * 128, kKVStage = (HD / 64) * kKVHalf;
    static constexpr uint32_t kQ = 0, kK = kQ + (HD / 64) * kQHalf, kV = kK + kStages * kKVStage, kP = kV + kStages * kKVStage;
    static constexpr uint32_t kBar = kP + kWG * 64 * kBK * 2;  // full Q, full[kStages], empty[kStages]
    static constexpr uint32_t kBytes = kBar + (1 + 2 * kStages) * 8 + 1024;  // + the alignment slack
};

// 128-byte-swizzle descriptor: start, LBO, SBO as smem_desc, layout type 1 (bits 62-63).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr, uint32_t sbo, uint32_t lbo) {
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) | (uint64_t((sbo & 0x3FFFF) >> 4) << 32) |
           (uint64_t(1) << 62);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return done != 0;
}
// Until the phase of parity `parity` has completed (a fresh barrier counts
// the phase before its first, parity 1, as completed); traps after kHangNs.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    if (mbar_try_wait(bar, parity)) return;
    const uint64_t t0 = global_ns();
    while (!mbar_try_wait(bar, parity))
        if (global_ns() - t0 > kHangNs) __trap();
}
// One 64 x 64 box of qkv (columns col .. + 63, rows row .. + 63 of sequence b) into dst.
__device__ __forceinline__ void tma_box(uint32_t dst, const CUtensorMap* map, int col, int row, int b, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(b), "r"(bar)
        : "memory");
}
#endif

// The ping-pong's turns (tma = 3): named barrier 3 + g is warpgroup g's turn
// to issue, complete when its 128 threads wait there (sched_wait) and the
// other warpgroup's 128 have arrived (sched_pass, after issuing its own round).
// Immediate ids, as warpgroup_sync; 1 and 2 are warpgroup_sync's.
__device__ __forceinline__ void sched_wait(int g) {
    if (g == 0) asm volatile("bar.sync 3, 256;\n" ::: "memory");
    else asm volatile("bar.sync 4, 256;\n" ::: "memory");
}
__device__ __forceinline__ void sched_pass(int g) {
    if (g == 0) asm volatile("bar.arrive 4, 256;\n" ::: "memory");
    else asm volatile("bar.arrive 3, 256;\n" ::: "memory");
}

template <int HD, bool PREGS, bool OVERLAP, bool PINGPONG>
__global__ void __launch_bounds__(kTmaThreads, 1) attention_fwd_wgmma_tma_kernel(const __grid_constant__ CUtensorMap map, bf16* __restrict__ out,
                                                                               float* __restrict__ lse, int T, int C, int NH,
                                                                               float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(OVERLAP || !PINGPONG, "the ping-pong is built on the overlapped loop (tma = 3)");
    using L = TmaLayout<HD>;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const uint32_t raw = smem_addr(smem_raw), base = (raw + 1023) & ~1023u;  // swizzled tiles need 1024-byte alignment
    unsigned char* sm = smem_raw + (base - raw);
    const uint32_t bar_q = base + L::kBar, bar_full = bar_q + 8, bar_empty = bar_full + 8 * kStages;

    const int q0 = (gridDim.x - 1 - blockIdx.x) * kBQ;
    const int h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, wg = tid / 128;
    const int nkt = (min(T, q0 + kBQ) + kBK - 1) / kBK;
    if (tid == 0) {
        mbar_init(bar_q, 1);
        for (int s = 0; s < kStages; s++) {
            mbar_init(bar_full + 8 * s, 1);
            mbar_init(bar_empty + 8 * s, 128 * kWG);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {  // the producer: one thread issues every load
        if (tid == 0) {
            mbar_expect_tx(bar_q, kBQ * HD * 2);
            for (int half = 0; half < HD / 64; half++)
                for (int r = 0; r < kBQ; r += 64)
                    tma_box(base + L::kQ + half * L::kQHalf + r * 128, &map, h * HD + 64 * half, q0 + r, b, bar_q);
            for (int j = 0; j < nkt; j++) {
                const int s = j % kStages;
                if (j >= kStages) mbar_wait(bar_empty + 8 * s, ((j / kStages) - 1) & 1);  // the consumers are done with tile j - kStages
                mbar_expect_tx(bar_full + 8 * s, 2 * kBK * HD * 2);
                for (int half = 0; half < HD / 64; half++) {
                    tma_box(base + L::kK + s * L::kKVStage + half * L::kKVHalf, &map, C + h * HD + 64 * half, j * kBK, b, bar_full + 8 * s);
                    tma_box(base + L::kV + s * L::kKVStage + half * L::kKVHalf, &map, 2 * C + h * HD + 64 * half, j * kBK, b,
                            bar_full + 8 * s);
                }
            }
        }
        return;
    }

    const int g = wg - 1, warp = (tid % 128) / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    const int qg = q0 + 64 * g, qw = qg + 16 * warp;
    bf16* sPg = reinterpret_cast<bf16*>(sm + L::kP) + g * 64 * kBK;
    constexpr uint32_t kSboBK = (kBK / 8) * 128;
    // k16 step kt of a K-major swizzled operand: 32 bytes along a 128-byte row, the next box every 4 steps.
    auto kstep = [](int kt, uint32_t box) { return uint32_t(kt / 4) * box + uint32_t(kt % 4) * 32; };

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.f, 0.f};
    float sc[kBK / 8][4];             // S of the tile, then its P (f32)
    uint32_t pa[kBK / 16][4];         // PREGS: P (bf16) as the A operand of P V
    auto stage = [&](int j) { return uint32_t(j % kStages); };
    // S = Q_g K_j^T into sc, issued (one commit group).
    auto issue_s = [&](int j) {
#pragma unroll
        for (int i = 0; i < kBK / 8; i++) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
        fence_regs(sc);
        wgmma_fence();
        const uint32_t k_s = base + L::kK + stage(j) * L::kKVStage;
#pragma unroll
        for (int kt = 0; kt < HD / 16; kt++)
            wgmma_ss<kBK, 0, 0>(sc, smem_desc_sw128(base + L::kQ + 64 * g * 128 + kstep(kt, L::kQHalf), 1024, 16),
                                smem_desc_sw128(k_s + kstep(kt, L::kKVHalf), 1024, 16));
        wgmma_commit();
    };
    // P (in sc) kept for its P V product: in registers (PREGS) or in this warpgroup's tile.
    auto keep_p = [&] {
        if constexpr (PREGS) {
#pragma unroll
            for (int kt = 0; kt < kBK / 16; kt++) acc_to_a(pa[kt], sc[2 * kt], sc[2 * kt + 1]);
        } else {
            warpgroup_sync(g);  // every warp's earlier P V product has read sPg
            stage_p(sPg, sc, warp, group, tig);
            fence_proxy_async();
            warpgroup_sync(g);
        }
    };
    // O += P V_j, issued (one commit group): B = V N-major (N = HD over boxes LBO apart, K = 16 keys = 2 x 1024 bytes per step).
    auto issue_pv = [&](int j) {
        const uint32_t v_s = base + L::kV + stage(j) * L::kKVStage;
        fence_regs(o);
        wgmma_fence();
#pragma unroll
        for (int kt = 0; kt < kBK / 16; kt++) {
            if constexpr (PREGS) wgmma_rs<HD, 1>(o, pa[kt], smem_desc_sw128(v_s + 2048 * kt, 1024, L::kKVHalf));
            else wgmma_ss<HD, 0, 1>(o, smem_desc(sPg + 128 * kt, kSboBK), smem_desc_sw128(v_s + 2048 * kt, 1024, L::kKVHalf));
        }
        wgmma_commit();
    };
    auto full_wait = [&](int j) { mbar_wait(bar_full + 8 * stage(j), (j / kStages) & 1); };
    auto release = [&](int j) { mbar_arrive(bar_empty + 8 * stage(j)); };  // this thread's reads of the stage are done
    auto softmax = [&](int j, float (&alpha)[2]) {
        const int k0 = j * kBK;
        softmax_tile(sc, m, l, alpha, k0, qw, T, scale_log2, (k0 + kBK - 1 > qw) || (k0 + kBK > T), group, tig);
    };
    // This warpgroup's tiles: those with a key at or before its last row; it still waits for and
    // releases the block's later tiles, so that every stage's phases stay in step.
    const int nkg = min(nkt, (qg + 63) / kBK + 1);
    mbar_wait(bar_q, 0);

    if constexpr (!OVERLAP) {
        for (int j = 0; j < nkg; j++) {
            float alpha[2];
            full_wait(j);
            issue_s(j);
            wgmma_wait<0>();
            fence_regs(sc);
            softmax(j, alpha);
            rescale_rows(o, alpha);
            keep_p();
            issue_pv(j);
            wgmma_wait<0>();
            fence_regs(o);
            fence_regs(pa);
            release(j);
        }
    } else {
        // FlashAttention-3's intra-warpgroup overlap: the softmax of tile j runs while the tensor
        // cores do P V of tile j - 1; O is rescaled once that product is done. The operations on O
        // are the plain loop's, in its order (O += P_{j-1} V_{j-1}, O *= alpha_j, O += P_j V_j):
        // bit-identical results.
        //
        // With PINGPONG the products are issued in rounds (S_0; S_j with P V_{j-1}; P V_last),
        // nkg + 1 of them, and the warpgroups take turns: warpgroup 0's round r, warpgroup 1's
        // round r, warpgroup 0's round r + 1, ... Both run nkt + 1 rounds (warpgroup 0, one tile
        // short on the diagonal, adds an empty one), warpgroup 1 passes the first turn before its
        // first round and not after its last: each barrier sees as many arrivals as waits.
        const int rounds = nkt + 1;
        int round = 0;
        auto begin_round = [&] {
            if constexpr (PINGPONG) sched_wait(g);
        };
        auto end_round = [&] {
            if constexpr (PINGPONG) {
                if (g == 0 || round < rounds - 1) sched_pass(g);
                round++;
            }
        };
        if constexpr (PINGPONG)
            if (g == 1) sched_pass(1);  // warpgroup 0 issues first
        float alpha[2];
        full_wait(0);
        begin_round();
        issue_s(0);
        end_round();
        wgmma_wait<0>();
        fence_regs(sc);
        softmax(0, alpha);
        rescale_rows(o, alpha);
        keep_p();
        for (int j = 1; j < nkg; j++) {
            full_wait(j);
            begin_round();
            issue_s(j);
            issue_pv(j - 1);
            end_round();
            wgmma_wait<1>();  // S_j is done; P V of tile j - 1 may still run
            fence_regs(sc);
            softmax(j, alpha);
            wgmma_wait<0>();
            fence_regs(o);
            fence_regs(pa);
            rescale_rows(o, alpha);
            release(j - 1);
            keep_p();
        }
        begin_round();
        issue_pv(nkg - 1);
        end_round();
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        release(nkg - 1);
        if constexpr (PINGPONG)
            while (round < rounds) {  // the empty rounds of a warpgroup with fewer tiles
                begin_round();
                end_round();
            }
    }
    for (int j = nkg; j < nkt; j++) {
        full_wait(j);
        release(j);
    }
    store_rows(o, m, l, out + size_t(b) * T * C + size_t(h) * HD, lse + (size_t(b) * NH + h) * T, qw, T, C, group, tig);
#else
    __trap();  // built for sm_90a only (CMakeLists.txt): never reached
#endif
}

// ---------------------------------------------------------------------------
// Backward (kernels.attention.wgmma_bwd = 1): one block per kBKV = 128 keys of
// one (b, h), FlashAttention-3's column-parallel loop with 5 products per step
// instead of flash's 7 (flash recomputes S and dP once for dK/dV and once for
// dQ). Warpgroup g owns keys kg0 = k0 + 64 g .. + 63; K and V of the block stay
// in shared memory. For each query tile of kBQB = 64 rows from the diagonal on
// (Q, dO, lse and D double buffered with cp.async):
//   S^T  (64 keys x 64 q) = K_g Q^T      wgmma SS, A = K, B = Q, both K-major
//   dP^T (64 x 64)        = V_g dO^T     wgmma SS, A = V, B = dO
//   P^T = exp2(S^T scale_log2 - lse2), dS^T = P^T (dP^T - D), masked per
//   element (key > query, query >= T)
//   dV_g (64 x HD) += P^T dO             wgmma RS, A = P^T from registers (the
//   dK_g (64 x HD) += dS^T Q                C fragments of S^T are its A
//                                            fragments), B = dO / Q N-major
//   dS^T -> shared memory (K-major over the block's 128 keys x 64 queries)
//   dQ_tile[:, half g] (64 x HD/2) = dS K  wgmma SS, A = dS M-major (trans-a,
//                                            the dS^T tile read transposed),
//                                            B = K N-major, K = the block's keys
// so S and dP are computed once per (key, query) pair. The dQ parts of the key
// blocks are summed deterministically, without float atomics: for query tile
// i the key blocks add theirs in the fixed order jl(i), jl(i) - 1, .., 0 (jl
// the last block touching tile i) into an f32 buffer (B, NH, T, HD), each
// waiting for a per-(tile, half) counter to reach its turn; block 0, the last,
// writes dQ (bf16) into dqkv. Blocks take their (b, h, key block) from an
// atomic ticket, descending key blocks per (b, h): a block only ever waits for
// a block holding an earlier ticket, which is running or done, so the waits
// cannot deadlock whatever the scheduler does; and since block j + 1 reaches
// tile i two steps before block j does (it starts two tiles later), the order
// is the order they arrive in and the waits are short.
//
// Shared memory (hd 64 / 128): K, V 2 x 128 x HD, Q, dO 2 x 2 x 64 x HD, dS^T
// 128 x 64, lse and D 2 x 2 x 64 f32: 81 / 145 KiB.
constexpr int kBKV = 64 * kWG;  // keys per block, 64 per warpgroup
constexpr int kBQB = 64;        // query rows per step

template <int HD>
constexpr size_t wgmma_bwd_smem_bytes() {
    return size_t(2 * kBKV * HD + 4 * kBQB * HD + kBKV * kBQB) * sizeof(bf16) + 4 * kBQB * sizeof(float);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ int ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// Until *flag == turn (one thread; out of line: the caller is at 255 registers).
__device__ __noinline__ void wait_turn(const int* flag, int turn) {
    if (ld_acquire(flag) == turn) return;
    const uint64_t t0 = global_ns();
    while (ld_acquire(flag) != turn) {
        __nanosleep(64);
        if (global_ns() - t0 > kHangNs) __trap();
    }
}
__device__ __forceinline__ void st_release(int* p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
#endif

template <int HD>
__global__ void __launch_bounds__(kThreads) attention_bwd_wgmma_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                                                      const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                                                      const float* __restrict__ Dg, float* __restrict__ dq_acc,
                                                                      int* __restrict__ turns, int* __restrict__ ticket, int T,
                                                                      int C, int NH, float scale, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sK = reinterpret_cast<bf16*>(smem_raw);  // kBKV x HD, K-major
    bf16* sV = sK + kBKV * HD;                      // kBKV x HD, K-major
    bf16* sQ = sV + kBKV * HD;                      // 2 x kBQB x HD, K-major
    bf16* sO = sQ + 2 * kBQB * HD;                  // 2 x kBQB x HD (dO), K-major
    bf16* sS = sO + 2 * kBQB * HD;                  // kBKV x kBQB (dS^T), K-major
    float* sL = reinterpret_cast<float*>(sS + kBKV * kBQB);  // 2 x kBQB: lse
    float* sD = sL + 2 * kBQB;                                // 2 x kBQB: D
    __shared__ int s_ticket;

    const int tid = threadIdx.x, g = tid / 128, warp = (tid % 128) / 32, lane = tid % 32, group = lane >> 2, tig = lane & 3;
    if (tid == 0) s_ticket = atomicAdd(ticket, 1);
    __syncthreads();
    const int nkv = (T + kBKV - 1) / kBKV, nq = (T + kBQB - 1) / kBQB;
    const int bh = s_ticket / nkv, j = nkv - 1 - s_ticket % nkv;  // descending key blocks per (b, h)
    const int b = bh / NH, h = bh % NH;
    const int k0 = j * kBKV, kg0 = k0 + 64 * g;
    const size_t ld = size_t(3) * C;
    const bf16* base = qkv + size_t(b) * T * ld + size_t(h) * HD;
    const bf16* dbase = dout + size_t(b) * T * C + size_t(h) * HD;
    const float* lse_bh = lse + size_t(bh) * T;
    const float* D_bh = Dg + size_t(bh) * T;
    constexpr uint32_t kSboHD = (HD / 8) * 128;  // bytes between core-matrix rows of a K-major x HD tile
    constexpr uint32_t kRowHD = HD * 16;         // bytes between 8-row groups of such a tile read N-major
    const bf16* sKg = sK + kmajor(64 * g, 0, HD);
    const bf16* sVg = sV + kmajor(64 * g, 0, HD);

    // Query tile i's Q, dO (K-major) and lse, D (rows >= T zero-filled) into buffer buf.
    auto load_step = [&](int i, int buf) {
        const int q0 = i * kBQB;
        load_tiled<kBQB, HD, false>(sQ + buf * kBQB * HD, base, ld, q0, T, tid);
        load_tiled<kBQB, HD, false>(sO + buf * kBQB * HD, dbase, C, q0, T, tid);
        const int r = tid % kBQB;
        const bool ok = q0 + r < T;
        if (tid < kBQB) cp_async4(sL + buf * kBQB + r, lse_bh + (ok ? q0 + r : 0), ok);
        else if (tid < 2 * kBQB) cp_async4(sD + buf * kBQB + r, D_bh + (ok ? q0 + r : 0), ok);
    };
    const int i0 = k0 / kBQB;  // the first query tile with a row at or after key k0
    load_tiled<kBKV, HD, false>(sK, base + C, ld, k0, T, tid);
    load_tiled<kBKV, HD, false>(sV, base + 2 * size_t(C), ld, k0, T, tid);
    load_step(i0, 0);
    cp_async_commit();

    float dk[HD / 8][4], dv[HD / 8][4];  // this warp's 16 keys x HD of the warpgroup's dK, dV
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;
    uint32_t pa[kBQB / 16][4], sa[kBQB / 16][4];  // P^T, dS^T (bf16) as A fragments of the dV, dK products

    for (int i = i0; i < nq; i++) {
        const int buf = (i - i0) & 1;
        cp_async_prefetch(i + 1 < nq, [&] { load_step(i + 1, buf ^ 1); });
        fence_proxy_async();
        __syncthreads();
        const int q0 = i * kBQB, last = min(q0 + kBQB, T) - 1;  // the tile's last query row
        const bf16* q_s = sQ + buf * kBQB * HD;
        const bf16* o_s = sO + buf * kBQB * HD;
        const float* l_s = sL + buf * kBQB;
        const float* d_s = sD + buf * kBQB;
        if (kg0 <= last) {  // else every key of this warpgroup is after every row of the tile (or >= T)
            float st[kBQB / 8][4], dpt[kBQB / 8][4];
#pragma unroll
            for (int n = 0; n < kBQB / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.f;
            fence_regs(st);
            fence_regs(dpt);
            wgmma_fence();
#pragma unroll
            for (int kt = 0; kt < HD / 16; kt++)
                wgmma_ss<kBQB, 0, 0>(st, smem_desc(sKg + 128 * kt, kSboHD), smem_desc(q_s + 128 * kt, kSboHD));
#pragma unroll
            for (int kt = 0; kt < HD / 16; kt++)
                wgmma_ss<kBQB, 0, 0>(dpt, smem_desc(sVg + 128 * kt, kSboHD), smem_desc(o_s + 128 * kt, kSboHD));
            wgmma_commit();
            wgmma_wait_all();
            fence_regs(st);
            fence_regs(dpt);

            // P^T and dS^T: element e of tile n is key kg0 + 16 warp + group + 8 (e >> 1), query q0 + 8 n + 2 tig + (e & 1).
#pragma unroll
            for (int n = 0; n < kBQB / 8; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kg0 + 16 * warp + group + 8 * (e >> 1), qc = 8 * n + 2 * tig + (e & 1), q = q0 + qc;
                    const float p = (key <= q && q < T) ? exp2f(st[n][e] * scale_log2 - l_s[qc] * kLog2e) : 0.f;
                    st[n][e] = p;
                    dpt[n][e] = p * (dpt[n][e] - d_s[qc]);
                }
            }
#pragma unroll
            for (int kt = 0; kt < kBQB / 16; kt++) {
                acc_to_a(pa[kt], st[2 * kt], st[2 * kt + 1]);
                acc_to_a(sa[kt], dpt[2 * kt], dpt[2 * kt + 1]);
            }
            // dS^T (bf16) into the block's K-major tile: key row 64 g + 16 warp + group (+ 8), queries 8 n + 2 tig, + 1.
#pragma unroll
            for (int n = 0; n < kBQB / 8; n++) {
                const int row = 64 * g + 16 * warp + group, qc = 8 * n + 2 * tig;
                *reinterpret_cast<__nv_bfloat162*>(sS + kmajor(row, qc, kBQB)) = __floats2bfloat162_rn(dpt[n][0], dpt[n][1]);
                *reinterpret_cast<__nv_bfloat162*>(sS + kmajor(row + 8, qc, kBQB)) = __floats2bfloat162_rn(dpt[n][2], dpt[n][3]);
            }
            // dV += P^T dO, dK += dS^T Q: B is the tile read N-major (N = HD, K = queries; a k16 step is 16 rows).
            fence_regs(dv);
            fence_regs(dk);
            fence_regs(pa);
            fence_regs(sa);
            wgmma_fence();
#pragma unroll
            for (int kt = 0; kt < kBQB / 16; kt++) wgmma_rs<HD, 1>(dv, pa[kt], smem_desc(o_s + 16 * HD * kt, 128, kRowHD));
#pragma unroll
            for (int kt = 0; kt < kBQB / 16; kt++) wgmma_rs<HD, 1>(dk, sa[kt], smem_desc(q_s + 16 * HD * kt, 128, kRowHD));
            wgmma_commit();  // waited for with dQ's below
        }
        fence_proxy_async();
        __syncthreads();  // both warpgroups' dS^T are in sS

        // dQ of the tile's 64 rows, columns g HD/2 .. + HD/2 - 1, over the block's keys up to `last`:
        // A = dS read M-major from the dS^T tile (M = queries, SBO 128; K = keys, LBO 8 x 128),
        // B = K read N-major (N = head dims, SBO 128; K = keys, LBO HD x 16).
        const int ksteps = k0 + 64 <= last ? kBKV / 16 : 64 / 16;
        float dq[HD / 16][4];
#pragma unroll
        for (int n = 0; n < HD / 16; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
        fence_regs(dq);
        wgmma_fence();
#pragma unroll
        for (int kt = 0; kt < kBKV / 16; kt++)
            if (kt < ksteps)
                wgmma_ss<HD / 2, 1, 1>(dq, smem_desc(sS + 16 * kBQB * kt, 128, kBQB * 16),
                                       smem_desc(sK + (HD / 2) * 8 * g + 16 * HD * kt, 128, kRowHD));
        wgmma_commit();
        wgmma_wait_all();
        fence_regs(dq);
        fence_regs(dv);
        fence_regs(dk);
        fence_regs(pa);
        fence_regs(sa);

        // Add this block's part in its turn: key blocks jl, jl - 1, .., 0; the first writes, block 0 writes dQ.
        const int jl = min(nkv - 1, (q0 + kBQB - 1) / kBKV);
        const int turn = jl - j;
        int* flag = turns + (size_t(bh) * nq + i) * kWG + g;
        if (turn > 0) {
            if (tid % 128 == 0)
                wait_turn(flag, turn);
            warpgroup_sync(g);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = q0 + 16 * warp + group + 8 * r;
            if (row >= T) continue;
            float* arow = dq_acc + (size_t(bh) * T + row) * HD + g * (HD / 2);
            bf16* qrow = dqkv + (size_t(b) * T + row) * ld + size_t(h) * HD + g * (HD / 2);
#pragma unroll
            for (int n = 0; n < HD / 16; n++) {
                const int col = 8 * n + 2 * tig;
                float2 v = make_float2(dq[n][2 * r], dq[n][2 * r + 1]);
                if (turn > 0) {
                    const float2 prev = __ldcg(reinterpret_cast<const float2*>(arow + col));
                    v = make_float2(prev.x + v.x, prev.y + v.y);
                }
                if (j == 0) *reinterpret_cast<__nv_bfloat162*>(qrow + col) = __floats2bfloat162_rn(v.x * scale, v.y * scale);
                else __stcg(reinterpret_cast<float2*>(arow + col), v);
            }
        }
        if (j > 0) {
            __threadfence();
            warpgroup_sync(g);
            if (tid % 128 == 0) st_release(flag, turn + 1);
        }
        __syncthreads();  // buffers `buf` and sS are free before they are refilled
    }

    // dK (times the softmax scale) and dV of this warp's 16 keys.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = kg0 + 16 * warp + group + 8 * r;
        if (key >= T) continue;
        bf16* krow = dqkv + (size_t(b) * T + key) * ld + C + size_t(h) * HD;
        bf16* vrow = krow + C;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            *reinterpret_cast<__nv_bfloat162*>(krow + 8 * n + 2 * tig) = __floats2bfloat162_rn(dk[n][2 * r] * scale, dk[n][2 * r + 1] * scale);
            *reinterpret_cast<__nv_bfloat162*>(vrow + 8 * n + 2 * tig) = __floats2bfloat162_rn(dv[n][2 * r], dv[n][2 * r + 1]);
        }
    }
#else
    __trap();  // built for sm_90a only (CMakeLists.txt): never reached
#endif
}

// The kernel's dynamic shared memory, checked against the device's limit and set.
template <class K>
void ensure_smem(Context& ctx, K kernel, size_t bytes, const char* what) {
    if (bytes > ctx.prop.sharedMemPerBlockOptin)
        bad_input(std::string("attention: the wgmma ") + what + " needs " + std::to_string(bytes) +
                  " bytes of shared memory, the device allows " + std::to_string(ctx.prop.sharedMemPerBlockOptin));
    set_max_dynamic_smem(ctx, reinterpret_cast<const void*>(kernel), bytes);
}

template <int HD, bool PREGS>
void launch(Context& ctx, const AttentionFwd& a) {
    constexpr size_t smem = wgmma_smem_bytes<HD>();
    auto kernel = attention_fwd_wgmma_kernel<HD, PREGS>;
    ensure_smem(ctx, kernel, smem, "forward");
    const dim3 grid((a.T + kBQ - 1) / kBQ, a.NH, a.B);
    kernel<<<grid, kThreads, smem, ctx.stream>>>(a.out.as<bf16>(), a.lse.as<float>(), a.qkv.as<bf16>(), a.T, a.C, a.NH,
                                                 kLog2e / std::sqrt(float(HD)));
    GPT_CUDA_LAUNCH_CHECK();
}

// The driver's tensor-map encoder, through the runtime (no link to libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void* p = nullptr;
        cudaDriverEntryPointQueryResult q{};
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            p = nullptr;
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
    }();
    return fn;
}

// qkv (B, T, 3C) bf16 as a 3-d tensor map of 64 x 64 boxes, 128-byte swizzle,
// rows beyond T zero-filled (the kernel's layout comment).
CUtensorMap qkv_tensor_map(const AttentionFwd& a) {
    const auto encode = encode_tiled();
    if (!encode) run_failed("attention: the CUDA driver offers no cuTensorMapEncodeTiled (kernels.attention.tma needs it)");
    CUtensorMap map;
    const cuuint64_t dims[3] = {cuuint64_t(3) * a.C, cuuint64_t(a.T), cuuint64_t(a.B)};
    const cuuint64_t strides[2] = {cuuint64_t(3) * a.C * 2, cuuint64_t(3) * a.C * 2 * a.T};
    const cuuint32_t box[3] = {64, 64, 1}, steps[3] = {1, 1, 1};
    const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(a.qkv.ptr), dims, strides, box, steps,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        run_failed("attention: cuTensorMapEncodeTiled refused qkv (B=" + std::to_string(a.B) + " T=" + std::to_string(a.T) +
                   " C=" + std::to_string(a.C) + "): CUresult " + std::to_string(int(r)));
    return map;
}

template <int HD, bool PREGS, bool OVERLAP, bool PINGPONG = false>
void launch_tma(Context& ctx, const AttentionFwd& a) {
    constexpr size_t smem = TmaLayout<HD>::kBytes;
    auto kernel = attention_fwd_wgmma_tma_kernel<HD, PREGS, OVERLAP, PINGPONG>;
    ensure_smem(ctx, kernel, smem, "forward (TMA)");
    const dim3 grid((a.T + kBQ - 1) / kBQ, a.NH, a.B);
    kernel<<<grid, kTmaThreads, smem, ctx.stream>>>(qkv_tensor_map(a), a.out.as<bf16>(), a.lse.as<float>(), a.T, a.C, a.NH,
                                                    kLog2e / std::sqrt(float(HD)));
    GPT_CUDA_LAUNCH_CHECK();
}

template <int HD>
void launch_bwd(Context& ctx, const AttentionBwd& a, const float* D, float* dq_acc, int* turns, int* ticket) {
    constexpr size_t smem = wgmma_bwd_smem_bytes<HD>();
    auto kernel = attention_bwd_wgmma_kernel<HD>;
    ensure_smem(ctx, kernel, smem, "backward");
    const unsigned blocks = unsigned(size_t(a.B) * a.NH * ((a.T + kBKV - 1) / kBKV));
    const float scale = 1.f / std::sqrt(float(HD));
    kernel<<<blocks, kThreads, smem, ctx.stream>>>(a.dqkv.as<bf16>(), a.dout.as<bf16>(), a.qkv.as<bf16>(), a.lse.as<float>(), D,
                                                   dq_acc, turns, ticket, a.T, a.C, a.NH, scale, scale * kLog2e);
    GPT_CUDA_LAUNCH_CHECK();
}

// The backward's scratch after D: the turn counters (B, NH, query tiles, kWG)
// and the ticket, then the f32 dQ sums (B, NH, T, HD).
size_t turn_ints(const AttentionBwd& a) { return size_t(a.B) * a.NH * ((a.T + kBQB - 1) / kBQB) * kWG + 1; }
size_t turn_bytes(const AttentionBwd& a) { return (turn_ints(a) * sizeof(int) + 255) / 256 * 256; }

}  // namespace

bool attention_wgmma_can_run(const Context& ctx, const AttentionFwd& a) {
    const int hd = a.C / a.NH;
    return ctx.prop.major == 9 && ctx.prop.minor == 0 && (hd == 64 || hd == 128) && aligned16(a.out.ptr) && aligned16(a.qkv.ptr);
}

void attention_forward_wgmma(Context& ctx, const AttentionFwd& a) {
    if (!attention_wgmma_can_run(ctx, a)) run_failed("attention_forward_wgmma: needs sm_90, head size 64 or 128 and 16-byte aligned rows");
    const bool pregs = ctx.kernels.param("attention", "p_regs") != 0;
    // 0 cp.async, 1 TMA, 2 TMA with the softmax overlapped, 3 and the consumers' ping-pong
    const int tma = ctx.kernels.param("attention", "tma");
    if (a.C / a.NH == 64) {
        if (tma == 3) return pregs ? launch_tma<64, true, true, true>(ctx, a) : launch_tma<64, false, true, true>(ctx, a);
        if (tma == 2) return pregs ? launch_tma<64, true, true>(ctx, a) : launch_tma<64, false, true>(ctx, a);
        if (tma == 1) return pregs ? launch_tma<64, true, false>(ctx, a) : launch_tma<64, false, false>(ctx, a);
        return pregs ? launch<64, true>(ctx, a) : launch<64, false>(ctx, a);
    }
    if (tma == 3) return pregs ? launch_tma<128, true, true, true>(ctx, a) : launch_tma<128, false, true, true>(ctx, a);
    if (tma == 2) return pregs ? launch_tma<128, true, true>(ctx, a) : launch_tma<128, false, true>(ctx, a);
    if (tma == 1) return pregs ? launch_tma<128, true, false>(ctx, a) : launch_tma<128, false, false>(ctx, a);
    pregs ? launch<128, true>(ctx, a) : launch<128, false>(ctx, a);
}

bool attention_wgmma_bwd_can_run(const Context& ctx, const AttentionBwd& a) {
    const int hd = a.C / a.NH;
    return ctx.prop.major == 9 && ctx.prop.minor == 0 && (hd == 64 || hd == 128) && aligned16(a.dqkv.ptr) &&
           aligned16(a.dout.ptr) && aligned16(a.qkv.ptr);
}

size_t attention_wgmma_bwd_scratch_bytes(const AttentionBwd& a) {
    return turn_bytes(a) + size_t(a.B) * a.T * a.C * sizeof(float);
}

void attention_backward_wgmma(Context& ctx, const AttentionBwd& a, const float* D, void* scratch) {
    if (!attention_wgmma_bwd_can_run(ctx, a))
        run_failed("attention_backward_wgmma: needs sm_90, head size 64 or 128 and 16-byte aligned rows");
    int* turns = static_cast<int*>(scratch);
    float* dq_acc = reinterpret_cast<float*>(static_cast<char*>(scratch) + turn_bytes(a));
    GPT_CUDA_CHECK(cudaMemsetAsync(turns, 0, turn_ints(a) * sizeof(int), ctx.stream));
    int* ticket = turns + turn_ints(a) - 1;
    if (a.C / a.NH == 64) return launch_bwd<64>(ctx, a, D, dq_acc, turns, ticket);
    launch_bwd<128>(ctx, a, D, dq_acc, turns, ticket);
}

}  // namespace gpt::cuda
