// Shared by every CUDA kernel family: error checks that name the call, the
// file, the line and the library's own error string; the per-backend Context
// (stream, library handles, persistent scratch, kernel choices); bf16 helpers;
// and the entry point of each family, implemented one family per file:
//
//   encoder.cu     token + position embedding, deterministic backward (its
//                  schedule's index logic in encoder_runs.h, shared with a CPU test)
//   layernorm.cu   (fused residual +) LayerNorm and RMSNorm forward, backward without
//                  atomics; QK-norm of the attention heads
//   rope.cu        rotary position embedding of q and k, in place
//   gelu.cu        standalone GELU and residual add (the `separate`/`recompute` paths)
//   matmul.cu      cuBLASLt with bias / GELU / dGELU / bias-gradient epilogues
//   attention.cu   hand-written flash attention forward/backward, KV-cache decode
//   attention_cudnn.cu  cuDNN fused SDPA (graph API), the baseline variant
//   classifier.cu  softmax + cross-entropy + dlogits in place (fused, onepass);
//                  the step's loss summed on the device
//   adamw.cu       fused AdamW with f32 master weights; gradient norm
//   muon.cu        Muon: momentum, Newton-Schulz on cuBLASLt (TF32), update
//   cuda_backend.cu  the Backend implementation: memory, dispatch, make_cuda_backend
//
// Precision: the CUDA backend's parameters, gradients and activations are bf16
// (View dtype bf16); statistics (mean, rstd, lse, losses) and optimizer state
// are f32. Accumulation is always f32. No kernel on the default path uses
// floating-point atomics: results are bitwise reproducible run to run.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/side_ranges.h"
#include "kernels/ops.h"
#include "kernels/registry.h"

namespace gpt::cuda {

// Throw gpt::Error (RunFailed, or OutOfMemory for allocation failures) with
// "<expr> failed at <file>:<line>: <library message>".
[[noreturn]] void fail_cuda(cudaError_t e, const char* expr, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t s, const char* expr, const char* file, int line);
[[noreturn]] void fail_cudnn(cudnnStatus_t s, const char* expr, const char* file, int line);

#define GPT_CUDA_CHECK(expr)                                                          \
    do {                                                                              \
        cudaError_t gpt_e_ = (expr);                                                  \
        if (gpt_e_ != cudaSuccess) ::gpt::cuda::fail_cuda(gpt_e_, #expr, __FILE__, __LINE__); \
    } while (0)
#define GPT_CUBLAS_CHECK(expr)                                                        \
    do {                                                                              \
        cublasStatus_t gpt_s_ = (expr);                                               \
        if (gpt_s_ != CUBLAS_STATUS_SUCCESS) ::gpt::cuda::fail_cublas(gpt_s_, #expr, __FILE__, __LINE__); \
    } while (0)
#define GPT_CUDNN_CHECK(expr)                                                         \
    do {                                                                              \
        cudnnStatus_t gpt_s_ = (expr);                                                \
        if (gpt_s_ != CUDNN_STATUS_SUCCESS) ::gpt::cuda::fail_cudnn(gpt_s_, #expr, __FILE__, __LINE__); \
    } while (0)
// After a kernel launch: catches bad launch configurations at the call site.
#define GPT_CUDA_LAUNCH_CHECK() GPT_CUDA_CHECK(cudaGetLastError())

// Per-backend state every family may use. One stream: ops run in call order.
struct Context {
    int device = 0;
    cudaDeviceProp prop{};
    cudaStream_t stream = nullptr;
    cublasLtHandle_t lt = nullptr;
    cudnnHandle_t cudnn = nullptr;  // created on first use: cudnn_handle()
    void* lt_workspace = nullptr;   // cuBLASLt workspace
    size_t lt_workspace_bytes = 0;
    KernelChoices kernels;

    // Persistent device scratch, one buffer per slot, grown on demand (never
    // shrunk; freed with the backend). A family uses its own slot so that
    // scratch of different families never aliases within one op.
    enum Slot { kLayerNorm, kEncoder, kAttention, kCudnn, kClassifier, kAdamW, kNorm, kMatmul, kMatmulTune, kRope, kMuon, kBiasSums,
                kMatmulSide, kSlots };
    void* scratch(Slot slot, size_t bytes);
    // Frees a slot's buffer (waits for the stream first): for scratch needed
    // only once, like the output of matmul.algo=-1 timing runs.
    void release_scratch(Slot slot);
    // Per-family caches (cuBLASLt plans, cuDNN graphs) live in the family's
    // file; they are keyed by shape and released by the backend through this hook.
    void* scratch_ptr[kSlots] = {};
    size_t scratch_bytes[kSlots] = {};
    // The RoPE cosine/sine table in slot kRope (rope.cu): for which head
    // size, base and number of positions it was built.
    int rope_hs = 0, rope_positions = 0;
    double rope_base = 0;

    // kernels.matmul.dw_stream = 1 (matmul.cu): matmul_backward enqueues the
    // weight and bias gradients on a second stream, `side`, which waits for
    // the main stream's work so far; they then overlap the dinp product and
    // whatever follows until the main stream joins (matmul_side_join), which
    // the backend does before every op other than matmul_backward and
    // attention_backward and before anything that waits for or hands out the
    // main stream. The side has its
    // own cuBLASLt workspace and scratch slot (kMatmulSide). While side work
    // is pending, side_ranges holds the byte ranges it reads and writes
    // ([begin, end), writes flagged): a matmul_backward whose own products
    // would write what it reads, or touch what it writes, joins first.
    cudaStream_t side = nullptr;
    cudaEvent_t side_fork = nullptr, side_done = nullptr;
    void* side_workspace = nullptr;
    bool side_pending = false;
    std::vector<SideRange> side_ranges;
};

// The cuDNN handle, created on the first cuDNN call (only the `cudnn`
// attention variant uses cuDNN). A cuDNN that cannot be loaded or initialised
// is BadInput naming the cuDNN version the binary was built against and the
// one the loader found, so the CUDA backend without cuDNN still runs.
cudnnHandle_t cudnn_handle(Context& ctx);

// bf16 <-> f32 helpers for kernels.
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float x) { return __float2bfloat16_rn(x); }

// Sum over the 32 lanes of a warp (all active), in a fixed butterfly order:
// every lane gets the same bits.
template <class T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Sum over a block (blockDim.x a multiple of 32, at most 1024) in a fixed
// order; the result is valid in warp 0 (every lane of it). Uses 32 shared slots.
template <class T>
__device__ __forceinline__ T block_sum(T s) {
    __shared__ T red[32];
    s = warp_sum(s);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) red[warp] = s;
    __syncthreads();
    T t = T(0);
    if (warp == 0) t = warp_sum(lane < int(blockDim.x / 32) ? red[lane] : T(0));
    return t;
}

// 128-bit vector access: eight bf16 at once, as f32. The pointer must be
// 16-byte aligned (check with aligned16 on the host before choosing a vector kernel).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&f)[8]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 x = __bfloat1622float2(h[k]);
        f[2 * k] = x.x;
        f[2 * k + 1] = x.y;
    }
}

__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&f)[8]) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = u;
}

// ---------------------------------------------------------------------------
// Family entry points. Each takes the op struct of kernels/ops.h, whose Views
// are device pointers (bf16 activations/params/grads, f32 statistics), and
// enqueues its kernels on ctx.stream. Shapes as documented in kernels/ops.h.

void encoder_forward(Context& ctx, const EncoderFwd& a);
void encoder_backward(Context& ctx, const EncoderBwd& a);

void layernorm_forward(Context& ctx, const LayerNormFwd& a);
void residual_layernorm_forward(Context& ctx, const ResidualLayerNormFwd& a);
void layernorm_backward(Context& ctx, const LayerNormBwd& a);
void qknorm_forward(Context& ctx, const QKNormFwd& a);
void qknorm_backward(Context& ctx, const QKNormBwd& a);

void rope(Context& ctx, const Rope& a);

void gelu_forward(Context& ctx, const GeluFwd& a);
void gelu_backward(Context& ctx, const GeluBwd& a);
void residual_forward(Context& ctx, const ResidualFwd& a);

void matmul_forward(Context& ctx, const MatmulFwd& a);
void matmul_backward(Context& ctx, const MatmulBwd& a);
// dst (C) += the column sums of src (N, C), bf16, in a fixed order: the bias
// gradients' column sum (matmul.cu), for passes that fold one in.
void column_sum_into(Context& ctx, __nv_bfloat16* dst, const __nv_bfloat16* src, int N, int C);
void accumulate(Context& ctx, const Accumulate& a);  // adamw.cu
void matmul_release(Context& ctx);  // frees cached plans and the side stream's resources
// The main stream waits for the weight gradients pending on the side stream
// (kernels.matmul.dw_stream); nothing when none are. must_not_throw: for the
// backend's teardown and abandoned recordings (errors ignored).
void matmul_side_join(Context& ctx, bool must_not_throw = false);
// The same, only when work touching `ranges` would race the pending side work
// (one side writes bytes the other reads or writes): for ops the backend lets
// run beside it (attention_backward, which reads neither dresidual nor the
// gradients the side writes).
void matmul_side_join_if_race(Context& ctx, std::initializer_list<SideRange> ranges);

// A kernel's dynamic shared-memory limit raised to `bytes`, once per kernel
// and device (the attribute persists; setting it at every launch would be one
// more driver call per op, and one inside every recorded step).
void set_max_dynamic_smem(Context& ctx, const void* kernel, size_t bytes);

void attention_forward(Context& ctx, const AttentionFwd& a);    // dispatches on kernels.attention
void attention_backward(Context& ctx, const AttentionBwd& a);
void attention_decode(Context& ctx, const AttentionDecode& a);
// The cuDNN variant (attention_cudnn.cu), called by the two above.
void attention_forward_cudnn(Context& ctx, const AttentionFwd& a);
void attention_backward_cudnn(Context& ctx, const AttentionBwd& a);
void attention_cudnn_release(Context& ctx);  // frees cached graphs
// kernels.attention: wgmma (attention_hopper.cu, sm_90a): the forward on
// warpgroup MMA where it can run (an sm_90 device, head size 64 or 128,
// 16-byte aligned rows); the caller takes flash's forward elsewhere.
bool attention_wgmma_can_run(const Context& ctx, const AttentionFwd& a);
void attention_forward_wgmma(Context& ctx, const AttentionFwd& a);
// Its backward (kernels.attention.wgmma_bwd = 1) where it can run (the same
// conditions): D (B,NH,T) = rowsum(dO * O) from the caller, and scratch of
// attention_wgmma_bwd_scratch_bytes for the ordered dQ sums.
bool attention_wgmma_bwd_can_run(const Context& ctx, const AttentionBwd& a);
size_t attention_wgmma_bwd_scratch_bytes(const AttentionBwd& a);
void attention_backward_wgmma(Context& ctx, const AttentionBwd& a, const float* D, void* scratch);

void classifier(Context& ctx, const ClassifierFwdBwd& a);
void sum_into(Context& ctx, const SumInto& a);  // the step's loss (classifier.cu)

double grad_norm_squared(Context& ctx, View grads, size_t n);
void grad_sumsq(Context& ctx, const GradSumSq& a);
void adamw_update(Context& ctx, const AdamW& a);
void muon_update(Context& ctx, const Muon& a);
void muon_release(Context& ctx);  // frees cached cuBLASLt layouts

// dst = src converted elementwise (bf16/f32), n elements.
void convert(Context& ctx, View dst, View src, size_t n);

}  // namespace gpt::cuda
