// Rotary position embedding (RoPE) of the CUDA backend: the q and k heads of
// qkv (N,3C) bf16 rotated in place, as kernels/cpu/rope.cpp.
//
// Row r sits at position pos0 + r % T; pair i of a head (elements i and
// i + hs/2) turns by pos * base^(-2i/hs) (backward: by its negative).
//
//   rope_kernel   one thread per (row, head, pair): two bf16 reads and writes,
//                 the angle's cosine and sine from a table (P, hs/2) of float2
//
// The table is built on the host in double by rope_angle (kernels/ops.h), the
// function the CPU backend uses, rounded to f32 once, and kept in scratch slot
// kRope until the head size or the base changes or more positions are needed
// (it then grows to at least twice its size, so decoding token by token
// rebuilds it a logarithmic number of times). Building it is the only host
// work; it synchronises the stream.
//
// Why not fused into the attention kernels' Q/K loads: the backward needs the
// rotated q and k too (they are what the scores were made of), so rotating
// once in place is one extra pass over 2/3 of qkv in the forward and one over
// dqkv in the backward, against a rotation inside every Q/K tile load of the
// forward and both backward passes. A fused variant belongs in attention.cu's
// registry once a benchmark says it pays.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;

// qkv (N,3C) in place; cs (P, half): cos, sin of each (position, pair).
__global__ void rope_kernel(bf16* qkv, const float2* cs, int N, int T, int pos0, int C, int NH, int half, float sign) {
    const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t per_row = size_t(2) * NH * half;
    if (idx >= size_t(N) * per_row) return;
    const int r = int(idx / per_row);
    const int j = int(idx % per_row / half), i = int(idx % half);  // head j: q heads, then k heads
    const int pos = pos0 + r % T;
    const float2 t = cs[size_t(pos) * half + i];
    const float c = t.x, s = sign * t.y;
    bf16* x = qkv + size_t(r) * 3 * C + size_t(j) * 2 * half;
    const float x1 = to_f32(x[i]), x2 = to_f32(x[i + half]);
    x[i] = to_bf16(x1 * c - x2 * s);
    x[i + half] = to_bf16(x1 * s + x2 * c);
}

// The table for at least `positions` positions, built when missing or stale.
const float2* rope_table(Context& ctx, int positions, int hs, double base) {
    const int half = hs / 2;
    if (ctx.rope_hs == hs && ctx.rope_base == base && ctx.rope_positions >= positions)
        return static_cast<const float2*>(ctx.scratch_ptr[Context::kRope]);
    const bool same = ctx.rope_hs == hs && ctx.rope_base == base;
    const int P = std::max({positions, same ? 2 * ctx.rope_positions : 0, 1024});
    std::vector<float2> host(size_t(P) * half);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < half; i++) {
            const double th = rope_angle(p, i, hs, base);
            host[size_t(p) * half + i] = make_float2(float(std::cos(th)), float(std::sin(th)));
        }
    auto* dev = static_cast<float2*>(ctx.scratch(Context::kRope, host.size() * sizeof(float2)));
    GPT_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(float2), cudaMemcpyHostToDevice, ctx.stream));
    GPT_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));  // host is freed on return
    ctx.rope_hs = hs;
    ctx.rope_base = base;
    ctx.rope_positions = P;
    return dev;
}

}  // namespace

void rope(Context& ctx, const Rope& a) {
    if (!a.qkv || a.qkv.dtype != DType::bf16)
        run_failed(std::string("rope: qkv must be bf16, got ") + (a.qkv ? dtype_name(a.qkv.dtype) : "null"));
    if (a.NH <= 0 || a.C % a.NH != 0 || (a.C / a.NH) % 2 != 0 || a.T <= 0 || a.pos0 < 0)
        run_failed("rope: bad shape (C=" + std::to_string(a.C) + ", NH=" + std::to_string(a.NH) + ", T=" + std::to_string(a.T) +
                   ", pos0=" + std::to_string(a.pos0) + "): the head size must be even");
    if (a.N <= 0) return;
    const int hs = a.C / a.NH, half = hs / 2;
    const float2* cs = rope_table(ctx, a.pos0 + std::min(a.T, a.N), hs, a.base);
    const size_t threads = size_t(a.N) * 2 * a.NH * half;
    rope_kernel<<<unsigned((threads + kThreads - 1) / kThreads), kThreads, 0, ctx.stream>>>(a.qkv.as<bf16>(), cs, a.N, a.T, a.pos0, a.C,
                                                                                            a.NH, half, a.backward ? -1.0f : 1.0f);
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace gpt::cuda
