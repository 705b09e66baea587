// The CUDA backend: device memory, one stream, library handles, and dispatch
// of every Backend op to its kernel family's entry point (common.cuh).
//
// Dtypes: parameters, gradients and activations bf16; statistics (mean, rstd,
// lse, losses) and optimizer state f32. Every op is enqueued on the one
// stream, so ops run in call order; the host waits only in to_device /
// to_host (pageable host buffers), synchronize, grad_norm_squared and
// op_times. to_device_async / to_host_async copy from and to page-locked
// host memory (alloc_host) without waiting.
//
// cuDNN is initialised on first use (cudnn_handle): only the `cudnn`
// attention variant needs it, and a cuDNN that fails to load or initialise
// (the GPU host's cuDNN is older than the build machine's) then fails that
// variant alone, with both versions named.
//
// Step recording (begin_capture ... end_capture, replay): stream capture in
// thread-local mode into one CUDA graph, instantiated once and launched per
// replay. Calls that wait for the device throw while capturing.
//
// Also here: the error reporting behind the GPT_*_CHECK macros, the
// per-family scratch buffers of Context, the dtype conversion kernel behind
// Backend::copy, cuda_device_count and make_cuda_backend.
//
// Profiling (`gpt bench step --profile`): with set_profiling(true) every op
// records a pair of events around its launches (OpScope); op_times() waits for
// them and sums the elapsed time per op name. Off, an OpScope is one branch.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace gpt::cuda {

namespace {

std::string where(const char* expr, const char* file, int line) {
    return std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": ";
}

}  // namespace

void fail_cuda(cudaError_t e, const char* expr, const char* file, int line) {
    // Clears the error when it is not sticky (an allocation failure, a bad
    // launch configuration), so that the next check does not report it again.
    cudaGetLastError();
    const std::string msg = where(expr, file, line) + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    throw Error(e == cudaErrorMemoryAllocation ? ErrorKind::OutOfMemory : ErrorKind::RunFailed, msg);
}

void fail_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
    const std::string msg = where(expr, file, line) + cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")";
    throw Error(s == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::OutOfMemory : ErrorKind::RunFailed, msg);
}

void fail_cudnn(cudnnStatus_t s, const char* expr, const char* file, int line) {
    char detail[512] = {};
    cudnnGetLastErrorString(detail, sizeof detail);  // the most recent failure's explanation, if cuDNN kept one
    std::string msg = where(expr, file, line) + cudnnGetErrorString(s);
    if (detail[0]) msg += std::string(" (") + detail + ")";
    throw Error(s == CUDNN_STATUS_ALLOC_FAILED ? ErrorKind::OutOfMemory : ErrorKind::RunFailed, msg);
}

void set_max_dynamic_smem(Context& ctx, const void* kernel, size_t bytes) {
    static std::mutex mutex;
    static std::set<std::pair<const void*, int>> done;
    const std::pair<const void*, int> key{kernel, ctx.device};
    std::lock_guard<std::mutex> lock(mutex);
    if (done.count(key)) return;
    GPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    done.insert(key);
}

void Context::release_scratch(Slot slot) {
    if (!scratch_ptr[slot]) return;
    GPT_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (side) GPT_CUDA_CHECK(cudaStreamSynchronize(side));
    GPT_CUDA_CHECK(cudaFree(scratch_ptr[slot]));
    scratch_ptr[slot] = nullptr;
    scratch_bytes[slot] = 0;
}

namespace {
std::string cudnn_version_text(size_t v) {  // cuDNN 9: 10000*major + 100*minor + patch
    return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}
}  // namespace

cudnnHandle_t cudnn_handle(Context& ctx) {
    if (ctx.cudnn) return ctx.cudnn;
    const std::string built = cudnn_version_text(CUDNN_VERSION), found = cudnn_version_text(cudnnGetVersion());
    cudnnHandle_t h = nullptr;
    const cudnnStatus_t st = cudnnCreate(&h);
    if (st != CUDNN_STATUS_SUCCESS) {
        char detail[512] = {};
        cudnnGetLastErrorString(detail, sizeof detail);
        bad_input(std::string("cuDNN could not be initialised (cudnnCreate: ") + cudnnGetErrorString(st) +
                  (detail[0] ? std::string(": ") + detail : std::string()) + "); this binary was built against cuDNN " + built +
                  " and the loader found cuDNN " + found +
                  ". Only kernels.attention=cudnn uses cuDNN: choose kernels.attention=flash, or put a cuDNN " +
                  std::to_string(CUDNN_MAJOR) + ".x that initialises on this machine first on the library path (LD_LIBRARY_PATH)");
    }
    const cudnnStatus_t ss = cudnnSetStream(h, ctx.stream);
    if (ss != CUDNN_STATUS_SUCCESS) {
        cudnnDestroy(h);
        fail_cudnn(ss, "cudnnSetStream", __FILE__, __LINE__);
    }
    ctx.cudnn = h;
    return h;
}

void* Context::scratch(Slot slot, size_t bytes) {
    if (bytes <= scratch_bytes[slot]) return scratch_ptr[slot];
    // Earlier kernels may still read the old buffer: wait for them before freeing it.
    if (scratch_ptr[slot]) {
        GPT_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (side) GPT_CUDA_CHECK(cudaStreamSynchronize(side));
        GPT_CUDA_CHECK(cudaFree(scratch_ptr[slot]));
        scratch_ptr[slot] = nullptr;
        scratch_bytes[slot] = 0;
    }
    const size_t rounded = (bytes + 255) / 256 * 256;
    const cudaError_t e = cudaMalloc(&scratch_ptr[slot], rounded);
    if (e != cudaSuccess) {
        scratch_ptr[slot] = nullptr;
        if (e != cudaErrorMemoryAllocation) fail_cuda(e, "cudaMalloc(scratch)", __FILE__, __LINE__);
        cudaGetLastError();
        throw Error(ErrorKind::OutOfMemory, "out of memory allocating kernel scratch (slot " + std::to_string(int(slot)) + "): " +
                                                std::to_string(rounded >> 20) + " MiB (" + std::to_string(rounded) +
                                                " bytes) of GPU memory asked for; reduce the micro-batch (run.batch_size, run.seq_len)");
    }
    scratch_bytes[slot] = rounded;
    return scratch_ptr[slot];
}

// ---------------------------------------------------------------------------
// convert: dst (n) = src (n) with a dtype change (bf16 <-> f32) or a copy.

namespace {

template <class Dst, class Src>
__device__ __forceinline__ Dst convert_one(Src x);
template <> __device__ __forceinline__ float convert_one<float, __nv_bfloat16>(__nv_bfloat16 x) { return to_f32(x); }
template <> __device__ __forceinline__ __nv_bfloat16 convert_one<__nv_bfloat16, float>(float x) { return to_bf16(x); }

template <class Dst, class Src>
__global__ void convert_kernel(Dst* dst, const Src* src, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        dst[i] = convert_one<Dst, Src>(src[i]);
}

template <class Dst, class Src>
void launch_convert(Context& ctx, View dst, View src, size_t n) {
    const int threads = 256;
    const size_t want = (n + threads - 1) / threads, cap = size_t(std::max(1, ctx.prop.multiProcessorCount)) * 16;
    convert_kernel<Dst, Src><<<unsigned(std::min(want, cap)), threads, 0, ctx.stream>>>(dst.as<Dst>(), src.as<Src>(), n);
    GPT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void convert(Context& ctx, View dst, View src, size_t n) {
    if (n == 0) return;
    if (dst.dtype == src.dtype) {
        GPT_CUDA_CHECK(cudaMemcpyAsync(dst.ptr, src.ptr, n * dtype_size(dst.dtype), cudaMemcpyDeviceToDevice, ctx.stream));
    } else if (dst.dtype == DType::f32 && src.dtype == DType::bf16) {
        launch_convert<float, __nv_bfloat16>(ctx, dst, src, n);
    } else if (dst.dtype == DType::bf16 && src.dtype == DType::f32) {
        launch_convert<__nv_bfloat16, float>(ctx, dst, src, n);
    } else {
        run_failed(std::string("backend cuda: copy: no conversion from ") + dtype_name(src.dtype) + " to " + dtype_name(dst.dtype));
    }
}

}  // namespace gpt::cuda

namespace gpt {

namespace {

constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

std::string mib(size_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

std::string version_text(int v) {  // CUDA's 1000*major + 10*minor
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(const BackendOptions& opts, int device) {
        ctx_.device = device;
        ctx_.kernels = opts.kernels;
        fused_layernorm_ = ctx_.kernels.variant("layernorm") == "fused";
        try {
            GPT_CUDA_CHECK(cudaSetDevice(device));
            GPT_CUDA_CHECK(cudaGetDeviceProperties(&ctx_.prop, device));
            // Non-blocking: our stream never waits for work other code puts on the legacy default stream.
            GPT_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking));
            GPT_CUBLAS_CHECK(cublasLtCreate(&ctx_.lt));
            GPT_CUDA_CHECK(cudaMalloc(&ctx_.lt_workspace, kLtWorkspaceBytes));
            ctx_.lt_workspace_bytes = kLtWorkspaceBytes;
        } catch (...) {
            release();  // the destructor does not run for a constructor that throws
            throw;
        }
    }

    ~CudaBackend() override { release(); }

    std::string name() const override { return "cuda"; }

    std::string device_info() const override {
        int runtime = 0, driver = 0;
        GPT_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
        GPT_CUDA_CHECK(cudaDriverGetVersion(&driver));
        const size_t lt = cublasLtGetVersion(), dnn = cudnnGetVersion();
        const cudaDeviceProp& p = ctx_.prop;
        char buf[512];
        std::snprintf(buf, sizeof buf,
                      "%s (device %d, sm_%d%d, %d SMs, %.1f GiB), CUDA runtime %s, driver %s, cuBLASLt %zu.%zu.%zu, cuDNN %zu.%zu.%zu "
                      "(built with %d.%d.%d), bf16",
                      p.name, ctx_.device, p.major, p.minor, p.multiProcessorCount, double(p.totalGlobalMem) / double(1 << 30),
                      version_text(runtime).c_str(), version_text(driver).c_str(), lt / 10000, (lt / 100) % 100, lt % 100,
                      dnn / 10000, (dnn / 100) % 100, dnn % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL);
        return buf;
    }

    DType param_dtype() const override { return DType::bf16; }
    DType act_dtype() const override { return DType::bf16; }
    DType stat_dtype() const override { return DType::f32; }

    void* alloc(size_t bytes, const char* what) override {
        // Compare with the free memory first: the error then names the sizes
        // instead of a bare cudaErrorMemoryAllocation.
        size_t free_b = 0, total_b = 0;
        GPT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        void* p = nullptr;
        if (bytes <= free_b) {
            const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
            if (e == cudaErrorMemoryAllocation) {
                cudaGetLastError();
                p = nullptr;
            } else if (e != cudaSuccess) {
                cuda::fail_cuda(e, "cudaMalloc", __FILE__, __LINE__);
            }
        }
        if (!p)
            throw Error(ErrorKind::OutOfMemory,
                        std::string("out of memory allocating ") + (what ? what : "buffer") + ": " + mib(bytes) + " (" +
                            std::to_string(bytes) + " bytes) of GPU memory asked for, " + mib(free_b) + " free of " + mib(total_b) +
                            " on device " + std::to_string(ctx_.device) + " (" + ctx_.prop.name +
                            "); reduce the model (model.*) or the micro-batch (run.batch_size, run.seq_len)");
        sizes_[p] = bytes;
        allocated_ += bytes;
        peak_ = std::max(peak_, allocated_);
        return p;
    }

    void free(void* p) override {
        if (!p) return;
        if (auto it = sizes_.find(p); it != sizes_.end()) {
            allocated_ -= it->second;
            sizes_.erase(it);
        }
        // Never throws: it runs from destructors, also while an earlier error
        // unwinds the stack; that error is the one to report.
        if (cudaFree(p) != cudaSuccess) cudaGetLastError();
    }

    size_t allocated_bytes() const override { return allocated_; }
    size_t peak_allocated_bytes() const override { return peak_; }

    // NVIDIA's datasheet figures for dense bf16 tensor-core math (no sparsity).
    double peak_tflops(std::string* how) const override {
        const std::string n = ctx_.prop.name;
        struct Peak { const char* match; double tflops; };
        // The first match wins: the specific names come before "H100".
        for (const Peak& p : {Peak{"H100 PCIe", 756.0}, Peak{"H100 NVL", 835.0}, Peak{"H100", 989.4}, Peak{"H200", 989.4},
                              Peak{"H800", 989.4}, Peak{"A100", 312.0}}) {
            if (n.find(p.match) == std::string::npos) continue;
            if (how) *how = std::string("datasheet dense bf16 peak of the ") + p.match;
            return p.tflops;
        }
        if (how) *how = "no datasheet figure known for " + n;
        return 0;
    }

    // Datasheet memory bandwidth (HBM), the first match by name.
    double peak_gbs(std::string* how) const override {
        const std::string n = ctx_.prop.name;
        struct Bw { const char* match; double gbs; };
        for (const Bw& b : {Bw{"H100 PCIe", 2000.0}, Bw{"H100 NVL", 3900.0}, Bw{"H100", 3350.0}, Bw{"H200", 4800.0}, Bw{"H800", 3350.0},
                            Bw{"A100-SXM4-80GB", 2039.0}, Bw{"A100 80GB", 1935.0}, Bw{"A100", 1555.0}}) {
            if (n.find(b.match) == std::string::npos) continue;
            if (how) *how = std::string("datasheet memory bandwidth of the ") + b.match;
            return b.gbs;
        }
        if (how) *how = "no datasheet bandwidth known for " + n;
        return 0;
    }
    DeviceCaps device_caps() const override {
        return DeviceCaps{"cuda", ctx_.prop.major * 10 + ctx_.prop.minor, ctx_.prop.sharedMemPerBlockOptin};
    }
    size_t cache_bytes() const override { return size_t(std::max(0, ctx_.prop.l2CacheSize)); }

    void zero(void* p, size_t bytes) override {
        if (!bytes) return;
        OpScope s(this, "zero");
        GPT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx_.stream));
    }

    void to_device(void* dst, const void* host_src, size_t bytes) override {
        refuse_while_capturing("to_device");
        if (!bytes) return;
        cuda::matmul_side_join(ctx_);
        GPT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
        GPT_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }

    void to_host(void* host_dst, const void* src, size_t bytes) override {
        refuse_while_capturing("to_host");
        if (!bytes) return;
        cuda::matmul_side_join(ctx_);
        GPT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
        GPT_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }

    void synchronize() override {
        refuse_while_capturing("synchronize");
        cuda::matmul_side_join(ctx_);
        GPT_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }

    void* alloc_host(size_t bytes, const char* what) override {
        void* p = nullptr;
        const cudaError_t e = cudaMallocHost(&p, std::max<size_t>(bytes, 1));
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            throw Error(ErrorKind::OutOfMemory, std::string("out of page-locked host memory allocating ") + (what ? what : "buffer") +
                                                    ": " + mib(bytes) + " (" + std::to_string(bytes) + " bytes) asked for");
        }
        if (e != cudaSuccess) cuda::fail_cuda(e, "cudaMallocHost", __FILE__, __LINE__);
        return p;
    }
    void free_host(void* p) override {
        if (p && cudaFreeHost(p) != cudaSuccess) cudaGetLastError();  // never throws: runs from destructors
    }
    void to_device_async(void* dst, const void* host_src, size_t bytes) override {
        if (!bytes) return;
        cuda::matmul_side_join(ctx_);
        GPT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
    }
    void to_host_async(void* host_dst, const void* src, size_t bytes) override {
        if (!bytes) return;
        cuda::matmul_side_join(ctx_);
        GPT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    }

    void encoder_forward(const EncoderFwd& a) override {
        OpScope s(this, "encoder_forward");
        cuda::encoder_forward(ctx_, a);
    }
    void encoder_backward(const EncoderBwd& a) override {
        OpScope s(this, "encoder_backward");
        cuda::encoder_backward(ctx_, a);
    }
    void layernorm_forward(const LayerNormFwd& a) override {
        OpScope s(this, "layernorm_forward");
        cuda::layernorm_forward(ctx_, a);
    }
    void layernorm_backward(const LayerNormBwd& a) override {
        OpScope s(this, "layernorm_backward");
        cuda::layernorm_backward(ctx_, a);
    }
    void matmul_forward(const MatmulFwd& a) override {
        OpScope s(this, "matmul_forward");
        cuda::matmul_forward(ctx_, a);
    }
    void matmul_backward(const MatmulBwd& a) override {
        OpScope s(this, "matmul_backward", false);  // may leave weight gradients on the side stream (matmul.dw_stream)
        cuda::matmul_backward(ctx_, a);
    }
    void attention_forward(const AttentionFwd& a) override {
        OpScope s(this, "attention_forward");
        cuda::attention_forward(ctx_, a);
    }
    void attention_backward(const AttentionBwd& a) override {
        // Runs beside pending weight gradients (matmul.dw_stream: the
        // attention projection's, which read its dout and the attention's
        // out) unless it would race them.
        OpScope s(this, "attention_backward", false);
        {
            using cuda::side_range;
            const size_t bt = size_t(std::max(a.B, 0)) * size_t(std::max(a.T, 0)), c = size_t(std::max(a.C, 0)), e = sizeof(uint16_t);
            cuda::matmul_side_join_if_race(ctx_, {side_range(a.qkv.ptr, bt * 3 * c * e, false), side_range(a.out.ptr, bt * c * e, false),
                                                  side_range(a.dout.ptr, bt * c * e, false),
                                                  side_range(a.lse.ptr, bt * size_t(std::max(a.NH, 0)) * sizeof(float), false),
                                                  side_range(a.dqkv.ptr, bt * 3 * c * e, true)});
        }
        cuda::attention_backward(ctx_, a);
    }
    void attention_decode(const AttentionDecode& a) override {
        OpScope s(this, "attention_decode");
        cuda::attention_decode(ctx_, a);
    }
    void rope(const Rope& a) override {
        OpScope s(this, "rope");
        cuda::rope(ctx_, a);
    }
    void qknorm_forward(const QKNormFwd& a) override {
        OpScope s(this, "qknorm_forward");
        cuda::qknorm_forward(ctx_, a);
    }
    void qknorm_backward(const QKNormBwd& a) override {
        OpScope s(this, "qknorm_backward");
        cuda::qknorm_backward(ctx_, a);
    }
    void gelu_forward(const GeluFwd& a) override {
        OpScope s(this, "gelu_forward");
        cuda::gelu_forward(ctx_, a);
    }
    void gelu_backward(const GeluBwd& a) override {
        OpScope s(this, "gelu_backward");
        cuda::gelu_backward(ctx_, a);
    }
    void residual_forward(const ResidualFwd& a) override {
        OpScope s(this, "residual_forward");
        cuda::residual_forward(ctx_, a);
    }
    void residual_layernorm_forward(const ResidualLayerNormFwd& a) override {
        if (!fused_layernorm_) {
            Backend::residual_layernorm_forward(a);  // the two ops, each timed under its own name
            return;
        }
        OpScope s(this, "residual_layernorm_forward");
        cuda::residual_layernorm_forward(ctx_, a);
    }
    void classifier(const ClassifierFwdBwd& a) override {
        OpScope s(this, "classifier");
        cuda::classifier(ctx_, a);
    }

    void sum_into(const SumInto& a) override {
        OpScope s(this, "sum_into");
        cuda::sum_into(ctx_, a);
    }

    void accumulate(const Accumulate& a) override {
        OpScope s(this, "accumulate");
        cuda::accumulate(ctx_, a);
    }

    double grad_norm_squared(View grads, size_t n) override {
        refuse_while_capturing("grad_norm_squared");
        OpScope s(this, "grad_norm_squared");
        return cuda::grad_norm_squared(ctx_, grads, n);
    }
    void grad_sumsq(const GradSumSq& a) override {
        OpScope s(this, "grad_sumsq");
        cuda::grad_sumsq(ctx_, a);
    }
    void adamw_update(const AdamW& a) override {
        OpScope s(this, "adamw_update");
        cuda::adamw_update(ctx_, a);
    }
    void muon_update(const Muon& a) override {
        OpScope s(this, "muon_update");
        cuda::muon_update(ctx_, a);
    }
    void copy(View dst, View src, size_t n) override {
        OpScope s(this, "copy");
        cuda::convert(ctx_, dst, src, n);
    }

    const KernelChoices& kernels() const override { return ctx_.kernels; }
    // Whoever enqueues on the stream (NCCL) sees every gradient enqueued so far.
    void* native_stream() override {
        cuda::matmul_side_join(ctx_);
        return ctx_.stream;
    }

    bool begin_capture(std::string* why) override {
        auto no = [&](const std::string& w) {
            if (why) *why = w;
            return false;
        };
        if (capturing_) return no("a recording is already in progress");
        if (profiling_) return no("profiling records events around every op, which a graph would freeze");
        cuda::matmul_side_join(ctx_);  // a recording cannot wait for work enqueued before it
        const cudaError_t e = cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeThreadLocal);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return no(std::string("cudaStreamBeginCapture: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
        }
        capturing_ = true;
        return true;
    }
    bool end_capture(std::string* why) override {
        if (!capturing_) {
            if (why) *why = "no recording in progress";
            return false;
        }
        capturing_ = false;
        // The side stream joins the main one inside the recording: a capture
        // ends only with every forked stream joined.
        cuda::matmul_side_join(ctx_, true);
        cudaGraph_t graph = nullptr;
        cudaError_t e = cudaStreamEndCapture(ctx_.stream, &graph);
        std::string failed;
        if (e != cudaSuccess) {
            failed = std::string("cudaStreamEndCapture: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
        } else {
            if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
            graph_exec_ = nullptr;
            e = cudaGraphInstantiate(&graph_exec_, graph, 0);
            if (e != cudaSuccess) {
                graph_exec_ = nullptr;
                failed = std::string("cudaGraphInstantiate: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
            }
        }
        if (graph) cudaGraphDestroy(graph);
        if (!failed.empty()) {
            cudaGetLastError();
            if (why) *why = failed;
            return false;
        }
        return true;
    }
    void abort_capture() override {
        if (!capturing_) return;
        capturing_ = false;
        cuda::matmul_side_join(ctx_, true);
        cudaGraph_t graph = nullptr;
        cudaStreamEndCapture(ctx_.stream, &graph);  // ends capture mode; the (invalid) graph is dropped
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
    }
    void replay() override {
        refuse_while_capturing("replay");
        if (!graph_exec_) run_failed("backend cuda: replay without a recorded step");
        GPT_CUDA_CHECK(cudaGraphLaunch(graph_exec_, ctx_.stream));
    }

    // Turning profiling on starts new totals; turning it off keeps them for op_times().
    void set_profiling(bool on) override {
        if (on && !profiling_) {
            fold();
            totals_.clear();
        }
        profiling_ = on;
    }

    std::vector<OpTime> op_times() override {
        fold();
        std::vector<OpTime> out;
        for (const auto& [op, t] : totals_) out.push_back({op, t.first, t.second});
        std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
        return out;
    }

private:
    void refuse_while_capturing(const char* call) const {
        if (capturing_)
            run_failed(std::string("backend cuda: ") + call + " waits for the device and cannot be part of a recorded step (CUDA graph)");
    }

    // First makes the main stream wait for weight gradients pending on the
    // side stream (kernels.matmul.dw_stream), unless join is false (only
    // matmul_backward, whose own products check for races). Then records a
    // start event, and on destruction a stop event, when profiling is on;
    // does nothing more otherwise. Profiled, an op also joins before its stop
    // event, so that its time includes its side work (the side then overlaps
    // only within an op). When the op throws, the pair is dropped (the stop
    // event is never recorded).
    class OpScope {
    public:
        OpScope(CudaBackend* be, const char* op, bool join = true) {
            if (join) cuda::matmul_side_join(be->ctx_);
            if (!be->profiling_) return;
            be_ = be;
            op_ = op;
            exceptions_ = std::uncaught_exceptions();
            start_ = be->take_event();
            GPT_CUDA_CHECK(cudaEventRecord(start_, be->ctx_.stream));
        }
        ~OpScope() noexcept(false) {
            if (!be_) return;
            if (std::uncaught_exceptions() > exceptions_) {
                be_->free_events_.push_back(start_);
                return;
            }
            cuda::matmul_side_join(be_->ctx_);
            cudaEvent_t stop = be_->take_event();
            GPT_CUDA_CHECK(cudaEventRecord(stop, be_->ctx_.stream));
            be_->pending_.push_back({op_, start_, stop});
            if (be_->pending_.size() >= kMaxPending) be_->fold();
        }
        OpScope(const OpScope&) = delete;
        OpScope& operator=(const OpScope&) = delete;

    private:
        CudaBackend* be_ = nullptr;
        const char* op_ = nullptr;
        cudaEvent_t start_ = nullptr;
        int exceptions_ = 0;
    };

    struct Pending {
        const char* op;
        cudaEvent_t start, stop;
    };
    // Bounds the events in flight; folding waits for the stream, which only
    // happens while profiling.
    static constexpr size_t kMaxPending = 16384;

    cudaEvent_t take_event() {
        if (!free_events_.empty()) {
            cudaEvent_t e = free_events_.back();
            free_events_.pop_back();
            return e;
        }
        cudaEvent_t e = nullptr;
        GPT_CUDA_CHECK(cudaEventCreate(&e));
        all_events_.push_back(e);
        return e;
    }

    // Waits for the recorded events and adds their times to totals_.
    void fold() {
        GPT_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
        for (const Pending& p : pending_) {
            float ms = 0;
            GPT_CUDA_CHECK(cudaEventElapsedTime(&ms, p.start, p.stop));
            auto& t = totals_[p.op];
            t.first += 1;
            t.second += ms;
            free_events_.push_back(p.start);
            free_events_.push_back(p.stop);
        }
        pending_.clear();
    }

    // Frees everything; errors are ignored (this is the destructor's work).
    void release() {
        cudaSetDevice(ctx_.device);
        abort_capture();
        cuda::matmul_side_join(ctx_, true);
        if (ctx_.stream) cudaStreamSynchronize(ctx_.stream);
        if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
        graph_exec_ = nullptr;
        try {
            cuda::matmul_release(ctx_);
            cuda::muon_release(ctx_);
            cuda::attention_cudnn_release(ctx_);
        } catch (...) {
        }
        for (cudaEvent_t e : all_events_) cudaEventDestroy(e);
        for (int s = 0; s < cuda::Context::kSlots; s++)
            if (ctx_.scratch_ptr[s]) cudaFree(ctx_.scratch_ptr[s]);
        if (ctx_.lt_workspace) cudaFree(ctx_.lt_workspace);
        if (ctx_.cudnn) cudnnDestroy(ctx_.cudnn);
        if (ctx_.lt) cublasLtDestroy(ctx_.lt);
        if (ctx_.stream) cudaStreamDestroy(ctx_.stream);
        cudaGetLastError();
    }

    cuda::Context ctx_;
    bool fused_layernorm_ = true;
    bool profiling_ = false;
    bool capturing_ = false;
    cudaGraphExec_t graph_exec_ = nullptr;  // the recorded step
    std::vector<Pending> pending_;
    std::vector<cudaEvent_t> free_events_, all_events_;
    std::map<std::string, std::pair<long, double>> totals_;  // op -> (calls, ms)
    std::unordered_map<void*, size_t> sizes_;                // alloc() sizes by pointer
    size_t allocated_ = 0, peak_ = 0;
};

// The device count and, when it is zero, why (the driver's own words).
int device_count(std::string* reason) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (reason) *reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
        return 0;
    }
    if (n == 0 && reason) *reason = "cudaGetDeviceCount found no device";
    return n;
}

}  // namespace

int cuda_device_count() {
    try {
        return device_count(nullptr);
    } catch (...) {
        return 0;
    }
}

std::string cuda_sticky_error() {
    if (cudaDeviceSynchronize() == cudaSuccess) return "";
    cudaGetLastError();  // a non-sticky error is cleared by this; a sticky one stays
    const cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) return "";
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts) {
    std::string reason;
    const int n = device_count(&reason);
    if (n == 0) bad_input("backend 'cuda': no CUDA device available (" + reason + ")");
    int device = std::max(opts.local_rank, 0) % n;
    if (opts.device >= 0) {
        if (opts.device >= n)
            bad_input("backend 'cuda': device " + std::to_string(opts.device) + " does not exist (" + std::to_string(n) +
                      (n == 1 ? " device" : " devices") + " found)");
        device = opts.device;
    }
    return std::make_unique<CudaBackend>(opts, device);
}

}  // namespace gpt
