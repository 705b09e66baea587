// The search journal: DIR/journal.jsonl, append-only, one JSON record per
// line, each written with one write() and fsync'ed before the search goes on.
//
// Records: one `search` header (the space file's text, the effective base
// config, the settings, version, device), then per batch of trials a `batch`
// record (the planned trials, written before any of them starts) and one
// `trial` record per finished trial. Replaying the records gives the whole
// state of a search (replay()), which is how --resume continues after a
// kill -9: finished trials are in the journal and are not repeated, trials
// of a batch without their record were in flight and run again.
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

// Reads a journal without changing it (for reports); skips a torn last line.
std::vector<Json> read_journal(const std::string& path, std::string* warning = nullptr);

// Writes a file under a temporary name, fsyncs and renames it into place.
void write_file_atomic(const std::string& path, const std::string& text);

// FNV-1a as 16 hex digits.
std::string fnv_hex(const std::string& s);

Json overrides_json(const Overrides& ov);
Overrides overrides_from(const Json& obj);

// A trial as the search plans it (the `batch` record lists these).
struct Planned {
    int id = 0;
    std::string role;     // baseline | candidate | confirm | rung
    int parent = -1;      // the trial whose config this one changes (-1: the base)
    Overrides config;     // overrides of the base config
    Overrides diff;       // what changed from the parent's config
    int seed = 0;         // run.seed of the child
    double budget_s = 0;
    bool kernel_rule = false;  // judged by step time and a correctness check, not by retraining
    int bracket = -1, rung = -1;  // successive halving
    std::string note;     // why the strategy proposed it (the proposer's own words for external)
    std::string invalid;  // non-empty: rejected before launch, with the reason
    std::string hash;     // of the effective config (seed and out_dir aside)

    Json to_json() const;
    static Planned from_json(const Json& j);
};

// The state of a search, rebuilt from its records.
struct SearchState {
    Json header;                        // the `search` record
    std::vector<Json> trials;           // `trial` records, journal order
    std::vector<Json> batches;          // `batch` records
    std::map<int, size_t> trial_index;  // id -> index in trials

    // The current baseline: the config every candidate is judged against.
    Overrides baseline;
    int baseline_id = -1;               // the trial that made it the baseline
    std::vector<double> baseline_scores;
    double noise_sd = 0;                // spread of the first baseline's repeats (standard deviation)
    double noise_rel = 0;               // the same relative to their mean: noise scales with the metric
    bool baseline_ready = false;        // its repeats have finished
    double baseline_step_ms = 0;        // kernel rule: the baseline's measured step time, when known

    std::set<std::string> tried;        // config hashes run or planned
    int next_id = 0;

    // Planned trials of the last batch that have no record yet (in flight at a kill).
    std::vector<Planned> unfinished() const;
    const Json* trial(int id) const;
    // Applies one trial record (also used live, as records are appended).
    void apply_trial(const Json& rec, int baseline_repeats);
};

SearchState replay(const std::vector<Json>& records, int baseline_repeats);

// Mean and sample standard deviation.
double mean_of(const std::vector<double>& v);
double sd_of(const std::vector<double>& v);

}  // namespace gpt::search
