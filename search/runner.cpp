#include "search/runner.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "kernels/backend.h"
#include "kernels/error.h"
#include "kernels/registry.h"
#include "search/autotune.h"
#include "search/journal.h"
#include "search/report.h"
#include "search/stats.h"
#include "search/strategy.h"
#include "search/trial.h"

namespace fs = std::filesystem;

const char* gpt_source_commit();  // generated at build time (cmake/source_commit.cmake)

namespace gpt::search {

std::string resolved_backend(const Config& cfg) {
    if (cfg.run.backend == "cuda") return "cuda";
    if (cfg.run.backend == "auto") {
#if GPT_HAVE_CUDA
        if (cuda_device_count() > 0) return "cuda";
#endif
    }
    return "cpu";
}

std::string device_info(const std::string& backend) {
    std::string model;
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) {
            model = line.substr(line.find(':') + 2);
            break;
        }
    std::string out = "cpu: " + (model.empty() ? std::string("unknown") : model) + " x " + std::to_string(std::thread::hardware_concurrency());
    if (backend == "cuda") {
        // The driver's own description, without creating a CUDA context here.
        std::error_code ec;
        std::vector<std::string> gpus;
        for (const auto& e : fs::directory_iterator("/proc/driver/nvidia/gpus", ec)) {
            std::ifstream g(e.path() / "information");
            while (std::getline(g, line))
                if (line.rfind("Model:", 0) == 0) gpus.push_back(line.substr(line.find_first_not_of(" \t", 6)));
        }
        out = "cuda: " + (gpus.empty() ? std::string("unknown GPU") : gpus.front()) + " x " + std::to_string(std::max<size_t>(1, gpus.size())) + "; " + out;
    }
    return out;
}

std::string binary_version(const std::string& gpt_binary) {
    std::ifstream f(gpt_binary, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return std::string(GPT_VERSION) + "+" + fnv_hex(ss.str()).substr(0, 12);
}

std::string source_commit() { return gpt_source_commit(); }

namespace {

double load_average() {
    std::ifstream f("/proc/loadavg");
    double v = NAN;
    f >> v;
    return v;
}

}  // namespace

Json machine_info() {
    Json m = Json::object();
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    m.set("host", std::string(host));
    struct utsname u {};
    if (uname(&u) == 0) m.set("kernel", std::string(u.sysname) + " " + u.release + " " + u.machine);
    m.set("cores", int(std::thread::hardware_concurrency()));
    std::ifstream f("/proc/meminfo");
    std::string key;
    double kb = 0;
    while (f >> key >> kb) {
        if (key == "MemTotal:") {
            m.set("memory_gib", kb / (1024.0 * 1024.0));
            break;
        }
        f.ignore(1 << 10, '\n');
    }
    m.set("load_average", load_average());
    return m;
}

namespace {

using Clock = std::chrono::steady_clock;

std::string now_iso() {
    const std::time_t t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

std::string fmt(double v, int prec = 4) {
    if (!std::isfinite(v)) return "n/a";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    return buf;
}

std::string pct(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f%%", 100 * v);
    return buf;
}

double median_of(std::vector<double> v) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double geomean(const std::vector<double>& v) {
    if (v.empty()) return NAN;
    double s = 0;
    for (double x : v) s += std::log(x);
    return std::exp(s / double(v.size()));
}

double rel_sd(const std::vector<double>& v) {
    if (v.size() < 2) return NAN;
    double m = 0;
    for (double x : v) m += x / double(v.size());
    double ss = 0;
    for (double x : v) ss += (x - m) * (x - m);
    return std::sqrt(ss / double(v.size() - 1)) / m;
}

// ---------------------------------------------------------------------------
// A training run's log: its learning curve, and time to target decomposed as
// tokens to target x seconds per token.

struct Curve {
    std::vector<double> tokens, metric;  // evaluations: tokens trained, the target metric
    double tokens_per_step = 0;
    std::vector<double> step_s;          // measured (wall) step times
};

// One log.jsonl line into a curve: evaluations of the target metric, step times.
// Returns true for a new evaluation.
bool add_log_line(Curve& c, const std::string& line, const std::string& target_metric, bool cpu_clock) {
    if (line.empty() || line.back() != '}') return false;
    const bool val = line.find("\"type\":\"val\"") != std::string::npos, step = line.find("\"type\":\"step\"") != std::string::npos;
    if (!val && !step) return false;
    Json j;
    try {
        j = parse_json(line);
    } catch (...) {
        return false;
    }
    if (step) {
        c.step_s.push_back(j.number(cpu_clock ? "cpu_ms" : "step_ms") / 1e3);  // what the step clock measures
        const double n = j.number("step");
        if (n > 0) c.tokens_per_step = j.number("tokens") / n;
        return false;
    }
    const double m = j.number(target_metric == "val_bpb" ? "val_bpb" : "val_loss", NAN);
    if (!std::isfinite(m)) return false;
    c.tokens.push_back(j.number("tokens"));
    c.metric.push_back(m);
    return true;
}

// The target metric's curve and the step times of a finished log.jsonl.
Curve read_curve(const std::string& log_path, const std::string& target_metric, bool cpu_clock) {
    Curve c;
    std::ifstream f(log_path);
    std::string line;
    while (std::getline(f, line)) add_log_line(c, line, target_metric, cpu_clock);
    return c;
}

// A log.jsonl being written: each update() reads only the complete lines added since the last.
struct LogFollower {
    std::string path, metric;
    bool cpu_clock = false;
    std::streamoff pos = 0;
    Curve curve;
    bool update() {
        std::ifstream f(path, std::ios::binary);
        if (!f) return false;
        f.seekg(pos);
        bool new_eval = false;
        std::string line;
        while (std::getline(f, line)) {
            if (f.eof()) break;  // no newline yet: a line being written
            pos += std::streamoff(line.size()) + 1;
            new_eval = add_log_line(curve, line, metric, cpu_clock) || new_eval;
        }
        return new_eval;
    }
};

// The first point where the curve reaches `target`, interpolated linearly
// between the evaluations around it; NaN when it never does.
double tokens_to(const std::vector<double>& tokens, const std::vector<double>& metric, double target) {
    for (size_t k = 0; k < metric.size(); k++) {
        if (metric[k] > target) continue;
        if (k == 0) return tokens[0];
        const double f = (metric[k - 1] - target) / (metric[k - 1] - metric[k]);
        return tokens[k - 1] + f * (tokens[k] - tokens[k - 1]);
    }
    return NAN;
}

// The last record of a type in a trainer's log.jsonl.
std::optional<Json> last_record(const std::string& log_path, const std::string& type) {
    std::ifstream f(log_path);
    std::string line;
    std::optional<Json> out;
    while (std::getline(f, line)) {
        if (line.find("\"type\":\"" + type + "\"") == std::string::npos) continue;
        try {
            out = parse_json(line);
        } catch (...) {
        }
    }
    return out;
}

// A reference for pruning and plots: a finished run's curve on the median
// clock (evaluation k at tokens_k x seconds per token).
struct Reference {
    std::vector<double> time, metric;
    double time_to_target = NAN;
};

// When the reference first reached `level` (interpolated), on its clock; 0 when it started below, NaN when never.
double time_to_level(const Reference& r, double level) { return tokens_to(r.time, r.metric, level); }

class Runner {
public:
    Runner(Space sp, RunOptions opt) : sp_(std::move(sp)), opt_(std::move(opt)) {}

    int run() {
        const Settings& s = sp_.settings;
        base_cfg_ = parse_config_text(sp_.base_yaml, sp_.origin + " (base)");
        backend_ = resolved_backend(base_cfg_);
        device_ = device_info(backend_);
        version_ = binary_version(opt_.gpt_binary);
        parallel_ = opt_.parallel > 0 ? opt_.parallel : s.parallel > 0 ? s.parallel : default_parallel();
        if (!opt_.resume) {
            // Refused before anything is written: a directory in use, a budget too short for a few evaluations.
            if (fs::exists(opt_.dir + "/journal.jsonl") && fs::file_size(opt_.dir + "/journal.jsonl") > 0)
                bad_input(opt_.dir + ": already holds a search journal: continue it with gpt search --resume " + opt_.dir + " or pick another --out");
            probe_device(true);
        } else {
            probe_device(false);
        }
        fs::create_directories(opt_.dir + "/runs");
        fs::create_directories(opt_.dir + "/proposer");
        std::vector<Json> records;
        std::string warning;
        journal_ = std::make_unique<Journal>(opt_.dir + "/journal.jsonl", records, &warning);
        if (!warning.empty()) std::fprintf(stderr, "gpt search: warning: %s\n", warning.c_str());
        if (opt_.resume && records.empty()) bad_input(opt_.dir + ": nothing to resume (its journal is empty)");
        if (!opt_.resume && !records.empty())
            bad_input(opt_.dir + ": already holds a search journal: continue it with gpt search --resume " + opt_.dir + " or pick another --out");

        if (records.empty()) {
            if (s.autotune) run_autotune();
            Json h = Json::object();
            h.set("type", "search");
            h.set("started_at", now_iso());
            h.set("space_file", sp_.origin);
            h.set("space_text", sp_.text);
            h.set("base_yaml", sp_.base_yaml);
            h.set("settings", *sp_.to_json().find("settings"));
            if (!opt_.settings_json.empty()) h.set("settings_overrides", parse_json(opt_.settings_json));
            h.set("space", sp_.to_json());
            h.set("version", version_);
            h.set("binary", opt_.gpt_binary);
            h.set("source_commit", source_commit());
            h.set("device", device_);
            h.set("machine", machine_info());
            h.set("backend", backend_);
            h.set("parallel", parallel_);
            if (!autotune_.is_null()) h.set("autotune", autotune_);
            journal_->append(h);
            records.push_back(h);
        } else {
            Json r = Json::object();
            r.set("type", "resume");
            r.set("at", now_iso());
            r.set("version", version_);
            r.set("binary", opt_.gpt_binary);
            r.set("source_commit", source_commit());
            r.set("machine", machine_info());
            r.set("parallel", parallel_);
            if (!opt_.proposer.empty()) r.set("proposer", opt_.proposer);
            journal_->append(r);
            records.push_back(r);
        }
        st_ = replay(records);
        log("search " + opt_.dir + ": strategy " + s.strategy + ", objective " + s.objective +
            (s.objective == "time_to_target" ? " (target " + fmt(s.target_val_loss) + ")" : "") + ", budget " + fmt(s.budget_s) + " s per run, " +
            std::to_string(parallel_) + " run(s) at once, device " + device_);
        if (opt_.resume) {
            log("resuming: " + std::to_string(st_.runs.size()) + " runs and " + std::to_string(st_.decisions.size()) + " decisions in the journal" +
                (opt_.proposer.empty() ? "" : "; the proposer is now '" + opt_.proposer + "'"));
        }

        const auto t0 = Clock::now();
        std::vector<RunPlan> batch = st_.unfinished();
        if (!batch.empty()) log("re-running " + std::to_string(batch.size()) + " run(s) that were in flight");
        int code = 0;
        if (batch.empty()) judge_open();  // a resumed search may have stopped with every run of a trial finished
        for (;;) {
            if (batch.empty()) {
                if (const Json* b = st_.decision(0); b && b->string("status") != "keep") {
                    code = 2;
                    break;
                }
                if (s.time_limit_s > 0 && std::chrono::duration<double>(Clock::now() - t0).count() >= s.time_limit_s) {
                    log("stopping: search.time_limit_s reached (trials still open continue with --resume)");
                    break;
                }
                batch = plan();
                if (batch.empty()) break;
                Json b = Json::object();
                b.set("type", "batch");
                b.set("batch", int(st_.batches.size()));
                Json list = Json::array();
                for (const auto& r : batch) list.push(r.to_json());
                b.set("runs", list);
                journal_->append(b);
                st_.apply(b);
            }
            run_batch(batch);
            batch.clear();
            judge_open();
        }
        write_report(opt_.dir);
        log("done: " + std::to_string(st_.decided_candidates()) + " trial(s) decided; report in " + opt_.dir + "/report.md, best config in " + opt_.dir +
            "/best.yaml");
        return code;
    }

private:
    Space sp_;
    RunOptions opt_;
    std::unique_ptr<Journal> journal_;
    SearchState st_;
    Config base_cfg_;
    std::string backend_, device_, version_;
    int parallel_ = 1;
    double peak_tflops_ = 0;
    Json autotune_;
    std::mutex mu_;      // the state, the journal order
    std::mutex log_mu_;

    void log(const std::string& msg) {
        if (opt_.quiet) return;
        std::lock_guard<std::mutex> lock(log_mu_);
        std::fprintf(stderr, "gpt search: %s\n", msg.c_str());
        std::fflush(stderr);
    }

    int default_parallel() const {
#if GPT_HAVE_CUDA
        if (backend_ == "cuda") return std::max(1, cuda_device_count() / sp_.settings.ranks_per_trial);
#endif
        return 1;
    }

    // Pairs that run at once: side by side in two slots with parallel >= 2, else one after the other.
    int pair_slots() const { return parallel_ >= 2 ? parallel_ / 2 : 1; }

    // One short `gpt bench step` child on the base config: the device as the
    // backend describes it, its peak TFLOP/s (for MFU) and the step time. At
    // the start, a budget too short for a few evaluations is refused here.
    void probe_device(bool check_budget) {
        const Settings& s = sp_.settings;
        const BenchRun b = bench_config(opt_.gpt_binary, base_cfg_, opt_.dir + "/probe", "probe", 3, s.budget_s + s.grace_s, child_env(0));
        if (!b.ok) {
            log("note: the device probe (gpt bench step) failed, MFU will not be recorded and the budget is not checked: " + b.error);
            return;
        }
        peak_tflops_ = b.raw.number("peak_tflops");
        if (!b.raw.string("device").empty()) device_ = b.raw.string("backend") + ": " + b.raw.string("device") + "; " + device_;
        if (!check_budget || s.eval_every_tokens <= 0) return;
        const double tokens_per_step = b.raw.number("tokens_per_step", double(base_cfg_.run.batch_size) * train_seq_len(base_cfg_));
        const double evals = s.budget_s / (b.median_ms / 1e3) * tokens_per_step / double(s.eval_every_tokens);
        if (evals < 3)
            bad_input(sp_.origin + ": search.budget_s " + fmt(s.budget_s) + " s allows about " + fmt(evals, 2) + " evaluation(s) of the base config (" +
                      fmt(b.median_ms) + " ms per step of " + fmt(tokens_per_step) + " tokens, an evaluation every " + std::to_string(s.eval_every_tokens) +
                      " tokens): a time to target needs at least 3; raise search.budget_s or lower search.eval_every_tokens");
    }

    void run_autotune() {
        TuneOptions t;
        t.gpt_binary = opt_.gpt_binary;
        t.cache_path = opt_.autotune_cache;
        t.work_dir = opt_.dir + "/autotune";
        t.check_steps = sp_.settings.kernel_steps;
        t.tolerance = sp_.settings.kernel_tolerance;
        t.quiet = opt_.quiet;
        const TuneResult r = autotune(sp_.base_yaml, t);
        autotune_ = r.report;
        if (r.chosen.empty()) return;
        std::vector<std::string> sets;
        for (const auto& [k, v] : r.chosen) sets.push_back(k + "=" + v);
        sp_.base_yaml = config_to_yaml(parse_config_text(sp_.base_yaml, sp_.origin + " (base)", sets));
        base_cfg_ = parse_config_text(sp_.base_yaml, sp_.origin + " (base)");
        log("autotune: base kernels " + overrides_text(r.chosen));
    }

    // ---- configs ----------------------------------------------------------

    Overrides normalized(const Overrides& ov) const {
        // Overrides equal to the base's value are dropped and the rest spelled
        // as the dimension spells them: one config, one hash.
        const auto flat = flat_config(base_cfg_);
        Overrides out;
        for (const auto& [k, v] : ov) {
            const Dimension* d = sp_.dim(k);
            std::string val = v;
            if (d)
                if (auto c = d->canonical(v)) val = *c;
            auto it = flat.find(k);
            bool same = it != flat.end() && it->second.scalar_text() == val;
            if (!same && it != flat.end() && it->second.is_number()) {
                try {
                    same = std::stod(val) == it->second.num;
                } catch (...) {
                }
            }
            if (!same) out[k] = val;
        }
        return out;
    }

    std::string config_hash(const Overrides& ov) const {
        try {
            Config c = candidate_config(sp_, ov);
            c.run.out_dir = "";
            c.run.seed = 0;
            return fnv_hex(config_to_yaml(c));
        } catch (const Error&) {
            return fnv_hex("invalid:" + overrides_text(ov));
        }
    }

    Overrides trial_config(int id) const {
        auto it = st_.plans.find(id);
        if (it != st_.plans.end()) return it->second.config;
        const Json* d = st_.decision(id);
        return d && d->find("config") ? overrides_from(*d->find("config")) : Overrides{};
    }

    // The keys whose values differ between two configs (base + overrides), with cfg's values.
    Overrides config_diff(const Overrides& cfg, const Overrides& from) const {
        const auto base_flat = flat_config(base_cfg_);
        auto value_in = [&](const Overrides& ov, const std::string& k) {
            auto it = ov.find(k);
            if (it != ov.end()) return it->second;
            auto b = base_flat.find(k);
            return b == base_flat.end() ? std::string() : b->second.scalar_text();
        };
        std::set<std::string> keys;
        for (const auto& [k, v] : cfg) keys.insert(k);
        for (const auto& [k, v] : from) keys.insert(k);
        Overrides d;
        for (const auto& k : keys)
            if (value_in(cfg, k) != value_in(from, k)) d[k] = value_in(cfg, k);
        return d;
    }

    // A new trial: its diff, hash, rule; nullopt after journaling a decision
    // when it is invalid or a duplicate (it never runs).
    std::optional<TrialPlan> new_trial(const std::string& role, int parent, const Overrides& parent_cfg, const Overrides& cfg, const std::string& note,
                                       int bracket = -1, double budget_s = 0) {
        TrialPlan p;
        p.id = st_.next_trial;
        p.role = role;
        p.parent = parent;
        p.incumbent = st_.incumbent_id;
        p.incumbent_config = st_.incumbent;
        p.config = normalized(cfg);
        p.budget_s = budget_s > 0 ? budget_s : sp_.settings.budget_s;
        if (bracket >= 0) {
            p.bracket = bracket;
            p.rung = 0;
        }
        p.note = note;
        p.hash = config_hash(p.config);
        p.diff = config_diff(p.config, parent_cfg);
        std::string invalid;
        try {
            const Config c = candidate_config(sp_, p.config);
            if (auto v = violated_constraint(sp_, c)) invalid = "violates the constraint '" + *v + "'";
        } catch (const Error& e) {
            invalid = e.what();
        }
        // Kernel-only changes of same-arithmetic families are judged without
        // retraining; cost-neutral changes by tokens to target (judging_rule).
        // The change that counts is against the incumbent, which the pairs run
        // beside: an evolution child's parent may be another trial.
        p.rule = role == "rung" ? "halving" : judging_rule(sp_.settings, config_diff(p.config, st_.incumbent));
        if (!invalid.empty()) {
            decide_without_runs(p, "invalid", "validation", invalid);
            return std::nullopt;
        }
        if (st_.tried.count(p.hash)) {
            const int same = st_.trial_of_hash.count(p.hash) ? st_.trial_of_hash.at(p.hash) : -1;
            const Json* prev = st_.decision(same);
            const std::string verdict = prev ? prev->string("status") : std::string("in progress");
            decide_without_runs(p, "duplicate", "validation",
                                "the same config as trial " + std::to_string(same) + " (" + verdict +
                                    "): not measured again (a comparison is only valid at the time it was made)");
            log("trial " + std::to_string(p.id) + " " + overrides_text(p.diff) + ": already measured as trial " + std::to_string(same) + " (" + verdict +
                "), not run again");
            return std::nullopt;
        }
        journal_->append(p.to_json());
        st_.apply(p.to_json());
        return p;
    }

    void decide_without_runs(const TrialPlan& p, const std::string& status, const std::string& rule, const std::string& reason) {
        Json d = decision_record(p);
        d.set("status", status);
        d.set("rule", rule);
        d.set("reason", reason);
        journal_->append(d);
        st_.apply(d);
        log(decision_line(d));
    }

    int trials_left() const { return sp_.settings.max_trials - std::max(0, st_.next_trial - 1); }

    // ---- planning ---------------------------------------------------------

    std::vector<RunPlan> plan() {
        const Settings& s = sp_.settings;
        std::vector<RunPlan> out;
        if (!st_.plans.count(0)) {
            TrialPlan b;
            b.id = 0;
            b.role = "baseline";
            b.rule = "baseline";
            b.budget_s = s.budget_s;
            b.note = "the base config, " + std::to_string(s.baseline_repeats) + " runs with different seeds";
            b.hash = config_hash({});
            journal_->append(b.to_json());
            st_.apply(b.to_json());
        }
        if (!st_.baseline_done) {
            const int done = int(st_.runs_of(0).size());
            for (int i = done; i < s.baseline_repeats; i++) {
                RunPlan r = new_run(0, -1, "baseline", "train", {}, base_cfg_.run.seed + i, s.budget_s);
                r.group = parallel_ >= 2 ? (i - done) / parallel_ : i - done;
                out.push_back(r);
            }
            return out;
        }
        // Open trials go on; new ones fill the free slots.
        std::vector<int> open;
        for (;;) {
            // Propose until the free slots hold open trials; an invalid or
            // duplicate proposal is decided at once, so ask again (max_trials bounds it).
            open = st_.open_trials();
            const bool rungs_open = std::any_of(open.begin(), open.end(), [&](int id) { return st_.plans.at(id).role == "rung"; });
            if (rungs_open || int(open.size()) >= pair_slots() || trials_left() <= 0) break;
            const int before = st_.next_trial;
            propose(pair_slots() - int(open.size()));
            if (st_.next_trial == before) break;  // the strategy has nothing new
        }
        if (open.empty()) {
            if (trials_left() <= 0) log("stopping: search.max_trials (" + std::to_string(s.max_trials) + ") reached");
            else log("stopping: the strategy has no new candidate");
            return out;
        }
        int group = 0, in_group = 0;
        auto add_group = [&](std::vector<RunPlan> runs) {
            // Serial: each run alone. Parallel: the runs of a pair side by side
            // in one group (never split), up to `parallel` runs at once.
            if (parallel_ >= 2 && in_group + int(runs.size()) > parallel_) {
                group++;
                in_group = 0;
            }
            for (auto& r : runs) {
                if (parallel_ < 2) r.group = group++;
                else r.group = group, in_group++;
                out.push_back(r);
            }
        };
        int pairs_planned = 0;
        for (int id : open) {
            const TrialPlan& t = st_.plans.at(id);
            if (t.role == "rung") {
                if (st_.runs_of(id).empty()) add_group({new_run(id, -1, "rung", "train", t.config, base_cfg_.run.seed, t.budget_s)});
                continue;
            }
            if (pairs_planned >= pair_slots()) break;
            pairs_planned++;
            const int n = complete_pairs(id);
            const int seed_index = st_.next_pair_seed;
            const int seed = base_cfg_.run.seed + 1000 + seed_index;
            const std::string kind = t.rule == "kernel" ? "kernel" : "train";
            RunPlan inc = new_run(id, n, "incumbent", kind, t.incumbent_config, seed, t.budget_s);
            RunPlan cand = new_run(id, n, "candidate", kind, t.config, seed, t.budget_s);
            inc.seed_index = cand.seed_index = seed_index;
            st_.next_pair_seed++;
            // The order alternates from pair to pair, so a steady drift of the machine cancels.
            if (n % 2 == 0) add_group({inc, cand});
            else add_group({cand, inc});
        }
        return out;
    }

    RunPlan new_run(int trial, int pair, const std::string& role, const std::string& kind, const Overrides& cfg, int seed, double budget) {
        RunPlan r;
        r.id = st_.next_run++;
        r.trial = trial;
        r.pair = pair;
        r.role = role;
        r.kind = kind;
        r.config = cfg;
        r.seed = seed;
        r.budget_s = budget;
        return r;
    }

    // Pairs of a trial whose two runs have finished.
    int complete_pairs(int trial) const {
        std::map<int, int> n;
        for (const Json* r : st_.runs_of(trial))
            if (r->number("pair", -1) >= 0) n[record_int(*r, "pair")]++;
        int c = 0;
        for (const auto& [p, k] : n) c += k == 2;
        return c;
    }

    // Whether a candidate is a config gpt train accepts and meets every constraint.
    bool passes_checks(const Overrides& ov) const {
        try {
            return !violated_constraint(sp_, candidate_config(sp_, ov)).has_value();
        } catch (const Error&) {
            return false;
        }
    }

    void propose(int want) {
        const Settings& s = sp_.settings;
        want = std::min(want, trials_left());
        if (want <= 0) return;
        Rng rng(uint64_t(s.seed) * 1000003ull + uint64_t(st_.next_trial));
        const Config icfg = candidate_config(sp_, st_.incumbent);
        int made = 0;
        // Up to 200 draws for an untried config that passes the checks; the
        // last draw is journaled (invalid) so that a strategy cannot loop.
        auto fresh = [&](auto&& gen, const std::string& role, int parent, const Overrides& parent_cfg, const std::string& note) -> bool {
            for (int attempt = 0; attempt < 200; attempt++) {
                const Overrides cand = gen();
                const Overrides norm = normalized(cand);
                const std::string h = config_hash(norm);
                if (st_.tried.count(h) && attempt < 199) continue;
                if (!passes_checks(norm) && attempt < 199) continue;
                if (st_.tried.count(h)) return false;  // 200 draws, all tried: nothing new
                if (new_trial(role, parent, parent_cfg, cand, note)) made++;
                return true;
            }
            return false;
        };
        if (s.strategy == "hill_climb") {
            for (int i = 0; i < want; i++)
                if (!fresh([&] { return mutate(sp_, st_.incumbent, icfg, s.mutations, rng); }, "candidate", st_.incumbent_id, st_.incumbent,
                           "mutation of the incumbent (trial " + std::to_string(st_.incumbent_id) + ")"))
                    break;
        } else if (s.strategy == "random") {
            for (int i = 0; i < want; i++)
                if (!fresh([&] { return sample_random(sp_, rng); }, "candidate", st_.incumbent_id, st_.incumbent, "random sample")) break;
        } else if (s.strategy == "evolution") {
            // The population: the incumbent and the best finished candidates (geometric-mean score of their runs).
            std::vector<std::pair<double, int>> pop;
            for (int id : st_.decision_order) {
                const Json& d = st_.decisions.at(id);
                const Json* m = d.find("metrics");
                if (!m || !std::isfinite(m->number("score", NAN)) || d.string("rule") == "kernel") continue;
                if (d.string("status") == "keep" || d.string("status") == "discard" || d.string("role") == "baseline") pop.push_back({m->number("score"), id});
            }
            std::sort(pop.begin(), pop.end());
            if (pop.size() > 5) pop.resize(5);
            for (int i = 0; i < want && !pop.empty(); i++) {
                auto pick = [&] {
                    const auto& a = pop[rng() % pop.size()];
                    const auto& b = pop[rng() % pop.size()];
                    return a.first <= b.first ? a.second : b.second;
                };
                const int parent = pick();
                const Overrides pc = trial_config(parent);
                if (!fresh(
                        [&] {
                            Overrides c = pc;
                            if (pop.size() > 1 && rng() % 10 < 3) c = crossover(sp_, c, trial_config(pick()), rng);
                            return mutate(sp_, c, candidate_config(sp_, c), s.mutations, rng);
                        },
                        "candidate", parent, pc, "mutation of trial " + std::to_string(parent)))
                    break;
            }
        } else if (s.strategy == "halving") {
            plan_halving_bracket(rng);
        } else if (s.strategy == "external") {
            propose_external(want);
        }
        (void)made;
    }

    // A new successive-halving bracket: halving.candidates rung-0 trials (the
    // first a mutation of the incumbent, the rest random) at budget / eta^(rungs-1).
    void plan_halving_bracket(Rng& rng) {
        const Settings& s = sp_.settings;
        int bracket = 0;
        for (const auto& [id, p] : st_.plans) bracket = std::max(bracket, p.bracket + 1);
        const int n = std::min(s.halving_candidates, trials_left());
        std::set<std::string> planned;
        for (int i = 0; i < n; i++) {
            // Up to 200 draws for an untried config that passes the checks, as
            // fresh() does; the last one is planned even when invalid, so that
            // the journal says why the bracket is short.
            for (int attempt = 0; attempt < 200; attempt++) {
                const Overrides c = i == 0 ? mutate(sp_, st_.incumbent, candidate_config(sp_, st_.incumbent), s.mutations, rng) : sample_random(sp_, rng);
                const std::string h = config_hash(normalized(c));
                if (st_.tried.count(h) || planned.count(h)) continue;
                if (!passes_checks(normalized(c)) && attempt < 199) continue;
                planned.insert(h);
                const bool last = s.halving_rungs == 1;
                new_trial(last ? "candidate" : "rung", st_.incumbent_id, st_.incumbent, c, "bracket " + std::to_string(bracket) + " sample", bracket,
                          rung_budget(0));
                break;
            }
        }
    }

    double rung_budget(int r) const {
        const Settings& s = sp_.settings;
        return s.budget_s / std::pow(double(s.halving_eta), double(s.halving_rungs - 1 - r));
    }

    void propose_external(int want) {
        const Settings& s = sp_.settings;
        const int batch_no = int(st_.batches.size());
        Json req = Json::object();
        req.set("protocol", 2);
        req.set("want", want);
        req.set("space", sp_.to_json());
        Json base = Json::object();
        for (const auto& [k, v] : flat_config(base_cfg_)) base.set(k, v);
        req.set("base_config", base);
        Json inc = Json::object();
        inc.set("id", st_.incumbent_id);
        inc.set("config", overrides_json(st_.incumbent));
        if (const Json* d = st_.decision(st_.incumbent_id))
            if (const Json* m = d->find("metrics")) inc.set("score", m->number("score", NAN));
        req.set("incumbent", inc);
        Json tr = Json::array();
        for (int id : st_.decision_order) tr.push(st_.decisions.at(id));
        req.set("trials", tr);
        const std::string command = st_.proposer.empty() ? s.proposer : st_.proposer;
        const Json answer = run_proposer(command, req, opt_.dir + "/proposer", "batch" + std::to_string(batch_no), std::max(60.0, s.grace_s));
        if (answer.boolean("stop")) return;
        const Json* cands = answer.find("candidates");
        if (!cands || !cands->is_array()) run_failed("the proposer's answer has no \"candidates\" list (see " + opt_.dir + "/proposer)");
        if (int(cands->arr.size()) > want)
            log("the proposer answered " + std::to_string(cands->arr.size()) + " candidates where " + std::to_string(want) + " were wanted: the first " +
                std::to_string(want) + " are used, the rest ignored (" + opt_.dir + "/proposer/batch" + std::to_string(batch_no) + ".answer.json)");
        int used = 0;
        for (const auto& c : cands->arr) {
            if (used >= want || trials_left() <= 0) break;
            used++;
            Overrides cfg = st_.incumbent;
            std::string bad;
            const Json* set = c.find("set");
            if (!set || !set->is_object()) bad = "a candidate needs \"set\": {key: value, ...}";
            else
                for (const auto& [k, v] : set->obj) {
                    const Dimension* d = sp_.dim(k);
                    std::string val = v.scalar_text();
                    const auto canon = d ? d->canonical(val) : std::nullopt;
                    if (canon) val = *canon;  // choices compared by value: 0, 0.0 and "0.0" are one
                    if (!d) bad = "key '" + k + "' is not a dimension of the space" + (protected_reason(k).empty() ? "" : ": " + protected_reason(k));
                    else if (d->kind == Dimension::Kind::Choice && !canon) bad = k + "=" + val + " is not one of its choices";
                    else if (d->kind != Dimension::Kind::Choice) {
                        double x = NAN;
                        try {
                            x = std::stod(val);
                        } catch (...) {
                        }
                        if (!(x >= d->lo && x <= d->hi)) bad = k + "=" + val + " is outside [" + fmt(d->lo) + ", " + fmt(d->hi) + "]";
                    }
                    cfg[k] = val;
                }
            if (!bad.empty()) {
                TrialPlan p;
                if (set && set->is_object())
                    for (const auto& [k, v] : set->obj) p.diff[k] = v.scalar_text();
                p.id = st_.next_trial;
                p.role = "candidate";
                p.parent = st_.incumbent_id;
                p.incumbent = st_.incumbent_id;
                p.config = cfg;
                p.budget_s = s.budget_s;
                p.note = "proposer: " + c.string("note");
                p.hash = fnv_hex("invalid:" + overrides_text(cfg));
                decide_without_runs(p, "invalid", "validation", bad);
                continue;
            }
            new_trial("candidate", st_.incumbent_id, st_.incumbent, cfg, "proposer: " + c.string("note"));
        }
    }

    // ---- running ----------------------------------------------------------

    std::map<std::string, std::string> child_env(int slot) const {
        std::map<std::string, std::string> env;
        if (backend_ != "cuda") return env;
        // Slot i gets the i-th group of ranks_per_trial devices this process may
        // use (of CUDA_VISIBLE_DEVICES when it is set).
        std::vector<std::string> visible;
        if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES"); v && *v) {
            std::stringstream ss(v);
            std::string d;
            while (std::getline(ss, d, ',')) visible.push_back(d);
        }
        const int r = sp_.settings.ranks_per_trial;
        std::string devices;
        for (int k = 0; k < r; k++) {
            const size_t i = size_t(slot) * size_t(r) + size_t(k);
            if (k) devices += ',';
            devices += i < visible.size() ? visible[i] : std::to_string(i);
        }
        env["CUDA_VISIBLE_DEVICES"] = devices;
        return env;
    }

    void run_batch(const std::vector<RunPlan>& batch) {
        std::map<int, std::vector<RunPlan>> groups;
        for (const auto& r : batch) groups[r.group].push_back(r);
        for (const auto& group : groups) {
            // The runs of a group start together, each in its own slot. (Not a
            // structured binding: clang before 16 cannot capture one.)
            const std::vector<RunPlan>& runs = group.second;
            std::vector<std::thread> threads;
            for (size_t slot = 0; slot < runs.size(); slot++)
                threads.emplace_back([&, slot] {
                    const RunPlan& r = runs[slot];
                    Json rec;
                    try {
                        rec = execute(r, int(slot));
                    } catch (const std::exception& e) {
                        // A run that cannot even be set up (a full disk) ends that run only.
                        rec = run_record(r, int(slot));
                        rec.set("status", "crash");
                        rec.set("reason", std::string("could not run: ") + e.what());
                    }
                    std::lock_guard<std::mutex> lock(mu_);
                    journal_->append(rec);
                    st_.apply(rec);
                    log(run_line(rec));
                });
            for (auto& t : threads) t.join();
        }
    }

    Json run_record(const RunPlan& r, int slot) const {
        Json j = Json::object();
        j.set("type", "run");
        j.set("id", r.id);
        j.set("trial", r.trial);
        j.set("pair", r.pair);
        j.set("role", r.role);
        j.set("kind", r.kind);
        j.set("config", overrides_json(r.config));
        j.set("seed", r.seed);
        j.set("budget_s", r.budget_s);
        j.set("batch", int(st_.batches.size()) - 1);
        j.set("group", r.group);
        j.set("slot", slot);
        j.set("started_at", now_iso());
        j.set("load_average", load_average());
        j.set("status", "");
        return j;
    }

    Json execute(const RunPlan& r, int slot) {
        Json rec = run_record(r, slot);
        const Settings& s = sp_.settings;
        char name[32];
        std::snprintf(name, sizeof name, "runs/%05d", r.id);
        const std::string dir = opt_.dir + "/" + name;
        fs::remove_all(dir);  // a run in flight at a kill starts over
        fs::create_directories(dir);
        rec.set("dir", std::string(name));
        Config cfg = candidate_config(sp_, r.config);
        cfg.run.seed = r.seed;
        rec.set("kernels", kernels_of(cfg));
        const auto env = child_env(slot);
        Json m = Json::object();
        if (r.kind == "kernel") return execute_kernel(rec, cfg, dir, env);
        cfg.run.out_dir = dir + "/run";
        cfg.run.checkpoint_every = -1;  // runs are judged by their log; weights would fill the disk
        cfg.run.budget_s = r.budget_s;
        cfg.run.log_every = 1;          // every step's time: the median clock and the pruning read them
        cfg.run.sample_every = 0;       // samples are not part of the measurement
        cfg.run.target_val_loss = s.objective == "time_to_target" ? s.target_val_loss : 0;
        write_file_atomic(dir + "/config.yaml", config_to_yaml(cfg));
        ChildSpec spec;
        spec.argv = {opt_.gpt_binary, "train", "-c", dir + "/config.yaml", "--quiet"};
        if (s.ranks_per_trial > 1)  // a data-parallel run: gpt launch starts the ranks (mpirun underneath)
            spec.argv.insert(spec.argv.begin() + 1, {"launch", "-n", std::to_string(s.ranks_per_trial), "--"});
        spec.env = env;
        spec.stdout_path = dir + "/stdout.txt";
        spec.stderr_path = dir + "/stderr.txt";
        spec.kill_after_s = r.budget_s + s.grace_s;
        Json prune_info;
        if (r.role == "candidate" && s.prune && s.objective == "time_to_target" && st_.plans.count(r.trial) &&
            (st_.plans.at(r.trial).rule == "paired" || st_.plans.at(r.trial).rule == "tokens"))
            spec.stop_when = pruner(r, cfg.run.out_dir + "/log.jsonl", prune_info);
        const ChildResult cr = run_child(spec);
        m.set("wall_s", cr.wall_s);
        m.set("peak_rss_mb", cr.peak_rss_mb);
        fs::remove_all(cfg.run.out_dir + "/checkpoints");  // one written at an interruption
        const std::string log_path = cfg.run.out_dir + "/log.jsonl";
        const Curve c = read_curve(log_path, cfg.run.target_metric, cfg.run.step_clock == "cpu");
        add_curve(m, c);
        if (cr.stopped) {
            if (!c.step_s.empty() && c.tokens_per_step > 0) m.set("s_per_token", median_of(c.step_s) / c.tokens_per_step);
            rec.set("status", "pruned");
            rec.set("reason", prune_info.string("reason"));
            for (const auto& [k, v] : prune_info.obj)
                if (k != "reason") m.set(k, v);
            rec.set("metrics", m);
            return rec;
        }
        const auto summary = last_record(log_path, "summary");
        if (!cr.ok() || !summary) {
            rec.set("status", cr.timed_out ? "timeout" : "crash");
            rec.set("reason", cr.ok() ? std::string("exited 0 without a summary record in its log") : cr.describe());
            rec.set("stderr_tail", cr.stderr_tail);
            rec.set("metrics", m);
            return rec;
        }
        const Json& sm = *summary;
        for (const char* k : {"steps", "tokens", "tokens_per_step", "median_step_ms", "train_time_s", "wall_train_time_s", "eval_time_s",
                              "startup_time_s", "final_val_loss", "final_train_loss", "loss_floor", "peak_memory_bytes", "tokens_per_s"})
            if (const Json* v = sm.find(k)) m.set(k, *v);
        m.set("stop_reason", sm.string("stop_reason"));
        // The trainer states MFU against its device's peak; older binaries did not, then the probe's peak is used.
        const double tps = sm.number("tokens_per_s"), fpt = sm.number("flops_per_token"), mfu = sm.number("mfu", NAN);
        if (std::isfinite(mfu)) m.set("mfu", mfu);
        else if (peak_tflops_ > 0 && fpt > 0) m.set("mfu", tps * fpt / 1e12 / peak_tflops_);
        // Time to target = tokens to target x seconds per token (the median step
        // time): the first part moves with what is learned, the second with
        // the speed of a step.
        const double tps_step = sm.number("tokens_per_step", c.tokens_per_step);
        const double spt = sm.number("median_step_ms", NAN) / 1e3 / tps_step;
        m.set("s_per_token", spt);
        m.set("end_time_s", sm.number("tokens") * spt);
        if (s.objective == "time_to_target") {
            const double ttt = tokens_to(c.tokens, c.metric, s.target_val_loss);
            m.set("hit", std::isfinite(ttt));
            m.set("tokens_to_target", ttt);
            m.set("time_to_target_s", ttt * spt);
            m.set("score", ttt * spt);
        } else {
            m.set("score", sm.number("final_val_loss", NAN));
        }
        rec.set("metrics", m);
        if (!std::isfinite(spt) || !sm.find("final_val_loss") || sm.find("final_val_loss")->is_null()) {
            rec.set("status", "crash");
            rec.set("reason", "no step time or validation loss in the summary");
            return rec;
        }
        rec.set("status", "ok");
        return rec;
    }

    // A kernel run: kernel_steps + kernel_timed_steps training steps from the
    // seed, no budget, no target: the first kernel_steps losses (which the
    // reference kernels must match) and the median step time on the step clock.
    Json execute_kernel(Json& rec, Config cfg, const std::string& dir, const std::map<std::string, std::string>& env) {
        const Settings& s = sp_.settings;
        Json m = Json::object();
        cfg.run.out_dir = dir + "/run";
        cfg.run.max_steps = s.kernel_steps + s.kernel_timed_steps;
        if (cfg.schedule.steps == 0) cfg.schedule.steps = std::max(cfg.schedule.warmup_steps + 1000, cfg.run.max_steps);
        cfg.run.budget_s = 0;
        cfg.run.target_val_loss = 0;
        cfg.run.val_every = 0;
        cfg.run.val_every_tokens = 0;
        cfg.run.log_every = 1;
        cfg.run.checkpoint_every = -1;
        cfg.run.sample_every = 0;
        write_file_atomic(dir + "/config.yaml", config_to_yaml(cfg));
        ChildSpec spec;
        spec.argv = {opt_.gpt_binary, "train", "-c", dir + "/config.yaml", "--quiet"};
        if (s.ranks_per_trial > 1) spec.argv.insert(spec.argv.begin() + 1, {"launch", "-n", std::to_string(s.ranks_per_trial), "--"});
        spec.env = env;
        spec.stdout_path = dir + "/stdout.txt";
        spec.stderr_path = dir + "/stderr.txt";
        spec.kill_after_s = s.budget_s + s.grace_s;
        const ChildResult cr = run_child(spec);
        m.set("wall_s", cr.wall_s);
        m.set("peak_rss_mb", cr.peak_rss_mb);
        const std::string log_path = cfg.run.out_dir + "/log.jsonl";
        const auto summary = last_record(log_path, "summary");
        if (!cr.ok() || !summary) {
            rec.set("status", cr.timed_out ? "timeout" : "crash");
            rec.set("reason", cr.ok() ? std::string("exited 0 without a summary record in its log") : cr.describe());
            rec.set("stderr_tail", cr.stderr_tail);
            rec.set("metrics", m);
            return rec;
        }
        Json losses = Json::array();
        std::ifstream f(log_path);
        std::string line;
        while (std::getline(f, line) && int(losses.arr.size()) < s.kernel_steps)
            if (line.find("\"type\":\"step\"") != std::string::npos) losses.push(parse_json(line).number("loss", NAN));
        m.set("losses", losses);
        m.set("step_ms", summary->number("median_step_ms", NAN));
        m.set("tokens_per_s", summary->number("tokens_per_s", NAN));
        if (std::isfinite(summary->number("mfu", NAN))) m.set("mfu", summary->number("mfu"));
        rec.set("metrics", m);
        rec.set("status", std::isfinite(m.number("step_ms", NAN)) ? "ok" : "crash");
        if (rec.string("status") == "crash") rec.set("reason", "no median step time in the summary");
        return rec;
    }

    Json failed(Json& rec, Json& m, const std::string& why) {
        rec.set("status", "crash");
        rec.set("reason", why);
        rec.set("metrics", m);
        return rec;
    }

    static void add_curve(Json& m, const Curve& c) {
        Json pts = Json::array();
        for (size_t k = 0; k < c.tokens.size(); k++) {
            Json p = Json::array();
            p.push(c.tokens[k]);
            p.push(c.metric[k]);
            pts.push(p);
        }
        m.set("curve", pts);
    }

    Json kernels_of(const Config& c) const {
        Json k = Json::object();
        const auto flat = flat_config(c);
        for (const auto& f : kernel_families()) {
            if (std::find(f.backends.begin(), f.backends.end(), backend_) == f.backends.end()) continue;
            for (const auto& [key, v] : flat)
                if (key == "kernels." + f.name || key.rfind("kernels." + f.name + ".", 0) == 0) k.set(key.substr(8), v);
        }
        return k;
    }

    // ---- pruning ----------------------------------------------------------

    // The incumbent's finished runs of the trial's incumbent config, as
    // curves on the median clock: this trial's own incumbent runs (the same
    // seed), runs of the incumbent's own trial, and other trials' incumbent runs.
    // Whether run record r ran trial `trial`'s config: that trial's own runs
    // (its candidate runs, or the baseline's), or the incumbent runs of any
    // trial measured against it.
    bool ran_config_of(const Json& r, int trial) const {
        const int rt = record_int(r, "trial");
        return (rt == trial && (r.string("role") == "candidate" || r.string("role") == "baseline")) ||
               (r.string("role") == "incumbent" && st_.plans.count(rt) && st_.plans.at(rt).incumbent == trial);
    }

    // The incumbent's curves for the pruner, on the axis its trial is judged
    // on: seconds on the step clock, or tokens (the tokens rule).
    std::vector<Reference> references(int trial, bool on_tokens) const {
        const TrialPlan& t = st_.plans.at(trial);
        std::vector<Reference> out;
        for (const auto& [id, r] : st_.runs) {
            if (r.string("status") != "ok" || r.string("kind") != "train") continue;
            if (!ran_config_of(r, t.incumbent)) continue;
            const Json* m = r.find("metrics");
            const double spt = on_tokens ? 1.0 : m->number("s_per_token", NAN);
            if (!std::isfinite(spt)) continue;
            Reference ref;
            for (const auto& p : m->find("curve")->arr) {
                ref.time.push_back(p.arr[0].num * spt);
                ref.metric.push_back(p.arr[1].num);
            }
            ref.time_to_target = m->number(on_tokens ? "tokens_to_target" : "time_to_target_s", NAN);
            out.push_back(ref);
        }
        return out;
    }

    // The stop rule for a candidate's run: at each new evaluation (tokens n,
    // loss L; its seconds per token so far from the median of its step times,
    // so its time is t = n x spt), find when the incumbent's runs reached L:
    // t_ref(L) (their median). Once t is past the incumbent's time to target,
    // a candidate still behind by a ratio t / t_ref(L) above 1 + max(0.5, 3 x
    // the incumbent's relative spread) at two evaluations in a row is
    // stopped: it would need to come from that far behind to finish min_gain
    // ahead. Only hopeless runs are stopped; the paired rule judges the rest.
    // Under the tokens rule the same comparison runs on tokens (t = n).
    std::function<bool()> pruner(const RunPlan& r, const std::string& log_path, Json& info) {
        std::vector<Reference> refs;
        bool on_tokens = false;
        {
            std::lock_guard<std::mutex> lock(mu_);
            on_tokens = st_.plans.at(r.trial).rule == "tokens";
            refs = references(r.trial, on_tokens);
        }
        std::vector<double> tts;
        for (const auto& ref : refs)
            if (std::isfinite(ref.time_to_target)) tts.push_back(ref.time_to_target);
        if (tts.empty()) return {};
        const double ref_tt = median_of(tts);
        const double spread = std::isfinite(rel_sd(tts)) ? rel_sd(tts) : 0.0;
        const double limit = 1 + std::max(0.5, 3 * spread);
        const std::string metric = base_cfg_.run.target_metric;
        const double budget = r.budget_s, target = sp_.settings.target_val_loss;
        auto follow = std::make_shared<LogFollower>();
        follow->path = log_path;
        follow->metric = metric;
        follow->cpu_clock = base_cfg_.run.step_clock == "cpu";
        auto behind_before = std::make_shared<double>(0.0);
        return [=, &info]() {
            if (!follow->update()) return false;  // decisions only at a new evaluation
            const Curve& c = follow->curve;
            if (c.tokens.size() < 2 || c.step_s.empty() || c.tokens_per_step <= 0) return false;
            const double spt = median_of(c.step_s) / c.tokens_per_step;
            const double seconds = c.tokens.back() * spt, level = c.metric.back();
            const double t = on_tokens ? c.tokens.back() : seconds;
            if (level <= target) return false;  // it has reached the target: the run stops itself
            std::vector<double> at;
            for (const auto& ref : refs) {
                const double x = time_to_level(ref, level);
                at.push_back(std::isfinite(x) ? x : INFINITY);  // a reference that never got this low: the candidate is ahead of it
            }
            const double ref_t = median_of(at);
            const double behind = ref_t > 0 ? t / ref_t : INFINITY;
            const double before = *behind_before;
            *behind_before = behind;
            if (t < ref_tt || !(behind > limit) || !(before > limit)) return false;
            // The incumbent's time to target in seconds: under the tokens rule, at this run's cost per token.
            const double ref_tt_s = on_tokens ? ref_tt * spt : ref_tt;
            info = Json::object();
            info.set("pruned_at_s", seconds);
            info.set("behind", std::isfinite(behind) ? behind : 1e9);
            // What running on would have cost: to the target at the rate it was behind, at most the budget.
            info.set("saved_s", std::max(0.0, std::min(budget, std::isfinite(behind) ? behind * ref_tt_s : budget) - seconds));
            const std::string where =
                on_tokens ? fmt(c.tokens.back(), 6) + " tokens, past the incumbent's tokens to target " + fmt(ref_tt, 6)
                          : fmt(seconds, 3) + " s of training (step clock), past the incumbent's time to target " + fmt(ref_tt, 3) + " s";
            info.set("reason", "pruned at " + where + ": val loss " + fmt(level) + ", which the incumbent reached at " +
                                   (on_tokens ? fmt(ref_t, 6) + " tokens" : fmt(ref_t, 3) + " s") + ": behind by " +
                                   (std::isfinite(behind) ? fmt(behind, 3) + "x" : std::string("more than any ratio")) + " > " + fmt(limit, 3) +
                                   "x (1 + max(0.5, 3 x its spread " + pct(spread) + ")) at two evaluations in a row");
            return true;
        };
    }

    // ---- judging ----------------------------------------------------------

    void judge_open() {
        if (!st_.baseline_done) {
            if (st_.plans.count(0) && int(st_.runs_of(0).size()) >= sp_.settings.baseline_repeats) decide_baseline();
            return;
        }
        for (int id : st_.open_trials()) {
            const TrialPlan t = st_.plans.at(id);
            if (t.role == "rung") continue;
            judge_paired(t);
        }
        judge_rungs();
    }

    Json decision_record(const TrialPlan& t) const {
        Json d = Json::object();
        d.set("type", "trial");
        d.set("id", t.id);
        d.set("role", t.role);
        d.set("parent", t.parent);
        d.set("incumbent", t.incumbent);
        d.set("config", overrides_json(t.config));
        d.set("diff", overrides_json(t.diff));
        d.set("config_hash", t.hash);
        d.set("budget_s", t.budget_s);
        if (t.bracket >= 0) {
            d.set("bracket", t.bracket);
            d.set("rung", t.rung);
        }
        if (!t.note.empty()) d.set("note", t.note);
        d.set("decided_at", now_iso());
        return d;
    }

    // The candidate side's summary for the decision record: geometric-mean
    // time to target over its hits, mean loss, largest memory, total cost.
    Json side_metrics(const std::vector<const Json*>& runs) const {
        std::vector<double> tt, tok, spt, loss;
        double peak = 0, wall = 0, train = 0;
        bool all_hit = !runs.empty();
        for (const Json* r : runs) {
            const Json* m = r->find("metrics");
            if (!m) continue;
            peak = std::max(peak, m->number("peak_rss_mb"));
            wall += m->number("wall_s");
            train += m->number("train_time_s");
            if (std::isfinite(m->number("final_val_loss", NAN))) loss.push_back(m->number("final_val_loss"));
            if (sp_.settings.objective == "time_to_target") {
                if (m->boolean("hit")) {
                    tt.push_back(m->number("time_to_target_s"));
                    tok.push_back(m->number("tokens_to_target"));
                    spt.push_back(m->number("s_per_token"));
                } else {
                    all_hit = false;
                }
            }
        }
        Json out = Json::object();
        double mean_loss = NAN;
        if (!loss.empty()) {
            mean_loss = 0;
            for (double x : loss) mean_loss += x / double(loss.size());
        }
        if (sp_.settings.objective == "time_to_target") {
            out.set("hit", all_hit);
            out.set("time_to_target_s", geomean(tt));
            out.set("tokens_to_target", geomean(tok));
            out.set("s_per_token", geomean(spt));
            out.set("score", all_hit ? geomean(tt) : NAN);
        } else {
            out.set("score", mean_loss);
        }
        out.set("final_val_loss", mean_loss);
        out.set("peak_rss_mb", peak);
        out.set("wall_s", wall);
        out.set("train_time_s", train);
        out.set("runs", int(runs.size()));
        return out;
    }

    void decide(const TrialPlan& t, const std::string& status, const std::string& rule, const std::string& reason, Json stats, Json metrics) {
        Json d = decision_record(t);
        d.set("status", status);
        d.set("rule", rule);
        d.set("reason", reason);
        if (!stats.is_null()) d.set("stats", stats);
        if (!metrics.is_null()) d.set("metrics", metrics);
        Json ids = Json::array();
        for (const Json* r : st_.runs_of(t.id)) ids.push(record_int(*r, "id"));
        d.set("runs", ids);
        journal_->append(d);
        st_.apply(d);
        log(decision_line(d));
    }

    void decide_baseline() {
        const Settings& s = sp_.settings;
        const TrialPlan& t = st_.plans.at(0);
        const auto runs = st_.runs_of(0);
        for (const Json* r : runs)
            if (r->string("status") != "ok")
                run_failed("the baseline failed, so there is nothing to compare with: run " + fmt(r->number("id")) + " " + r->string("status") + ": " +
                           r->string("reason") + (r->string("stderr_tail").empty() ? "" : "\n" + r->string("stderr_tail")));
        Json m = side_metrics(runs);
        Json stats = Json::object();
        std::vector<double> tts;
        for (const Json* r : runs)
            if (r->find("metrics")->boolean("hit")) tts.push_back(r->find("metrics")->number("time_to_target_s"));
        if (s.objective == "time_to_target" && tts.size() < runs.size()) {
            const std::string why = baseline_miss_advice(runs, int(runs.size() - tts.size()));
            decide(t, "miss", "baseline", why, stats, m);
            log("THE BASELINE MISSES THE TARGET: " + why);
            return;
        }
        std::vector<double> scores;
        for (const Json* r : runs) scores.push_back(r->find("metrics")->number("score"));
        const double cv = rel_sd(scores);
        stats.set("spread", cv);
        std::string why = std::to_string(runs.size()) + " runs with seeds " + fmt(base_cfg_.run.seed) + ".." + fmt(base_cfg_.run.seed + int(runs.size()) - 1) +
                          ": " + (s.objective == "time_to_target" ? "time to target " : "val loss ") + fmt(geomean(scores)) +
                          (s.objective == "time_to_target" ? " s" : "") + ", spread " + pct(cv) + " (sd / mean, seeds and machine together)";
        if (std::isfinite(cv)) {
            // Paired runs cancel much of this; without pairing two runs differ by sqrt(2) of it: an upper estimate.
            const double res = resolvable_gain(std::sqrt(2.0) * cv, s.min_gain, s.false_keep, s.min_pairs, s.max_pairs);
            stats.set("resolvable_gain", res);
            if (res > 2 * s.min_gain)
                why += "; noise " + pct(cv) + ": with " + std::to_string(s.max_pairs) + " pairs, gains below " + pct(res) +
                       " may not be resolved at budget " + fmt(s.budget_s) + " s (pairing cancels part of it; a longer budget or more search.max_pairs resolves more)";
        }
        if (s.objective == "time_to_target") {
            const double worst = *std::max_element(tts.begin(), tts.end());
            if (worst > 0.6 * s.budget_s)
                why += "; the slowest run needed " + pct(worst / s.budget_s) + " of the budget: candidates a little slower will miss, consider search.budget_s " +
                       fmt(std::ceil(2 * worst));
        }
        decide(t, "keep", "baseline", why, stats, m);
    }

    // Why the baseline missed, and a budget or target its own curve supports.
    std::string baseline_miss_advice(const std::vector<const Json*>& runs, int misses) const {
        const Settings& s = sp_.settings;
        double worst_end = INFINITY;  // the highest loss any run reached at the end
        double worst_half = -INFINITY;  // the loss the slowest run had at half the budget
        std::string why = "the base config missed the target " + fmt(s.target_val_loss) + " in " + std::to_string(misses) + " of " +
                          std::to_string(runs.size()) + " runs within " + fmt(s.budget_s) + " s: ranking by time to target is meaningless";
        std::vector<std::pair<double, double>> tail;  // (time, loss) of the last evaluations of the slowest run
        for (const Json* r : runs) {
            const Json* m = r->find("metrics");
            const double spt = m->number("s_per_token");
            std::vector<double> t, l;
            for (const auto& p : m->find("curve")->arr) {
                t.push_back(p.arr[0].num * spt);
                l.push_back(p.arr[1].num);
            }
            if (l.empty()) continue;
            worst_end = std::isfinite(worst_end) ? std::max(worst_end, l.back()) : l.back();
            double at_half = l.front();
            for (size_t k = 0; k < t.size(); k++)
                if (t[k] <= 0.5 * s.budget_s) at_half = l[k];
            worst_half = std::max(worst_half, at_half);
            if (!m->boolean("hit") && t.size() >= 2) tail = {{t[t.size() - 2], l[l.size() - 2]}, {t.back(), l.back()}};
        }
        if (std::isfinite(worst_half)) why += ". Suggestion: search.target_val_loss " + fmt(worst_half, 3) + " (every run reached it in half the budget)";
        if (tail.size() == 2 && tail[1].second < tail[0].second && tail[1].first > tail[0].first) {
            // The loss falls about linearly in log time near the end: extrapolate to the target.
            const double slope = (tail[1].second - tail[0].second) / std::log(tail[1].first / tail[0].first);
            const double t_needed = tail[1].first * std::exp((s.target_val_loss - tail[1].second) / slope);
            if (std::isfinite(t_needed) && t_needed < 100 * s.budget_s)
                why += ", or search.budget_s about " + fmt(std::ceil(2 * t_needed), 3) + " (twice the time its curve extrapolates to)";
        } else {
            why += "; the curve had flattened at " + fmt(worst_end) + ": the target may be out of reach of this config";
        }
        return why;
    }

    void judge_paired(const TrialPlan& t) {
        const Settings& s = sp_.settings;
        // The rule its decision records: kernel, tokens, or paired (the plan's "halving" for a last rung).
        const std::string rule = t.rule == "kernel" || t.rule == "tokens" ? t.rule : "paired";
        if (t.incumbent != st_.incumbent_id) {
            // Another trial measured at the same time was kept: this one was compared with the old incumbent only.
            decide(t, "discard", rule,
                   "superseded: the incumbent changed to trial " + std::to_string(st_.incumbent_id) + " while it was measured against trial " +
                       std::to_string(t.incumbent) + " (not compared with the new one)",
                   Json(), side_metrics({}));
            return;
        }
        std::map<int, std::pair<const Json*, const Json*>> pairs;  // pair -> (incumbent, candidate)
        for (const Json* r : st_.runs_of(t.id)) {
            auto& p = pairs[record_int(*r, "pair")];
            (r->string("role") == "incumbent" ? p.first : p.second) = r;
        }
        std::vector<double> d, a, b;
        std::vector<const Json*> cand_runs;
        std::string notes;
        int incumbent_failures = 0;
        double max_loss_diff = 0;
        for (const auto& [n, p] : pairs) {
            if (!p.first || !p.second) return;  // in flight
            const Json *inc = p.first, *cand = p.second;
            cand_runs.push_back(cand);
            const std::string cs = cand->string("status"), is = inc->string("status");
            if (cs == "pruned") {
                Json m = side_metrics(cand_runs);
                m.set("pruned_at_s", cand->find("metrics")->number("pruned_at_s"));
                m.set("saved_s", cand->find("metrics")->number("saved_s"));
                decide(t, "pruned", "prune", "pair " + std::to_string(n + 1) + ": " + cand->string("reason"), Json(), m);
                return;
            }
            if (cs != "ok") {
                decide(t, cs == "timeout" ? "timeout" : "crash", "process",
                       "run " + fmt(cand->number("id")) + ": " + cand->string("reason") +
                           (cand->string("stderr_tail").empty() ? "" : "\n" + cand->string("stderr_tail")),
                       Json(), side_metrics(cand_runs));
                return;
            }
            if (is != "ok") {
                // Not the candidate's doing: the pair does not count. An incumbent that keeps failing stops the search.
                incumbent_failures++;
                notes += "pair " + std::to_string(n + 1) + " does not count: the incumbent's run " + is + " (" + inc->string("reason") + "); ";
                if (incumbent_failures >= 2)
                    run_failed("the incumbent (trial " + std::to_string(t.incumbent) + ") failed twice while trial " + std::to_string(t.id) +
                               " was measured: " + inc->string("reason") + (inc->string("stderr_tail").empty() ? "" : "\n" + inc->string("stderr_tail")));
                continue;
            }
            const Json *im = inc->find("metrics"), *cm = cand->find("metrics");
            if (t.rule == "kernel") {
                // Same seed, same arithmetic: the first losses must match before the step times count.
                std::vector<double> li, lc;
                for (const auto& x : im->find("losses")->arr) li.push_back(x.num);
                for (const auto& x : cm->find("losses")->arr) lc.push_back(x.num);
                const double diff = max_rel_diff(lc, li);
                max_loss_diff = std::max(max_loss_diff, diff);
                if (!(diff <= s.kernel_tolerance)) {
                    Json st = Json::object();
                    st.set("max_loss_rel_diff", diff);
                    decide(t, "discard", "kernel",
                           "wrong results: the first " + std::to_string(s.kernel_steps) + " losses differ by " + fmt(diff) + " (relative) > tolerance " +
                               fmt(s.kernel_tolerance),
                           st, Json());
                    return;
                }
                d.push_back(std::log(cm->number("step_ms") / im->number("step_ms")));
                continue;
            }
            if (s.objective == "loss_at_budget") {
                d.push_back(std::log(cm->number("final_val_loss") / im->number("final_val_loss")));
                continue;
            }
            const bool ch = cm->boolean("hit"), ih = im->boolean("hit");
            if (!ch) {
                decide(t, "discard", rule,
                       "pair " + std::to_string(n + 1) + ": the candidate missed the target within the budget (val loss " + fmt(cm->number("final_val_loss")) +
                           ")" + (ih ? " where the incumbent reached it in " + fmt(im->number("time_to_target_s"), 3) + " s" : ", and so did the incumbent: raise search.budget_s"),
                       Json(), side_metrics(cand_runs));
                return;
            }
            const bool tokens = t.rule == "tokens";
            if (!ih) {
                // The incumbent ran out of budget: its time is at least its end; the ratio is an upper bound (conservative).
                notes += "pair " + std::to_string(n + 1) + ": the incumbent missed, its end " + (tokens ? "tokens count" : "time counts") + "; ";
                d.push_back(tokens ? std::log(cm->number("tokens_to_target") / im->number("tokens"))
                                   : std::log(cm->number("time_to_target_s") / im->number("end_time_s")));
                continue;
            }
            a.push_back(std::log(cm->number("tokens_to_target") / im->number("tokens_to_target")));
            b.push_back(std::log(cm->number("s_per_token") / im->number("s_per_token")));
            // time = tokens x seconds per token. Under the tokens rule the keys
            // cannot change the seconds per token, so its measured ratio is the
            // machine's noise (or an attack on the clock): the pair counts the
            // tokens alone, which is the time ratio at an equal cost per token.
            d.push_back(tokens ? a.back() : std::log(cm->number("time_to_target_s") / im->number("time_to_target_s")));
        }
        if (d.empty()) return;
        const PairedVerdict v = paired_rule(d, s.min_gain, s.false_keep, s.min_pairs, s.max_pairs,
                                            t.rule == "kernel"                    ? "step time"
                                            : t.rule == "tokens"                  ? "tokens to target"
                                            : s.objective == "time_to_target" ? "time"
                                                                                  : "loss");
        if (v.decision == "continue") {
            log("trial " + std::to_string(t.id) + " " + overrides_text(t.diff) + ": " + v.why);
            return;
        }
        Json st = Json::object();
        st.set("pairs", v.n);
        st.set("ratio", v.ratio);
        if (v.n >= 2) {
            st.set("ratio_lo", v.ratio_lo);
            st.set("ratio_hi", v.ratio_hi);
            st.set("resolvable_gain", v.resolvable);
        }
        st.set("log_ratio_mean", v.mean);
        st.set("log_ratio_sd", v.sd);
        auto mean = [](const std::vector<double>& x) {
            double m = 0;
            for (double y : x) m += y / double(x.size());
            return m;
        };
        if (!a.empty()) {
            st.set("tokens_ratio", std::exp(mean(a)));
            st.set("s_per_token_ratio", std::exp(mean(b)));
        }
        if (t.rule == "kernel") st.set("max_loss_rel_diff", max_loss_diff);
        std::string why = t.rule == "kernel" ? v.why + "; losses match to " + fmt(max_loss_diff) : v.why;
        if (!a.empty())
            why += "; tokens to target x" + fmt(std::exp(mean(a)), 3) + ", seconds per token x" + fmt(std::exp(mean(b)), 3) +
                   (t.rule == "tokens" ? " (not counted: these keys cannot change the cost of a step)" : "");
        if (!notes.empty()) why += "; " + notes.substr(0, notes.size() - 2);
        if (v.decision == "undecided") {
            st.set("unresolved", true);
            log("NOISE: trial " + std::to_string(t.id) + " is undecided after " + std::to_string(v.n) + " pairs: noise " + pct(v.sd) +
                " per pair: cannot resolve gains below " + pct(v.resolvable) + " with budget " + fmt(s.budget_s) + " s; raise the budget or search.max_pairs");
        }
        decide(t, v.decision == "keep" ? "keep" : "discard", rule, why, st, side_metrics(cand_runs));
    }

    // Successive halving: when every rung trial of a bracket's rung has its
    // run, the best 1/eta go on (status keep, "promoted"), the rest are
    // discarded; the promoted configs are planned at the next rung, whose last
    // is judged by the paired rule.
    void judge_rungs() {
        const Settings& s = sp_.settings;
        std::map<std::pair<int, int>, std::vector<int>> rungs;
        for (int id : st_.open_trials())
            if (st_.plans.at(id).role == "rung") rungs[{st_.plans.at(id).bracket, st_.plans.at(id).rung}].push_back(id);
        for (const auto& [key, ids] : rungs) {
            std::vector<std::pair<double, int>> ranked;
            bool done = true;
            for (int id : ids) {
                const auto runs = st_.runs_of(id);
                if (runs.empty()) {
                    done = false;
                    break;
                }
            }
            if (!done) continue;
            // Hits by time to target, or by tokens to target when every trial of the
            // rung changes only cost-neutral keys (judging_rule: the tokens rule),
            // which the clock's noise cannot reorder; then misses by loss.
            bool by_tokens = s.objective == "time_to_target";
            for (int id : ids)
                by_tokens = by_tokens && judging_rule(s, config_diff(st_.plans.at(id).config, st_.plans.at(id).incumbent_config)) == "tokens";
            for (int id : ids) {
                const Json* r = st_.runs_of(id).front();
                const Json* m = r->find("metrics");
                if (r->string("status") != "ok") {
                    decide(st_.plans.at(id), r->string("status") == "timeout" ? "timeout" : "crash", "process", r->string("reason"), Json(),
                           side_metrics({r}));
                    continue;
                }
                const double hit_rank = by_tokens ? m->number("tokens_to_target") : m->number("score");
                const double rank = m->boolean("hit") || s.objective != "time_to_target" ? hit_rank : 1e18 + m->number("final_val_loss");
                ranked.push_back({rank, id});
            }
            std::sort(ranked.begin(), ranked.end());
            const size_t keep = std::min(ranked.size(), size_t(std::ceil(double(ids.size()) / s.halving_eta)));
            for (size_t i = 0; i < ranked.size(); i++) {
                const TrialPlan t = st_.plans.at(ranked[i].second);
                const bool promoted = i < keep;
                decide(t, promoted ? "keep" : "discard", "halving",
                       "rung " + std::to_string(key.second) + " at " + fmt(t.budget_s, 3) + " s: rank " + std::to_string(i + 1) + " of " +
                           std::to_string(ranked.size()) + (by_tokens ? " by tokens to target" : s.objective == "time_to_target" ? " by time to target" : " by loss") +
                           (promoted ? ", promoted" : ""),
                       Json(), side_metrics(st_.runs_of(t.id)));
                if (!promoted) continue;
                const int next = key.second + 1;
                const bool last = next == s.halving_rungs - 1;
                // The promoted config is compared again at the next rung: a new trial with the same config (its hash is tried, so it is planned directly).
                TrialPlan p;
                p.id = st_.next_trial;
                p.role = last ? "candidate" : "rung";
                p.parent = t.id;
                p.incumbent = st_.incumbent_id;
                p.incumbent_config = st_.incumbent;
                p.config = t.config;
                p.diff = t.diff;
                // The last rung's rule is the one any candidate of this diff gets.
                p.rule = last ? judging_rule(s, config_diff(p.config, st_.incumbent)) : "halving";
                p.budget_s = rung_budget(next);
                p.bracket = t.bracket;
                p.rung = next;
                p.note = "promoted from rung " + std::to_string(key.second) + " (rank " + std::to_string(i + 1) + ")";
                p.hash = t.hash;
                journal_->append(p.to_json());
                st_.apply(p.to_json());
            }
        }
    }

    // ---- console ----------------------------------------------------------

    std::string run_line(const Json& r) const {
        std::string line = "run " + fmt(r.number("id")) + " (trial " + fmt(r.number("trial")) +
                           (r.number("pair", -1) >= 0 ? ", pair " + fmt(r.number("pair") + 1) : "") + ", " + r.string("role") + ", seed " +
                           fmt(r.number("seed")) + "): " + r.string("status");
        if (const Json* m = r.find("metrics")) {
            if (m->find("time_to_target_s") && std::isfinite(m->number("time_to_target_s", NAN)))
                line += ", time to target " + fmt(m->number("time_to_target_s"), 3) + " s (" + fmt(m->number("tokens_to_target"), 4) + " tokens x " +
                        fmt(m->number("s_per_token") * 1e6, 3) + " us)";
            else if (m->find("hit")) line += ", missed the target";
            if (m->find("step_ms")) line += ", step " + fmt(m->number("step_ms")) + " ms";
            if (m->find("final_val_loss")) line += ", val loss " + fmt(m->number("final_val_loss", NAN));
        }
        if (r.string("status") != "ok" && !r.string("reason").empty()) line += " - " + r.string("reason");
        return line;
    }

    std::string decision_line(const Json& d) const {
        return "trial " + fmt(d.number("id")) + " [" + d.string("role") + "] " + overrides_text(overrides_from(*d.find("diff"))) + ": " +
               d.string("status") + " (" + d.string("rule") + ") - " + d.string("reason");
    }
};

}  // namespace

int run_search(Space space, const RunOptions& opt) {
    Runner r(std::move(space), opt);
    return r.run();
}

}  // namespace gpt::search
