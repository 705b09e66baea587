// The optimizer's parameter groups and its ZeRO-1 sharding with Muon: the
// ranks' shards, each updated by its own Optimizer (whole hidden matrices
// included, also across a shard boundary), put together are exactly the
// update of one Optimizer over the whole buffer.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "model/gpt2.h"
#include "tests/test_util.h"
#include "train/optimizer.h"

using namespace gpt;

namespace {

ModelShape modern_shape() {
    ModelShape s;
    s.L = 2;
    s.NH = 2;
    s.C = 16;
    s.maxT = 8;
    s.V = 50;
    s.Vp = 128;
    s.arch.pos = PosEmb::rope;
    s.arch.norm = NormKind::rmsnorm;
    s.arch.tied_head = false;
    return s;
}

OptimConfig muon_config() {
    OptimConfig c;
    c.type = "muon";
    c.lr = 0.01;
    c.embed_lr = 0.05;
    c.head_lr = 0.002;
    c.muon_lr = 0.03;
    c.weight_decay = 0.1;
    c.muon_weight_decay = 0.2;
    return c;
}

// Random gradients in the model's gradient buffer (the padding stays zero),
// float32 or float64 like the backend.
void random_grads(GPT2& m, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    m.zero_grad();
    std::vector<double> all(m.buffer_elements(), 0.0);
    for (const auto& t : m.param_layout().tensors)
        for (size_t i = 0; i < t.numel; i++) all[t.offset + i] = u(g);
    if (m.grads().dtype == DType::f64) {
        m.backend().to_device(m.grads().ptr, all.data(), all.size() * 8);
    } else {
        std::vector<float> f(all.begin(), all.end());
        m.backend().to_device(m.grads().ptr, f.data(), f.size() * 4);
    }
}

// The float32 parameter buffer, padding included.
std::vector<float> buffer(const GPT2& m) {
    std::vector<float> out(m.buffer_elements());
    m.backend().to_host(out.data(), m.params().ptr, out.size() * 4);
    return out;
}

}  // namespace

TEST(Optimizer, Zero1ShardsWithMuonEqualOneOptimizer) {
    auto be = make_backend("cpu", 1);
    const ModelShape s = modern_shape();
    int widened_worlds = 0;
    for (int world : {2, 3, 5}) {
        GPT2 ref(s, *be, 1, 4, world);
        ref.init_weights(3);
        std::vector<std::unique_ptr<GPT2>> ranks;
        std::vector<std::unique_ptr<Optimizer>> opts;
        const size_t n = ref.buffer_elements(), shard = n / world;
        Optimizer whole(ref, muon_config(), 0, n);
        EXPECT_TRUE(whole.uses_muon());
        bool widened = false;
        for (int r = 0; r < world; r++) {
            ranks.push_back(std::make_unique<GPT2>(s, *be, 1, 4, world));
            ranks.back()->init_weights(3);
            opts.push_back(std::make_unique<Optimizer>(*ranks.back(), muon_config(), r * shard, (r + 1) * shard));
            // A shard boundary inside a hidden matrix widens the rank's state to the whole matrix.
            widened = widened || opts.back()->begin() < r * shard || opts.back()->begin() + opts.back()->size() > (r + 1) * shard;
        }
        widened_worlds += widened;
        for (int step = 0; step < 3; step++) {
            random_grads(ref, 10 + step);
            const double norm = whole.grad_norm(ref.grads());
            whole.step(ref.params(), ref.grads(), 0.008, norm);  // a scheduled lr: 0.8 x optim.lr
            std::vector<float> combined(n);
            for (int r = 0; r < world; r++) {
                random_grads(*ranks[r], 10 + step);  // what the all-reduce gives every rank
                opts[r]->step(ranks[r]->params(), ranks[r]->grads(), 0.008, norm);
                const auto mine = buffer(*ranks[r]);
                std::copy(mine.begin() + long(r * shard), mine.begin() + long((r + 1) * shard), combined.begin() + long(r * shard));
            }
            // The all-gather: every rank receives every shard.
            for (int r = 0; r < world; r++) ranks[r]->backend().to_device(ranks[r]->params().ptr, combined.data(), n * 4);
            ASSERT_EQ(combined, buffer(ref)) << "world " << world << " step " << step;
        }
        // The momentum of a matrix two ranks share is the same on both.
        const auto m_whole = whole.moments_host(0);
        for (int r = 0; r < world; r++) {
            const auto m = opts[r]->moments_host(0);
            for (size_t i = 0; i < m.size(); i++) ASSERT_EQ(m[i], m_whole[opts[r]->begin() + i]) << "rank " << r << " element " << i;
        }
    }
    EXPECT_GE(widened_worlds, 2) << "shard boundaries never fall inside a hidden matrix: the test would not test the widening";
}

// Each group follows the schedule at its own peak: a step at lr = 0.5 x
// optim.lr moves every group half as far as its peak would (first Adam step:
// |update| = lr; a Muon step on a square matrix: the orthogonalised update's
// scale is lr).
TEST(Optimizer, GroupsFollowTheScheduleAtTheirOwnPeaks) {
    auto be = make_backend("cpu-f64", 1);
    const ModelShape s = modern_shape();
    OptimConfig c = muon_config();
    c.weight_decay = 0;
    c.muon_weight_decay = 0;
    c.grad_clip = 0;
    std::map<std::string, double> moved[2];
    for (int k = 0; k < 2; k++) {
        GPT2 m(s, *be, 1, 4);
        m.init_weights(1);
        Optimizer o(m, c);
        std::map<std::string, std::vector<double>> before;
        for (const auto& t : m.param_layout().tensors) before[t.name] = m.read_param(t.name);
        random_grads(m, 5);
        o.step(m.params(), m.grads(), k == 0 ? c.lr : 0.5 * c.lr, 1.0);
        for (const auto& t : m.param_layout().tensors) {
            const auto after = m.read_param(t.name);
            double mx = 0;
            for (size_t i = 0; i < after.size(); i++) mx = std::max(mx, std::fabs(after[i] - before[t.name][i]));
            moved[k][t.name] = mx;
        }
    }
    // Adam's first step moves each element by lr (|m_hat / sqrt(v_hat)| = |g| / (|g| + eps)).
    EXPECT_NEAR(moved[0]["wte"], c.embed_lr, 1e-6 * c.embed_lr);
    EXPECT_NEAR(moved[0]["lm_head"], c.head_lr, 1e-6 * c.head_lr);
    EXPECT_NEAR(moved[0]["ln1w"], c.lr, 1e-6 * c.lr);
    for (const char* t : {"wte", "lm_head", "ln1w", "qkvw", "attprojw", "fcw", "fcprojw"})
        EXPECT_NEAR(moved[1][t], 0.5 * moved[0][t], 1e-12 * moved[0][t]) << t;
    // Muon moves the matrices on the scale of muon_lr, not optim.lr.
    EXPECT_GT(moved[0]["attprojw"], 0.1 * c.muon_lr);
    EXPECT_LT(moved[0]["attprojw"], 2.0 * c.muon_lr);
}
