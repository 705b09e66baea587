// Kernel measurements in child processes, and kernel autotuning.
//
// Both the search's kernel rule and `gpt search tune` measure a config the
// same way: `gpt bench step --json` children (median ms/step), and a short
// `gpt train` child whose first steps' losses are compared with the
// reference kernels' (the correctness check: same_arithmetic variants must
// give the same losses up to float rounding).
#pragma once

#include <string>
#include <vector>

#include "data/json.h"
#include "search/space.h"

namespace gpt::search {

struct BenchRun {
    bool ok = false;
    double median_ms = 0, tokens_per_s = 0, mfu = 0;
    Json raw;  // the bench's whole JSON line
    std::string error;
};
// One `gpt bench step -c <cfg> --json --repeats R` child in dir/tag.
BenchRun bench_config(const std::string& gpt_binary, Config cfg, const std::string& dir, const std::string& tag, int repeats,
                      double timeout_s, const std::map<std::string, std::string>& env = {});

struct CheckRun {
    bool ok = false;
    std::vector<double> losses;  // train loss of steps 1..n
    std::string error;
};
// A `gpt train` child of `steps` steps (no budget, no target, one final eval) in dir/tag.
CheckRun first_losses(const std::string& gpt_binary, Config cfg, int steps, const std::string& dir, const std::string& tag, double timeout_s,
                      const std::map<std::string, std::string>& env = {});

// max |a_i - b_i| / max(|b_i|, 1e-6); +inf when the lengths differ.
double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b);

struct TuneOptions {
    std::string gpt_binary;
    std::string cache_path;   // "" = default_autotune_cache()
    std::string work_dir;     // children's files
    int repeats = 3;          // bench children per candidate (median of their medians)
    int bench_steps = 8;      // timed steps per bench child
    int check_steps = 3;
    double tolerance = 1e-3;
    bool force = false;       // measure even when the cache has an entry
    bool quiet = false;
};

struct TuneResult {
    Overrides chosen;   // kernels.* keys of the winners that differ from the defaults
    Json report;        // every measurement, for the journal and the console
    std::string key;    // the cache key
    bool from_cache = false;
};

// Tunes every registry family the config's backend reads: each variant, then
// each parameter value, timed on the config's own shapes and checked against
// the default kernels' losses before it may win. The winner per family is
// cached in a JSON file keyed by device, binary version and shape.
TuneResult autotune(const std::string& base_yaml, const TuneOptions& opt);

// $GPT_AUTOTUNE_CACHE, else $XDG_CACHE_HOME/gpt/autotune.json, else ~/.cache/gpt/autotune.json.
std::string default_autotune_cache();

}  // namespace gpt::search
