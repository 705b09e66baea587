// Token + position embedding (GPT-2 encoder) of the CUDA backend.
//
// forward:  out (B,T,C)[b,t,:] = wte (Vp,C)[tokens[b,t],:] + wpe (maxT,C)[t,:]
//           (no wpe with rotary positions: out = wte[tokens])
// backward: dwte[tokens[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:] (skipped without dwpe)
//
// The backward is deterministic without atomics. dwte rows repeat across
// positions (a token occurs many times in a batch), so the positions are first
// grouped by token on the device, with no host round trip:
//   1. iota_kernel               pos (P) = 0..P-1, P = B*T
//   2. cub::DeviceRadixSort      (token, pos) pairs sorted by token; the sort is
//                                stable, so each token's positions stay in
//                                increasing order (CUB's result is unique, so
//                                its internal scheduling cannot change it)
//   3. dwte_chunk_kernel<VEC>    grid (P / kChunk, channel tiles): each block walks
//                                kChunk sorted entries in order, summing each run
//                                of one token (f32); a run inside the chunk is
//                                added into dwte at once (rounded to bf16 once),
//                                a run crossing a chunk boundary leaves its sum
//                                in a partial slot
//   4. dwte_cross_kernel<VEC>    grid (chunks, channel tiles): the chunk where a
//                                crossing run starts sums its partials in chunk
//                                order and adds the total into dwte
//   5. dwpe_kernel<VEC>          one thread per (t, 8 channels): sums dout over b
//                                in order and adds into dwpe.
// Each dwte row has one writer, and its sum has a fixed order (positions in
// increasing order within a chunk, chunks in order): bitwise reproducible.
// Frequent tokens (a few tokens make up several percent of English text: 2600
// of 65536 positions) no longer serialise one block over all their rows; the
// schedule's index logic is kernels/cuda/encoder_runs.h, shared with a CPU test.
// Scratch (Context::kEncoder): sorted tokens, positions in and out (P each),
// the partials (2 per chunk, C f32 each), CUB's temporary storage.
//
// VEC variants move 8 bf16 per thread with 128-bit accesses when C % 8 == 0 and
// the pointers are 16-byte aligned; the scalar variants take any C.
#include <cub/cub.cuh>

#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/encoder_runs.h"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int kDwteThreads = 128;
constexpr int kChunk = 64;  // sorted entries per dwte block: 41 partials for a token at 4% of 64K positions

void expect_bf16(View v, const char* op, const char* what) {
    if (!v) run_failed(std::string(op) + ": " + what + " is null");
    if (v.dtype != DType::bf16)
        run_failed(std::string(op) + ": " + what + " must be bf16, got " + dtype_name(v.dtype));
}

size_t round_up256(size_t n) { return (n + 255) / 256 * 256; }
unsigned ceil_div(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

// dst[0..W) += src sums, W = 8 (VEC) or 1: read, add in f32, round once.
template <bool VEC>
__device__ __forceinline__ void add_into(bf16* dst, const float (&acc)[VEC ? 8 : 1]) {
    if constexpr (VEC) {
        float f[8];
        load8(dst, f);
#pragma unroll
        for (int k = 0; k < 8; k++) f[k] += acc[k];
        store8(dst, f);
    } else {
        dst[0] = to_bf16(to_f32(dst[0]) + acc[0]);
    }
}

template <bool VEC>
__device__ __forceinline__ void accumulate(float (&acc)[VEC ? 8 : 1], const bf16* src) {
    if constexpr (VEC) {
        float f[8];
        load8(src, f);
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k] += f[k];
    } else {
        acc[0] += to_f32(src[0]);
    }
}

// out (B*T, C); one thread per (row, W channels), W = 8 (VEC) or 1.
template <bool VEC>
__global__ void encoder_fwd_kernel(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int BT, int T,
                                   int C) {
    constexpr int W = VEC ? 8 : 1;
    const int units = C / W;
    const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= size_t(BT) * units) return;
    const int row = int(idx / units), c = int(idx % units) * W;
    const int t = row % T;
    const bf16* e = wte + size_t(tokens[row]) * C + c;
    bf16* o = out + size_t(row) * C + c;
    if (!wpe) {
        if constexpr (VEC) *reinterpret_cast<uint4*>(o) = *reinterpret_cast<const uint4*>(e);
        else *o = *e;
        return;
    }
    const bf16* p = wpe + size_t(t) * C + c;
    if constexpr (VEC) {
        float fe[8], fp[8];
        load8(e, fe);
        load8(p, fp);
#pragma unroll
        for (int k = 0; k < 8; k++) fe[k] += fp[k];
        store8(o, fe);
    } else {
        *o = to_bf16(to_f32(*e) + to_f32(*p));
    }
}

__global__ void iota_kernel(int32_t* pos, int P) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < P) pos[i] = i;
}

// W = 8 (VEC) or 1 f32 values to or from a partial slot.
template <bool VEC>
__device__ __forceinline__ void store_partial(float* dst, const float (&acc)[VEC ? 8 : 1]) {
    if constexpr (VEC) {
        reinterpret_cast<float4*>(dst)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
        reinterpret_cast<float4*>(dst)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    } else {
        dst[0] = acc[0];
    }
}
template <bool VEC>
__device__ __forceinline__ void add_partial(float (&acc)[VEC ? 8 : 1], const float* src) {
    if constexpr (VEC) {
        const float4 x = reinterpret_cast<const float4*>(src)[0], y = reinterpret_cast<const float4*>(src)[1];
        acc[0] += x.x; acc[1] += x.y; acc[2] += x.z; acc[3] += x.w;
        acc[4] += y.x; acc[5] += y.y; acc[6] += y.z; acc[7] += y.w;
    } else {
        acc[0] += src[0];
    }
}

// keys (P): tokens sorted ascending; pos (P): their positions, increasing
// within each token. Block (c, y): chunk c of kChunk sorted entries, channel
// tile y; partial (2 * chunks, C) f32 (see encoder_runs.h).
template <bool VEC>
__global__ void dwte_chunk_kernel(bf16* __restrict__ dwte, float* __restrict__ partial, const bf16* __restrict__ dout,
                                  const uint32_t* __restrict__ keys, const int32_t* __restrict__ pos, int P, int C) {
    namespace er = encoder_runs;
    constexpr int W = VEC ? 8 : 1;
    const int c = blockIdx.x;
    const er::Chunk ch = er::chunk(c, kChunk, P);
    const int col = (blockIdx.y * blockDim.x + threadIdx.x) * W;
    if (col >= C) return;
    float acc[W] = {};
    int a = ch.begin;  // start of the current run
#pragma unroll 4
    for (int j = ch.begin; j < ch.end; j++) {
        accumulate<VEC>(acc, dout + size_t(pos[j]) * C + col);
        const int b = j + 1;
        if (b < ch.end && keys[b] == keys[j]) continue;
        // The run [a, b) of token keys[j] is complete in this chunk.
        if (!er::continues_before(keys, a, ch) && !er::continues_after(keys, b, ch, P))
            add_into<VEC>(dwte + size_t(keys[j]) * C + col, acc);
        else
            store_partial<VEC>(partial + size_t(er::partial_slot(c, a, ch)) * C + col, acc);
#pragma unroll
        for (int k = 0; k < W; k++) acc[k] = 0.f;
        a = b;
    }
}

// The runs that cross chunk boundaries: the chunk where one starts adds its
// partials, in chunk order, into dwte.
template <bool VEC>
__global__ void dwte_cross_kernel(bf16* __restrict__ dwte, const float* __restrict__ partial, const uint32_t* __restrict__ keys,
                                  int P, int C) {
    namespace er = encoder_runs;
    constexpr int W = VEC ? 8 : 1;
    const er::Owned o = er::owned_run(keys, blockIdx.x, kChunk, P);
    if (!o.owns) return;
    const int col = (blockIdx.y * blockDim.x + threadIdx.x) * W;
    if (col >= C) return;
    float acc[W] = {};
    add_partial<VEC>(acc, partial + size_t(o.own_slot) * C + col);
    for (int k = int(blockIdx.x) + 1; k <= o.last_chunk; k++) add_partial<VEC>(acc, partial + size_t(2 * k) * C + col);
    add_into<VEC>(dwte + size_t(o.key) * C + col, acc);
}

// dwpe (T rows used, C): one thread per (t, W channels), summing over b in order.
template <bool VEC>
__global__ void dwpe_kernel(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    constexpr int W = VEC ? 8 : 1;
    const int units = C / W;
    const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= size_t(T) * units) return;
    const int t = int(idx / units), c = int(idx % units) * W;
    float acc[W] = {};
    for (int b = 0; b < B; b++) accumulate<VEC>(acc, dout + (size_t(b) * T + t) * C + c);
    add_into<VEC>(dwpe + size_t(t) * C + c, acc);
}

}  // namespace

void encoder_forward(Context& ctx, const EncoderFwd& a) {
    expect_bf16(a.out, "encoder_forward", "out");
    expect_bf16(a.wte, "encoder_forward", "wte");
    if (a.wpe) expect_bf16(a.wpe, "encoder_forward", "wpe");  // null: rotary positions
    const int BT = a.B * a.T;
    if (BT <= 0 || a.C <= 0) return;
    bf16* out = a.out.as<bf16>();
    const bf16 *wte = a.wte.as<bf16>(), *wpe = a.wpe.as<bf16>();
    if (a.C % 8 == 0 && aligned16(out) && aligned16(wte) && (!wpe || aligned16(wpe))) {
        const unsigned blocks = ceil_div(size_t(BT) * (a.C / 8), kThreads);
        encoder_fwd_kernel<true><<<blocks, kThreads, 0, ctx.stream>>>(out, a.tokens, wte, wpe, BT, a.T, a.C);
    } else {
        const unsigned blocks = ceil_div(size_t(BT) * a.C, kThreads);
        encoder_fwd_kernel<false><<<blocks, kThreads, 0, ctx.stream>>>(out, a.tokens, wte, wpe, BT, a.T, a.C);
    }
    GPT_CUDA_LAUNCH_CHECK();
}

void encoder_backward(Context& ctx, const EncoderBwd& a) {
    expect_bf16(a.dwte, "encoder_backward", "dwte");
    if (a.dwpe) expect_bf16(a.dwpe, "encoder_backward", "dwpe");  // null: rotary positions
    expect_bf16(a.dout, "encoder_backward", "dout");
    const int P = a.B * a.T, C = a.C;
    if (P <= 0 || C <= 0) return;
    bf16 *dwte = a.dwte.as<bf16>(), *dwpe = a.dwpe.as<bf16>();
    const bf16* dout = a.dout.as<bf16>();
    const bool vec = C % 8 == 0 && aligned16(dwte) && (!dwpe || aligned16(dwpe)) && aligned16(dout);
    const int units = vec ? C / 8 : C;

    // Scratch: keys_out | pos_in | pos_out | partials | CUB temp, each 256-byte aligned.
    // Tokens are non-negative, so they sort as unsigned keys over all 32 bits
    // (EncoderBwd does not carry Vp to narrow the bit range).
    const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(a.tokens);
    size_t temp_bytes = 0;
    GPT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, static_cast<uint32_t*>(nullptr),
                                                   static_cast<const int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr), P, 0, 32, ctx.stream));
    const int chunks = encoder_runs::num_chunks(P, kChunk);
    const size_t arr = round_up256(size_t(P) * sizeof(int32_t));
    const size_t parts = round_up256(size_t(2) * chunks * C * sizeof(float));
    char* base = static_cast<char*>(ctx.scratch(Context::kEncoder, 3 * arr + parts + temp_bytes));
    uint32_t* keys_out = reinterpret_cast<uint32_t*>(base);
    int32_t* pos_in = reinterpret_cast<int32_t*>(base + arr);
    int32_t* pos_out = reinterpret_cast<int32_t*>(base + 2 * arr);
    float* partial = reinterpret_cast<float*>(base + 3 * arr);
    void* temp = base + 3 * arr + parts;

    iota_kernel<<<ceil_div(size_t(P), kThreads), kThreads, 0, ctx.stream>>>(pos_in, P);
    GPT_CUDA_LAUNCH_CHECK();
    GPT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, pos_in, pos_out, P, 0, 32,
                                                   ctx.stream));

    const dim3 wgrid(unsigned(chunks), ceil_div(size_t(units), kDwteThreads));
    if (vec) {
        dwte_chunk_kernel<true><<<wgrid, kDwteThreads, 0, ctx.stream>>>(dwte, partial, dout, keys_out, pos_out, P, C);
        GPT_CUDA_LAUNCH_CHECK();
        dwte_cross_kernel<true><<<wgrid, kDwteThreads, 0, ctx.stream>>>(dwte, partial, keys_out, P, C);
    } else {
        dwte_chunk_kernel<false><<<wgrid, kDwteThreads, 0, ctx.stream>>>(dwte, partial, dout, keys_out, pos_out, P, C);
        GPT_CUDA_LAUNCH_CHECK();
        dwte_cross_kernel<false><<<wgrid, kDwteThreads, 0, ctx.stream>>>(dwte, partial, keys_out, P, C);
    }
    GPT_CUDA_LAUNCH_CHECK();

    if (!dwpe) return;
    const unsigned pblocks = ceil_div(size_t(a.T) * units, kThreads);
    if (vec)
        dwpe_kernel<true><<<pblocks, kThreads, 0, ctx.stream>>>(dwpe, dout, a.B, a.T, C);
    else
        dwpe_kernel<false><<<pblocks, kThreads, 0, ctx.stream>>>(dwpe, dout, a.B, a.T, C);
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace gpt::cuda
