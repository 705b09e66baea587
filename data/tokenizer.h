// GPT-2's byte-level BPE tokenizer, read from the two files OpenAI published
// with GPT-2 (encoder.json, vocab.bpe).
//
// encode: GPT-2's pre-tokenisation split (PCRE2, Unicode-aware), bytes mapped
// to GPT-2's printable byte alphabet, then merges by rank. decode is the
// inverse and returns raw bytes (which need not be valid UTF-8 for a partial
// sequence). Both are thread-safe on one Tokenizer object.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace gpt {

class Tokenizer {
public:
    static constexpr int32_t kEndOfText = 50256;  // <|endoftext|>

    // Loads DIR/encoder.json and DIR/vocab.bpe. Throws Error(BadInput) naming
    // the file and what is wrong (missing, malformed, inconsistent).
    static Tokenizer load(const std::string& dir);

    // The directory to use: `flag` when non-empty, else $GPT_TOKENIZER_DIR.
    // Throws BadInput saying how to provide one when neither is set.
    static std::string resolve_dir(const std::string& flag);

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Token ids of text. The literal "<|endoftext|>" is encoded as ordinary
    // text unless allow_special (tiktoken's convention). Invalid UTF-8 is
    // encoded byte by byte as GPT-2 does; never throws on any input.
    std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const;

    // The bytes of a sequence of ids / of one id. Throws BadInput for an id
    // outside [0, vocab_size()).
    std::string decode(const std::vector<int32_t>& ids) const;
    const std::string& token_bytes(int32_t id) const;

    int vocab_size() const;  // 50257 for GPT-2

private:
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace gpt
