// Tests of the CPU reference ops (kernels/cpu): finite-difference gradient
// checks of every backward op in double, the accumulate/overwrite conventions,
// attention against a naive full-softmax implementation, float vs double
// agreement, AdamW against hand-computed numbers, the grad norm's determinism
// across thread counts, and make_backend's names and errors.
//
// FD checks: objective L = sum(out * R) for a fixed random R, central
// differences with h = 1e-6. Relative error is max |a - fd| / max(|fd|, floor)
// with floor = 1e-3 * max|fd| (so entries that are ~0 by chance are compared
// on the scale of the gradient, not divided by ~0).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/encoder_runs.h"
#include "kernels/cuda/side_ranges.h"
#include "kernels/lab.h"
#include "tests/test_util.h"

namespace gpt {
namespace {

using Vec = std::vector<double>;
using VecF = std::vector<float>;

constexpr double kFdStep = 1e-6;
constexpr double kFdTol = 1e-6;      // FD vs analytic, double precision
constexpr double kFloatTol = 1e-5;   // float vs double result

Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> d(lo, hi);
    Vec v(n);
    for (auto& x : v) {
        do x = d(rng); while (std::fabs(x) < 1e-3);  // non-zero entries
    }
    return v;
}

View vd(Vec& v) { return View{v.data(), DType::f64}; }
View vf(VecF& v) { return View{v.data(), DType::f32}; }
VecF to_f(const Vec& v) { return VecF(v.begin(), v.end()); }

double max_abs(const Vec& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// a - b elementwise.
Vec diff(const Vec& a, const Vec& b) {
    Vec r(a.size());
    for (size_t i = 0; i < a.size(); i++) r[i] = a[i] - b[i];
    return r;
}

// Central-difference gradient of f() with respect to x (perturbed in place and restored).
Vec fd_grad(Vec& x, const std::function<double()>& f) {
    Vec g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        const double x0 = x[i];
        x[i] = x0 + kFdStep;
        const double fp = f();
        x[i] = x0 - kFdStep;
        const double fm = f();
        x[i] = x0;
        g[i] = (fp - fm) / (2 * kFdStep);
    }
    return g;
}

// Relative error of an analytic gradient against its FD estimate (see the file comment).
double grad_error(const Vec& analytic, const Vec& fd) {
    EXPECT_EQ(analytic.size(), fd.size());
    return test::max_rel_error(analytic.data(), fd.data(), fd.size(), std::max(1e-3 * max_abs(fd), 1e-12));
}

#define EXPECT_GRAD(name, analytic, fd)                                          \
    do {                                                                         \
        const double err_ = grad_error(analytic, fd);                            \
        std::printf("  FD %-28s rel err %.2e\n", name, err_);                    \
        EXPECT_LT(err_, kFdTol) << name;                                         \
    } while (0)

// Normwise relative error of a float result against the double one: max|a-b| / max|b|.
double float_error(const VecF& a, const Vec& b) {
    Vec ad(a.begin(), a.end());
    return test::max_rel_error(ad.data(), b.data(), b.size(), std::max(max_abs(b), 1e-30));
}

#define EXPECT_FLOAT_AGREES(name, a, b)                                          \
    do {                                                                         \
        const double err_ = float_error(a, b);                                   \
        std::printf("  f32 vs f64 %-20s rel err %.2e\n", name, err_);            \
        EXPECT_LT(err_, kFloatTol) << name;                                      \
    } while (0)

struct Backends {
    std::unique_ptr<Backend> f64 = make_backend("cpu-f64");
    std::unique_ptr<Backend> f32 = make_backend("cpu");
};

// ---------------------------------------------------------------- encoder

TEST(KernelsCpu, EncoderGradientAndFloat) {
    Backends be;
    const int B = 3, T = 4, C = 5, Vp = 6, maxT = 7;
    // Repeated tokens, across and within rows, so dwte rows gather several terms.
    std::vector<int32_t> tok = {1, 3, 1, 5, 0, 3, 3, 2, 5, 1, 4, 1};
    Vec wte = random_vec(size_t(Vp) * C, 1), wpe = random_vec(size_t(maxT) * C, 2);
    Vec R = random_vec(size_t(B) * T * C, 3), out(R.size());
    auto fwd = [&] {
        be.f64->encoder_forward({vd(out), tok.data(), vd(wte), vd(wpe), B, T, C});
        return dot(out, R);
    };
    Vec g0_wte = random_vec(wte.size(), 4), g0_wpe = random_vec(wpe.size(), 5);
    Vec dwte = g0_wte, dwpe = g0_wpe;
    be.f64->encoder_backward({vd(dwte), vd(dwpe), vd(R), tok.data(), B, T, C});
    Vec fd_wte = fd_grad(wte, fwd), fd_wpe = fd_grad(wpe, fwd);
    EXPECT_GRAD("encoder dwte (+=)", diff(dwte, g0_wte), fd_wte);
    EXPECT_GRAD("encoder dwpe (+=)", diff(dwpe, g0_wpe), fd_wpe);

    fwd();
    VecF wte_f = to_f(wte), wpe_f = to_f(wpe), out_f(out.size()), R_f = to_f(R);
    be.f32->encoder_forward({vf(out_f), tok.data(), vf(wte_f), vf(wpe_f), B, T, C});
    EXPECT_FLOAT_AGREES("encoder out", out_f, out);
    VecF dwte_f = to_f(g0_wte), dwpe_f = to_f(g0_wpe);
    be.f32->encoder_backward({vf(dwte_f), vf(dwpe_f), vf(R_f), tok.data(), B, T, C});
    EXPECT_FLOAT_AGREES("encoder dwte", dwte_f, dwte);
    EXPECT_FLOAT_AGREES("encoder dwpe", dwpe_f, dwpe);
}

// ---------------------------------------------------------------- layernorm

TEST(KernelsCpu, LayerNormGradientAndFloat) {
    Backends be;
    const int N = 5, C = 7;
    Vec inp = random_vec(size_t(N) * C, 10, -2, 2), w = random_vec(C, 11), b = random_vec(C, 12);
    Vec R = random_vec(inp.size(), 13), out(inp.size()), mean(N), rstd(N);
    auto fwd = [&] {
        be.f64->layernorm_forward({vd(out), vd(mean), vd(rstd), vd(inp), vd(w), vd(b), N, C});
        return dot(out, R);
    };
    fwd();
    // Saved statistics against a direct computation.
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += inp[size_t(n) * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (inp[size_t(n) * C + c] - m) * (inp[size_t(n) * C + c] - m);
        EXPECT_NEAR(mean[n], m, 1e-14);
        EXPECT_NEAR(rstd[n], 1.0 / std::sqrt(v / C + 1e-5), 1e-12 * rstd[n]);
    }
    Vec g0_inp = random_vec(inp.size(), 14), g0_w = random_vec(C, 15), g0_b = random_vec(C, 16);
    Vec dinp = g0_inp, dw = g0_w, db = g0_b;
    be.f64->layernorm_backward({vd(dinp), vd(dw), vd(db), vd(R), vd(inp), vd(w), vd(mean), vd(rstd), N, C});
    Vec fd_inp = fd_grad(inp, fwd), fd_w = fd_grad(w, fwd), fd_b = fd_grad(b, fwd);
    EXPECT_GRAD("layernorm dinp (+=)", diff(dinp, g0_inp), fd_inp);
    EXPECT_GRAD("layernorm dweight (+=)", diff(dw, g0_w), fd_w);
    EXPECT_GRAD("layernorm dbias (+=)", diff(db, g0_b), fd_b);

    fwd();
    VecF inp_f = to_f(inp), w_f = to_f(w), b_f = to_f(b), R_f = to_f(R), out_f(out.size()), mean_f(N), rstd_f(N);
    be.f32->layernorm_forward({vf(out_f), vf(mean_f), vf(rstd_f), vf(inp_f), vf(w_f), vf(b_f), N, C});
    EXPECT_FLOAT_AGREES("layernorm out", out_f, out);
    EXPECT_FLOAT_AGREES("layernorm rstd", rstd_f, rstd);
    VecF dinp_f = to_f(g0_inp), dw_f = to_f(g0_w), db_f = to_f(g0_b);
    be.f32->layernorm_backward({vf(dinp_f), vf(dw_f), vf(db_f), vf(R_f), vf(inp_f), vf(w_f), vf(mean_f), vf(rstd_f), N, C});
    EXPECT_FLOAT_AGREES("layernorm dinp", dinp_f, dinp);
    EXPECT_FLOAT_AGREES("layernorm dweight", dw_f, dw);
    EXPECT_FLOAT_AGREES("layernorm dbias", db_f, db);
}

// RMSNorm (with and without a gain) and LayerNorm without parameters: the
// null weight and bias read as 1 and 0, and their gradients are skipped.
void check_norm_variant(bool rms, bool with_weight) {
    Backends be;
    const int N = 4, C = 9;
    const std::string tag = std::string(rms ? "rmsnorm" : "layernorm") + (with_weight ? "" : " (no params)") + " ";
    Vec inp = random_vec(size_t(N) * C, 110, -2, 2), w = random_vec(C, 111), b = random_vec(C, 112);
    Vec R = random_vec(inp.size(), 113), out(inp.size()), mean(N), rstd(N);
    View wv = with_weight ? vd(w) : View{}, bv = with_weight && !rms ? vd(b) : View{};
    auto fwd = [&] {
        be.f64->layernorm_forward({vd(out), vd(mean), vd(rstd), vd(inp), wv, bv, N, C, rms});
        return dot(out, R);
    };
    fwd();
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0, ss = 0;
        for (int c = 0; c < C; c++) m += inp[size_t(n) * C + c] / C, ss += inp[size_t(n) * C + c] * inp[size_t(n) * C + c] / C;
        for (int c = 0; c < C; c++) v += (inp[size_t(n) * C + c] - m) * (inp[size_t(n) * C + c] - m) / C;
        const double r = 1.0 / std::sqrt((rms ? ss : v) + 1e-5);
        EXPECT_NEAR(rstd[n], r, 1e-12 * r);
        for (int c = 0; c < C; c++) {
            const double x = inp[size_t(n) * C + c];
            const double want = ((rms ? x : x - m) * r) * (with_weight ? w[c] : 1.0) + (bv ? b[c] : 0.0);
            EXPECT_NEAR(out[size_t(n) * C + c], want, 1e-12);
        }
    }
    Vec g0_inp = random_vec(inp.size(), 114), g0_w = random_vec(C, 115), g0_b = random_vec(C, 116);
    Vec dinp = g0_inp, dw = g0_w, db = g0_b;
    be.f64->layernorm_backward({vd(dinp), with_weight ? vd(dw) : View{}, bv ? vd(db) : View{}, vd(R), vd(inp), wv, vd(mean), vd(rstd), N, C, rms});
    Vec fd_inp = fd_grad(inp, fwd);
    EXPECT_GRAD((tag + "dinp (+=)").c_str(), diff(dinp, g0_inp), fd_inp);
    if (with_weight) {
        Vec fd_w = fd_grad(w, fwd);
        EXPECT_GRAD((tag + "dweight (+=)").c_str(), diff(dw, g0_w), fd_w);
    }
    if (bv) {
        Vec fd_b = fd_grad(b, fwd);
        EXPECT_GRAD((tag + "dbias (+=)").c_str(), diff(db, g0_b), fd_b);
    } else {
        EXPECT_EQ(db, g0_b);
    }

    fwd();
    VecF inp_f = to_f(inp), w_f = to_f(w), b_f = to_f(b), R_f = to_f(R), out_f(out.size()), mean_f(N), rstd_f(N);
    View wf = with_weight ? vf(w_f) : View{}, bf = bv ? vf(b_f) : View{};
    be.f32->layernorm_forward({vf(out_f), vf(mean_f), vf(rstd_f), vf(inp_f), wf, bf, N, C, rms});
    EXPECT_FLOAT_AGREES((tag + "out").c_str(), out_f, out);
    VecF dinp_f = to_f(g0_inp), dw_f = to_f(g0_w);
    be.f32->layernorm_backward({vf(dinp_f), with_weight ? vf(dw_f) : View{}, View{}, vf(R_f), vf(inp_f), wf, vf(mean_f), vf(rstd_f), N, C, rms});
    EXPECT_FLOAT_AGREES((tag + "dinp").c_str(), dinp_f, dinp);

    // The fused residual variant computes the same norm.
    Vec a1 = random_vec(inp.size(), 117), a2 = diff(inp, a1), res(inp.size()), out2(inp.size()), mean2(N), rstd2(N);
    be.f64->residual_layernorm_forward({vd(res), vd(out2), vd(mean2), vd(rstd2), vd(a1), vd(a2), wv, bv, N, C, rms});
    EXPECT_LT(test::max_rel_error(out2.data(), out.data(), out.size(), 1e-6), 1e-12) << tag;
}

TEST(KernelsCpu, RMSNormGradientAndFloat) {
    check_norm_variant(true, true);
    check_norm_variant(true, false);
}
TEST(KernelsCpu, LayerNormWithoutParameters) { check_norm_variant(false, false); }

TEST(KernelsCpu, QKNormGradientAndFloat) {
    Backends be;
    const int N = 3, C = 12, NH = 3, hs = C / NH;
    Vec x = random_vec(size_t(N) * 3 * C, 120, -2, 2), R = random_vec(x.size(), 121), rstd(size_t(N) * 2 * NH);
    Vec y;
    auto fwd = [&] {
        y = x;
        be.f64->qknorm_forward({vd(y), vd(rstd), N, C, NH});
        return dot(y, R);
    };
    fwd();
    for (int n = 0; n < N; n++)
        for (int j = 0; j < 3 * NH; j++) {
            const size_t off = size_t(n) * 3 * C + size_t(j) * hs;
            double ss = 0;
            for (int i = 0; i < hs; i++) ss += x[off + i] * x[off + i];
            const double r = j < 2 * NH ? 1.0 / std::sqrt(ss / hs + 1e-5) : 1.0;  // v heads untouched
            for (int i = 0; i < hs; i++) EXPECT_NEAR(y[off + i], x[off + i] * r, 1e-13) << "row " << n << " head " << j;
            if (j < 2 * NH) EXPECT_NEAR(rstd[size_t(n) * 2 * NH + j], r, 1e-13);
        }
    Vec dqkv = R;
    const Vec normed = y;
    be.f64->qknorm_backward({vd(dqkv), vd(y), vd(rstd), N, C, NH});
    Vec fd = fd_grad(x, fwd);
    EXPECT_GRAD("qknorm dqkv (in place)", dqkv, fd);

    VecF y_f = to_f(x), rstd_f(rstd.size()), d_f = to_f(R);
    be.f32->qknorm_forward({vf(y_f), vf(rstd_f), N, C, NH});
    EXPECT_FLOAT_AGREES("qknorm out", y_f, normed);
    be.f32->qknorm_backward({vf(d_f), vf(y_f), vf(rstd_f), N, C, NH});
    EXPECT_FLOAT_AGREES("qknorm dqkv", d_f, dqkv);
}

// ---------------------------------------------------------------- rope

TEST(KernelsCpu, RopeGradientRelativePositionAndFloat) {
    Backends be;
    const int B = 2, T = 5, C = 12, NH = 2, hs = C / NH, N = B * T;
    const double base = 100.0;  // a small base: the low pairs turn fast, every pair matters
    Vec x = random_vec(size_t(N) * 3 * C, 130, -1, 1), R = random_vec(x.size(), 131), y;
    auto fwd = [&] {
        y = x;
        be.f64->rope({vd(y), N, T, 0, C, NH, base});
        return dot(y, R);
    };
    fwd();
    // Against the formula, and v is untouched.
    for (int r = 0; r < N; r++)
        for (int j = 0; j < 3 * NH; j++)
            for (int i = 0; i < hs / 2; i++) {
                const size_t o = size_t(r) * 3 * C + size_t(j) * hs;
                const double th = j < 2 * NH ? (r % T) * std::pow(base, -2.0 * i / hs) : 0.0;
                const double x1 = x[o + i], x2 = x[o + i + hs / 2];
                EXPECT_NEAR(y[o + i], x1 * std::cos(th) - x2 * std::sin(th), 1e-14);
                EXPECT_NEAR(y[o + i + hs / 2], x1 * std::sin(th) + x2 * std::cos(th), 1e-14);
            }
    // The backward is the transposed rotation: FD of the forward.
    Vec d = R;
    be.f64->rope({vd(d), N, T, 0, C, NH, base, true});
    Vec fd = fd_grad(x, fwd);
    EXPECT_GRAD("rope dqkv (in place)", d, fd);
    // Relative positions: q_t . k_u after rotation depends on t - u only. The
    // same q and k vectors at every position of a single sequence.
    Vec z(size_t(T) * 3 * C);
    Vec qk = random_vec(size_t(2) * hs, 132);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < hs; i++) z[size_t(t) * 3 * C + i] = qk[size_t(i)], z[size_t(t) * 3 * C + C + i] = qk[size_t(hs + i)];
    be.f64->rope({vd(z), T, T, 0, C, NH, base});
    auto score = [&](int t, int u) {
        double s = 0;
        for (int i = 0; i < hs; i++) s += z[size_t(t) * 3 * C + i] * z[size_t(u) * 3 * C + C + i];
        return s;
    };
    EXPECT_NEAR(score(3, 1), score(4, 2), 1e-12);
    EXPECT_NEAR(score(2, 2), score(0, 0), 1e-12);
    EXPECT_GT(std::fabs(score(3, 1) - score(3, 2)), 1e-3);  // and it does depend on the distance
    // Decode: one row at pos0 equals that row of the whole sequence.
    Vec one(x.begin() + 3 * 3 * C, x.begin() + 4 * 3 * C);
    be.f64->rope({vd(one), 1, 1, 3, C, NH, base});
    for (size_t i = 0; i < one.size(); i++) EXPECT_EQ(one[i], y[3 * 3 * C + i]);

    VecF y_f = to_f(x), d_f = to_f(R);
    be.f32->rope({vf(y_f), N, T, 0, C, NH, base});
    EXPECT_FLOAT_AGREES("rope out", y_f, y);
    be.f32->rope({vf(d_f), N, T, 0, C, NH, base, true});
    EXPECT_FLOAT_AGREES("rope dqkv", d_f, d);
}

// ---------------------------------------------------------------- matmul

// N <= 4 takes the decode path (gemv over output channels), N > 4 the row-blocked gemm.
void check_matmul(bool with_bias, int N) {
    Backends be;
    const int C = 7, OC = 3;
    const std::string tag = (with_bias ? "matmul+bias N=" : "matmul N=") + std::to_string(N) + " ";
    Vec inp = random_vec(size_t(N) * C, 20), w = random_vec(size_t(OC) * C, 21), b = random_vec(OC, 22);
    Vec R = random_vec(size_t(N) * OC, 23), out(R.size());
    View bias = with_bias ? vd(b) : View{};
    auto fwd = [&] {
        be.f64->matmul_forward({vd(out), vd(inp), vd(w), bias, N, C, OC});
        return dot(out, R);
    };
    fwd();
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = with_bias ? b[o] : 0.0;
            for (int c = 0; c < C; c++) s += inp[size_t(n) * C + c] * w[size_t(o) * C + c];
            EXPECT_NEAR(out[size_t(n) * OC + o], s, 1e-13);
        }
    Vec dinp = random_vec(inp.size(), 24);  // garbage: dinp is overwritten
    Vec g0_w = random_vec(w.size(), 25), g0_b = random_vec(OC, 26);
    Vec dw = g0_w, db = g0_b;
    be.f64->matmul_backward({vd(dinp), vd(dw), with_bias ? vd(db) : View{}, vd(R), vd(inp), vd(w), N, C, OC});
    Vec fd_inp = fd_grad(inp, fwd), fd_w = fd_grad(w, fwd);
    EXPECT_GRAD((tag + "dinp (=)").c_str(), dinp, fd_inp);
    EXPECT_GRAD((tag + "dweight (+=)").c_str(), diff(dw, g0_w), fd_w);
    if (with_bias) {
        Vec fd_b = fd_grad(b, fwd);
        EXPECT_GRAD((tag + "dbias (+=)").c_str(), diff(db, g0_b), fd_b);
    } else {
        EXPECT_EQ(db, g0_b);  // no bias: untouched
    }

    fwd();
    VecF inp_f = to_f(inp), w_f = to_f(w), b_f = to_f(b), R_f = to_f(R), out_f(out.size());
    be.f32->matmul_forward({vf(out_f), vf(inp_f), vf(w_f), with_bias ? vf(b_f) : View{}, N, C, OC});
    EXPECT_FLOAT_AGREES((tag + "out").c_str(), out_f, out);
    VecF dinp_f(inp.size(), 7.0f), dw_f = to_f(g0_w), db_f = to_f(g0_b);
    be.f32->matmul_backward({vf(dinp_f), vf(dw_f), with_bias ? vf(db_f) : View{}, vf(R_f), vf(inp_f), vf(w_f), N, C, OC});
    EXPECT_FLOAT_AGREES((tag + "dinp").c_str(), dinp_f, dinp);
    EXPECT_FLOAT_AGREES((tag + "dweight").c_str(), dw_f, dw);
    if (with_bias) EXPECT_FLOAT_AGREES((tag + "dbias").c_str(), db_f, db);
}

TEST(KernelsCpu, MatmulGradientWithBias) {
    for (int N : {1, 3, 5, 9}) check_matmul(true, N);
}
TEST(KernelsCpu, MatmulGradientWithoutBias) {
    for (int N : {1, 3, 5, 9}) check_matmul(false, N);
}

// ---------------------------------------------------------------- attention

// Naive causal attention: full T x T score matrix per (b, h), -inf above the diagonal.
void naive_attention(const Vec& qkv, int B, int T, int C, int NH, Vec& out, Vec& lse) {
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt(double(hs));
    out.assign(size_t(B) * T * C, 0.0);
    lse.assign(size_t(B) * NH * T, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            std::vector<Vec> S(T, Vec(T, -INFINITY));
            for (int t = 0; t < T; t++)
                for (int u = 0; u < T; u++) {
                    if (u > t) continue;
                    double s = 0;
                    for (int i = 0; i < hs; i++)
                        s += qkv[(size_t(b) * T + t) * 3 * C + h * hs + i] * qkv[(size_t(b) * T + u) * 3 * C + C + h * hs + i];
                    S[t][u] = s * scale;
                }
            for (int t = 0; t < T; t++) {
                double mx = *std::max_element(S[t].begin(), S[t].end()), sum = 0;
                for (int u = 0; u < T; u++) sum += std::exp(S[t][u] - mx);
                lse[(size_t(b) * NH + h) * T + t] = mx + std::log(sum);
                for (int u = 0; u < T; u++) {
                    const double p = std::exp(S[t][u] - mx) / sum;
                    for (int i = 0; i < hs; i++)
                        out[(size_t(b) * T + t) * C + h * hs + i] += p * qkv[(size_t(b) * T + u) * 3 * C + 2 * C + h * hs + i];
                }
            }
        }
}

void check_attention(int B, int T, int C, int NH) {
    Backends be;
    const std::string tag = "attention T=" + std::to_string(T) + " ";
    Vec qkv = random_vec(size_t(B) * T * 3 * C, 30, -1.5, 1.5);
    Vec R = random_vec(size_t(B) * T * C, 31), out(R.size()), lse(size_t(B) * NH * T);
    auto fwd = [&] {
        be.f64->attention_forward({vd(out), vd(lse), vd(qkv), B, T, C, NH});
        return dot(out, R);
    };
    fwd();
    Vec out_ref, lse_ref;
    naive_attention(qkv, B, T, C, NH, out_ref, lse_ref);
    EXPECT_LT(test::max_rel_error(out.data(), out_ref.data(), out.size(), 1e-6), 1e-12);
    EXPECT_LT(test::max_rel_error(lse.data(), lse_ref.data(), lse.size(), 1e-6), 1e-12);

    Vec dqkv = random_vec(qkv.size(), 32);  // garbage: dqkv is overwritten
    be.f64->attention_backward({vd(dqkv), vd(R), vd(qkv), vd(out), vd(lse), B, T, C, NH});
    Vec fd = fd_grad(qkv, fwd);
    EXPECT_GRAD((tag + "dqkv (=)").c_str(), dqkv, fd);

    fwd();
    VecF qkv_f = to_f(qkv), R_f = to_f(R), out_f(out.size()), lse_f(lse.size()), dqkv_f(qkv.size(), 3.0f);
    be.f32->attention_forward({vf(out_f), vf(lse_f), vf(qkv_f), B, T, C, NH});
    EXPECT_FLOAT_AGREES((tag + "out").c_str(), out_f, out);
    EXPECT_FLOAT_AGREES((tag + "lse").c_str(), lse_f, lse);
    be.f32->attention_backward({vf(dqkv_f), vf(R_f), vf(qkv_f), vf(out_f), vf(lse_f), B, T, C, NH});
    EXPECT_FLOAT_AGREES((tag + "dqkv").c_str(), dqkv_f, dqkv);
}

TEST(KernelsCpu, AttentionGradientAndNaive) { check_attention(2, 5, 12, 3); }
TEST(KernelsCpu, AttentionSingleToken) { check_attention(3, 1, 6, 2); }
TEST(KernelsCpu, AttentionOddShape) { check_attention(1, 7, 10, 5); }

// ---------------------------------------------------------------- gelu, residual

TEST(KernelsCpu, GeluGradientAndFloat) {
    Backends be;
    const size_t N = 13;
    Vec inp = random_vec(N, 40, -4, 4), R = random_vec(N, 41), out(N);
    auto fwd = [&] {
        be.f64->gelu_forward({vd(out), vd(inp), N});
        return dot(out, R);
    };
    fwd();
    for (size_t i = 0; i < N; i++) {
        const double x = inp[i];
        EXPECT_NEAR(out[i], 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))), 1e-14);
    }
    Vec dinp = random_vec(N, 42);  // garbage: dinp is overwritten
    be.f64->gelu_backward({vd(dinp), vd(inp), vd(R), N});
    Vec fd = fd_grad(inp, fwd);
    EXPECT_GRAD("gelu dinp (=)", dinp, fd);
    Vec inplace = R;  // dinp aliasing dout
    be.f64->gelu_backward({vd(inplace), vd(inp), vd(inplace), N});
    EXPECT_EQ(inplace, dinp);

    fwd();
    VecF inp_f = to_f(inp), R_f = to_f(R), out_f(N), dinp_f(N);
    be.f32->gelu_forward({vf(out_f), vf(inp_f), N});
    EXPECT_FLOAT_AGREES("gelu out", out_f, out);
    be.f32->gelu_backward({vf(dinp_f), vf(inp_f), vf(R_f), N});
    EXPECT_FLOAT_AGREES("gelu dinp", dinp_f, dinp);
}

TEST(KernelsCpu, Relu2GradientAndFloat) {
    Backends be;
    const size_t N = 14;
    Vec inp = random_vec(N, 45, -3, 3), R = random_vec(N, 46), out(N);
    auto fwd = [&] {
        be.f64->gelu_forward({vd(out), vd(inp), N, Activation::relu2});
        return dot(out, R);
    };
    fwd();
    for (size_t i = 0; i < N; i++) EXPECT_EQ(out[i], inp[i] > 0 ? inp[i] * inp[i] : 0.0);
    Vec dinp = random_vec(N, 47);
    be.f64->gelu_backward({vd(dinp), vd(inp), vd(R), N, Activation::relu2});
    Vec fd = fd_grad(inp, fwd);
    EXPECT_GRAD("relu2 dinp (=)", dinp, fd);
    VecF inp_f = to_f(inp), R_f = to_f(R), out_f(N), dinp_f(N);
    be.f32->gelu_forward({vf(out_f), vf(inp_f), N, Activation::relu2});
    EXPECT_FLOAT_AGREES("relu2 out", out_f, out);
    be.f32->gelu_backward({vf(dinp_f), vf(inp_f), vf(R_f), N, Activation::relu2});
    EXPECT_FLOAT_AGREES("relu2 dinp", dinp_f, dinp);

    // The fused matmul epilogue equals the product then the op.
    const int M = 5, C = 6, OC = 7;
    Vec x = random_vec(size_t(M) * C, 48), w = random_vec(size_t(OC) * C, 49), pre(size_t(M) * OC), o1(pre.size()), o2(pre.size());
    be.f64->matmul_forward({vd(o1), vd(x), vd(w), View{}, M, C, OC, vd(pre), Activation::relu2});
    be.f64->gelu_forward({vd(o2), vd(pre), pre.size(), Activation::relu2});
    EXPECT_EQ(o1, o2);
}

TEST(KernelsCpu, ResidualAndFloat) {
    Backends be;
    const size_t N = 11;
    Vec a = random_vec(N, 50), b = random_vec(N, 51), out(N);
    be.f64->residual_forward({vd(out), vd(a), vd(b), N});
    for (size_t i = 0; i < N; i++) EXPECT_EQ(out[i], a[i] + b[i]);
    VecF a_f = to_f(a), b_f = to_f(b), out_f(N);
    be.f32->residual_forward({vf(out_f), vf(a_f), vf(b_f), N});
    EXPECT_FLOAT_AGREES("residual out", out_f, out);
}

// ---------------------------------------------------------------- classifier

TEST(KernelsCpu, ClassifierGradientLossAndFloat) {
    Backends be;
    const int N = 4, V = 5, Vp = 8;
    const float dloss = 0.37f;
    std::vector<int32_t> targets = {2, 0, 4, 2};
    Vec logits = random_vec(size_t(N) * Vp, 60, -3, 3), losses(N);
    // Padded columns hold large garbage: they must not affect the loss.
    for (int n = 0; n < N; n++)
        for (int j = V; j < Vp; j++) logits[size_t(n) * Vp + j] = 50.0 + j;
    auto fwd = [&] {
        Vec l = logits;
        be.f64->classifier({vd(l), vd(losses), targets.data(), N, V, Vp, dloss, false});
        double s = 0;
        for (double x : losses) s += x * double(dloss);
        return s;
    };
    fwd();
    for (int n = 0; n < N; n++) {
        const double* row = logits.data() + size_t(n) * Vp;
        double sum = 0;
        for (int j = 0; j < V; j++) sum += std::exp(row[j]);
        EXPECT_NEAR(losses[n], -(row[targets[n]] - std::log(sum)), 1e-13);  // naive log-softmax
    }
    Vec fd = fd_grad(logits, fwd);
    Vec grad = logits, losses2(N);
    be.f64->classifier({vd(grad), vd(losses2), targets.data(), N, V, Vp, dloss, true});
    EXPECT_EQ(losses2, losses);
    EXPECT_GRAD("classifier dlogits", grad, fd);
    for (int n = 0; n < N; n++)
        for (int j = V; j < Vp; j++) EXPECT_EQ(grad[size_t(n) * Vp + j], 0.0) << "padded column " << j;

    VecF logits_f = to_f(logits), losses_f(N);
    be.f32->classifier({vf(logits_f), vf(losses_f), targets.data(), N, V, Vp, dloss, false});
    EXPECT_FLOAT_AGREES("classifier losses", losses_f, losses);
    be.f32->classifier({vf(logits_f), vf(losses_f), targets.data(), N, V, Vp, dloss, true});
    EXPECT_FLOAT_AGREES("classifier dlogits", logits_f, grad);
    for (int n = 0; n < N; n++)
        for (int j = V; j < Vp; j++) EXPECT_EQ(logits_f[size_t(n) * Vp + j], 0.0f);
}

TEST(KernelsCpu, ClassifierSoftcapGradientAndFloat) {
    Backends be;
    const int N = 4, V = 6, Vp = 8;
    const double cap = 2.5, dloss = 0.29;
    std::vector<int32_t> targets = {5, 0, 3, 3};
    Vec logits = random_vec(size_t(N) * Vp, 65, -6, 6), losses(N);
    auto fwd = [&] {
        Vec l = logits;
        be.f64->classifier({vd(l), vd(losses), targets.data(), N, V, Vp, dloss, false, cap});
        double s = 0;
        for (double x : losses) s += x * dloss;
        return s;
    };
    fwd();
    for (int n = 0; n < N; n++) {
        const double* row = logits.data() + size_t(n) * Vp;
        double sum = 0;
        for (int j = 0; j < V; j++) sum += std::exp(cap * std::tanh(row[j] / cap));
        EXPECT_NEAR(losses[n], std::log(sum) - cap * std::tanh(row[targets[n]] / cap), 1e-13);
    }
    Vec fd = fd_grad(logits, fwd);
    Vec grad = logits;
    be.f64->classifier({vd(grad), vd(losses), targets.data(), N, V, Vp, dloss, true, cap});
    EXPECT_GRAD("classifier softcap dlogits", grad, fd);
    // Without targets: only the cap, on the real columns.
    Vec capped = logits;
    be.f64->classifier({vd(capped), View{}, nullptr, N, V, Vp, 0.0, false, cap});
    for (int n = 0; n < N; n++)
        for (int j = 0; j < Vp; j++) {
            const double z = logits[size_t(n) * Vp + j];
            EXPECT_EQ(capped[size_t(n) * Vp + j], j < V ? cap * std::tanh(z / cap) : z);
        }
    VecF lf = to_f(logits), loss_f(N);
    be.f32->classifier({vf(lf), vf(loss_f), targets.data(), N, V, Vp, dloss, true, cap});
    EXPECT_FLOAT_AGREES("classifier softcap losses", loss_f, losses);
    EXPECT_FLOAT_AGREES("classifier softcap dlogits", lf, grad);
    // With targets and without grad (evaluation): the same losses, the logits
    // left as they were (as the CUDA kernel leaves them), in both precisions.
    VecF ef = to_f(logits), eloss_f(N);
    be.f32->classifier({vf(ef), vf(eloss_f), targets.data(), N, V, Vp, dloss, false, cap});
    EXPECT_EQ(eloss_f, loss_f);
    EXPECT_EQ(ef, to_f(logits));
    Vec e = logits, eloss(N);
    be.f64->classifier({vd(e), vd(eloss), targets.data(), N, V, Vp, dloss, false, cap});
    EXPECT_EQ(e, logits);
}

TEST(KernelsCpu, EncoderWithoutPositions) {
    Backends be;
    const int B = 2, T = 3, C = 4, Vp = 5;
    std::vector<int32_t> tok = {1, 3, 1, 4, 0, 1};
    Vec wte = random_vec(size_t(Vp) * C, 6), out(size_t(B) * T * C);
    be.f64->encoder_forward({vd(out), tok.data(), vd(wte), View{}, B, T, C});
    for (int r = 0; r < B * T; r++)
        for (int c = 0; c < C; c++) EXPECT_EQ(out[size_t(r) * C + c], wte[size_t(tok[r]) * C + c]);
    Vec R = random_vec(out.size(), 7), dwte(wte.size(), 0.0);
    be.f64->encoder_backward({vd(dwte), View{}, vd(R), tok.data(), B, T, C});
    auto fwd = [&] {
        be.f64->encoder_forward({vd(out), tok.data(), vd(wte), View{}, B, T, C});
        return dot(out, R);
    };
    Vec fd = fd_grad(wte, fwd);
    EXPECT_GRAD("encoder (no wpe) dwte", dwte, fd);
}

// ---------------------------------------------------------------- AdamW, grad norm

template <class T>
void check_adamw(Backend& be, double tol) {
    const DType dt = be.param_dtype();
    // Ranges: [0,4) decayed, [5,9) not decayed; element 4 (gap) and 9 (tail) untouched.
    // The second range runs at half the learning rate (a parameter group).
    const std::vector<ParamRange> ranges = {{0, 4, true}, {5, 4, false, 0.5}};
    const size_t n = 10;
    Vec p0 = random_vec(n, 70), g1 = random_vec(n, 71), g2 = random_vec(n, 72);
    std::vector<T> p(p0.begin(), p0.end()), g(n), m(n, T(0)), v(n, T(0));
    // Junk moments outside the ranges: they must stay exactly as they are.
    m[4] = T(7);
    v[4] = T(9);
    m[9] = T(-7);
    v[9] = T(5);

    const float lr = 0.01f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    Vec ep = p0, em(n, 0.0), ev(n, 0.0);  // expected, by hand
    for (int t = 1; t <= 2; t++) {
        const Vec& gt = t == 1 ? g1 : g2;
        for (size_t i = 0; i < n; i++) g[i] = T(gt[i]);
        AdamW a{View{p.data(), dt}, View{g.data(), dt}, View{m.data(), dt}, View{v.data(), dt},
                ranges.data(), int(ranges.size()), lr, b1, b2, eps, wd, gs, t};
        be.adamw_update(a);
        for (size_t i = 0; i < n; i++) {
            if (i == 4 || i == 9) continue;
            const double gi = double(T(gt[i])) * double(gs);
            em[i] = double(b1) * em[i] + (1 - double(b1)) * gi;
            ev[i] = double(b2) * ev[i] + (1 - double(b2)) * gi * gi;
            const double mhat = em[i] / (1 - std::pow(double(b1), t));
            const double vhat = ev[i] / (1 - std::pow(double(b2), t));
            const double decay = i < 4 ? double(wd) * ep[i] : 0.0;
            ep[i] -= double(lr) * (i < 4 ? 1.0 : 0.5) * (mhat / (std::sqrt(vhat) + double(eps)) + decay);
        }
    }
    Vec got(p.begin(), p.end());
    const double err = test::max_rel_error(got.data(), ep.data(), n, 1e-8);
    std::printf("  adamw %s params rel err %.2e\n", be.name().c_str(), err);
    EXPECT_LT(err, tol);
    // Moments too, and the elements outside every range are exactly untouched.
    for (size_t i = 0; i < n; i++) {
        if (i == 4 || i == 9) continue;
        EXPECT_NEAR(double(m[i]), em[i], tol * std::fabs(em[i]) + 1e-30);
        EXPECT_NEAR(double(v[i]), ev[i], tol * std::fabs(ev[i]) + 1e-30);
    }
    EXPECT_EQ(p[4], T(p0[4]));
    EXPECT_EQ(p[9], T(p0[9]));
    EXPECT_EQ(m[4], T(7));
    EXPECT_EQ(v[4], T(9));
    EXPECT_EQ(m[9], T(-7));
    EXPECT_EQ(v[9], T(5));
    // Sanity: decay made a difference on the decayed range (the test is not vacuous).
    EXPECT_NE(p[0], T(p0[0]));
}

TEST(KernelsCpu, AdamWTwoStepsByHand) {
    Backends be;
    check_adamw<double>(*be.f64, 1e-13);
    check_adamw<float>(*be.f32, 1e-6);
}

TEST(KernelsCpu, GradNormSquared) {
    const size_t n = 3 * cpu::kGradNormBlock + 1234;  // several blocks and a ragged tail
    Vec g = random_vec(n, 80);
    VecF gf = to_f(g);
    double naive = 0, naive_f = 0;
    for (size_t i = 0; i < n; i++) naive += g[i] * g[i];
    for (size_t i = 0; i < n; i++) naive_f += double(gf[i]) * double(gf[i]);

    auto b1 = make_backend("cpu-f64", 1);
    const double d1 = b1->grad_norm_squared(vd(g), n);
    EXPECT_NEAR(d1, naive, 1e-12 * naive);
    auto f1 = make_backend("cpu", 1);
    const double s1 = f1->grad_norm_squared(vf(gf), n);
    EXPECT_NEAR(s1, naive_f, 1e-12 * naive_f);
    auto f2 = make_backend("cpu", 2);
    const double s2 = f2->grad_norm_squared(vf(gf), n);
    EXPECT_EQ(s1, s2) << "grad norm must be bit-identical across thread counts";
}

// ---------------------------------------------------------------- Muon

// Muon on one (rows, cols) matrix, written plainly in double (loops, explicit transposes).
void naive_muon(Vec& p, const Vec& g, Vec& buf, int rows, int cols, double lr, double beta, double wd, double gs, bool nesterov, int steps) {
    const bool tall = rows > cols;
    const int r = tall ? cols : rows, c = tall ? rows : cols;
    Vec u(g.size());
    for (size_t i = 0; i < g.size(); i++) {
        buf[i] = beta * buf[i] + (1 - beta) * g[i] * gs;
        u[i] = nesterov ? beta * buf[i] + (1 - beta) * g[i] * gs : buf[i];
    }
    Vec X(size_t(r) * c);
    double ss = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const double x = u[size_t(i) * cols + j];
            X[tall ? size_t(j) * rows + i : size_t(i) * cols + j] = x;
            ss += x * x;
        }
    for (auto& x : X) x /= std::sqrt(ss) + 1e-7;
    for (int s = 0; s < steps; s++) {
        Vec A(size_t(r) * r, 0.0), Bm(size_t(r) * r, 0.0), Y(X.size(), 0.0);
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++)
                for (int k = 0; k < c; k++) A[size_t(i) * r + j] += X[size_t(i) * c + k] * X[size_t(j) * c + k];
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double aa = 0;
                for (int k = 0; k < r; k++) aa += A[size_t(i) * r + k] * A[size_t(k) * r + j];
                Bm[size_t(i) * r + j] = kMuonNsB * A[size_t(i) * r + j] + kMuonNsC * aa;
            }
        for (int i = 0; i < r; i++)
            for (int j = 0; j < c; j++)
                for (int k = 0; k < r; k++) Y[size_t(i) * c + j] += Bm[size_t(i) * r + k] * X[size_t(k) * c + j];
        for (size_t i = 0; i < X.size(); i++) X[i] = kMuonNsA * X[i] + Y[i];
    }
    const double scale = lr * std::sqrt(std::max(1.0, double(rows) / cols));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const size_t e = size_t(i) * cols + j;
            p[e] -= lr * wd * p[e] + scale * X[tall ? size_t(j) * rows + i : e];
        }
}

void check_muon(int count, int rows, int cols, bool nesterov) {
    Backends be;
    const size_t m = size_t(rows) * cols, n = m * count;
    const std::string tag = "muon " + std::to_string(count) + "x(" + std::to_string(rows) + "," + std::to_string(cols) + ")" +
                            (nesterov ? " nesterov " : " ");
    const double lr = 0.05, beta = 0.9, wd = 0.1, gs = 0.7;
    Vec p = random_vec(n, 140), buf(n, 0.0), g1 = random_vec(n, 141), g2 = random_vec(n, 142);
    Vec ep = p, ebuf = buf;
    VecF pf = to_f(p), buff(n, 0.f);
    for (const Vec* g : {&g1, &g2}) {  // two steps: the momentum carries over
        Vec gg = *g;
        be.f64->muon_update({vd(p), vd(gg), vd(buf), count, rows, cols, lr, beta, wd, gs, nesterov, 5});
        VecF gf = to_f(*g);
        be.f32->muon_update({vf(pf), vf(gf), vf(buff), count, rows, cols, lr, beta, wd, gs, nesterov, 5});
        for (int k = 0; k < count; k++) {
            Vec pk(ep.begin() + long(k * m), ep.begin() + long((k + 1) * m)), bk(ebuf.begin() + long(k * m), ebuf.begin() + long((k + 1) * m));
            Vec gk(g->begin() + long(k * m), g->begin() + long((k + 1) * m));
            naive_muon(pk, gk, bk, rows, cols, lr, beta, wd, gs, nesterov, 5);
            std::copy(pk.begin(), pk.end(), ep.begin() + long(k * m));
            std::copy(bk.begin(), bk.end(), ebuf.begin() + long(k * m));
        }
    }
    const double err = test::max_rel_error(p.data(), ep.data(), n, 1e-3);
    std::printf("  %-28s f64 vs naive rel err %.2e\n", tag.c_str(), err);
    EXPECT_LT(err, 1e-12) << tag;
    EXPECT_LT(test::max_rel_error(buf.data(), ebuf.data(), n, 1e-3), 1e-14) << tag;
    EXPECT_FLOAT_AGREES((tag + "params").c_str(), pf, p);
    // The update moved the parameters by about lr per element (not vacuous).
    double moved = 0;
    for (size_t i = 0; i < n; i++) moved = std::max(moved, std::fabs(p[i] - random_vec(n, 140)[i]));
    EXPECT_GT(moved, 0.1 * lr) << tag;
}

TEST(KernelsCpu, MuonAgainstNaive) {
    check_muon(1, 5, 5, true);
    check_muon(3, 4, 7, true);   // wide, a stack of three
    check_muon(2, 9, 4, false);  // tall: worked on the transpose, scaled by sqrt(9/4)
}

// Each matrix is one thread's work: the same bits at any thread count.
TEST(KernelsCpu, MuonSameBitsAtAnyThreadCount) {
    const int count = 5, rows = 12, cols = 20;
    const size_t n = size_t(count) * rows * cols;
    const VecF g = to_f(random_vec(n, 150)), p0 = to_f(random_vec(n, 151));
    std::vector<VecF> results;
    for (int threads : {1, 2, 3}) {
        auto be = make_backend("cpu", threads);
        VecF p = p0, gg = g, buf(n, 0.f);
        be->muon_update({vf(p), vf(gg), vf(buf), count, rows, cols, 0.05, 0.9, 0.1, 1.0, true, 5});
        results.push_back(p);
    }
    EXPECT_EQ(results[0], results[1]);
    EXPECT_EQ(results[0], results[2]);
    EXPECT_NE(results[0], p0);
}

// On an orthogonal matrix's multiple the iteration is a scalar recurrence:
// G = s I (n x n) gives X0 = I / sqrt(n), X_{k+1} = (a x + b x^3 + c x^5) I.
TEST(KernelsCpu, MuonNewtonSchulzOnIdentity) {
    auto be = make_backend("cpu-f64", 2);
    const int n = 6;
    Vec p(size_t(n) * n, 0.0), g(p.size(), 0.0), buf(p.size(), 0.0);
    for (int i = 0; i < n; i++) g[size_t(i) * n + i] = 3.0;
    be->muon_update({vd(p), vd(g), vd(buf), 1, n, n, 1.0, 0.0, 0.0, 1.0, false, 5});  // beta 0: u = g
    double x = 1.0 / (std::sqrt(9.0 * n) + 1e-7) * 3.0;
    for (int s = 0; s < 5; s++) x = kMuonNsA * x + kMuonNsB * x * x * x + kMuonNsC * x * x * x * x * x;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) EXPECT_NEAR(p[size_t(i) * n + j], i == j ? -x : 0.0, 1e-13);
    EXPECT_GT(x, 0.6);  // five steps bring 1/sqrt(6) near 1: the orthogonalisation works
    EXPECT_LT(x, 1.2);
}

// AdamW with lr, t and the clip scale read from backend memory (the recorded
// step's form) gives the same bits as the values passed directly.
TEST(KernelsCpu, AdamWStepValuesFromMemory) {
    auto be = make_backend("cpu", 2);
    const size_t n = 1000;
    const std::vector<ParamRange> ranges = {{0, 600, true}, {640, 360, false}};
    const VecF p0 = to_f(random_vec(n, 90)), g0 = to_f(random_vec(n, 91)), m0 = to_f(random_vec(n, 92, -0.1, 0.1)),
               v0 = to_f(random_vec(n, 93, 1e-3, 1e-2));
    for (double norm : {0.7, 3.0}) {  // below and above grad_clip = 1.5
        SCOPED_TRACE("norm " + std::to_string(norm));
        VecF p1 = p0, g1 = g0, m1 = m0, v1 = v0, p2 = p0, g2 = g0, m2 = m0, v2 = v0;
        const double lr = 3e-3, clip = 1.5;
        const int t = 7;
        AdamW a{vf(p1), vf(g1), vf(m1), vf(v1), ranges.data(), int(ranges.size()), lr, 0.9, 0.95, 1e-8, 0.1,
                norm > clip ? clip / norm : 1.0, t};
        be->adamw_update(a);
        std::vector<double> hyper = {lr, double(t)}, norm_sq = {norm * norm};
        AdamW b{vf(p2), vf(g2), vf(m2), vf(v2), ranges.data(), int(ranges.size()), 99.0, 0.9, 0.95, 1e-8, 0.1, 1.0, 1};
        b.hyper = View{hyper.data(), DType::f64};
        b.norm_sq = View{norm_sq.data(), DType::f64};
        b.grad_clip = clip;
        be->adamw_update(b);
        EXPECT_EQ(p2, p1);
        EXPECT_EQ(m2, m1);
        EXPECT_EQ(v2, v1);
        EXPECT_NE(p2, p0);
    }
}

TEST(KernelsCpu, SumIntoAndGradSumSq) {
    auto be = make_backend("cpu", 2);
    const Vec x = random_vec(3001, 94);
    VecF xf = to_f(x);
    Vec xd = x;
    double acc = 0.25;
    double want = 0;
    for (float v : xf) want += double(v);
    be->sum_into({View{&acc, DType::f64}, vf(xf), xf.size(), 0.5});
    EXPECT_NEAR(acc, 0.25 + 0.5 * want, 1e-12);
    double want_d = 0;
    for (double v : xd) want_d += v;
    be->sum_into({View{&acc, DType::f64}, vd(xd), xd.size(), 2.0});  // accumulates
    EXPECT_NEAR(acc, 0.25 + 0.5 * want + 2.0 * want_d, 1e-11);

    double out = -1;
    be->grad_sumsq({View{&out, DType::f64}, vf(xf), xf.size()});
    EXPECT_EQ(out, be->grad_norm_squared(vf(xf), xf.size()));
    try {
        float bad = 0;
        be->sum_into({View{&bad, DType::f32}, vf(xf), 1, 1.0});
        ADD_FAILURE() << "sum_into accepted an f32 destination";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::RunFailed);
    }
}

// The recording contract of Backend::begin_capture, on the CPU backend: ops
// and asynchronous copies are recorded, not run; each replay runs them on the
// host memory as it is at replay time; calls that wait for a device throw
// while recording and abort_capture discards the recording.
TEST(KernelsCpu, RecordedStepReplaysWithCurrentInputs) {
    auto be = make_backend("cpu", 2);
    const size_t n = 64;
    float* host_in = static_cast<float*>(be->alloc_host(n * 4, "test input"));
    float* host_out = static_cast<float*>(be->alloc_host(n * 4, "test output"));
    float* dev_x = static_cast<float*>(be->alloc(n * 4, "x"));
    float* dev_y = static_cast<float*>(be->alloc(n * 4, "y"));
    for (size_t i = 0; i < n; i++) host_in[i] = float(i) - 10.0f;
    std::fill(host_out, host_out + n, -1.0f);

    std::string why;
    ASSERT_TRUE(be->begin_capture(&why)) << why;
    EXPECT_FALSE(be->begin_capture(&why)) << "a second recording started inside the first";
    be->to_device_async(dev_x, host_in, n * 4);
    be->residual_forward({View{dev_y, DType::f32}, View{dev_x, DType::f32}, View{dev_x, DType::f32}, n});  // y = 2x
    be->to_host_async(host_out, dev_y, n * 4);
    EXPECT_EQ(host_out[5], -1.0f) << "a recorded op ran while recording";
    for (const char* call : {"to_host", "synchronize", "grad_norm_squared"}) {
        try {
            float tmp = 0;
            if (std::string(call) == "to_host") be->to_host(&tmp, dev_x, 4);
            if (std::string(call) == "synchronize") be->synchronize();
            if (std::string(call) == "grad_norm_squared") be->grad_norm_squared(View{dev_x, DType::f32}, n);
            ADD_FAILURE() << call << " did not throw while recording";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(call), std::string::npos) << e.what();
        }
    }
    ASSERT_TRUE(be->end_capture(&why)) << why;
    be->replay();
    for (size_t i = 0; i < n; i++) ASSERT_EQ(host_out[i], 2.0f * (float(i) - 10.0f)) << i;
    for (size_t i = 0; i < n; i++) host_in[i] = float(i) * 0.5f;  // new inputs, same recording
    be->replay();
    for (size_t i = 0; i < n; i++) ASSERT_EQ(host_out[i], float(i)) << i;

    // An aborted recording leaves the last completed one in place and runs nothing.
    ASSERT_TRUE(be->begin_capture(&why));
    be->zero(dev_y, n * 4);
    be->abort_capture();
    EXPECT_FALSE(be->end_capture(&why));
    be->replay();
    EXPECT_EQ(host_out[3], 3.0f);
    be->free(dev_y);
    be->free(dev_x);
    be->free_host(host_out);
    be->free_host(host_in);
}

// The schedule of the CUDA embedding backward's dwte sum (its index logic,
// kernels/cuda/encoder_runs.h, is shared with the kernels), run on the host
// the way the two kernels run it: stage 1 walks each chunk of the sorted
// positions, stage 2 lets each crossing run's owner add its partials. Checked
// on token streams with very frequent tokens, runs aligned to chunk
// boundaries, runs spanning many chunks, one token everywhere, P below and
// not a multiple of the chunk size: every token's dwte row is written exactly
// once, with the sum of exactly its positions, and each sum adds the
// positions in increasing order.
TEST(KernelsCpu, EncoderRunsSchedule) {
    namespace er = cuda::encoder_runs;
    std::mt19937_64 rng(7);
    auto check = [&](std::vector<uint32_t> tokens, int S, const std::string& what) {
        SCOPED_TRACE(what + " S=" + std::to_string(S) + " P=" + std::to_string(tokens.size()));
        const int P = int(tokens.size());
        std::vector<int32_t> pos(P);
        for (int i = 0; i < P; i++) pos[i] = i;
        std::stable_sort(pos.begin(), pos.end(), [&](int x, int y) { return tokens[x] < tokens[y]; });
        std::vector<uint32_t> keys(P);
        for (int i = 0; i < P; i++) keys[i] = tokens[pos[i]];
        // A "row" is the list of positions summed, in order; partial slots likewise.
        std::map<uint32_t, std::vector<int>> written;
        std::map<uint32_t, int> writes;
        const int G = er::num_chunks(P, S);
        std::vector<std::vector<int>> partial(2 * size_t(G));
        std::vector<int> slot_writes(2 * size_t(G), 0);
        for (int c = 0; c < G; c++) {  // dwte_chunk_kernel
            const er::Chunk ch = er::chunk(c, S, P);
            std::vector<int> acc;
            int a = ch.begin;
            for (int j = ch.begin; j < ch.end; j++) {
                acc.push_back(pos[j]);
                const int b = j + 1;
                if (b < ch.end && keys[b] == keys[j]) continue;
                if (!er::continues_before(keys.data(), a, ch) && !er::continues_after(keys.data(), b, ch, P)) {
                    written[keys[j]] = acc;
                    writes[keys[j]]++;
                } else {
                    const int slot = er::partial_slot(c, a, ch);
                    ASSERT_GE(slot, 0);
                    ASSERT_LT(slot, 2 * G);
                    partial[slot] = acc;
                    slot_writes[slot]++;
                }
                acc.clear();
                a = b;
            }
        }
        for (int w : slot_writes) ASSERT_LE(w, 1) << "a partial slot written twice";
        for (int c = 0; c < G; c++) {  // dwte_cross_kernel
            const er::Owned o = er::owned_run(keys.data(), c, S, P);
            if (!o.owns) continue;
            ASSERT_EQ(slot_writes[o.own_slot], 1) << "owner's slot never written";
            std::vector<int> acc = partial[o.own_slot];
            for (int k = c + 1; k <= o.last_chunk; k++) {
                ASSERT_EQ(slot_writes[2 * k], 1) << "continuation slot of chunk " << k << " never written";
                acc.insert(acc.end(), partial[2 * k].begin(), partial[2 * k].end());
            }
            written[o.key] = acc;
            writes[o.key]++;
        }
        std::map<uint32_t, std::vector<int>> want;
        for (int i = 0; i < P; i++) want[tokens[i]].push_back(i);  // increasing positions
        ASSERT_EQ(written.size(), want.size());
        for (const auto& [tok, list] : want) {
            ASSERT_EQ(writes[tok], 1) << "token " << tok << " written " << writes[tok] << " times";
            ASSERT_EQ(written[tok], list) << "token " << tok << ": wrong positions or order";
        }
    };
    for (int S : {1, 2, 7, 64}) {
        for (int P : {1, 5, 63, 64, 65, 1000, 4096}) {
            std::vector<uint32_t> t(P);
            for (auto& x : t) x = uint32_t(rng() % 20);
            check(t, S, "uniform over 20");
            // Zipf-like: token 0 about 1/3 of all positions, token 1 a sixth, ...
            for (auto& x : t) {
                const double u = std::uniform_real_distribution<double>(0, 1)(rng);
                x = uint32_t(std::min(50256.0, std::floor(std::pow(50257.0, u * u * u)) - 1));
            }
            check(t, S, "zipf");
            check(std::vector<uint32_t>(P, 198), S, "one token");
            for (int i = 0; i < P; i++) t[i] = uint32_t(i / S);  // runs exactly one chunk long, aligned
            check(t, S, "aligned runs");
            for (int i = 0; i < P; i++) t[i] = uint32_t((i + S / 2) / (3 * S + 1));  // runs over several chunks, unaligned
            check(t, S, "long unaligned runs");
        }
    }
    // GPT-2's micro-batch: 65536 positions, the most frequent token at 4%.
    std::vector<uint32_t> t(65536);
    for (auto& x : t) x = (rng() % 25 == 0) ? 13 : uint32_t(rng() % 50257);
    check(t, 64, "gpt2 batch");
}

// ---------------------------------------------------------------- kernel lab

// Generated from the registry: every variant of every family the CPU backend
// reads that has lab ops (cpu_matmul: blas, loops; layernorm: fused,
// separate), on the lab's test shapes, against the float64 CPU.
// One test per family, every case of it inside, each failure naming its case.
class CpuLab : public ::testing::TestWithParam<std::string> {};

TEST_P(CpuLab, MatchesFloat64) {
    auto ref = lab::reference_for("cpu");
    const auto ops = lab::ops(GetParam());
    ASSERT_FALSE(ops.empty());
    for (const auto& op : ops)
        for (const lab::Case& c : lab::cases(GetParam(), lab::shapes(GetParam(), op, lab::ShapeSet::tests, "cpu"))) {
            SCOPED_TRACE(c.name());
            const lab::Result r = lab::run("cpu", c, *ref, nullptr);
            ASSERT_EQ(r.cannot_run, "");
            ASSERT_FALSE(r.errors.empty());
            std::printf("  %s:", c.name().c_str());
            for (const auto& e : r.errors) {
                std::printf(" %s %.1e", e.output.c_str(), e.rel_l2);
                EXPECT_LE(e.rel_l2, e.bound) << e.output;
            }
            std::printf("\n");
            EXPECT_TRUE(r.ok);
        }
}

std::vector<std::string> cpu_lab_families() {
    std::vector<std::string> out;
    for (const auto& f : kernel_families())
        if (std::find(f.backends.begin(), f.backends.end(), "cpu") != f.backends.end() && !lab::ops(f.name).empty()) out.push_back(f.name);
    return out;
}

INSTANTIATE_TEST_SUITE_P(Registry, CpuLab, ::testing::ValuesIn(cpu_lab_families()));

// The families only the CUDA backend reads (matmul, classifier, attention,
// adamw, muon): their lab problems on the float32 CPU twin of each op, at the
// CUDA tests' shapes, against float64. This runs, without a GPU, the problem
// code the CUDA tests use (buffers, calls, the new dimensions: ReLU², the
// soft cap), so only the kernels themselves are left for the device.
class CpuLabTwin : public ::testing::TestWithParam<std::string> {};

TEST_P(CpuLabTwin, CudaProblemsOnTheCpuTwin) {
    auto ref = lab::reference_for("cpu");
    const KernelFamily* f = find_kernel_family(GetParam());
    ASSERT_NE(f, nullptr);
    int ran = 0;
    for (const auto& op : lab::ops(GetParam())) {
        const auto shapes = lab::shapes(GetParam(), op, lab::ShapeSet::tests);
        ASSERT_FALSE(shapes.empty()) << op;
        for (const KernelProblem& p : shapes) {
            // One case per shape: the CPU reads none of the family's choices.
            const lab::Case c{GetParam(), f->variants.front(), {}, p};
            SCOPED_TRACE(c.name());
            const lab::Result r = lab::run_twin(c, *ref);
            ASSERT_EQ(r.cannot_run, "");
            ASSERT_FALSE(r.errors.empty());
            std::printf("  %s:", p.text().c_str());
            for (const auto& e : r.errors) {
                std::printf(" %s %.1e", e.output.c_str(), e.rel_l2);
                EXPECT_LE(e.rel_l2, e.bound) << e.output;
            }
            std::printf("\n");
            EXPECT_TRUE(r.ok);
            ran++;
        }
    }
    EXPECT_GT(ran, 0);
}

std::vector<std::string> cuda_only_lab_families() {
    std::vector<std::string> out;
    for (const auto& f : kernel_families())
        if (std::find(f.backends.begin(), f.backends.end(), "cpu") == f.backends.end() && !lab::ops(f.name).empty()) out.push_back(f.name);
    return out;
}

INSTANTIATE_TEST_SUITE_P(Registry, CpuLabTwin, ::testing::ValuesIn(cuda_only_lab_families()));

TEST(KernelLab, CasesComeFromTheRegistry) {
    // Every variant x the combinations of the parameters it reads x shape:
    // flash with 2 x 2 tile sizes, cudnn once, wgmma with P in shared memory and in registers, each with
    // cp.async loads, TMA loads, TMA loads with the softmax overlapped, and those with the ping-pong.
    const auto shapes = lab::shapes("attention", "forward", lab::ShapeSet::tests);
    const auto c = lab::cases("attention", shapes);
    EXPECT_EQ(c.size(), shapes.size() * (2 * 2 + 1 + 2 * 4));
    EXPECT_EQ(c.front().choices().at("attention"), "flash");
    EXPECT_EQ(c.front().choices().at("attention.block_q"), "128");
    EXPECT_EQ(c.front().choices().count("attention.fold_d"), 0u);  // a backward-only parameter
    // The backward's flash cases also vary fold_d, and wgmma's wgmma_bwd, which only the backward reads;
    // p_regs and tma are wgmma's forward only.
    const auto b = lab::cases("attention", lab::shapes("attention", "backward", lab::ShapeSet::tests));
    EXPECT_EQ(b.size(), shapes.size() * (2 * 2 * 2 + 1 + 2));
    EXPECT_EQ(std::count_if(b.begin(), b.end(), [](const lab::Case& x) { return x.choices().count("attention.wgmma_bwd") && x.choices().at("attention.wgmma_bwd") == "1"; }),
              long(shapes.size()));
    EXPECT_EQ(std::count_if(b.begin(), b.end(), [](const lab::Case& x) { return x.choices().count("attention.fold_d") && x.choices().at("attention.fold_d") == "1"; }),
              long(shapes.size() * 2 * 2));
    // can_run: cuDNN's fused attention wants hd % 8 == 0 and <= 256; the CPU backend reads no attention kernels.
    lab::Case odd = c.front();
    odd.variant = "cudnn";
    odd.params.clear();
    odd.problem.dims = {{"B", 1}, {"T", 8}, {"NH", 2}, {"HD", 36}};
    EXPECT_NE(lab::can_run(odd, DeviceCaps{"cuda", 90, 232448}).find("multiple of 8"), std::string::npos);
    odd.problem.dims.back().second = 64;
    EXPECT_EQ(lab::can_run(odd, DeviceCaps{"cuda", 90, 232448}), "");
    // wgmma is sm_90a code: an sm_80 or sm_100 device cannot run it.
    odd.variant = "wgmma";
    EXPECT_EQ(lab::can_run(odd, DeviceCaps{"cuda", 90, 232448}), "");
    EXPECT_NE(lab::can_run(odd, DeviceCaps{"cuda", 80, 166912}).find("sm_90a"), std::string::npos);
    EXPECT_NE(lab::can_run(odd, DeviceCaps{"cuda", 100, 232448}).find("sm_90a"), std::string::npos);
    odd.variant = "cudnn";
    EXPECT_NE(lab::can_run(odd, DeviceCaps{"cpu", 0, 0}), "");
    // The families without lab ops are the ones whose variants are a model-level
    // choice (which passes run); Model.KernelVariantsComputeTheSameStep and the
    // CUDA model tests cover those.
    for (const auto& f : kernel_families()) {
        const bool model_level = f.name == "gelu" || f.name == "bias_grad" || f.name == "head";
        EXPECT_EQ(lab::ops(f.name).empty(), model_level) << f.name;
    }
    // --shape overrides dimensions of the op's bench shape and names a bad key.
    const KernelProblem p = lab::parse_shape("attention", "backward", "T=2048,B=2");
    EXPECT_EQ(p.dim("T"), 2048);
    EXPECT_EQ(p.dim("B"), 2);
    EXPECT_EQ(p.dim("HD"), 64);
    try {
        lab::parse_shape("attention", "backward", "Q=3");
        ADD_FAILURE() << "unknown dimension accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        EXPECT_NE(std::string(e.what()).find("'Q'"), std::string::npos) << e.what();
    }
}

// The timing path on the CPU: repetitions, the median, the case's own counts.
TEST(KernelLab, TimesACase) {
    auto ref = lab::reference_for("cpu");
    lab::Timing t;
    t.warmup = 1;
    t.repeats = 3;
    for (const char* variant : {"fused", "separate"}) {
        lab::Case c{"layernorm", variant, {}, KernelProblem{"forward", {{"N", 64}, {"C", 48}}}};
        const lab::Result r = lab::run("cpu", c, *ref, &t);
        ASSERT_TRUE(r.timed) << variant;
        EXPECT_TRUE(r.checked);
        EXPECT_TRUE(r.ok) << variant;
        EXPECT_GT(r.median_ms, 0.0);
        EXPECT_LE(r.min_ms, r.median_ms);
        EXPECT_LE(r.median_ms, r.max_ms);
        EXPECT_GE(r.rotation, 1);
        // The separate variant reads and writes the residual once more: 5 passes over N*C floats instead of 4.
        EXPECT_EQ(r.bytes, 64.0 * 48 * (std::string(variant) == "separate" ? 5 : 4) * 4 + 2 * 64 * 4) << variant;
        EXPECT_NEAR(r.gbs, r.bytes / (r.median_ms / 1e3) / 1e9, 1e-9 * r.gbs);
        const std::string j = lab::json(r);
        EXPECT_NE(j.find("\"variant\":\"" + std::string(variant) + "\""), std::string::npos) << j;
    }
}

// ---------------------------------------------------------------- determinism

// Every op with a reduction, run twice on the same inputs: bit-identical.
TEST(KernelsCpu, RepeatableResults) {
    auto be = make_backend("cpu", 2);
    const int B = 3, T = 9, C = 24, NH = 4, N = B * T, Vp = 11;
    std::vector<int32_t> tok(N);
    for (int i = 0; i < N; i++) tok[i] = (i * 7) % Vp;
    VecF dout = to_f(random_vec(size_t(N) * C, 90)), inp = to_f(random_vec(size_t(N) * C, 91));
    VecF w = to_f(random_vec(C, 92)), mean(N), rstd(N), out(size_t(N) * C);
    VecF qkv = to_f(random_vec(size_t(N) * 3 * C, 93)), lse(size_t(B) * NH * T), aout(size_t(N) * C);
    auto run = [&] {
        VecF dwte(size_t(Vp) * C, 0.0f), dwpe(size_t(T) * C, 0.0f), dinp(size_t(N) * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
        VecF dqkv(qkv.size());
        be->encoder_backward({vf(dwte), vf(dwpe), vf(dout), tok.data(), B, T, C});
        be->layernorm_forward({vf(out), vf(mean), vf(rstd), vf(inp), vf(w), vf(w), N, C});
        be->layernorm_backward({vf(dinp), vf(dw), vf(db), vf(dout), vf(inp), vf(w), vf(mean), vf(rstd), N, C});
        be->attention_forward({vf(aout), vf(lse), vf(qkv), B, T, C, NH});
        be->attention_backward({vf(dqkv), vf(dout), vf(qkv), vf(aout), vf(lse), B, T, C, NH});
        VecF all;
        for (const VecF* v : {&dwte, &dwpe, &dinp, &dw, &db, &dqkv}) all.insert(all.end(), v->begin(), v->end());
        return all;
    };
    EXPECT_EQ(run(), run());
}

// ---------------------------------------------------------------- make_backend

// The fused GELU of matmul_forward / matmul_backward equals the separate ops.
TEST(KernelsCpu, MatmulGeluFusionsEqualSeparateOps) {
    auto be = make_backend("cpu", 2);
    const int N = 5, C = 6, OC = 9;
    VecF inp = to_f(random_vec(size_t(N) * C, 1)), w = to_f(random_vec(size_t(OC) * C, 2)), b = to_f(random_vec(OC, 3));
    VecF pre(size_t(N) * OC), out(size_t(N) * OC), ref_pre(size_t(N) * OC), ref_out(size_t(N) * OC);
    be->matmul_forward({vf(out), vf(inp), vf(w), vf(b), N, C, OC, vf(pre)});
    be->matmul_forward({vf(ref_pre), vf(inp), vf(w), vf(b), N, C, OC});
    be->gelu_forward({vf(ref_out), vf(ref_pre), ref_pre.size()});
    EXPECT_EQ(pre, ref_pre);
    EXPECT_EQ(out, ref_out);

    // Backward: dinp = (dout @ w) * gelu'(pre), with pre (N,C) the pre-activation of inp.
    VecF dout = to_f(random_vec(size_t(N) * OC, 4)), gpre = to_f(random_vec(size_t(N) * C, 5));
    VecF dinp(size_t(N) * C), dw(size_t(OC) * C, 0.f), ref_dinp(size_t(N) * C), ref_dw(size_t(OC) * C, 0.f);
    be->matmul_backward({vf(dinp), vf(dw), View{}, vf(dout), vf(inp), vf(w), N, C, OC, vf(gpre)});
    be->matmul_backward({vf(ref_dinp), vf(ref_dw), View{}, vf(dout), vf(inp), vf(w), N, C, OC});
    be->gelu_backward({vf(ref_dinp), vf(gpre), vf(ref_dinp), ref_dinp.size()});
    EXPECT_EQ(dinp, ref_dinp);
    EXPECT_EQ(dw, ref_dw);

    // copy converts between the CPU dtypes.
    Vec d(out.size());
    be->copy(vd(d), vf(out), out.size());
    for (size_t i = 0; i < out.size(); i++) ASSERT_EQ(d[i], double(out[i]));
}

TEST(KernelsCpu, MakeBackend) {
    auto cpu = make_backend("cpu", 2);
    EXPECT_EQ(cpu->name(), "cpu");
    EXPECT_EQ(cpu->param_dtype(), DType::f32);
    EXPECT_EQ(cpu->stat_dtype(), DType::f32);
    EXPECT_NE(cpu->device_info().find("float32"), std::string::npos) << cpu->device_info();
    auto f64 = make_backend("cpu-f64");
    EXPECT_EQ(f64->name(), "cpu-f64");
    EXPECT_EQ(f64->act_dtype(), DType::f64);
#if GPT_HAVE_CUDA
    const bool gpu = cuda_device_count() > 0;
#else
    const bool gpu = false;
#endif
    EXPECT_EQ(make_backend("auto")->name(), gpu ? "cuda" : "cpu");

    void* p = cpu->alloc(100, "test buffer");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    cpu->zero(p, 100);
    cpu->free(p);

    for (const char* bad : {"bogus", "cuda"}) {
        if (gpu && std::string(bad) == "cuda") continue;
        try {
            make_backend(bad);
            ADD_FAILURE() << "make_backend(\"" << bad << "\") did not throw";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput) << bad;
            const std::string msg = e.what();
            EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
            EXPECT_NE(msg.find("auto"), std::string::npos) << msg;
        }
    }
}

TEST(KernelsCpu, DtypeMismatchIsRunFailed) {
    auto be = make_backend("cpu-f64");
    VecF a(4), b(4), out(4);
    try {
        be->residual_forward({vf(out), vf(a), vf(b), 4});
        ADD_FAILURE() << "dtype mismatch not detected";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::RunFailed);
        EXPECT_NE(std::string(e.what()).find("residual_forward"), std::string::npos) << e.what();
    }
}

TEST(KernelsCpu, AllocFailureIsOutOfMemory) {
    auto be = make_backend("cpu");
    try {
        void* p = be->alloc(size_t(1) << 62, "huge test buffer");
        be->free(p);
        ADD_FAILURE() << "allocating 4 EiB succeeded";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::OutOfMemory);
        EXPECT_NE(std::string(e.what()).find("huge test buffer"), std::string::npos) << e.what();
    }
}

// kernels.matmul.dw_stream's race test (host logic of the CUDA backend, which
// decides when the main stream must wait for weight gradients pending on the
// side stream): two accesses race only where they share a byte and at least
// one writes it; adjacent ranges and null pointers touch nothing shared.
TEST(SideStream, RangesRaceOnlyWhereAWriteOverlaps) {
    using cuda::ranges_race;
    using cuda::side_range;
    alignas(16) static char buf[4096];
    // Pending: a weight gradient reads dout [0, 1024) and inp [1024, 2048), writes dW [3072, 3584).
    const std::vector<cuda::SideRange> pending = {side_range(buf, 1024, false), side_range(buf + 1024, 1024, false),
                                                  side_range(buf + 3072, 512, true)};
    EXPECT_FALSE(ranges_race({side_range(buf, 2048, false)}, pending));          // reading what it reads
    EXPECT_TRUE(ranges_race({side_range(buf + 1023, 2, true)}, pending));        // writing one byte of dout
    EXPECT_TRUE(ranges_race({side_range(buf + 2047, 1, true)}, pending));        // the last byte of inp
    EXPECT_FALSE(ranges_race({side_range(buf + 2048, 1024, true)}, pending));    // the gap, adjacent on both sides
    EXPECT_TRUE(ranges_race({side_range(buf + 3583, 8, false)}, pending));       // reading the last byte of dW
    EXPECT_FALSE(ranges_race({side_range(buf + 3584, 512, true)}, pending));     // just past dW
    EXPECT_FALSE(ranges_race({side_range(nullptr, 1 << 20, true)}, pending));    // a null view touches nothing
    EXPECT_FALSE(ranges_race({side_range(buf, 4096, true)}, {}));                // nothing pending
    EXPECT_TRUE(ranges_race({side_range(buf + 2048, 1, false), side_range(buf + 100, 1, true)}, pending));  // any one of several
}

}  // namespace
}  // namespace gpt
