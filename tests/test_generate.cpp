// Sampling: the KV-cache decoder computes the same logits as the full
// forward pass, also after its sliding window drops old context; the sampler
// honours temperature and top-k.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/backend.h"
#include "model/generate.h"
#include "model/gpt2.h"
#include "tests/test_util.h"

using namespace gpt;

namespace {

ModelShape shape() {
    ModelShape s;
    s.L = 2;
    s.NH = 2;
    s.C = 12;
    s.maxT = 6;
    s.V = 20;
    s.Vp = 128;
    return s;
}

// Logits of the last position of a full forward pass over tokens.
std::vector<double> full_last_logits(Backend& be, const GPT2& src, const std::vector<int32_t>& tokens) {
    const ModelShape s = src.shape();
    GPT2 m(s, be, 1, static_cast<int>(tokens.size()));
    for (const auto& t : src.param_layout().tensors) m.write_param(t.name, src.read_param(t.name));
    m.forward(tokens.data(), nullptr);
    auto all = m.logits();
    const size_t row = (tokens.size() - 1) * size_t(s.Vp);
    return std::vector<double>(all.begin() + row, all.begin() + row + s.V);
}

}  // namespace

// Plain GPT-2, and every architecture choice at once (rotary positions in
// the cache, QK-norm, RMSNorm, ReLU², no biases, an untied head, the soft cap).
Arch modern_arch() {
    Arch a;
    a.pos = PosEmb::rope;
    a.rope_base = 50;
    a.norm = NormKind::rmsnorm;
    a.qk_norm = true;
    a.act = Activation::relu2;
    a.bias = false;
    a.tied_head = false;
    a.softcap = 2.0;
    return a;
}

TEST(Generate, KvCacheMatchesFullForward) {
    for (const Arch& arch : {Arch{}, modern_arch()})
    for (const char* name : {"cpu-f64", "cpu"}) {
        auto be = make_backend(name, 1);
        ModelShape s = shape();
        s.arch = arch;
        GPT2 model(s, *be, 1, 6);
        test::randomize_params(model, 9, 0.5);
        Generator gen(model);
        const std::vector<int32_t> seq = {3, 17, 0, 5, 5, 11, 2, 19, 8, 4};  // longer than maxT = 6: slides twice
        std::vector<int32_t> window;
        const double tol = std::string(name) == "cpu" ? 1e-5 : 1e-12;
        for (size_t i = 0; i < seq.size(); i++) {
            auto got = gen.feed(seq[i]);
            if (window.size() == 6) window.erase(window.begin(), window.begin() + 3);  // the decoder keeps the newest half
            window.push_back(seq[i]);
            ASSERT_EQ(gen.position(), static_cast<int>(window.size()));
            auto want = full_last_logits(*be, model, window);
            double worst = 0, scale = 0;
            for (size_t j = 0; j < want.size(); j++) {
                ASSERT_FALSE(std::isnan(got[j]));
                worst = std::max(worst, std::fabs(got[j] - want[j]));
                scale = std::max(scale, std::fabs(want[j]));
            }
            EXPECT_LE(worst, tol * scale) << name << " position " << i;
        }
    }
}

TEST(Generate, SamplerTemperatureAndTopK) {
    std::vector<double> logits = {0.1, 2.0, -1.0, 1.5, 0.0};
    std::mt19937_64 rng(1);
    EXPECT_EQ(sample_token(logits, 0.0, 0, rng), 1);  // greedy
    for (int i = 0; i < 50; i++) EXPECT_EQ(sample_token(logits, 1.0, 1, rng), 1);
    for (int i = 0; i < 200; i++) {
        int t = sample_token(logits, 1.0, 2, rng);
        EXPECT_TRUE(t == 1 || t == 3) << t;  // only the two largest
    }
    // Frequencies follow the softmax at temperature 1.
    std::vector<int> count(5);
    const int n = 40000;
    for (int i = 0; i < n; i++) count[sample_token(logits, 1.0, 0, rng)]++;
    double z = 0;
    for (double l : logits) z += std::exp(l);
    for (int i = 0; i < 5; i++) {
        const double p = std::exp(logits[i]) / z, sd = std::sqrt(p * (1 - p) / n);
        EXPECT_NEAR(double(count[i]) / n, p, 5 * sd) << i;
    }
    // Same seed, same draws.
    std::mt19937_64 a(7), b(7);
    for (int i = 0; i < 20; i++) EXPECT_EQ(sample_token(logits, 0.8, 3, a), sample_token(logits, 0.8, 3, b));
}
