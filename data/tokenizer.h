// GPT-2's byte-level BPE tokenizer, read from the two files OpenAI published
// with GPT-2 (encoder.json, vocab.bpe). A copy of them is compiled into the
// binary and is the default (data/gpt2-tokenizer).
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

    // GPT-2's files as compiled into the binary (data/gpt2-tokenizer).
    static Tokenizer builtin();

    // The tokenizer a command uses: the folder `dir` (--tokenizer, data.tokenizer)
    // when non-empty, else $GPT_TOKENIZER_DIR when set, else the built-in one.
    static Tokenizer load_default(const std::string& dir);

    // The folder load_default(dir) reads, or "" for the built-in files.
    static std::string resolve_dir(const std::string& dir);

    // What load_default(dir) reads, for messages: the folder, or "the built-in
    // GPT-2 tokenizer".
    static std::string describe(const std::string& dir);

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
    // Parses the two files' contents; the names are for error messages.
    static Tokenizer parse(const std::string& enc_name, std::string_view encoder_json, const std::string& bpe_name,
                           std::string_view vocab_bpe);
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

namespace embedded {
// GPT-2's encoder.json and vocab.bpe, byte for byte as in data/gpt2-tokenizer,
// compiled into the binary (cmake/embedded_tokenizer.cpp.in).
std::string_view gpt2_encoder_json();
std::string_view gpt2_vocab_bpe();
}  // namespace embedded

}  // namespace gpt
