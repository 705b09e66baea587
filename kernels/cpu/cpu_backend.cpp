// The CPU backend: host memory plus the templated ops of cpu_ops.h, for float
// ("cpu", the reference and the small-model trainer) or double ("cpu-f64",
// used by the finite-difference gradient checks). Also make_backend().
//
// Every op checks that the Views it is given have T's dtype: handing an f32
// buffer to the f64 backend is a programming error, reported as RunFailed
// naming the op and the argument.
//
// Step recording (Backend::begin_capture): while recording, every op and
// asynchronous copy is stored as a call with its arguments instead of being
// run, and replay() runs the stored calls in order. This gains nothing on the
// CPU; it exists so that the trainer's recorded step (run.cuda_graph) is
// exercised and checked against the unrecorded one without a GPU. Calls that
// would wait for a device throw while recording, as they do under CUDA.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/convert.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/omp_env.h"
#include "kernels/host_memory.h"

// OpenBLAS's own thread-count setter. Weak, so that a build linked against a
// generic BLAS still links; then the call is skipped.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace gpt {

namespace {

constexpr size_t kAlign = 64;  // cache line; also enough for any SIMD load

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }

// A stated peak for the CPU: cores x clock x FLOPs/cycle from the ISA (AVX-512 or
// AVX2 FMA, two FMA ports), in TFLOP/s, with a description of the estimate.
double cpu_peak_tflops(std::string* how) {
    // The cores this process computes on (OpenMP's threads), so that ranks
    // sharing one machine under gpt launch each state their part of it.
    int cores = omp_get_max_threads();
    double mhz = 0;
    bool avx512 = false, fma = false;
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        if (mhz == 0 && line.rfind("cpu MHz", 0) == 0) mhz = std::stod(line.substr(line.find(':') + 1));
        if (line.rfind("flags", 0) == 0) {
            avx512 = line.find(" avx512f") != std::string::npos;
            fma = line.find(" fma") != std::string::npos;
        }
    }
    if (mhz <= 0) mhz = 2500;
    // fp32 FLOPs per cycle per core: 2 FMA units x lanes x 2 (multiply + add).
    const int flops_cycle = avx512 ? 64 : fma ? 32 : 8;
    const double peak = cores * mhz * 1e6 * flops_cycle / 1e12;
    if (how) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "estimated CPU fp32 peak: %d cores x %.0f MHz x %d FLOP/cycle (%s)", cores, mhz, flops_cycle,
                      avx512 ? "AVX-512" : fma ? "AVX2+FMA" : "SSE");
        *how = buf;
    }
    return peak;
}

template <class T>
class CpuBackend final : public Backend {
public:
    explicit CpuBackend(KernelChoices kernels)
        : budget_(host_memory()),
          kernels_(std::move(kernels)),
          loops_(kernels_.variant("cpu_matmul") == "loops"),
          fused_ln_(kernels_.variant("layernorm") == "fused") {}

    std::string name() const override { return dtype_of<T>() == DType::f32 ? "cpu" : "cpu-f64"; }
    std::string device_info() const override {
        const int n = omp_get_max_threads();
        return "CPU, " + std::to_string(n) + (n == 1 ? " thread, " : " threads, ") +
               (openblas_set_num_threads ? "OpenBLAS, " : "BLAS, ") + (dtype_of<T>() == DType::f32 ? "float32" : "float64") + ", " +
               omp_wait_note();
    }
    DType param_dtype() const override { return dtype_of<T>(); }
    DType act_dtype() const override { return dtype_of<T>(); }
    DType stat_dtype() const override { return dtype_of<T>(); }

    void* alloc(size_t bytes, const char* what) override {
        // Linux overcommits: malloc of more than the machine (or the cgroup)
        // allows succeeds and the process is killed later, with no message,
        // when the pages are touched. So the buffers this backend holds plus
        // the new one are compared with what was available when it started
        // (MemAvailable and the cgroup limits, the tightest of them).
        void* p = nullptr;
        const bool fits = budget_.available == 0 || (bytes <= budget_.available && held_ <= budget_.available - bytes);
        if (fits) {
            // aligned_alloc wants a size that is a multiple of the alignment (and > 0).
            const size_t rounded = bytes == 0 ? kAlign : (bytes + kAlign - 1) / kAlign * kAlign;
            p = std::aligned_alloc(kAlign, rounded);
        }
        if (!p)
            throw Error(ErrorKind::OutOfMemory, std::string("out of memory allocating ") + (what ? what : "buffer") + ": " +
                                                    human_bytes(double(bytes)) + " of host memory asked for, " + human_bytes(double(held_)) +
                                                    " already held, " +
                                                    (budget_.available ? human_bytes(double(budget_.available)) + " available (" + budget_.limited_by + ")"
                                                                       : std::string("allocation failed")) +
                                                    "; reduce the model (model.*) or the micro-batch (run.batch_size, run.seq_len)");
        sizes_[p] = bytes;
        held_ += bytes;
        peak_ = std::max(peak_, held_);
        return p;
    }
    void free(void* p) override {
        if (auto it = sizes_.find(p); it != sizes_.end()) {
            held_ -= it->second;
            sizes_.erase(it);
        }
        std::free(p);
    }
    size_t allocated_bytes() const override { return held_; }
    size_t peak_allocated_bytes() const override { return peak_; }
    double peak_tflops(std::string* how) const override { return cpu_peak_tflops(how); }
    size_t cache_bytes() const override {
        // The last-level cache from sysfs (e.g. "32768K"), else 32 MiB.
        for (int index = 3; index >= 2; index--) {
            std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
            size_t kb = 0;
            char unit = 0;
            if (f >> kb >> unit) return unit == 'M' ? kb << 20 : kb << 10;
        }
        return size_t(32) << 20;
    }
    void zero(void* p, size_t bytes) override {
        if (bytes) run("zero", [=] { std::memset(p, 0, bytes); });
    }
    void to_device(void* dst, const void* host_src, size_t bytes) override {
        refuse_while_recording("to_device");
        if (bytes) std::memcpy(dst, host_src, bytes);
    }
    void to_host(void* host_dst, const void* src, size_t bytes) override {
        refuse_while_recording("to_host");
        if (bytes) std::memcpy(host_dst, src, bytes);
    }
    void synchronize() override { refuse_while_recording("synchronize"); }

    void* alloc_host(size_t bytes, const char* what) override { return alloc(bytes, what); }
    void free_host(void* p) override { free(p); }
    void to_device_async(void* dst, const void* host_src, size_t bytes) override {
        if (bytes) run("to_device_async", [=] { std::memcpy(dst, host_src, bytes); });
    }
    void to_host_async(void* host_dst, const void* src, size_t bytes) override {
        if (bytes) run("to_host_async", [=] { std::memcpy(host_dst, src, bytes); });
    }

    void encoder_forward(const EncoderFwd& a) override {
        check("encoder_forward", {{"out", a.out}, {"wte", a.wte}, {"wpe", a.wpe}});
        run("encoder_forward", [a] { cpu::encoder_forward<T>(a); });
    }
    void encoder_backward(const EncoderBwd& a) override {
        check("encoder_backward", {{"dwte", a.dwte}, {"dwpe", a.dwpe}, {"dout", a.dout}});
        run("encoder_backward", [a] { cpu::encoder_backward<T>(a); });
    }
    void layernorm_forward(const LayerNormFwd& a) override {
        check("layernorm_forward",
              {{"out", a.out}, {"mean", a.mean}, {"rstd", a.rstd}, {"inp", a.inp}, {"weight", a.weight}, {"bias", a.bias}});
        run("layernorm_forward", [a] { cpu::layernorm_forward<T>(a); });
    }
    void layernorm_backward(const LayerNormBwd& a) override {
        check("layernorm_backward", {{"dinp", a.dinp}, {"dweight", a.dweight}, {"dbias", a.dbias}, {"dout", a.dout},
                                     {"inp", a.inp}, {"weight", a.weight}, {"mean", a.mean}, {"rstd", a.rstd}, {"dres_bias", a.dres_bias}});
        run("layernorm_backward", [a] { cpu::layernorm_backward<T>(a); });
    }
    void residual_layernorm_forward(const ResidualLayerNormFwd& a) override {
        if (!fused_ln_) return Backend::residual_layernorm_forward(a);
        check("residual_layernorm_forward", {{"residual", a.residual}, {"out", a.out}, {"mean", a.mean}, {"rstd", a.rstd},
                                             {"a", a.a}, {"b", a.b}, {"weight", a.weight}, {"bias", a.bias}});
        run("residual_layernorm_forward", [a] { cpu::residual_layernorm_forward<T>(a); });
    }
    void matmul_forward(const MatmulFwd& a) override {
        check("matmul_forward", {{"out", a.out}, {"inp", a.inp}, {"weight", a.weight}, {"bias", a.bias}, {"pre_act", a.pre_act}});
        run("matmul_forward", [a, loops = loops_] { cpu::matmul_forward<T>(a, loops); });
    }
    void matmul_backward(const MatmulBwd& a) override {
        check("matmul_backward", {{"dinp", a.dinp}, {"dweight", a.dweight}, {"dbias", a.dbias}, {"dout", a.dout},
                                  {"inp", a.inp}, {"weight", a.weight}, {"dact_pre", a.dact_pre}, {"dact_dbias", a.dact_dbias}});
        run("matmul_backward", [a, loops = loops_] { cpu::matmul_backward<T>(a, loops); });
    }
    void attention_forward(const AttentionFwd& a) override {
        check("attention_forward", {{"out", a.out}, {"lse", a.lse}, {"qkv", a.qkv}});
        if (a.NH <= 0 || a.C % a.NH != 0)
            run_failed("attention_forward: C=" + std::to_string(a.C) + " is not a multiple of NH=" + std::to_string(a.NH));
        run("attention_forward", [a] { cpu::attention_forward<T>(a); });
    }
    void attention_backward(const AttentionBwd& a) override {
        check("attention_backward", {{"dqkv", a.dqkv}, {"dout", a.dout}, {"qkv", a.qkv}, {"out", a.out}, {"lse", a.lse}});
        if (a.NH <= 0 || a.C % a.NH != 0)
            run_failed("attention_backward: C=" + std::to_string(a.C) + " is not a multiple of NH=" + std::to_string(a.NH));
        run("attention_backward", [a] { cpu::attention_backward<T>(a); });
    }
    void attention_decode(const AttentionDecode& a) override {
        check("attention_decode", {{"out", a.out}, {"qkv", a.qkv}, {"kcache", a.kcache}, {"vcache", a.vcache}});
        if (a.NH <= 0 || a.C % a.NH != 0 || a.pos < 0 || a.pos >= a.maxT)
            run_failed("attention_decode: bad shape (C=" + std::to_string(a.C) + ", NH=" + std::to_string(a.NH) + ", pos=" +
                       std::to_string(a.pos) + ", maxT=" + std::to_string(a.maxT) + ")");
        run("attention_decode", [a] { cpu::attention_decode<T>(a); });
    }
    void rope(const Rope& a) override {
        check("rope", {{"qkv", a.qkv}});
        if (a.NH <= 0 || a.C % a.NH != 0 || (a.C / a.NH) % 2 != 0 || a.T <= 0)
            run_failed("rope: bad shape (C=" + std::to_string(a.C) + ", NH=" + std::to_string(a.NH) + ", T=" + std::to_string(a.T) +
                       "): the head size must be even");
        run("rope", [a] { cpu::rope<T>(a); });
    }
    void qknorm_forward(const QKNormFwd& a) override {
        check("qknorm_forward", {{"qkv", a.qkv}, {"rstd", a.rstd}});
        run("qknorm_forward", [a] { cpu::qknorm_forward<T>(a); });
    }
    void qknorm_backward(const QKNormBwd& a) override {
        check("qknorm_backward", {{"dqkv", a.dqkv}, {"qkv", a.qkv}, {"rstd", a.rstd}});
        run("qknorm_backward", [a] { cpu::qknorm_backward<T>(a); });
    }
    void gelu_forward(const GeluFwd& a) override {
        check("gelu_forward", {{"out", a.out}, {"inp", a.inp}});
        run("gelu_forward", [a] { cpu::gelu_forward<T>(a); });
    }
    void gelu_backward(const GeluBwd& a) override {
        check("gelu_backward", {{"dinp", a.dinp}, {"inp", a.inp}, {"dout", a.dout}});
        run("gelu_backward", [a] { cpu::gelu_backward<T>(a); });
    }
    void residual_forward(const ResidualFwd& a) override {
        check("residual_forward", {{"out", a.out}, {"a", a.a}, {"b", a.b}});
        run("residual_forward", [a] { cpu::residual_forward<T>(a); });
    }
    void classifier(const ClassifierFwdBwd& a) override {
        check("classifier", {{"logits", a.logits}, {"losses", a.losses}});
        run("classifier", [a] { cpu::classifier<T>(a); });
    }

    void sum_into(const SumInto& a) override {
        expect_f64("sum_into", "dst", a.dst);
        if (a.src.dtype != DType::f32 && a.src.dtype != DType::f64)
            run_failed(std::string("backend ") + name() + ": sum_into: src must be f32 or f64, got " + dtype_name(a.src.dtype));
        run("sum_into", [a] { cpu::sum_into(a); });
    }

    void accumulate(const Accumulate& a) override {
        check("accumulate", {{"dst", a.dst}, {"src", a.src}});
        run("accumulate", [a] {
            T* d = a.dst.as<T>();
            const T* s = a.src.as<T>();
            for (size_t i = 0; i < a.n; i++) d[i] += s[i];
        });
    }

    double grad_norm_squared(View grads, size_t n) override {
        refuse_while_recording("grad_norm_squared");
        check("grad_norm_squared", {{"grads", grads}});
        return cpu::grad_norm_squared<T>(grads, n);
    }
    void grad_sumsq(const GradSumSq& a) override {
        check("grad_sumsq", {{"grads", a.grads}});
        expect_f64("grad_sumsq", "out", a.out);
        run("grad_sumsq", [a] { *a.out.as<double>() = cpu::grad_norm_squared<T>(a.grads, a.n); });
    }
    void adamw_update(const AdamW& a) override {
        check("adamw_update", {{"params", a.params}, {"grads", a.grads}, {"m", a.m}, {"v", a.v}});
        // Parameters are already T here: there is no lower-precision copy to keep a master for.
        if (a.master) run_failed(std::string("backend ") + name() + ": adamw_update: master weights are for bf16 parameters");
        if (a.hyper) expect_f64("adamw_update", "hyper", a.hyper);
        if (a.norm_sq) expect_f64("adamw_update", "norm_sq", a.norm_sq);
        if (a.guard) expect_f64("adamw_update", "guard", a.guard);
        // The ranges are the caller's host memory: copied, so a recorded
        // update does not depend on the caller keeping them.
        auto ranges = std::make_shared<std::vector<ParamRange>>(a.ranges, a.ranges + a.n_ranges);
        run("adamw_update", [a, ranges] {
            AdamW b = a;
            b.ranges = ranges->data();
            cpu::adamw_update<T>(b);
        });
    }
    void muon_update(const Muon& a) override {
        // Muon's lr and step are host values: a recorded step would replay them stale.
        refuse_while_recording("muon_update");
        Timed t(this, "muon_update");
        check("muon_update", {{"params", a.params}, {"grads", a.grads}, {"momentum", a.momentum}});
        if (a.master) run_failed(std::string("backend ") + name() + ": muon_update: master weights are for bf16 parameters");
        cpu::muon_update<T>(a);
    }
    void copy(View dst, View src, size_t n) override {
        if (dst.dtype != src.dtype && (dst.dtype == DType::bf16 || src.dtype == DType::bf16))
            run_failed(std::string("copy: the CPU backend does not convert ") + dtype_name(src.dtype) + " to " + dtype_name(dst.dtype));
        run("copy", [=] {
            if (dst.dtype == src.dtype) {
                if (n) std::memmove(dst.ptr, src.ptr, n * dtype_size(dst.dtype));
                return;
            }
            std::vector<double> tmp(n);
            to_double(src.ptr, src.dtype, tmp.data(), n);
            from_double(tmp.data(), dst.ptr, dst.dtype, n);
        });
    }

    bool begin_capture(std::string* why) override {
        if (recording_) {
            if (why) *why = "a recording is already in progress";
            return false;
        }
        recording_ = true;
        pending_.clear();
        return true;
    }
    bool end_capture(std::string* why) override {
        if (!recording_) {
            if (why) *why = "no recording in progress";
            return false;
        }
        recording_ = false;
        recorded_ = std::move(pending_);
        pending_.clear();
        return true;
    }
    void abort_capture() override {
        recording_ = false;
        pending_.clear();
    }
    void replay() override {
        refuse_while_recording("replay");
        if (recorded_.empty()) run_failed("backend " + name() + ": replay without a recorded step");
        for (const auto& call : recorded_) {
            Timed t(this, call.op);
            call.fn();
        }
    }
    const KernelChoices& kernels() const override { return kernels_; }

    void set_profiling(bool on) override {
        profiling_ = on;
        times_.clear();
    }
    std::vector<OpTime> op_times() override {
        std::vector<OpTime> out;
        for (const auto& [op, t] : times_) out.push_back({op, t.first, t.second});
        std::sort(out.begin(), out.end(), [](const OpTime& x, const OpTime& y) { return x.ms > y.ms; });
        return out;
    }

private:
    struct Call {
        const char* op;
        std::function<void()> fn;
    };

    // Runs an op now (timed when profiling), or stores it while recording.
    template <class F>
    void run(const char* op, F&& fn) {
        if (recording_) {
            pending_.push_back({op, std::function<void()>(std::forward<F>(fn))});
            return;
        }
        Timed t(this, op);
        fn();
    }

    void refuse_while_recording(const char* call) const {
        if (recording_)
            run_failed(std::string("backend ") + name() + ": " + call + " waits for the device and cannot be part of a recorded step");
    }

    void expect_f64(const char* op, const char* arg, View v) const {
        if (!v || v.dtype != DType::f64)
            run_failed(std::string("backend ") + name() + ": " + op + ": " + arg + " must be one f64 element");
    }

    // Adds the wall time of its scope to the op's total while profiling.
    struct Timed {
        CpuBackend* be;
        const char* op;
        std::chrono::steady_clock::time_point t0;
        Timed(CpuBackend* b, const char* name) : be(b), op(name) {
            if (be->profiling_) t0 = std::chrono::steady_clock::now();
        }
        ~Timed() {
            if (!be->profiling_) return;
            auto& [calls, ms] = be->times_[op];
            calls++;
            ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        }
    };

    HostMemory budget_;  // at construction, before any buffer of this backend
    KernelChoices kernels_;
    bool loops_, fused_ln_;
    std::map<void*, size_t> sizes_;  // live allocations
    size_t held_ = 0, peak_ = 0;
    bool profiling_ = false;
    std::map<std::string, std::pair<long, double>> times_;  // op -> (calls, ms)
    bool recording_ = false;
    std::vector<Call> pending_, recorded_;  // the recording in progress; the last one completed

    // Every non-null View must hold T; null Views are optional arguments.
    static void check(const char* op, std::initializer_list<std::pair<const char*, View>> views) {
        for (const auto& [arg, v] : views)
            if (v && v.dtype != dtype_of<T>())
                run_failed(std::string("backend ") + (dtype_of<T>() == DType::f32 ? "cpu" : "cpu-f64") + ": " + op + ": argument '" +
                           arg + "' has dtype " + dtype_name(v.dtype) + ", expected " + dtype_name(dtype_of<T>()));
    }
};

// OpenMP owns all the parallelism (threads <= 0: all cores); BLAS runs one
// thread per call inside OpenMP's blocks (see kernels/cpu/matmul.cpp).
void set_threads(int threads) {
    if (openblas_set_num_threads) openblas_set_num_threads(1);
    if (threads > 0) omp_set_num_threads(threads);
}

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& opts) {
#if GPT_HAVE_CUDA
    if (name == "cuda" || name == "auto") {
        const int devices = cuda_device_count();
        if (devices > 0) return make_cuda_backend(opts);
        if (name == "cuda")
            bad_input("backend 'cuda' is not available: no CUDA device is visible to this process (no driver, no GPU, or "
                      "CUDA_VISIBLE_DEVICES hides them); use run.backend=cpu or auto");
    }
#else
    if (name == "cuda")
        bad_input("backend 'cuda' is not available: this binary was built without CUDA (no CUDA toolkit with cuBLASLt and cuDNN "
                  "at configure time); use run.backend=cpu or auto");
#endif
    if (name == "cpu" || name == "auto") {
        set_threads(opts.threads);
        return std::make_unique<CpuBackend<float>>(opts.kernels);
    }
    if (name == "cpu-f64") {
        set_threads(opts.threads);
        return std::make_unique<CpuBackend<double>>(opts.kernels);
    }
    bad_input("unknown backend '" + name + "': valid backends are auto, cpu, cpu-f64, cuda");
}

std::unique_ptr<Backend> make_backend(const std::string& name, int threads) {
    BackendOptions opts;
    opts.threads = threads;
    return make_backend(name, opts);
}

}  // namespace gpt
