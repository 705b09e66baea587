// The search loop: plans batches of trials from the journal's state, runs
// them in child processes (up to `parallel` at once), judges each one, and
// appends its record to the journal before anything else happens.
//
// Judging (the journal's `rule` field says which one decided):
//   baseline  the k runs of the starting config, with different seeds: their
//             spread is the noise of the metric
//   noise     a candidate is kept when its gain over the baseline's mean is
//             larger than min_gain x the mean AND 2 standard deviations of the
//             baseline's spread
//   kernel    a change of kernels.* keys only (same_arithmetic families):
//             judged by measured step time (gpt bench step children, median)
//             and the first steps' losses against the baseline's kernels
//   halving   a successive-halving rung: ranked, the best 1/eta go on
//   process   the child crashed or timed out; validation: rejected before launch
// A kept candidate becomes the baseline only after a confirmation run with a
// fresh seed passes the same rule (role `confirm`).
#pragma once

#include <string>

#include "search/space.h"

namespace gpt::search {

struct RunOptions {
    std::string dir;            // the search directory (journal, trials, report)
    std::string gpt_binary;     // what runs trials ("" = this executable)
    bool quiet = false;
    bool resume = false;
    int parallel = -1;          // -1: the space's setting
    int max_trials = -1;        // -1: the space's setting
    std::string autotune_cache; // "" = default location
    std::string settings_json;  // command-line changes to the settings, for the journal header
};

// Runs (or resumes) a search; returns the process exit code. Throws
// Error(BadInput) for a bad space or directory, Error(RunFailed) when the
// baseline cannot run at all or the proposer fails.
int run_search(Space space, const RunOptions& opt);

// Facts about this machine and binary recorded with every trial.
std::string device_info(const std::string& backend);
std::string binary_version(const std::string& gpt_binary);
// The backend a config resolves to: "cpu" or "cuda".
std::string resolved_backend(const Config& cfg);
// The trials one can run at once: CUDA devices for cuda, else 1.
int default_parallel(const std::string& backend);

}  // namespace gpt::search
