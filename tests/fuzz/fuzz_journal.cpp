// The search journal (search/journal.cpp): any file is records (a torn last
// line dropped with a warning) or a gpt::Error; the records replay into a
// search state (what --resume and `search report` start from) or a gpt::Error,
// and every question --resume asks of that state has an answer.
#include "search/journal.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = gpt::fuzz::as_file(data, size);
    gpt::fuzz::expect_only_gpt_errors([&] {
        std::string warning;
        const auto records = gpt::search::read_journal(path, &warning);
        const gpt::search::SearchState st = gpt::search::replay(records);
        (void)st.unfinished();
        (void)st.decided_candidates();
        for (int id : st.open_trials()) (void)st.runs_of(id);
        for (int id : st.decision_order) (void)st.decision(id);
        for (const auto& [id, plan] : st.plans) (void)gpt::search::TrialPlan::from_json(plan.to_json()).to_json().dump();
        for (const auto& batch : st.batches)
            if (const gpt::Json* runs = batch.find("runs"))
                for (const auto& r : runs->arr) (void)gpt::search::RunPlan::from_json(r).to_json().dump();
    });
    return 0;
}
