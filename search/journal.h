// The search journal: DIR/journal.jsonl, append-only, one JSON record per
// line, each written with one write() and fsync'ed before the search goes on.
//
// Records (search/README.md, "The journal"):
//   search   the header: the space file's text, the effective base config, the
//            settings, binary version and hash, source commit, machine
//   resume   a --resume, with what it changed (the proposer command, ...)
//   plan     a trial (a candidate, the baseline, a halving rung) before its
//            first run: its config, diff, parent, the incumbent it is compared with
//   batch    the runs about to start, and which of them start together
//   run      one finished child process (a training run, a bench, a loss check)
//   trial    the decision on a trial: keep, discard, pruned, crash, invalid,
//            duplicate (a halving rung: promoted or discard), with the numbers
// Replaying the records gives the whole state of a search (replay()): this is
// how --resume continues after a kill -9. Finished runs are not repeated;
// runs of the last batch without their record were in flight and run again;
// a trial with runs but no decision goes on where it stopped.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "data/json.h"
#include "search/space.h"

namespace gpt::search {

class Journal {
public:
    // Opens (creating) the journal and returns its records. A last line that
    // does not parse (a write cut by a kill) is dropped and cut off the file;
    // `warning` says so. A bad line before the last one is Error(BadInput).
    Journal(const std::string& path, std::vector<Json>& records, std::string* warning);
    ~Journal();
    Journal(const Journal&) = delete;
    Journal& operator=(const Journal&) = delete;

    void append(const Json& record);  // thread-safe; write + fsync
    const std::string& path() const { return path_; }

private:
    std::string path_;
    int fd_ = -1;
    std::mutex mu_;
};

// An integer field of a journal record (an id, a pair, a count): BadInput
// naming the record and the field when it is missing where no default is
// given, not an integer, or outside [-2^30, 2^30] (any int with any_int): a
// damaged journal may hold 1e300 there, which no int holds.
int record_int(const Json& record, const char* key, double def = 0, bool any_int = false);

// Reads a journal without changing it (for reports); skips a torn last line.
std::vector<Json> read_journal(const std::string& path, std::string* warning = nullptr);

// Writes a file under a temporary name, fsyncs and renames it into place.
void write_file_atomic(const std::string& path, const std::string& text);

// FNV-1a as 16 hex digits.
std::string fnv_hex(const std::string& s);

Json overrides_json(const Overrides& ov);
Overrides overrides_from(const Json& obj);

// A trial: one candidate compared with the incumbent in paired runs (role
// candidate), the baseline's first runs (role baseline), or a successive
// halving rung run (role rung).
struct TrialPlan {
    int id = 0;
    std::string role;       // baseline | candidate | rung
    int parent = -1;        // the trial whose config it changed (-1: the base)
    int incumbent = -1;     // the trial it is compared with (the incumbent when it was planned)
    Overrides config;       // overrides of the base config
    Overrides diff;         // what changed from the parent's config
    Overrides incumbent_config;
    std::string rule;       // paired | tokens | kernel | baseline | halving
    double budget_s = 0;
    int bracket = -1, rung = -1;
    std::string note;       // why it was proposed (the proposer's own words for external)
    std::string hash;       // of the effective config (seed and out_dir aside)

    Json to_json() const;   // the `plan` record
    static TrialPlan from_json(const Json& j);
};

// A run: one child process.
struct RunPlan {
    int id = 0;
    int trial = 0;
    int pair = -1;          // pair index within its trial (-1: not paired)
    std::string role;       // baseline | incumbent | candidate | rung
    std::string kind;       // train | bench | check
    Overrides config;
    int seed = 0;
    int seed_index = -1;    // paired runs: the pair's number in the search (its seed is base seed + 1000 + this)
    double budget_s = 0;
    int group = 0;          // runs of a batch with the same group start together

    Json to_json() const;
    static RunPlan from_json(const Json& j);
};

// The state of a search, rebuilt from its records.
struct SearchState {
    Json header;                          // the `search` record
    std::vector<Json> batches;            // `batch` records
    std::map<int, Json> runs;             // run id -> `run` record
    std::map<int, TrialPlan> plans;       // trial id -> plan
    std::map<int, Json> decisions;        // trial id -> `trial` record
    std::vector<int> decision_order;      // trial ids in the order they were decided
    std::string proposer;                 // the proposer command in force (a --resume may change it)

    // The incumbent: the config every candidate is compared with.
    Overrides incumbent;
    int incumbent_id = -1;                // its trial (0: the baseline)
    bool baseline_done = false;           // the baseline trial has its decision

    std::set<std::string> tried;          // config hashes planned (each config is compared once)
    std::map<std::string, int> trial_of_hash;
    int next_run = 0, next_trial = 0, next_pair_seed = 0;

    const Json* decision(int trial) const;
    // The trial's finished runs, in id order.
    std::vector<const Json*> runs_of(int trial) const;
    // Trials planned and not decided, in id order.
    std::vector<int> open_trials() const;
    // Runs of the last batch without a record (in flight at a kill).
    std::vector<RunPlan> unfinished() const;
    int decided_candidates() const;      // trials with role candidate or rung that have a decision (plus invalid, duplicate)

    void apply(const Json& record);
};

SearchState replay(const std::vector<Json>& records);

}  // namespace gpt::search
