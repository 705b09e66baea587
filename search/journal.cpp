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

Json Planned::to_json() const {
    Json j = Json::object();
    j.set("id", id);
    j.set("role", role);
    j.set("parent", parent);
    j.set("config", overrides_json(config));
    j.set("diff", overrides_json(diff));
    j.set("seed", seed);
    j.set("budget_s", budget_s);
    j.set("rule", kernel_rule ? "kernel" : "train");
    if (bracket >= 0) {
        j.set("bracket", bracket);
        j.set("rung", rung);
    }
    if (!note.empty()) j.set("note", note);
    if (!invalid.empty()) j.set("invalid", invalid);
    j.set("config_hash", hash);
    return j;
}

Planned Planned::from_json(const Json& j) {
    Planned p;
    p.id = int(j.number("id"));
    p.role = j.string("role");
    p.parent = int(j.number("parent", -1));
    if (const Json* c = j.find("config")) p.config = overrides_from(*c);
    if (const Json* d = j.find("diff")) p.diff = overrides_from(*d);
    p.seed = int(j.number("seed"));
    p.budget_s = j.number("budget_s");
    p.kernel_rule = j.string("rule") == "kernel";
    p.bracket = int(j.number("bracket", -1));
    p.rung = int(j.number("rung", -1));
    p.note = j.string("note");
    p.invalid = j.string("invalid");
    p.hash = j.string("config_hash");
    return p;
}

double mean_of(const std::vector<double>& v) {
    if (v.empty()) return NAN;
    double s = 0;
    for (double x : v) s += x;
    return s / double(v.size());
}

double sd_of(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    const double m = mean_of(v);
    double s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return std::sqrt(s / double(v.size() - 1));
}

const Json* SearchState::trial(int id) const {
    auto it = trial_index.find(id);
    return it == trial_index.end() ? nullptr : &trials[it->second];
}

std::vector<Planned> SearchState::unfinished() const {
    std::vector<Planned> out;
    if (batches.empty()) return out;
    if (const Json* list = batches.back().find("trials"))
        for (const auto& t : list->arr) {
            Planned p = Planned::from_json(t);
            if (!trial_index.count(p.id)) out.push_back(p);
        }
    return out;
}

void SearchState::apply_trial(const Json& rec, int baseline_repeats) {
    const int id = int(rec.number("id"));
    trial_index[id] = trials.size();
    trials.push_back(rec);
    next_id = std::max(next_id, id + 1);
    tried.insert(rec.string("config_hash"));
    const std::string role = rec.string("role"), status = rec.string("status");
    const Json* metrics = rec.find("metrics");
    const double score = metrics ? metrics->number("score", NAN) : NAN;
    if (role == "baseline") {
        if (baseline_id < 0) baseline_id = id;
        if (status == "keep" && std::isfinite(score)) baseline_scores.push_back(score);
        int done = 0;
        for (const auto& t : trials) done += t.string("role") == "baseline";
        if (done >= baseline_repeats) {
            baseline_ready = true;
            noise_sd = sd_of(baseline_scores);
            const double m = mean_of(baseline_scores);
            noise_rel = baseline_scores.empty() || !(std::fabs(m) > 0) ? 0 : noise_sd / std::fabs(m);
        }
    } else if (role == "confirm" && status == "keep") {
        const Json* cand = trial(int(rec.number("parent")));
        if (!cand) return;
        if (const Json* c = cand->find("config")) baseline = overrides_from(*c);
        baseline_id = int(cand->number("id"));
        const Json* cm = cand->find("metrics");
        if (rec.string("rule") == "kernel" && metrics) {
            // Same arithmetic, faster steps: the time to target scales with the
            // step time; a loss at a fixed budget is kept as it was (conservative).
            const double ratio = metrics->number("step_ms") / std::max(1e-12, metrics->number("ref_step_ms"));
            if (header.find("settings") && header.find("settings")->string("objective") == "time_to_target" && std::isfinite(ratio) && ratio > 0)
                for (double& s : baseline_scores) s *= ratio;
            baseline_step_ms = metrics->number("step_ms");
        } else {
            baseline_scores.clear();
            if (cm && std::isfinite(cm->number("score", NAN))) baseline_scores.push_back(cm->number("score"));
            if (std::isfinite(score)) baseline_scores.push_back(score);
        }
    }
}

SearchState replay(const std::vector<Json>& records, int baseline_repeats) {
    SearchState st;
    for (const auto& r : records) {
        const std::string type = r.string("type");
        if (type == "search") {
            st.header = r;
        } else if (type == "batch") {
            st.batches.push_back(r);
            if (const Json* list = r.find("trials"))
                for (const auto& t : list->arr) {
                    st.tried.insert(t.string("config_hash"));
                    st.next_id = std::max(st.next_id, int(t.number("id")) + 1);
                }
        } else if (type == "trial") {
            st.apply_trial(r, baseline_repeats);
        }
    }
    return st;
}

}  // namespace gpt::search
