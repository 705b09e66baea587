// gpt search end to end on the CPU with a very small model (1 layer, C=32,
// T=32): each trial trains for about a second. The tests read the journal
// the search writes, so a wrong status, a lost or repeated trial, or a gain
// that is not there fails them.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/json.h"
#include "search/space.h"
#include <algorithm>
#include "test_util.h"

namespace fs = std::filesystem;
using gpt::Json;
using gpt::parse_json;
using gpt::test::read_file;
using gpt::test::run_gpt;
using gpt::test::TempDir;
using gpt::test::write_file;

namespace {

// The base of every test space: a model small enough that a trial is ~1 s.
// optim.lr is 1e-4, 30x below the tiny config's 3e-3: a deliberately poor baseline.
std::string space_yaml(const std::string& search, const std::string& space, const std::string& extra_base = "") {
    return "base:\n"
           "  file: " + gpt::test::source_path("configs/tiny.yaml") + "\n"
           "  set:\n"
           "    model.n_layer: 1\n"
           "    model.n_embd: 32\n"
           "    model.n_head: 2\n"
           "    model.seq_len: 32\n"
           "    run.batch_size: 8\n"
           "    run.threads: 1\n"
           "    run.max_steps: 0\n"
           "    run.val_every: 20\n"
           "    run.val_batches: 4\n"
           "    optim.lr: 1.0e-4\n"
           "    schedule.type: constant\n"
           "    schedule.warmup_steps: 0\n" +
           extra_base + "search:\n" + search + "space:\n" + space;
}

std::vector<Json> journal(const std::string& dir) {
    std::vector<Json> out;
    std::istringstream in(read_file(dir + "/journal.jsonl"));
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) out.push_back(parse_json(line));  // throws (fails the test) on a bad line
    return out;
}

std::vector<Json> trials(const std::vector<Json>& records) {
    std::vector<Json> out;
    for (const auto& r : records)
        if (r.string("type") == "trial") out.push_back(r);
    return out;
}

std::string search_cmd(const std::string& space, const std::string& out, const std::string& extra = "") {
    return "search " + space + " --out " + out + " " + extra;
}

double metric(const Json& t, const char* key) {
    const Json* m = t.find("metrics");
    return m ? m->number(key, NAN) : NAN;
}

}  // namespace

TEST(Search, HillClimbFromPoorBaselineNeedsHalfTheSteps) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    // Unloaded, the baseline reaches 3.9 in about 0.5 s: the 4 s budget leaves room for a busy machine.
    write_file(space, space_yaml("  objective: time_to_target\n"
                                 "  target_val_loss: 3.9\n"
                                 "  budget_s: 4\n"
                                 "  grace_s: 20\n"
                                 "  strategy: hill_climb\n"
                                 "  max_trials: 12\n"
                                 "  mutations: 2\n"
                                 "  seed: 1\n",
                                 "  optim.lr: {float: [1.0e-5, 1.0e-1], scale: log}\n"
                                 "  optim.weight_decay: {choices: [0.0, 0.1]}\n"
                                 "constraints:\n  - \"model.n_embd % model.n_head == 0\"\n"));
    const auto r = run_gpt(search_cmd(space, out));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto ts = trials(journal(out));
    ASSERT_GE(ts.size(), 12u) << r.output;

    // The baseline: 3 runs with different seeds, all reaching the target.
    std::vector<double> base;
    std::set<double> seeds;
    for (const auto& t : ts)
        if (t.string("role") == "baseline") {
            ASSERT_EQ(t.string("status"), "keep") << t.dump();
            ASSERT_TRUE(t.find("metrics")->boolean("hit")) << "the baseline must reach the target in the budget: " << t.dump();
            base.push_back(metric(t, "steps"));
            seeds.insert(t.number("seed"));
        }
    ASSERT_EQ(base.size(), 3u);
    EXPECT_EQ(seeds.size(), 3u) << "baseline repeats must use different seeds";
    double base_mean = 0;
    for (double b : base) base_mean += b / 3;

    // Kept steps: a candidate kept by the noise rule, then confirmed with a fresh seed.
    double best_tts = INFINITY;
    int confirmed = 0;
    for (const auto& t : ts) {
        if (t.string("role") != "confirm" || t.string("status") != "keep") continue;
        confirmed++;
        const Json* cand = nullptr;
        for (const auto& c : ts)
            if (c.number("id") == t.number("parent")) cand = &c;
        ASSERT_NE(cand, nullptr);
        EXPECT_EQ(cand->string("status"), "keep");
        EXPECT_EQ(cand->string("rule"), "noise");
        EXPECT_NE(t.number("seed"), cand->number("seed")) << "a confirmation runs with a fresh seed";
        EXPECT_TRUE(cand->find("diff")->find("optim.lr") || cand->find("diff")->find("optim.weight_decay")) << cand->dump();
        // Both runs of the kept config must reach the target; the slower one counts.
        ASSERT_TRUE(t.find("metrics")->boolean("hit") && cand->find("metrics")->boolean("hit"));
        best_tts = std::min(best_tts, std::max(metric(t, "steps"), metric(*cand, "steps")));
    }
    ASSERT_GE(confirmed, 1) << "no kept step in the journal:\n" << r.output;
    // Judged by steps to the target (the run stops there), which one thread makes deterministic, not by seconds.
    std::printf("[ search ] baseline steps to target %.1f (mean of 3), best kept %.0f: %.1fx\n", base_mean, best_tts, base_mean / best_tts);
    EXPECT_LE(2 * best_tts, base_mean) << r.output;

    // The report, the plot and a runnable best.yaml.
    const std::string md = read_file(out + "/report.md");
    EXPECT_NE(md.find("## Kept changes"), std::string::npos);
    EXPECT_NE(md.find("optim.lr="), std::string::npos);
    const std::string svg = read_file(out + "/progress.svg");
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find("<path"), std::string::npos) << "the running-best line";
    const auto cfg = run_gpt("config -c " + out + "/best.yaml --json");
    ASSERT_EQ(cfg.code, 0) << cfg.output;
    EXPECT_EQ(parse_json(cfg.output).find("optim")->number("lr") > 2e-4, true) << cfg.output;
}

TEST(Search, CrashTimeoutAndInvalidTrialsAreRecordedAndTheSearchGoesOn) {
    TempDir tmp;
    const std::string out = tmp.file("out");
    // A wrapper around gpt that aborts for one marked config and hangs for another.
    const std::string wrapper = tmp.file("gpt-wrapper.sh");
    write_file(wrapper, "#!/bin/sh\n"
                        "for a in \"$@\"; do case \"$a\" in *.yaml) cfg=\"$a\";; esac; done\n"
                        "if [ -n \"$cfg\" ] && grep -q 'eps: 7.77e-7$' \"$cfg\"; then echo 'wrapper: aborting on purpose' >&2; kill -ABRT $$; fi\n"
                        "if [ -n \"$cfg\" ] && grep -q 'eps: 8.88e-7$' \"$cfg\"; then sleep 120; fi\n"
                        "exec " GPT_BINARY " \"$@\"\n");
    fs::permissions(wrapper, fs::perms::owner_all);
    // A proposer that answers from a script: crash, hang, out of range, then a normal candidate.
    const std::string proposer = tmp.file("proposer.sh");
    write_file(proposer, "#!/bin/sh\ncat > /dev/null\n"
                         "n=$(cat " + tmp.file("count") + " 2>/dev/null || echo 0); echo $((n+1)) > " + tmp.file("count") + "\n"
                         "case $n in\n"
                         "  0) echo '{\"candidates\":[{\"set\":{\"optim.eps\":7.77e-7},\"note\":\"crash\"}]}';;\n"
                         "  1) echo '{\"candidates\":[{\"set\":{\"optim.eps\":8.88e-7},\"note\":\"hang\"}]}';;\n"
                         "  2) echo '{\"candidates\":[{\"set\":{\"optim.lr\":5},\"note\":\"out of range\"}]}';;\n"
                         "  3) echo '{\"candidates\":[{\"set\":{\"optim.lr\":0.0003},\"note\":\"fine\"}]}';;\n"
                         "  *) echo '{\"stop\":true}';;\n"
                         "esac\n");
    fs::permissions(proposer, fs::perms::owner_all);
    const std::string space = tmp.file("space.yaml");
    write_file(space, space_yaml("  objective: time_to_target\n  target_val_loss: 3.8\n  budget_s: 1\n  grace_s: 2.5\n"
                                 "  strategy: external\n  proposer: " + proposer + "\n  baseline_repeats: 1\n  max_trials: 10\n",
                                 "  optim.lr: {float: [1.0e-5, 1.0e-1], scale: log}\n"
                                 "  optim.eps: {choices: [1.0e-8, 7.77e-7, 8.88e-7]}\n"));
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = run_gpt(search_cmd(space, out, "--gpt-binary " + wrapper));
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_LT(wall, 40) << "the hanging trial must be killed at budget + grace";
    std::map<std::string, Json> by_note;
    for (const auto& t : trials(journal(out))) by_note[t.string("note")] = t;
    ASSERT_TRUE(by_note.count("proposer: crash")) << r.output;
    const Json& crash = by_note["proposer: crash"];
    EXPECT_EQ(crash.string("status"), "crash") << crash.dump();
    EXPECT_NE(crash.string("reason").find("signal 6"), std::string::npos) << crash.dump();
    EXPECT_NE(crash.string("stderr_tail").find("aborting on purpose"), std::string::npos) << crash.dump();
    const Json& hang = by_note["proposer: hang"];
    EXPECT_EQ(hang.string("status"), "timeout") << hang.dump();
    EXPECT_GE(metric(hang, "wall_s"), 3.5 - 0.1) << "killed at budget (1 s) + grace (2.5 s), not before";
    EXPECT_LT(metric(hang, "wall_s"), 10);
    const Json& bad = by_note["proposer: out of range"];
    EXPECT_EQ(bad.string("status"), "invalid") << bad.dump();
    EXPECT_NE(bad.string("reason").find("optim.lr"), std::string::npos) << bad.dump();
    EXPECT_FALSE(bad.find("metrics")) << "an invalid candidate is never launched";
    const Json& fine = by_note["proposer: fine"];
    EXPECT_TRUE(fine.string("status") == "keep" || fine.string("status") == "discard") << fine.dump();
    EXPECT_TRUE(std::isfinite(metric(fine, "score"))) << fine.dump();
    // The report lists the failures with their stderr.
    EXPECT_NE(read_file(out + "/report.md").find("aborting on purpose"), std::string::npos);
}

TEST(Search, KilledSearchResumesWithoutLosingOrRepeatingTrials) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    write_file(space, space_yaml("  objective: time_to_target\n  target_val_loss: 3.8\n  budget_s: 0.6\n  grace_s: 20\n"
                                 "  strategy: hill_climb\n  baseline_repeats: 2\n  max_trials: 8\n",
                                 "  optim.lr: {float: [1.0e-5, 1.0e-1], scale: log}\n"
                                 "  optim.weight_decay: {choices: [0.0, 0.1]}\n"));
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(GPT_BINARY, GPT_BINARY, "search", space.c_str(), "--out", out.c_str(), (char*)nullptr);
        _exit(127);
    }
    // Kill it (SIGKILL: no chance to clean up) once three trials are journaled.
    const auto t0 = std::chrono::steady_clock::now();
    size_t before = 0;
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(90)) {
        if (fs::exists(out + "/journal.jsonl")) {
            try {
                before = trials(journal(out)).size();
            } catch (...) {
                before = 0;  // a line being written
            }
            if (before >= 3) break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the search finished before it could be killed";
    ASSERT_GE(before, 3u);
    const std::string kept_text = read_file(out + "/journal.jsonl");
    const auto before_records = trials(journal(out));
    // A write cut by the kill leaves a torn last line: resume must ignore it with a warning.
    {
        std::ofstream f(out + "/journal.jsonl", std::ios::app);
        f << "{\"type\":\"trial\",\"id\":77,\"sta";
    }
    const auto r = run_gpt("search --resume " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("torn"), std::string::npos) << r.output;
    // Nothing finished before the kill was lost or changed...
    const std::string after_text = read_file(out + "/journal.jsonl");
    ASSERT_EQ(after_text.compare(0, kept_text.size(), kept_text), 0) << "the journal's first records changed on resume";
    // ...and every trial id appears exactly once, with no gap.
    const auto after = trials(journal(out));
    std::map<int, int> count;
    for (const auto& t : after) count[int(t.number("id"))]++;
    EXPECT_GE(after.size(), 8u);
    EXPECT_GT(after.size(), before_records.size());
    for (int id = 0; id < int(count.size()); id++) EXPECT_EQ(count[id], 1) << "trial " << id << " appears " << count[id] << " times";
    EXPECT_EQ(count.rbegin()->first, int(count.size()) - 1);
}

TEST(Search, ExternalProposerExampleRoundTrips) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    const std::string proposer = "python3 " + gpt::test::source_path("tools/search-proposer-example.py");
    write_file(space, space_yaml("  objective: loss_at_budget\n  budget_s: 0.4\n  grace_s: 20\n"
                                 "  strategy: external\n  proposer: " + proposer + "\n  baseline_repeats: 1\n  max_trials: 4\n",
                                 "  optim.lr: {float: [1.0e-5, 1.0e-1], scale: log}\n"
                                 "  schedule.type: {choices: [constant, cosine, wsd]}\n"
                                 "  schedule.warmup_steps: {int: [0, 20]}\n",
                                 "    schedule.steps: 2000\n"));
    const auto r = run_gpt(search_cmd(space, out));
    ASSERT_EQ(r.code, 0) << r.output;
    int proposed = 0;
    for (const auto& t : trials(journal(out))) {
        if (t.string("role") != "candidate") continue;
        proposed++;
        EXPECT_EQ(t.string("note").rfind("proposer: perturbs", 0), 0u) << t.dump();
        EXPECT_NE(t.string("status"), "invalid") << t.dump();
        EXPECT_NE(t.string("status"), "crash") << t.dump();
        EXPECT_FALSE(t.find("diff")->obj.empty()) << "the example changes one or two keys: " << t.dump();
    }
    EXPECT_GE(proposed, 3);
    // The request the proposer read: the protocol's fields, the journal so far.
    const Json req = parse_json(read_file(out + "/proposer/batch1.request.json"));
    EXPECT_EQ(req.number("protocol"), 1);
    EXPECT_TRUE(req.find("space")->find("dimensions")->find("optim.lr"));
    EXPECT_EQ(req.find("space")->find("dimensions")->find("optim.lr")->string("scale"), "log");
    EXPECT_EQ(req.find("journal")->arr.size(), 1u) << "the baseline run";
    EXPECT_TRUE(req.find("baseline")->find("mean")->is_number());
    const Json ans = parse_json(read_file(out + "/proposer/batch1.answer.json"));
    EXPECT_EQ(ans.find("candidates")->arr.size(), 1u);
}

TEST(Search, CandidateIdenticalToTheBaselineIsNotKept) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    // min_gain 0: only the measured noise stands between a copy of the baseline and "keep".
    const std::string proposer = tmp.file("proposer.sh");
    write_file(proposer, "#!/bin/sh\ncat > /dev/null\n"
                         "n=$(cat " + tmp.file("count") + " 2>/dev/null || echo 0); echo $((n+1)) > " + tmp.file("count") + "\n"
                         "case $n in\n"
                         "  0) echo '{\"candidates\":[{\"set\":{},\"note\":\"copy\"}]}';;\n"
                         "  1) echo '{\"candidates\":[{\"set\":{\"optim.lr\":0.0001},\"note\":\"same value\"}]}';;\n"
                         "  *) echo '{\"stop\":true}';;\n"
                         "esac\n");
    fs::permissions(proposer, fs::perms::owner_all);
    write_file(space, space_yaml("  objective: loss_at_budget\n  budget_s: 30\n  grace_s: 30\n  min_gain: 0\n"
                                 "  strategy: external\n  proposer: " + proposer + "\n  baseline_repeats: 3\n  max_trials: 10\n",
                                 "  optim.lr: {float: [1.0e-5, 1.0e-1], scale: log}\n",
                                 "    run.max_steps: 60\n"));
    const auto r = run_gpt(search_cmd(space, out));
    ASSERT_EQ(r.code, 0) << r.output;
    int copies = 0;
    for (const auto& t : trials(journal(out))) {
        if (t.string("role") == "baseline") EXPECT_EQ(t.string("status"), "keep");
        if (t.string("role") != "candidate") continue;
        copies++;
        EXPECT_EQ(t.string("status"), "discard") << t.dump();
        EXPECT_EQ(t.string("rule"), "noise") << t.dump();
        EXPECT_TRUE(t.find("diff")->obj.empty()) << t.dump();
        EXPECT_LE(t.number("gain"), t.number("threshold")) << t.dump();
    }
    EXPECT_EQ(copies, 2);
    EXPECT_NE(read_file(out + "/report.md").find("None: no candidate"), std::string::npos);
}

TEST(Search, BadSpaceFilesExitTwoNamingTheKey) {
    TempDir tmp;
    const std::string good_search = "  objective: time_to_target\n  target_val_loss: 3.8\n  budget_s: 1\n";
    const std::string good_space = "  optim.lr: {float: [1.0e-5, 1.0e-1], scale: log}\n";
    struct Case {
        std::string name, yaml, expect;
    };
    const std::vector<Case> cases = {
        {"unknown section", space_yaml(good_search, good_space) + "serch: {}\n", "serch"},
        {"unknown setting", space_yaml(good_search + "  budget: 3\n", good_space), "search.budget"},
        {"bad strategy", space_yaml(good_search + "  strategy: gradient_descent\n", good_space), "search.strategy"},
        {"unknown config key", space_yaml(good_search, "  optim.learning_rate: {float: [1.0e-4, 1.0e-2]}\n"), "optim.learning_rate"},
        {"reversed range", space_yaml(good_search, "  optim.lr: {float: [1.0e-2, 1.0e-4]}\n"), "bad range"},
        {"log range from 0", space_yaml(good_search, "  optim.weight_decay: {float: [0, 0.1], scale: log}\n"), "optim.weight_decay"},
        {"value the config rejects", space_yaml(good_search, "  optim.beta2: {float: [0.9, 1.5]}\n"), "optim.beta2"},
        {"unknown dimension field", space_yaml(good_search, "  optim.lr: {float: [1.0e-5, 1.0e-1], scael: log}\n"), "optim.lr.scael"},
        {"bad choice type", space_yaml(good_search, "  run.batch_size: {choices: [8, big]}\n"), "run.batch_size"},
        {"unknown kernel family", space_yaml(good_search, "  kernels.softmax: {choices: [fast]}\n"), "kernels.softmax"},
        {"constraint on an unknown key", space_yaml(good_search, good_space) + "constraints:\n  - \"model.n_emb % model.n_head == 0\"\n", "model.n_emb"},
        {"constraint syntax", space_yaml(good_search, good_space) + "constraints:\n  - \"model.n_embd % (model.n_head == 0\"\n", "constraints[0]"},
        {"constraint the base violates", space_yaml(good_search, good_space) + "constraints:\n  - \"model.n_embd == 64\"\n", "constraints[0]"},
        {"time to target without evaluations", space_yaml(good_search, good_space, "    run.val_every: 0\n"), "run.val_every"},
    };
    for (const auto& c : cases) {
        const std::string path = tmp.file("bad.yaml");
        write_file(path, c.yaml);
        const auto r = run_gpt(search_cmd(path, tmp.file("out-" + std::to_string(&c - cases.data()))));
        EXPECT_EQ(r.code, 2) << c.name << ": " << r.output;
        EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.name << ": the message must name '" << c.expect << "': " << r.output;
        EXPECT_FALSE(fs::exists(tmp.file("out-" + std::to_string(&c - cases.data())) + "/journal.jsonl")) << c.name << ": nothing may run";
    }
    // The good space passes `gpt search check`.
    write_file(tmp.file("good.yaml"), space_yaml(good_search, good_space));
    const auto ok = run_gpt("search check " + tmp.file("good.yaml"));
    EXPECT_EQ(ok.code, 0) << ok.output;
}

// Everything that defines the task or the measurement belongs to the search:
// every config key outside model.*, optim.*, schedule.*, kernels.* and the
// batch keys is refused as a dimension, by `gpt search check` and at load,
// with exit code 2, naming the key and why. The keys come from the schema
// itself (gpt config --reference), so a key added later is covered too.
TEST(Search, ProtectedKeysAreRefusedAsDimensions) {
    TempDir tmp;
    const auto ref = run_gpt("config --reference");
    ASSERT_EQ(ref.code, 0) << ref.output;
    std::vector<std::string> forbidden, allowed;
    std::istringstream in(ref.output);
    std::string line;
    while (std::getline(in, line)) {
        const std::string key = line.substr(0, line.find(' '));
        if (key.find('.') == std::string::npos || key.find('<') != std::string::npos) continue;
        (gpt::search::protected_reason(key).empty() ? allowed : forbidden).push_back(key);
    }
    // The attacks of issue 11 among them: an easier task, a smaller validation set, denser evaluations, seeds, budget, paths.
    for (const char* k : {"data.synthetic.sharpness", "data.val", "data.train", "run.val_every", "run.val_batches", "run.budget_s", "run.seed",
                          "run.target_val_loss", "run.target_metric", "run.warmup_pass", "run.max_steps", "run.out_dir", "run.sample_every",
                          "run.log_every", "run.val_tokens", "run.val_seq_len", "run.val_every_tokens", "run.step_clock", "run.dist_timeout_s"})
        EXPECT_NE(std::find(forbidden.begin(), forbidden.end(), k), forbidden.end()) << k << " must be protected";
    for (const char* k : {"optim.lr", "model.n_head", "schedule.type", "run.batch_size", "run.total_batch_tokens", "run.seq_len"})
        EXPECT_NE(std::find(allowed.begin(), allowed.end(), k), allowed.end()) << k << " must be searchable";
    for (const auto& k : allowed) {
        const bool ok = k.rfind("model.", 0) == 0 || k.rfind("optim.", 0) == 0 || k.rfind("schedule.", 0) == 0 || k == "run.batch_size" ||
                        k == "run.total_batch_tokens" || k == "run.seq_len";
        EXPECT_TRUE(ok) << k << " is searchable but is not a model, optimizer, schedule or batch key";
    }
    EXPECT_TRUE(gpt::search::protected_reason("kernels.attention.block_q").empty());
    EXPECT_TRUE(gpt::search::protected_reason("optim.some_future_key").empty()) << "keys added later in these sections are searchable";
    EXPECT_FALSE(gpt::search::protected_reason("run.some_future_key").empty());
    ASSERT_GE(forbidden.size(), 25u);
    const std::string good_search = "  objective: time_to_target\n  target_val_loss: 3.8\n  budget_s: 1\n";
    for (const auto& key : forbidden) {
        const std::string path = tmp.file("space.yaml"), out = tmp.file("out");
        // A value the config accepts for the key: its own default from the base, so only the protection can refuse it.
        const auto cfg = parse_json(run_gpt("config -c " + gpt::test::source_path("configs/tiny.yaml") + " --json").output);
        const Json* v = cfg.find(key.substr(0, key.find('.')));
        for (std::string rest = key.substr(key.find('.') + 1); v && rest.find('.') != std::string::npos; rest = rest.substr(rest.find('.') + 1))
            v = v->find(rest.substr(0, rest.find('.')));
        const std::string leaf = key.substr(key.rfind('.') + 1);
        std::string value = v && v->find(leaf) ? v->find(leaf)->scalar_text() : "1";
        if (value.empty()) value = "x";
        write_file(path, space_yaml(good_search, "  " + key + ": {choices: [\"" + value + "\"]}\n"));
        const auto check = run_gpt("search check " + path);
        EXPECT_EQ(check.code, 2) << key << ": " << check.output;
        EXPECT_NE(check.output.find("'" + key + "' may not be a dimension"), std::string::npos) << key << ": " << check.output;
        const auto run = run_gpt(search_cmd(path, out));
        EXPECT_EQ(run.code, 2) << key << ": " << run.output;
        EXPECT_NE(run.output.find("'" + key + "' may not be a dimension"), std::string::npos) << key << ": " << run.output;
        EXPECT_FALSE(fs::exists(out + "/journal.jsonl")) << key << ": nothing may run";
        fs::remove_all(out);
    }
}

// The search fixes the evaluation protocol in the base config: a fixed
// validation set, evaluations on a grid of tokens, the median step clock. A
// target below the source's loss floor is refused before anything runs.
TEST(Search, ProtocolIsFixedAndTargetBelowTheFloorIsRefused) {
    TempDir tmp;
    const std::string path = tmp.file("space.yaml");
    write_file(path, space_yaml("  objective: time_to_target\n  target_val_loss: 3.8\n  budget_s: 1\n  val_tokens: 640\n  val_seq_len: 16\n",
                                "  run.batch_size: {choices: [8, 16]}\n"));
    const auto ok = run_gpt("search check " + path);
    ASSERT_EQ(ok.code, 0) << ok.output;
    const size_t brace = ok.output.find('{');
    const Json settings = *parse_json(ok.output.substr(brace, ok.output.find('\n', brace) - brace)).find("settings");
    EXPECT_EQ(settings.number("val_tokens"), 640);
    EXPECT_EQ(settings.number("val_seq_len"), 16);
    EXPECT_EQ(settings.number("eval_every_tokens"), 20 * 8 * 32) << "from the base's run.val_every x its tokens per step";
    // The order-1 chain over 64 tokens has an entropy of about 2.6 nats: 1.0 is out of reach.
    write_file(path, space_yaml("  objective: time_to_target\n  target_val_loss: 1.0\n  budget_s: 1\n", "  optim.lr: {float: [1.0e-4, 1.0e-2]}\n"));
    const auto low = run_gpt("search " + path + " --out " + tmp.file("out"));
    EXPECT_EQ(low.code, 2) << low.output;
    EXPECT_NE(low.output.find("loss floor"), std::string::npos) << low.output;
    EXPECT_NE(low.output.find("search.target_val_loss"), std::string::npos) << low.output;
    EXPECT_FALSE(fs::exists(tmp.file("out/journal.jsonl")));
}

// Paths: base.file and data globs are relative to the current directory, like
// gpt train's; the journal keeps them absolute. A base.file that only exists
// beside the space file is named in the error. Setting errors carry their line.
TEST(Search, PathsAreRelativeToTheCurrentDirectoryAndErrorsHaveLines) {
    TempDir tmp;
    fs::create_directories(tmp.file("spaces"));
    fs::copy_file(gpt::test::source_path("configs/tiny.yaml"), tmp.file("spaces/base.yaml"));
    const std::string body = "search:\n  objective: loss_at_budget\n  budget_s: 1\nspace:\n  optim.lr: {float: [1.0e-4, 1.0e-2]}\n";
    write_file(tmp.file("spaces/space.yaml"), "base:\n  file: base.yaml\n  set: {data.tokenizer: tok/dir}\n" + body);
    auto in_dir = [&](const std::string& dir, const std::string& args) {
        gpt::test::RunResult r{-1, ""};
        FILE* p = popen(("cd '" + dir + "' && " GPT_BINARY " " + args + " 2>&1").c_str(), "r");
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
        const int st = pclose(p);
        r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        return r;
    };
    const auto missing = in_dir(tmp.path, "search check spaces/space.yaml");
    EXPECT_EQ(missing.code, 2) << missing.output;
    EXPECT_NE(missing.output.find("relative to the current directory"), std::string::npos) << missing.output;
    EXPECT_NE(missing.output.find("spaces/base.yaml"), std::string::npos) << "the error names the file beside the space: " << missing.output;
    const auto found = in_dir(tmp.file("spaces"), "search check space.yaml");
    ASSERT_EQ(found.code, 0) << found.output;
    EXPECT_NE(found.output.find(tmp.file("spaces/tok/dir")), std::string::npos) << "data paths are stored absolute: " << found.output;
    // A bad setting names its line.
    write_file(tmp.file("bad.yaml"), space_yaml("  objective: loss_at_budget\n  budget_s: 1\n  strategy: gradient_descent\n",
                                                "  optim.lr: {float: [1.0e-4, 1.0e-2]}\n"));
    const auto bad = run_gpt("search check " + tmp.file("bad.yaml"));
    EXPECT_EQ(bad.code, 2) << bad.output;
    EXPECT_NE(bad.output.find("bad.yaml:19: search.strategy"), std::string::npos) << bad.output;
    // report and check know --help.
    for (const char* sub : {"report", "check"}) {
        const auto h = run_gpt(std::string("search ") + sub + " --help");
        EXPECT_EQ(h.code, 0) << h.output;
        EXPECT_NE(h.output.find(std::string("usage: gpt search ") + sub), std::string::npos) << h.output;
    }
}

TEST(Search, ParallelTwoRunsTrialsInTwoSlots) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    write_file(space, space_yaml("  objective: loss_at_budget\n  budget_s: 0.5\n  grace_s: 20\n"
                                 "  strategy: random\n  baseline_repeats: 2\n  max_trials: 4\n",
                                 "  optim.lr: {float: [1.0e-4, 1.0e-2], scale: log}\n"));
    const auto r = run_gpt(search_cmd(space, out, "--parallel 2"));
    ASSERT_EQ(r.code, 0) << r.output;
    std::set<int> slots;
    const auto ts = trials(journal(out));
    for (const auto& t : ts) {
        slots.insert(int(t.number("slot")));
        EXPECT_TRUE(t.string("status") == "keep" || t.string("status") == "discard") << t.dump();
    }
    EXPECT_GE(ts.size(), 4u);
    EXPECT_EQ(slots, (std::set<int>{0, 1}));
}

// search.ranks_per_trial: each trial is a data-parallel job of two ranks
// (gpt launch, MPI on the CPU), judged like any other.
TEST(Search, TrialsWithTwoRanksEach) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    write_file(space, space_yaml("  objective: loss_at_budget\n  budget_s: 0.5\n  grace_s: 30\n"
                                 "  strategy: random\n  baseline_repeats: 1\n  max_trials: 2\n  ranks_per_trial: 2\n",
                                 "  optim.lr: {float: [1.0e-4, 1.0e-2], scale: log}\n"));
    const auto r = run_gpt(search_cmd(space, out));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto ts = trials(journal(out));
    ASSERT_GE(ts.size(), 2u);
    for (const auto& t : ts) {
        EXPECT_TRUE(t.string("status") == "keep" || t.string("status") == "discard") << t.dump();
        // The trial's own log says it ran on two ranks.
        const std::string log = read_file(out + "/" + t.string("dir") + "/run/log.jsonl");
        EXPECT_NE(log.find("\"world\":2"), std::string::npos) << t.string("dir");
    }
}

TEST(Search, TuneOnTheCpuPicksBlasAndCachesIt) {
    TempDir tmp;
    const std::string sets =
        "--set model.n_layer=1 --set model.n_embd=32 --set model.n_head=2 --set model.seq_len=32 --set run.batch_size=8 --set run.threads=1";
    const std::string cache = tmp.file("cache/autotune.json");
    const auto r = run_gpt("search tune " + sets + " --cache " + cache + " --repeats 1 --out " + tmp.file("work"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("measured"), std::string::npos) << r.output;
    const Json c = parse_json(read_file(cache));
    ASSERT_EQ(c.find("entries")->obj.size(), 1u);
    const Json& entry = c.find("entries")->obj.front().second;
    EXPECT_EQ(entry.find("kernels")->find("kernels.cpu_matmul"), nullptr) << "blas is the default and must win: " << entry.dump();
    // Every family the CPU backend reads was measured, and loops was slower than blas.
    double blas = NAN, loops = NAN;
    std::set<std::string> families;
    for (const auto& m : entry.find("measured")->arr) {
        families.insert(m.string("family"));
        EXPECT_EQ(m.string("status"), "ok") << m.dump();
        if (m.string("key") == "kernels.cpu_matmul" && m.string("value") == "blas") blas = m.number("median_ms");
        if (m.string("key") == "kernels.cpu_matmul" && m.string("value") == "loops") loops = m.number("median_ms");
    }
    EXPECT_EQ(families, (std::set<std::string>{"layernorm", "gelu", "cpu_matmul"}));
    EXPECT_GT(loops, blas) << entry.dump();
    // The second call reads the cache.
    const auto again = run_gpt("search tune " + sets + " --cache " + cache);
    ASSERT_EQ(again.code, 0) << again.output;
    EXPECT_NE(again.output.find("from the cache"), std::string::npos) << again.output;
}

TEST(Search, KernelOnlyChangeIsJudgedByStepTime) {
    TempDir tmp;
    const std::string space = tmp.file("space.yaml"), out = tmp.file("out");
    write_file(space, space_yaml("  objective: time_to_target\n  target_val_loss: 3.8\n  budget_s: 1\n  grace_s: 20\n"
                                 "  strategy: hill_climb\n  baseline_repeats: 2\n  max_trials: 3\n  kernel_repeats: 2\n",
                                 "  kernels.cpu_matmul: {choices: registry}\n"));
    const auto r = run_gpt(search_cmd(space, out));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto ts = trials(journal(out));
    ASSERT_EQ(ts.size(), 3u) << r.output;
    const Json& k = ts[2];
    EXPECT_EQ(k.find("diff")->string("kernels.cpu_matmul"), "loops") << k.dump();
    EXPECT_EQ(k.string("rule"), "kernel") << k.dump();
    EXPECT_EQ(k.string("status"), "discard") << "loops is slower than blas: " << k.dump();
    EXPECT_GT(metric(k, "step_ms"), metric(k, "ref_step_ms")) << k.dump();
    EXPECT_LE(metric(k, "max_loss_rel_diff"), 1e-3) << "same arithmetic, same losses: " << k.dump();
    EXPECT_EQ(k.find("kernels")->string("cpu_matmul"), "loops") << "each trial records its kernels: " << k.dump();
}
