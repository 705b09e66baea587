// The built-in synthetic source: a seeded random Markov chain of order k.
//
// Over `vocab` = V tokens, each of the V^k contexts (the previous k tokens) has
// next-token probabilities softmax(sharpness * z), z ~ N(0,1) drawn from a
// generator that gives the same numbers on every platform (mt19937_64 raw
// outputs and our own Box-Muller, never std::normal_distribution). Because the
// chain is known, its entropy rate and the best loss any model can reach with
// a T-token window are computed exactly, so a training run can be judged
// against the floor instead of a guess.
//
// Context index: ctx = x_{t-k} V^{k-1} + ... + x_{t-1} (most recent token least
// significant); after emitting y the context becomes (ctx V + y) mod V^k.
#pragma once

#include <cstdint>
#include <vector>

#include "train/config.h"

namespace gpt {

class MarkovChain {
public:
    // Builds the chain of `cfg`; refuses (Error(BadInput) naming
    // data.synthetic.*) order < 1, vocab < 2, sharpness < 0, vocab^(order+1) > 2^24
    // and vocab > model_vocab.
    MarkovChain(const SyntheticConfig& cfg, int model_vocab);

    int order() const { return order_; }
    int vocab() const { return vocab_; }
    double sharpness() const { return sharpness_; }
    uint64_t contexts() const { return n_ctx_; }  // V^k

    // P(next | ctx).
    double prob(uint64_t ctx, int next) const;
    // Stationary distribution over contexts, (V^k), sums to 1.
    const std::vector<double>& stationary() const { return pi_; }
    // H = sum_ctx pi(ctx) H(next | ctx), nats per token.
    double entropy_rate() const { return entropy_rate_; }
    // H(X_0..X_{m-1}) of the stationary m-gram marginal, m = 0..k+1.
    double block_entropy(int m) const { return block_entropy_[m]; }
    // Lowest mean loss with a T-token window:
    // (1/T) sum_{j<T} H(X_{j+1} | X_0..X_j), which is H once j+1 >= k.
    double loss_floor(int T) const;

    // Writes row `row` of stream `stream` (len tokens): a stationary sample, the
    // first k tokens from the stationary k-gram distribution, the rest from the
    // chain. A pure function of (chain, stream, row).
    void sample_row(uint64_t stream, uint64_t row, int len, int32_t* out) const;

private:
    int order_, vocab_;
    double sharpness_;
    uint64_t seed_;
    uint64_t n_ctx_;
    std::vector<double> cdf_;      // (V^k, V) cumulative next-token probabilities
    std::vector<double> pi_;       // (V^k)
    std::vector<double> pi_cdf_;   // (V^k) cumulative pi, for the first k tokens
    std::vector<double> block_entropy_;  // (k+2)
    double entropy_rate_ = 0;
};

}  // namespace gpt
