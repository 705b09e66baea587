// The search journal (search/journal.cpp): any file is records (a torn last
// line dropped with a warning) or a gpt::Error; the records replay into a
// search state or a gpt::Error.
#include "search/journal.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = gpt::fuzz::as_file(data, size);
    gpt::fuzz::expect_only_gpt_errors([&] {
        std::string warning;
        const auto records = gpt::search::read_journal(path, &warning);
        const gpt::search::SearchState st = gpt::search::replay(records, 2);
        (void)st.unfinished();
        for (const auto& t : st.trials) (void)gpt::search::Planned::from_json(t).to_json().dump();
    });
    return 0;
}
