// Config YAML (train/config.cpp): any text is a Config or a gpt::Error, and a
// Config that parses prints to YAML that parses back to the same text.
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    gpt::fuzz::expect_only_gpt_errors([&] {
        const gpt::Config c = gpt::parse_config_text(text, "fuzz.yaml", {});
        const std::string yaml = gpt::config_to_yaml(c);
        const gpt::Config again = gpt::parse_config_text(yaml, "round-trip", {});
        if (gpt::config_to_yaml(again) != yaml) {
            std::fprintf(stderr, "fuzz finding: config_to_yaml does not round-trip:\n%s\n", yaml.c_str());
            std::abort();
        }
        (void)gpt::config_to_json(c);
    });
    return 0;
}
