// How candidates are proposed: mutations of a config (hill climbing,
// evolution), fresh samples (random search, successive halving), crossovers,
// and the external proposer protocol (a user command that reads the journal
// and the space as JSON on stdin and answers with candidates on stdout).
#pragma once

#include <random>
#include <string>
#include <vector>

#include "data/json.h"
#include "search/space.h"

namespace gpt::search {

using Rng = std::mt19937_64;

// Changes 1..max_mutations dimensions of `from` (how many: uniform); each
// changed value differs from the old one. Numeric dimensions move by a step of
// 0.1 to 0.35 of their range (in log space for log scales), either way.
Overrides mutate(const Space& space, const Overrides& from, const Config& from_cfg, int max_mutations, Rng& rng);
// Every dimension drawn uniformly (in log space for log scales), then
// repaired against the space's constraints (repair_draw).
Overrides sample_random(const Space& space, Rng& rng);
// A draw that breaks a constraint gets keys the constraint names handed back
// to the base (their overrides dropped), one at a time at random, until every
// constraint holds. Constraints like 'optim.type == "muon" || optim.muon_lr ==
// 0.02' make a key meaningless on one branch; a uniform draw of a float almost
// never lands on the base value, so without the repair a random draw would
// never be AdamW and most draws would be invalid (found in the
// search-modern.yaml demonstration: 8 of 8 random rung samples invalid). The
// base satisfies every constraint (load_space checks), so this always ends
// with a valid draw, or with the base's values for the keys it names. A draw
// the config schema rejects is returned unchanged: the caller's checks say why.
Overrides repair_draw(const Space& space, Overrides draw, Rng& rng);
// Each dimension from a or b with equal odds.
Overrides crossover(const Space& space, const Overrides& a, const Overrides& b, Rng& rng);

// The external proposer: runs `command` with `request` on stdin (through
// /bin/sh -c), waits at most timeout_s, and returns its parsed answer. Its
// stderr goes to err_path. Throws Error(RunFailed) naming the command when it
// fails, times out or answers something that is not a JSON object.
Json run_proposer(const std::string& command, const Json& request, const std::string& work_dir, const std::string& tag, double timeout_s);

}  // namespace gpt::search
