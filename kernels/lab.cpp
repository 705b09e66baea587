// The kernel lab (see kernels/lab.h): the problems of each family's ops (their
// buffers, the call, the FLOP and byte counts, the error bounds), the case
// enumeration from the registry, and the check-and-time harness.
#include "kernels/lab.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <sstream>

#include "kernels/convert.h"
#include "kernels/error.h"

namespace gpt::lab {

namespace {

// ---------------------------------------------------------------------------
// Buffers.

enum class Kind { act, param, stat, f32, tokens };  // dtype: the backend's act/param/stat dtype, f32, or int32 tokens
enum class Role { in, out, inout };                 // out: overwritten (poisoned first); inout: accumulated into

struct Spec {
    Spec(std::string name_, size_t n_, Kind kind_, Role role_, double lo_ = -1, double hi_ = 1)
        : name(std::move(name_)), n(n_), kind(kind_), role(role_), lo(lo_), hi(hi_) {}
    Spec& bounds(double bf16, double f32) {
        bound_bf16 = bf16;
        bound_f32 = f32;
        return *this;
    }
    Spec& not_compared() {  // an input a prepare step fills (a forward's outputs for a backward)
        compare = false;
        return *this;
    }

    std::string name;
    size_t n;
    Kind kind;
    Role role;
    double lo = -1, hi = 1;  // uniform values (tokens: [0, hi))
    // Relative L2 bounds of an output: on a bf16 backend (CUDA) against the
    // float32 CPU, and on a float32 backend against the float64 CPU.
    double bound_bf16 = 1e-2, bound_f32 = 1e-5;
    bool compare = true;
    bool bf16_params_only = false;  // exists only where parameters are bf16 (the f32 master weights)
    std::string ref_name;           // compared with this reference buffer ("" = the same name)
};

DType dtype_of(Kind k, const Backend& be) {
    switch (k) {
        case Kind::act: return be.act_dtype();
        case Kind::param: return be.param_dtype();
        case Kind::stat: return be.stat_dtype();
        default: return DType::f32;
    }
}

// Element i of a buffer's values: a function of (seed, i) alone, so both
// backends get the same values and the buffer is written in chunks (a bench
// shape's logits are 3.3G elements: no host copy of them is ever made).
using Values = std::function<double(size_t)>;

// One buffer in a backend's memory.
class Buf {
public:
    Buf(Backend& be, size_t n, DType dt, bool tokens) : be_(&be), n_(n), dt_(dt), tokens_(tokens) {
        p_ = be.alloc(std::max<size_t>(1, bytes()), "kernel lab buffer");
    }
    ~Buf() { be_->free(p_); }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    size_t bytes() const { return n_ * elem(); }
    View v() const { return View{p_, dt_}; }
    const int32_t* tok() const { return static_cast<const int32_t*>(p_); }
    // Writes values(i) for every element, kChunk elements at a time.
    void write(const Values& values) {
        std::vector<double> x;
        std::vector<char> raw;
        for (size_t i0 = 0; i0 < n_; i0 += kChunk) {
            const size_t k = std::min(kChunk, n_ - i0);
            x.resize(k);
            for (size_t i = 0; i < k; i++) x[i] = values(i0 + i);
            raw.resize(k * elem());
            if (tokens_) {
                for (size_t i = 0; i < k; i++) reinterpret_cast<int32_t*>(raw.data())[i] = int32_t(x[i]);
            } else {
                from_double(x.data(), raw.data(), dt_, k);
            }
            be_->to_device(static_cast<char*>(p_) + i0 * elem(), raw.data(), raw.size());
        }
    }
    // True when no element is NaN or infinite (read back in chunks).
    bool all_finite() const {
        std::vector<char> raw;
        std::vector<double> x;
        for (size_t i0 = 0; i0 < n_ && !tokens_; i0 += kChunk) {
            const size_t k = std::min(kChunk, n_ - i0);
            raw.resize(k * elem());
            x.resize(k);
            be_->to_host(raw.data(), static_cast<const char*>(p_) + i0 * elem(), raw.size());
            to_double(raw.data(), dt_, x.data(), k);
            for (double v : x)
                if (!std::isfinite(v)) return false;
        }
        return true;
    }
    std::vector<double> read() const {
        std::vector<char> raw(bytes());
        be_->to_host(raw.data(), p_, raw.size());
        std::vector<double> out(n_);
        if (tokens_) {
            for (size_t i = 0; i < n_; i++) out[i] = reinterpret_cast<const int32_t*>(raw.data())[i];
        } else {
            to_double(raw.data(), dt_, out.data(), n_);
        }
        return out;
    }
    void poison() {  // all bytes 0xFF: NaN in bf16, f32 and f64
        const std::vector<unsigned char> raw(std::min(bytes(), kChunk * elem()), 0xFF);
        for (size_t b0 = 0; b0 < bytes(); b0 += raw.size())
            be_->to_device(static_cast<char*>(p_) + b0, raw.data(), std::min(raw.size(), bytes() - b0));
    }

private:
    static constexpr size_t kChunk = size_t(1) << 22;  // elements per host transfer
    size_t elem() const { return tokens_ ? 4 : dtype_size(dt_); }

    Backend* be_;
    void* p_ = nullptr;
    size_t n_;
    DType dt_;
    bool tokens_;
};

// The buffers of one problem on one backend, by name.
class Bufs {
public:
    View v(const std::string& name) const { return get(name).v(); }
    View opt(const std::string& name) const { return has(name) ? get(name).v() : View{}; }
    const int32_t* tok(const std::string& name) const { return get(name).tok(); }
    bool has(const std::string& name) const { return m_.count(name) > 0; }
    Buf& get(const std::string& name) const {
        auto it = m_.find(name);
        if (it == m_.end()) run_failed("kernel lab: no buffer '" + name + "'");
        return *it->second;
    }
    void add(const std::string& name, std::unique_ptr<Buf> b) { m_[name] = std::move(b); }

private:
    std::map<std::string, std::unique_ptr<Buf>> m_;
};

// ---------------------------------------------------------------------------
// Problems: one per family op.

struct Sizes {
    double act, param, stat;  // bytes per element of the tested backend
};

class Problem {
public:
    virtual ~Problem() = default;
    virtual std::vector<Spec> specs(const KernelProblem& p) const = 0;
    // Element i of a spec's values where plain uniform values will not do
    // (padded logits); `x` is the uniform value.
    virtual double adjust(const KernelProblem& p, const std::string& name, size_t i, double x) const { return x; }
    // Untimed, after the buffers are filled: the backward ops run their forward here.
    virtual void prepare(Backend& be, Bufs& b, const KernelProblem& p) const {}
    virtual void run(Backend& be, Bufs& b, const KernelProblem& p) const = 0;
    virtual double flops(const Case& c) const = 0;
    virtual double bytes(const Case& c, const Sizes& s) const = 0;
};

int I(const KernelProblem& p, const char* k) { return int(p.dim(k)); }

// attention: B, T, NH, HD; qkv (B,T,3C), C = NH*HD.
class AttentionForward : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t B = p.dim("B"), T = p.dim("T"), C = p.dim("NH") * p.dim("HD"), NH = p.dim("NH");
        // lse: f32 sums of products of identical bf16 inputs
        return {Spec("qkv", B * T * 3 * C, Kind::act, Role::in, -2, 2), Spec("out", B * T * C, Kind::act, Role::out),
                Spec("lse", B * NH * T, Kind::stat, Role::out).bounds(1e-3, 1e-5)};
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.attention_forward({b.v("out"), b.v("lse"), b.v("qkv"), I(p, "B"), I(p, "T"), I(p, "NH") * I(p, "HD"), I(p, "NH")});
    }
    // Causal: HD * T(T+1) multiply-adds per product per (b, h), two products.
    double flops(const Case& c) const override { return 2.0 * causal(c.problem); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double BT = double(c.problem.dim("B")) * c.problem.dim("T"), C = double(c.problem.dim("NH")) * c.problem.dim("HD");
        return BT * 4 * C * s.act + double(c.problem.dim("B")) * c.problem.dim("NH") * c.problem.dim("T") * s.stat;
    }
    static double causal(const KernelProblem& p) {
        const double T = double(p.dim("T"));
        return double(p.dim("B")) * p.dim("NH") * double(p.dim("HD")) * T * (T + 1);
    }
};

class AttentionBackward : public AttentionForward {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t B = p.dim("B"), T = p.dim("T"), C = p.dim("NH") * p.dim("HD"), NH = p.dim("NH");
        // dqkv: P and dS are rounded to bf16 for the tensor-core products, three roundings deep
        return {Spec("qkv", B * T * 3 * C, Kind::act, Role::in, -2, 2), Spec("out", B * T * C, Kind::act, Role::in).not_compared(),
                Spec("lse", B * NH * T, Kind::stat, Role::in).not_compared(), Spec("dout", B * T * C, Kind::act, Role::in),
                Spec("dqkv", B * T * 3 * C, Kind::act, Role::out).bounds(2e-2, 1e-5)};
    }
    // Each backend's backward takes its own forward's out and lse, as in training.
    void prepare(Backend& be, Bufs& b, const KernelProblem& p) const override { AttentionForward::run(be, b, p); }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.attention_backward({b.v("dqkv"), b.v("dout"), b.v("qkv"), b.v("out"), b.v("lse"), I(p, "B"), I(p, "T"),
                               I(p, "NH") * I(p, "HD"), I(p, "NH")});
    }
    // flash (and wgmma's default backward, which is flash's) recomputes the scores in both of its kernels:
    // 7 products (S, dP, dV, dK; S, dP, dQ); cuDNN's and wgmma_bwd = 1 do 5.
    double flops(const Case& c) const override {
        const bool five = c.variant == "cudnn" || (c.variant == "wgmma" && KernelChoices(c.choices()).param("attention", "wgmma_bwd") != 0);
        return (five ? 5.0 : 7.0) * causal(c.problem);
    }
    double bytes(const Case& c, const Sizes& s) const override {
        const double BT = double(c.problem.dim("B")) * c.problem.dim("T"), C = double(c.problem.dim("NH")) * c.problem.dim("HD");
        const double rows = double(c.problem.dim("B")) * c.problem.dim("NH") * c.problem.dim("T");
        return BT * 8 * C * s.act + 2 * rows * s.stat;  // qkv, out, dout read; dqkv written; lse and D
    }
};

// layernorm: N, C, rms (0: LayerNorm, 1: RMSNorm), params (1: a weight, and
// for LayerNorm a bias; 0: parameter-free). The family's variants are
// residual_layernorm_forward fused or as two ops; GPT-2's norm (rms=0,
// params=1) runs its own kernels, every other combination the general ones.
bool rms_of(const KernelProblem& p) { return p.dim("rms") != 0; }
bool params_of(const KernelProblem& p) {  // absent: GPT-2's (with parameters)
    for (const auto& [k, v] : p.dims)
        if (k == "params") return v != 0;
    return true;
}

class LayerNormForward : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t N = p.dim("N"), C = p.dim("C");
        const bool rms = rms_of(p), prm = params_of(p);
        // On bf16 backends the statistics are of the rounded residual: the bf16 bound.
        std::vector<Spec> s = {Spec("a", N * C, Kind::act, Role::in, -2, 2), Spec("b", N * C, Kind::act, Role::in)};
        if (prm) s.push_back(Spec("weight", C, Kind::param, Role::in, 0.5, 1.5));
        if (prm && !rms) s.push_back(Spec("bias", C, Kind::param, Role::in));  // RMSNorm has no bias
        s.push_back(Spec("residual", N * C, Kind::act, Role::out));
        s.push_back(Spec("out", N * C, Kind::act, Role::out));
        if (!rms) s.push_back(Spec("mean", N, Kind::stat, Role::out));  // RMSNorm saves rstd only
        s.push_back(Spec("rstd", N, Kind::stat, Role::out));
        return s;
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.residual_layernorm_forward({b.v("residual"), b.v("out"), b.opt("mean"), b.v("rstd"), b.v("a"), b.v("b"), b.opt("weight"),
                                       b.opt("bias"), I(p, "N"), I(p, "C"), rms_of(p)});
    }
    double flops(const Case& c) const override { return (rms_of(c.problem) ? 6.0 : 9.0) * double(c.problem.dim("N")) * c.problem.dim("C"); }
    // fused: a, b read, residual and out written; separate: the residual is written, then read again.
    double bytes(const Case& c, const Sizes& s) const override {
        const double NC = double(c.problem.dim("N")) * c.problem.dim("C");
        return NC * (c.variant == "separate" ? 5 : 4) * s.act + (rms_of(c.problem) ? 1.0 : 2.0) * c.problem.dim("N") * s.stat;
    }
};

class LayerNormBackward : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t N = p.dim("N"), C = p.dim("C");
        const bool rms = rms_of(p), prm = params_of(p);
        std::vector<Spec> s = {Spec("inp", N * C, Kind::act, Role::in, -2, 3)};
        if (prm) s.push_back(Spec("weight", C, Kind::param, Role::in, 0.5, 1.5));
        if (prm && !rms) s.push_back(Spec("bias", C, Kind::param, Role::in));
        s.push_back(Spec("fwd_out", N * C, Kind::act, Role::in).not_compared());
        if (!rms) s.push_back(Spec("mean", N, Kind::stat, Role::in).not_compared());
        s.push_back(Spec("rstd", N, Kind::stat, Role::in).not_compared());
        s.push_back(Spec("dout", N * C, Kind::act, Role::in));
        s.push_back(Spec("dinp", N * C, Kind::act, Role::inout));  // adds into the residual stream's gradient
        if (prm) s.push_back(Spec("dweight", C, Kind::param, Role::inout));
        if (prm && !rms) s.push_back(Spec("dbias", C, Kind::param, Role::inout));
        s.push_back(Spec("dres_bias", C, Kind::param, Role::inout, -5, 5));  // the folded projection bias gradient
        return s;
    }
    void prepare(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.layernorm_forward({b.v("fwd_out"), b.opt("mean"), b.v("rstd"), b.v("inp"), b.opt("weight"), b.opt("bias"), I(p, "N"), I(p, "C"),
                              rms_of(p)});
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.layernorm_backward({b.v("dinp"), b.opt("dweight"), b.opt("dbias"), b.v("dout"), b.v("inp"), b.opt("weight"), b.opt("mean"),
                               b.v("rstd"), I(p, "N"), I(p, "C"), rms_of(p), b.v("dres_bias")});
    }
    double flops(const Case& c) const override { return 14.0 * double(c.problem.dim("N")) * c.problem.dim("C"); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double NC = double(c.problem.dim("N")) * c.problem.dim("C");
        return NC * 4 * s.act + (rms_of(c.problem) ? 1.0 : 2.0) * c.problem.dim("N") * s.stat;  // dout, inp, dinp read and written
    }
};

// matmul and cpu_matmul: N, C, OC, bias (0/1), gelu (0/1), relu2 (0/1): the
// activation fused into the product (forward: pre_act saved, out = act(pre_act);
// backward: dinp times act'(dact_pre), and the activation layer's folded bias
// gradient dact_dbias), GELU or ReLU², at most one of them.
Activation act_of(const KernelProblem& p, bool* fused) {
    const bool gelu = p.dim("gelu") != 0, relu2 = p.dim("relu2") != 0;
    if (gelu && relu2) bad_input("kernel lab: matmul problem " + p.text() + ": gelu=1 and relu2=1 (one fused activation at most)");
    *fused = gelu || relu2;
    return relu2 ? Activation::relu2 : Activation::gelu;
}
bool fused_act(const KernelProblem& p) {
    bool fused = false;
    act_of(p, &fused);
    return fused;
}

class MatmulForward : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t N = p.dim("N"), C = p.dim("C"), OC = p.dim("OC");
        std::vector<Spec> s = {Spec("inp", N * C, Kind::act, Role::in), Spec("weight", OC * C, Kind::param, Role::in, -0.2, 0.2),
                               Spec("out", N * OC, Kind::act, Role::out)};
        if (p.dim("bias")) s.push_back(Spec("bias", OC, Kind::param, Role::in));
        if (fused_act(p)) s.push_back(Spec("pre_act", N * OC, Kind::act, Role::out));
        return s;
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        bool fused = false;
        const Activation act = act_of(p, &fused);
        be.matmul_forward({b.v("out"), b.v("inp"), b.v("weight"), b.opt("bias"), I(p, "N"), I(p, "C"), I(p, "OC"), b.opt("pre_act"), act});
    }
    double flops(const Case& c) const override { return 2.0 * double(c.problem.dim("N")) * c.problem.dim("C") * c.problem.dim("OC"); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double N = double(c.problem.dim("N")), C = double(c.problem.dim("C")), OC = double(c.problem.dim("OC"));
        // GELU's epilogue writes out and pre_act; ReLU² has none on cuBLASLt: the
        // product writes pre_act, then one pass reads it and writes it (with the bias) and out.
        const double act = fused_act(c.problem) ? (c.problem.dim("relu2") && c.family == "matmul" ? 3 : 1) : 0;
        return (N * C + N * OC * (1 + act)) * s.act + OC * C * s.param;
    }
};

class MatmulBackward : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t N = p.dim("N"), C = p.dim("C"), OC = p.dim("OC");
        std::vector<Spec> s = {Spec("dout", N * OC, Kind::act, Role::in), Spec("inp", N * C, Kind::act, Role::in),
                               Spec("weight", OC * C, Kind::param, Role::in, -0.2, 0.2), Spec("dinp", N * C, Kind::act, Role::out),
                               Spec("dweight", OC * C, Kind::param, Role::inout, -0.5, 0.5)};
        if (p.dim("bias")) s.push_back(Spec("dbias", OC, Kind::param, Role::inout, -5, 5));
        if (fused_act(p)) {
            s.push_back(Spec("dact_pre", N * C, Kind::act, Role::in, -3, 3));
            s.push_back(Spec("dact_dbias", C, Kind::param, Role::inout, -5, 5));  // the folded activation-layer bias gradient
        }
        return s;
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        bool fused = false;
        const Activation act = act_of(p, &fused);
        be.matmul_backward({b.v("dinp"), b.v("dweight"), b.opt("dbias"), b.v("dout"), b.v("inp"), b.v("weight"), I(p, "N"), I(p, "C"),
                            I(p, "OC"), b.opt("dact_pre"), act, b.opt("dact_dbias")});
    }
    double flops(const Case& c) const override { return 4.0 * double(c.problem.dim("N")) * c.problem.dim("C") * c.problem.dim("OC"); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double N = double(c.problem.dim("N")), C = double(c.problem.dim("C")), OC = double(c.problem.dim("OC"));
        return (N * OC + 2 * N * C + (fused_act(c.problem) ? N * C : 0)) * s.act + 3 * OC * C * s.param;
    }
};

// classifier: N, V, Vp, softcap (0: none, else the cap of z = cap tanh(x / cap),
// model.logit_softcap); softmax, loss and dlogits in place.
class Classifier : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t N = p.dim("N"), Vp = p.dim("Vp");
        // losses: an f32 softmax of identical bf16 logits
        return {Spec("logits", N * Vp, Kind::act, Role::inout, -4, 4), Spec("losses", N, Kind::stat, Role::out).bounds(1e-4, 1e-5),
                Spec("targets", N, Kind::tokens, Role::in, 0, double(p.dim("V")))};
    }
    double adjust(const KernelProblem& p, const std::string& name, size_t i, double x) const override {
        // Large values in the padded columns: they must not count.
        return name == "logits" && i % size_t(p.dim("Vp")) >= size_t(p.dim("V")) ? 40.0 : x;
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.classifier({b.v("logits"), b.v("losses"), b.tok("targets"), I(p, "N"), I(p, "V"), I(p, "Vp"), 1.0 / double(p.dim("N")), true,
                       double(p.dim("softcap"))});
    }
    // exp, the max/sum and dlogits; the cap adds a tanh and its derivative per logit read (counted as 4).
    double flops(const Case& c) const override {
        return (c.problem.dim("softcap") ? 10.0 : 6.0) * double(c.problem.dim("N")) * c.problem.dim("V");
    }
    // The row is read for the max and sum, read again and written with dlogits
    // (onepass, which never runs with a cap: read once, written once).
    double bytes(const Case& c, const Sizes& s) const override {
        const bool one = c.variant == "onepass" && !c.problem.dim("softcap");
        return (one ? 2.0 : 3.0) * double(c.problem.dim("N")) * c.problem.dim("Vp") * s.act;
    }
};

// adamw: n elements in three ranges (two decayed, one not, gaps untouched);
// f32 master weights where the parameters are bf16, compared with the
// reference's parameters.
class AdamWUpdate : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t n = p.dim("n");
        // The f32 master weights: the f32 update of the same values as the reference's f32 parameters.
        Spec master("master", n, Kind::f32, Role::inout);
        master.bf16_params_only = true;
        master.ref_name = "params";
        master.bound_bf16 = 1e-5;
        // m and v: f32 state updated from identical values.
        return {Spec("params", n, Kind::param, Role::inout), Spec("grads", n, Kind::param, Role::in, -0.1, 0.1),
                Spec("m", n, Kind::stat, Role::inout, -0.01, 0.01).bounds(1e-5, 1e-5), Spec("v", n, Kind::stat, Role::inout, 1e-5, 1e-4).bounds(1e-5, 1e-5),
                master};
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        const size_t n = p.dim("n");
        const std::vector<ParamRange> ranges = {{0, n * 3 / 10, true}, {n * 3 / 10 + 64 < n ? n * 3 / 10 + 64 : n, n / 2, false},
                                                {n * 8 / 10 + 64 < n ? n * 8 / 10 + 64 : n, n - std::min(n, n * 8 / 10 + 64), true}};
        AdamW a{};
        a.params = b.v("params");
        a.grads = b.v("grads");
        a.m = b.v("m");
        a.v = b.v("v");
        a.ranges = ranges.data();
        a.n_ranges = int(ranges.size());
        a.lr = 1e-3, a.beta1 = 0.9, a.beta2 = 0.95, a.eps = 1e-8, a.weight_decay = 0.1, a.grad_scale = 0.7, a.t = 3;
        a.master = b.opt("master");
        a.seed = 1234;
        a.stochastic_rounding = true;  // the family's stochastic_rounding parameter decides; either way within a bf16 ulp
        be.adamw_update(a);
    }
    double flops(const Case& c) const override { return 12.0 * double(c.problem.dim("n")); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double n = double(c.problem.dim("n"));
        // params and grads read, params written; m, v read and written; with bf16 parameters the f32 master too.
        return n * (3 * s.param + 4 * s.stat + (s.param < 4 ? 8.0 : 0.0));
    }
};

// rope: B, T, NH, HD; q and k of qkv (B,T,3C) rotated in place (v untouched),
// forward or backward (the inverse rotation, applied to dqkv).
class RopeOp : public Problem {
public:
    explicit RopeOp(bool backward) : backward_(backward) {}
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t BT = size_t(p.dim("B")) * p.dim("T"), C = size_t(p.dim("NH")) * p.dim("HD");
        return {Spec("qkv", BT * 3 * C, Kind::act, Role::inout, -2, 2)};
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.rope({b.v("qkv"), I(p, "B") * I(p, "T"), I(p, "T"), 0, I(p, "NH") * I(p, "HD"), I(p, "NH"), 10000.0, backward_});
    }
    // Per rotated pair: 4 multiplies and 2 adds, over the q and k halves.
    double flops(const Case& c) const override { return 6.0 * double(c.problem.dim("B")) * c.problem.dim("T") * c.problem.dim("NH") * c.problem.dim("HD"); }
    double bytes(const Case& c, const Sizes& s) const override {
        return 4.0 * double(c.problem.dim("B")) * c.problem.dim("T") * c.problem.dim("NH") * c.problem.dim("HD") * s.act;  // q, k read and written
    }

private:
    bool backward_;
};

// qknorm: B, T, NH, HD; each head's q and k of qkv (B,T,3C) RMS-normalised in
// place, rstd (B,T,2NH) saved; the backward takes dqkv in place from the
// normalised qkv and rstd its forward (prepare) leaves.
class QKNormForward : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t BT = size_t(p.dim("B")) * p.dim("T"), NH = p.dim("NH"), C = NH * p.dim("HD");
        return {Spec("qkv", BT * 3 * C, Kind::act, Role::inout, -2, 2), Spec("rstd", BT * 2 * NH, Kind::stat, Role::out).bounds(1e-4, 1e-5)};
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.qknorm_forward({b.v("qkv"), b.v("rstd"), I(p, "B") * I(p, "T"), I(p, "NH") * I(p, "HD"), I(p, "NH")});
    }
    double flops(const Case& c) const override { return 3.0 * 2 * double(c.problem.dim("B")) * c.problem.dim("T") * c.problem.dim("NH") * c.problem.dim("HD"); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double BT = double(c.problem.dim("B")) * c.problem.dim("T");
        return 4.0 * BT * c.problem.dim("NH") * c.problem.dim("HD") * s.act + 2.0 * BT * c.problem.dim("NH") * s.stat;
    }
};

class QKNormBackward : public QKNormForward {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t BT = size_t(p.dim("B")) * p.dim("T"), NH = p.dim("NH"), C = NH * p.dim("HD");
        return {Spec("qkv", BT * 3 * C, Kind::act, Role::in, -2, 2).not_compared(), Spec("rstd", BT * 2 * NH, Kind::stat, Role::in).not_compared(),
                Spec("dqkv", BT * 3 * C, Kind::act, Role::inout)};
    }
    void prepare(Backend& be, Bufs& b, const KernelProblem& p) const override { QKNormForward::run(be, b, p); }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        be.qknorm_backward({b.v("dqkv"), b.v("qkv"), b.v("rstd"), I(p, "B") * I(p, "T"), I(p, "NH") * I(p, "HD"), I(p, "NH")});
    }
    double flops(const Case& c) const override { return 2 * QKNormForward::flops(c); }
    double bytes(const Case& c, const Sizes& s) const override {
        const double BT = double(c.problem.dim("B")) * c.problem.dim("T");
        return 6.0 * BT * c.problem.dim("NH") * c.problem.dim("HD") * s.act + 2.0 * BT * c.problem.dim("NH") * s.stat;  // qkv read, dqkv read and written
    }
};

// muon: count, rows, cols; one stack of `count` (rows, cols) matrices, 5
// Newton-Schulz steps, Nesterov momentum; f32 master weights where the
// parameters are bf16, compared with the reference's parameters.
class MuonUpdate : public Problem {
public:
    std::vector<Spec> specs(const KernelProblem& p) const override {
        const size_t n = size_t(p.dim("count")) * p.dim("rows") * p.dim("cols");
        Spec master("master", n, Kind::f32, Role::inout);
        master.bf16_params_only = true;
        master.ref_name = "params";
        master.bound_bf16 = 1e-3;  // TF32 Newton-Schulz products against the f32 CPU
        return {Spec("params", n, Kind::param, Role::inout), Spec("grads", n, Kind::param, Role::in, -0.1, 0.1),
                Spec("momentum", n, Kind::stat, Role::inout, -0.01, 0.01).bounds(1e-5, 1e-5), master};
    }
    void run(Backend& be, Bufs& b, const KernelProblem& p) const override {
        Muon u{b.v("params"), b.v("grads"), b.v("momentum"), I(p, "count"), I(p, "rows"), I(p, "cols"), 0.05, 0.95, 0.1, 0.7, true, 5};
        u.master = b.opt("master");
        u.seed = 1234;
        u.t = 3;
        be.muon_update(u);
    }
    // Per matrix (r <= c its short side) and step: X X^T (2 r r c), b A + c A A (2 r^3), (..) X (2 r r c).
    double flops(const Case& c) const override {
        const double r = double(std::min(c.problem.dim("rows"), c.problem.dim("cols"))), k = double(std::max(c.problem.dim("rows"), c.problem.dim("cols")));
        return double(c.problem.dim("count")) * 5 * (4 * r * r * k + 2 * r * r * r);
    }
    double bytes(const Case& c, const Sizes& s) const override {
        const double n = double(c.problem.dim("count")) * c.problem.dim("rows") * c.problem.dim("cols");
        return n * (3 * s.param + 2 * s.stat + (s.param < 4 ? 8.0 : 0.0));
    }
};

struct OpEntry {
    const char* family;
    const char* op;
    const Problem* problem;
};

const std::vector<OpEntry>& op_table() {
    static const AttentionForward attn_fwd;
    static const AttentionBackward attn_bwd;
    static const LayerNormForward ln_fwd;
    static const LayerNormBackward ln_bwd;
    static const MatmulForward mm_fwd;
    static const MatmulBackward mm_bwd;
    static const Classifier cls;
    static const AdamWUpdate adamw;
    static const RopeOp rope_fwd(false), rope_bwd(true);
    static const QKNormForward qkn_fwd;
    static const QKNormBackward qkn_bwd;
    static const MuonUpdate muon;
    static const std::vector<OpEntry> table = {
        {"attention", "forward", &attn_fwd}, {"attention", "backward", &attn_bwd}, {"layernorm", "forward", &ln_fwd},
        {"layernorm", "backward", &ln_bwd},  {"matmul", "forward", &mm_fwd},       {"matmul", "backward", &mm_bwd},
        {"cpu_matmul", "forward", &mm_fwd},  {"cpu_matmul", "backward", &mm_bwd},  {"classifier", "forward_backward", &cls},
        {"adamw", "update", &adamw},         {"rope", "forward", &rope_fwd},     {"rope", "backward", &rope_bwd},
        {"qknorm", "forward", &qkn_fwd},     {"qknorm", "backward", &qkn_bwd},   {"muon", "update", &muon},
    };
    return table;
}

const Problem& problem_of(const std::string& family, const std::string& op) {
    for (const auto& e : op_table())
        if (family == e.family && op == e.op) return *e.problem;
    bad_input("kernel lab: family '" + family + "' has no op '" + op + "'");
}

KernelProblem P(const std::string& op, std::vector<std::pair<std::string, long>> dims) { return KernelProblem{op, std::move(dims)}; }

// ---------------------------------------------------------------------------
// Errors.

double rel_l2(const std::vector<double>& got, const std::vector<double>& ref) {
    if (got.size() != ref.size()) return INFINITY;
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (std::isnan(got[i]) || std::isnan(ref[i])) return INFINITY;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// x rounded to the precision of dtype dt.
double round_to(double x, DType dt) {
    if (dt == DType::bf16) return bf16_to_double(double_to_bf16(x));
    if (dt == DType::f32) return double(float(x));
    return x;
}

std::string fmt(const char* f, double x) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, x);
    return buf;
}

}  // namespace

// ---------------------------------------------------------------------------

std::map<std::string, std::string> Case::choices() const {
    std::map<std::string, std::string> m{{family, variant}};
    for (const auto& [k, v] : params) m[family + "." + k] = std::to_string(v);
    return m;
}

std::string Case::name() const {
    std::string s = family + " " + variant;
    for (const auto& [k, v] : params) s += " " + k + "=" + std::to_string(v);
    return s + " | " + problem.text();
}

std::vector<std::string> ops(const std::string& family) {
    std::vector<std::string> out;
    for (const auto& e : op_table())
        if (family == e.family) out.push_back(e.op);
    return out;
}

std::vector<KernelProblem> shapes(const std::string& family, const std::string& op, ShapeSet set, const std::string& backend) {
    const bool tests = set == ShapeSet::tests, cpu = backend == "cpu";
    if (family == "attention") {
        if (!tests) return {P(op, {{"B", 64}, {"T", 1024}, {"NH", 12}, {"HD", 64}})};
        std::vector<KernelProblem> v;
        // odd B and T not a multiple of any tile; head dim 128; the tiny config's 32; one position; GPT-2's 12 heads
        for (auto [B, T, NH, HD] : {std::array<long, 4>{3, 77, 4, 64}, {2, 130, 2, 128}, {4, 64, 4, 32}, {1, 1, 2, 64}, {2, 256, 12, 64}})
            v.push_back(P(op, {{"B", B}, {"T", T}, {"NH", NH}, {"HD", HD}}));
        return v;
    }
    if (family == "layernorm") {
        auto ln = [&](long N, long C, long rms, long params) { return P(op, {{"N", N}, {"C", C}, {"rms", rms}, {"params", params}}); };
        // GPT-2's LayerNorm, and RMSNorm (model.norm: rmsnorm), which the modern configurations use
        if (!tests) return {ln(cpu ? 4096 : 65536, 768, 0, 1), ln(cpu ? 4096 : 65536, 768, 1, 1)};
        // C = 72, 768 and 1600 (the vector path), C = 100 (C % 8 != 0: the scalar path); every
        // norm: LayerNorm and RMSNorm, with parameters and parameter-free (model.norm_params: false)
        return {ln(231, 72, 0, 1),  ln(231, 768, 0, 1), ln(231, 1600, 0, 1), ln(231, 100, 0, 1), ln(231, 72, 1, 1), ln(231, 1600, 1, 1),
                ln(231, 100, 1, 1), ln(231, 768, 1, 0), ln(231, 100, 1, 0),  ln(231, 768, 0, 0), ln(231, 100, 0, 0)};
    }
    if (family == "matmul" || family == "cpu_matmul") {
        auto mm = [&](long N, long C, long OC, long bias, long gelu, long relu2 = 0) {
            return P(op, {{"N", N}, {"C", C}, {"OC", OC}, {"bias", bias}, {"gelu", gelu}, {"relu2", relu2}});
        };
        if (!tests && family == "matmul")  // GPT-2 124M at B=64: qkv, fc (+GELU, or +ReLU²), fcproj, lm_head
            return {mm(65536, 768, 2304, 1, 0), mm(65536, 768, 3072, 1, 1), mm(65536, 768, 3072, 1, 0, 1), mm(65536, 3072, 768, 1, 0),
                    mm(65536, 768, 50304, 0, 0)};
        if (!tests) return {mm(256, 768, 2304, 1, 0), mm(256, 768, 3072, 1, 1), mm(256, 768, 3072, 1, 0, 1)};  // the CPU: a few layers' worth
        if (family == "cpu_matmul")
            return {mm(37, 24, 40, 1, 1), mm(37, 24, 40, 0, 0), mm(5, 7, 3, 1, 1), mm(37, 24, 40, 1, 0, 1), mm(5, 7, 3, 0, 0, 1)};
        // awkward sizes, odd leading dimensions, several bias-gradient chunks, GPT-2's qkv, the padded vocabulary; ReLU² with and without bias
        return {mm(111, 72, 200, 1, 1),     mm(111, 72, 200, 0, 0),  mm(111, 36, 100, 1, 1),      mm(5, 7, 3, 1, 1),
                mm(1100, 64, 96, 1, 0),     mm(512, 768, 2304, 1, 0), mm(256, 128, 50304, 0, 0),  mm(111, 72, 200, 1, 0, 1),
                mm(1100, 36, 100, 0, 0, 1), mm(5, 7, 3, 1, 0, 1)};
    }
    if (family == "classifier") {
        auto cls = [&](long N, long V, long Vp, long cap) { return P(op, {{"N", N}, {"V", V}, {"Vp", Vp}, {"softcap", cap}}); };
        // GPT-2's vocabulary, and with the logit soft cap (model.logit_softcap: 15, modded-nanogpt's)
        if (!tests) return {cls(65536, 50257, 50304, 0), cls(65536, 50257, 50304, 15)};
        // caps of 5 and 15 on logits in [-4, 4): the cap bends them visibly; Vp % 8 != 0 (the scalar kernel) with and without
        return {cls(231, 1000, 1024, 0), cls(64, 50257, 50304, 0), cls(5, 64, 128, 0), cls(231, 1000, 1024, 5),
                cls(64, 50257, 50304, 15), cls(7, 61, 67, 0), cls(7, 61, 67, 5)};
    }
    if (family == "rope" || family == "qknorm") {
        auto heads = [&](long B, long T, long NH, long HD) { return P(op, {{"B", B}, {"T", T}, {"NH", NH}, {"HD", HD}}); };
        if (!tests) return {heads(cpu ? 4 : 64, 1024, 12, 64)};
        // odd B and T, head dims 32 and 128, one position
        return {heads(3, 77, 4, 64), heads(2, 33, 2, 128), heads(4, 64, 6, 32), heads(1, 1, 2, 64)};
    }
    if (family == "muon") {
        auto stack = [&](long count, long rows, long cols) { return P(op, {{"count", count}, {"rows", rows}, {"cols", cols}}); };
        if (!tests) return {stack(3, 768, 768), stack(1, 3072, 768), stack(1, 768, 3072)};  // GPT-2 124M: q, k, v; fc; fcproj
        return {stack(1, 5, 5), stack(3, 4, 7), stack(2, 9, 4), stack(2, 72, 200)};  // square, wide, tall, a larger odd one
    }
    if (family == "adamw") {
        if (!tests) return {P(op, {{"n", 124475904}})};
        return {P(op, {{"n", 10000}}), P(op, {{"n", (1 << 20) + 12345}})};
    }
    return {};
}

KernelProblem parse_shape(const std::string& family, const std::string& op, const std::string& text, const std::string& backend) {
    const auto base = shapes(family, op, ShapeSet::bench, backend);
    if (base.empty()) bad_input("kernel lab: no shapes for " + family + " " + op);
    KernelProblem p = base.front();
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const auto eq = item.find('=');
        std::string known;
        for (const auto& [k, v] : p.dims) known += (known.empty() ? "" : ", ") + k;
        if (eq == std::string::npos) bad_input("--shape '" + text + "': '" + item + "' is not key=value (keys of " + family + " " + op + ": " + known + ")");
        const std::string key = item.substr(0, eq), val = item.substr(eq + 1);
        auto it = std::find_if(p.dims.begin(), p.dims.end(), [&](const auto& d) { return d.first == key; });
        if (it == p.dims.end()) bad_input("--shape '" + text + "': " + family + " " + op + " has no dimension '" + key + "' (" + known + ")");
        char* end = nullptr;
        const long x = std::strtol(val.c_str(), &end, 10);
        if (val.empty() || *end || x < 0) bad_input("--shape '" + text + "': " + key + "='" + val + "' is not a non-negative integer");
        it->second = x;
    }
    return p;
}

std::vector<Case> cases(const std::string& family, const std::vector<KernelProblem>& problems) {
    const KernelFamily* f = find_kernel_family(family);
    if (!f) bad_input("unknown kernel family '" + family + "'");
    // Every combination of the values of the parameters a variant reads on an
    // op, registry order, the first parameter varying slowest.
    auto reads = [](const std::vector<std::string>& names, const std::string& x) {
        return names.empty() || std::find(names.begin(), names.end(), x) != names.end();
    };
    auto combos = [&](const std::string& variant, const std::string& op) {
        std::vector<std::vector<std::pair<std::string, int>>> all = {{}};
        for (const auto& prm : f->params) {
            if (!reads(prm.variants, variant) || !reads(prm.ops, op)) continue;
            std::vector<std::vector<std::pair<std::string, int>>> next;
            for (const auto& c : all)
                for (int v : prm.values) {
                    auto d = c;
                    d.push_back({prm.name, v});
                    next.push_back(d);
                }
            all = next;
        }
        return all;
    };
    std::vector<Case> out;
    for (const auto& pr : problems)
        for (const auto& variant : f->variants)
            for (const auto& c : combos(variant, pr.op)) out.push_back(Case{family, variant, c, pr});
    return out;
}

std::string can_run(const Case& c, const DeviceCaps& caps) {
    const KernelFamily* f = find_kernel_family(c.family);
    if (!f) return "unknown kernel family '" + c.family + "'";
    if (std::find(f->backends.begin(), f->backends.end(), caps.backend) == f->backends.end())
        return "the " + caps.backend + " backend does not read kernels." + c.family;
    return f->can_run ? f->can_run(c.problem, KernelChoices(c.choices()), caps) : "";
}

std::unique_ptr<Backend> reference_for(const std::string& backend) { return make_backend(backend == "cpu" ? "cpu-f64" : "cpu"); }

namespace {
Result run_on(Backend& be_ref, const Case& c, Backend& reference, const Timing* timing, uint64_t seed);
}

Result run(const std::string& backend, const Case& c, Backend& reference, const Timing* timing, uint64_t seed) {
    BackendOptions o;
    o.kernels = KernelChoices(c.choices());
    auto be = make_backend(backend, o);
    const std::string why = can_run(c, be->device_caps());
    if (!why.empty()) {
        Result r;
        r.c = c;
        r.cannot_run = why;
        return r;
    }
    return run_on(*be, c, reference, timing, seed);
}

Result run_twin(const Case& c, Backend& reference, uint64_t seed) {
    auto be = make_backend("cpu");
    return run_on(*be, c, reference, nullptr, seed);
}

namespace {

Result run_on(Backend& be_ref, const Case& c, Backend& reference, const Timing* timing, uint64_t seed) {
    Result r;
    r.c = c;
    Backend* be = &be_ref;
    const Problem& prob = problem_of(c.family, c.problem.op);
    const bool bf16_params = be->param_dtype() == DType::bf16;

    std::vector<Spec> specs = prob.specs(c.problem);
    specs.erase(std::remove_if(specs.begin(), specs.end(), [&](const Spec& s) { return s.bf16_params_only && !bf16_params; }), specs.end());

    // The values: uniform in [lo, hi) away from zero, rounded to the tested
    // backend's precision, from a counter-based stream (splitmix64 of the
    // seed, the buffer and the index), so any element can be made alone.
    auto values_of = [&](const Spec& s) -> Values {
        const std::string& key = s.ref_name.empty() ? s.name : s.ref_name;  // the master weights take the parameters' values
        uint64_t h = seed * 0x9E3779B97F4A7C15ull;
        for (char ch : key) h = (h ^ uint64_t(uint8_t(ch))) * 1099511628211ull;
        const DType dt = dtype_of(s.kind, *be);
        const double floor = 1e-3 * std::max(std::fabs(s.lo), std::fabs(s.hi));
        const bool tokens = s.kind == Kind::tokens;
        const Spec spec = s;
        return [h, dt, floor, tokens, spec, &prob, &c](size_t i) {
            for (uint64_t attempt = 0;; attempt++) {
                uint64_t z = h + (uint64_t(i) * 4 + attempt + 1) * 0x9E3779B97F4A7C15ull;
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
                z ^= z >> 31;
                const double u = double(z >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
                if (tokens) return double(uint64_t(u * std::max(1.0, spec.hi)));
                const double v = round_to(spec.lo + (spec.hi - spec.lo) * u, dt);
                if (std::fabs(v) >= floor || attempt >= 64) return prob.adjust(c.problem, spec.name, i, v);
            }
        };
    };
    auto fill = [&](Backend& b, bool tested) {
        Bufs bufs;
        for (const Spec& s : specs) {
            if (!tested && s.bf16_params_only) continue;
            auto buf = std::make_unique<Buf>(b, s.n, dtype_of(s.kind, b), s.kind == Kind::tokens);
            if (s.role != Role::out) buf->write(values_of(s));  // outputs: poisoned or zeroed below
            bufs.add(s.name, std::move(buf));
        }
        return bufs;
    };

    // The reference is the slow side: above the check limits (a bench shape
    // like the lm_head at B=64) only the tested side runs, and its outputs
    // are checked for elements left unwritten (NaN) alone.
    size_t ref_bytes = 0;
    for (const Spec& s : specs) ref_bytes += s.n * (s.kind == Kind::tokens ? 4 : dtype_size(dtype_of(s.kind, reference)));
    const double check_flops = timing ? timing->check_max_flops : 1e300;
    const size_t check_bytes = timing ? timing->check_max_bytes : SIZE_MAX;
    r.checked = prob.flops(c) <= check_flops && ref_bytes <= check_bytes;
    const bool bf16_backend = be->act_dtype() == DType::bf16;
    try {
        Bufs tb = fill(*be, true);
        prob.prepare(*be, tb, c.problem);
        for (const Spec& s : specs)
            if (s.role == Role::out) tb.get(s.name).poison();  // an element the kernel forgets shows up as NaN
        prob.run(*be, tb, c.problem);
        r.ok = true;
        if (r.checked) {
            Bufs rb = fill(reference, false);
            prob.prepare(reference, rb, c.problem);
            for (const Spec& s : specs)
                if (s.role == Role::out) rb.get(s.name).write([](size_t) { return 0.0; });
            prob.run(reference, rb, c.problem);
            for (const Spec& s : specs) {
                if (s.role == Role::in || !s.compare) continue;
                const double bound = bf16_backend ? s.bound_bf16 : s.bound_f32;
                const double e = rel_l2(tb.get(s.name).read(), rb.get(s.ref_name.empty() ? s.name : s.ref_name).read());
                r.errors.push_back({s.name, e, bound});
                if (!(e <= bound)) r.ok = false;
            }
        } else {
            for (const Spec& s : specs) {
                if (s.role == Role::in || !s.compare) continue;
                const bool finite = tb.get(s.name).all_finite();
                r.errors.push_back({s.name + " (finite only)", finite ? 0.0 : INFINITY, 0.0});
                if (!finite) r.ok = false;
            }
        }
        if (!timing) return r;

        // Rotation: enough copies of the inputs that the ones a repetition reads were not the last ones read.
        size_t problem_bytes = 0;
        for (const Spec& s : specs) problem_bytes += tb.get(s.name).bytes();
        const size_t cache = be->cache_bytes();
        const int slots = int(std::clamp<size_t>(problem_bytes ? (4 * cache + problem_bytes - 1) / problem_bytes : 1, 1, 4));
        std::vector<Bufs> sets;
        sets.push_back(std::move(tb));
        for (int k = 1; k < slots; k++) {
            sets.push_back(fill(*be, true));
            prob.prepare(*be, sets.back(), c.problem);
        }
        r.rotation = slots;
        const size_t flush_bytes = timing->flush ? std::min<size_t>(4 * cache, size_t(1) << 30) : 0;
        void* flush = flush_bytes ? be->alloc(flush_bytes, "kernel lab cache flush") : nullptr;
        std::vector<double> ms;
        try {
            for (int i = 0; i < timing->warmup; i++) prob.run(*be, sets[size_t(i) % sets.size()], c.problem);
            be->synchronize();
            for (int i = 0; i < timing->repeats; i++) {
                if (flush) be->zero(flush, flush_bytes);
                be->set_profiling(false);
                be->set_profiling(true);  // new totals: this repetition's ops only
                prob.run(*be, sets[size_t(i) % sets.size()], c.problem);
                double t = 0;
                for (const auto& op : be->op_times()) t += op.ms;  // waits for the events
                ms.push_back(t);
            }
            be->set_profiling(false);
        } catch (...) {
            if (flush) be->free(flush);
            throw;
        }
        if (flush) be->free(flush);
        std::sort(ms.begin(), ms.end());
        r.timed = !ms.empty();
        if (!r.timed) return r;
        r.median_ms = ms[ms.size() / 2];
        r.min_ms = ms.front();
        r.max_ms = ms.back();
        const Sizes sz{double(dtype_size(be->act_dtype())), double(dtype_size(be->param_dtype())), double(dtype_size(be->stat_dtype()))};
        r.flops = prob.flops(c);
        r.bytes = prob.bytes(c, sz);
        const double sec = r.median_ms / 1e3;
        if (sec > 0) {
            r.tflops = r.flops / sec / 1e12;
            r.gbs = r.bytes / sec / 1e9;
            const double pt = be->peak_tflops(nullptr), pb = be->peak_gbs(nullptr);
            // Both peaks known (the datasheet figures of a GPU): the time the roofline allows over the time taken.
            if (pt > 0 && pb > 0) r.roofline = std::max(r.flops / (pt * 1e12), r.bytes / (pb * 1e9)) / sec;
        }
    } catch (const Error& e) {
        if (e.kind != ErrorKind::BadInput) throw;
        r = Result{};
        r.c = c;
        r.cannot_run = e.what();  // the kernel refused the problem (a tile over the device's shared memory, ...)
    }
    return r;
}

}  // namespace

std::string table(const std::vector<Result>& results, const Backend& be) {
    std::string how_f, how_b;
    const double pt = be.peak_tflops(&how_f), pb = be.peak_gbs(&how_b);
    std::string out = "kernel lab on " + be.name() + ": " + be.device_info() + "\n";
    out += "  peaks: " + (pt > 0 ? fmt("%.1f", pt) + " TFLOP/s (" + how_f + ")" : "compute unknown") + ", " +
           (pb > 0 ? fmt("%.0f", pb) + " GB/s (" + how_b + ")" : "bandwidth unknown") + "\n";
    char line[1024];
    std::snprintf(line, sizeof line, "  %-44s %-46s %10s %9s %9s %8s %4s  %s\n", "kernel (family variant params)", "problem", "median ms",
                  "TFLOP/s", "GB/s", "roofline", "rot", "check (worst error / bound)");
    out += line;
    for (const Result& r : results) {
        std::string kernel = r.c.family + " " + r.c.variant;
        for (const auto& [k, v] : r.c.params) kernel += " " + k + "=" + std::to_string(v);
        std::string check;
        if (!r.cannot_run.empty()) {
            check = "cannot run: " + r.cannot_run;
        } else {
            const OutputError* worst = nullptr;
            for (const OutputError& e : r.errors)
                if (!worst || !(e.rel_l2 / e.bound <= worst->rel_l2 / worst->bound)) worst = &e;
            if (!r.checked)
                check = std::string(r.ok ? "no NaN" : "WRONG: NaN in an output") + " (not compared: the CPU reference is too large at this shape)";
            else
                check = std::string(r.ok ? "ok" : "WRONG") +
                        (worst ? " (" + worst->output + " " + fmt("%.2e", worst->rel_l2) + " / " + fmt("%.0e", worst->bound) + ")" : "");
        }
        if (r.timed)
            std::snprintf(line, sizeof line, "  %-44s %-46s %10.4g %9.3g %9.4g %8s %4d  %s\n", kernel.c_str(), r.c.problem.text().c_str(), r.median_ms,
                          r.tflops, r.gbs, r.roofline > 0 ? fmt("%.1f%%", 100 * r.roofline).c_str() : "-", r.rotation, check.c_str());
        else
            std::snprintf(line, sizeof line, "  %-44s %-46s %10s %9s %9s %8s %4s  %s\n", kernel.c_str(), r.c.problem.text().c_str(), "-", "-", "-", "-", "-",
                          check.c_str());
        out += line;
    }
    return out;
}

std::string json(const Result& r) {
    std::string params = "{";
    for (size_t i = 0; i < r.c.params.size(); i++)
        params += (i ? "," : "") + std::string("\"") + r.c.params[i].first + "\":" + std::to_string(r.c.params[i].second);
    params += "}";
    std::string dims = "{";
    for (size_t i = 0; i < r.c.problem.dims.size(); i++)
        dims += (i ? "," : "") + std::string("\"") + r.c.problem.dims[i].first + "\":" + std::to_string(r.c.problem.dims[i].second);
    dims += "}";
    std::string errors = "{";
    for (size_t i = 0; i < r.errors.size(); i++)
        errors += (i ? "," : "") + std::string("\"") + r.errors[i].output + "\":{\"rel_l2\":" +
                  (std::isfinite(r.errors[i].rel_l2) ? fmt("%.6g", r.errors[i].rel_l2) : std::string("null")) + ",\"bound\":" +
                  fmt("%.6g", r.errors[i].bound) + "}";
    errors += "}";
    std::string cr;
    for (char ch : r.cannot_run) {
        if (ch == '"' || ch == '\\') cr += '\\';
        if (ch == '\n') { cr += "\\n"; continue; }
        cr += ch;
    }
    return "{\"family\":\"" + r.c.family + "\",\"variant\":\"" + r.c.variant + "\",\"params\":" + params + ",\"op\":\"" + r.c.problem.op +
           "\",\"dims\":" + dims + ",\"can_run\":" + (r.cannot_run.empty() ? "true" : "false") + ",\"cannot_run\":\"" + cr +
           "\",\"ok\":" + (r.ok ? "true" : "false") + ",\"checked\":" + (r.checked ? "true" : "false") + ",\"errors\":" + errors + ",\"timed\":" + (r.timed ? "true" : "false") +
           ",\"median_ms\":" + fmt("%.6g", r.median_ms) + ",\"min_ms\":" + fmt("%.6g", r.min_ms) + ",\"max_ms\":" + fmt("%.6g", r.max_ms) +
           ",\"flops\":" + fmt("%.6g", r.flops) + ",\"bytes\":" + fmt("%.6g", r.bytes) + ",\"tflops\":" + fmt("%.6g", r.tflops) +
           ",\"gbs\":" + fmt("%.6g", r.gbs) + ",\"roofline\":" + fmt("%.6g", r.roofline) + ",\"rotation\":" + std::to_string(r.rotation) + "}";
}

}  // namespace gpt::lab
