// `gpt data prepare` JSON lines (data/prepare.cpp json_string_field): any
// line gives a string or a reason; when it gives a string, the project's JSON
// reader (data/json.h) must read the same line to the same value.
#include <string>

#include "data/json.h"
#include "data/prepare.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view line(reinterpret_cast<const char*>(data), size);
    std::string out;
    const std::string err = gpt::json_string_field(line, "text", out);
    if (err.empty()) {
        gpt::Json j;
        try {
            j = gpt::parse_json(line);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "fuzz finding: prepare accepted a line that data/json.h rejects (%s)\n", e.what());
            std::abort();
        }
        // Python's json (and prepare) keep the last of duplicate keys.
        const gpt::Json* last = nullptr;
        for (const auto& [k, v] : j.obj)
            if (k == "text") last = &v;
        if (!last || !last->is_string() || last->str != out) {
            std::fprintf(stderr, "fuzz finding: prepare and data/json.h read different text fields\n");
            std::abort();
        }
    }
    return 0;
}
