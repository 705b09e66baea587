#include "search/search_cli.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>

#include "kernels/error.h"
#include "search/autotune.h"
#include "search/journal.h"
#include "search/report.h"
#include "search/runner.h"
#include "search/space.h"
#include "train/cli_args.h"

namespace fs = std::filesystem;

namespace gpt::search {

namespace {

const char* kHelp = R"(usage: gpt search SPACE.yaml [--out DIR] [--strategy S] [--trials N] [--budget-s X] [--parallel N]
                  [--seed N] [--baseline-repeats K] [--proposer CMD] [--autotune] [--autotune-cache FILE]
                  [--gpt-binary PATH] [--quiet]
       gpt search --resume DIR [--trials N] [--parallel N] [--gpt-binary PATH] [--proposer CMD] [--quiet]
       gpt search report DIR
       gpt search check SPACE.yaml
       gpt search tune [-c FILE] [--set key=value ...] [--cache FILE] [--repeats N] [--force] [--out DIR] [--gpt-binary PATH]

Searches kernel choices and hyperparameters for the config that reaches the target
validation loss soonest (or the lowest loss at a fixed budget). The search owns the
task and the measurement (data, target, budget, validation set, evaluation grid,
seeds); candidates change model, optim, schedule, batch and kernel keys. Each
candidate (a trial) runs in pairs with a fresh run of the incumbent, same seed, at
the same time, and is kept only when the paired ratios show a gain of min_gain at a
stated false-keep rate (a sequential t test: more pairs while it is ambiguous, up to
search.max_pairs). Kernel-only changes are judged by paired `gpt bench step` runs and
a loss check. search/README.md states the protocol.

  SPACE.yaml       the base config, the dimensions, the constraints and the settings
                   (search/README.md; example: configs/search-tiny.yaml)
  --out DIR        the search directory: journal.jsonl, trials/, report.md,
                   progress.svg, curves.svg, best.yaml (default runs/search-<date>-<time>)
  --strategy S     hill_climb, halving, random, evolution or external
  --proposer CMD   strategy external: a command that reads the journal and the space
                   as JSON on stdin and prints the next candidates as JSON
                   (tools/search-proposer-example.py)
  --parallel N     trials at once (default: the CUDA devices for cuda, else 1);
                   trial i gets CUDA_VISIBLE_DEVICES=<its slot>
  --gpt-binary P   what runs the trials (default: this executable)
  --resume DIR     continue a search after a kill: finished runs are kept, the
                   ones in flight run again (--proposer may replace the command)
  --trials N       candidates to try (search.max_trials; the baseline does not count)
  report DIR       (re)writes report.md, progress.svg, curves.svg and best.yaml
  check SPACE      validates a space file and prints its dimensions
  tune             times every kernel variant the backend reads on the config's
                   shapes, checks each against the default's losses, and caches the
                   winners ($XDG_CACHE_HOME/gpt/autotune.json, or --cache)
)";

using Args = CliOptions;

// Search commands take any number of plain arguments (space files, directories).
Args parse_args(const std::string& cmd, const std::vector<std::string>& args, const std::set<std::string>& with_value,
                const std::set<std::string>& switches) {
    return parse_cli_options(cmd, args, with_value, switches, SIZE_MAX);
}

int to_int(const std::string& flag, const std::string& s, int min) { return parse_int_option(flag, s, min); }

std::string self_exe() {
    std::error_code ec;
    const std::string p = fs::read_symlink("/proc/self/exe", ec).string();
    if (ec) run_failed("cannot find this executable (/proc/self/exe): " + ec.message());
    return p;
}

std::string gpt_binary(const Args& a) {
    if (!a.has("--gpt-binary")) return self_exe();
    const std::string p = fs::absolute(a.get("--gpt-binary")).string();
    if (!fs::is_regular_file(p)) bad_input("--gpt-binary: '" + a.get("--gpt-binary") + "' is not a file");
    return p;
}

int cmd_tune(const std::vector<std::string>& rest, const std::string& default_yaml) {
    Args a = parse_args("search tune", rest, {"--config", "--set", "--cache", "--repeats", "--out", "--gpt-binary"}, {"--force", "--quiet"});
    if (a.has("--help")) {
        std::printf("%s", kHelp);
        return 0;
    }
    const Config cfg = a.has("--config") ? load_config(a.get("--config"), a.sets) : parse_config_text(default_yaml, "embedded configs/tiny.yaml", a.sets);
    TuneOptions t;
    t.gpt_binary = gpt_binary(a);
    t.cache_path = a.get("--cache");
    t.work_dir = a.get("--out");
    if (a.has("--repeats")) t.repeats = to_int("--repeats", a.get("--repeats"), 1);
    t.force = a.has("--force");
    t.quiet = a.has("--quiet");
    const TuneResult r = autotune(config_to_yaml(cfg), t);
    std::printf("autotune %s (%s)\n", r.key.c_str(), r.from_cache ? "from the cache" : "measured");
    if (const Json* m = r.report.find("measured"))
        for (const auto& e : m->arr)
            std::printf("  %-32s %-12s %s\n", e.string("key").c_str(), e.string("value").c_str(),
                        e.find("median_ms") && e.find("median_ms")->is_number() ? (std::to_string(e.number("median_ms")) + " ms/step").c_str()
                                                                                  : e.string("status").c_str());
    std::printf("chosen: %s\n", r.chosen.empty() ? "the defaults" : overrides_text(r.chosen).c_str());
    // The winners as config lines, ready for a config's kernels section or --set.
    for (const auto& [k, v] : r.chosen) std::printf("  --set %s=%s\n", k.c_str(), v.c_str());
    return 0;
}

}  // namespace

int search_main(const std::vector<std::string>& args, const std::string& default_config_yaml) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::printf("%s", kHelp);
        return args.empty() ? 2 : 0;
    }
    if (args[0] == "tune") return cmd_tune({args.begin() + 1, args.end()}, default_config_yaml);
    auto wants_help = [&](const std::vector<std::string>& a) {
        return std::find_if(a.begin() + 1, a.end(), [](const std::string& x) { return x == "--help" || x == "-h"; }) != a.end();
    };
    if (args[0] == "report") {
        if (wants_help(args)) {
            std::printf("usage: gpt search report DIR\n\n(Re)writes DIR/report.md, DIR/progress.svg, DIR/curves.svg and DIR/best.yaml from DIR/journal.jsonl.\n");
            return 0;
        }
        if (args.size() != 2) bad_input("usage: gpt search report DIR");
        if (!args[1].empty() && args[1][0] == '-') bad_input("gpt search report: unknown option '" + args[1] + "' (usage: gpt search report DIR)");
        write_report(args[1]);
        std::printf("wrote %s/report.md, %s/progress.svg, %s/curves.svg, %s/best.yaml\n", args[1].c_str(), args[1].c_str(), args[1].c_str(),
                    args[1].c_str());
        return 0;
    }
    if (args[0] == "check") {
        if (wants_help(args)) {
            std::printf("usage: gpt search check SPACE.yaml\n\nLoads and checks a space file (every key, range, constraint and protected key) and runs nothing.\n");
            return 0;
        }
        if (args.size() != 2) bad_input("usage: gpt search check SPACE.yaml");
        if (!args[1].empty() && args[1][0] == '-') bad_input("gpt search check: unknown option '" + args[1] + "' (usage: gpt search check SPACE.yaml)");
        const Space sp = load_space(args[1]);
        std::printf("%s: ok, %zu dimension(s), %zu constraint(s), strategy %s, objective %s\n", args[1].c_str(), sp.dims.size(),
                    sp.constraints.size(), sp.settings.strategy.c_str(), sp.settings.objective.c_str());
        std::printf("%s\n", sp.to_json().dump().c_str());
        // What every trial starts from: the base with the search's evaluation protocol.
        std::printf("\nbase config (every trial is this plus its overrides):\n%s", sp.base_yaml.c_str());
        return 0;
    }

    Args a = parse_args("search", args,
                        {"--out", "--strategy", "--trials", "--budget-s", "--parallel", "--seed", "--baseline-repeats", "--proposer",
                         "--autotune-cache", "--gpt-binary", "--resume"},
                        {"--autotune", "--quiet"});
    if (a.has("--help")) {
        std::printf("%s", kHelp);
        return 0;
    }
    RunOptions opt;
    opt.gpt_binary = gpt_binary(a);
    opt.quiet = a.has("--quiet");
    opt.autotune_cache = a.get("--autotune-cache");
    if (a.has("--parallel")) opt.parallel = to_int("--parallel", a.get("--parallel"), 1);

    Space sp;
    if (a.has("--resume")) {
        if (!a.positional.empty()) bad_input("gpt search --resume DIR takes no space file: the search continues with the space it started with");
        for (const char* f : {"--strategy", "--budget-s", "--seed", "--baseline-repeats", "--autotune", "--out"})
            if (a.has(f))
                bad_input(std::string("option '") + f + "' cannot change a search being resumed (only --trials, --parallel, --gpt-binary, --proposer)");
        opt.dir = a.get("--resume");
        opt.resume = true;
        opt.proposer = a.get("--proposer");
        const auto records = read_journal(opt.dir + "/journal.jsonl");
        if (records.empty() || records.front().string("type") != "search") bad_input(opt.dir + "/journal.jsonl: no search header record");
        const Json& h = records.front();
        const std::string origin = h.string("space_file");
        sp = parse_space(h.string("space_text"), origin, fs::path(origin).parent_path().string(), h.string("base_yaml"));
    } else {
        if (a.positional.size() != 1) bad_input("gpt search needs one space file (gpt search SPACE.yaml; see gpt search --help)");
        const std::string path = a.positional[0];
        // Command-line settings go into the space text itself, so they are
        // checked like the file's and a resumed search sees them.
        std::map<std::string, std::string> changes;
        const std::map<std::string, std::string> flag_keys = {{"--strategy", "strategy"}, {"--budget-s", "budget_s"}, {"--seed", "seed"},
                                                              {"--baseline-repeats", "baseline_repeats"}, {"--proposer", "proposer"},
                                                              {"--trials", "max_trials"}};
        for (const auto& [flag, key] : flag_keys)
            if (a.has(flag)) changes[key] = a.get(flag);
        if (a.has("--autotune")) changes["autotune"] = "true";
        sp = load_space(path);
        if (!changes.empty()) {
            YAML::Node root = YAML::Load(sp.text);  // load_space checked it
            Json sj = Json::object();
            for (const auto& [k, v] : changes) {
                root["search"][k] = v;
                sj.set(k, v);
            }
            YAML::Emitter em;
            em << root;
            const std::string dir = fs::path(path).parent_path().string();
            sp = parse_space(em.c_str(), path, dir.empty() ? "." : dir);
            opt.settings_json = sj.dump();
        }
        if (a.has("--out")) {
            opt.dir = a.get("--out");
        } else {
            char buf[64];
            const std::time_t t = std::time(nullptr);
            std::strftime(buf, sizeof buf, "runs/search-%Y%m%d-%H%M%S", std::localtime(&t));
            opt.dir = buf;
        }
        // The base file is read once, here: the run directory keeps the effective config.
        sp.origin = fs::absolute(path).string();
    }
    if (a.has("--trials")) sp.settings.max_trials = to_int("--trials", a.get("--trials"), 1);
    fs::create_directories(opt.dir);
    return run_search(std::move(sp), opt);
}

}  // namespace gpt::search
