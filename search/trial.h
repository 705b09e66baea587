// Child processes for trials: every training run, benchmark and correctness
// check of the search runs in its own process (its own process group), so a
// crash, an out-of-memory or a hang ends that trial only.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace gpt::search {

struct ChildSpec {
    std::vector<std::string> argv;            // argv[0] is a path
    std::map<std::string, std::string> env;   // set on top of this process's environment
    std::string stdout_path, stderr_path;     // files the child's output goes to
    double kill_after_s = 0;                  // wall clock; the whole group is killed then, 0 = never
    // Asked about every 0.1 s while the child runs: true stops it (its whole
    // group is killed; ChildResult::stopped). The search's pruning.
    std::function<bool()> stop_when;
};

struct ChildResult {
    int exit_code = -1;       // when it exited
    int signal = 0;           // when a signal ended it (ours at the deadline included)
    bool timed_out = false;   // killed by us at kill_after_s
    bool stopped = false;     // killed by us because stop_when said so
    bool start_failed = false;
    double wall_s = 0;
    // The trial's own peak resident memory: the sum over the processes of its
    // group of each one's high-water mark (VmHWM), sampled while it ran. Not
    // wait4's ru_maxrss, which also counts the copy of the search process that
    // fork made before exec.
    double peak_rss_mb = 0;
    std::string stderr_tail;  // the last 2 KB of its stderr

    bool ok() const { return !timed_out && !stopped && signal == 0 && exit_code == 0; }
    std::string describe() const;  // "exit code 1", "killed by signal 6 (Aborted)", "timed out after 12.0 s"
};

// Runs one child to completion (blocking). Thread-safe: the search runs
// several from worker threads when --parallel > 1. The child gets
// PR_SET_PDEATHSIG = SIGKILL, so killing the search kills its trials.
ChildResult run_child(const ChildSpec& spec);

// The last `bytes` bytes of a file ("" when it cannot be read).
std::string file_tail(const std::string& path, size_t bytes);

}  // namespace gpt::search
