#include "search/runner.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "kernels/backend.h"
#include "kernels/error.h"
#include "kernels/registry.h"
#include "search/autotune.h"
#include "search/journal.h"
#include "search/report.h"
#include "search/strategy.h"
#include "search/trial.h"

namespace fs = std::filesystem;

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

int default_parallel(const std::string& backend, int ranks_per_trial) {
#if GPT_HAVE_CUDA
    if (backend == "cuda") return std::max(1, cuda_device_count() / ranks_per_trial);
#endif
    return 1;
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

class Runner {
public:
    Runner(Space sp, RunOptions opt) : sp_(std::move(sp)), opt_(std::move(opt)) {}

    int run() {
        const Settings& s = sp_.settings;
        fs::create_directories(opt_.dir + "/trials");
        fs::create_directories(opt_.dir + "/proposer");
        std::vector<Json> records;
        std::string warning;
        journal_ = std::make_unique<Journal>(opt_.dir + "/journal.jsonl", records, &warning);
        if (!warning.empty()) std::fprintf(stderr, "gpt search: warning: %s\n", warning.c_str());
        if (opt_.resume && records.empty()) bad_input(opt_.dir + ": nothing to resume (its journal is empty)");
        if (!opt_.resume && !records.empty())
            bad_input(opt_.dir + ": already holds a search journal: continue it with gpt search --resume " + opt_.dir + " or pick another --out");

        base_cfg_ = parse_config_text(sp_.base_yaml, sp_.origin + " (base)");
        backend_ = resolved_backend(base_cfg_);
        device_ = device_info(backend_);
        version_ = binary_version(opt_.gpt_binary);
        parallel_ = opt_.parallel > 0 ? opt_.parallel : s.parallel > 0 ? s.parallel : default_parallel(backend_, s.ranks_per_trial);
        probe_device();

        if (records.empty()) {
            if (s.autotune) run_autotune();
            Json h = Json::object();
            h.set("type", "search");
            h.set("started_at", now_iso());
            h.set("space_file", sp_.origin);
            h.set("space_text", sp_.text);
            h.set("base_yaml", sp_.base_yaml);
            h.set("settings", sp_.to_json().find("settings") ? *sp_.to_json().find("settings") : Json::object());
            if (!opt_.settings_json.empty()) h.set("settings_overrides", parse_json(opt_.settings_json));
            h.set("space", sp_.to_json());
            h.set("version", version_);
            h.set("device", device_);
            h.set("backend", backend_);
            if (!autotune_.is_null()) h.set("autotune", autotune_);
            journal_->append(h);
            records.push_back(h);
        }
        st_ = replay(records, s.baseline_repeats);
        log("search " + opt_.dir + ": strategy " + s.strategy + ", objective " + s.objective +
            (s.objective == "time_to_target" ? " (target " + fmt(s.target_val_loss) + ")" : "") + ", budget " + fmt(s.budget_s) +
            " s per trial, " + std::to_string(parallel_) + " at once, device " + device_);
        if (opt_.resume) log("resuming: " + std::to_string(st_.trials.size()) + " trials in the journal");

        const auto t0 = Clock::now();
        std::vector<Planned> batch = st_.unfinished();
        if (!batch.empty()) log("re-running " + std::to_string(batch.size()) + " trial(s) that were in flight");
        int batch_no = int(st_.batches.size());
        for (;;) {
            if (batch.empty()) {
                if (s.time_limit_s > 0 && std::chrono::duration<double>(Clock::now() - t0).count() >= s.time_limit_s) {
                    log("stopping: search.time_limit_s reached");
                    break;
                }
                batch = plan(batch_no);
                if (batch.empty()) break;
                Json b = Json::object();
                b.set("type", "batch");
                b.set("batch", batch_no);
                if (batch.front().bracket >= 0) {
                    b.set("bracket", batch.front().bracket);
                    b.set("rung", batch.front().rung);
                }
                Json list = Json::array();
                for (const auto& p : batch) list.push(p.to_json());
                b.set("trials", list);
                journal_->append(b);
                st_.batches.push_back(b);
                for (const auto& p : batch) {
                    st_.tried.insert(p.hash);
                    st_.next_id = std::max(st_.next_id, p.id + 1);
                }
                batch_no++;
            }
            run_batch(batch);
            batch.clear();
        }
        write_report(opt_.dir);
        log("done: " + std::to_string(st_.trials.size()) + " trials; report in " + opt_.dir + "/report.md, best config in " + opt_.dir + "/best.yaml");
        return 0;
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
    std::mutex mu_;

    void log(const std::string& msg) {
        if (opt_.quiet) return;
        std::lock_guard<std::mutex> lock(log_mu_);
        std::fprintf(stderr, "gpt search: %s\n", msg.c_str());
        std::fflush(stderr);
    }
    std::mutex log_mu_;

    // One short `gpt bench step` child on the base config: the device as the
    // backend describes it and its peak TFLOP/s (for the MFU of every trial).
    void probe_device() {
        const BenchRun b = bench_config(opt_.gpt_binary, base_cfg_, opt_.dir + "/probe", "probe", 2, sp_.settings.budget_s + sp_.settings.grace_s,
                                        child_env(0));
        if (!b.ok) {
            log("note: the device probe (gpt bench step) failed, MFU will not be recorded: " + b.error);
            return;
        }
        peak_tflops_ = b.raw.number("peak_tflops");
        if (!b.raw.string("device").empty()) device_ = b.raw.string("backend") + ": " + b.raw.string("device") + "; " + device_;
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
        log("autotune: base kernels " + overrides_text(r.chosen));
    }

    // ---- planning -------------------------------------------------------

    Overrides normalized(const Overrides& ov) const {
        // Overrides equal to the base's value are dropped: one config, one hash.
        const auto flat = flat_config(base_cfg_);
        Overrides out;
        for (const auto& [k, v] : ov) {
            auto it = flat.find(k);
            const Dimension* d = sp_.dim(k);
            bool same = it != flat.end() && it->second.scalar_text() == v;
            if (!same && it != flat.end() && d && d->kind != Dimension::Kind::Choice) {
                try {
                    same = std::stod(v) == it->second.num;
                } catch (...) {
                }
            }
            if (!same) out[k] = v;
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

    // A planned trial with its diff, hash, validity and judging rule filled in.
    Planned make(const std::string& role, int parent, const Overrides& parent_cfg, Overrides cfg, const std::string& note) {
        Planned p;
        p.id = st_.next_id++;
        p.role = role;
        p.parent = parent;
        p.config = normalized(cfg);
        const auto base_flat = flat_config(base_cfg_);
        auto value_in = [&](const Overrides& ov, const std::string& k) {
            auto it = ov.find(k);
            if (it != ov.end()) return it->second;
            auto b = base_flat.find(k);
            return b == base_flat.end() ? std::string() : b->second.scalar_text();
        };
        std::set<std::string> keys;
        for (const auto& [k, v] : p.config) keys.insert(k);
        for (const auto& [k, v] : parent_cfg) keys.insert(k);
        for (const auto& k : keys)
            if (value_in(p.config, k) != value_in(parent_cfg, k)) p.diff[k] = value_in(p.config, k);
        p.seed = base_cfg_.run.seed;
        p.budget_s = sp_.settings.budget_s;
        p.note = note;
        p.hash = config_hash(p.config);
        try {
            const Config c = candidate_config(sp_, p.config);
            if (auto v = violated_constraint(sp_, c)) p.invalid = "violates the constraint '" + *v + "'";
        } catch (const Error& e) {
            p.invalid = e.what();
        }
        // Kernel-only changes of same-arithmetic families are judged without retraining.
        if (role == "candidate" && !p.diff.empty()) {
            bool kernel_only = true;
            for (const auto& [k, v] : p.diff) {
                if (k.rfind("kernels.", 0) != 0) { kernel_only = false; break; }
                const std::string fam = k.substr(8, k.find('.', 8) == std::string::npos ? std::string::npos : k.find('.', 8) - 8);
                const KernelFamily* f = find_kernel_family(fam);
                if (!f || !f->same_arithmetic) { kernel_only = false; break; }
            }
            p.kernel_rule = kernel_only;
        }
        return p;
    }

    Overrides trial_config(int id) const {
        const Json* t = st_.trial(id);
        return t && t->find("config") ? overrides_from(*t->find("config")) : Overrides{};
    }

    int trials_left() const { return sp_.settings.max_trials - st_.next_id; }

    std::vector<Planned> plan(int batch_no) {
        const Settings& s = sp_.settings;
        std::vector<Planned> out;
        if (st_.trial_index.empty() && st_.batches.empty()) {
            for (int i = 0; i < s.baseline_repeats; i++) {
                Planned p = make("baseline", -1, {}, {}, "baseline repeat " + std::to_string(i + 1) + " of " + std::to_string(s.baseline_repeats));
                p.seed = base_cfg_.run.seed + i;
                if (!p.invalid.empty()) bad_input(sp_.origin + ": the base config is not valid: " + p.invalid);
                out.push_back(p);
            }
            return out;
        }
        if (st_.baseline_scores.empty()) {
            std::string why;
            for (const auto& t : st_.trials)
                if (t.string("role") == "baseline") why = t.string("reason") + (t.string("stderr_tail").empty() ? "" : "\n" + t.string("stderr_tail"));
            run_failed("every baseline run failed, so there is nothing to compare with: " + why);
        }
        // A candidate that passed its rule is confirmed with a fresh seed before
        // anything else (even past max_trials: a new best is never left unconfirmed).
        if (auto c = pending_confirmation()) return {*c};
        if (trials_left() <= 0) {
            log("stopping: search.max_trials (" + std::to_string(s.max_trials) + ") reached");
            return out;
        }
        const int want = std::min(parallel_, trials_left());
        Rng rng(uint64_t(s.seed) * 1000003ull + uint64_t(batch_no));
        const Config bcfg = candidate_config(sp_, st_.baseline);
        auto fresh = [&](auto&& gen, const std::string& role, int parent, const Overrides& parent_cfg, const std::string& note) -> bool {
            // Up to 200 draws for an untried config that satisfies the constraints.
            std::optional<Planned> last;
            for (int attempt = 0; attempt < 200; attempt++) {
                Overrides cand = gen();
                const Overrides norm = normalized(cand);
                if (st_.tried.count(config_hash(norm))) continue;
                bool dup = false;
                for (const auto& p : out) dup = dup || p.hash == config_hash(norm);
                if (dup) continue;
                const int id = st_.next_id;
                Planned p = make(role, parent, parent_cfg, cand, note);
                if (p.invalid.empty() || attempt == 199) {
                    out.push_back(p);
                    return true;
                }
                st_.next_id = id;  // try again with the same id
                last = p;
            }
            if (last) {
                st_.next_id = last->id + 1;
                out.push_back(*last);
                return true;
            }
            return false;
        };
        if (s.strategy == "hill_climb") {
            for (int i = 0; i < want; i++)
                if (!fresh([&] { return mutate(sp_, st_.baseline, bcfg, s.mutations, rng); }, "candidate", st_.baseline_id, st_.baseline,
                           "mutation of the baseline"))
                    break;
        } else if (s.strategy == "random") {
            for (int i = 0; i < want; i++)
                if (!fresh([&] { return sample_random(sp_, rng); }, "candidate", st_.baseline_id, st_.baseline, "random sample")) break;
        } else if (s.strategy == "evolution") {
            // The population: the best distinct configs trained so far at the full budget.
            std::vector<std::pair<double, int>> pop;
            std::set<std::string> seen;
            for (const auto& t : st_.trials) {
                const Json* m = t.find("metrics");
                const std::string role = t.string("role");
                if (!m || t.string("rule") == "kernel" || !(role == "baseline" || role == "candidate" || role == "confirm")) continue;
                if (!std::isfinite(m->number("score", NAN)) || !seen.insert(t.string("config_hash")).second) continue;
                pop.push_back({m->number("score"), int(t.number("id"))});
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
            plan_halving(out, rng);
        } else if (s.strategy == "external") {
            plan_external(out, want, batch_no);
        }
        if (out.empty()) log("stopping: the strategy has no new candidate");
        return out;
    }

    std::optional<Planned> pending_confirmation() {
        if (st_.batches.empty()) return std::nullopt;
        const Json* list = st_.batches.back().find("trials");
        const Json* best = nullptr;
        for (const auto& pt : list->arr) {
            const Json* t = st_.trial(int(pt.number("id")));
            if (!t || t->string("role") != "candidate" || t->string("status") != "keep") continue;
            const Json* m = t->find("metrics");
            const bool kernel = t->string("rule") == "kernel";
            const double v = kernel ? m->number("step_ms", NAN) : m->number("score", NAN);
            const Json* bm = best ? best->find("metrics") : nullptr;
            if (!best || v < (kernel ? bm->number("step_ms", NAN) : bm->number("score", NAN))) best = t;
        }
        if (!best) return std::nullopt;
        const int cid = int(best->number("id"));
        const Overrides cc = overrides_from(*best->find("config"));
        Planned p = make("confirm", cid, cc, cc, "confirmation of trial " + std::to_string(cid) + " with a fresh seed");
        p.seed = base_cfg_.run.seed + 1000 + p.id;
        p.kernel_rule = best->string("rule") == "kernel";
        return p;
    }

    void plan_halving(std::vector<Planned>& out, Rng& rng) {
        const Settings& s = sp_.settings;
        const Json& last = st_.batches.back();
        const int bracket = int(last.number("bracket", -1)), rung = int(last.number("rung", -1));
        auto rung_budget = [&](int r) { return s.budget_s / std::pow(double(s.halving_eta), double(s.halving_rungs - 1 - r)); };
        auto role_of = [&](int r) { return r == s.halving_rungs - 1 ? std::string("candidate") : std::string("rung"); };
        if (bracket >= 0 && rung >= 0 && rung < s.halving_rungs - 1) {
            // Promote the best 1/eta of the finished rung.
            std::vector<std::pair<double, int>> ranked;
            for (const auto& pt : last.find("trials")->arr) {
                const Json* t = st_.trial(int(pt.number("id")));
                if (t && t->string("status") == "keep") ranked.push_back({t->find("metrics")->number("score", INFINITY), int(t->number("id"))});
            }
            std::sort(ranked.begin(), ranked.end());
            const size_t keep = std::min(ranked.size(), size_t(std::ceil(double(last.find("trials")->arr.size()) / s.halving_eta)));
            for (size_t i = 0; i < keep && trials_left() > 0; i++) {
                const Overrides c = trial_config(ranked[i].second);
                Planned p = make(role_of(rung + 1), ranked[i].second, c, c, "promoted from rung " + std::to_string(rung) + " (rank " + std::to_string(i + 1) + ")");
                p.budget_s = rung_budget(rung + 1);
                p.bracket = bracket;
                p.rung = rung + 1;
                p.kernel_rule = false;
                out.push_back(p);
            }
            if (!out.empty()) return;
        }
        int next_bracket = 0;
        for (const auto& b : st_.batches) next_bracket = std::max(next_bracket, int(b.number("bracket", -1)) + 1);
        const int n = std::min(s.halving_candidates, trials_left());
        for (int i = 0; i < n; i++) {
            Overrides c;
            bool found = false;
            for (int attempt = 0; attempt < 200 && !found; attempt++) {
                c = i == 0 ? mutate(sp_, st_.baseline, candidate_config(sp_, st_.baseline), s.mutations, rng) : sample_random(sp_, rng);
                const std::string h = config_hash(normalized(c));
                found = !st_.tried.count(h);
                for (const auto& p : out) found = found && p.hash != h;
            }
            if (!found) break;
            Planned p = make(role_of(0), st_.baseline_id, st_.baseline, c, "bracket " + std::to_string(next_bracket) + " sample");
            p.budget_s = rung_budget(0);
            p.bracket = next_bracket;
            p.rung = 0;
            p.kernel_rule = false;
            out.push_back(p);
        }
    }

    void plan_external(std::vector<Planned>& out, int want, int batch_no) {
        const Settings& s = sp_.settings;
        Json req = Json::object();
        req.set("protocol", 1);
        req.set("want", want);
        req.set("space", sp_.to_json());
        Json base = Json::object();
        for (const auto& [k, v] : flat_config(base_cfg_)) base.set(k, v);
        req.set("base_config", base);
        Json bl = Json::object();
        bl.set("id", st_.baseline_id);
        bl.set("config", overrides_json(st_.baseline));
        Json scores = Json::array();
        for (double x : st_.baseline_scores) scores.push(x);
        bl.set("scores", scores);
        bl.set("mean", mean_of(st_.baseline_scores));
        bl.set("noise_sd", st_.noise_sd);
        req.set("baseline", bl);
        Json tr = Json::array();
        for (const auto& t : st_.trials) tr.push(t);
        req.set("journal", tr);
        const Json answer = run_proposer(s.proposer, req, opt_.dir + "/proposer", "batch" + std::to_string(batch_no), std::max(60.0, s.grace_s));
        if (answer.boolean("stop")) return;
        const Json* cands = answer.find("candidates");
        if (!cands || !cands->is_array()) run_failed("the proposer's answer has no \"candidates\" list (see " + opt_.dir + "/proposer)");
        for (const auto& c : cands->arr) {
            if (int(out.size()) >= std::max(want, 1) || trials_left() - int(out.size()) <= 0) break;
            Overrides cfg = st_.baseline;
            std::string bad;
            const Json* set = c.find("set");
            if (!set || !set->is_object()) bad = "a candidate needs \"set\": {key: value, ...}";
            else
                for (const auto& [k, v] : set->obj) {
                    const Dimension* d = sp_.dim(k);
                    std::string val = v.scalar_text();
                    const auto canon = d ? d->canonical(val) : std::nullopt;
                    if (canon) val = *canon;  // choices compared by value: 0, 0.0 and "0.0" are one
                    if (!d) bad = "key '" + k + "' is not a dimension of the space";
                    else if (d->kind == Dimension::Kind::Choice && !canon)
                        bad = k + "=" + val + " is not one of its choices";
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
            Planned p = make("candidate", st_.baseline_id, st_.baseline, cfg, "proposer: " + c.string("note"));
            if (!bad.empty()) p.invalid = bad;
            out.push_back(p);
        }
    }

    // ---- running --------------------------------------------------------

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

    void run_batch(const std::vector<Planned>& batch) {
        std::atomic<size_t> next{0};
        auto worker = [&](int slot) {
            for (size_t i = next++; i < batch.size(); i = next++) {
                const Planned& p = batch[i];
                Json rec;
                try {
                    rec = execute(p, slot);
                } catch (const std::exception& e) {
                    // A trial that cannot even be set up (a full disk) ends that trial only.
                    rec = base_record(p, slot);
                    rec.set("status", "crash");
                    rec.set("rule", "process");
                    rec.set("reason", std::string("could not run: ") + e.what());
                }
                std::lock_guard<std::mutex> lock(mu_);
                judge(rec, p);
                journal_->append(rec);
                st_.apply_trial(rec, sp_.settings.baseline_repeats);
                log(summary_line(rec));
            }
        };
        const int n = std::max(1, std::min<int>(parallel_, int(batch.size())));
        if (n == 1) {
            worker(0);
            return;
        }
        std::vector<std::thread> threads;
        for (int slot = 0; slot < n; slot++) threads.emplace_back(worker, slot);
        for (auto& t : threads) t.join();
    }

    Json base_record(const Planned& p, int slot) const {
        Json r = Json::object();
        r.set("type", "trial");
        r.set("id", p.id);
        r.set("batch", int(st_.batches.size()) - 1);
        r.set("role", p.role);
        r.set("parent", p.parent);
        r.set("diff", overrides_json(p.diff));
        r.set("config", overrides_json(p.config));
        r.set("config_hash", p.hash);
        r.set("seed", p.seed);
        r.set("budget_s", p.budget_s);
        if (p.bracket >= 0) {
            r.set("bracket", p.bracket);
            r.set("rung", p.rung);
        }
        if (!p.note.empty()) r.set("note", p.note);
        r.set("rule", p.kernel_rule ? "kernel" : "train");
        r.set("status", "");
        r.set("slot", slot);
        r.set("version", version_);
        r.set("device", device_);
        r.set("started_at", now_iso());
        return r;
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

    Json execute(const Planned& p, int slot) {
        Json rec = base_record(p, slot);
        if (!p.invalid.empty()) {
            rec.set("status", "invalid");
            rec.set("rule", "validation");
            rec.set("reason", p.invalid);
            return rec;
        }
        const Settings& s = sp_.settings;
        char name[32];
        std::snprintf(name, sizeof name, "trials/%04d", p.id);
        const std::string dir = opt_.dir + "/" + name;
        fs::remove_all(dir);  // a trial in flight at a kill starts over
        fs::create_directories(dir);
        rec.set("dir", std::string(name));
        Config cfg = candidate_config(sp_, p.config);
        rec.set("kernels", kernels_of(cfg));
        if (p.kernel_rule) return execute_kernel(p, rec, cfg, dir, slot);

        cfg.run.out_dir = dir + "/run";
        cfg.run.checkpoint_every = -1;  // trials are judged by their log; weights would fill the disk
        cfg.run.budget_s = p.budget_s;
        cfg.run.seed = p.seed;
        cfg.run.log_every = 1;     // every step's time: the median clock and the report read them
        cfg.run.sample_every = 0;  // samples are not part of the measurement
        if (s.objective == "time_to_target") cfg.run.target_val_loss = s.target_val_loss;
        write_file_atomic(dir + "/config.yaml", config_to_yaml(cfg));
        ChildSpec spec;
        spec.argv = {opt_.gpt_binary, "train", "-c", dir + "/config.yaml", "--quiet"};
        if (s.ranks_per_trial > 1)  // a data-parallel trial: gpt launch starts the ranks (mpirun underneath)
            spec.argv.insert(spec.argv.begin() + 1, {"launch", "-n", std::to_string(s.ranks_per_trial), "--"});
        spec.env = child_env(slot);
        spec.stdout_path = dir + "/stdout.txt";
        spec.stderr_path = dir + "/stderr.txt";
        spec.kill_after_s = p.budget_s + s.grace_s;
        const ChildResult r = run_child(spec);
        Json m = Json::object();
        m.set("wall_s", r.wall_s);
        m.set("peak_rss_mb", r.peak_rss_mb);
        const auto summary = last_record(cfg.run.out_dir + "/log.jsonl", "summary");
        fs::remove_all(cfg.run.out_dir + "/checkpoints");  // one written at an interruption
        if (!r.ok() || !summary) {
            rec.set("status", r.timed_out ? "timeout" : "crash");
            rec.set("rule", "process");
            rec.set("reason", r.ok() ? std::string("exited 0 without a summary record in its log") : r.describe());
            rec.set("stderr_tail", r.stderr_tail);
            rec.set("metrics", m);
            return rec;
        }
        const Json& sm = *summary;
        for (const char* k : {"time_to_target_s", "final_val_loss", "final_train_loss", "tokens_per_s", "steps", "train_time_s", "eval_time_s",
                              "startup_time_s", "loss_floor", "peak_memory_bytes"})
            if (const Json* v = sm.find(k)) m.set(k, *v);
        m.set("stop_reason", sm.string("stop_reason"));
        // The trainer states MFU against its device's peak; older binaries did not, then the probe's peak is used.
        const double tps = sm.number("tokens_per_s"), fpt = sm.number("flops_per_token"), mfu = sm.number("mfu", NAN);
        if (std::isfinite(mfu)) m.set("mfu", mfu);
        else if (peak_tflops_ > 0 && fpt > 0) m.set("mfu", tps * fpt / 1e12 / peak_tflops_);
        const double tts = sm.number("time_to_target_s", NAN), loss = sm.number("final_val_loss", NAN);
        double score;
        if (s.objective == "time_to_target") {
            m.set("hit", std::isfinite(tts));
            // A miss ranks after every hit (its score is above the budget) and, among misses, by its final loss.
            score = std::isfinite(tts) ? tts : p.budget_s * loss / s.target_val_loss;
        } else {
            score = loss;
        }
        m.set("score", score);
        rec.set("metrics", m);
        if (!std::isfinite(score)) {
            rec.set("status", "crash");
            rec.set("rule", "process");
            rec.set("reason", "no validation loss in the summary");
        }
        return rec;
    }

    Json execute_kernel(const Planned& p, Json& rec, const Config& cfg, const std::string& dir, int slot) {
        const Settings& s = sp_.settings;
        const Config ref = candidate_config(sp_, trial_config_or_baseline(p));
        const double timeout = s.budget_s + s.grace_s;
        const auto env = child_env(slot);
        Json m = Json::object();
        auto fail = [&](const std::string& why, const std::string& tail) {
            rec.set("status", "crash");
            rec.set("rule", "kernel");
            rec.set("reason", why);
            if (!tail.empty()) rec.set("stderr_tail", tail);
            rec.set("metrics", m);
            return rec;
        };
        const CheckRun cr = first_losses(opt_.gpt_binary, ref, s.kernel_steps, dir, "check-ref", timeout, env);
        if (!cr.ok) return fail("the reference kernels' check run failed: " + cr.error, "");
        const CheckRun cc = first_losses(opt_.gpt_binary, cfg, s.kernel_steps, dir, "check-cand", timeout, env);
        if (!cc.ok) return fail("the check run failed: " + cc.error, "");
        const double diff = max_rel_diff(cc.losses, cr.losses);
        m.set("max_loss_rel_diff", diff);
        std::vector<double> ref_ms, cand_ms;
        BenchRun last;
        for (int i = 0; i < s.kernel_repeats; i++) {
            const BenchRun br = bench_config(opt_.gpt_binary, ref, dir, "bench-ref-" + std::to_string(i), 10, timeout, env);
            if (!br.ok) return fail("the reference bench failed: " + br.error, "");
            const BenchRun bc = bench_config(opt_.gpt_binary, cfg, dir, "bench-cand-" + std::to_string(i), 10, timeout, env);
            if (!bc.ok) return fail("the bench failed: " + bc.error, "");
            ref_ms.push_back(br.median_ms);
            cand_ms.push_back(bc.median_ms);
            last = bc;
        }
        auto median = [](std::vector<double> v) {
            std::sort(v.begin(), v.end());
            return v[v.size() / 2];
        };
        // The spread is that of the paired ratios candidate/reference: each pair
        // ran back to back, so a slow spell of a shared machine moves both
        // sides of a pair and cancels, where the sd of either side alone
        // would count it as noise. In ms at the reference's median.
        std::vector<double> ratios;
        for (size_t i = 0; i < ref_ms.size(); i++) ratios.push_back(cand_ms[i] / ref_ms[i]);
        const double ref_med = median(ref_ms);
        m.set("step_ms", median(cand_ms));
        m.set("ref_step_ms", ref_med);
        m.set("step_ratio", median(ratios));
        m.set("ref_step_ms_sd", ref_med * sd_of(ratios));
        m.set("tokens_per_s", last.tokens_per_s);
        m.set("mfu", last.mfu);
        rec.set("metrics", m);
        return rec;
    }

    Overrides trial_config_or_baseline(const Planned& p) const {
        // The kernels a kernel trial is compared with: its parent's config.
        if (p.role == "confirm") {
            const Json* cand = st_.trial(p.parent);
            if (cand) {
                const Json* parent = st_.trial(int(cand->number("parent")));
                if (parent) return overrides_from(*parent->find("config"));
            }
            return st_.baseline;
        }
        return st_.baseline;
    }

    // ---- judging ----------------------------------------------------------

    void judge(Json& rec, const Planned& p) {
        const Settings& s = sp_.settings;
        if (!rec.string("status").empty()) return;  // invalid, crash, timeout: decided already
        const Json* m = rec.find("metrics");
        const std::string unit = s.objective == "time_to_target" ? " s" : "";
        if (p.role == "baseline" || p.role == "rung") {
            rec.set("status", "keep");
            rec.set("rule", p.role == "baseline" ? "baseline" : "halving");
            rec.set("reason", p.role == "baseline" ? "baseline repeat: measures the spread"
                                                   : "rung " + std::to_string(p.rung) + " at " + fmt(p.budget_s) + " s: ranked with its rung");
            return;
        }
        if (p.kernel_rule) {
            const double ref = m->number("ref_step_ms"), cand = m->number("step_ms"), sd = m->number("ref_step_ms_sd");
            const double diff = m->number("max_loss_rel_diff", INFINITY);
            const double thr = std::max(s.min_gain * ref, 2 * sd);
            std::string why;
            bool keep = false;
            if (!(diff <= s.kernel_tolerance)) {
                why = "wrong results: the first " + std::to_string(s.kernel_steps) + " losses differ by " + fmt(diff) + " (relative) > tolerance " +
                      fmt(s.kernel_tolerance);
            } else {
                keep = ref - cand > thr;
                why = "step " + fmt(cand) + " ms vs " + fmt(ref) + " ms: gain " + fmt(ref - cand) + " ms " + (keep ? "> " : "<= ") +
                      "threshold " + fmt(thr) + " ms (max of min_gain " + fmt(s.min_gain * ref) + ", 2 sd " + fmt(2 * sd) + "); losses match to " +
                      fmt(diff);
            }
            rec.set("status", keep ? "keep" : "discard");
            rec.set("rule", "kernel");
            rec.set("reason", why);
            return;
        }
        const double score = m->number("score", NAN);
        // The spread was measured on the first baseline as a relative standard
        // deviation; it is applied to the current baseline's mean, since the
        // noise of a time or a loss scales with its size.
        // A baseline adopted from a candidate has two runs of its own; when they
        // spread more than the first baseline did, that wider spread counts.
        const double mean = mean_of(st_.baseline_scores);
        const double rel = std::max(st_.noise_rel, std::fabs(mean) > 0 ? sd_of(st_.baseline_scores) / std::fabs(mean) : 0.0);
        const double sd = rel * std::fabs(mean);
        const double thr = std::max(s.min_gain * std::fabs(mean), 2 * sd);
        const double gain = mean - score;
        const bool keep = gain > thr;
        rec.set("status", keep ? "keep" : "discard");
        rec.set("rule", "noise");
        rec.set("gain", gain);
        rec.set("threshold", thr);
        rec.set("baseline_mean", mean);
        rec.set("baseline_sd", sd);
        rec.set("reason", std::string(p.role == "confirm" ? "confirmation: " : "") + "score " + fmt(score) + unit + " vs baseline mean " +
                              fmt(mean) + unit + ": gain " + fmt(gain) + unit + (keep ? " > " : " <= ") + "threshold " + fmt(thr) + unit +
                              " (max of min_gain x mean " + fmt(s.min_gain * std::fabs(mean)) + ", 2 sd " + fmt(2 * sd) + ")" +
                              (keep && p.role == "candidate" ? "; a confirmation run follows" : "") +
                              (keep && p.role == "confirm" ? "; trial " + std::to_string(p.parent) + " is the new baseline" : ""));
    }

    std::string summary_line(const Json& rec) const {
        std::string line = "trial " + std::to_string(int(rec.number("id"))) + " [" + rec.string("role") + "] " +
                           overrides_text(overrides_from(*rec.find("config"))) + ": " + rec.string("status") + " (" + rec.string("rule") + ")";
        if (const Json* m = rec.find("metrics")) {
            if (m->find("score")) line += ", score " + fmt(m->number("score", NAN));
            if (m->find("step_ms")) line += ", step " + fmt(m->number("step_ms")) + " ms";
            if (m->find("final_val_loss")) line += ", val loss " + fmt(m->number("final_val_loss", NAN));
        }
        line += " - " + rec.string("reason");
        return line;
    }
};

}  // namespace

int run_search(Space space, const RunOptions& opt) {
    Runner r(std::move(space), opt);
    return r.run();
}

}  // namespace gpt::search
