// Checkpoint writing survives a kill at every namespace change, re-saving a
// step never removes the last good copy, leftovers of dead writers are
// finished or removed (live ones are left alone), pruning orders steps as
// numbers, `latest` is checked, a resumed copy of a run trains into the copy,
// and a new run never mixes with an old one in the same directory.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <sstream>

#include "kernels/error.h"
#include "model/model_file.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using namespace gpt;
using gpt::test::TempDir;

namespace {

// A shell command line; stdout and stderr together, code 128 + N when killed by signal N.
using Shell = gpt::test::RunResult;
Shell sh(const std::string& cmd) { return gpt::test::run_shell(cmd); }

const std::string kGpt = GPT_BINARY;
const std::string kFaultLib = GPT_FAULT_LIB;

// A model small enough that a run is mostly process start-up.
std::string tiny_sets(const std::string& out, int max_steps) {
    return " --set model.n_layer=1 --set model.n_head=2 --set model.n_embd=16 --set model.seq_len=8 --set model.vocab_size=32"
           " --set data.synthetic.vocab=32 --set data.synthetic.order=1 --set run.batch_size=2 --set run.val_batches=1"
           " --set run.val_every=0 --set run.threads=1 --set schedule.warmup_steps=1 --set schedule.steps=6"
           " --set run.checkpoint_every=2 --set run.max_steps=" +
           std::to_string(max_steps) + " --set run.out_dir=" + out + " --quiet";
}

ModelShape small_shape() {
    ModelShape s;
    s.L = 1;
    s.NH = 2;
    s.C = 8;
    s.maxT = 4;
    s.V = 10;
    s.Vp = 128;
    return s;
}

TrainState small_state(int64_t step, size_t n) {
    TrainState st;
    st.step = step;
    st.tokens = step * 8;
    st.train_time_s = double(step);
    st.m.assign(n, 0.25f);
    st.v.assign(n, 0.5f);
    return st;
}

std::vector<std::string> entries(const std::string& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

std::string joined(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += x + " ";
    return s;
}

// The PID of a process that has exited (and been reaped): a dead writer.
pid_t dead_pid() {
    const pid_t p = fork();
    if (p == 0) _exit(0);
    int st;
    waitpid(p, &st, 0);
    return p;
}

bool has_leftover(const std::string& root) {
    for (const auto& n : entries(root))
        if (n.find(".tmp.") != std::string::npos || n.find(".new.") != std::string::npos || n.find(".old.") != std::string::npos ||
            n.find(".del.") != std::string::npos)
            return true;
    return false;
}

void copy_dir(const std::string& from, const std::string& to) {
    fs::remove_all(to);
    fs::copy(from, to, fs::copy_options::recursive);
}

}  // namespace

// Re-saving an existing step (a finished run's last step saved again after
// its final evaluation, a resumed finished run) swaps the copies: step_N is
// complete at every instant, holds the new content, nothing is left behind.
TEST(CheckpointWrite, ResavingAStepReplacesItWhole) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    std::vector<float> p1(n, 1.0f), p2(n, 2.0f);
    save_checkpoint(d.path, s, p1, small_state(4, n), "a: 1\n");
    const std::string ck = save_checkpoint(d.path, s, p2, small_state(4, n), "a: 2\n");
    EXPECT_EQ(ck, d.path + "/checkpoints/step_000004");
    ModelShape r;
    EXPECT_EQ(read_model_file(resolve_checkpoint(d.path) + "/model.bin", r), p2);
    EXPECT_EQ(test::read_file(ck + "/config.yaml"), "a: 2\n");
    EXPECT_EQ(joined(entries(d.path + "/checkpoints")), "latest step_000004 ");
}

// Pruning keeps the newest checkpoints by step number: past step 999,999 the
// names grow a digit, and a string sort would delete the newest ones.
TEST(CheckpointWrite, KeepsTheNewestByNumber) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    std::vector<float> p(n, 1.0f);
    for (int64_t step : {999998, 999999, 1000000, 1000001}) save_checkpoint(d.path, s, p, small_state(step, n), "", 2);
    EXPECT_EQ(joined(entries(d.path + "/checkpoints")), "latest step_1000000 step_1000001 ");
    EXPECT_EQ(resolve_checkpoint(d.path), d.path + "/checkpoints/step_1000001");
    EXPECT_EQ(checkpoint_step_of("step_1000001"), 1000001);
    EXPECT_EQ(checkpoint_step_of("step_"), -1);
    EXPECT_EQ(checkpoint_step_of("step_12.tmp.5"), -1);
    EXPECT_EQ(checkpoint_step_of("step_99999999999999999999999"), -1);
}

// Leftovers of writers that died are finished or removed at the next save;
// a live writer's are left alone.
TEST(CheckpointWrite, CleansUpAfterDeadWritersOnly) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    std::vector<float> p(n, 1.0f);
    save_checkpoint(d.path, s, p, small_state(2, n), "");
    const std::string root = d.path + "/checkpoints";
    const std::string dead = std::to_string(dead_pid()), live = std::to_string(getppid());
    fs::create_directories(root + "/step_000004.tmp." + dead);  // a killed write
    test::write_file(root + "/step_000004.tmp." + dead + "/model.bin", "half");
    fs::create_directories(root + "/step_000006.tmp." + live);  // someone writing right now
    fs::create_directories(root + "/step_000001.del." + dead);  // a killed prune
    test::write_file(root + "/latest.tmp." + dead, "step_0000");
    save_checkpoint(d.path, s, p, small_state(3, n), "");
    EXPECT_EQ(joined(entries(root)), "latest step_000002 step_000003 step_000006.tmp." + live + " ");
}

// The window of the no-exchange path: `latest` names step_N, step_N is gone,
// its new copy (complete) and old copy sit beside it. Readers use the new
// copy at once; the next save puts it in place and drops the old one.
TEST(CheckpointWrite, RecoversAStepLeftMissingByAKill) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    std::vector<float> p_old(n, 1.0f), p_new(n, 2.0f);
    const std::string root = d.path + "/checkpoints";
    const std::string dead = std::to_string(dead_pid());
    save_checkpoint(d.path, s, p_old, small_state(4, n), "");
    fs::rename(root + "/step_000004", root + "/step_000004.old." + dead);
    TempDir other;
    save_checkpoint(other.path, s, p_new, small_state(4, n), "");
    fs::rename(other.path + "/checkpoints/step_000004", root + "/step_000004.new." + dead);

    ModelShape r;
    const std::string found = resolve_checkpoint(d.path);
    EXPECT_EQ(found, root + "/step_000004.new." + dead);
    EXPECT_EQ(read_model_file(found + "/model.bin", r), p_new);
    EXPECT_EQ(run_dir_of_checkpoint(found), d.path);

    save_checkpoint(d.path, s, p_new, small_state(5, n), "");
    EXPECT_EQ(joined(entries(root)), "latest step_000004 step_000005 ");
    EXPECT_EQ(read_model_file(root + "/step_000004/model.bin", r), p_new);

    // Only an old copy left: it goes back.
    fs::rename(root + "/step_000005", root + "/step_000005.old." + dead);
    EXPECT_EQ(resolve_checkpoint(d.path), root + "/step_000005.old." + dead);
    save_checkpoint(d.path, s, p_new, small_state(6, n), "", 0);
    EXPECT_EQ(joined(entries(root)), "latest step_000004 step_000005 step_000006 ");
}

// A kill between the first checkpoint's rename and its `latest` leaves a
// complete checkpoint and no pointer: it is found. A pointer to nothing names
// the newest complete checkpoint there is.
TEST(CheckpointWrite, ResolvesWithoutOrWithABrokenLatest) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    std::vector<float> p(n, 1.0f);
    save_checkpoint(d.path, s, p, small_state(2, n), "", 0);
    save_checkpoint(d.path, s, p, small_state(10, n), "", 0);
    const std::string root = d.path + "/checkpoints";
    fs::remove(root + "/latest");
    EXPECT_EQ(resolve_checkpoint(d.path), root + "/step_000010");
    test::write_file(root + "/latest", "step_000011\n");
    try {
        resolve_checkpoint(d.path);
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        EXPECT_NE(std::string(e.what()).find("the newest complete one there is '" + root + "/step_000010'"), std::string::npos) << e.what();
    }
    // A name that is not a step (too long for a file name, or garbage) is bad input, not a file system error.
    for (const std::string& bad : {std::string(5000, 'x'), std::string("../../etc"), std::string("step_12/../x"), std::string("\x01\x02")}) {
        test::write_file(root + "/latest", bad + "\n");
        try {
            resolve_checkpoint(d.path);
            ADD_FAILURE() << bad;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            EXPECT_NE(std::string(e.what()).find("not a checkpoint name like step_000100"), std::string::npos) << e.what();
        }
    }
}

// A non-finite checkpoint is never written.
TEST(CheckpointWrite, RefusesNonFiniteWeights) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    std::vector<float> p(n, 1.0f);
    p[n / 2] = std::numeric_limits<float>::quiet_NaN();
    try {
        save_checkpoint(d.path, s, p, small_state(2, n), "");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::RunFailed);
        EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(d.path + "/checkpoints/latest"));
}

// `gpt train --resume COPY` continues in the copy: the original run's files
// do not change. A new run into a directory holding a run is refused (exit 2,
// naming --force); --force moves the old run aside and keeps every file.
TEST(CheckpointCli, ResumeTrainsIntoTheCopyAndRunsDoNotMix) {
    TempDir d;
    const std::string a = d.file("a"), b = d.file("b");
    auto r = sh(kGpt + " train" + tiny_sets(a, 4));
    ASSERT_EQ(r.code, 0) << r.output;
    copy_dir(a, b);
    std::map<std::string, std::string> before;
    for (const auto& e : fs::recursive_directory_iterator(a))
        if (e.is_regular_file()) before[e.path().string()] = test::read_file(e.path().string());

    r = sh(kGpt + " train --resume " + b + " --set run.max_steps=6 --quiet");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_TRUE(fs::exists(b + "/checkpoints/step_000006")) << joined(entries(b + "/checkpoints"));
    EXPECT_FALSE(fs::exists(a + "/checkpoints/step_000006"));
    std::map<std::string, std::string> after;
    for (const auto& e : fs::recursive_directory_iterator(a))
        if (e.is_regular_file()) after[e.path().string()] = test::read_file(e.path().string());
    EXPECT_EQ(before, after) << "resuming the copy changed the original run";
    EXPECT_NE(test::read_file(b + "/config.yaml").find("out_dir: " + b), std::string::npos);

    // A fresh run into b: refused, nothing touched.
    const std::string log_b = test::read_file(b + "/log.jsonl");
    r = sh(kGpt + " train" + tiny_sets(b, 2));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("already holds a run"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--force"), std::string::npos) << r.output;
    EXPECT_EQ(test::read_file(b + "/log.jsonl"), log_b);

    // --force: the old run moves into previous-<time>/, whole.
    r = sh(kGpt + " train --force" + tiny_sets(b, 2));
    ASSERT_EQ(r.code, 0) << r.output;
    std::string prev;
    for (const auto& n : entries(b))
        if (n.rfind("previous-", 0) == 0) prev = b + "/" + n;
    ASSERT_FALSE(prev.empty()) << joined(entries(b));
    EXPECT_EQ(test::read_file(prev + "/log.jsonl"), log_b);
    EXPECT_TRUE(fs::exists(prev + "/checkpoints/step_000006/model.bin"));
    EXPECT_EQ(joined(entries(b + "/checkpoints")), "latest step_000002 ");

    // Resuming from a checkpoint of one run into another's directory is a new run there: refused.
    r = sh(kGpt + " train --resume " + a + " --set run.out_dir=" + b + " --set run.max_steps=6 --quiet");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("already holds a run"), std::string::npos) << r.output;
}

namespace {

const std::string kWantNote = "weights differ after the recovery";

// One sweep of the kill test: scenario 1 is a fresh run to step 4 (saves 2
// and 4), scenario 2 the resume of that finished run at step 4 (it saves step
// 4 again, replacing the existing directory), scenario 3 its resume to step 6
// (saves 6, prunes 2). Returns the number of kills injected.
int kill_sweep(const std::string& dir, const std::string& finished4, const std::string& want, int scenario, bool no_exchange) {
    const std::string trace = dir + "/trace.txt", run = dir + "/run";
    const std::string cmd = scenario == 1   ? " train" + tiny_sets(run, 4)
                            : scenario == 2 ? " train --resume " + run + " --set run.max_steps=4 --quiet"
                                            : " train --resume " + run + " --set run.max_steps=6 --quiet";
    const std::string env = "env LD_PRELOAD=" + kFaultLib + (no_exchange ? " GPT_FAULT_NO_EXCHANGE=1" : "") + " ";
    auto fresh = [&] {
        fs::remove_all(run);
        if (scenario != 1) copy_dir(finished4, run);
    };
    // Count the namespace changes of the scenario, uninterrupted.
    fresh();
    const Shell traced = sh(env + "GPT_FAULT_TRACE=" + trace + " " + kGpt + cmd);
    EXPECT_EQ(traced.code, 0) << traced.output;
    std::vector<std::string> calls;
    {
        std::ifstream t(trace);
        std::string line;
        while (std::getline(t, line)) calls.push_back(line);
    }
    EXPECT_GE(calls.size(), 4u);
    // Index of the first `latest` rename: from then on a checkpoint exists.
    size_t first_latest = calls.size();
    for (size_t i = 0; i < calls.size(); i++)
        if (calls[i].find("/checkpoints/latest.tmp.") != std::string::npos && calls[i].find(" rename ") != std::string::npos) {
            first_latest = i;
            break;
        }
    int kills = 0;
    for (size_t k = 1; k <= calls.size(); k++) {
        const std::string where = "scenario " + std::to_string(scenario) + (no_exchange ? " without exchange" : "") + ", killed at " + calls[k - 1];
        fresh();
        const Shell killed = sh(env + "GPT_FAULT_KILL_AT=" + std::to_string(k) + " " + kGpt + cmd);
        EXPECT_EQ(killed.code, 128 + SIGKILL) << where << "\n" << killed.output;
        if (killed.code != 128 + SIGKILL) continue;
        kills++;
        const bool had_checkpoint = scenario != 1 || k > first_latest;
        const Shell ev = sh(kGpt + " eval --checkpoint " + run + " --batches 1");
        if (had_checkpoint) EXPECT_EQ(ev.code, 0) << where << "\n" << ev.output;
        else EXPECT_TRUE(ev.code == 0 || (ev.code == 2 && ev.output.find("internal") == std::string::npos)) << where << "\n" << ev.output;
        const Shell again = ev.code == 0 ? sh(kGpt + " train --resume " + run + " --set run.max_steps=6 --quiet")
                                         : sh(kGpt + " train --force" + tiny_sets(run, 6));
        EXPECT_EQ(again.code, 0) << where << "\n" << again.output;
        EXPECT_EQ(test::read_file(run + "/checkpoints/step_000006/model.bin"), want) << where << ": " << kWantNote;
        // The self-describing copy holds the same weights (its bytes differ: its metadata has the run's config).
        if (fs::exists(run + "/checkpoints/step_000006/model.safetensors")) {
            ModelShape a, b;
            EXPECT_EQ(read_model_safetensors(run + "/checkpoints/step_000006/model.safetensors", a),
                      read_model_file(run + "/checkpoints/step_000006/model.bin", b))
                << where << ": " << kWantNote;
        } else {
            ADD_FAILURE() << where << ": no model.safetensors";
        }
        EXPECT_FALSE(has_leftover(run + "/checkpoints")) << where << ": " << joined(entries(run + "/checkpoints"));
    }
    return kills;
}

}  // namespace

// Kill at every rename/unlink/rmdir of a run, in both replacement paths
// (RENAME_EXCHANGE and the marked-copies fallback): after each kill, `gpt
// eval` works whenever a checkpoint had been completed, and resuming (or, with
// no checkpoint yet, starting over with --force) ends with weights identical
// to those of a run that was never killed. The six sweeps run side by side
// (each process mostly waits on start-up and fsync).
TEST(CheckpointKill, EveryNamespaceChangeOfTrainAndResume) {
    TempDir d;
    const std::string ref = d.file("ref");
    ASSERT_EQ(sh(kGpt + " train" + tiny_sets(ref, 4)).code, 0);
    const std::string finished4 = d.file("finished4");
    copy_dir(ref, finished4);
    ASSERT_EQ(sh(kGpt + " train --resume " + ref + " --set run.max_steps=6 --quiet").code, 0);
    const std::string want = test::read_file(ref + "/checkpoints/step_000006/model.bin");
    ASSERT_FALSE(want.empty());

    std::vector<std::future<int>> sweeps;
    for (const bool no_exchange : {false, true})
        for (const int scenario : {1, 2, 3}) {
            const std::string dir = d.file("sweep" + std::to_string(scenario) + (no_exchange ? "x" : ""));
            fs::create_directories(dir);
            sweeps.push_back(std::async(std::launch::async, kill_sweep, dir, finished4, want, scenario, no_exchange));
        }
    int kills = 0;
    for (auto& f : sweeps) kills += f.get();
    std::printf("checkpoint kill test: %d kills injected (each followed by eval and a resume)\n", kills);
    EXPECT_GT(kills, 30);
}

namespace {

const std::string kModernSets =
    " --set model.pos_emb=rope --set model.norm=rmsnorm --set model.qk_norm=true --set model.activation=relu2 --set model.bias=false"
    " --set model.tied_head=false --set model.logit_softcap=15 --set optim.type=muon --set optim.muon_lr=0.02";

// step -> loss text of a log's step records; a step logged again by a resumed
// run (after a kill lost it) keeps its last record.
std::map<std::string, std::string> step_losses(const std::string& log_path) {
    std::map<std::string, std::string> out;
    std::istringstream in(test::read_file(log_path));
    for (std::string line; std::getline(in, line);) {
        if (line.find("\"type\":\"step\"") == std::string::npos) continue;
        const size_t s = line.find("\"step\":") + 7, l = line.find("\"loss\":") + 7;
        out[line.substr(s, line.find(',', s) - s)] = line.substr(l, line.find(',', l) - l);
    }
    return out;
}

}  // namespace

// The modern model with Muon (its checkpoints hold model.safetensors only):
// killed at every namespace change of a run to step 6, then resumed (or
// started over when no checkpoint was complete), it ends with the weights of
// the run that was never killed, and its log's losses, step by step, are
// that run's.
TEST(CheckpointKill, ModernModelResumesAfterAKillAnywhere) {
    TempDir d;
    const std::string ref = d.file("ref"), run = d.file("run"), trace = d.file("trace.txt");
    const std::string env = "env LD_PRELOAD=" + kFaultLib + " ";
    ASSERT_EQ(sh(env + "GPT_FAULT_TRACE=" + trace + " " + kGpt + " train" + tiny_sets(ref, 6) + kModernSets).code, 0);
    EXPECT_FALSE(fs::exists(ref + "/checkpoints/step_000006/model.bin"));
    ModelShape ws;
    const std::vector<float> want = read_model_safetensors(ref + "/checkpoints/step_000006/model.safetensors", ws);
    EXPECT_EQ(ws.arch.non_gpt2_keys().front(), "model.pos_emb=rope");
    const auto want_losses = step_losses(ref + "/log.jsonl");
    ASSERT_EQ(want_losses.size(), 6u);
    const std::string traced = test::read_file(trace);
    const size_t calls = size_t(std::count(traced.begin(), traced.end(), '\n'));
    ASSERT_GE(calls, 4u);
    int resumed = 0;
    for (size_t k = 1; k <= calls; k++) {
        const std::string where = "modern model killed at namespace change " + std::to_string(k) + " of " + std::to_string(calls);
        fs::remove_all(run);
        const Shell killed = sh(env + "GPT_FAULT_KILL_AT=" + std::to_string(k) + " " + kGpt + " train" + tiny_sets(run, 6) + kModernSets);
        ASSERT_EQ(killed.code, 128 + SIGKILL) << where << "\n" << killed.output;
        const Shell again = sh(kGpt + " train --resume " + run + " --set run.max_steps=6 --quiet");
        EXPECT_TRUE(again.code == 0 || (again.code == 2 && again.output.find("internal") == std::string::npos)) << where << "\n" << again.output;
        const Shell ok = again.code == 0 ? again : sh(kGpt + " train --force" + tiny_sets(run, 6) + kModernSets);
        ASSERT_EQ(ok.code, 0) << where << "\n" << again.output << ok.output;
        ModelShape s;
        EXPECT_EQ(read_model_safetensors(run + "/checkpoints/step_000006/model.safetensors", s), want) << where << ": " << kWantNote;
        if (again.code == 0) {
            resumed++;
            EXPECT_EQ(step_losses(run + "/log.jsonl"), want_losses) << where;
        }
        EXPECT_FALSE(has_leftover(run + "/checkpoints")) << where << ": " << joined(entries(run + "/checkpoints"));
    }
    std::printf("modern checkpoint kill test: %zu kills, %d of them resumed from a checkpoint\n", calls, resumed);
    EXPECT_GE(resumed, 4);
}

namespace {

template <class T> void poke(std::string& bytes, size_t at, T v) { std::memcpy(bytes.data() + at, &v, sizeof v); }

}  // namespace

// Every field of state.bin is checked against its bounds when read back, and
// the size is checked against the count without arithmetic that can wrap.
TEST(CheckpointRead, StateFieldsOutOfBoundsAreBadInput) {
    TempDir d;
    const ModelShape s = small_shape();
    const size_t n = param_count(s);
    TrainState good = small_state(40, n);
    good.have_last_eval = true;
    good.last_eval_time_s = 20;
    good.last_eval_loss = 2.5;
    good.skipped_steps = 3;
    for (int i = 0; i < 130; i++) good.loss_window.add(1.0 + 0.01 * i);
    const std::string ck = save_checkpoint(d.path, s, std::vector<float>(n, 1.0f), good, "");
    const std::string bytes = test::read_file(ck + "/state.bin");
    TrainState back;
    read_state_file(ck + "/state.bin", back);
    EXPECT_EQ(back.step, 40);
    EXPECT_EQ(back.skipped_steps, 3);
    EXPECT_EQ(back.loss_window.count, 128u);
    EXPECT_EQ(back.loss_window.next, 2u);
    EXPECT_EQ(back.loss_window.values, good.loss_window.values);

    // Offsets of the version 2 layout (train/checkpoint.cpp).
    struct Case {
        const char* field;
        std::function<void(std::string&)> corrupt;
    };
    const std::vector<Case> cases = {
        {"step", [](std::string& b) { poke<int64_t>(b, 12, -5); }},
        {"step", [](std::string& b) { poke<int64_t>(b, 12, INT64_MAX); }},
        {"tokens", [](std::string& b) { poke<int64_t>(b, 20, -1); }},
        {"train_time_s", [](std::string& b) { poke<double>(b, 28, std::nan("")); }},
        {"eval_time_s", [](std::string& b) { poke<double>(b, 36, -1.0); }},
        {"data.shard", [](std::string& b) { poke<uint64_t>(b, 44, UINT64_MAX); }},
        {"data.offset", [](std::string& b) { poke<uint64_t>(b, 52, uint64_t(1) << 62); }},
        {"data.epoch", [](std::string& b) { poke<uint64_t>(b, 60, uint64_t(1) << 50); }},
        {"world", [](std::string& b) { poke<int32_t>(b, 72, 0); }},
        {"world", [](std::string& b) { poke<int32_t>(b, 72, INT32_MAX); }},
        {"rank", [](std::string& b) { poke<int32_t>(b, 68, 7); }},
        {"have_last_eval", [](std::string& b) { poke<int32_t>(b, 76, 2); }},
        {"last_eval_time_s", [](std::string& b) { poke<double>(b, 80, 1e9); }},
        {"last_eval_loss", [](std::string& b) { poke<double>(b, 88, INFINITY); }},
        {"time_to_target_s", [](std::string& b) { poke<double>(b, 96, 1e300); }},
        {"optimizer values", [](std::string& b) { poke<uint64_t>(b, 104, (uint64_t(1) << 61) + 3); }},  // 8 x count wraps
        {"optimizer values", [](std::string& b) { poke<uint64_t>(b, 104, 7); }},
        {"skipped_steps", [](std::string& b) { poke<int64_t>(b, 112, 41); }},
        {"z-score window", [](std::string& b) { poke<uint32_t>(b, 120, 129); }},
        {"z-score window", [](std::string& b) { poke<uint32_t>(b, 124, 128); }},
        {"z-score window", [](std::string& b) { poke<double>(b, 128, std::nan("")); }},
        {"version", [](std::string& b) { poke<uint32_t>(b, 8, 3); }},
        {"m", [](std::string& b) { poke<float>(b, b.size() - 8 * 4, std::nanf("")); }},   // a moment
        {"v", [](std::string& b) { poke<float>(b, b.size() - 4, -1.0f); }},
        {"truncated", [](std::string& b) { b.resize(50); }},
    };
    int checked = 0;
    for (const auto& c : cases) {
        std::string bad = bytes;
        c.corrupt(bad);
        test::write_file(d.file("state.bin"), bad);
        TrainState st;
        try {
            read_state_file(d.file("state.bin"), st);
            ADD_FAILURE() << "accepted a corrupted " << c.field;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            EXPECT_NE(std::string(e.what()).find(c.field), std::string::npos) << c.field << ": " << e.what();
            checked++;
        }
    }
    std::printf("state.bin: %d corrupted fields refused by name\n", checked);
}

// A version 1 state.bin (before the skip state) still reads.
TEST(CheckpointRead, StateVersionOneStillReads) {
    TempDir d;
    std::string b("GPTSTATE", 8);
    auto put = [&](auto v) { b.append(reinterpret_cast<const char*>(&v), sizeof v); };
    put(uint32_t(1));
    put(int64_t(7)), put(int64_t(56)), put(3.0), put(0.5);
    put(uint64_t(0)), put(uint64_t(12)), put(uint64_t(0));
    put(int32_t(0)), put(int32_t(1)), put(int32_t(0));
    put(0.0), put(0.0), put(-1.0);
    put(uint64_t(2));
    for (float x : {0.1f, 0.2f, 0.3f, 0.4f}) put(x);
    test::write_file(d.file("state.bin"), b);
    TrainState st;
    read_state_file(d.file("state.bin"), st);
    EXPECT_EQ(st.step, 7);
    EXPECT_EQ(st.data.offset, 12u);
    EXPECT_EQ(st.m, (std::vector<float>{0.1f, 0.2f}));
    EXPECT_EQ(st.v, (std::vector<float>{0.3f, 0.4f}));
    EXPECT_EQ(st.skipped_steps, 0);
    EXPECT_EQ(st.loss_window.count, 0u);
}

// A model header whose dimensions would wrap the parameter count is refused
// as an implausible shape (not an out-of-memory, not a size mismatch of 0);
// non-finite weights are refused naming the tensor.
TEST(CheckpointRead, ModelHeaderBoundsAndNonFiniteWeights) {
    TempDir d;
    auto header = [](std::array<int32_t, 8> h) {
        std::string b(1024, '\0');
        std::memcpy(b.data(), h.data(), sizeof h);
        return b;
    };
    const std::vector<std::array<int32_t, 8>> wrapping = {
        {kModelMagic, 3, 1024, 50257, 12, 12, 1 << 30, 50304},           // C beyond bounds
        {kModelMagic, 3, INT32_MAX, 50257, INT32_MAX, 1, 65536, 50304},  // the count wraps in 64 bits
        {kModelMagic, 3, 1024, 50257, 12, 12, 768, -5},                  // Vp < V
        {kModelMagic, 3, 1024, 50257, 12, 0, 768, 50304},                // no heads
        {kModelMagic, 5, 1024, INT32_MAX, 12, 12, 768, 0},               // padded V overflows int
    };
    for (const auto& h : wrapping) {
        test::write_file(d.file("m.bin"), header(h));
        ModelShape s;
        try {
            read_model_file(d.file("m.bin"), s);
            ADD_FAILURE() << "accepted L=" << h[4] << " C=" << h[6];
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            EXPECT_NE(std::string(e.what()).find("implausible shape"), std::string::npos) << e.what();
        }
    }
    const ModelShape s = small_shape();
    std::vector<float> p(param_count(s), 0.5f);
    p[s.Vp * s.C + 3] = INFINITY;  // wpe[3]
    write_model_file(d.file("inf.bin"), s, p);
    ModelShape r;
    try {
        read_model_file(d.file("inf.bin"), r);
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("(wpe[3]) is infinite"), std::string::npos) << e.what();
    }
    // gpt eval of it: exit 2 naming the file.
    TempDir run;
    save_checkpoint(run.path, s, std::vector<float>(param_count(s), 0.5f), small_state(1, param_count(s)), "");
    // Its model.safetensors (the file read), then the model.bin of a checkpoint without one (an older build's).
    const std::string ck = run.path + "/checkpoints/step_000001";
    write_model_safetensors(ck + "/model.safetensors", s, p, "");
    Shell ev = sh(kGpt + " eval --checkpoint " + run.path + " -c " + test::source_path("configs/tiny.yaml"));
    EXPECT_EQ(ev.code, 2) << ev.output;
    EXPECT_NE(ev.output.find("model.safetensors': parameter wpe[3] is infinite"), std::string::npos) << ev.output;
    fs::remove(ck + "/model.safetensors");
    fs::copy_file(d.file("inf.bin"), ck + "/model.bin", fs::copy_options::overwrite_existing);
    ev = sh(kGpt + " eval --checkpoint " + run.path + " -c " + test::source_path("configs/tiny.yaml"));
    EXPECT_EQ(ev.code, 2) << ev.output;
    EXPECT_NE(ev.output.find("model.bin': parameter"), std::string::npos) << ev.output;
    EXPECT_NE(ev.output.find("is infinite"), std::string::npos) << ev.output;
}

TEST(ZScoreWindow, MatchesLlmcOutlierDetector) {
    ZScoreWindow w;
    for (uint32_t i = 0; i < ZScoreWindow::kSize; i++) EXPECT_TRUE(std::isnan(w.add(i % 2 ? 1.0 : 3.0))) << i;  // filling
    // Window now alternating 3,1 (mean 2, sd 1); adding 3 replaces the oldest 3: same window, z = 1.
    EXPECT_DOUBLE_EQ(w.add(3.0), 1.0);
    // A constant window has no spread: z = 0.
    ZScoreWindow c;
    for (uint32_t i = 0; i <= ZScoreWindow::kSize; i++) c.add(2.0);
    EXPECT_EQ(c.add(2.0), 0.0);
}
