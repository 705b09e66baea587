// Elementwise ops of the CUDA backend: the MLP activation (tanh-approximated
// GELU, or ReLU² with model.activation: relu2) forward and backward, and the
// residual add. These are the standalone kernels of the `gelu: recompute` path
// (the default path fuses GELU into the fc matmul's epilogue), of decoding,
// and of `layernorm: separate` (residual_forward).
//
// Variants, one per op (all memory-bound: one read and one write per element):
//   *_kernel<true>   8 bf16 per thread with 128-bit loads/stores, used when every
//                    pointer is 16-byte aligned; the last thread finishes the
//                    ragged tail (N not a multiple of 8) element by element
//   *_kernel<false>  one element per thread, for misaligned views
//
// The GELU arithmetic is kernels/cpu/gelu.cpp's, in f32 and in the same order:
//   gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3*0.044715 x^2)
//   relu2(x) = max(x, 0)^2,  relu2'(x) = 2 max(x, 0)
// gelu_backward may run in place (dinp == dout): each element is read and
// then written by the same thread, and no pointer is declared __restrict__.
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
constexpr float k3Cubic = float(3 * 0.044715);

void expect_bf16(View v, const char* op, const char* what) {
    if (!v) run_failed(std::string(op) + ": " + what + " is null");
    if (v.dtype != DType::bf16)
        run_failed(std::string(op) + ": " + what + " must be bf16, got " + dtype_name(v.dtype));
}

__device__ __forceinline__ float gelu_f(float x) {
    const float u = kSqrt2OverPi * (kCubic * x * x * x + x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad_f(float x) {
    const float u = kSqrt2OverPi * (kCubic * x * x * x + x);
    const float th = tanhf(u);
    const float du = kSqrt2OverPi * (1.0f + k3Cubic * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

// Elementwise functors: out = F(x, y) for up to two inputs.
struct GeluFwdOp {
    __device__ float operator()(float x, float) const { return gelu_f(x); }
};
struct GeluBwdOp {  // x = inp (pre-activation), y = dout
    __device__ float operator()(float x, float y) const { return gelu_grad_f(x) * y; }
};
struct Relu2FwdOp {
    __device__ float operator()(float x, float) const {
        const float r = fmaxf(x, 0.0f);
        return r * r;
    }
};
struct Relu2BwdOp {  // x = inp (pre-activation), y = dout
    __device__ float operator()(float x, float y) const { return x > 0.0f ? 2.0f * x * y : 0.0f; }
};
struct AddOp {
    __device__ float operator()(float x, float y) const { return x + y; }
};

// out (n) = op(x, y) elementwise; y may be null when op ignores it.
// VEC: thread i owns elements [8i, 8i+8); the thread holding the partial last
// group handles it element by element.
template <class Op, bool VEC>
__global__ void elementwise_kernel(bf16* out, const bf16* x, const bf16* y, size_t n, Op op) {
    const size_t tid = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if constexpr (VEC) {
        const size_t i = tid * 8;
        if (i + 8 <= n) {
            float fx[8], fy[8], fo[8];
            load8(x + i, fx);
            if (y) load8(y + i, fy);
            else {
#pragma unroll
                for (int k = 0; k < 8; k++) fy[k] = 0.0f;
            }
#pragma unroll
            for (int k = 0; k < 8; k++) fo[k] = op(fx[k], fy[k]);
            store8(out + i, fo);
        } else {
            for (size_t j = i; j < n; j++) out[j] = to_bf16(op(to_f32(x[j]), y ? to_f32(y[j]) : 0.0f));
        }
    } else {
        if (tid < n) out[tid] = to_bf16(op(to_f32(x[tid]), y ? to_f32(y[tid]) : 0.0f));
    }
}

template <class Op>
void launch_elementwise(Context& ctx, bf16* out, const bf16* x, const bf16* y, size_t n, Op op) {
    if (n == 0) return;
    const bool vec = aligned16(out) && aligned16(x) && (!y || aligned16(y));
    if (vec) {
        const size_t groups = (n + 7) / 8;
        const unsigned blocks = unsigned((groups + kThreads - 1) / kThreads);
        elementwise_kernel<Op, true><<<blocks, kThreads, 0, ctx.stream>>>(out, x, y, n, op);
    } else {
        const unsigned blocks = unsigned((n + kThreads - 1) / kThreads);
        elementwise_kernel<Op, false><<<blocks, kThreads, 0, ctx.stream>>>(out, x, y, n, op);
    }
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void gelu_forward(Context& ctx, const GeluFwd& a) {
    expect_bf16(a.out, "gelu_forward", "out");
    expect_bf16(a.inp, "gelu_forward", "inp");
    if (a.act == Activation::relu2) launch_elementwise(ctx, a.out.as<bf16>(), a.inp.as<bf16>(), nullptr, a.N, Relu2FwdOp{});
    else launch_elementwise(ctx, a.out.as<bf16>(), a.inp.as<bf16>(), nullptr, a.N, GeluFwdOp{});
}

void gelu_backward(Context& ctx, const GeluBwd& a) {
    expect_bf16(a.dinp, "gelu_backward", "dinp");
    expect_bf16(a.inp, "gelu_backward", "inp");
    expect_bf16(a.dout, "gelu_backward", "dout");
    if (a.act == Activation::relu2) launch_elementwise(ctx, a.dinp.as<bf16>(), a.inp.as<bf16>(), a.dout.as<bf16>(), a.N, Relu2BwdOp{});
    else launch_elementwise(ctx, a.dinp.as<bf16>(), a.inp.as<bf16>(), a.dout.as<bf16>(), a.N, GeluBwdOp{});
}

void residual_forward(Context& ctx, const ResidualFwd& a) {
    expect_bf16(a.out, "residual_forward", "out");
    expect_bf16(a.a, "residual_forward", "a");
    expect_bf16(a.b, "residual_forward", "b");
    launch_elementwise(ctx, a.out.as<bf16>(), a.a.as<bf16>(), a.b.as<bf16>(), a.N, AddOp{});
}

}  // namespace gpt::cuda
