// The CUDA backend against the CPU reference, through the Backend interface.
//
// Every op runs on both backends with the same inputs: random values (never
// zeros) rounded to bf16 first, so the f32 CPU backend and the bf16 CUDA
// backend start from identical numbers and the difference measures only the
// CUDA side's rounding. Outputs the op must write are poisoned (all bytes
// 0xFF, a NaN in bf16 and f32) before each CUDA run, so an element the kernel
// forgets shows up as NaN; accumulated outputs (parameter gradients,
// layernorm's dinp) start from the same random values on both sides.
//
// Error measure: relative L2, ||got - ref|| / ||ref||, NaN anywhere = +inf.
// Bounds (stated per comparison):
//   kBf16Tol  1e-2  a bf16 result of an f32 computation: one rounding is at
//                   most 2^-9 = 0.2% relative; accumulation order and a
//                   second rounding (accumulated gradients) stay well under 1%.
//   kAttnBwdTol 2e-2  attention backward: the kernels round P and dS to bf16
//                   before the tensor-core products, a chain of 3 roundings.
//   kF32Tol   1e-5  f32 results from identical inputs (statistics, AdamW
//                   master weights and moments): only the order of f32 operations differs.
// Without a CUDA device (or without the CUDA build) every test is skipped with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/convert.h"
#include "kernels/error.h"
#include "kernels/lab.h"
#include "model/gpt2.h"
#include "tests/test_util.h"
#include "train/config.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace gpt {
namespace {

#if !GPT_HAVE_CUDA

TEST(CudaBackend, NotBuilt) { GTEST_SKIP() << "no CUDA device: this build has no CUDA backend (GPT_HAVE_CUDA is not defined)"; }

#else

// A kernel that traps or faults loses this process's CUDA context, and every
// later test would fail on it. After each test that left the context lost,
// this names the test and the error and exits (code 3), so the runner
// (tools/cuda-tests.sh) starts a fresh process for the tests not yet run.
class StickyErrorExit : public ::testing::EmptyTestEventListener {
    void OnTestEnd(const ::testing::TestInfo& t) override {
        if (cuda_device_count() == 0) return;
        const std::string e = cuda_sticky_error();
        if (e.empty()) return;
        std::printf("[ CONTEXT  ] %s.%s lost the CUDA context (%s): exiting so that a fresh process runs the rest\n",
                    t.test_suite_name(), t.name(), e.c_str());
        std::fflush(stdout);
        std::_Exit(3);
    }
};
const bool sticky_listener = [] {
    ::testing::UnitTest::GetInstance()->listeners().Append(new StickyErrorExit);
    return true;
}();

using Vec = std::vector<double>;

constexpr double kBf16Tol = 1e-2;
constexpr double kAttnBwdTol = 2e-2;
constexpr double kF32Tol = 1e-5;

// Why there is no device, in the driver's words (make_cuda_backend's message).
std::string no_device_reason() {
    try {
        make_cuda_backend(BackendOptions{});
    } catch (const std::exception& e) {
        return e.what();
    }
    return "cuda_device_count() is 0";
}

#define SKIP_WITHOUT_CUDA()                                                             \
    do {                                                                                \
        if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << no_device_reason(); \
    } while (0)

double round_bf16(double x) { return bf16_to_double(double_to_bf16(x)); }

// n values uniform in [lo, hi], away from zero (at least 1e-3 of the range's
// magnitude, so a range like [1e-5, 1e-4] terminates), rounded to bf16.
Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> d(lo, hi);
    const double floor = 1e-3 * std::max(std::fabs(lo), std::fabs(hi));
    Vec v(n);
    for (auto& x : v) {
        do x = round_bf16(d(rng)); while (std::fabs(x) < floor);
    }
    return v;
}

std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = int32_t(rng() % uint64_t(vocab));
    return t;
}

double rel_l2(const Vec& got, const Vec& ref) {
    if (got.size() != ref.size()) return INFINITY;
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (std::isnan(got[i]) || std::isnan(ref[i])) return INFINITY;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

#define EXPECT_CLOSE(what, got, ref, bound)                                                                        \
    do {                                                                                                           \
        const double e_ = rel_l2(got, ref);                                                                        \
        std::printf("  %-44s rel L2 %.3e (bound %.0e, %5.1f%% used)\n", std::string(what).c_str(), e_, double(bound), \
                    100.0 * e_ / double(bound));                                                                   \
        EXPECT_LE(e_, bound) << (what) << ": relative L2 error " << e_ << " exceeds " << (bound);                 \
    } while (0)

// a and b equal bit for bit (NaN never equal), and neither holds a NaN.
#define EXPECT_BIT_IDENTICAL(what, a, b)                                                              \
    do {                                                                                              \
        const Vec a_ = (a), b_ = (b);                                                                 \
        size_t nan_ = 0, differ_ = 0;                                                                 \
        for (size_t i_ = 0; i_ < a_.size(); i_++) {                                                   \
            nan_ += std::isnan(a_[i_]) || std::isnan(b_[i_]);                                         \
            differ_ += !(a_[i_] == b_[i_]);                                                           \
        }                                                                                             \
        EXPECT_EQ(a_.size(), b_.size()) << (what);                                                    \
        EXPECT_EQ(nan_, 0u) << (what);                                                                \
        EXPECT_EQ(differ_, 0u) << (what) << ": " << differ_ << " of " << a_.size() << " values differ"; \
    } while (0)

// One buffer in one backend's memory, n elements of dtype dt.
class Buf {
public:
    Buf(Backend& be, size_t n, DType dt) : be_(&be), n_(n), dt_(dt) { p_ = be.alloc(std::max<size_t>(1, n * dtype_size(dt)), "test buffer"); }
    ~Buf() { be_->free(p_); }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;

    View v() const { return View{p_, dt_}; }
    void* ptr() const { return p_; }
    size_t size() const { return n_; }

    void write(const Vec& x) {
        std::vector<char> raw(n_ * dtype_size(dt_));
        from_double(x.data(), raw.data(), dt_, n_);
        be_->to_device(p_, raw.data(), raw.size());
    }
    Vec read() const {
        std::vector<char> raw(n_ * dtype_size(dt_));
        be_->to_host(raw.data(), p_, raw.size());
        Vec out(n_);
        to_double(raw.data(), dt_, out.data(), n_);
        return out;
    }
    // All bytes 0xFF: NaN in bf16 and f32.
    void poison() {
        std::vector<unsigned char> raw(n_ * dtype_size(dt_), 0xFF);
        be_->to_device(p_, raw.data(), raw.size());
    }

private:
    Backend* be_;
    void* p_ = nullptr;
    size_t n_;
    DType dt_;
};

// Device (or host, for the CPU backend) copy of int32 tokens.
class Tokens {
public:
    Tokens(Backend& be, const std::vector<int32_t>& t) : be_(&be) {
        p_ = static_cast<int32_t*>(be.alloc(std::max<size_t>(4, t.size() * 4), "test tokens"));
        be.to_device(p_, t.data(), t.size() * 4);
    }
    ~Tokens() { be_->free(p_); }
    Tokens(const Tokens&) = delete;
    Tokens& operator=(const Tokens&) = delete;
    const int32_t* get() const { return p_; }

private:
    Backend* be_;
    int32_t* p_ = nullptr;
};

// One logical tensor on both backends: f32 on the CPU, bf16 (or f32 for
// statistics) on the GPU.
struct Twin {
    Buf c, g;
    Twin(Backend& cpu, Backend& gpu, size_t n, DType gpu_dt = DType::bf16) : c(cpu, n, DType::f32), g(gpu, n, gpu_dt) {}
    void set(const Vec& x) {
        c.write(x);
        g.write(x);
    }
    // Same random values on both; the CUDA side gets them already representable.
    void fill(uint64_t seed, double lo = -1.0, double hi = 1.0) { set(random_vec(c.size(), seed, lo, hi)); }
    // For outputs: the CPU side gets zeros (it is the reference), the GPU side NaN.
    void poison() {
        c.write(Vec(c.size(), 0.0));
        g.poison();
    }
};

std::unique_ptr<Backend> make_gpu(const std::map<std::string, std::string>& kernels = {}) {
    BackendOptions o;
    o.kernels = KernelChoices(kernels);
    return make_backend("cuda", o);
}

class CudaKernels : public ::testing::Test {
protected:
    void SetUp() override {
        SKIP_WITHOUT_CUDA();
        cpu = make_backend("cpu");
        gpu = make_gpu();
    }
    std::unique_ptr<Backend> cpu, gpu;
};

// ---------------------------------------------------------------------------

TEST_F(CudaKernels, BackendBasics) {
    EXPECT_EQ(gpu->name(), "cuda");
    EXPECT_EQ(gpu->param_dtype(), DType::bf16);
    EXPECT_EQ(gpu->act_dtype(), DType::bf16);
    EXPECT_EQ(gpu->stat_dtype(), DType::f32);
    const std::string info = gpu->device_info();
    std::printf("  device: %s\n", info.c_str());
    EXPECT_NE(info.find("cuDNN"), std::string::npos) << info;
    EXPECT_EQ(gpu->kernels().variant("attention"), "flash");
    EXPECT_EQ(make_gpu({{"attention", "cudnn"}})->kernels().variant("attention"), "cudnn");
    std::string how;
    std::printf("  stated peak: %.1f TFLOP/s (%s)\n", gpu->peak_tflops(&how), how.c_str());
    // Round trip and zero; the allocation is counted while held.
    const size_t held = gpu->allocated_bytes();
    auto b_ptr = std::make_unique<Buf>(*gpu, 1000, DType::f32);
    Buf& b = *b_ptr;
    EXPECT_EQ(gpu->allocated_bytes(), held + 4000);
    EXPECT_GE(gpu->peak_allocated_bytes(), held + 4000);
    Vec x = random_vec(1000, 1);
    b.write(x);
    EXPECT_EQ(b.read(), x);
    gpu->zero(b.ptr(), 1000 * 4);
    EXPECT_EQ(b.read(), Vec(1000, 0.0));
    b_ptr.reset();
    EXPECT_EQ(gpu->allocated_bytes(), held);
}

TEST_F(CudaKernels, AllocFailureIsOutOfMemory) {
    const size_t pib = size_t(1) << 50;
    try {
        void* p = gpu->alloc(pib, "petabyte test buffer");
        gpu->free(p);
        ADD_FAILURE() << "allocating 1 PiB succeeded";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::OutOfMemory);
        const std::string msg = e.what();
        EXPECT_NE(msg.find("petabyte test buffer"), std::string::npos) << msg;
        EXPECT_NE(msg.find(std::to_string(pib >> 20) + " MiB"), std::string::npos) << msg;
    }
    // The backend is still usable afterwards.
    Buf b(*gpu, 16, DType::f32);
    b.write(Vec(16, 2.0));
    EXPECT_EQ(b.read(), Vec(16, 2.0));
}

TEST_F(CudaKernels, CopyConverts) {
    const size_t n = 100003;
    Vec x = random_vec(n, 2, -100, 100);  // bf16-representable
    Vec xf(n);                            // f32 values that are not bf16-representable
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> d(-3, 3);
    for (auto& v : xf) v = double(float(d(rng)));
    Buf b16(*gpu, n, DType::bf16), f32(*gpu, n, DType::f32), b16b(*gpu, n, DType::bf16), f32b(*gpu, n, DType::f32);
    b16.write(x);
    f32.poison();
    gpu->copy(f32.v(), b16.v(), n);  // bf16 -> f32 is exact
    EXPECT_EQ(f32.read(), x);
    f32.write(xf);
    b16b.poison();
    gpu->copy(b16b.v(), f32.v(), n);  // f32 -> bf16 rounds to nearest even
    Vec want(n);
    for (size_t i = 0; i < n; i++) want[i] = round_bf16(xf[i]);
    EXPECT_EQ(b16b.read(), want);
    f32b.poison();
    gpu->copy(f32b.v(), f32.v(), n);
    EXPECT_EQ(f32b.read(), xf);
    b16b.poison();
    gpu->copy(b16b.v(), b16.v(), n);
    EXPECT_EQ(b16b.read(), x);
}

TEST_F(CudaKernels, Encoder) {
    for (int C : {72, 768}) {
        const int B = 3, T = 77, Vp = 128, maxT = 80;
        SCOPED_TRACE("C=" + std::to_string(C));
        // Few distinct tokens: many positions scatter into the same wte row.
        auto tok = random_tokens(size_t(B) * T, 20, 4);
        Tokens tc(*cpu, tok), tg(*gpu, tok);
        Twin wte(*cpu, *gpu, size_t(Vp) * C), wpe(*cpu, *gpu, size_t(maxT) * C), out(*cpu, *gpu, size_t(B) * T * C);
        wte.fill(5);
        wpe.fill(6);
        out.poison();
        cpu->encoder_forward({out.c.v(), tc.get(), wte.c.v(), wpe.c.v(), B, T, C});
        gpu->encoder_forward({out.g.v(), tg.get(), wte.g.v(), wpe.g.v(), B, T, C});
        EXPECT_CLOSE("encoder out", out.g.read(), out.c.read(), kBf16Tol);

        Twin dout(*cpu, *gpu, size_t(B) * T * C), dwte(*cpu, *gpu, size_t(Vp) * C), dwpe(*cpu, *gpu, size_t(maxT) * C);
        dout.fill(7);
        dwte.fill(8);  // accumulated into
        dwpe.fill(9);
        cpu->encoder_backward({dwte.c.v(), dwpe.c.v(), dout.c.v(), tc.get(), B, T, C});
        gpu->encoder_backward({dwte.g.v(), dwpe.g.v(), dout.g.v(), tg.get(), B, T, C});
        EXPECT_CLOSE("encoder dwte (+=)", dwte.g.read(), dwte.c.read(), kBf16Tol);
        EXPECT_CLOSE("encoder dwpe (+=)", dwpe.g.read(), dwpe.c.read(), kBf16Tol);
    }
}

TEST_F(CudaKernels, LayerNorm) {
    for (int C : {72, 768, 1600}) {
        const int N = 3 * 77;
        SCOPED_TRACE("C=" + std::to_string(C));
        Twin inp(*cpu, *gpu, size_t(N) * C), w(*cpu, *gpu, C), b(*cpu, *gpu, C), out(*cpu, *gpu, size_t(N) * C);
        Twin mean(*cpu, *gpu, N, DType::f32), rstd(*cpu, *gpu, N, DType::f32);
        inp.fill(10, -2, 3);
        w.fill(11, 0.5, 1.5);
        b.fill(12);
        out.poison();
        mean.poison();
        rstd.poison();
        cpu->layernorm_forward({out.c.v(), mean.c.v(), rstd.c.v(), inp.c.v(), w.c.v(), b.c.v(), N, C});
        gpu->layernorm_forward({out.g.v(), mean.g.v(), rstd.g.v(), inp.g.v(), w.g.v(), b.g.v(), N, C});
        EXPECT_CLOSE("layernorm out", out.g.read(), out.c.read(), kBf16Tol);
        EXPECT_CLOSE("layernorm mean (f32)", mean.g.read(), mean.c.read(), kF32Tol);
        EXPECT_CLOSE("layernorm rstd (f32)", rstd.g.read(), rstd.c.read(), kF32Tol);

        Twin dout(*cpu, *gpu, size_t(N) * C), dinp(*cpu, *gpu, size_t(N) * C), dw(*cpu, *gpu, C), db(*cpu, *gpu, C);
        dout.fill(13);
        dinp.fill(14);  // layernorm_backward ADDS into dinp
        dw.fill(15);
        db.fill(16);
        cpu->layernorm_backward({dinp.c.v(), dw.c.v(), db.c.v(), dout.c.v(), inp.c.v(), w.c.v(), mean.c.v(), rstd.c.v(), N, C});
        gpu->layernorm_backward({dinp.g.v(), dw.g.v(), db.g.v(), dout.g.v(), inp.g.v(), w.g.v(), mean.g.v(), rstd.g.v(), N, C});
        EXPECT_CLOSE("layernorm dinp (+=)", dinp.g.read(), dinp.c.read(), kBf16Tol);
        EXPECT_CLOSE("layernorm dweight (+=)", dw.g.read(), dw.c.read(), kBf16Tol);
        EXPECT_CLOSE("layernorm dbias (+=)", db.g.read(), db.c.read(), kBf16Tol);
    }
}

TEST_F(CudaKernels, ResidualLayerNormFusedAndSeparate) {
    for (const char* variant : {"fused", "separate"}) {
        auto g = make_gpu({{"layernorm", variant}});
        for (int C : {72, 768}) {
            const int N = 3 * 77;
            SCOPED_TRACE(std::string(variant) + " C=" + std::to_string(C));
            Twin a(*cpu, *g, size_t(N) * C), b(*cpu, *g, size_t(N) * C), w(*cpu, *g, C), bias(*cpu, *g, C);
            Twin res(*cpu, *g, size_t(N) * C), out(*cpu, *g, size_t(N) * C);
            Twin mean(*cpu, *g, N, DType::f32), rstd(*cpu, *g, N, DType::f32);
            a.fill(20, -2, 2);
            b.fill(21);
            w.fill(22, 0.5, 1.5);
            bias.fill(23);
            res.poison();
            out.poison();
            mean.poison();
            rstd.poison();
            cpu->residual_layernorm_forward({res.c.v(), out.c.v(), mean.c.v(), rstd.c.v(), a.c.v(), b.c.v(), w.c.v(), bias.c.v(), N, C});
            g->residual_layernorm_forward({res.g.v(), out.g.v(), mean.g.v(), rstd.g.v(), a.g.v(), b.g.v(), w.g.v(), bias.g.v(), N, C});
            EXPECT_CLOSE(std::string(variant) + " residual", res.g.read(), res.c.read(), kBf16Tol);
            EXPECT_CLOSE(std::string(variant) + " layernorm out", out.g.read(), out.c.read(), kBf16Tol);
            // The statistics are of the bf16-rounded residual on the GPU: bf16 tolerance.
            EXPECT_CLOSE(std::string(variant) + " mean", mean.g.read(), mean.c.read(), kBf16Tol);
            EXPECT_CLOSE(std::string(variant) + " rstd", rstd.g.read(), rstd.c.read(), kBf16Tol);
        }
    }
}

// out (N,OC) = inp @ W^T + bias, optionally through the fused GELU; then the
// backward with accumulation, optionally with the fused dGELU. aux_offset
// shifts the GELU pre-activations (pre_gelu, dgelu_pre) by that many elements
// off their 256-byte-aligned allocation: 1 makes them misaligned for
// cuBLASLt's epilogues, so the fallback kernels must run.
void check_matmul(Backend& cpu, Backend& gpu, int N, int C, int OC, bool bias, bool gelu, int aux_offset = 0) {
    SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " OC=" + std::to_string(OC) + (bias ? " bias" : "") +
                 (gelu ? " gelu" : "") + " aux_offset=" + std::to_string(aux_offset));
    const std::string tag = "matmul " + std::to_string(N) + "x" + std::to_string(C) + "x" + std::to_string(OC) + (bias ? "+b" : "") +
                            (gelu ? "+gelu" : "") + " ";
    Twin inp(cpu, gpu, size_t(N) * C), w(cpu, gpu, size_t(OC) * C), b(cpu, gpu, OC), out(cpu, gpu, size_t(N) * OC),
        pre(cpu, gpu, size_t(N) * OC + aux_offset);
    inp.fill(30);
    w.fill(31, -0.2, 0.2);
    b.fill(32);
    out.poison();
    pre.poison();
    const View bc = bias ? b.c.v() : View{}, bg = bias ? b.g.v() : View{};
    if (gelu) {
        // Reference: the plain product, then the standalone GELU.
        cpu.matmul_forward({pre.c.v().at(aux_offset), inp.c.v(), w.c.v(), bc, N, C, OC});
        cpu.gelu_forward({out.c.v(), pre.c.v().at(aux_offset), size_t(N) * OC});
        gpu.matmul_forward({out.g.v(), inp.g.v(), w.g.v(), bg, N, C, OC, pre.g.v().at(aux_offset)});
        Vec pg = pre.g.read(), pc = pre.c.read();
        pg.erase(pg.begin(), pg.begin() + aux_offset);  // the skipped elements stay poisoned
        pc.erase(pc.begin(), pc.begin() + aux_offset);
        EXPECT_CLOSE(tag + "pre_gelu", pg, pc, kBf16Tol);
    } else {
        cpu.matmul_forward({out.c.v(), inp.c.v(), w.c.v(), bc, N, C, OC});
        gpu.matmul_forward({out.g.v(), inp.g.v(), w.g.v(), bg, N, C, OC});
    }
    EXPECT_CLOSE(tag + "out", out.g.read(), out.c.read(), kBf16Tol);

    // Backward: dinp overwritten (poisoned), dweight and dbias accumulate.
    Twin dout(cpu, gpu, size_t(N) * OC), dinp(cpu, gpu, size_t(N) * C), dw(cpu, gpu, size_t(OC) * C), db(cpu, gpu, OC);
    Twin dpre(cpu, gpu, size_t(N) * C + aux_offset);  // the pre-activation whose GELU was inp (dgelu case)
    dout.fill(33);
    dw.fill(34, -0.5, 0.5);
    db.fill(35, -5, 5);
    dinp.poison();
    dpre.fill(36, -3, 3);
    const View dbc = bias ? db.c.v() : View{}, dbg = bias ? db.g.v() : View{};
    cpu.matmul_backward({dinp.c.v(), dw.c.v(), dbc, dout.c.v(), inp.c.v(), w.c.v(), N, C, OC});
    if (gelu) {
        cpu.gelu_backward({dinp.c.v(), dpre.c.v().at(aux_offset), dinp.c.v(), size_t(N) * C});
        gpu.matmul_backward({dinp.g.v(), dw.g.v(), dbg, dout.g.v(), inp.g.v(), w.g.v(), N, C, OC, dpre.g.v().at(aux_offset)});
    } else {
        gpu.matmul_backward({dinp.g.v(), dw.g.v(), dbg, dout.g.v(), inp.g.v(), w.g.v(), N, C, OC});
    }
    EXPECT_CLOSE(tag + (gelu ? "dinp (dgelu)" : "dinp"), dinp.g.read(), dinp.c.read(), kBf16Tol);
    EXPECT_CLOSE(tag + "dweight (+=)", dw.g.read(), dw.c.read(), kBf16Tol);
    if (bias) EXPECT_CLOSE(tag + "dbias (+=)", db.g.read(), db.c.read(), kBf16Tol);

    // Null outputs are skipped: dweight only, and dinp only.
    Twin dw2(cpu, gpu, size_t(OC) * C), dinp2(cpu, gpu, size_t(N) * C);
    dw2.fill(37);
    dinp2.poison();
    cpu.matmul_backward({View{}, dw2.c.v(), View{}, dout.c.v(), inp.c.v(), w.c.v(), N, C, OC});
    gpu.matmul_backward({View{}, dw2.g.v(), View{}, dout.g.v(), inp.g.v(), w.g.v(), N, C, OC});
    EXPECT_CLOSE(tag + "dweight only", dw2.g.read(), dw2.c.read(), kBf16Tol);
    Buf dw_ref(cpu, size_t(OC) * C, DType::f32);  // the CPU reference always takes a dweight
    dw_ref.write(Vec(size_t(OC) * C, 0.0));
    cpu.matmul_backward({dinp2.c.v(), dw_ref.v(), View{}, dout.c.v(), inp.c.v(), w.c.v(), N, C, OC});
    gpu.matmul_backward({dinp2.g.v(), View{}, View{}, dout.g.v(), inp.g.v(), w.g.v(), N, C, OC});
    EXPECT_CLOSE(tag + "dinp only", dinp2.g.read(), dinp2.c.read(), kBf16Tol);
}

TEST_F(CudaKernels, MatmulAwkwardShape) {
    for (bool bias : {false, true})
        for (bool gelu : {false, true}) check_matmul(*cpu, *gpu, 3 * 37, 72, 200, bias, gelu);
}

// Misaligned pre-activations: the GELU/dGELU epilogues cannot run, so the
// fallback kernels do (bias added by the fallback too).
TEST_F(CudaKernels, MatmulEpilogueFallback) {
    for (bool bias : {false, true}) check_matmul(*cpu, *gpu, 3 * 37, 72, 200, bias, true, 1);
}

// OC and C not multiples of 8: leading dimensions that are not 16-byte
// multiples (no GELU epilogue: aux ld % 8 != 0; cuBLASLt may also have no
// algorithm for the product itself, then the naive kernel runs).
TEST_F(CudaKernels, MatmulOddLeadingDimensions) {
    for (bool bias : {false, true})
        for (bool gelu : {false, true}) check_matmul(*cpu, *gpu, 3 * 37, 36, 100, bias, gelu);
    check_matmul(*cpu, *gpu, 5, 7, 3, true, true);
}

// More than one 512-row chunk in the bias gradient (two-stage reduction).
TEST_F(CudaKernels, MatmulManyRows) {
    check_matmul(*cpu, *gpu, 1100, 64, 96, true, false);
    check_matmul(*cpu, *gpu, 1100, 64, 96, true, true);
}

TEST_F(CudaKernels, MatmulGpt2Shapes) {
    check_matmul(*cpu, *gpu, 512, 768, 3 * 768, true, false);  // qkv
    check_matmul(*cpu, *gpu, 512, 768, 4 * 768, true, true);   // fc + GELU
    check_matmul(*cpu, *gpu, 512, 4 * 768, 768, true, false);  // fcproj
    check_matmul(*cpu, *gpu, 256, 128, 50304, false, false);   // tied head, padded vocab, no bias
}

TEST_F(CudaKernels, MatmulAlgoChoicesAgree) {
    for (int algo : {0, 1, 2, 3, -1}) {  // -1: timed per shape, the fastest kept
        auto g = make_gpu({{"matmul.algo", std::to_string(algo)}});
        SCOPED_TRACE("algo " + std::to_string(algo));
        check_matmul(*cpu, *g, 256, 256, 384, true, true);
    }
}

void check_attention(Backend& cpu, Backend& gpu, const std::string& variant, int B, int T, int NH, int HD) {
    const int C = NH * HD;
    const std::string tag = variant + " B" + std::to_string(B) + " T" + std::to_string(T) + " NH" + std::to_string(NH) + " HD" +
                            std::to_string(HD) + " ";
    SCOPED_TRACE(tag);
    Twin qkv(cpu, gpu, size_t(B) * T * 3 * C), out(cpu, gpu, size_t(B) * T * C), lse(cpu, gpu, size_t(B) * NH * T, DType::f32);
    qkv.fill(40, -2, 2);
    out.poison();
    lse.poison();
    cpu.attention_forward({out.c.v(), lse.c.v(), qkv.c.v(), B, T, C, NH});
    gpu.attention_forward({out.g.v(), lse.g.v(), qkv.g.v(), B, T, C, NH});
    EXPECT_CLOSE(tag + "out", out.g.read(), out.c.read(), kBf16Tol);
    // lse comes from f32 sums of products of identical bf16 inputs.
    EXPECT_CLOSE(tag + "lse", lse.g.read(), lse.c.read(), 1e-3);

    // Each backend's backward takes its own forward's out and lse, as in training.
    Twin dout(cpu, gpu, size_t(B) * T * C), dqkv(cpu, gpu, size_t(B) * T * 3 * C);
    dout.fill(41);
    dqkv.poison();
    cpu.attention_backward({dqkv.c.v(), dout.c.v(), qkv.c.v(), out.c.v(), lse.c.v(), B, T, C, NH});
    gpu.attention_backward({dqkv.g.v(), dout.g.v(), qkv.g.v(), out.g.v(), lse.g.v(), B, T, C, NH});
    EXPECT_CLOSE(tag + "dqkv", dqkv.g.read(), dqkv.c.read(), kAttnBwdTol);

    // Decode of the last position against the cache of the earlier ones.
    const int maxT = T + 3, pos = T - 1;
    Twin q1(cpu, gpu, size_t(B) * 3 * C), kc(cpu, gpu, size_t(B) * maxT * C), vc(cpu, gpu, size_t(B) * maxT * C),
        o1(cpu, gpu, size_t(B) * C);
    q1.fill(42, -2, 2);
    kc.fill(43, -2, 2);
    vc.fill(44, -2, 2);
    o1.poison();
    cpu.attention_decode({o1.c.v(), q1.c.v(), kc.c.v(), vc.c.v(), B, pos, maxT, C, NH});
    gpu.attention_decode({o1.g.v(), q1.g.v(), kc.g.v(), vc.g.v(), B, pos, maxT, C, NH});
    EXPECT_CLOSE(tag + "decode out", o1.g.read(), o1.c.read(), kBf16Tol);
    EXPECT_EQ(kc.g.read(), kc.c.read()) << "decode: k cache";
    EXPECT_EQ(vc.g.read(), vc.c.read()) << "decode: v cache";
}

class CudaAttention : public CudaKernels, public ::testing::WithParamInterface<std::string> {};

TEST_P(CudaAttention, AgainstCpu) {
    auto g = make_gpu({{"attention", GetParam()}});
    check_attention(*cpu, *g, GetParam(), 3, 77, 4, 64);    // odd B, T not a multiple of any tile
    check_attention(*cpu, *g, GetParam(), 2, 130, 2, 128);  // head dim 128
    check_attention(*cpu, *g, GetParam(), 4, 64, 4, 32);    // the tiny config's head dim
    check_attention(*cpu, *g, GetParam(), 1, 1, 2, 64);     // a single position
    check_attention(*cpu, *g, GetParam(), 2, 256, 12, 64);  // GPT-2 124M heads
}

// kernels.attention.fold_d = 1 computes D = rowsum(dO * O) inside the dQ
// kernel with the dot kernel's sum, term for term: every gradient is
// bit-identical to the separate pass's, at both head dims, with T not a
// multiple of any tile, and at both block_q sizes (a warp's 16 rows straddle T).
TEST_F(CudaKernels, AttentionFoldedDIsBitIdentical) {
    for (auto [B, T, NH, HD, BQ] : {std::array<int, 5>{3, 77, 4, 64, 128}, {2, 130, 2, 128, 64}, {2, 256, 12, 64, 128}}) {
        SCOPED_TRACE("B" + std::to_string(B) + " T" + std::to_string(T) + " HD" + std::to_string(HD) + " block_q " + std::to_string(BQ));
        const std::string bq = std::to_string(BQ);
        auto sep = make_gpu({{"attention.block_q", bq}}), fold = make_gpu({{"attention.block_q", bq}, {"attention.fold_d", "1"}});
        const int C = NH * HD;
        Buf qkv(*sep, size_t(B) * T * 3 * C, DType::bf16), out(*sep, size_t(B) * T * C, DType::bf16), lse(*sep, size_t(B) * NH * T, DType::f32),
            dout(*sep, size_t(B) * T * C, DType::bf16), d_sep(*sep, size_t(B) * T * 3 * C, DType::bf16),
            d_fold(*fold, size_t(B) * T * 3 * C, DType::bf16);
        qkv.write(random_vec(qkv.size(), 50, -2, 2));
        dout.write(random_vec(dout.size(), 51));
        sep->attention_forward({out.v(), lse.v(), qkv.v(), B, T, C, NH});
        sep->synchronize();  // the other backend's stream reads out and lse
        d_sep.poison();
        d_fold.poison();
        sep->attention_backward({d_sep.v(), dout.v(), qkv.v(), out.v(), lse.v(), B, T, C, NH});
        fold->attention_backward({d_fold.v(), dout.v(), qkv.v(), out.v(), lse.v(), B, T, C, NH});
        const Vec b = d_fold.read();
        EXPECT_BIT_IDENTICAL("dqkv", d_sep.read(), b);
        EXPECT_GT(rel_l2(b, Vec(b.size(), 0.0)), 0.0);
    }
}

// kernels.attention.tma = 1 (sm_90 only) loads the same tiles by TMA into a
// swizzled ring, tma = 2 also overlaps each tile's softmax with the previous
// tile's P V product, and tma = 3 also has the two consumer warpgroups take
// turns at the tensor cores (ping-pong): the products, the softmax and the
// operations on O in their order are the cp.async kernel's, so out and lse are
// bit-identical, with P through shared memory and in registers; T = 1024 runs
// 16 key tiles through the 2-stage ring (and 17 rounds of turns).
TEST_F(CudaKernels, AttentionTmaForwardIsBitIdentical) {
    for (const std::string pregs : {"0", "1"}) for (const std::string mode : {"1", "2", "3"}) {
        auto plain = make_gpu({{"attention", "wgmma"}, {"attention.p_regs", pregs}});
        auto tma = make_gpu({{"attention", "wgmma"}, {"attention.p_regs", pregs}, {"attention.tma", mode}});
        if (tma->device_caps().sm != 90) GTEST_SKIP() << "the wgmma forward runs on sm_90 (Hopper) only";
        for (auto [B, T, NH, HD] : {std::array<int, 4>{3, 77, 4, 64}, {2, 130, 2, 128}, {2, 1024, 12, 64}, {1, 1, 2, 128}}) {
            SCOPED_TRACE("p_regs " + pregs + " tma " + mode + " B" + std::to_string(B) + " T" + std::to_string(T) + " HD" + std::to_string(HD));
            const int C = NH * HD;
            Buf qkv(*plain, size_t(B) * T * 3 * C, DType::bf16), o1(*plain, size_t(B) * T * C, DType::bf16),
                l1(*plain, size_t(B) * NH * T, DType::f32), o2(*tma, size_t(B) * T * C, DType::bf16), l2(*tma, size_t(B) * NH * T, DType::f32);
            qkv.write(random_vec(qkv.size(), 70, -2, 2));
            o1.poison();
            l1.poison();
            o2.poison();
            l2.poison();
            plain->attention_forward({o1.v(), l1.v(), qkv.v(), B, T, C, NH});
            tma->attention_forward({o2.v(), l2.v(), qkv.v(), B, T, C, NH});
            EXPECT_BIT_IDENTICAL("out", o1.read(), o2.read());
            EXPECT_BIT_IDENTICAL("lse", l1.read(), l2.read());
        }
    }
}

// kernels.attention.wgmma_bwd = 1 (sm_90 only): the key blocks add their dQ
// parts in a fixed order, so two runs give the same bits; and it agrees with
// flash's backward. T = 1024 at GPT-2's 12 heads makes 8 key blocks per head
// wait their turns on 16 query tiles; T = 77, 200 and 1 end mid-tile.
TEST_F(CudaKernels, AttentionWgmmaBackwardIsDeterministic) {
    auto flash = make_gpu({}), wg = make_gpu({{"attention", "wgmma"}, {"attention.wgmma_bwd", "1"}});
    if (wg->device_caps().sm != 90) GTEST_SKIP() << "the wgmma backward runs on sm_90 (Hopper) only";
    for (auto [B, T, NH, HD] : {std::array<int, 4>{3, 77, 4, 64}, {2, 200, 2, 128}, {2, 1024, 12, 64}, {1, 1, 2, 64}}) {
        SCOPED_TRACE("B" + std::to_string(B) + " T" + std::to_string(T) + " NH" + std::to_string(NH) + " HD" + std::to_string(HD));
        const int C = NH * HD;
        const size_t n = size_t(B) * T * 3 * C;
        Buf qkv(*flash, n, DType::bf16), out(*flash, size_t(B) * T * C, DType::bf16), lse(*flash, size_t(B) * NH * T, DType::f32),
            dout(*flash, size_t(B) * T * C, DType::bf16), d_flash(*flash, n, DType::bf16), d1(*wg, n, DType::bf16), d2(*wg, n, DType::bf16);
        qkv.write(random_vec(n, 60, -2, 2));
        dout.write(random_vec(dout.size(), 61));
        flash->attention_forward({out.v(), lse.v(), qkv.v(), B, T, C, NH});
        d_flash.poison();
        flash->attention_backward({d_flash.v(), dout.v(), qkv.v(), out.v(), lse.v(), B, T, C, NH});
        flash->synchronize();  // the other backend's stream reads out and lse
        d1.poison();
        d2.poison();
        wg->attention_backward({d1.v(), dout.v(), qkv.v(), out.v(), lse.v(), B, T, C, NH});
        wg->attention_backward({d2.v(), dout.v(), qkv.v(), out.v(), lse.v(), B, T, C, NH});
        const Vec a = d1.read();
        EXPECT_BIT_IDENTICAL("dqkv, two runs", a, d2.read());
        EXPECT_CLOSE("wgmma backward vs flash", a, d_flash.read(), kAttnBwdTol);
    }
}

// Every attention variant the registry lists (the lab's generated cases below
// cover each variant's launch parameters too; this adds the decode op).
INSTANTIATE_TEST_SUITE_P(Variants, CudaAttention, ::testing::ValuesIn(find_kernel_family("attention")->variants));

// Generated from the registry: every variant x launch-parameter combination of
// every family the CUDA backend reads that has lab ops (kernels/lab.h), on the
// lab's test shapes, against the float32 CPU, each output within its family's
// bound (bf16 results 1e-2, the attention backward 2e-2, lse 1e-3, losses
// 1e-4, f32 optimizer state 1e-5). Registering a variant or a parameter value
// adds its tests; a case the device cannot run is skipped with the reason.
// One test per family (one process each under ctest), every case of the
// family in it, each failure naming its case.
class CudaLab : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaLab, MatchesCpu) {
    SKIP_WITHOUT_CUDA();
    auto ref = lab::reference_for("cuda");
    int ran = 0;
    for (const auto& op : lab::ops(GetParam()))
        for (const lab::Case& c : lab::cases(GetParam(), lab::shapes(GetParam(), op, lab::ShapeSet::tests))) {
            SCOPED_TRACE(c.name());
            const lab::Result r = lab::run("cuda", c, *ref, nullptr);
            if (!r.cannot_run.empty()) {
                std::printf("  %-90s cannot run: %s\n", c.name().c_str(), r.cannot_run.c_str());
                continue;
            }
            ran++;
            EXPECT_FALSE(r.errors.empty());
            std::string line;
            for (const auto& e : r.errors) {
                char buf[96];
                std::snprintf(buf, sizeof buf, " %s %.2e (%.0f%%)", e.output.c_str(), e.rel_l2, 100.0 * e.rel_l2 / e.bound);
                line += buf;
                EXPECT_LE(e.rel_l2, e.bound) << e.output;
            }
            std::printf("  %-90s%s\n", c.name().c_str(), line.c_str());
        }
    EXPECT_GT(ran, 0) << "no case of kernels." << GetParam() << " could run on this device";
}

std::vector<std::string> lab_families(const std::string& backend) {
    std::vector<std::string> out;
    for (const auto& f : kernel_families())
        if (std::find(f.backends.begin(), f.backends.end(), backend) != f.backends.end() && !lab::ops(f.name).empty()) out.push_back(f.name);
    return out;
}

INSTANTIATE_TEST_SUITE_P(Registry, CudaLab, ::testing::ValuesIn(lab_families("cuda")));

TEST_F(CudaKernels, GeluAndResidual) {
    const size_t n = 100003;
    Twin x(*cpu, *gpu, n), y(*cpu, *gpu, n), out(*cpu, *gpu, n), d(*cpu, *gpu, n);
    x.fill(50, -4, 4);
    y.fill(51);
    out.poison();
    cpu->gelu_forward({out.c.v(), x.c.v(), n});
    gpu->gelu_forward({out.g.v(), x.g.v(), n});
    EXPECT_CLOSE("gelu forward", out.g.read(), out.c.read(), kBf16Tol);
    d.poison();
    cpu->gelu_backward({d.c.v(), x.c.v(), y.c.v(), n});
    gpu->gelu_backward({d.g.v(), x.g.v(), y.g.v(), n});
    EXPECT_CLOSE("gelu backward", d.g.read(), d.c.read(), kBf16Tol);
    // In place: dinp aliases dout.
    cpu->gelu_backward({y.c.v(), x.c.v(), y.c.v(), n});
    gpu->gelu_backward({y.g.v(), x.g.v(), y.g.v(), n});
    EXPECT_CLOSE("gelu backward in place", y.g.read(), y.c.read(), kBf16Tol);
    y.fill(52);
    out.poison();
    cpu->residual_forward({out.c.v(), x.c.v(), y.c.v(), n});
    gpu->residual_forward({out.g.v(), x.g.v(), y.g.v(), n});
    EXPECT_CLOSE("residual", out.g.read(), out.c.read(), kBf16Tol);
}

TEST_F(CudaKernels, Classifier) {
    struct Shape { int N, V, Vp; };
    for (Shape s : {Shape{3 * 77, 1000, 1024}, Shape{64, 50257, 50304}, Shape{5, 64, 128}}) {
        for (bool grad : {false, true}) {
            const std::string tag = "classifier N" + std::to_string(s.N) + " V" + std::to_string(s.V) + (grad ? " grad " : " ");
            SCOPED_TRACE(tag);
            auto tgt = random_tokens(size_t(s.N), s.V, 60);
            Tokens tc(*cpu, tgt), tg(*gpu, tgt);
            Twin logits(*cpu, *gpu, size_t(s.N) * s.Vp), losses(*cpu, *gpu, s.N, DType::f32);
            Vec in = random_vec(logits.c.size(), 61, -4, 4);
            for (int n = 0; n < s.N; n++)  // padded columns hold large values: they must not count
                for (int j = s.V; j < s.Vp; j++) in[size_t(n) * s.Vp + j] = 40.0;
            logits.set(in);
            losses.poison();
            const double dloss = 1.0 / s.N;
            cpu->classifier({logits.c.v(), losses.c.v(), tc.get(), s.N, s.V, s.Vp, dloss, grad});
            gpu->classifier({logits.g.v(), losses.g.v(), tg.get(), s.N, s.V, s.Vp, dloss, grad});
            // f32 softmax of identical bf16 logits.
            EXPECT_CLOSE(tag + "losses", losses.g.read(), losses.c.read(), 1e-4);
            const Vec got = logits.g.read();
            if (!grad) {
                EXPECT_EQ(got, in) << "logits changed without grad";
                continue;
            }
            EXPECT_CLOSE(tag + "dlogits", got, logits.c.read(), kBf16Tol);
            for (int n = 0; n < s.N; n++)
                for (int j = s.V; j < s.Vp; j++) ASSERT_EQ(got[size_t(n) * s.Vp + j], 0.0) << "padded dlogit row " << n << " col " << j;
        }
    }
}

TEST_F(CudaKernels, GradNormSquared) {
    for (size_t n : {size_t(1), size_t(1000), size_t(1 << 20) + 12345}) {
        Twin g(*cpu, *gpu, n);
        g.fill(70);
        const double want = cpu->grad_norm_squared(g.c.v(), n), got = gpu->grad_norm_squared(g.g.v(), n);
        std::printf("  grad_norm_squared n=%zu: %.10g vs %.10g\n", n, got, want);
        EXPECT_NEAR(got, want, kF32Tol * want) << "n=" << n;
    }
}

// AdamW with f32 master weights on the GPU against the CPU's f32 update of
// the same values: the master weights follow the CPU parameters; the bf16
// parameters are the master rounded (to nearest, or stochastically to one of
// the two neighbours).
TEST_F(CudaKernels, AdamWWithMasterWeights) {
    const size_t n = 10000;
    const std::vector<ParamRange> ranges = {{0, 3000, true}, {3072, 5000, false}, {8192, 1500, true}};  // gaps stay untouched
    const Vec p0 = random_vec(n, 80), g0 = random_vec(n, 81, -0.1, 0.1), m0 = random_vec(n, 82, -0.01, 0.01),
              v0 = random_vec(n, 83, 1e-5, 1e-4);
    auto in_range = [&](size_t i) {
        for (const auto& r : ranges)
            if (i >= r.offset && i < r.offset + r.size) return true;
        return false;
    };
    for (int sr : {0, 1}) {
        SCOPED_TRACE(sr ? "stochastic rounding" : "round to nearest");
        Buf pc(*cpu, n, DType::f32), gc(*cpu, n, DType::f32), mc(*cpu, n, DType::f32), vc(*cpu, n, DType::f32);
        Buf pg(*gpu, n, DType::bf16), gg(*gpu, n, DType::bf16), mg(*gpu, n, DType::f32), vg(*gpu, n, DType::f32),
            master(*gpu, n, DType::f32);
        for (auto [buf, values] : {std::pair{&pc, &p0}, {&gc, &g0}, {&mc, &m0}, {&vc, &v0}, {&pg, &p0}, {&gg, &g0}, {&mg, &m0},
                                   {&vg, &v0}, {&master, &p0}})
            buf->write(*values);
        AdamW a{};
        a.ranges = ranges.data();
        a.n_ranges = int(ranges.size());
        a.lr = 1e-3, a.beta1 = 0.9, a.beta2 = 0.95, a.eps = 1e-8, a.weight_decay = 0.1, a.grad_scale = 0.7, a.t = 3;
        a.seed = 1234;
        a.stochastic_rounding = sr != 0;
        AdamW ac = a;
        ac.params = pc.v(), ac.grads = gc.v(), ac.m = mc.v(), ac.v = vc.v();
        cpu->adamw_update(ac);
        AdamW ag = a;
        ag.params = pg.v(), ag.grads = gg.v(), ag.m = mg.v(), ag.v = vg.v(), ag.master = master.v();
        gpu->adamw_update(ag);

        const Vec ref = pc.read(), mst = master.read(), prm = pg.read();
        EXPECT_CLOSE("adamw master vs cpu params", mst, ref, kF32Tol);
        EXPECT_CLOSE("adamw m", mg.read(), mc.read(), kF32Tol);
        EXPECT_CLOSE("adamw v", vg.read(), vc.read(), kF32Tol);
        int bad = 0;
        for (size_t i = 0; i < n && bad < 5; i++) {
            if (!in_range(i)) {
                if (prm[i] != p0[i] || mst[i] != p0[i]) {
                    ADD_FAILURE() << "element " << i << " outside the ranges changed";
                    bad++;
                }
                continue;
            }
            if (!sr) {
                if (prm[i] != round_bf16(mst[i])) {
                    ADD_FAILURE() << "param " << i << " = " << prm[i] << " is not the nearest bf16 of master " << mst[i];
                    bad++;
                }
            } else {
                int e = 0;
                std::frexp(mst[i], &e);
                const double ulp = std::ldexp(1.0, e - 8);  // bf16 keeps 8 significant bits
                if (!(std::fabs(prm[i] - mst[i]) <= ulp)) {
                    ADD_FAILURE() << "param " << i << " = " << prm[i] << " is not a bf16 neighbour of master " << mst[i];
                    bad++;
                }
            }
        }
        // Same seed and step: the same bits again.
        if (sr) {
            Buf pg2(*gpu, n, DType::bf16), mg2(*gpu, n, DType::f32), vg2(*gpu, n, DType::f32), master2(*gpu, n, DType::f32);
            for (auto [buf, values] : {std::pair{&pg2, &p0}, {&mg2, &m0}, {&vg2, &v0}, {&master2, &p0}}) buf->write(*values);
            AdamW a2 = ag;
            a2.params = pg2.v(), a2.m = mg2.v(), a2.v = vg2.v(), a2.master = master2.v();
            gpu->adamw_update(a2);
            EXPECT_EQ(pg2.read(), prm) << "stochastic rounding is not repeatable for a fixed seed";
        }
    }
}

// The recorded step's forms of the optimizer ops: lr, t and the clip scale
// read from device memory (adamw_hyper_kernel) against the same update with
// the values passed directly, the norm's square left on the device, and the
// loss summed on the device.
TEST_F(CudaKernels, StepValuesOnTheDevice) {
    const size_t n = 10000;
    const std::vector<ParamRange> ranges = {{0, 3000, true}, {3072, 5000, false}};
    const Vec p0 = random_vec(n, 84), g0 = random_vec(n, 85, -0.1, 0.1), m0 = random_vec(n, 86, -0.01, 0.01),
              v0 = random_vec(n, 87, 1e-5, 1e-4);
    for (double norm : {0.5, 4.0}) {  // below and above grad_clip = 1
        SCOPED_TRACE("norm " + std::to_string(norm));
        Buf pa(*gpu, n, DType::bf16), ma(*gpu, n, DType::f32), va(*gpu, n, DType::f32), masta(*gpu, n, DType::f32), g(*gpu, n, DType::bf16);
        Buf pb(*gpu, n, DType::bf16), mb(*gpu, n, DType::f32), vb(*gpu, n, DType::f32), mastb(*gpu, n, DType::f32);
        Buf hyper(*gpu, 2, DType::f64), nsq(*gpu, 1, DType::f64);
        for (auto [buf, values] : {std::pair{&pa, &p0}, {&ma, &m0}, {&va, &v0}, {&masta, &p0}, {&g, &g0}, {&pb, &p0}, {&mb, &m0},
                                   {&vb, &v0}, {&mastb, &p0}})
            buf->write(*values);
        hyper.write({2e-3, 5.0});
        nsq.write({norm * norm});
        AdamW a{};
        a.ranges = ranges.data();
        a.n_ranges = int(ranges.size());
        a.beta1 = 0.9, a.beta2 = 0.95, a.eps = 1e-8, a.weight_decay = 0.1, a.seed = 77;
        AdamW direct = a;
        direct.params = pa.v(), direct.grads = g.v(), direct.m = ma.v(), direct.v = va.v(), direct.master = masta.v();
        direct.lr = 2e-3, direct.t = 5, direct.grad_scale = norm > 1.0 ? 1.0 / norm : 1.0;
        gpu->adamw_update(direct);
        AdamW dev = a;
        dev.params = pb.v(), dev.grads = g.v(), dev.m = mb.v(), dev.v = vb.v(), dev.master = mastb.v();
        dev.lr = 99, dev.t = 1, dev.grad_scale = 1.0;  // ignored: hyper and norm_sq decide
        dev.hyper = hyper.v(), dev.norm_sq = nsq.v(), dev.grad_clip = 1.0;
        gpu->adamw_update(dev);
        // The bias corrections come from pow() on the device instead of the host: f32 tolerance.
        EXPECT_CLOSE("adamw master, device step values", mastb.read(), masta.read(), kF32Tol);
        EXPECT_CLOSE("adamw m, device step values", mb.read(), ma.read(), kF32Tol);
        EXPECT_CLOSE("adamw v, device step values", vb.read(), va.read(), kF32Tol);
    }
    // grad_sumsq = grad_norm_squared, left on the device; sum_into accumulates.
    Twin x(*cpu, *gpu, 70001);
    x.fill(88);
    Buf out(*gpu, 1, DType::f64);
    gpu->grad_sumsq({out.v(), x.g.v(), x.g.size()});
    EXPECT_EQ(out.read()[0], gpu->grad_norm_squared(x.g.v(), x.g.size()));
    Twin losses(*cpu, *gpu, 65536, DType::f32);
    losses.fill(89, 0.5, 11.0);
    Buf acc(*gpu, 1, DType::f64);
    acc.write({1.5});
    gpu->sum_into({acc.v(), losses.g.v(), 65536, 0.25});
    gpu->sum_into({acc.v(), losses.g.v(), 65536, 0.25});
    double want = 0;
    for (double v : losses.c.read()) want += v;
    EXPECT_NEAR(acc.read()[0], 1.5 + 0.5 * want, 1e-12 * want);
}

// Stream capture and replay: a recorded upload, op and download run again on
// each replay with the host buffers' contents at that time; a waiting call
// inside the recording throws and the recording is discarded.
TEST_F(CudaKernels, RecordedStepReplays) {
    const size_t n = 4096;
    float* in = static_cast<float*>(gpu->alloc_host(n * 4, "test input"));
    float* out = static_cast<float*>(gpu->alloc_host(n * 4, "test output"));
    Buf x(*gpu, n, DType::bf16), y(*gpu, n, DType::bf16), xf(*gpu, n, DType::f32), yf(*gpu, n, DType::f32);
    for (size_t i = 0; i < n; i++) in[i] = float(int(i % 200) - 100);
    std::string why;
    ASSERT_TRUE(gpu->begin_capture(&why)) << why;
    gpu->to_device_async(xf.ptr(), in, n * 4);
    gpu->copy(x.v(), xf.v(), n);
    gpu->residual_forward({y.v(), x.v(), x.v(), n});  // y = 2x, exact in bf16 for these integers
    gpu->copy(yf.v(), y.v(), n);
    gpu->to_host_async(out, yf.ptr(), n * 4);
    ASSERT_TRUE(gpu->end_capture(&why)) << why;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < n; i++) in[i] = float(int((i + round * 7) % 200) - 100);
        gpu->replay();
        gpu->synchronize();
        for (size_t i = 0; i < n; i++) ASSERT_EQ(out[i], 2.0f * in[i]) << "round " << round << " element " << i;
    }
    ASSERT_TRUE(gpu->begin_capture(&why)) << why;
    try {
        gpu->synchronize();
        ADD_FAILURE() << "synchronize did not throw while capturing";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("synchronize"), std::string::npos) << e.what();
    }
    gpu->abort_capture();
    gpu->synchronize();  // usable again
    gpu->free_host(out);
    gpu->free_host(in);
}

TEST_F(CudaKernels, ProfilingCountsOps) {
    const size_t n = 4096;
    Twin x(*cpu, *gpu, n), y(*cpu, *gpu, n);
    x.fill(90);
    gpu->set_profiling(true);
    for (int i = 0; i < 3; i++) gpu->gelu_forward({y.g.v(), x.g.v(), n});
    gpu->residual_forward({y.g.v(), x.g.v(), x.g.v(), n});
    const auto times = gpu->op_times();
    gpu->set_profiling(false);
    std::map<std::string, long> calls;
    for (const auto& t : times) {
        calls[t.op] = t.calls;
        EXPECT_GE(t.ms, 0.0) << t.op;
    }
    EXPECT_EQ(calls["gelu_forward"], 3);
    EXPECT_EQ(calls["residual_forward"], 1);
    for (size_t i = 1; i < times.size(); i++) EXPECT_GE(times[i - 1].ms, times[i].ms) << "op_times not sorted";
}

// ---------------------------------------------------------------------------
// The whole model.

ModelShape tiny_shape() {  // configs/tiny.yaml
    ModelShape s;
    s.L = 2;
    s.NH = 4;
    s.C = 128;
    s.maxT = 64;
    s.V = 64;
    s.Vp = 128;
    return s;
}

// Forward loss and every parameter gradient of one step, GPU vs CPU, from the
// same (bf16-representable) weights. Bounds: loss 5e-3 absolute (the logits
// are bf16, the loss is ~4.16); gradients 5e-2 relative L2 per tensor (every
// activation and activation gradient on the GPU is bf16, about 20 ops deep,
// each rounding 2^-9 relative, with the residual-stream gradient re-rounded
// at each of its additions). Also: the step repeats bit for bit.
TEST(CudaModel, OneStepMatchesCpu) {
    SKIP_WITHOUT_CUDA();
    auto cpu = make_backend("cpu");
    auto gpu = make_gpu();
    const ModelShape s = tiny_shape();
    const int B = 4, T = 64;
    GPT2 mg(s, *gpu, B, T), mc(s, *cpu, B, T);
    mg.init_weights(42);
    mc.load_params_llmc(mg.params_llmc());  // the GPU's bf16 weights, exactly
    auto x = random_tokens(size_t(B) * T, s.V, 100), y = random_tokens(size_t(B) * T, s.V, 101);
    const double dloss = 1.0 / (B * T);

    mc.zero_grad();
    mg.zero_grad();
    const double lc = mc.forward(x.data(), y.data(), true, dloss);
    const double lg = mg.forward(x.data(), y.data(), true, dloss);
    std::printf("  loss: gpu %.6f cpu %.6f\n", lg, lc);
    ASSERT_TRUE(std::isfinite(lg));
    EXPECT_NEAR(lg, lc, 5e-3);
    mc.backward();
    mg.backward();

    std::map<std::string, Vec> first;
    for (const auto& t : mg.param_layout().tensors) {
        const Vec gg = mg.read_grad(t.name), gc = mc.read_grad(t.name);
        EXPECT_CLOSE("grad " + t.name, gg, gc, 5e-2);
        first[t.name] = gg;
        if (t.name == "wte")
            for (size_t i = size_t(s.V) * s.C; i < t.numel; i++) ASSERT_EQ(gg[i], 0.0) << "padded wte row has a gradient";
    }

    // Determinism: no floating-point atomics on the default path.
    mg.zero_grad();
    const double lg2 = mg.forward(x.data(), y.data(), true, dloss);
    mg.backward();
    EXPECT_EQ(lg2, lg);
    for (const auto& t : mg.param_layout().tensors) EXPECT_EQ(mg.read_grad(t.name), first[t.name]) << t.name << " not bitwise repeatable";
}

// kernels.bias_grad: folded (the projections' bias gradients from the
// LayerNorm backward and the dGELU product, with our column sum or cuBLASLt's
// DGELU_BGRAD) against the separate sums: every gradient within 1e-2 relative
// L2 (the same bf16 values summed in another order, or DGELU_BGRAD's sums of
// the unrounded dinp).
TEST(CudaModel, FoldedBiasGradientsMatchSeparate) {
    SKIP_WITHOUT_CUDA();
    const ModelShape s = tiny_shape();
    const int B = 4, T = 64;
    auto x = random_tokens(size_t(B) * T, s.V, 102), y = random_tokens(size_t(B) * T, s.V, 103);
    auto grads = [&](const std::map<std::string, std::string>& kernels) {
        auto gpu = make_gpu(kernels);
        GPT2 m(s, *gpu, B, T);
        m.init_weights(42);
        m.zero_grad();
        m.forward(x.data(), y.data(), true, 1.0 / (B * T));
        m.backward();
        std::map<std::string, Vec> out;
        for (const auto& t : m.param_layout().tensors) out[t.name] = m.read_grad(t.name);
        return out;
    };
    const auto sep = grads({});
    for (const char* bgrad : {"0", "1"}) {
        const auto fold = grads({{"bias_grad", "folded"}, {"matmul.bgrad", bgrad}});
        for (const auto& [name, g] : sep) EXPECT_CLOSE(std::string("folded, bgrad=") + bgrad + ": grad " + name, fold.at(name), g, kBf16Tol);
    }
}

// kernels.head: chunked (lm_head, the classifier and dlnf per chunk of rows,
// with a remainder chunk: B*T = 200 in chunks of 64) against the whole head:
// the same bf16 products row by row, so the loss and every gradient agree
// within the bf16 tolerance, for plain GPT-2 and an untied soft-capped head.
TEST(CudaModel, ChunkedAndFusedHeadsMatchWhole) {
    SKIP_WITHOUT_CUDA();
    ModelShape capped = tiny_shape();
    capped.arch.tied_head = false;
    capped.arch.softcap = 15.0;
    const int B = 5, T = 40;
    auto x = random_tokens(size_t(B) * T, capped.V, 104), y = random_tokens(size_t(B) * T, capped.V, 105);
    for (const ModelShape& s : {tiny_shape(), capped}) {
        auto run = [&](const std::map<std::string, std::string>& kernels, double* loss) {
            auto gpu = make_gpu(kernels);
            GPT2 m(s, *gpu, B, T);
            m.init_weights(42);
            m.zero_grad();
            *loss = m.forward(x.data(), y.data(), true, 1.0 / (B * T));
            m.backward();
            std::map<std::string, Vec> out;
            for (const auto& t : m.param_layout().tensors) out[t.name] = m.read_grad(t.name);
            return out;
        };
        double lw = 0, lc = 0, lf = 0;
        const auto whole = run({}, &lw);
        const auto chunked = run({{"head", "chunked"}, {"head.rows", "64"}}, &lc);
        // fused: 3 chunks of 72 rows and one of 56, each adding its part of the head's weight gradient.
        const auto fused = run({{"head", "fused"}, {"head.fused_rows", "72"}}, &lf);
        EXPECT_NEAR(lc, lw, 1e-3 * std::fabs(lw));
        EXPECT_NEAR(lf, lw, 1e-3 * std::fabs(lw));
        for (const auto& [name, g] : whole) {
            EXPECT_CLOSE("chunked head: grad " + name, chunked.at(name), g, kBf16Tol);
            EXPECT_CLOSE("fused head: grad " + name, fused.at(name), g, kBf16Tol);
        }
    }
}

// Fifty training steps of configs/tiny.yaml through the trainer on both
// backends, from the same seed and data. Bound: |loss_gpu - loss_cpu| < 0.05
// at every step. The two runs differ only by bf16 rounding (weights 2^-9
// relative, f32 master weights and moments on both sides); the first step
// agrees to ~1e-3 (OneStepMatchesCpu), and over 50 steps the loss falls from
// ~4.16 by more than 0.5 (checked), so 0.05 is under 10% of the descent: a
// broken kernel (a wrong gradient, a missed accumulation) shows up as a curve
// that stalls or departs by far more, while bf16 noise stays well inside it.
TEST(CudaModel, TrainingTracksCpu) {
    SKIP_WITHOUT_CUDA();
    auto run = [](const std::string& backend) {
        test::TempDir dir;
        Config cfg = load_config(test::source_path("configs/tiny.yaml"),
                                 {"run.backend=" + backend, "run.max_steps=50", "run.val_every=0", "run.val_batches=1",
                                  "run.out_dir=" + dir.path});
        TrainOptions opt;
        opt.quiet = true;
        return train(cfg, opt);
    };
    const TrainResult c = run("cpu"), g = run("cuda");
    ASSERT_EQ(g.step_losses.size(), c.step_losses.size());
    ASSERT_EQ(c.step_losses.size(), 50u);
    double worst = 0;
    for (size_t i = 0; i < c.step_losses.size(); i++) {
        const double d = std::fabs(g.step_losses[i] - c.step_losses[i]);
        worst = std::max(worst, d);
        EXPECT_LT(d, 0.05) << "step " << i << ": gpu " << g.step_losses[i] << " cpu " << c.step_losses[i];
    }
    std::printf("  50 steps: first loss gpu %.4f cpu %.4f, last gpu %.4f cpu %.4f, max |diff| %.4f; %.0f vs %.0f tokens/s\n",
                g.step_losses.front(), c.step_losses.front(), g.step_losses.back(), c.step_losses.back(), worst, g.tokens_per_s,
                c.tokens_per_s);
    EXPECT_LT(c.step_losses.back(), c.step_losses.front() - 0.5) << "the CPU run did not learn: the comparison means nothing";
}

// run.grad_accum_f32 on the GPU: 8 micro-batches a step, each one's bf16
// gradients added into an f32 sum (the first copied), recorded as a CUDA
// graph. The step's gradient norm (of the whole sum, before clipping) must
// match the CPU's f32 accumulation within 1% at step 1, where the weights
// are still the same (a micro-batch missed or counted twice moves it by
// 10% or more), and the losses track the CPU's as TrainingTracksCpu's do.
TEST(CudaModel, F32GradientSumTracksCpu) {
    SKIP_WITHOUT_CUDA();
    auto run = [](const std::string& backend, test::TempDir& dir) {
        Config cfg = load_config(test::source_path("configs/tiny.yaml"),
                                 {"run.backend=" + backend, "run.max_steps=12", "run.val_every=0", "run.val_batches=1",
                                  "run.batch_size=2", "run.total_batch_tokens=1024", "run.grad_accum_f32=true",
                                  "run.cuda_graph=true", "run.out_dir=" + dir.path});
        TrainOptions opt;
        opt.quiet = true;
        return train(cfg, opt);
    };
    test::TempDir cd, gd;
    const TrainResult c = run("cpu", cd), g = run("cuda", gd);
    EXPECT_EQ(g.step_graph, "replaying");
    ASSERT_EQ(c.step_losses.size(), 12u);
    ASSERT_EQ(g.step_losses.size(), 12u);
    for (size_t i = 0; i < 12; i++) EXPECT_LT(std::fabs(g.step_losses[i] - c.step_losses[i]), 0.05) << "step " << i + 1;
    const std::vector<double> cn = test::log_field(cd.file("log.jsonl"), "step", "grad_norm"),
                              gn = test::log_field(gd.file("log.jsonl"), "step", "grad_norm");
    ASSERT_FALSE(cn.empty());
    ASSERT_FALSE(gn.empty());
    const double nc = cn.front(), ng = gn.front();
    ASSERT_GT(nc, 0.0);
    EXPECT_NEAR(ng, nc, 0.01 * nc);
    std::printf("  step-1 gradient norm: gpu %.6f cpu %.6f\n", ng, nc);
}

// ---------------------------------------------------------------------------
// The architecture and optimizer choices (model.*, optim.type: muon): each new
// kernel against the CPU reference, at GPT-2's width and at awkward ones.

TEST_F(CudaKernels, NormVariants) {
    struct Case { bool rms, weight, bias; const char* name; };
    for (const Case& k : {Case{true, true, false, "rmsnorm"}, Case{true, false, false, "rmsnorm (no params)"},
                          Case{false, false, false, "layernorm (no params)"}, Case{false, true, false, "layernorm (no bias)"}})
        for (int C : {72, 100, 768}) {
            const int N = 3 * 77;
            const std::string tag = std::string(k.name) + " C=" + std::to_string(C) + " ";
            SCOPED_TRACE(tag);
            Twin inp(*cpu, *gpu, size_t(N) * C), w(*cpu, *gpu, C), b(*cpu, *gpu, C), out(*cpu, *gpu, size_t(N) * C);
            Twin mean(*cpu, *gpu, N, DType::f32), rstd(*cpu, *gpu, N, DType::f32);
            inp.fill(110, -2, 3);
            w.fill(111, 0.5, 1.5);
            b.fill(112);
            out.poison();
            mean.poison();
            rstd.poison();
            const View wc = k.weight ? w.c.v() : View{}, wg = k.weight ? w.g.v() : View{};
            const View bc = k.bias ? b.c.v() : View{}, bg = k.bias ? b.g.v() : View{};
            cpu->layernorm_forward({out.c.v(), mean.c.v(), rstd.c.v(), inp.c.v(), wc, bc, N, C, k.rms});
            gpu->layernorm_forward({out.g.v(), mean.g.v(), rstd.g.v(), inp.g.v(), wg, bg, N, C, k.rms});
            EXPECT_CLOSE(tag + "out", out.g.read(), out.c.read(), kBf16Tol);
            EXPECT_CLOSE(tag + "rstd (f32)", rstd.g.read(), rstd.c.read(), kF32Tol);

            Twin dout(*cpu, *gpu, size_t(N) * C), dinp(*cpu, *gpu, size_t(N) * C), dw(*cpu, *gpu, C);
            dout.fill(113);
            dinp.fill(114);  // += into the residual-stream gradient
            dw.fill(115);
            const View dwc = k.weight ? dw.c.v() : View{}, dwg = k.weight ? dw.g.v() : View{};
            cpu->layernorm_backward({dinp.c.v(), dwc, View{}, dout.c.v(), inp.c.v(), wc, mean.c.v(), rstd.c.v(), N, C, k.rms});
            gpu->layernorm_backward({dinp.g.v(), dwg, View{}, dout.g.v(), inp.g.v(), wg, mean.g.v(), rstd.g.v(), N, C, k.rms});
            EXPECT_CLOSE(tag + "dinp (+=)", dinp.g.read(), dinp.c.read(), kBf16Tol);
            if (k.weight) EXPECT_CLOSE(tag + "dweight (+=)", dw.g.read(), dw.c.read(), kBf16Tol);

            // The fused residual variant.
            Twin a(*cpu, *gpu, size_t(N) * C), res(*cpu, *gpu, size_t(N) * C);
            a.fill(116);
            res.poison();
            out.poison();
            cpu->residual_layernorm_forward({res.c.v(), out.c.v(), mean.c.v(), rstd.c.v(), a.c.v(), inp.c.v(), wc, bc, N, C, k.rms});
            gpu->residual_layernorm_forward({res.g.v(), out.g.v(), mean.g.v(), rstd.g.v(), a.g.v(), inp.g.v(), wg, bg, N, C, k.rms});
            EXPECT_CLOSE(tag + "residual", res.g.read(), res.c.read(), kBf16Tol);
            EXPECT_CLOSE(tag + "residual norm out", out.g.read(), out.c.read(), kBf16Tol);
        }
}

TEST_F(CudaKernels, QKNormAndRope) {
    struct Shape { int B, T, NH, HD; };
    for (const Shape& sh : {Shape{2, 77, 12, 64}, Shape{3, 5, 3, 6}, Shape{1, 33, 2, 128}}) {
        const int C = sh.NH * sh.HD, N = sh.B * sh.T;
        const std::string tag = "B" + std::to_string(sh.B) + " T" + std::to_string(sh.T) + " NH" + std::to_string(sh.NH) + " HD" +
                                std::to_string(sh.HD) + " ";
        SCOPED_TRACE(tag);
        Twin qkv(*cpu, *gpu, size_t(N) * 3 * C), rstd(*cpu, *gpu, size_t(N) * 2 * sh.NH, DType::f32);
        qkv.fill(120, -2, 2);
        rstd.poison();
        cpu->rope({qkv.c.v(), N, sh.T, 0, C, sh.NH, 500.0});
        gpu->rope({qkv.g.v(), N, sh.T, 0, C, sh.NH, 500.0});
        EXPECT_CLOSE(tag + "rope", qkv.g.read(), qkv.c.read(), kBf16Tol);
        cpu->qknorm_forward({qkv.c.v(), rstd.c.v(), N, C, sh.NH});
        gpu->qknorm_forward({qkv.g.v(), rstd.g.v(), N, C, sh.NH});
        EXPECT_CLOSE(tag + "qknorm", qkv.g.read(), qkv.c.read(), kBf16Tol);
        EXPECT_CLOSE(tag + "qknorm rstd", rstd.g.read(), rstd.c.read(), kBf16Tol);  // of the bf16-rounded rotation

        Twin d(*cpu, *gpu, size_t(N) * 3 * C);
        d.fill(121);
        cpu->qknorm_backward({d.c.v(), qkv.c.v(), rstd.c.v(), N, C, sh.NH});
        gpu->qknorm_backward({d.g.v(), qkv.g.v(), rstd.g.v(), N, C, sh.NH});
        EXPECT_CLOSE(tag + "qknorm backward", d.g.read(), d.c.read(), kBf16Tol);
        cpu->rope({d.c.v(), N, sh.T, 0, C, sh.NH, 500.0, true});
        gpu->rope({d.g.v(), N, sh.T, 0, C, sh.NH, 500.0, true});
        EXPECT_CLOSE(tag + "rope backward", d.g.read(), d.c.read(), kBf16Tol);
        // Decode: one row at position pos0 = 40, past the table's first build.
        Twin one(*cpu, *gpu, size_t(3) * C);
        one.fill(122);
        cpu->rope({one.c.v(), 1, 1, 1500, C, sh.NH, 500.0});
        gpu->rope({one.g.v(), 1, 1, 1500, C, sh.NH, 500.0});
        EXPECT_CLOSE(tag + "rope at position 1500", one.g.read(), one.c.read(), kBf16Tol);
    }
}

TEST_F(CudaKernels, Relu2MatmulAndStandalone) {
    for (bool bias : {false, true})
        for (int OC : {200, 4 * 768}) {
            const int N = 3 * 37, C = OC == 200 ? 72 : 768;
            const std::string tag = "relu2 matmul OC=" + std::to_string(OC) + (bias ? "+b " : " ");
            Twin inp(*cpu, *gpu, size_t(N) * C), w(*cpu, *gpu, size_t(OC) * C), b(*cpu, *gpu, OC), out(*cpu, *gpu, size_t(N) * OC),
                pre(*cpu, *gpu, size_t(N) * OC);
            inp.fill(130);
            w.fill(131, -0.2, 0.2);
            b.fill(132);
            out.poison();
            pre.poison();
            const View bc = bias ? b.c.v() : View{}, bg = bias ? b.g.v() : View{};
            cpu->matmul_forward({out.c.v(), inp.c.v(), w.c.v(), bc, N, C, OC, pre.c.v(), Activation::relu2});
            gpu->matmul_forward({out.g.v(), inp.g.v(), w.g.v(), bg, N, C, OC, pre.g.v(), Activation::relu2});
            EXPECT_CLOSE(tag + "pre", pre.g.read(), pre.c.read(), kBf16Tol);
            EXPECT_CLOSE(tag + "out", out.g.read(), out.c.read(), kBf16Tol);
            // Backward through the activation: dinp (N,OC) = dout (N,C) @ W^T... as the fcproj product sees it.
            Twin dout(*cpu, *gpu, size_t(N) * C), dinp(*cpu, *gpu, size_t(N) * OC), dw(*cpu, *gpu, size_t(C) * OC);
            Twin w2(*cpu, *gpu, size_t(C) * OC);
            dout.fill(133);
            w2.fill(134, -0.2, 0.2);
            dw.fill(135);
            dinp.poison();
            cpu->matmul_backward({dinp.c.v(), dw.c.v(), View{}, dout.c.v(), out.c.v(), w2.c.v(), N, OC, C, pre.c.v(), Activation::relu2});
            gpu->matmul_backward({dinp.g.v(), dw.g.v(), View{}, dout.g.v(), out.g.v(), w2.g.v(), N, OC, C, pre.g.v(), Activation::relu2});
            EXPECT_CLOSE(tag + "dinp (drelu2)", dinp.g.read(), dinp.c.read(), kBf16Tol);
            EXPECT_CLOSE(tag + "dweight (+=)", dw.g.read(), dw.c.read(), kBf16Tol);
        }
    const size_t n = 100003;
    Twin x(*cpu, *gpu, n), y(*cpu, *gpu, n), d(*cpu, *gpu, n);
    x.fill(136, -3, 3);
    y.poison();
    cpu->gelu_forward({y.c.v(), x.c.v(), n, Activation::relu2});
    gpu->gelu_forward({y.g.v(), x.g.v(), n, Activation::relu2});
    EXPECT_CLOSE("relu2 standalone", y.g.read(), y.c.read(), kBf16Tol);
    d.fill(137);
    cpu->gelu_backward({d.c.v(), x.c.v(), d.c.v(), n, Activation::relu2});
    gpu->gelu_backward({d.g.v(), x.g.v(), d.g.v(), n, Activation::relu2});
    EXPECT_CLOSE("relu2 backward (in place)", d.g.read(), d.c.read(), kBf16Tol);
}

TEST_F(CudaKernels, ClassifierSoftcap) {
    for (int Vp : {50304, 200}) {
        const int N = 37, V = Vp == 200 ? 197 : 50257;
        const std::string tag = "softcap Vp=" + std::to_string(Vp) + " ";
        auto targets = random_tokens(N, V, 140);
        Tokens tc(*cpu, targets), tg(*gpu, targets);
        Twin logits(*cpu, *gpu, size_t(N) * Vp), losses(*cpu, *gpu, N, DType::f32);
        logits.fill(141, -40, 40);  // beyond the cap of 15: the tanh bends
        losses.poison();
        cpu->classifier({logits.c.v(), losses.c.v(), tc.get(), N, V, Vp, 1.0 / N, true, 15.0});
        gpu->classifier({logits.g.v(), losses.g.v(), tg.get(), N, V, Vp, 1.0 / N, true, 15.0});
        EXPECT_CLOSE(tag + "losses", losses.g.read(), losses.c.read(), kBf16Tol);
        EXPECT_CLOSE(tag + "dlogits", logits.g.read(), logits.c.read(), kBf16Tol);
        // Evaluation (targets, no grad): the same losses on both, the logits untouched.
        Twin ev(*cpu, *gpu, size_t(N) * Vp), evloss(*cpu, *gpu, N, DType::f32);
        ev.fill(141, -40, 40);
        evloss.poison();
        const std::vector<double> before = ev.g.read();
        cpu->classifier({ev.c.v(), evloss.c.v(), tc.get(), N, V, Vp, 1.0 / N, false, 15.0});
        gpu->classifier({ev.g.v(), evloss.g.v(), tg.get(), N, V, Vp, 1.0 / N, false, 15.0});
        EXPECT_CLOSE(tag + "losses (no grad)", evloss.g.read(), evloss.c.read(), kBf16Tol);
        EXPECT_EQ(ev.g.read(), before) << tag << "logits changed without grad";
        EXPECT_CLOSE(tag + "logits unchanged on the CPU too (no grad)", ev.c.read(), before, kBf16Tol);
        Twin z(*cpu, *gpu, size_t(N) * Vp);
        z.fill(142, -40, 40);
        cpu->classifier({z.c.v(), View{}, nullptr, N, V, Vp, 0.0, false, 15.0});
        gpu->classifier({z.g.v(), View{}, nullptr, N, V, Vp, 0.0, false, 15.0});
        EXPECT_CLOSE(tag + "capped logits (no targets)", z.g.read(), z.c.read(), kBf16Tol);
    }
}

TEST_F(CudaKernels, EncoderWithoutPositions) {
    for (int C : {72, 768}) {
        const int B = 3, T = 77, Vp = 128;
        auto tok = random_tokens(size_t(B) * T, 20, 150);
        Tokens tc(*cpu, tok), tg(*gpu, tok);
        Twin wte(*cpu, *gpu, size_t(Vp) * C), out(*cpu, *gpu, size_t(B) * T * C), dout(*cpu, *gpu, size_t(B) * T * C),
            dwte(*cpu, *gpu, size_t(Vp) * C);
        wte.fill(151);
        out.poison();
        cpu->encoder_forward({out.c.v(), tc.get(), wte.c.v(), View{}, B, T, C});
        gpu->encoder_forward({out.g.v(), tg.get(), wte.g.v(), View{}, B, T, C});
        EXPECT_EQ(out.g.read(), out.c.read());  // a copy of bf16 rows: exact
        dout.fill(152);
        dwte.fill(153);
        cpu->encoder_backward({dwte.c.v(), View{}, dout.c.v(), tc.get(), B, T, C});
        gpu->encoder_backward({dwte.g.v(), View{}, dout.g.v(), tg.get(), B, T, C});
        EXPECT_CLOSE("encoder (no wpe) dwte (+=) C=" + std::to_string(C), dwte.g.read(), dwte.c.read(), kBf16Tol);
    }
}

// Muon on stacks of wide, tall and awkward matrices, with f32 master weights
// and bf16 parameters as the trainer runs it. Bound on the update (new master
// - old, against the CPU's f32 update): 2e-2 relative L2 (the Newton-Schulz
// products run in TF32, 10 mantissa bits, five iterations deep); the momentum
// is elementwise f32: kF32Tol.
TEST_F(CudaKernels, MuonAgainstCpu) {
    struct Stack { int count, rows, cols; };
    for (const Stack& st : {Stack{3, 64, 64}, Stack{2, 48, 120}, Stack{2, 120, 48}, Stack{1, 37, 53}, Stack{12, 768, 768 / 4}}) {
        const size_t n = size_t(st.count) * st.rows * st.cols;
        const std::string tag = "muon " + std::to_string(st.count) + "x(" + std::to_string(st.rows) + "," + std::to_string(st.cols) + ") ";
        SCOPED_TRACE(tag);
        Twin p(*cpu, *gpu, n), g(*cpu, *gpu, n), buf(*cpu, *gpu, n, DType::f32);
        Buf master(*gpu, n, DType::f32);
        p.fill(160, -0.5, 0.5);
        master.write(p.c.read());
        g.fill(161);
        buf.fill(162, -0.1, 0.1);
        const Vec p0 = p.c.read();
        for (int t = 1; t <= 2; t++) {
            Muon mc{p.c.v(), g.c.v(), buf.c.v(), st.count, st.rows, st.cols, 0.02, 0.95, 0.1, 0.7, true, 5};
            Muon mg{p.g.v(), g.g.v(), buf.g.v(), st.count, st.rows, st.cols, 0.02, 0.95, 0.1, 0.7, true, 5, master.v(), 7, t, false};
            cpu->muon_update(mc);
            gpu->muon_update(mg);
        }
        EXPECT_CLOSE(tag + "momentum (f32)", buf.g.read(), buf.c.read(), kF32Tol);
        Vec dc = p.c.read(), dg = master.read();
        for (size_t i = 0; i < n; i++) dc[i] -= p0[i], dg[i] -= p0[i];
        EXPECT_CLOSE(tag + "update (master)", dg, dc, 2e-2);
        Vec rounded = master.read();
        for (auto& x : rounded) x = round_bf16(x);
        EXPECT_EQ(p.g.read(), rounded) << "bf16 parameters are not the master weights rounded to nearest";
    }
}

TEST_F(CudaKernels, AdamWRangeLearningRates) {
    const size_t n = 5000;
    const std::vector<ParamRange> ranges = {{0, 2000, true, 1.0}, {2048, 2952, false, 7.5}};
    Twin p(*cpu, *gpu, n, DType::f32), g(*cpu, *gpu, n, DType::f32), m(*cpu, *gpu, n, DType::f32), v(*cpu, *gpu, n, DType::f32);
    p.fill(170);
    g.fill(171);
    m.set(Vec(n, 0.0));
    v.set(Vec(n, 0.0));
    for (int t = 1; t <= 2; t++) {
        AdamW c{p.c.v(), g.c.v(), m.c.v(), v.c.v(), ranges.data(), 2, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, t};
        AdamW d{p.g.v(), g.g.v(), m.g.v(), v.g.v(), ranges.data(), 2, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1.0, t};
        cpu->adamw_update(c);
        gpu->adamw_update(d);
    }
    EXPECT_CLOSE("adamw per-range lr params", p.g.read(), p.c.read(), kF32Tol);
}

// One step of the modern model (every choice on) with Muon: the GPU's loss and
// gradients track the CPU's like plain GPT-2's (OneStepMatchesCpu's bounds),
// and one optimizer step moves the parameters alike.
TEST(CudaModel, ModernOneStepMatchesCpu) {
    SKIP_WITHOUT_CUDA();
    auto cpu = make_backend("cpu");
    auto gpu = make_gpu();
    ModelShape s = tiny_shape();
    s.arch.pos = PosEmb::rope;
    s.arch.norm = NormKind::rmsnorm;
    s.arch.qk_norm = true;
    s.arch.act = Activation::relu2;
    s.arch.bias = false;
    s.arch.tied_head = false;
    s.arch.softcap = 15;
    const int B = 4, T = 64;
    GPT2 mg(s, *gpu, B, T), mc(s, *cpu, B, T);
    mg.init_weights(42);
    mc.load_params_llmc(mg.params_llmc());
    auto x = random_tokens(size_t(B) * T, s.V, 100), y = random_tokens(size_t(B) * T, s.V, 101);
    const double dloss = 1.0 / (B * T);
    mc.zero_grad();
    mg.zero_grad();
    const double lc = mc.forward(x.data(), y.data(), true, dloss), lg = mg.forward(x.data(), y.data(), true, dloss);
    std::printf("  loss: gpu %.6f cpu %.6f\n", lg, lc);
    EXPECT_NEAR(lg, lc, 5e-3);
    mc.backward();
    mg.backward();
    for (const auto& t : mg.param_layout().tensors) EXPECT_CLOSE("grad " + t.name, mg.read_grad(t.name), mc.read_grad(t.name), 5e-2);
    OptimConfig oc;
    oc.type = "muon";
    oc.lr = 3e-3;
    Optimizer og(mg, oc), ocpu(mc, oc);
    og.step(mg.params(), mg.grads(), oc.lr, og.grad_norm(mg.grads()));
    ocpu.step(mc.params(), mc.grads(), oc.lr, ocpu.grad_norm(mc.grads()));
    for (const auto& t : mg.param_layout().tensors) EXPECT_CLOSE("after step " + t.name, mg.read_param(t.name), mc.read_param(t.name), kBf16Tol);
}

// run.cuda_graph on the GPU: the step recorded at step 2 and replayed gives
// the same losses, bit for bit, as the step launched op by op (every default
// kernel is deterministic), with gradient accumulation and clipping active.
TEST(CudaModel, RecordedStepMatchesDirect) {
    SKIP_WITHOUT_CUDA();
    auto run = [](bool graph) {
        test::TempDir dir;
        Config cfg = load_config(test::source_path("configs/tiny.yaml"),
                                 {"run.backend=cuda", "run.max_steps=12", "run.val_every=0", "run.val_batches=1", "optim.grad_clip=0.5",
                                  "run.total_batch_tokens=2048", std::string("run.cuda_graph=") + (graph ? "true" : "false"),
                                  "run.out_dir=" + dir.path});
        TrainOptions opt;
        opt.quiet = true;
        return train(cfg, opt);
    };
    const TrainResult g = run(true), d = run(false);
    EXPECT_EQ(g.step_graph, "replaying");
    EXPECT_EQ(g.graph_replays, 11);
    ASSERT_EQ(g.step_losses.size(), 12u);
    EXPECT_EQ(g.step_losses, d.step_losses);
    std::printf("  12 steps: graph %.0f tokens/s, direct %.0f tokens/s\n", g.tokens_per_s, d.tokens_per_s);
}

// kernels.matmul.dw_stream = 1 enqueues the weight and bias gradients on a
// second stream: the same products accumulate into each gradient in the same
// order, so two micro-steps give bit-identical gradients to dw_stream = 0,
// with separate and folded bias gradients, a chunked head (the forward's
// dlnf products, which must wait for nothing) and a fused head (whose weight
// gradient each chunk adds, in the forward, with beta 1). The trainer, with a recorded
// step and clipping, then gives bit-identical losses: the side stream joins
// the recording and every op that reads the gradients waits for it.
TEST(CudaModel, SideStreamWeightGradientsAreBitIdentical) {
    SKIP_WITHOUT_CUDA();
    const ModelShape s = tiny_shape();
    const int B = 4, T = 64;
    auto x = random_tokens(size_t(B) * T, s.V, 106), y = random_tokens(size_t(B) * T, s.V, 107);
    auto grads = [&](std::map<std::string, std::string> kernels, bool side) {
        if (side) kernels["matmul.dw_stream"] = "1";
        auto gpu = make_gpu(kernels);
        GPT2 m(s, *gpu, B, T);
        m.init_weights(42);
        m.zero_grad();
        for (int micro = 0; micro < 2; micro++) {
            m.forward(x.data(), y.data(), true, 0.5 / (B * T));
            m.backward();
        }
        std::map<std::string, Vec> out;
        for (const auto& t : m.param_layout().tensors) out[t.name] = m.read_grad(t.name);
        return out;
    };
    for (const auto& kernels : std::vector<std::map<std::string, std::string>>{
             {}, {{"bias_grad", "folded"}}, {{"head", "chunked"}, {"head.rows", "64"}}, {{"head", "fused"}, {"head.fused_rows", "72"}}}) {
        const auto main = grads(kernels, false), side = grads(kernels, true);
        for (const auto& [name, g] : main) {
            EXPECT_EQ(side.at(name), g) << name << " (kernels: " << kernels.size() << " overrides)";
            EXPECT_GT(rel_l2(g, Vec(g.size(), 0.0)), 0.0) << name;
        }
    }
    auto run = [](bool side) {
        test::TempDir dir;
        Config cfg = load_config(test::source_path("configs/tiny.yaml"),
                                 {"run.backend=cuda", "run.max_steps=6", "run.val_every=0", "run.val_batches=1", "optim.grad_clip=0.5",
                                  "run.total_batch_tokens=2048", "run.cuda_graph=true",
                                  std::string("kernels.matmul.dw_stream=") + (side ? "1" : "0"), "run.out_dir=" + dir.path});
        TrainOptions opt;
        opt.quiet = true;
        return train(cfg, opt);
    };
    const TrainResult a = run(false), b = run(true);
    EXPECT_EQ(b.step_graph, "replaying");
    ASSERT_EQ(b.step_losses.size(), 6u);
    EXPECT_EQ(b.step_losses, a.step_losses);
}

#endif  // GPT_HAVE_CUDA

}  // namespace
}  // namespace gpt
