// The tokenizer (data/tokenizer.cpp). The first byte picks the mode:
//  even: the rest is a pair of tokenizer files, a 2-byte little-endian length
//        N, N bytes of encoder.json, then vocab.bpe: loaded, or a gpt::Error;
//  odd:  the rest is text for the built-in GPT-2 tokenizer: every id is in
//        the vocabulary and decode(encode(text)) gives the bytes back (any
//        bytes, invalid UTF-8 included), with and without special tokens.
#include <filesystem>
#include <fstream>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const bool files = data[0] % 2 == 0;
    data++;
    size--;
    if (!files) {
        static const gpt::Tokenizer gpt2 = gpt::Tokenizer::builtin();
        const std::string text(reinterpret_cast<const char*>(data), size);
        for (const bool special : {false, true}) {
            const auto ids = gpt2.encode(text, special);
            for (int32_t id : ids)
                if (id < 0 || id >= gpt2.vocab_size()) std::abort();
            if (gpt2.decode(ids) != text) {
                std::fprintf(stderr, "fuzz finding: decode(encode(text)) differs from the text\n");
                std::abort();
            }
        }
        return 0;
    }
    if (size < 2) return 0;
    const size_t n = std::min<size_t>(size - 2, size_t(data[0]) | size_t(data[1]) << 8);
    static const std::string dir = [] {
        char tmpl[] = "/tmp/gpt-fuzz-tok.XXXXXX";
        const char* d = ::mkdtemp(tmpl);
        if (!d) std::abort();
        return std::string(d);
    }();
    std::ofstream(dir + "/encoder.json", std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data + 2), std::streamsize(n));
    std::ofstream(dir + "/vocab.bpe", std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(data + 2 + n), std::streamsize(size - 2 - n));
    gpt::fuzz::expect_only_gpt_errors([&] {
        const gpt::Tokenizer t = gpt::Tokenizer::load(dir);
        const auto ids = t.encode("hello <|endoftext|> world", true);
        for (int32_t id : ids)
            if (id < 0 || id >= t.vocab_size()) std::abort();
    });
    return 0;
}
