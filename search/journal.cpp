#include "search/journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/files.h"
#include "kernels/error.h"

namespace gpt::search {

namespace {

std::string read_all(const std::string& path) { return read_input(path, "search journal", kJournalLimit); }

// Parses the lines of a journal; returns the byte length of the good prefix.
size_t parse_lines(const std::string& text, const std::string& path, std::vector<Json>& out, std::string* warning) {
    size_t pos = 0, good = 0;
    int line_no = 0;
    while (pos < text.size()) {
        const size_t nl = text.find('\n', pos);
        const bool complete = nl != std::string::npos;
        const std::string line = text.substr(pos, complete ? nl - pos : std::string::npos);
        line_no++;
        const size_t next = complete ? nl + 1 : text.size();
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            pos = good = next;
            continue;
        }
        try {
            if (!complete) throw std::runtime_error("no newline at the end");
            out.push_back(parse_json(line));
            pos = good = next;
        } catch (const std::exception& e) {
            const bool last = next >= text.size();
            if (!last) bad_input(path + ":" + std::to_string(line_no) + ": not a journal record (" + e.what() + ")");
            if (warning)
                *warning = path + ":" + std::to_string(line_no) + ": ignoring a torn last line (" + std::to_string(line.size()) +
                           " bytes, probably cut by a kill: " + e.what() + ")";
            break;
        }
    }
    return good;
}

}  // namespace

// An integer field of a record (an id, a pair, a seed): a hand-edited or
// damaged journal may hold 1e300 there, which no int holds (converting it is
// undefined behaviour, found by tests/fuzz/fuzz_journal.cpp). Ids stay far
// from INT_MAX so that the id + 1 of the next one cannot overflow; a seed may
// be any int.
int record_int(const Json& j, const char* key, double def, bool any_int) {
    const double x = j.number(key, def);
    const double lim = any_int ? 2147483647.0 : double(1 << 30);
    if (!(x >= -lim && x <= lim) || x != std::floor(x)) {
        const Json* v = j.find(key);
        bad_input("search journal: a '" + j.string("type", "?") + "' record's \"" + key + "\" is " + (v ? v->dump() : std::string("missing")) +
                  ", not an integer" + (any_int ? "" : " in [-2^30, 2^30]") + " (a damaged journal?)");
    }
    return int(x);
}

Journal::Journal(const std::string& path, std::vector<Json>& records, std::string* warning) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) run_failed("cannot open the journal '" + path + "': " + std::strerror(errno));
    // One search per directory: a second one would interleave its trials with ours.
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd_);
        fd_ = -1;
        bad_input("another gpt search is using '" + path + "' (its journal is locked): wait for it, or stop it first");
    }
    const std::string text = read_all(path);
    const size_t good = parse_lines(text, path, records, warning);
    // Cut a torn record so the next one starts on its own line.
    if (good < text.size() && ::ftruncate(fd_, static_cast<off_t>(good)) != 0)
        run_failed("cannot truncate the journal '" + path + "': " + std::strerror(errno));
    if (::lseek(fd_, 0, SEEK_END) < 0) run_failed("cannot seek in the journal '" + path + "': " + std::strerror(errno));
}

Journal::~Journal() {
    if (fd_ >= 0) ::close(fd_);
}

void Journal::append(const Json& record) {
    const std::string line = record.dump() + "\n";
    std::lock_guard<std::mutex> lock(mu_);
    // A failed write (a full disk) is cut back off, so the journal ends with a whole record.
    const off_t start = ::lseek(fd_, 0, SEEK_END);
    try {
        write_all(fd_, line.data(), line.size(), path_);
    } catch (...) {
        if (start >= 0) {
            const int rc = ::ftruncate(fd_, start);
            (void)rc;  // the write's error is the one to report
        }
        throw;
    }
    if (::fsync(fd_) != 0) run_failed("cannot fsync the journal '" + path_ + "': " + std::strerror(errno));
}

std::vector<Json> read_journal(const std::string& path, std::string* warning) {
    if (!std::filesystem::exists(path)) bad_input(path + ": no such journal (is it a search directory?)");
    std::vector<Json> out;
    parse_lines(read_all(path), path, out, warning);
    return out;
}

void write_file_atomic(const std::string& path, const std::string& text) { gpt::write_file_atomic(path, text); }

std::string fnv_hex(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    char buf[24];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

Json overrides_json(const Overrides& ov) {
    Json j = Json::object();
    for (const auto& [k, v] : ov) j.set(k, v);
    return j;
}

Overrides overrides_from(const Json& obj) {
    Overrides ov;
    for (const auto& [k, v] : obj.obj) ov[k] = v.scalar_text();
    return ov;
}

Json TrialPlan::to_json() const {
    Json j = Json::object();
    j.set("type", "plan");
    j.set("id", id);
    j.set("role", role);
    j.set("parent", parent);
    j.set("incumbent", incumbent);
    j.set("config", overrides_json(config));
    j.set("diff", overrides_json(diff));
    j.set("incumbent_config", overrides_json(incumbent_config));
    j.set("rule", rule);
    j.set("budget_s", budget_s);
    if (bracket >= 0) {
        j.set("bracket", bracket);
        j.set("rung", rung);
    }
    if (!note.empty()) j.set("note", note);
    j.set("config_hash", hash);
    return j;
}

TrialPlan TrialPlan::from_json(const Json& j) {
    TrialPlan p;
    p.id = record_int(j, "id");
    p.role = j.string("role");
    p.parent = record_int(j, "parent", -1);
    p.incumbent = record_int(j, "incumbent", -1);
    if (const Json* c = j.find("config")) p.config = overrides_from(*c);
    if (const Json* d = j.find("diff")) p.diff = overrides_from(*d);
    if (const Json* c = j.find("incumbent_config")) p.incumbent_config = overrides_from(*c);
    p.rule = j.string("rule");
    p.budget_s = j.number("budget_s");
    p.bracket = record_int(j, "bracket", -1);
    p.rung = record_int(j, "rung", -1);
    p.note = j.string("note");
    p.hash = j.string("config_hash");
    return p;
}

Json RunPlan::to_json() const {
    Json j = Json::object();
    j.set("id", id);
    j.set("trial", trial);
    j.set("pair", pair);
    j.set("role", role);
    j.set("kind", kind);
    j.set("config", overrides_json(config));
    j.set("seed", seed);
    if (seed_index >= 0) j.set("seed_index", seed_index);
    j.set("budget_s", budget_s);
    j.set("group", group);
    return j;
}

RunPlan RunPlan::from_json(const Json& j) {
    RunPlan r;
    r.id = record_int(j, "id");
    r.trial = record_int(j, "trial");
    r.pair = record_int(j, "pair", -1);
    r.role = j.string("role");
    r.kind = j.string("kind", "train");
    if (const Json* c = j.find("config")) r.config = overrides_from(*c);
    r.seed = record_int(j, "seed", 0, true);
    r.seed_index = record_int(j, "seed_index", -1);
    r.budget_s = j.number("budget_s");
    r.group = record_int(j, "group");
    return r;
}

const Json* SearchState::decision(int trial) const {
    auto it = decisions.find(trial);
    return it == decisions.end() ? nullptr : &it->second;
}

std::vector<const Json*> SearchState::runs_of(int trial) const {
    std::vector<const Json*> out;
    for (const auto& [id, r] : runs)
        if (record_int(r, "trial") == trial) out.push_back(&r);
    return out;
}

std::vector<int> SearchState::open_trials() const {
    std::vector<int> out;
    for (const auto& [id, p] : plans)
        if (!decisions.count(id)) out.push_back(id);
    return out;
}

std::vector<RunPlan> SearchState::unfinished() const {
    std::vector<RunPlan> out;
    if (batches.empty()) return out;
    if (const Json* list = batches.back().find("runs"))
        for (const auto& r : list->arr) {
            RunPlan p = RunPlan::from_json(r);
            if (!runs.count(p.id)) out.push_back(p);
        }
    return out;
}

int SearchState::decided_candidates() const {
    int n = 0;
    for (const auto& [id, d] : decisions) n += d.string("role") != "baseline";
    return n;
}

void SearchState::apply(const Json& r) {
    const std::string type = r.string("type");
    if (type == "search") {
        header = r;
        if (const Json* s = r.find("settings")) proposer = s->string("proposer");
    } else if (type == "resume") {
        if (r.find("proposer")) proposer = r.string("proposer");
    } else if (type == "plan") {
        TrialPlan p = TrialPlan::from_json(r);
        tried.insert(p.hash);
        trial_of_hash[p.hash] = p.id;
        next_trial = std::max(next_trial, p.id + 1);
        plans[p.id] = p;
    } else if (type == "batch") {
        batches.push_back(r);
        if (const Json* list = r.find("runs"))
            for (const auto& x : list->arr) {
                next_run = std::max(next_run, record_int(x, "id") + 1);
                next_pair_seed = std::max(next_pair_seed, record_int(x, "seed_index", -1) + 1);
            }
    } else if (type == "run") {
        const int id = record_int(r, "id");
        (void)record_int(r, "trial");  // runs_of() and the runner read them from the record later
        (void)record_int(r, "pair", -1);
        runs[id] = r;
        next_run = std::max(next_run, id + 1);
    } else if (type == "trial") {
        const int id = record_int(r, "id");
        if (!decisions.count(id)) decision_order.push_back(id);
        decisions[id] = r;
        next_trial = std::max(next_trial, id + 1);
        const std::string h = r.string("config_hash");
        if (!h.empty()) {
            tried.insert(h);
            if (!trial_of_hash.count(h)) trial_of_hash[h] = id;
        }
        const std::string role = r.string("role"), status = r.string("status");
        if (role == "baseline") {
            baseline_done = true;
            if (incumbent_id < 0) incumbent_id = id;
        } else if (role == "candidate" && status == "keep") {
            // A record without its config (a damaged journal) keeps the incumbent it had.
            if (const Json* c = r.find("config")) {
                incumbent = overrides_from(*c);
                incumbent_id = id;
            }
        }
    }
}

SearchState replay(const std::vector<Json>& records) {
    SearchState st;
    for (const auto& r : records) st.apply(r);
    return st;
}

}  // namespace gpt::search
