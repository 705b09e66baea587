// Token sources: where training and validation batches come from.
//
// A DataSource yields batches of B rows of T+1 consecutive tokens, returned as
// inputs (B,T) and targets (B,T) (targets = inputs shifted by one). Batching is
// deterministic, and the position in the stream is a small POD that checkpoints
// save, so a resumed run sees exactly the tokens an uninterrupted one would.
// rank/world split the stream into disjoint parts for data-parallel training.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "train/config.h"

namespace gpt {

struct StreamPosition {
    uint64_t shard = 0;   // index of the current shard (synthetic: unused, 0)
    uint64_t offset = 0;  // token offset in the shard (synthetic: row index)
    uint64_t epoch = 0;   // completed passes over all shards
};

class DataSource {
public:
    virtual ~DataSource() = default;
    // Fills inputs and targets, each B*T int32, and advances the position.
    virtual void next_batch(int32_t* inputs, int32_t* targets) = 0;
    // Back to the start of the stream (used for validation before each eval).
    virtual void reset() = 0;
    virtual StreamPosition position() const = 0;
    virtual void set_position(const StreamPosition& p) = 0;
    // One line for the console: what the source is, how many tokens.
    virtual std::string describe() const = 0;
    // Lowest reachable mean loss (nats/token) for a model with a T-token window,
    // when the source knows it exactly (the synthetic source does).
    virtual std::optional<double> loss_floor() const { return std::nullopt; }
};

enum class Split { train, val };

// Builds the train or val source of a config for micro-batch (B,T). Checks
// every shard on open (header, size, token range < model.vocab_size) and
// throws Error(BadInput) naming the file and what is wrong.
std::unique_ptr<DataSource> make_data_source(const Config& cfg, Split split, int B, int T,
                                             int rank = 0, int world = 1);

}  // namespace gpt
