// The backend interface: memory plus the set of ops a training step calls.
//
// The trainer, the model and the optimizer only talk to a Backend. The CPU
// backend (kernels/cpu) is the float32 reference; the CUDA backend is a second
// implementation of this same class, not a fork of the trainer.
#pragma once

#include <memory>
#include <string>

#include "kernels/ops.h"

namespace gpt {

class Backend {
public:
    virtual ~Backend() = default;

    virtual std::string name() const = 0;          // "cpu", "cpu-f64", "cuda"
    virtual std::string device_info() const = 0;   // human-readable, printed at start
    virtual DType param_dtype() const = 0;          // parameters and gradients
    virtual DType act_dtype() const = 0;            // activations
    virtual DType stat_dtype() const = 0;           // mean/rstd/lse/losses, optimizer state

    // Memory. alloc throws Error(OutOfMemory) naming the size on failure.
    virtual void* alloc(size_t bytes, const char* what) = 0;
    virtual void free(void* p) = 0;
    virtual void zero(void* p, size_t bytes) = 0;
    virtual void to_device(void* dst, const void* host_src, size_t bytes) = 0;
    virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
    virtual void synchronize() = 0;

    // Forward and backward ops (see kernels/ops.h for shapes and conventions).
    virtual void encoder_forward(const EncoderFwd& a) = 0;
    virtual void encoder_backward(const EncoderBwd& a) = 0;
    virtual void layernorm_forward(const LayerNormFwd& a) = 0;
    virtual void layernorm_backward(const LayerNormBwd& a) = 0;
    virtual void matmul_forward(const MatmulFwd& a) = 0;
    virtual void matmul_backward(const MatmulBwd& a) = 0;
    virtual void attention_forward(const AttentionFwd& a) = 0;
    virtual void attention_backward(const AttentionBwd& a) = 0;
    virtual void attention_decode(const AttentionDecode& a) = 0;
    virtual void gelu_forward(const GeluFwd& a) = 0;
    virtual void gelu_backward(const GeluBwd& a) = 0;
    virtual void residual_forward(const ResidualFwd& a) = 0;
    virtual void classifier(const ClassifierFwdBwd& a) = 0;

    // Optimizer.
    virtual double grad_norm_squared(View grads, size_t n) = 0;  // sum of squares, f64 accumulation
    virtual void adamw_update(const AdamW& a) = 0;
    // Copy n elements from src to dst (same dtype), e.g. to seed a residual gradient.
    virtual void copy(View dst, View src, size_t n) = 0;
};

// Create a backend by name: "cpu" (float32), "cpu-f64" (float64, for gradient
// checks), "auto" (CUDA when built and a device is present, else CPU), "cuda".
// threads <= 0 means all cores. Throws BadInput for an unknown or unavailable backend.
std::unique_ptr<Backend> make_backend(const std::string& name, int threads = 0);

}  // namespace gpt
