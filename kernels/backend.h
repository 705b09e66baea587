// The backend interface: memory plus the set of ops a training step calls.
//
// The trainer, the model and the optimizer only talk to a Backend. The CPU
// backend (kernels/cpu) is the float32 reference; the CUDA backend is a second
// implementation of this same class, not a fork of the trainer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "kernels/registry.h"

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

    // Host memory for the asynchronous copies: page-locked on CUDA (a copy
    // from pageable memory would wait for the stream), plain memory on the CPU.
    // alloc_host throws Error(OutOfMemory) naming the size on failure.
    virtual void* alloc_host(size_t bytes, const char* what) = 0;
    virtual void free_host(void* p) = 0;
    // Enqueue a copy and return at once. The host buffer must come from
    // alloc_host and stay unchanged (to_device) or unread (to_host) until the
    // next synchronize(). Inside a recorded step (begin_capture) the copy
    // becomes part of the recording: each replay reads or writes the host
    // buffer as it is then.
    virtual void to_device_async(void* dst, const void* host_src, size_t bytes) = 0;
    virtual void to_host_async(void* host_dst, const void* src, size_t bytes) = 0;

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
    virtual void rope(const Rope& a) = 0;
    virtual void qknorm_forward(const QKNormFwd& a) = 0;
    virtual void qknorm_backward(const QKNormBwd& a) = 0;
    virtual void gelu_forward(const GeluFwd& a) = 0;
    virtual void gelu_backward(const GeluBwd& a) = 0;
    virtual void residual_forward(const ResidualFwd& a) = 0;
    // Default: the two ops in turn (the `layernorm: separate` variant).
    virtual void residual_layernorm_forward(const ResidualLayerNormFwd& a) {
        residual_forward({a.residual, a.a, a.b, size_t(a.N) * a.C});
        layernorm_forward({a.out, a.mean, a.rstd, a.residual, a.weight, a.bias, a.N, a.C, a.rms});
    }
    virtual void classifier(const ClassifierFwdBwd& a) = 0;

    // The step's loss, summed on the device (see kernels/ops.h SumInto).
    virtual void sum_into(const SumInto& a) = 0;
    // Gradients summed over micro-batches in f32 (see kernels/ops.h Accumulate).
    virtual void accumulate(const Accumulate& a) = 0;

    // Optimizer.
    virtual double grad_norm_squared(View grads, size_t n) = 0;  // sum of squares, f64 accumulation; waits for the device
    virtual void grad_sumsq(const GradSumSq& a) = 0;             // the same sum into backend memory, enqueued
    virtual void adamw_update(const AdamW& a) = 0;
    virtual void muon_update(const Muon& a) = 0;
    // Copy n elements from src to dst, converting between dtypes when they
    // differ (e.g. bf16 parameters -> f32 master weights).
    virtual void copy(View dst, View src, size_t n) = 0;

    // The kernel variants this backend runs (see kernels/registry.h).
    virtual const KernelChoices& kernels() const = 0;

    // The CUDA stream the ops run on (cudaStream_t), for NCCL; nullptr on the CPU.
    virtual void* native_stream() { return nullptr; }

    // Step recording (run.cuda_graph). Between begin_capture and end_capture
    // the ops and asynchronous copies are recorded instead of run; replay()
    // enqueues the whole recording again (a CUDA graph on CUDA; the list of
    // calls on the CPU, where it gains nothing but lets the step's recording
    // be tested). Recorded ops keep their arguments, so everything that
    // changes from step to step must reach them through backend memory
    // (tokens and step values by to_device_async, AdamW's hyper and norm_sq).
    // A call that must wait for the device (to_device, to_host, synchronize,
    // grad_norm_squared) throws while recording: nothing recorded has run, so
    // abort_capture() then discards the recording and the caller runs the
    // step directly. begin_capture and end_capture return false with the
    // reason in *why when the backend cannot record or the recording failed.
    virtual bool begin_capture(std::string* why) {
        if (why) *why = "backend " + name() + " cannot record steps";
        return false;
    }
    virtual bool end_capture(std::string* why) {
        if (why) *why = "no recording in progress";
        return false;
    }
    virtual void abort_capture() {}
    virtual void replay() { run_failed("backend " + name() + ": replay without a recorded step"); }

    // Bytes currently held through alloc(), and the most ever held (peak memory).
    virtual size_t allocated_bytes() const { return 0; }
    virtual size_t peak_allocated_bytes() const { return 0; }
    // The device's dense peak in TFLOP/s for the training precision, 0 when
    // unknown; `how` says where the figure comes from.
    virtual double peak_tflops(std::string* how) const { return 0; }
    // Its memory bandwidth in GB/s by the same kind of source, 0 when unknown
    // (the kernel lab's roofline, kernels/lab.h).
    virtual double peak_gbs(std::string* how) const { return 0; }
    // What kernels' can_run checks (kernels/registry.h), and the size of the
    // last-level cache (0 = unknown), which the lab flushes between timings.
    virtual DeviceCaps device_caps() const { return DeviceCaps{name(), 0, 0}; }
    virtual size_t cache_bytes() const { return 0; }

    // Per-op timing for `gpt bench step --profile`: while on, each op's time
    // is accumulated by op name (device time on CUDA, via events).
    struct OpTime { std::string op; long calls; double ms; };
    virtual void set_profiling(bool on) {}
    virtual std::vector<OpTime> op_times() { return {}; }  // synchronizes; sorted by ms, largest first
};

struct BackendOptions {
    int threads = 0;       // CPU threads, <= 0: all cores
    int device = -1;       // CUDA device ordinal; < 0: local_rank modulo the device count
    int local_rank = 0;    // this process's rank on its machine (train/dist.h detect_dist_env)
    KernelChoices kernels; // the config's kernels section
};

// Create a backend by name: "cpu" (float32), "cpu-f64" (float64, for gradient
// checks), "auto" (CUDA when built and a device is present, else CPU), "cuda".
// Throws BadInput for an unknown or unavailable backend.
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& opts);
std::unique_ptr<Backend> make_backend(const std::string& name, int threads = 0);

#if GPT_HAVE_CUDA
// kernels/cuda/cuda_backend.cu. cuda_device_count() is 0 when there is no
// driver or no device (never throws); make_cuda_backend throws BadInput when
// the device is missing, naming the reason from the driver.
int cuda_device_count();
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts);
// "" while this process's CUDA context on the current device works; else the
// sticky error that lost it (a trapped or faulting kernel), in the runtime's
// words. Waits for the device first; clears a pending non-sticky error.
std::string cuda_sticky_error();
#endif

}  // namespace gpt
