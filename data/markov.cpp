#include "data/markov.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <numbers>
#include <random>
#include <string>

#include "kernels/error.h"

namespace gpt {

namespace {

uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [0,1) from the top 53 bits.
double unit(uint64_t x) { return double(x >> 11) * 0x1.0p-53; }

// Standard normal from two raw 64-bit outputs (Box-Muller, cosine branch);
// u1 in (0,1] keeps the log finite.
double normal(std::mt19937_64& g) {
    double u1 = double((g() >> 11) + 1) * 0x1.0p-53;
    double u2 = unit(g());
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// Index of the first cdf entry > u in cdf[0..n), clamped to n-1 against rounding.
int pick(const double* cdf, uint64_t n, double u) {
    uint64_t i = uint64_t(std::upper_bound(cdf, cdf + n, u) - cdf);
    return int(std::min(i, n - 1));
}

double entropy_of(const std::vector<double>& p) {
    double h = 0;
    for (double x : p)
        if (x > 0) h -= x * std::log(x);
    return h;
}

}  // namespace

MarkovChain::MarkovChain(const SyntheticConfig& cfg, int model_vocab)
    : order_(cfg.order), vocab_(cfg.vocab), sharpness_(cfg.sharpness), seed_(uint64_t(int64_t(cfg.seed))) {
    if (order_ < 1) bad_input("data.synthetic.order must be >= 1 (got " + std::to_string(order_) + ")");
    if (vocab_ < 2) bad_input("data.synthetic.vocab must be >= 2 (got " + std::to_string(vocab_) + ")");
    if (!(sharpness_ >= 0) || !std::isfinite(sharpness_))
        bad_input("data.synthetic.sharpness must be a finite number >= 0 (got " + std::to_string(sharpness_) + ")");
    if (vocab_ > model_vocab)
        bad_input("data.synthetic.vocab " + std::to_string(vocab_) + " is larger than model.vocab_size " +
                  std::to_string(model_vocab) + ": the model could not predict every token");
    // vocab^(order+1) transition entries, capped at 2^24 (128 MiB of doubles).
    const uint64_t cap = uint64_t(1) << 24;
    uint64_t entries = 1;
    for (int i = 0; i <= order_; i++) {
        entries *= uint64_t(vocab_);
        if (entries > cap)
            bad_input("data.synthetic.vocab^(order+1) = " + std::to_string(vocab_) + "^" + std::to_string(int64_t(order_) + 1) +
                      " is more than 2^24 transition probabilities: lower data.synthetic.vocab or data.synthetic.order");
    }
    const uint64_t V = uint64_t(vocab_);
    n_ctx_ = entries / V;

    // Transition table (V^k, V): rows in context order, entries in token order,
    // one normal per entry from a single generator stream.
    std::mt19937_64 gen(seed_);
    std::vector<double> P(entries);
    std::vector<double> z(V);
    std::vector<double> row_entropy(n_ctx_);
    for (uint64_t c = 0; c < n_ctx_; c++) {
        double zmax = -INFINITY;
        for (uint64_t y = 0; y < V; y++) {
            z[y] = sharpness_ * normal(gen);
            zmax = std::max(zmax, z[y]);
        }
        double sum = 0;
        double* p = &P[c * V];
        for (uint64_t y = 0; y < V; y++) sum += (p[y] = std::exp(z[y] - zmax));
        double h = 0;
        for (uint64_t y = 0; y < V; y++) {
            p[y] /= sum;
            if (p[y] > 0) h -= p[y] * std::log(p[y]);
        }
        row_entropy[c] = h;
    }

    // Stationary distribution over contexts by power iteration. Every entry of
    // P is positive (up to underflow at extreme sharpness), so P^k > 0 and the
    // iteration converges; L1 change < 1e-13 is the stopping rule. A sharp,
    // large chain mixes slowly (each iteration is a pass over the whole
    // table), so the work is bounded: about 1e10 multiply-adds (seconds), then
    // the settings are refused by name instead of running for hours, with a
    // progress line every 3 s meanwhile.
    constexpr double kMaxWork = 1e10;
    const int max_iter = int(std::clamp(kMaxWork / double(entries), 50.0, 200000.0));
    pi_.assign(n_ctx_, 1.0 / double(n_ctx_));
    std::vector<double> next(n_ctx_);
    // Context c = (a, rest) moves to (rest, y) = (c mod V^{k-1}) V + y: the
    // destination block b = c mod shift collects the contexts a*shift + b.
    // Each destination entry sums its sources in ascending c on any thread
    // count, so the result does not depend on the threads.
    const uint64_t shift = n_ctx_ / V, ychunk = 256, ychunks = (V + ychunk - 1) / ychunk;
    int it = 0;
    double diff = 0;
    const auto t_start = std::chrono::steady_clock::now();
    double next_report = 3;
    for (; it < max_iter; it++) {
#pragma omp parallel for schedule(static) if (entries >= (1u << 16))
        for (int64_t task = 0; task < int64_t(shift * ychunks); task++) {
            const uint64_t b = uint64_t(task) / ychunks, y0 = uint64_t(task) % ychunks * ychunk, y1 = std::min(V, y0 + ychunk);
            double* dst = &next[b * V];
            for (uint64_t y = y0; y < y1; y++) dst[y] = 0;
            for (uint64_t a = 0; a < V; a++) {
                const uint64_t c = a * shift + b;
                const double w = pi_[c];
                const double* p = &P[c * V];
                for (uint64_t y = y0; y < y1; y++) dst[y] += w * p[y];
            }
        }
        double s = 0;
        for (double x : next) s += x;
        diff = 0;
        for (uint64_t c = 0; c < n_ctx_; c++) {
            next[c] /= s;
            diff += std::fabs(next[c] - pi_[c]);
        }
        pi_.swap(next);
        if (diff < 1e-13) break;
        // A long computation says what it is doing (stderr: stdout may be a pipe of results).
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
        if (elapsed >= next_report) {
            std::fprintf(stderr, "data.synthetic: stationary distribution of the chain (%llu transition probabilities): pass %d of at most %d, change %.2g\n",
                         static_cast<unsigned long long>(entries), it + 1, max_iter, diff);
            next_report = elapsed + 3;
        }
    }
    if (it == max_iter) {
        char buf[400];
        std::snprintf(buf, sizeof buf,
                      "data.synthetic: the chain (order %d, vocab %d, sharpness %g) mixes too slowly to compute its stationary "
                      "distribution: after %d passes over its %llu transition probabilities it still changes by %.2g; lower "
                      "data.synthetic.sharpness, data.synthetic.vocab or data.synthetic.order",
                      order_, vocab_, sharpness_, max_iter, static_cast<unsigned long long>(entries), diff);
        bad_input(buf);
    }

    entropy_rate_ = 0;
    for (uint64_t c = 0; c < n_ctx_; c++) entropy_rate_ += pi_[c] * row_entropy[c];

    // Block entropies of the stationary m-grams X_0..X_{m-1}: for m <= k the
    // marginal of the first m tokens of a context (its top digits); m = k+1 adds
    // one chain step, so H_{k+1} = H_k + H.
    block_entropy_.assign(size_t(order_) + 2, 0.0);
    for (int m = 1; m <= order_; m++) {
        uint64_t n_m = 1;
        for (int i = 0; i < m; i++) n_m *= V;
        const uint64_t div = n_ctx_ / n_m;
        std::vector<double> marg(n_m, 0.0);
        for (uint64_t c = 0; c < n_ctx_; c++) marg[c / div] += pi_[c];
        block_entropy_[size_t(m)] = entropy_of(marg);
    }
    block_entropy_[size_t(order_) + 1] = block_entropy_[size_t(order_)] + entropy_rate_;

    // Cumulative tables for sampling (the table P becomes its own row-wise cdf).
    for (uint64_t c = 0; c < n_ctx_; c++) {
        double acc = 0;
        for (uint64_t y = 0; y < V; y++) P[c * V + y] = (acc += P[c * V + y]);
    }
    cdf_ = std::move(P);
    pi_cdf_.resize(n_ctx_);
    double acc = 0;
    for (uint64_t c = 0; c < n_ctx_; c++) pi_cdf_[c] = (acc += pi_[c]);
}

double MarkovChain::prob(uint64_t ctx, int next) const {
    const double* c = &cdf_[ctx * uint64_t(vocab_)];
    return next == 0 ? c[0] : c[next] - c[next - 1];
}

double MarkovChain::loss_floor(int T) const {
    double sum = 0;
    for (int j = 0; j < T; j++) {
        // H(X_{j+1} | X_0..X_j) = H_{j+2} - H_{j+1} while j+1 < k, then H.
        sum += (j + 1 < order_) ? block_entropy_[size_t(j) + 2] - block_entropy_[size_t(j) + 1] : entropy_rate_;
    }
    return T > 0 ? sum / T : 0.0;
}

void MarkovChain::sample_row(uint64_t stream, uint64_t row, int len, int32_t* out) const {
    // Per-row generator: splitmix64 of (seed, stream, row), so any row is
    // produced without replaying the ones before it.
    uint64_t s = seed_;
    s = splitmix64(s) ^ (stream * 0xD1B54A32D192ED03ull);
    s = splitmix64(s) ^ row;
    s = splitmix64(s);
    const uint64_t V = uint64_t(vocab_);
    uint64_t ctx = uint64_t(pick(pi_cdf_.data(), n_ctx_, unit(splitmix64(s))));
    // The first k tokens are the digits of the sampled context, oldest first.
    for (int i = 0; i < order_ && i < len; i++) {
        uint64_t d = ctx;
        for (int r = order_ - 1; r > i; r--) d /= V;
        out[i] = int32_t(d % V);
    }
    for (int i = order_; i < len; i++) {
        int y = pick(&cdf_[ctx * V], V, unit(splitmix64(s)));
        out[i] = y;
        ctx = (ctx * V + uint64_t(y)) % n_ctx_;
    }
}

}  // namespace gpt
