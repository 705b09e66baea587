#include "search/autotune.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kernels/error.h"
#include "kernels/registry.h"
#include "search/journal.h"
#include "search/runner.h"
#include "search/trial.h"

namespace fs = std::filesystem;

namespace gpt::search {

namespace {

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? NAN : v[v.size() / 2];
}

}  // namespace

BenchRun bench_config(const std::string& gpt_binary, Config cfg, const std::string& dir, const std::string& tag, int repeats, double timeout_s,
                      const std::map<std::string, std::string>& env) {
    BenchRun b;
    fs::create_directories(dir);
    cfg.run.out_dir = dir + "/" + tag;
    const std::string yaml = dir + "/" + tag + ".yaml";
    write_file_atomic(yaml, config_to_yaml(cfg));
    ChildSpec spec;
    spec.argv = {gpt_binary, "bench", "step", "-c", yaml, "--json", "--warmup", "2", "--repeats", std::to_string(repeats)};
    spec.env = env;
    spec.stdout_path = dir + "/" + tag + ".stdout.txt";
    spec.stderr_path = dir + "/" + tag + ".stderr.txt";
    spec.kill_after_s = timeout_s;
    const ChildResult r = run_child(spec);
    if (!r.ok()) {
        b.error = r.describe() + (r.stderr_tail.empty() ? "" : ": " + r.stderr_tail);
        return b;
    }
    std::istringstream out(read_text(spec.stdout_path));
    std::string line;
    while (std::getline(out, line)) {
        if (line.empty() || line[0] != '{') continue;
        try {
            b.raw = parse_json(line);
        } catch (...) {
        }
    }
    if (!b.raw.find("median_ms")) {
        b.error = "no JSON result on its stdout (" + spec.stdout_path + ")";
        return b;
    }
    b.ok = true;
    b.median_ms = b.raw.number("median_ms");
    b.tokens_per_s = b.raw.number("tokens_per_s");
    b.mfu = b.raw.number("mfu");
    return b;
}

CheckRun first_losses(const std::string& gpt_binary, Config cfg, int steps, const std::string& dir, const std::string& tag, double timeout_s,
                      const std::map<std::string, std::string>& env) {
    CheckRun c;
    fs::create_directories(dir);
    cfg.run.out_dir = dir + "/" + tag;
    cfg.run.max_steps = steps;
    // The schedule keeps its own horizon: a horizon of `steps` would not fit a longer warm-up.
    if (cfg.schedule.steps == 0) cfg.schedule.steps = cfg.schedule.warmup_steps + 1000;
    cfg.run.budget_s = 0;
    cfg.run.target_val_loss = 0;
    cfg.run.val_every = 0;
    cfg.run.val_every_tokens = 0;  // one evaluation at the end: only the step losses are compared
    cfg.run.val_batches = 1;
    cfg.run.log_every = 1;
    cfg.run.checkpoint_every = -1;  // only the losses are compared
    cfg.run.sample_every = 0;
    const std::string yaml = dir + "/" + tag + ".yaml";
    write_file_atomic(yaml, config_to_yaml(cfg));
    ChildSpec spec;
    spec.argv = {gpt_binary, "train", "-c", yaml, "--quiet"};
    spec.env = env;
    spec.stdout_path = dir + "/" + tag + ".stdout.txt";
    spec.stderr_path = dir + "/" + tag + ".stderr.txt";
    spec.kill_after_s = timeout_s;
    const ChildResult r = run_child(spec);
    fs::remove_all(cfg.run.out_dir + "/checkpoints");
    if (!r.ok()) {
        c.error = r.describe() + (r.stderr_tail.empty() ? "" : ": " + r.stderr_tail);
        return c;
    }
    std::istringstream log(read_text(cfg.run.out_dir + "/log.jsonl"));
    std::string line;
    while (std::getline(log, line)) {
        if (line.find("\"type\":\"step\"") == std::string::npos) continue;
        try {
            c.losses.push_back(parse_json(line).number("loss", NAN));
        } catch (...) {
        }
    }
    c.ok = int(c.losses.size()) == steps;
    if (!c.ok) c.error = "expected " + std::to_string(steps) + " step records in its log, found " + std::to_string(c.losses.size());
    return c;
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size() || a.empty()) return INFINITY;
    double m = 0;
    for (size_t i = 0; i < a.size(); i++) {
        const double d = std::fabs(a[i] - b[i]) / std::max(std::fabs(b[i]), 1e-6);
        if (!std::isfinite(d)) return INFINITY;
        m = std::max(m, d);
    }
    return m;
}

std::string default_autotune_cache() {
    if (const char* p = std::getenv("GPT_AUTOTUNE_CACHE"); p && *p) return p;
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/gpt/autotune.json";
    const char* home = std::getenv("HOME");
    return std::string(home && *home ? home : ".") + "/.cache/gpt/autotune.json";
}

TuneResult autotune(const std::string& base_yaml, const TuneOptions& opt) {
    TuneResult res;
    const Config base = parse_config_text(base_yaml, "autotune base config");
    const std::string backend = resolved_backend(base);
    const std::string cache_path = opt.cache_path.empty() ? default_autotune_cache() : opt.cache_path;
    char shape[160];
    std::snprintf(shape, sizeof shape, "L=%d NH=%d C=%d V=%d B=%d T=%d accum_tokens=%ld threads=%d", base.model.n_layer, base.model.n_head,
                  base.model.n_embd, base.model.vocab_size, base.run.batch_size, train_seq_len(base), base.run.total_batch_tokens, base.run.threads);
    res.key = device_info(backend) + " | " + binary_version(opt.gpt_binary) + " | " + backend + " | " + shape;
    auto say = [&](const std::string& s) {
        if (!opt.quiet) std::fprintf(stderr, "gpt search tune: %s\n", s.c_str());
    };

    Json cache = Json::object();
    if (fs::exists(cache_path)) {
        try {
            cache = parse_json(read_text(cache_path));
        } catch (const std::exception& e) {
            say("warning: ignoring the unreadable cache " + cache_path + " (" + e.what() + ")");
            cache = Json::object();
        }
    }
    if (!cache.find("entries")) cache.set("entries", Json::object());
    if (!opt.force)
        if (const Json* hit = cache.find("entries")->find(res.key)) {
            res.from_cache = true;
            res.report = *hit;
            if (const Json* k = hit->find("kernels"))
                for (const auto& [key, v] : k->obj) res.chosen[key] = v.scalar_text();
            say("cached in " + cache_path + ": " + overrides_text(res.chosen));
            return res;
        }

    const std::string work = opt.work_dir.empty() ? fs::temp_directory_path().string() + "/gpt-autotune" : opt.work_dir;
    fs::create_directories(work);
    const double timeout = 600;
    // The reference: every family at its default (the config's own choices removed).
    Config ref_cfg = base;
    ref_cfg.kernels.clear();
    const CheckRun ref_check = first_losses(opt.gpt_binary, ref_cfg, opt.check_steps, work, "check-default", timeout);
    if (!ref_check.ok) run_failed("autotune: the default kernels' check run failed: " + ref_check.error);

    Json measured = Json::array();
    Overrides current;  // winners so far (kernels.* keys)
    int tag_no = 0;
    auto measure = [&](const Overrides& ov, std::string* why) -> double {
        std::vector<std::string> sets;
        for (const auto& [k, v] : ov) sets.push_back(k + "=" + v);
        Config c;
        try {
            c = parse_config_text(config_to_yaml(ref_cfg), "autotune candidate", sets);
        } catch (const Error& e) {
            *why = std::string("rejected by the config: ") + e.what();
            return NAN;
        }
        const std::string tag = "t" + std::to_string(tag_no++);
        const CheckRun chk = first_losses(opt.gpt_binary, c, opt.check_steps, work, tag + "-check", timeout);
        if (!chk.ok) {
            *why = "its check run failed: " + chk.error;
            return NAN;
        }
        const double d = max_rel_diff(chk.losses, ref_check.losses);
        if (!(d <= opt.tolerance)) {
            *why = "wrong results: losses differ from the default's by " + std::to_string(d) + " (relative)";
            return NAN;
        }
        std::vector<double> ms;
        for (int i = 0; i < opt.repeats; i++) {
            const BenchRun b = bench_config(opt.gpt_binary, c, work, tag + "-bench" + std::to_string(i), opt.bench_steps, timeout);
            if (!b.ok) {
                *why = "its bench failed: " + b.error;
                return NAN;
            }
            ms.push_back(b.median_ms);
        }
        *why = "ok";
        return median(ms);
    };
    auto record = [&](const std::string& family, const std::string& key, const std::string& value, double ms, const std::string& why) {
        Json j = Json::object();
        j.set("family", family);
        j.set("key", key);
        j.set("value", value);
        j.set("median_ms", ms);
        j.set("status", why);
        measured.push(j);
        say(key + "=" + value + ": " + (std::isfinite(ms) ? std::to_string(ms) + " ms/step" : why));
    };

    for (const auto& f : kernel_families()) {
        if (std::find(f.backends.begin(), f.backends.end(), backend) == f.backends.end()) continue;
        // Variants first, then each parameter with the chosen variant; one key at a time.
        // A parameter is measured only when the winning variant reads it (block_q with flash, not cudnn).
        struct Key { std::string key; std::vector<std::string> values; const KernelParam* param; };
        std::vector<Key> keys;
        keys.push_back({"kernels." + f.name, f.variants, nullptr});
        for (const auto& p : f.params) {
            std::vector<std::string> vals;
            for (int v : p.values) vals.push_back(std::to_string(v));
            keys.push_back({"kernels." + f.name + "." + p.name, vals, &p});
        }
        for (const auto& [key, values, param] : keys) {
            if (values.size() < 2) continue;
            if (param && !param->variants.empty()) {
                const auto it = current.find("kernels." + f.name);
                const std::string chosen = it == current.end() ? f.variants.front() : it->second;
                if (std::find(param->variants.begin(), param->variants.end(), chosen) == param->variants.end()) continue;
            }
            std::string why;
            Overrides def = current;
            def.erase(key);
            const double def_ms = measure(def, &why);
            record(f.name, key, values.front(), def_ms, why);
            std::string best = values.front();
            double best_ms = def_ms;
            for (size_t i = 1; i < values.size(); i++) {
                Overrides ov = def;
                ov[key] = values[i];
                const double ms = measure(ov, &why);
                record(f.name, key, values[i], ms, why);
                // A variant must be at least 2% faster than the best so far to displace it:
                // noise alone should not flip a choice.
                if (std::isfinite(ms) && (!std::isfinite(best_ms) || ms < 0.98 * best_ms)) {
                    best = values[i];
                    best_ms = ms;
                }
            }
            if (best != values.front()) current[key] = best;
            say("winner " + key + "=" + best);
        }
    }
    res.chosen = current;
    Json entry = Json::object();
    entry.set("kernels", overrides_json(current));
    entry.set("measured", measured);
    entry.set("backend", backend);
    cache.find("entries");
    for (auto& [k, v] : cache.obj)
        if (k == "entries") v.set(res.key, entry);
    fs::create_directories(fs::path(cache_path).parent_path());
    write_file_atomic(cache_path, cache.dump() + "\n");
    say("cached in " + cache_path);
    res.report = entry;
    return res;
}

}  // namespace gpt::search
