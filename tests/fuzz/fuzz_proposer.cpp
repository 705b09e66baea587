// Proposer answers and every other JSON text (data/json.h): parse, then the
// dump of what was parsed parses back to the same dump, and the typed reads
// the search makes of an answer never throw.
#include "data/json.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    gpt::Json j;
    try {
        j = gpt::parse_json(text);
    } catch (const std::runtime_error&) {
        return 0;  // parse_json's documented error
    }
    const std::string once = j.dump();
    const std::string twice = gpt::parse_json(once).dump();
    if (once != twice) {
        std::fprintf(stderr, "fuzz finding: dump does not round-trip:\n%s\n%s\n", once.c_str(), twice.c_str());
        std::abort();
    }
    (void)j.boolean("stop");
    if (const gpt::Json* c = j.find("candidates"))
        for (const auto& cand : c->arr) {
            (void)cand.string("note");
            if (const gpt::Json* set = cand.find("set"))
                for (const auto& [k, v] : set->obj) (void)v.scalar_text();
        }
    return 0;
}
