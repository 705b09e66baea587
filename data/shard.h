// Token shards in the llm.c / modded-nanogpt format.
//
// Layout: a header of 256 int32 (header[0] = magic 20240520, header[1] =
// version 1, header[2] = token count, the rest zero), then `count` tokens as
// little-endian uint16. So the file is exactly 1024 + 2*count bytes.
//
// Every reader validates the whole file (header, exact size, every token below
// the vocabulary) and throws Error(BadInput) naming the config key, the file
// and what is wrong, so a bad shard stops a run before it trains on garbage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gpt {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);  // 1024

// Shards written by `gpt data prepare` also say which set they belong to, in
// header words llm.c leaves zero and its readers ignore: [3] = kShardSetMark,
// [4..5] = the set id (64 bits, a hash of the run's tokens), [6] = split (0 train,
// 1 val), [7] = the shard's index in its split, [8] = the split's shard count.
// Readers use it to refuse a silent mix of two runs' shards (a re-run into
// the same directory killed half way), see check_shard_sets.
constexpr int32_t kShardSetMark = 0x67707473;  // "stpg"
struct ShardSet {
    uint64_t id = 0;     // 0: not from gpt data prepare (no set information)
    int32_t split = 0;   // 0 train, 1 val
    int32_t index = 0;   // in its split
    int32_t count = 0;   // shards in the split
};

// Writes `tokens` as a shard, atomically: `path.tmp.<pid>`, fsync, rename.
// Each token must be in [0, min(vocab_size, 65536)), else Error(BadInput)
// naming the index; I/O failures are Error(RunFailed). `set` fills the set words.
void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size = 65536, const ShardSet* set = nullptr);

// What the header says, after checking magic, version, count > 0 and the exact
// file size (reads only the header; no token scan).
struct ShardHeader {
    int32_t magic = 0;
    int32_t version = 0;
    uint64_t count = 0;       // tokens
    uint64_t file_bytes = 0;  // size on disk
    ShardSet set;             // set.id 0 when the shard carries none
};

// Refuses shards of `key` (a glob's files, with their headers) that mix two
// `gpt data prepare` runs of which one is incomplete: what an interrupted
// re-run into the same directory leaves. Shards without set information, and
// whole sets combined on purpose, pass; so does part of one set alone.
void check_shard_sets(const std::vector<std::string>& files, const std::vector<ShardHeader>& headers, const std::string& key);

// `context` prefixes every message (e.g. "data.train"; "" for none).
ShardHeader read_shard_header(const std::string& path, const std::string& context);

// A validated shard read into memory. It is read, not mmap'ed: a shard that
// is overwritten or truncated in place while a run uses it would turn pages of
// a mapping into SIGBUS (a crash with no message and no checkpoint) or into
// tokens that were never validated. A copy stays what was checked; a change
// during the read is detected (size and mtime before and after) and reported.
// The cost is the shard's size in memory, one shard per source at a time
// (200 MB for a 100M-token shard), and the same single read pass the
// validation scan needed anyway.
class Shard {
public:
    Shard() = default;
    // Reads the file and validates header, size and every token < vocab_size;
    // `vocab_key` names that limit in the message (e.g. "model.vocab_size").
    Shard(const std::string& path, int vocab_size, const std::string& context,
          const std::string& vocab_key = "model.vocab_size");

    const uint16_t* tokens() const { return tokens_.data(); }  // (count)
    uint64_t size() const { return header_.count; }
    const ShardHeader& header() const { return header_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    ShardHeader header_;
    std::vector<uint16_t> tokens_;
};

// Files matching a glob(3) pattern, sorted bytewise. No match (or an empty
// pattern) is Error(BadInput) naming `key` (e.g. "data.train") and the pattern.
std::vector<std::string> glob_files(const std::string& pattern, const std::string& key);

}  // namespace gpt
