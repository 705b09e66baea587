// Signals: Ctrl-C / SIGTERM stop after the current step, save a checkpoint
// without a final validation and exit 130; a second signal skips what is
// optional, a third ends the process at once. `gpt launch` exits 130 when
// signalled, and kill -9 of it leaves no mpirun and no rank running.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/test_util.h"

namespace fs = std::filesystem;
using gpt::test::TempDir;

namespace {

const std::string kGpt = GPT_BINARY;
const std::string kFaultLib = GPT_FAULT_LIB;

struct Child {
    pid_t pid = -1;
    std::string out;  // stdout + stderr file
};

// Starts `gpt args...` with extra environment, output to a file.
Child spawn(const std::vector<std::string>& args, const std::vector<std::string>& env, const std::string& out) {
    Child c;
    c.out = out;
    c.pid = fork();
    if (c.pid == 0) {
        for (const auto& kv : env) putenv(strdup(kv.c_str()));
        const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        std::vector<char*> argv{const_cast<char*>(kGpt.c_str())};
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execv(kGpt.c_str(), argv.data());
        _exit(127);
    }
    return c;
}

// Waits up to `seconds` for the child; returns its exit code, 128 + signal
// when a signal ended it, -1 on timeout (then it is killed).
int wait_for(const Child& c, double seconds, bool* signalled = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        int st = 0;
        const pid_t r = waitpid(c.pid, &st, WNOHANG);
        if (r == c.pid) {
            if (signalled) *signalled = WIFSIGNALED(st);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) {
            kill(c.pid, SIGKILL);
            waitpid(c.pid, &st, 0);
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

int count_lines(const std::string& path, const std::string& needle) {
    std::ifstream f(path);
    std::string line;
    int n = 0;
    while (std::getline(f, line)) n += line.find(needle) != std::string::npos;
    return n;
}

// Waits until `path` has `n` lines containing `needle` (or fails after 120 s).
bool wait_lines(const std::string& path, const std::string& needle, int n) {
    for (int i = 0; i < 1200; i++) {
        if (count_lines(path, needle) >= n) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
}

std::vector<std::string> train_args(const std::string& out, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a = {"train"};
    for (const std::string kv : {"model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.seq_len=8", "model.vocab_size=32",
                                 "data.synthetic.vocab=32", "data.synthetic.order=1", "run.batch_size=2", "run.threads=1",
                                 "schedule.warmup_steps=1", "schedule.steps=1000000", "run.max_steps=1000000",
                                 // a final validation would take long: an interrupted run must not run it
                                 "run.val_every=0", "run.val_batches=1000000"}) {
        a.push_back("--set");
        a.push_back(kv);
    }
    a.push_back("--set");
    a.push_back("run.out_dir=" + out);
    a.push_back("--quiet");
    for (const auto& e : extra) a.push_back(e);
    return a;
}

std::vector<std::string> entries(const std::string& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

// SIGINT and SIGTERM: exit 130 with a checkpoint, the summary says
// interrupted, and no validation ran after the signal.
TEST(Signals, FirstSignalSavesWithoutAFinalValidation) {
    for (const int sig : {SIGINT, SIGTERM}) {
        TempDir d;
        const std::string run = d.file("run");
        const Child c = spawn(train_args(run), {}, d.file("out.txt"));
        ASSERT_TRUE(wait_lines(run + "/log.jsonl", "\"type\":\"step\"", 3));
        kill(c.pid, sig);
        const int code = wait_for(c, 120);
        const std::string out = gpt::test::read_file(c.out);
        EXPECT_EQ(code, 130) << out;
        EXPECT_NE(out.find("signal received: stopping after this step"), std::string::npos) << out;
        EXPECT_NE(out.find("interrupted; checkpoint saved to " + run + "/checkpoints/step_"), std::string::npos) << out;
        EXPECT_EQ(count_lines(run + "/log.jsonl", "\"type\":\"val\""), 0) << "a validation ran after the signal";
        EXPECT_EQ(count_lines(run + "/log.jsonl", "\"stop_reason\":\"interrupted\""), 1);
        EXPECT_EQ(gpt::test::run_gpt("eval --checkpoint " + run + " --batches 1").code, 0);
    }
}

// The checkpoint's renames are slowed (LD_PRELOAD) so that signals can be
// sent while it is being written. A second signal (a second later) skips the
// pruning of old checkpoints; a third ends the process by the signal, and the
// checkpoints there are still complete.
TEST(Signals, SecondSignalSkipsTheOptionalAndAThirdEndsAtOnce) {
    for (const int signals : {1, 2, 3}) {
        SCOPED_TRACE(std::to_string(signals) + " signals");
        TempDir d;
        const std::string run = d.file("run"), trace = d.file("trace.txt");
        const Child c = spawn(train_args(run, {"--set", "run.checkpoint_every=1", "--set", "schedule.steps=1000000"}),
                              {"LD_PRELOAD=" + kFaultLib, "GPT_FAULT_TRACE=" + trace, "GPT_FAULT_SLOW=/checkpoints/step_:4000"},
                              d.file("out.txt"));
        ASSERT_TRUE(wait_lines(run + "/log.jsonl", "\"type\":\"checkpoint\"", 2));
        kill(c.pid, SIGINT);
        const auto t0 = std::chrono::steady_clock::now();
        for (int s = 2; s <= signals; s++) {
            // Next signal while the final checkpoint is being written, over a second after the previous.
            std::this_thread::sleep_for(std::chrono::milliseconds(1200));
            kill(c.pid, SIGINT);
        }
        bool by_signal = false;
        const int code = wait_for(c, 120, &by_signal);
        const std::string out = gpt::test::read_file(c.out);
        (void)t0;
        if (signals < 3) {
            EXPECT_EQ(code, 130) << out;
            EXPECT_FALSE(by_signal);
            const auto ck = entries(run + "/checkpoints");
            int steps = 0;
            for (const auto& e : ck) steps += e.rfind("step_", 0) == 0 && e.find('.') == std::string::npos;
            // The interrupted save is a new step unless the signal came during
            // the loop's save of the same step. Pruning keeps 2; a second
            // signal skips it, so a new step then leaves 3.
            std::vector<std::string> records;
            {
                std::ifstream f(run + "/log.jsonl");
                std::string line;
                while (std::getline(f, line))
                    if (line.find("\"type\":\"checkpoint\"") != std::string::npos) records.push_back(line.substr(line.find("\"step\":")));
            }
            ASSERT_GE(records.size(), 2u);
            const bool new_step = std::find(records.begin(), records.end() - 1, records.back()) == records.end() - 1;
            EXPECT_EQ(steps, signals == 2 && new_step ? 3 : 2) << out;
            if (signals == 2) EXPECT_NE(out.find("second signal"), std::string::npos) << out;
        } else {
            EXPECT_TRUE(by_signal) << out;
            EXPECT_EQ(code, 128 + SIGINT) << out;
        }
        EXPECT_EQ(gpt::test::run_gpt("eval --checkpoint " + run + " --batches 1").code, 0) << out;
    }
}

namespace {

// The PIDs of processes whose command line contains `needle`.
std::vector<pid_t> processes_with(const std::string& needle) {
    std::vector<pid_t> out;
    for (const auto& e : fs::directory_iterator("/proc")) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmd = gpt::test::read_file(e.path().string() + "/cmdline");
        std::replace(cmd.begin(), cmd.end(), '\0', ' ');
        if (cmd.find(needle) != std::string::npos) out.push_back(pid_t(std::stol(name)));
    }
    return out;
}

}  // namespace

// SIGTERM to `gpt launch`: the ranks save and the job exits 130; only rank 0
// names the checkpoint (no rank prints an empty path).
TEST(Signals, LaunchExits130OnSigterm) {
    TempDir d;
    const std::string run = d.file("run");
    std::vector<std::string> args = {"launch", "-n", "2", "--"};
    for (const auto& a : train_args(run)) args.push_back(a);
    const Child c = spawn(args, {}, d.file("out.txt"));
    ASSERT_TRUE(wait_lines(run + "/log.jsonl", "\"type\":\"step\"", 3));
    kill(c.pid, SIGTERM);
    const int code = wait_for(c, 120);
    const std::string out = gpt::test::read_file(c.out);
    EXPECT_EQ(code, 130) << out;
    EXPECT_EQ(count_lines(c.out, "checkpoint saved to " + run + "/checkpoints/step_"), 1) << out;
    EXPECT_EQ(out.find("checkpoint saved to  "), std::string::npos) << out;
    EXPECT_EQ(gpt::test::run_gpt("eval --checkpoint " + run + " --batches 1").code, 0) << out;
    EXPECT_TRUE(processes_with(run).empty());
}

// kill -9 of `gpt launch`: mpirun (told by the kernel that its parent died)
// and the ranks (watching the launcher) stop, saving; nothing is left running.
TEST(Signals, KilledLauncherLeavesNoOrphans) {
    TempDir d;
    const std::string run = d.file("run");
    std::vector<std::string> args = {"launch", "-n", "2", "--"};
    for (const auto& a : train_args(run)) args.push_back(a);
    const Child c = spawn(args, {}, d.file("out.txt"));
    ASSERT_TRUE(wait_lines(run + "/log.jsonl", "\"type\":\"step\"", 3));
    ASSERT_GE(processes_with(run).size(), 3u) << "mpirun and two ranks";
    kill(c.pid, SIGKILL);
    wait_for(c, 10);
    bool gone = false;
    for (int i = 0; i < 900 && !gone; i++) {
        gone = processes_with(run).empty();
        if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(gone) << "still running 90 s after the launcher was killed: " << processes_with(run).size() << " processes";
    for (pid_t p : processes_with(run)) kill(p, SIGKILL);
    EXPECT_EQ(gpt::test::run_gpt("eval --checkpoint " + run + " --batches 1").code, 0) << "the ranks saved no checkpoint";
}
