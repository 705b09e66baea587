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
//   3. dwte_kernel<VEC>          grid (P, channel tiles): the block at the first
//                                sorted index of each token sums that token's
//                                dout rows in position order (f32) and adds the
//                                sum into dwte (rounded to bf16 once); the other
//                                blocks exit at once. One owner per dwte row.
//   4. dwpe_kernel<VEC>          one thread per (t, 8 channels): sums dout over b
//                                in order and adds into dwpe.
// Scratch (Context::kEncoder): sorted tokens, positions in and out (P each),
// CUB's temporary storage.
//
// VEC variants move 8 bf16 per thread with 128-bit accesses when C % 8 == 0 and
// the pointers are 16-byte aligned; the scalar variants take any C.
#include <cub/cub.cuh>

#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int kDwteThreads = 128;

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

// keys (P): tokens sorted ascending; pos (P): their positions, increasing
// within each token. Block (i, y) handles sorted index i and channel tile y.
template <bool VEC>
__global__ void dwte_kernel(bf16* dwte, const bf16* dout, const uint32_t* keys, const int32_t* pos, int P, int C) {
    constexpr int W = VEC ? 8 : 1;
    const int i = blockIdx.x;
    const uint32_t tok = keys[i];
    if (i > 0 && keys[i - 1] == tok) return;  // not the first occurrence: another block owns the row
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * W;
    if (c >= C) return;
    int end = i + 1;
    while (end < P && keys[end] == tok) end++;
    // Unrolled so that several rows' loads are in flight: a frequent token
    // (say 3% of a 16K-token batch) is one block's serial walk.
    float acc[W] = {};
#pragma unroll 8
    for (int j = i; j < end; j++) accumulate<VEC>(acc, dout + size_t(pos[j]) * C + c);
    add_into<VEC>(dwte + size_t(tok) * C + c, acc);
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

    // Scratch: keys_out | pos_in | pos_out | CUB temp, each 256-byte aligned.
    // Tokens are non-negative, so they sort as unsigned keys over all 32 bits
    // (EncoderBwd does not carry Vp to narrow the bit range).
    const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(a.tokens);
    size_t temp_bytes = 0;
    GPT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, static_cast<uint32_t*>(nullptr),
                                                   static_cast<const int32_t*>(nullptr),
                                                   static_cast<int32_t*>(nullptr), P, 0, 32, ctx.stream));
    const size_t arr = round_up256(size_t(P) * sizeof(int32_t));
    char* base = static_cast<char*>(ctx.scratch(Context::kEncoder, 3 * arr + temp_bytes));
    uint32_t* keys_out = reinterpret_cast<uint32_t*>(base);
    int32_t* pos_in = reinterpret_cast<int32_t*>(base + arr);
    int32_t* pos_out = reinterpret_cast<int32_t*>(base + 2 * arr);
    void* temp = base + 3 * arr;

    iota_kernel<<<ceil_div(size_t(P), kThreads), kThreads, 0, ctx.stream>>>(pos_in, P);
    GPT_CUDA_LAUNCH_CHECK();
    GPT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, pos_in, pos_out, P, 0, 32,
                                                   ctx.stream));

    const dim3 wgrid(unsigned(P), ceil_div(size_t(units), kDwteThreads));
    if (vec)
        dwte_kernel<true><<<wgrid, kDwteThreads, 0, ctx.stream>>>(dwte, dout, keys_out, pos_out, P, C);
    else
        dwte_kernel<false><<<wgrid, kDwteThreads, 0, ctx.stream>>>(dwte, dout, keys_out, pos_out, P, C);
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
