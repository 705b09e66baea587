// make_data_source: token shards on disk, or the synthetic Markov chain.
//
// Shard stream: each batch is B*T+1 contiguous tokens per rank (inputs the
// first B*T, targets shifted by one). Rank r of w reads at offset + r*B*T and
// the offset advances by w*B*T, so the ranks read disjoint chunks that together
// are what one rank with w times the batch would read. A shard that cannot
// supply the whole world's next chunk is left for the next one (all ranks
// switch together); after the last shard the epoch counter goes up and the
// stream starts over at shard 0.
//
// Synthetic stream: batch n of rank r is rows (n*w + r)*B .. +B-1 of the chain's
// train or val row stream; each row is T+1 tokens sampled independently.
#include "data/source.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "data/markov.h"
#include "data/shard.h"
#include "kernels/error.h"

namespace gpt {

namespace {

// 12345678 -> "12,345,678".
std::string with_commas(uint64_t n) {
    const std::string digits = std::to_string(n);
    std::string s;
    for (size_t i = 0; i < digits.size(); i++) {
        if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
        s.push_back(digits[i]);
    }
    return s;
}

class ShardSource final : public DataSource {
public:
    ShardSource(const Config& cfg, Split split, int B, int T, int rank, int world)
        : key_(split == Split::train ? "data.train" : "data.val"),
          pattern_(split == Split::train ? cfg.data.train : cfg.data.val),
          vocab_(cfg.model.vocab_size), B_(B), T_(T), rank_(rank), world_(world) {
        files_ = glob_files(pattern_, key_);
        // Headers and sizes of every shard now (cheap); the token scan happens
        // when a shard is mapped, so a run over many large shards starts at once.
        const uint64_t need = uint64_t(B) * uint64_t(T) * uint64_t(world) + 1;
        std::vector<ShardHeader> headers;
        for (const auto& f : files_) headers.push_back(read_shard_header(f, key_));
        check_shard_sets(files_, headers, key_);
        for (size_t i = 0; i < files_.size(); i++) {
            const std::string& f = files_[i];
            const ShardHeader& h = headers[i];
            if (h.count < need)
                bad_input(key_ + ": shard '" + f + "': " + std::to_string(h.count) +
                          " tokens is fewer than one batch needs (B*T*world+1 = " + std::to_string(B) + "*" +
                          std::to_string(T) + "*" + std::to_string(world) + "+1 = " + std::to_string(need) + ")");
            counts_.push_back(h.count);
            total_ += h.count;
        }
        load(0);
    }

    void next_batch(int32_t* inputs, int32_t* targets) override {
        const uint64_t chunk = uint64_t(B_) * uint64_t(T_);
        if (pos_.offset + chunk * uint64_t(world_) + 1 > counts_[pos_.shard]) {
            pos_.offset = 0;
            if (++pos_.shard == files_.size()) {
                pos_.shard = 0;
                pos_.epoch++;
            }
        }
        load(pos_.shard);
        const uint16_t* t = current_.tokens() + pos_.offset + uint64_t(rank_) * chunk;
        for (uint64_t i = 0; i < chunk; i++) {
            inputs[i] = int32_t(t[i]);
            targets[i] = int32_t(t[i + 1]);
        }
        pos_.offset += chunk * uint64_t(world_);
    }

    void reset() override { pos_ = StreamPosition{}; }
    StreamPosition position() const override { return pos_; }

    void set_position(const StreamPosition& p) override {
        if (p.shard >= files_.size())
            bad_input(key_ + ": stream position names shard " + std::to_string(p.shard) + " but '" + pattern_ +
                      "' matches " + std::to_string(files_.size()) + " files (did the shard set change?)");
        if (p.offset > counts_[p.shard])
            bad_input(key_ + ": stream position offset " + std::to_string(p.offset) + " is past the end of shard '" +
                      files_[p.shard] + "' (" + std::to_string(counts_[p.shard]) + " tokens)");
        pos_ = p;
    }

    std::string describe() const override {
        return "shards: " + std::to_string(files_.size()) + (files_.size() == 1 ? " file, " : " files, ") +
               with_commas(total_) + " tokens (" + key_ + "='" + pattern_ + "')";
    }

private:
    // Maps shard i (validating every token) unless it is already mapped.
    void load(uint64_t i) {
        if (loaded_ == i) return;
        current_ = Shard();
        loaded_ = UINT64_MAX;
        current_ = Shard(files_[i], vocab_, key_);
        if (current_.size() != counts_[i])
            bad_input(key_ + ": shard '" + files_[i] + "' changed while the run was reading it");
        loaded_ = i;
    }

    std::string key_, pattern_;
    int vocab_, B_, T_, rank_, world_;
    std::vector<std::string> files_;
    std::vector<uint64_t> counts_;
    uint64_t total_ = 0;
    Shard current_;
    uint64_t loaded_ = UINT64_MAX;
    StreamPosition pos_;
};

class SyntheticSource final : public DataSource {
public:
    SyntheticSource(const Config& cfg, Split split, int B, int T, int rank, int world)
        : chain_(cfg.data.synthetic, cfg.model.vocab_size),
          stream_(split == Split::train ? 0 : 1), B_(B), T_(T), rank_(rank), world_(world),
          row_(size_t(T) + 1) {}

    void next_batch(int32_t* inputs, int32_t* targets) override {
        const uint64_t first = (pos_.offset * uint64_t(world_) + uint64_t(rank_)) * uint64_t(B_);
        for (int b = 0; b < B_; b++) {
            chain_.sample_row(stream_, first + uint64_t(b), T_ + 1, row_.data());
            for (int t = 0; t < T_; t++) {
                inputs[size_t(b) * T_ + t] = row_[size_t(t)];
                targets[size_t(b) * T_ + t] = row_[size_t(t) + 1];
            }
        }
        pos_.offset++;
    }

    void reset() override { pos_ = StreamPosition{}; }
    StreamPosition position() const override { return pos_; }
    void set_position(const StreamPosition& p) override { pos_ = p; }

    std::string describe() const override {
        // Sharpness as "2.0" when one decimal holds it exactly, else in full.
        char sharp[32];
        const double s = chain_.sharpness();
        std::snprintf(sharp, sizeof sharp, s * 10 == std::round(s * 10) ? "%.1f" : "%g", s);
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "synthetic Markov chain: order %d, vocab %d, sharpness %s, entropy rate %.3f nats/token, "
                      "floor at T=%d: %.3f",
                      chain_.order(), chain_.vocab(), sharp, chain_.entropy_rate(), T_, chain_.loss_floor(T_));
        return buf;
    }

    std::optional<double> loss_floor() const override { return chain_.loss_floor(T_); }

private:
    MarkovChain chain_;
    uint64_t stream_;
    int B_, T_, rank_, world_;
    std::vector<int32_t> row_;  // (T+1)
    StreamPosition pos_;
};

}  // namespace

std::unique_ptr<DataSource> make_data_source(const Config& cfg, Split split, int B, int T, int rank, int world) {
    if (B < 1 || T < 1) bad_input("batch shape must be positive (B=" + std::to_string(B) + ", T=" + std::to_string(T) + ")");
    if (world < 1 || rank < 0 || rank >= world)
        bad_input("rank " + std::to_string(rank) + " is not in a world of " + std::to_string(world));
    if (cfg.data.source == "shards") return std::make_unique<ShardSource>(cfg, split, B, T, rank, world);
    if (cfg.data.source == "synthetic") return std::make_unique<SyntheticSource>(cfg, split, B, T, rank, world);
    bad_input("data.source must be 'synthetic' or 'shards' (got '" + cfg.data.source + "')");
}

}  // namespace gpt
