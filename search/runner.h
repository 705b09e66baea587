// The search loop: plans trials from the journal's state, runs each one as
// child processes, judges it, and appends every record to the journal before
// anything else happens.
//
// The measurement protocol (search/README.md, "How a candidate is judged"):
//   baseline  the base config runs k times with different seeds: it must reach
//             the target in every run (else the search stops and says what
//             budget or target would work), and its spread is stated
//   paired    every candidate runs in pairs with a fresh run of the incumbent:
//             same seed, at the same time (one after the other, the order
//             alternating, or side by side with --parallel), and is judged on
//             the ratios of each pair's times to target (or losses) by a
//             sequential test with a stated false-keep rate (search/stats.h)
//   kernel    a change of kernels.* keys only (same_arithmetic families): a
//             loss check pair, then paired `gpt bench step` children, judged
//             by the same test on the step-time ratios
//   halving   a successive-halving rung: single runs ranked, the best 1/eta go on;
//             the last rung's candidates are judged by the paired rule
//   process   the candidate crashed or timed out; validation: rejected before launch
#pragma once

#include <string>

#include "search/space.h"

namespace gpt::search {

struct RunOptions {
    std::string dir;            // the search directory (journal, runs, report)
    std::string gpt_binary;     // what runs trials ("" = this executable)
    bool quiet = false;
    bool resume = false;
    int parallel = -1;          // -1: the space's setting
    int max_trials = -1;        // -1: the space's setting
    std::string proposer;       // --resume --proposer: a new proposer command ("" = keep)
    std::string autotune_cache; // "" = default location
    std::string settings_json;  // command-line changes to the settings, for the journal header
};

// Runs (or resumes) a search; returns the process exit code (2 when the
// baseline cannot reach the target in the budget). Throws Error(BadInput)
// for a bad space or directory, Error(RunFailed) when the baseline cannot run
// at all or the proposer fails.
int run_search(Space space, const RunOptions& opt);

// Facts about this machine and binary recorded in the journal.
std::string device_info(const std::string& backend);
std::string binary_version(const std::string& gpt_binary);
Json machine_info();                  // host, CPU, cores, memory, load average
std::string source_commit();          // the commit the binary was built from (+dirty), or "unknown"
// The backend a config resolves to: "cpu" or "cuda".
std::string resolved_backend(const Config& cfg);

}  // namespace gpt::search
