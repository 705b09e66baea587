// Autoregressive generation with a KV cache: one new token per step costs one
// row of every layer instead of a forward pass over the whole prefix.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "model/gpt2.h"

namespace gpt {

class Generator {
public:
    // Shares the model's parameters (reads them at every step, so a model that
    // keeps training is sampled as it is now); owns a KV cache (L, maxT, C) x 2.
    explicit Generator(const GPT2& model);
    ~Generator();
    Generator(const Generator&) = delete;
    Generator& operator=(const Generator&) = delete;

    // Forgets the context.
    void reset();
    // Appends one token at the next position and returns the logits (V real
    // entries) for the position after it. When the context is full (maxT
    // tokens), the oldest half is dropped and the rest re-fed, like a sliding window.
    std::vector<double> feed(int32_t token);
    int position() const { return static_cast<int>(history_.size()); }

private:
    std::vector<double> step(int32_t token, int pos);
    View scratch(const std::string& name, int layer = -1) const;

    const GPT2& model_;
    Backend& be_;
    Layout layout_;
    void* buf_ = nullptr;
    int32_t* token_ = nullptr;  // (1) on the device
    std::vector<int32_t> history_;
};

// Samples a token id from logits: temperature 0 = argmax; top_k > 0 keeps the
// k largest logits. Deterministic for a given rng state.
int32_t sample_token(const std::vector<double>& logits, double temperature, int top_k, std::mt19937_64& rng);

}  // namespace gpt
