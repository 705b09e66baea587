// Checkpoint writing survives a kill at every namespace change, re-saving a
// step never removes the last good copy, leftovers of dead writers are
// finished or removed (live ones are left alone), pruning orders steps as
// numbers, `latest` is checked, a resumed copy of a run trains into the copy,
// and a new run never mixes with an old one in the same directory.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <sstream>

#include "kernels/error.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using namespace gpt;
using gpt::test::TempDir;

namespace {

struct Shell {
    int code;  // exit code, or 128 + signal
    std::string output;
};

// Runs a shell command line; stdout and stderr together.
Shell sh(const std::string& cmd) {
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    Shell r{-1, ""};
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    const int st = pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
    return r;
}

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

// One sweep of the kill test: scenario 1 is a fresh run to step 4 (saves 2,
// 4, then 4 again after the final evaluation), scenario 2 the resume of that
// finished run to step 6. Returns the number of kills injected.
int kill_sweep(const std::string& dir, const std::string& finished4, const std::string& want, int scenario, bool no_exchange) {
    const std::string trace = dir + "/trace.txt", run = dir + "/run";
    const std::string cmd = scenario == 1 ? " train" + tiny_sets(run, 4) : " train --resume " + run + " --set run.max_steps=6 --quiet";
    const std::string env = "env LD_PRELOAD=" + kFaultLib + (no_exchange ? " GPT_FAULT_NO_EXCHANGE=1" : "") + " ";
    auto fresh = [&] {
        fs::remove_all(run);
        if (scenario == 2) copy_dir(finished4, run);
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
    EXPECT_GT(calls.size(), 5u);
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
        const bool had_checkpoint = scenario == 2 || k > first_latest;
        const Shell ev = sh(kGpt + " eval --checkpoint " + run + " --batches 1");
        if (had_checkpoint) EXPECT_EQ(ev.code, 0) << where << "\n" << ev.output;
        else EXPECT_TRUE(ev.code == 0 || (ev.code == 2 && ev.output.find("internal") == std::string::npos)) << where << "\n" << ev.output;
        const Shell again = ev.code == 0 ? sh(kGpt + " train --resume " + run + " --set run.max_steps=6 --quiet")
                                         : sh(kGpt + " train --force" + tiny_sets(run, 6));
        EXPECT_EQ(again.code, 0) << where << "\n" << again.output;
        EXPECT_EQ(test::read_file(run + "/checkpoints/step_000006/model.bin"), want) << where << ": " << kWantNote;
        EXPECT_FALSE(has_leftover(run + "/checkpoints")) << where << ": " << joined(entries(run + "/checkpoints"));
    }
    return kills;
}

}  // namespace

// Kill at every rename/unlink/rmdir of a run, in both replacement paths
// (RENAME_EXCHANGE and the marked-copies fallback): after each kill, `gpt
// eval` works whenever a checkpoint had been completed, and resuming (or, with
// no checkpoint yet, starting over with --force) ends with weights identical
// to those of a run that was never killed. The four sweeps run side by side
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
        for (const int scenario : {1, 2}) {
            const std::string dir = d.file("sweep" + std::to_string(scenario) + (no_exchange ? "x" : ""));
            fs::create_directories(dir);
            sweeps.push_back(std::async(std::launch::async, kill_sweep, dir, finished4, want, scenario, no_exchange));
        }
    int kills = 0;
    for (auto& f : sweeps) kills += f.get();
    std::printf("checkpoint kill test: %d kills injected (each followed by eval and a resume)\n", kills);
    EXPECT_GT(kills, 40);
}
