// The CPU backend: host memory plus the templated ops of cpu_ops.h, for float
// ("cpu", the reference and the small-model trainer) or double ("cpu-f64",
// used by the finite-difference gradient checks). Also make_backend().
//
// Every op checks that the Views it is given have T's dtype: handing an f32
// buffer to the f64 backend is a programming error, reported as RunFailed
// naming the op and the argument.
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <string>
#include <utility>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"

// OpenBLAS's own thread-count setter. Weak, so that a build linked against a
// generic BLAS still links; then the call is skipped.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace gpt {

namespace {

constexpr size_t kAlign = 64;  // cache line; also enough for any SIMD load

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }

// MemAvailable from /proc/meminfo in bytes, 0 when unknown.
size_t available_memory() {
    std::ifstream f("/proc/meminfo");
    std::string key;
    size_t kb = 0;
    while (f >> key >> kb) {
        if (key == "MemAvailable:") return kb * 1024;
        f.ignore(256, '\n');
    }
    return 0;
}

template <class T>
class CpuBackend final : public Backend {
public:
    std::string name() const override { return dtype_of<T>() == DType::f32 ? "cpu" : "cpu-f64"; }
    std::string device_info() const override {
        const int n = omp_get_max_threads();
        return "CPU, " + std::to_string(n) + (n == 1 ? " thread, " : " threads, ") +
               (openblas_set_num_threads ? "OpenBLAS, " : "BLAS, ") + (dtype_of<T>() == DType::f32 ? "float32" : "float64");
    }
    DType param_dtype() const override { return dtype_of<T>(); }
    DType act_dtype() const override { return dtype_of<T>(); }
    DType stat_dtype() const override { return dtype_of<T>(); }

    void* alloc(size_t bytes, const char* what) override {
        // Linux overcommits: malloc of more than the machine has succeeds and the
        // process is killed later when the pages are touched. Compare with the
        // memory available now, so the user gets the sizes instead of a kill.
        const size_t avail = available_memory();
        void* p = nullptr;
        if (avail == 0 || bytes <= avail) {
            // aligned_alloc wants a size that is a multiple of the alignment (and > 0).
            const size_t rounded = bytes == 0 ? kAlign : (bytes + kAlign - 1) / kAlign * kAlign;
            p = std::aligned_alloc(kAlign, rounded);
        }
        if (!p)
            throw Error(ErrorKind::OutOfMemory, std::string("out of memory allocating ") + (what ? what : "buffer") + ": " +
                                                    std::to_string(bytes >> 20) + " MiB of host memory asked for, " +
                                                    (avail ? std::to_string(avail >> 20) + " MiB available" : "allocation failed") +
                                                    "; reduce the model (model.*) or the micro-batch (run.batch_size, run.seq_len)");
        return p;
    }
    void free(void* p) override { std::free(p); }
    void zero(void* p, size_t bytes) override {
        if (bytes) std::memset(p, 0, bytes);
    }
    void to_device(void* dst, const void* host_src, size_t bytes) override {
        if (bytes) std::memcpy(dst, host_src, bytes);
    }
    void to_host(void* host_dst, const void* src, size_t bytes) override {
        if (bytes) std::memcpy(host_dst, src, bytes);
    }
    void synchronize() override {}

    void encoder_forward(const EncoderFwd& a) override {
        check("encoder_forward", {{"out", a.out}, {"wte", a.wte}, {"wpe", a.wpe}});
        cpu::encoder_forward<T>(a);
    }
    void encoder_backward(const EncoderBwd& a) override {
        check("encoder_backward", {{"dwte", a.dwte}, {"dwpe", a.dwpe}, {"dout", a.dout}});
        cpu::encoder_backward<T>(a);
    }
    void layernorm_forward(const LayerNormFwd& a) override {
        check("layernorm_forward",
              {{"out", a.out}, {"mean", a.mean}, {"rstd", a.rstd}, {"inp", a.inp}, {"weight", a.weight}, {"bias", a.bias}});
        cpu::layernorm_forward<T>(a);
    }
    void layernorm_backward(const LayerNormBwd& a) override {
        check("layernorm_backward", {{"dinp", a.dinp}, {"dweight", a.dweight}, {"dbias", a.dbias}, {"dout", a.dout},
                                     {"inp", a.inp}, {"weight", a.weight}, {"mean", a.mean}, {"rstd", a.rstd}});
        cpu::layernorm_backward<T>(a);
    }
    void matmul_forward(const MatmulFwd& a) override {
        check("matmul_forward", {{"out", a.out}, {"inp", a.inp}, {"weight", a.weight}, {"bias", a.bias}});
        cpu::matmul_forward<T>(a);
    }
    void matmul_backward(const MatmulBwd& a) override {
        check("matmul_backward", {{"dinp", a.dinp}, {"dweight", a.dweight}, {"dbias", a.dbias}, {"dout", a.dout},
                                  {"inp", a.inp}, {"weight", a.weight}});
        cpu::matmul_backward<T>(a);
    }
    void attention_forward(const AttentionFwd& a) override {
        check("attention_forward", {{"out", a.out}, {"lse", a.lse}, {"qkv", a.qkv}});
        if (a.NH <= 0 || a.C % a.NH != 0)
            run_failed("attention_forward: C=" + std::to_string(a.C) + " is not a multiple of NH=" + std::to_string(a.NH));
        cpu::attention_forward<T>(a);
    }
    void attention_backward(const AttentionBwd& a) override {
        check("attention_backward", {{"dqkv", a.dqkv}, {"dout", a.dout}, {"qkv", a.qkv}, {"out", a.out}, {"lse", a.lse}});
        if (a.NH <= 0 || a.C % a.NH != 0)
            run_failed("attention_backward: C=" + std::to_string(a.C) + " is not a multiple of NH=" + std::to_string(a.NH));
        cpu::attention_backward<T>(a);
    }
    void attention_decode(const AttentionDecode& a) override {
        check("attention_decode", {{"out", a.out}, {"qkv", a.qkv}, {"kcache", a.kcache}, {"vcache", a.vcache}});
        if (a.NH <= 0 || a.C % a.NH != 0 || a.pos < 0 || a.pos >= a.maxT)
            run_failed("attention_decode: bad shape (C=" + std::to_string(a.C) + ", NH=" + std::to_string(a.NH) + ", pos=" +
                       std::to_string(a.pos) + ", maxT=" + std::to_string(a.maxT) + ")");
        cpu::attention_decode<T>(a);
    }
    void gelu_forward(const GeluFwd& a) override {
        check("gelu_forward", {{"out", a.out}, {"inp", a.inp}});
        cpu::gelu_forward<T>(a);
    }
    void gelu_backward(const GeluBwd& a) override {
        check("gelu_backward", {{"dinp", a.dinp}, {"inp", a.inp}, {"dout", a.dout}});
        cpu::gelu_backward<T>(a);
    }
    void residual_forward(const ResidualFwd& a) override {
        check("residual_forward", {{"out", a.out}, {"a", a.a}, {"b", a.b}});
        cpu::residual_forward<T>(a);
    }
    void classifier(const ClassifierFwdBwd& a) override {
        check("classifier", {{"logits", a.logits}, {"losses", a.losses}});
        cpu::classifier<T>(a);
    }

    double grad_norm_squared(View grads, size_t n) override {
        check("grad_norm_squared", {{"grads", grads}});
        return cpu::grad_norm_squared<T>(grads, n);
    }
    void adamw_update(const AdamW& a) override {
        check("adamw_update", {{"params", a.params}, {"grads", a.grads}, {"m", a.m}, {"v", a.v}});
        cpu::adamw_update<T>(a);
    }
    void copy(View dst, View src, size_t n) override {
        if (dst.dtype != src.dtype)
            run_failed(std::string("copy: dtype mismatch: dst is ") + dtype_name(dst.dtype) + ", src is " + dtype_name(src.dtype));
        if (n) std::memmove(dst.ptr, src.ptr, n * dtype_size(dst.dtype));
    }

private:
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

std::unique_ptr<Backend> make_backend(const std::string& name, int threads) {
    if (name == "cpu" || name == "auto") {
        // CUDA backend: plug in here. When the build has GPT_HAVE_CUDA and a
        // device is present, "auto" should return the CUDA backend instead;
        // "cuda" below should then construct it rather than throw.
        set_threads(threads);
        return std::make_unique<CpuBackend<float>>();
    }
    if (name == "cpu-f64") {
        set_threads(threads);
        return std::make_unique<CpuBackend<double>>();
    }
    if (name == "cuda") bad_input("backend 'cuda' is not available: this build has no CUDA backend yet; use run.backend=cpu or auto");
    bad_input("unknown backend '" + name + "': valid backends are auto, cpu, cpu-f64, cuda");
}

}  // namespace gpt
