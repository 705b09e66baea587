#include "search/trial.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

extern char** environ;

namespace gpt::search {

std::string ChildResult::describe() const {
    char buf[128];
    if (start_failed) return "could not start: " + stderr_tail;
    if (timed_out) std::snprintf(buf, sizeof buf, "timed out: killed after %.1f s", wall_s);
    else if (stopped) std::snprintf(buf, sizeof buf, "stopped by the search after %.1f s", wall_s);
    else if (signal) std::snprintf(buf, sizeof buf, "killed by signal %d (%s)", signal, strsignal(signal));
    else std::snprintf(buf, sizeof buf, "exit code %d", exit_code);
    return buf;
}

namespace {

// VmHWM (kB) summed over the live processes whose process group is pgid.
double group_peak_kb(pid_t pgid) {
    double total = 0;
    DIR* d = opendir("/proc");
    if (!d) return 0;
    while (dirent* e = readdir(d)) {
        const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
        if (pid <= 0 || getpgid(pid) != pgid) continue;
        std::ifstream f(std::string("/proc/") + e->d_name + "/status");
        std::string line;
        while (std::getline(f, line))
            if (line.rfind("VmHWM:", 0) == 0) {
                total += std::atof(line.c_str() + 6);
                break;
            }
    }
    closedir(d);
    return total;
}

}  // namespace

std::string file_tail(const std::string& path, size_t bytes) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return "";
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    const std::streamoff start = size > std::streamoff(bytes) ? size - std::streamoff(bytes) : 0;
    f.seekg(start);
    std::string out(static_cast<size_t>(size - start), '\0');
    f.read(out.data(), static_cast<std::streamsize>(out.size()));
    return out;
}

ChildResult run_child(const ChildSpec& spec) {
    ChildResult r;
    // Everything the child needs is built before fork: after it, only
    // async-signal-safe calls (the parent may have other threads).
    std::vector<char*> argv;
    for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; e++) {
        const std::string s = *e;
        const std::string name = s.substr(0, s.find('='));
        if (!spec.env.count(name)) env_strings.push_back(s);
    }
    for (const auto& [k, v] : spec.env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);

    const int out_fd = open(spec.stdout_path.empty() ? "/dev/null" : spec.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err_fd = open(spec.stderr_path.empty() ? "/dev/null" : spec.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0 || err_fd < 0) {
        if (out_fd >= 0) close(out_fd);
        if (err_fd >= 0) close(err_fd);
        r.start_failed = true;
        r.stderr_tail = "cannot open the output files in " + spec.stdout_path + ": " + std::strerror(errno);
        return r;
    }
    const pid_t parent = getpid();
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = fork();
    if (pid < 0) {
        close(out_fd);
        close(err_fd);
        r.start_failed = true;
        r.stderr_tail = std::string("fork failed: ") + std::strerror(errno);
        return r;
    }
    if (pid == 0) {
        setpgid(0, 0);  // its own group: the deadline kill reaches its children too
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);  // the search died before prctl
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        execve(argv[0], argv.data(), envp.data());
        const char* msg = "gpt search: cannot execute the trial command: ";
        (void)!write(2, msg, std::strlen(msg));
        (void)!write(2, argv[0], std::strlen(argv[0]));
        (void)!write(2, "\n", 1);
        _exit(127);
    }
    setpgid(pid, pid);  // also here, so the group exists before any kill below
    close(out_fd);
    close(err_fd);

    int status = 0;
    double peak_kb = 0, last_look = 0;
    for (;;) {
        const pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) break;
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (spec.kill_after_s > 0 && el > spec.kill_after_s && !r.timed_out && !r.stopped) {
            r.timed_out = true;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
        }
        if (el - last_look >= 0.1) {
            last_look = el;
            peak_kb = std::max(peak_kb, group_peak_kb(pid));
            if (spec.stop_when && !r.timed_out && !r.stopped && spec.stop_when()) {
                r.stopped = true;
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(-pid, SIGKILL);  // whatever the child left running in its group (a wrapper's sleep)
    r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.peak_rss_mb = peak_kb / 1024.0;
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    r.stderr_tail = file_tail(spec.stderr_path, 2048);
    return r;
}

}  // namespace gpt::search
