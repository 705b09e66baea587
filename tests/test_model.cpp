// The whole model: layout table, initialisation, and a finite-difference
// gradient check of the full forward/backward in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "kernels/backend.h"
#include "model/gpt2.h"
#include "tests/test_util.h"

using namespace gpt;

namespace {

ModelShape small_shape() {
    ModelShape s;
    s.L = 2;
    s.NH = 2;
    s.C = 8;
    s.maxT = 6;
    s.V = 11;  // padded to 128: most logits are padding and must not count
    s.Vp = 128;
    return s;
}

// A 2-thread CPU backend with these kernel choices.
std::unique_ptr<Backend> cpu_backend_with(std::map<std::string, std::string> kernels) {
    BackendOptions o;
    o.threads = 2;
    o.kernels = KernelChoices(std::move(kernels));
    return make_backend("cpu", o);
}

}  // namespace

TEST(Layout, D12MatchesLlmcParameterCount) {
    ModelShape s;  // defaults are GPT-2 124M with the padded vocabulary
    EXPECT_EQ(param_count(s), size_t(124475904));  // llm.c prints this figure for gpt2_124M.bin
}

TEST(Layout, OffsetsAlignedAndDisjoint) {
    for (DType act : {DType::f32, DType::bf16}) {
        ModelShape s = small_shape();
        for (const Layout& l : {param_layout(s), activation_layout(s, 3, 5, act, DType::f32)}) {
            size_t end = 0, end_bytes = 0;
            for (const auto& t : l.tensors) {
                EXPECT_EQ(t.offset % kLayoutAlign, 0u) << t.name;
                EXPECT_EQ(t.byte_offset % 256, 0u) << t.name;
                EXPECT_GE(t.offset, end) << t.name;
                EXPECT_GE(t.byte_offset, end_bytes) << t.name;
                end = t.offset + t.numel;
                end_bytes = t.byte_offset + t.numel * dtype_size(t.dtype);
            }
            EXPECT_LE(end, l.total);
            EXPECT_LE(end_bytes, l.total_bytes);
        }
    }
    // Weight decay exactly on the 2-D weights.
    for (const auto& t : param_layout(small_shape()).tensors) {
        const bool matrix = t.name == "wte" || t.name == "wpe" || t.name == "qkvw" || t.name == "attprojw" || t.name == "fcw" ||
                            t.name == "fcprojw";
        EXPECT_EQ(t.decay, matrix) << t.name;
    }
}

TEST(Model, InitIsSeededAndScaledLikeGpt2) {
    auto be = make_backend("cpu", 1);
    ModelShape s;
    s.L = 4;
    s.NH = 4;
    s.C = 64;
    s.maxT = 32;
    s.V = 500;
    s.Vp = 512;
    GPT2 a(s, *be, 1, 8), b(s, *be, 1, 8), c(s, *be, 1, 8);
    a.init_weights(7);
    b.init_weights(7);
    c.init_weights(8);
    EXPECT_EQ(a.params_llmc(), b.params_llmc());
    EXPECT_NE(a.params_llmc(), c.params_llmc());
    auto stdev = [](const std::vector<double>& v) {
        double s2 = 0;
        for (double x : v) s2 += x * x;
        return std::sqrt(s2 / v.size());
    };
    EXPECT_NEAR(stdev(a.read_param("wte")), 0.02, 0.001);
    EXPECT_NEAR(stdev(a.read_param("fcw")), 0.02, 0.001);
    EXPECT_NEAR(stdev(a.read_param("attprojw")), 0.02 / std::sqrt(8.0), 0.0005);
    EXPECT_NEAR(stdev(a.read_param("fcprojw")), 0.02 / std::sqrt(8.0), 0.0005);
    for (double x : a.read_param("ln1w")) ASSERT_EQ(x, 1.0);
    for (double x : a.read_param("qkvb")) ASSERT_EQ(x, 0.0);
}

// Central differences of the loss against the backward's gradients, at a
// dozen random elements of every parameter tensor, in float64.
void check_whole_model_gradient(const ModelShape& s, const std::string& tag) {
    auto be = make_backend("cpu-f64", 1);
    const int B = 2, T = 5;
    GPT2 m(s, *be, B, T);
    test::randomize_params(m, 3, 0.4);
    std::vector<int32_t> x = {1, 5, 3, 3, 10, 0, 2, 9, 9, 4}, y = {5, 3, 3, 10, 0, 2, 9, 9, 4, 7};
    const float dloss = 1.0f / (B * T);

    m.zero_grad();
    const double loss0 = m.forward(x.data(), y.data(), true, dloss);
    ASSERT_TRUE(std::isfinite(loss0));
    m.backward();

    std::mt19937 g(11);
    double worst = 0;
    int checked = 0;
    for (const auto& t : m.param_layout().tensors) {
        auto grad = m.read_grad(t.name);
        auto p = m.read_param(t.name);
        // Padded rows of wte (and of lm_head) receive no gradient: their logits never enter the loss.
        if (t.name == "wte" || t.name == "lm_head")
            for (size_t i = size_t(s.V) * s.C; i < t.numel; i++) ASSERT_EQ(grad[i], 0.0) << tag << ": padded " << t.name << " row has gradient";
        for (int k = 0; k < 12; k++) {
            size_t i = g() % t.numel;
            if (t.name == "wte" || t.name == "lm_head") i = g() % (size_t(s.V) * s.C);
            if (t.name == "wpe") i = g() % (size_t(T) * s.C);  // rows >= T are unused at this T
            const double h = 1e-5, orig = p[i];
            p[i] = orig + h;
            m.write_param(t.name, p);
            const double lp = m.forward(x.data(), y.data(), false);
            p[i] = orig - h;
            m.write_param(t.name, p);
            const double lm = m.forward(x.data(), y.data(), false);
            p[i] = orig;
            m.write_param(t.name, p);
            const double fd = (lp - lm) / (2 * h);
            const double err = std::fabs(fd - grad[i]) / std::max(1e-6, std::fabs(fd));
            ASSERT_FALSE(std::isnan(grad[i])) << tag << " " << t.name;
            EXPECT_LT(err, 1e-5) << tag << ": " << t.name << "[" << i << "] analytic " << grad[i] << " numeric " << fd;
            worst = std::max(worst, err);
            checked++;
        }
    }
    std::printf("whole-model gradient check %-28s %3d elements, max relative error %.3g\n", tag.c_str(), checked, worst);
}

TEST(Model, FiniteDifferenceGradientOfWholeModel) { check_whole_model_gradient(small_shape(), "gpt2"); }

// Every architecture choice alone, and all of them together.
std::vector<std::pair<std::string, Arch>> arch_variants() {
    std::vector<std::pair<std::string, Arch>> v;
    Arch a;
    a.pos = PosEmb::rope;
    a.rope_base = 100;
    v.push_back({"rope", a});
    a = Arch{};
    a.norm = NormKind::rmsnorm;
    v.push_back({"rmsnorm", a});
    a.norm_params = false;
    v.push_back({"rmsnorm, no params", a});
    a = Arch{};
    a.norm_params = false;
    v.push_back({"layernorm, no params", a});
    a = Arch{};
    a.qk_norm = true;
    v.push_back({"qk_norm", a});
    a = Arch{};
    a.act = Activation::relu2;
    v.push_back({"relu2", a});
    a = Arch{};
    a.bias = false;
    v.push_back({"no bias", a});
    a = Arch{};
    a.tied_head = false;
    v.push_back({"untied head", a});
    a = Arch{};
    a.softcap = 1.5;  // small: the randomised logits reach the tanh's bend
    v.push_back({"softcap", a});
    a.pos = PosEmb::rope;
    a.rope_base = 100;
    a.norm = NormKind::rmsnorm;
    a.norm_params = false;
    a.qk_norm = true;
    a.act = Activation::relu2;
    a.bias = false;
    a.tied_head = false;
    v.push_back({"all (modern)", a});
    return v;
}

TEST(Model, FiniteDifferenceGradientEveryArchitecture) {
    for (const auto& [tag, arch] : arch_variants()) {
        ModelShape s = small_shape();
        s.arch = arch;
        check_whole_model_gradient(s, tag);
    }
}

TEST(Layout, ArchitectureChoosesTheTensors) {
    auto names = [](const Arch& a) {
        ModelShape s = small_shape();
        s.arch = a;
        std::string out;
        for (const auto& t : param_layout(s).tensors) out += (out.empty() ? "" : " ") + t.name;
        return out;
    };
    EXPECT_EQ(names(Arch{}), "wte wpe ln1w ln1b qkvw qkvb attprojw attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb");
    const auto v = arch_variants();
    EXPECT_EQ(names(v[0].second), "wte ln1w ln1b qkvw qkvb attprojw attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb");  // rope
    EXPECT_EQ(names(v[1].second), "wte wpe ln1w qkvw qkvb attprojw attprojb ln2w fcw fcb fcprojw fcprojb lnfw");  // rmsnorm: gains only
    EXPECT_EQ(names(v[2].second), "wte wpe qkvw qkvb attprojw attprojb fcw fcb fcprojw fcprojb");
    EXPECT_EQ(names(v[6].second), "wte wpe ln1w qkvw attprojw ln2w fcw fcprojw lnfw");  // no bias: no LayerNorm bias either
    EXPECT_EQ(names(v[7].second), "wte wpe ln1w ln1b qkvw qkvb attprojw attprojb ln2w ln2b fcw fcb fcprojw fcprojb lnfw lnfb lm_head");
    EXPECT_EQ(names(v.back().second), "wte qkvw attprojw fcw fcprojw lm_head");
    EXPECT_TRUE(Arch{}.non_gpt2_keys().empty());
    EXPECT_EQ(v.back().second.non_gpt2_keys().front(), "model.pos_emb=rope");
    // The hidden matrices Muon orthogonalises: q, k and v separately.
    ModelShape s = small_shape();
    const auto stacks = hidden_matrices(param_layout(s), s);
    ASSERT_EQ(stacks.size(), 4u);
    EXPECT_EQ(stacks[0].count, 3 * s.L);
    EXPECT_EQ(stacks[0].rows, s.C);
    EXPECT_EQ(stacks[2].rows, 4 * s.C);
    EXPECT_EQ(stacks[3].cols, 4 * s.C);
}

TEST(Model, InitOptionsAndSharedTensorsKeepGpt2Values) {
    auto be = make_backend("cpu", 1);
    ModelShape s;
    s.L = 2;
    s.NH = 2;
    s.C = 32;
    s.maxT = 16;
    s.V = 100;
    s.Vp = 128;
    GPT2 plain(s, *be, 1, 4);
    plain.init_weights(5);
    ModelShape m = s;
    m.arch = arch_variants().back().second;  // no wpe, no biases, no gains, lm_head
    GPT2 modern(m, *be, 1, 4);
    modern.init_weights(5, InitOptions{true, 0.0});
    // Every tensor both have gets GPT-2's values, although wpe is missing before them.
    for (const char* name : {"wte", "qkvw", "fcw"}) EXPECT_EQ(modern.read_param(name), plain.read_param(name)) << name;
    for (const char* name : {"attprojw", "fcprojw", "lm_head"})
        for (double x : modern.read_param(name)) ASSERT_EQ(x, 0.0) << name;
    GPT2 head(m, *be, 1, 4);
    head.init_weights(5, InitOptions{false, 0.5});
    double s2 = 0;
    const auto h = head.read_param("lm_head");
    for (double x : h) s2 += x * x;
    EXPECT_NEAR(std::sqrt(s2 / h.size()), 0.5, 0.02);
    EXPECT_EQ(head.read_param("attprojw"), plain.read_param("attprojw"));
}

TEST(Model, Float32AgreesWithFloat64) {
    ModelShape s = small_shape();
    const int B = 2, T = 5;
    auto be32 = make_backend("cpu", 1);
    auto be64 = make_backend("cpu-f64", 1);
    GPT2 a(s, *be32, B, T), b(s, *be64, B, T);
    test::randomize_params(b, 5, 0.3);
    for (const auto& t : b.param_layout().tensors) a.write_param(t.name, b.read_param(t.name));
    std::vector<int32_t> x = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, y = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
    a.zero_grad();
    b.zero_grad();
    const double la = a.forward(x.data(), y.data(), true, 0.1f), lb = b.forward(x.data(), y.data(), true, 0.1f);
    EXPECT_NEAR(la, lb, 1e-5 * std::fabs(lb));
    a.backward();
    b.backward();
    for (const auto& t : b.param_layout().tensors) {
        auto ga = a.read_grad(t.name), gb = b.read_grad(t.name);
        double mx = 0, diff = 0;
        for (size_t i = 0; i < ga.size(); i++) {
            mx = std::max(mx, std::fabs(gb[i]));
            diff = std::max(diff, std::fabs(ga[i] - gb[i]));
        }
        ASSERT_FALSE(std::isnan(diff)) << t.name;
        EXPECT_LE(diff, 1e-4 * mx + 1e-9) << t.name;
    }
}

// The training form of the forward pass (tokens staged in host memory from
// alloc_host, the loss summed in backend memory, nothing read back) computes
// what forward() does: the same mean loss and the same gradients.
TEST(Model, EnqueuedForwardEqualsForward) {
    auto be = make_backend("cpu", 1);
    ModelShape s = small_shape();
    const int B = 2, T = 5;
    GPT2 a(s, *be, B, T), b(s, *be, B, T);
    a.init_weights(3);
    b.load_params_llmc(a.params_llmc());
    std::vector<int32_t> x = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, y = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
    const double dloss = 1.0 / (B * T);
    a.zero_grad();
    const double la = a.forward(x.data(), y.data(), true, dloss);
    a.backward();

    int32_t* staged = static_cast<int32_t*>(be->alloc_host(2 * x.size() * 4, "staged tokens"));
    std::copy(x.begin(), x.end(), staged);
    std::copy(y.begin(), y.end(), staged + x.size());
    double* loss = static_cast<double*>(be->alloc(8, "loss"));
    be->zero(loss, 8);
    b.zero_grad();
    b.load_tokens_async(staged);
    b.forward_pass(true, true, dloss, View{loss, DType::f64}, 1.0 / (B * T));
    b.backward();
    double lb = 0;
    be->to_host(&lb, loss, 8);
    EXPECT_NEAR(lb, la, 1e-12 * la);
    for (const auto& t : a.param_layout().tensors) EXPECT_EQ(b.read_grad(t.name), a.read_grad(t.name)) << t.name;
    be->free(loss);
    be->free_host(staged);
}

TEST(Model, LogitsWithoutTargetsAndLlmcParamRoundTrip) {
    auto be = make_backend("cpu", 1);
    ModelShape s = small_shape();
    GPT2 m(s, *be, 1, 4);
    m.init_weights(1);
    std::vector<int32_t> x = {1, 2, 3, 4};
    EXPECT_TRUE(std::isnan(m.forward(x.data(), nullptr)));
    auto logits = m.logits();
    ASSERT_EQ(logits.size(), size_t(4) * s.Vp);
    for (double v : logits) ASSERT_TRUE(std::isfinite(v));
    auto flat = m.params_llmc();
    EXPECT_EQ(flat.size(), param_count(s));
    GPT2 m2(s, *be, 1, 4);
    m2.load_params_llmc(flat);
    EXPECT_EQ(m2.params_llmc(), flat);
    flat.pop_back();
    try {
        m2.load_params_llmc(flat);
        FAIL() << "a short parameter vector was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
    }
}

// kernels.head: chunked runs lm_head, the classifier and dlnf a chunk of rows
// at a time: the same step as the whole head, for plain GPT-2 and for an
// untied, soft-capped head, with chunks that divide B*T = 21 and ones that
// leave a remainder (1, 4, 21, 64 rows). The losses, the dlogits left in the
// logits buffer and every gradient match to float32 rounding, within 1e-6 of
// each one's largest value (each row's products are the same dot products;
// lm_head's weight gradient is one product in both). Two micro-steps check
// the gradients still accumulate.
TEST(Model, ChunkedHeadComputesTheSameStep) {
    const int B = 3, T = 7;
    std::mt19937 g(11);
    ModelShape plain = small_shape();
    plain.maxT = T;
    ModelShape capped = plain;
    capped.arch.tied_head = false;
    capped.arch.softcap = 3.0;
    std::vector<int32_t> x(B * T), y(B * T), x2(B * T), y2(B * T);
    for (auto* v : {&x, &y, &x2, &y2})
        for (auto& t : *v) t = int32_t(g() % plain.V);
    struct Out { double loss; std::vector<double> losses, dlogits, grads; };
    auto step = [&](const ModelShape& s, std::map<std::string, std::string> kernels) {
        const bool fused = kernels.count("head") && kernels.at("head") == "fused";
        auto be = cpu_backend_with(std::move(kernels));
        GPT2 m(s, *be, B, T);
        test::randomize_params(m, 9, 0.3);
        m.zero_grad();
        m.forward(x2.data(), y2.data(), true, 1.0 / (B * T));
        m.backward();
        // A fused head keeps one chunk of logits: no dlogits to read back.
        Out out{m.forward(x.data(), y.data(), true, 1.0 / (B * T)), m.losses(), fused ? std::vector<double>{} : m.logits(), {}};
        m.backward();
        for (const auto& t : m.param_layout().tensors) {
            auto gr = m.read_grad(t.name);
            out.grads.insert(out.grads.end(), gr.begin(), gr.end());
        }
        return out;
    };
    auto scale = [](const std::vector<double>& v) {
        double m = 0;
        for (double e : v) m = std::max(m, std::fabs(e));
        return m;
    };
    // The largest difference relative to the largest value: float32 rounding
    // of a few operations is ~1e-7 of it; a lost or doubled chunk is O(1).
    auto off = [&](const std::vector<double>& a, const std::vector<double>& b) {
        double d = 0;
        for (size_t i = 0; i < b.size(); i++) d = std::max(d, std::fabs(a[i] - b[i]));
        return d / scale(b);
    };
    for (const ModelShape* s : {&plain, &capped}) {
        const Out ref = step(*s, {});
        ASSERT_TRUE(std::isfinite(ref.loss));
        ASSERT_GT(scale(ref.grads), 0.0);
        for (const char* rows : {"1", "4", "21", "64"}) {
            SCOPED_TRACE(std::string(s->arch.tied_head ? "tied" : "untied, capped") + ", rows " + rows);
            for (const char* variant : {"chunked", "fused"}) {
                SCOPED_TRACE(variant);
                const bool fused = std::string(variant) == "fused";
                const Out c = step(*s, {{"head", variant}, {fused ? "head.fused_rows" : "head.rows", rows}});
                EXPECT_NEAR(c.loss, ref.loss, 1e-6 * std::fabs(ref.loss));
                ASSERT_EQ(c.grads.size(), ref.grads.size());
                EXPECT_LT(off(c.losses, ref.losses), 1e-6);
                if (!fused) EXPECT_LT(off(c.dlogits, ref.dlogits), 1e-6);
                EXPECT_LT(off(c.grads, ref.grads), 1e-6);
                for (double v : c.grads) ASSERT_TRUE(std::isfinite(v));
            }
        }
    }
}

// kernels.head: fused keeps one chunk of logits: the buffer is that chunk
// (the rest of the layout unchanged), and what would need the logits of every
// position (a forward without targets, logits()) is refused by name.
TEST(Model, FusedHeadKeepsOneChunkOfLogits) {
    const int B = 3, T = 7;
    ModelShape s = small_shape();
    s.maxT = T;
    auto whole = cpu_backend_with({});
    auto fused = cpu_backend_with({{"head", "fused"}, {"head.fused_rows", "4"}});
    GPT2 a(s, *whole, B, T), b(s, *fused, B, T);
    EXPECT_EQ(a.act_layout().get("logits").numel, size_t(B * T) * s.Vp);
    EXPECT_EQ(b.act_layout().get("logits").numel, size_t(4) * s.Vp);
    EXPECT_EQ(a.act_layout().total_bytes - b.act_layout().total_bytes, size_t(B * T - 4) * s.Vp * 4);
    EXPECT_EQ(GPT2::logit_rows(fused->kernels(), B * T), 4);
    EXPECT_EQ(GPT2::logit_rows(whole->kernels(), B * T), B * T);
    std::vector<int32_t> x(B * T, 1), y(B * T, 2);
    EXPECT_TRUE(std::isfinite(b.forward(x.data(), y.data())));
    auto kind_of = [](const std::function<void()>& f) {
        try {
            f();
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("kernels.head"), std::string::npos) << e.what();
            return e.kind == ErrorKind::BadInput ? std::string("bad input") : std::string("run failed");
        }
        return std::string("accepted");
    };
    EXPECT_EQ(kind_of([&] { b.forward(x.data(), nullptr); }), "run failed");
    EXPECT_EQ(kind_of([&] { b.logits(); }), "run failed");
    auto zero = cpu_backend_with({{"head", "fused"}, {"head.fused_rows", "0"}});
    EXPECT_EQ(kind_of([&] { GPT2(s, *zero, B, T); }), "bad input");
}

// Every CPU kernel variant computes the same training step: the fusions
// (layernorm fused/separate, gelu epilogue/recompute, bias_grad
// separate/folded) bit for bit, BLAS vs
// plain loops to float32 rounding. This is what lets the search judge a
// kernel-only change by its speed.
TEST(Model, KernelVariantsComputeTheSameStep) {
    ModelShape s = small_shape();
    s.maxT = 7;
    const int B = 3, T = 7;
    std::mt19937 g(5);
    std::vector<int32_t> x(B * T), y(B * T);
    for (auto& t : x) t = int32_t(g() % s.V);
    for (auto& t : y) t = int32_t(g() % s.V);

    struct Out { double loss; std::vector<double> grads; size_t act_bytes; };
    auto step = [&](std::map<std::string, std::string> kernels) {
        auto be = cpu_backend_with(std::move(kernels));
        GPT2 m(s, *be, B, T);
        test::randomize_params(m, 9, 0.3);
        m.zero_grad();
        Out out{m.forward(x.data(), y.data(), true, 1.0 / (B * T)), {}, m.act_layout().total_bytes};
        m.backward();
        for (const auto& t : m.param_layout().tensors) {
            auto gr = m.read_grad(t.name);
            out.grads.insert(out.grads.end(), gr.begin(), gr.end());
        }
        return out;
    };
    const Out ref = step({});
    ASSERT_TRUE(std::isfinite(ref.loss));
    // bias_grad: folded takes the same fixed-order column sums in other passes: the same bits too.
    for (const auto& choice : std::vector<std::map<std::string, std::string>>{
             {{"layernorm", "separate"}}, {{"gelu", "recompute"}}, {{"bias_grad", "folded"}}, {{"bias_grad", "folded"}, {"gelu", "recompute"}}}) {
        const Out o = step(choice);
        EXPECT_EQ(o.loss, ref.loss) << choice.begin()->second;
        EXPECT_EQ(o.grads, ref.grads) << choice.begin()->second;
    }
    // Recompute keeps one GELU buffer instead of L (up to the layout's alignment padding).
    const double saved = double(ref.act_bytes) - double(step({{"gelu", "recompute"}}).act_bytes);
    EXPECT_NEAR(saved, double(s.L - 1) * B * T * 4 * s.C * 4, 256.0);

    const Out loops = step({{"cpu_matmul", "loops"}});
    EXPECT_NEAR(loops.loss, ref.loss, 1e-5 * std::fabs(ref.loss));
    EXPECT_LT(test::max_rel_error(loops.grads.data(), ref.grads.data(), ref.grads.size(), 1e-3 * [&] {
                  double m = 0;
                  for (double v : ref.grads) m = std::max(m, std::fabs(v));
                  return m;
              }()),
              1e-3);
}
