// Token shards (data/shard.cpp): header and whole-shard reads of any bytes.
#include "data/shard.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = gpt::fuzz::as_file(data, size);
    gpt::fuzz::expect_only_gpt_errors([&] { (void)gpt::read_shard_header(path, "data.train"); });
    gpt::fuzz::expect_only_gpt_errors([&] {
        const gpt::Shard s(path, 50257, "data.train");
        // Every token of a shard that was accepted is below the vocabulary.
        for (uint64_t i = 0; i < s.size(); i++)
            if (s.tokens()[i] >= 50257) std::abort();
    });
    return 0;
}
