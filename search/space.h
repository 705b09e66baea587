// The search space file: a base config, the dimensions to search over, the
// constraints between keys, and the search's own settings.
//
//   base:        {file: configs/tiny.yaml, set: {optim.lr: 1e-4}}   (or config: {...inline sections...})
//   search:      {objective: time_to_target, target_val_loss: 3.2, budget_s: 3, strategy: hill_climb, ...}
//   space:       {optim.lr: {float: [1e-5, 1e-1], scale: log}, schedule.type: {choices: [cosine, wsd]}, ...}
//   constraints: ["model.n_embd % model.n_head == 0", ...]
//
// Everything is checked when the file is loaded: an unknown key, a bad range,
// a value the config schema rejects, a constraint naming an unknown key are
// Error(BadInput) naming the key (exit code 2), before any trial runs.
// search/README.md is the user guide of this format.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/json.h"
#include "train/config.h"

namespace gpt::search {

// Candidate configs are the base config plus overrides: key -> value text,
// exactly what `gpt train --set key=value` takes.
using Overrides = std::map<std::string, std::string>;

struct Dimension {
    enum class Kind { Choice, Int, Float };
    std::string key;
    Kind kind = Kind::Choice;
    std::vector<std::string> choices;
    double lo = 0, hi = 0;
    bool log = false;

    // Position of a value in [0, 1] (log scale when log); choices: the index / (n-1).
    double to_unit(const std::string& value) const;
    // The value at a position in [0, 1], rounded for ints, as override text.
    std::string from_unit(double u) const;
    // A value as this dimension spells it, compared by value: for choices the
    // matching choice (0, 0.0 and "0.0" are one value), for ranges the number;
    // nullopt when it is not one of the choices or not a number.
    std::optional<std::string> canonical(const std::string& value) const;
};

// A parsed constraint expression (arithmetic, comparisons, && || !, keys, numbers, strings).
struct Expr;
struct Constraint {
    std::string text;
    std::shared_ptr<Expr> expr;
};

struct Settings {
    std::string objective = "time_to_target";  // time_to_target | loss_at_budget
    double target_val_loss = 0;                 // required for time_to_target
    std::string target_metric = "val_loss";     // the base's run.target_metric (val_loss | val_bpb)
    std::string step_clock = "median";          // the trials' run.step_clock (cpu | median), set by the protocol
    double budget_s = 10;                       // training seconds per trial
    double grace_s = 60;                        // the child is killed at budget_s + grace_s of wall clock
    std::string strategy = "hill_climb";        // hill_climb | halving | random | evolution | external
    int max_trials = 30;                        // trials in all, baseline repeats and confirmations included
    double time_limit_s = 0;                    // wall clock for the whole search, 0 = none
    int baseline_repeats = 3;                   // k: baseline runs with different seeds
    double min_gain = 0.05;                     // relative gain a candidate must exceed (and 2 sd of the baseline)
    int mutations = 2;                          // hill_climb/evolution: at most this many keys change per candidate
    int seed = 1;                               // the search's own random seed
    int parallel = 0;                           // trials at once, 0 = CUDA devices / ranks_per_trial (cuda) or 1
    int ranks_per_trial = 1;                    // data-parallel ranks (GPUs) per trial, launched with gpt launch
    std::string proposer;                       // external: the command
    int halving_eta = 3;                        // halving: keep 1/eta per rung
    int halving_candidates = 9;                 // halving: candidates in the first rung
    int halving_rungs = 3;                      // halving: rungs; the last one runs at budget_s
    bool autotune = false;                      // tune kernels before the baseline
    int kernel_steps = 3;                       // kernel rule: training steps compared for correctness
    int kernel_timed_steps = 30;                // kernel rule: steps after them whose median time is compared
    double kernel_tolerance = 1e-3;             // kernel rule: max relative loss difference
    // The evaluation protocol, the same for every trial (0: from the base config; see apply_protocol).
    long val_tokens = 0;                        // the fixed validation set, in tokens
    int val_seq_len = 0;                        // its window length T_val
    long eval_every_tokens = 0;                 // evaluations on a grid of tokens trained
    // The paired rule (search/README.md, "The paired rule").
    double false_keep = 0.05;                   // the most a candidate no better than min_gain is kept with
    int min_pairs = 2;                          // paired runs before a candidate may be kept
    int max_pairs = 6;                          // paired runs before an undecided candidate is given up
    bool prune = true;                          // stop a candidate run that falls behind the incumbent by more than the noise
    bool tokens_rule = true;                    // judge changes of cost-neutral keys by tokens to target (judging_rule)
};

struct Space {
    std::string origin;                 // the file
    std::string text;                   // its contents (copied into the run directory)
    std::string base_yaml;              // the effective base config
    std::vector<Dimension> dims;
    std::vector<Constraint> constraints;
    Settings settings;

    const Dimension* dim(const std::string& key) const;
    Json to_json() const;               // for the proposer protocol and the journal header
};

// Why a config key may not be a dimension ("" when it may): only model.*,
// optim.*, schedule.*, kernels.* and the batch keys can change; everything that
// defines the task or the measurement belongs to the search.
std::string protected_reason(const std::string& key);

// Keys that cannot change the cost of a step (seconds per token): learning
// rates, Adam's betas and eps, the schedule, the initialisation. Weight decay
// and clipping are not among them: a kernel may skip their work at 0.
bool cost_neutral_key(const std::string& key);

// How a candidate that changes `diff` against its incumbent is judged:
//   "kernel"  only kernels.* keys of same-arithmetic families: paired step times;
//   "tokens"  time_to_target and only cost-neutral keys (search.tokens_rule):
//             paired tokens to target, the seconds per token taken as equal;
//   "paired"  paired times to target (or losses at the budget).
std::string judging_rule(const Settings& s, const Overrides& diff);

// Loads and checks a space file. base_yaml_override (when non-empty) replaces
// the `base` section's result: a resumed search uses the base it started with.
Space load_space(const std::string& path, const std::string& base_yaml_override = "");
Space parse_space(const std::string& text, const std::string& origin, const std::string& base_dir,
                  const std::string& base_yaml_override = "");

// The effective config of base + overrides; throws Error(BadInput) like gpt train would.
Config candidate_config(const Space& space, const Overrides& ov);
// The first constraint the config violates, or nullopt.
std::optional<std::string> violated_constraint(const Space& space, const Config& cfg);

// Every config key with its value as JSON (model.n_layer -> 2, kernels.gelu -> "recompute").
std::map<std::string, Json> flat_config(const Config& cfg);

// "a=1, b=x" for messages, "(base)" when empty.
std::string overrides_text(const Overrides& ov);

}  // namespace gpt::search
