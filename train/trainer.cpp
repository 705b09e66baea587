// The training loop.
//
// Time accounting: only the optimizer steps are charged to train_time_s (the
// budget and time-to-target clock). Start-up (backend, weights, data, resume)
// and evaluation are timed separately, so a slower evaluation or a bigger
// model file never looks like slower training.
#include "train/trainer.h"

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <cstring>
#include <chrono>
#include <ctime>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <sstream>

#include "data/files.h"
#include "data/json.h"
#include "data/source.h"
#include "data/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/host_memory.h"
#include "model/generate.h"
#include "model/gpt2.h"
#include "kernels/convert.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/hellaswag.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/weights.h"
#include "train/step.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// SIGINT / SIGTERM (and SIGUSR1: mpirun passes it on when `gpt launch` died;
// Slurm sends it ahead of a time limit with --signal), counted. The first stops training after the current
// step (an evaluation in progress is abandoned), saves a checkpoint without a
// final validation and exits 130; the second also skips what is optional
// (pruning old checkpoints); the third ends the process at once. A repeat
// within a second is the same event reaching the process twice (a terminal's
// Ctrl-C hits both mpirun and the rank, and mpirun passes it on) and counts once.
volatile std::sig_atomic_t g_interrupted = 0;
volatile std::sig_atomic_t g_lead = 1;  // only rank 0 prints from the handler
std::atomic<int64_t> g_last_signal_ns{0};

void say(const char* msg) {
    if (!g_lead) return;
    const ssize_t n = ::write(2, msg, std::strlen(msg));
    (void)n;
}

void on_signal(int sig) {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    const int64_t now = int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
    if (g_interrupted > 0 && now - g_last_signal_ns.load() < 1000000000) return;
    g_last_signal_ns.store(now);
    g_interrupted = g_interrupted + 1;
    if (g_interrupted == 1) say("\ngpt: signal received: stopping after this step and saving a checkpoint (no final validation; a second signal skips what is optional, a third ends the process without saving)\n");
    else if (g_interrupted == 2) say("\ngpt: second signal: saving the checkpoint and leaving (a third signal ends the process at once, without saving)\n");
    else {
        std::signal(sig, SIG_DFL);
        std::raise(sig);
    }
}

// Under `gpt launch`, its PID: when the launcher is gone (kill -9), the ranks
// stop as if signalled, so that no rank (and no mpirun) trains on orphaned.
// A pidfd makes the wait exact (no PID reuse); without one, kill(pid, 0).
class LauncherWatch {
public:
    LauncherWatch() {
        const char* v = std::getenv("GPT_LAUNCH_PID");
        const long pid = v ? std::atol(v) : 0;
        if (pid <= 1) return;
        thread_ = std::thread([this, pid] {
            const int pfd = int(::syscall(SYS_pidfd_open, pid_t(pid), 0));
            while (!stop_.load()) {
                bool gone;
                if (pfd >= 0) {
                    pollfd p{pfd, POLLIN, 0};
                    gone = ::poll(&p, 1, 200) > 0;
                } else {
                    gone = ::kill(pid_t(pid), 0) != 0 && errno == ESRCH;
                    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(200));
                }
                if (gone) {
                    if (g_interrupted == 0) {
                        g_interrupted = 1;
                        say("\ngpt: the launcher (gpt launch) is gone: stopping after this step and saving a checkpoint\n");
                    }
                    break;
                }
            }
            if (pfd >= 0) ::close(pfd);
        });
    }
    ~LauncherWatch() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }

private:
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

std::string human_time(double s) {
    char buf[32];
    if (s < 0 || !std::isfinite(s)) return "?";
    if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
    else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
    return buf;
}

std::string fmt(double x) {
    if (std::isnan(x)) return "NaN";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", x);
    return buf;
}

// JSON number at full precision (the shortest text that reads back as the
// same double, so runs compare step by step), or null for NaN/inf.
std::string jnum(double x) { return std::isfinite(x) ? number_text(x) : "null"; }

// One JSON object per line, written whole per record (AppendFile) so a killed
// run keeps its log and a full disk is an error naming the file, never a torn
// record. Only rank 0 of a data-parallel job writes (enabled = false elsewhere).
class JsonlLog {
public:
    JsonlLog(const std::string& path, bool append, bool enabled) {
        if (enabled) f_ = std::make_unique<AppendFile>(path, !append, "run log");
    }
    void write(const std::string& json) {
        if (f_) f_->append(json + "\n");
    }

private:
    std::unique_ptr<AppendFile> f_;
};

std::atomic<bool> g_progress_line_open{false};

// Whether the progress line is redrawn in place (carriage return and an erase
// escape): GPT_PROGRESS=redraw or lines when set (gpt launch sets lines when
// its own output is not a terminal: Open MPI gives each rank a pseudo-terminal
// even when mpirun's output goes to a pipe or a file), else when stdout is a
// terminal that is not TERM=dumb.
bool redraw_progress() {
    if (const char* p = std::getenv("GPT_PROGRESS"); p && *p) return std::string(p) == "redraw";
    const char* term = std::getenv("TERM");
    return isatty(fileno(stdout)) && !(term && std::string(term) == "dumb");
}

// The live console line: progress bar, loss, tokens/s, ETA. Redrawn in place
// on a terminal; on a pipe or file, one line per second at most.
class Console {
public:
    explicit Console(bool quiet) : quiet_(quiet), tty_(redraw_progress()) {}
    void progress(int64_t step, int64_t max_steps, double frac, double loss, double lr, double tok_s, double eta_s) {
        if (quiet_) return;
        const double now = seconds_since(start_);
        if (!tty_ && now - last_ < 1.0 && frac < 1.0) return;
        last_ = now;
        const int width = 24, filled = static_cast<int>(std::min(1.0, frac) * width);
        std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
        char of_max[32] = "";
        if (max_steps > 0) std::snprintf(of_max, sizeof of_max, "/%lld", static_cast<long long>(max_steps));
        char line[256];
        std::snprintf(line, sizeof line, "step %6lld%s [%s] %3.0f%% | loss %.4f | lr %.2e | %.0f tok/s | ETA %s",
                      static_cast<long long>(step), of_max,
                      bar.c_str(), 100.0 * std::min(1.0, frac), loss, lr, tok_s, human_time(eta_s).c_str());
        if (tty_) std::printf("\r\033[K%s", line);
        else std::printf("%s\n", line);
        std::fflush(stdout);
        pending_ = tty_;
        g_progress_line_open = pending_;
    }
    void message(const std::string& s) {
        if (quiet_) return;
        if (pending_) std::printf("\n");
        pending_ = false;
        g_progress_line_open = false;
        std::printf("%s\n", s.c_str());
        std::fflush(stdout);
    }

private:
    bool quiet_, tty_;
    bool pending_ = false;
    Clock::time_point start_ = Clock::now();
    double last_ = -1e9;
};

struct ValResult {
    bool aborted = false;  // interrupted by a signal: no result
    double loss = 0;  // mean nats per token
    double bpb = NAN; // bits per UTF-8 byte of the targets' text, when a tokenizer is known
};

// Mean loss over `batches` val batches from the start of the val stream, and
// bits per byte: total nats / ln 2 / total bytes of the target tokens' text.
// Each rank evaluates its own part of the val stream; sums are combined over ranks.
ValResult evaluate_val(GPT2& model, DataSource& val, int batches, const Tokenizer* tok, std::vector<int32_t>& x,
                       std::vector<int32_t>& y, Communicator& comm, bool abortable = false) {
    val.reset();
    double sum = 0, bytes = 0;
    for (int i = 0; i < batches; i++) {
        // A signal abandons the evaluation (all ranks together, at the same batch).
        if (abortable && comm.all_reduce_sum(g_interrupted ? 1.0 : 0.0) > 0) {
            ValResult r;
            r.aborted = true;
            return r;
        }
        val.next_batch(x.data(), y.data());
        sum += model.forward(x.data(), y.data(), false);
        if (tok)
            for (int32_t t : y) bytes += double(tok->token_bytes(t).size());
    }
    sum = comm.all_reduce_sum(sum);
    bytes = comm.all_reduce_sum(bytes);
    ValResult r;
    r.loss = sum / (double(batches) * comm.world());
    if (tok && bytes > 0) r.bpb = sum * double(y.size()) / std::log(2.0) / bytes;
    return r;
}

// The fixed validation set (run.val_tokens > 0): `windows` windows of T_val
// tokens from the start of the val stream, read one at a time (a (1, T_val)
// source, so the set does not depend on the batch size or the world size).
// Window w is evaluated by rank w % world, packed B at a time into the rows of
// the model's (B, T) input: row b holds the window in positions 0..T_val-1
// (zeros after them), and only those positions count. Attention is causal, so
// what follows a window in its row cannot change its losses.
ValResult evaluate_val_windows(GPT2& model, DataSource& val, int64_t windows, int T_val, const Tokenizer* tok, std::vector<int32_t>& x,
                               std::vector<int32_t>& y, Communicator& comm, bool abortable = false) {
    const int B = model.B(), T = model.T();
    std::vector<int32_t> wx(static_cast<size_t>(T_val)), wy(static_cast<size_t>(T_val));
    val.reset();
    double sum = 0, bytes = 0;
    int rows = 0;
    auto flush = [&]() {
        if (rows == 0) return;
        model.forward(x.data(), y.data(), false);
        const std::vector<double> losses = model.losses();  // (B, T)
        for (int b = 0; b < rows; b++)
            for (int t = 0; t < T_val; t++) sum += losses[size_t(b) * T + t];
        rows = 0;
    };
    for (int64_t w = 0; w < windows; w++) {
        // A signal abandons the evaluation: every rank walks every window, so
        // all of them ask at the same w.
        if (abortable && w % (int64_t(B) * comm.world()) == 0 && comm.all_reduce_sum(g_interrupted ? 1.0 : 0.0) > 0) {
            ValResult r;
            r.aborted = true;
            return r;
        }
        val.next_batch(wx.data(), wy.data());
        if (w % comm.world() != comm.rank()) continue;
        if (rows == 0) {
            std::fill(x.begin(), x.end(), 0);
            std::fill(y.begin(), y.end(), 0);
        }
        std::copy(wx.begin(), wx.end(), x.begin() + ptrdiff_t(rows) * T);
        std::copy(wy.begin(), wy.end(), y.begin() + ptrdiff_t(rows) * T);
        if (tok)
            for (int32_t t : wy) bytes += double(tok->token_bytes(t).size());
        if (++rows == B) flush();
    }
    flush();
    sum = comm.all_reduce_sum(sum);
    bytes = comm.all_reduce_sum(bytes);
    ValResult r;
    r.loss = sum / (double(windows) * T_val);
    if (tok && bytes > 0) r.bpb = sum / std::log(2.0) / bytes;
    return r;
}

// CPU time of the whole process (every thread), in seconds.
double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// The step clock of run.step_clock median: the running median of the step
// times measured so far (two heaps: the lower half as a max-heap, the upper
// half as a min-heap), which each step charges instead of its own time.
class RunningMedian {
public:
    void add(double v) {
        if (lo_.empty() || v <= lo_.top()) lo_.push(v);
        else hi_.push(v);
        if (lo_.size() > hi_.size() + 1) {
            hi_.push(lo_.top());
            lo_.pop();
        } else if (hi_.size() > lo_.size()) {
            lo_.push(hi_.top());
            hi_.pop();
        }
    }
    double median() const {
        if (lo_.empty()) return 0;
        return lo_.size() > hi_.size() ? lo_.top() : 0.5 * (lo_.top() + hi_.top());
    }

private:
    std::priority_queue<double> lo_;
    std::priority_queue<double, std::vector<double>, std::greater<double>> hi_;
};

// FNV-1a of the effective config: ranks must train the same thing.
uint64_t config_hash(const std::string& yaml) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : yaml) h = (h ^ c) * 1099511628211ull;
    return h;
}

// The tokenizer for val_bpb and samples: data.tokenizer, else $GPT_TOKENIZER_DIR,
// else the built-in GPT-2 files (Tokenizer::load_default). Used for shards of a
// GPT-2-vocabulary model, when data.tokenizer names one, or when val_bpb is the
// target; synthetic tokens are not text. A tokenizer whose vocabulary is not
// the model's would give meaningless byte counts, so that is an error.
std::optional<Tokenizer> load_tokenizer(const Config& cfg) {
    const bool gpt2_text = cfg.data.source == "shards" && cfg.model.vocab_size == 50257;
    const bool wanted = !cfg.data.tokenizer.empty() || cfg.run.target_metric == "val_bpb" || gpt2_text;
    if (!wanted) return std::nullopt;
    Tokenizer tok = Tokenizer::load_default(cfg.data.tokenizer);
    if (tok.vocab_size() != cfg.model.vocab_size)
        bad_input(Tokenizer::describe(cfg.data.tokenizer) + " (data.tokenizer) has " + std::to_string(tok.vocab_size()) +
                  " tokens but model.vocab_size is " + std::to_string(cfg.model.vocab_size) +
                  ": bits per byte and samples need the model's own tokenizer");
    return tok;
}

// Text as valid UTF-8 for the JSONL log: a sample may end inside a character.
std::string printable_utf8(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = s[i];
        const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= s.size();
        for (int k = 1; ok && k < len; k++) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 2;
        if (ok) {
            out.append(s, i, len);
            i += len;
        } else {
            out += "\xEF\xBF\xBD";  // U+FFFD
            i++;
        }
    }
    return out;
}

// A short sample from the model as it is now: from <|endoftext|> with a
// tokenizer (decoded text), else from token 0 (the ids).
std::string sample_text(Generator& gen, const Tokenizer* tok, int tokens, uint64_t seed) {
    std::mt19937_64 rng(seed);
    gen.reset();
    std::vector<int32_t> out;
    int32_t next = tok ? Tokenizer::kEndOfText : 0;
    for (int i = 0; i < tokens; i++) {
        next = sample_token(gen.feed(next), 1.0, 40, rng);
        out.push_back(next);
    }
    if (tok) return tok->decode(out);
    std::string ids;
    for (int32_t t : out) {
        if (!ids.empty()) ids += ' ';
        ids += std::to_string(t);
    }
    return ids;
}

// A run directory holds one run: log.jsonl, config.yaml and checkpoints/. A
// resume continues the run of its checkpoint's directory; any other run into
// a directory that holds a run is refused, or with force its files are moved
// into out/previous-<UTC time>/ first (nothing is deleted), so the new log and
// checkpoints never mix with the old ones.
void prepare_run_dir(const std::string& out, const std::string& resume_dir, bool force, Console& con) {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec || !fs::is_directory(out))
        bad_input("run.out_dir '" + out + "': cannot create the run directory" + (ec ? ": " + ec.message() : std::string()));
    if (::access(out.c_str(), W_OK) != 0) bad_input("run.out_dir '" + out + "': the run directory is not writable");
    const fs::path dir(out);
    // The temp file of a config.yaml write that a kill interrupted.
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        if (n.rfind("config.yaml.tmp.", 0) != 0) continue;
        const long pid = std::atol(n.c_str() + 16);
        if (pid > 0 && (pid == ::getpid() || !process_alive(pid_t(pid)))) fs::remove(e.path(), ec);
    }
    std::vector<fs::path> held;
    for (const char* f : {"log.jsonl", "checkpoints", "config.yaml"})
        if (fs::symlink_status(dir / f, ec).type() != fs::file_type::not_found) held.push_back(dir / f);
    const bool holds_run = fs::exists(dir / "log.jsonl", ec) || fs::exists(dir / "checkpoints", ec);
    if (!holds_run) return;
    if (!resume_dir.empty()) {
        const std::string run = run_dir_of_checkpoint(resume_dir);
        if (!run.empty() && fs::equivalent(run, dir, ec)) return;  // continuing this very run
    }
    if (!force)
        bad_input("run.out_dir '" + out + "' already holds a run (log.jsonl, checkpoints/): continue it with --resume " + out +
                  ", choose another run.out_dir, or pass --force to move that run into " + out + "/previous-<time>/ and start a new one");
    char stamp[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "previous-%Y%m%d-%H%M%S", std::gmtime(&now));
    fs::path aside = dir / stamp;
    for (int i = 2; fs::exists(aside, ec); i++) aside = dir / (std::string(stamp) + "-" + std::to_string(i));
    fs::create_directory(aside, ec);
    if (ec) run_failed("cannot create '" + aside.string() + "' to move the previous run aside: " + ec.message());
    for (const auto& f : held) {
        fs::rename(f, aside / f.filename(), ec);
        if (ec) run_failed("cannot move '" + f.string() + "' to '" + (aside / f.filename()).string() + "': " + ec.message());
    }
    con.message("--force: the previous run in " + out + " (" + std::to_string(held.size()) + " entries) moved to " + aside.string());
}

// The host buffers of a CPU-backend run, summed before any is allocated and
// compared with the memory this process may use (MemAvailable and the cgroup
// limits, see kernels/host_memory.h). Ranks that `gpt launch` or mpirun put on
// this machine share it. Out of memory is exit code 2 with the sizes.
void check_host_memory(const Config& cfg, Backend& be, const ModelShape& shape, int B, int T, int optimizer_shards) {
    if (be.name().rfind("cpu", 0) != 0) return;  // device memory: the CUDA allocator reports with sizes
    const size_t n = param_layout(shape).total;
    const double params = double(n) * double(dtype_size(be.param_dtype()));
    const double optim = 2.0 * double(n) / optimizer_shards * double(dtype_size(be.stat_dtype()));
    const double acts = double(activation_layout(shape, B, T, be.act_dtype(), be.stat_dtype(), be.kernels().variant("gelu") == "recompute",
                                                 GPT2::logit_rows(be.kernels(), int64_t(B) * T))
                                   .total_bytes);
    int local = 1;
    for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"})
        if (const char* v = std::getenv(var); v && std::atoi(v) > 0) {
            local = std::atoi(v);
            break;
        }
    const double need = 2 * params + optim + acts;
    const HostMemory mem = host_memory();
    if (mem.available == 0 || need * local <= double(mem.available)) return;
    throw Error(ErrorKind::OutOfMemory,
                "out of memory: this run needs " + human_bytes(need) + " of host memory per rank (parameters " + human_bytes(params) +
                    ", gradients " + human_bytes(params) + ", optimizer state " + human_bytes(optim) + ", activations " + human_bytes(acts) +
                    " at B=" + std::to_string(B) + ", T=" + std::to_string(T) + ")" +
                    (local > 1 ? " x " + std::to_string(local) + " ranks on this machine" : std::string()) + ", but " +
                    human_bytes(double(mem.available)) + " is available (" + mem.limited_by +
                    "); reduce the model (model.*) or the micro-batch (run.batch_size, run.seq_len)" + (cfg.run.zero == 0 && local > 1 ? ", or shard the optimizer state (run.zero=1)" : ""));
}

}  // namespace

bool progress_line_open() { return g_progress_line_open; }

std::function<void(View grads, int layer)> grad_reduce_hook(const Config& cfg, GPT2& model, Communicator& comm) {
    const bool zero1 = cfg.run.zero == 1 && comm.world() > 1;
    if (!cfg.run.overlap_reduce || zero1 || comm.name() == "local") return {};
    return [&model, &comm](View grads, int layer) { comm.start_all_reduce_sum(grads, model.grad_ranges(layer)); };
}

std::unique_ptr<Backend> make_backend(const Config& cfg) {
    BackendOptions o;
    o.threads = cfg.run.threads;
    o.local_rank = detect_dist_env().local_rank;  // the launcher's local rank picks the GPU
    o.kernels = KernelChoices(cfg.kernels);
    return make_backend(cfg.run.backend, o);
}

TrainResult train(const Config& cfg, const TrainOptions& opt) {
    const auto t_start = Clock::now();
    TrainResult res;

    // Data parallel: every rank runs this same function on its part of the data.
    // The backend first: under NCCL the communicator runs on its stream.
    const DistEnv env = detect_dist_env();
    auto backend = make_backend(cfg);
    auto comm = make_communicator(env, cfg.run.dist_timeout_s, backend.get());
    const int rank = comm->rank(), world = comm->world();
    const bool lead = rank == 0;  // the rank that prints, logs and writes checkpoints
    Console con(opt.quiet || !lead);
    const std::string config_yaml = config_to_yaml(cfg);
    if (world > 1) {
        uint64_t h = config_hash(config_yaml), h0 = h;
        comm->broadcast(&h0, sizeof h0, 0);
        const double mismatches = comm->all_reduce_sum(h == h0 ? 0.0 : 1.0);
        if (mismatches > 0)
            bad_input(std::to_string(static_cast<int>(mismatches)) + " of " + std::to_string(world) +
                      " ranks have a different effective config than rank 0" + (h != h0 ? " (this is rank " + std::to_string(rank) + ")" : ""));
    }

    const ModelShape shape = model_shape(cfg);
    const int B = cfg.run.batch_size, T = train_seq_len(cfg);
    const int64_t tokens_per_micro = int64_t(B) * T;
    const int64_t tokens_per_round = tokens_per_micro * world;  // one micro-batch on every rank
    if (cfg.run.total_batch_tokens > 0 && cfg.run.total_batch_tokens % tokens_per_round != 0)
        bad_input("run.total_batch_tokens (" + std::to_string(cfg.run.total_batch_tokens) + ") must be a multiple of run.batch_size * T * ranks = " +
                  std::to_string(B) + " * " + std::to_string(T) + " * " + std::to_string(world) + " = " + std::to_string(tokens_per_round));
    const int accum = cfg.run.total_batch_tokens > 0 ? static_cast<int>(cfg.run.total_batch_tokens / tokens_per_round) : 1;
    const int64_t tokens_per_step = tokens_per_round * accum;
    const bool zero1 = cfg.run.zero == 1 && world > 1;

    check_host_memory(cfg, *backend, shape, B, T, zero1 ? world : 1);
    GPT2 model(shape, *backend, B, T, world);
    // ZeRO-1: this rank owns the moments (and the update) of one contiguous shard.
    const size_t n_buf = model.buffer_elements(), shard = n_buf / world;
    Optimizer optim(model, cfg.optim, zero1 ? rank * shard : 0, zero1 ? (rank + 1) * shard : n_buf);
    auto train_data = make_data_source(cfg, Split::train, B, T, rank, world);
    // The fixed validation set reads whole windows of T_val tokens one at a time (see evaluate_val_windows).
    const int T_val = cfg.run.val_seq_len > 0 ? cfg.run.val_seq_len : T;
    const int64_t val_windows = cfg.run.val_tokens > 0 ? cfg.run.val_tokens / T_val : 0;
    auto val_data = val_windows > 0 ? make_data_source(cfg, Split::val, 1, T_val, 0, 1) : make_data_source(cfg, Split::val, B, T, rank, world);
    res.loss_floor = val_data->loss_floor();  // at the validation window's length: the floor of the val loss
    const std::optional<Tokenizer> tokenizer = load_tokenizer(cfg);
    const Tokenizer* tok = tokenizer ? &*tokenizer : nullptr;
    const bool target_bpb = cfg.run.target_metric == "val_bpb";

    // The float32 values of a file become the optimizer's master weights when
    // it keeps them (bf16 parameters are their rounding), this rank's part.
    auto load_master = [&](const std::vector<float>& params) {
        if (!optim.has_master()) return;
        const Layout& lay = model.param_layout();
        std::vector<float> part(optim.size(), 0.0f);
        size_t pos = 0;
        for (const auto& t : lay.tensors)
            for (size_t i = 0; i < t.numel; i++, pos++) {
                const size_t at = t.offset + i;
                if (at >= optim.begin() && at < optim.begin() + part.size()) part[at - optim.begin()] = params[pos];
            }
        optim.load_moments_host(2, part);
    };

    TrainState st;
    std::string resume_dir;
    std::string init_note;
    if (!opt.resume.empty()) {
        const std::string dir = resume_dir = resolve_checkpoint(opt.resume);
        ModelShape file_shape;
        const std::string model_file = checkpoint_model_file(dir);
        auto params = read_any_model_file(model_file, file_shape);
        check_model_matches(file_shape, shape, model_file, "checkpoint");
        model.load_params_llmc(params);
        load_master(params);
        read_state_file(dir + "/state.bin", st);
        const size_t total = model.param_layout().total;
        if (st.m.size() != total) bad_input("checkpoint '" + dir + "': optimizer state does not match the model");
        // The checkpoint holds the whole moments: take this rank's shard (any world size).
        for (int which = 0; which < 2; which++) {
            const std::vector<float>& full = which == 0 ? st.m : st.v;
            std::vector<float> part(optim.size(), 0.0f);
            for (size_t i = 0; i < part.size() && optim.begin() + i < total; i++) part[i] = full[optim.begin() + i];
            optim.load_moments_host(which, part);
        }
        if (st.world != world)
            con.message("note: the checkpoint was written by " + std::to_string(st.world) + " ranks, this run has " + std::to_string(world) +
                        ": the optimizer state is re-sharded and the data stream continues at the same position");
        optim.set_step_count(static_cast<int>(st.step));
        train_data->set_position(st.data);
        st.m.clear();
        st.v.clear();
        con.message("resumed from " + dir + " at step " + std::to_string(st.step));
        if (cfg.run.max_steps > 0 && st.step >= cfg.run.max_steps)
            con.message("note: the run is already at run.max_steps (" + std::to_string(cfg.run.max_steps) +
                        "): nothing to train; --set run.max_steps=N (and schedule.steps=N for a longer decay) continues it");
    } else if (!cfg.model.init.empty()) {
        // Pretrained weights (llm.c file, checkpoint, Hugging Face folder), a fresh optimizer.
        const Weights w = load_weights(cfg.model.init);
        std::string diff;
        auto check = [&](const char* key, int want, int have) {
            if (want != have) diff += std::string(diff.empty() ? "" : " ") + "--set " + key + "=" + std::to_string(have);
        };
        check("model.n_layer", shape.L, w.shape.L);
        check("model.n_head", shape.NH, w.shape.NH);
        check("model.n_embd", shape.C, w.shape.C);
        check("model.seq_len", shape.maxT, w.shape.maxT);
        check("model.vocab_size", shape.V, w.shape.V);
        if (!diff.empty())
            bad_input("model.init '" + cfg.model.init + "' holds L=" + std::to_string(w.shape.L) + " NH=" + std::to_string(w.shape.NH) +
                      " C=" + std::to_string(w.shape.C) + " maxT=" + std::to_string(w.shape.maxT) + " V=" + std::to_string(w.shape.V) +
                      ", not the config's model: set the model keys to match (" + diff + ")");
        check_model_matches(w.shape, shape, w.origin, "model.init");
        model.load_params_llmc(w.params);
        load_master(w.params);
        init_note = "initialised from " + w.origin + " (optimizer state fresh)";
    } else {
        model.init_weights(static_cast<uint64_t>(cfg.run.seed), init_options(cfg));
    }

    if (lead) {
        prepare_run_dir(cfg.run.out_dir, resume_dir, opt.force, con);
        write_file_atomic(cfg.run.out_dir + "/config.yaml", config_yaml);
    }
    JsonlLog log(cfg.run.out_dir + "/log.jsonl", !opt.resume.empty(), lead);

    // Start-up report: backend, model, memory (per rank), data.
    const size_t pbytes = model.buffer_elements() * dtype_size(backend->param_dtype());
    const size_t obytes = 2 * optim.size() * dtype_size(backend->stat_dtype()) + (optim.has_master() ? optim.size() * 4 : 0);
    const size_t abytes = model.act_layout().total_bytes;
    for (const std::string& note : cfg.notes) con.message("note: " + note);
    con.message("backend: " + backend->name() + " (" + backend->device_info() + ")" +
                (cfg.run.backend == "auto" ? std::string(", chosen by run.backend=auto") : std::string()));
    std::string kernel_note;
    for (const auto& f : kernel_families())
        if (std::find(f.backends.begin(), f.backends.end(), backend->name()) != f.backends.end()) {
            if (!kernel_note.empty()) kernel_note += ", ";
            kernel_note.append(f.name).append("=").append(backend->kernels().variant(f.name));
        }
    if (!kernel_note.empty()) con.message("kernels: " + kernel_note);
    con.message("model: " + std::to_string(param_count(shape)) + " parameters, L=" + std::to_string(shape.L) +
                " NH=" + std::to_string(shape.NH) + " C=" + std::to_string(shape.C) + " maxT=" + std::to_string(shape.maxT) +
                " V=" + std::to_string(shape.V) + " (padded " + std::to_string(shape.Vp) + ")");
    std::string arch_note;
    for (const auto& k : shape.arch.non_gpt2_keys()) arch_note += (arch_note.empty() ? "" : ", ") + k;
    con.message("architecture: " + (arch_note.empty() ? std::string("GPT-2") : "GPT-2 with " + arch_note) + "; optimizer: " +
                (optim.uses_muon() ? "Muon (hidden matrices) + AdamW (embeddings, head, gains, biases)" : std::string("AdamW")));
    con.message("memory: parameters " + human_bytes(pbytes) + ", gradients " + human_bytes(pbytes) + ", optimizer state " +
                human_bytes(obytes) + (optim.has_master() ? " (with float32 master weights)" : "") + ", activations " + human_bytes(abytes) + " (B=" + std::to_string(B) + ", T=" +
                std::to_string(T) + "), total " + human_bytes(2.0 * pbytes + obytes + abytes));
    if (world > 1 || comm->name() != "local")
        con.message("data parallel: " + std::to_string(world) + " ranks over " + comm->name() + " (launcher: " + env.launcher + "), " +
                    (zero1 ? "ZeRO-1: optimizer state sharded, " + human_bytes(double(obytes)) + " per rank instead of " +
                                 human_bytes(double(obytes) * world)
                           : std::string("optimizer state replicated (run.zero=0)")));
    con.message("batch: " + std::to_string(B) + " x " + std::to_string(T) + " x " + std::to_string(accum) + " accumulation x " +
                std::to_string(world) + " ranks = " + std::to_string(tokens_per_step) + " tokens per step");
    if (!init_note.empty()) con.message(init_note);
    con.message("train data: " + train_data->describe());
    con.message("val data: " + val_data->describe());
    if (res.loss_floor) con.message("loss floor (exact entropy of the source at T=" + std::to_string(T_val) + "): " + fmt(*res.loss_floor) + " nats/token");
    log.write("{\"type\":\"config\",\"backend\":\"" + backend->name() + "\",\"world\":" + std::to_string(world) +
              ",\"communicator\":\"" + comm->name() + "\",\"params\":" + std::to_string(param_count(shape)) +
              ",\"resume_step\":" + std::to_string(st.step) + ",\"loss_floor\":" + (res.loss_floor ? jnum(*res.loss_floor) : "null") +
              ",\"config\":" + config_to_json(cfg) + "}");

    g_interrupted = 0;
    g_lead = lead;
    for (int sig : {SIGINT, SIGTERM, SIGUSR1}) std::signal(sig, on_signal);
    LauncherWatch launcher_watch;

    std::vector<int32_t> x(tokens_per_micro), y(tokens_per_micro);
    const int64_t max_steps = cfg.run.max_steps;
    const double budget = cfg.run.budget_s, target = cfg.run.target_val_loss;
    const double flops_tok = flops_per_token(shape, T);
    int64_t last_eval_step = -1;
    double last_loss = NAN;

    // Untimed warm-up: one forward and backward pass on the first batch,
    // gradients discarded, no optimizer step, the data position restored. It
    // builds what a backend creates on first use (cuBLASLt plans, cuDNN
    // graphs, scratch buffers) before the clock starts, and it cannot train
    // the model that is then timed: the weights are unchanged.
    if (cfg.run.warmup_pass) {
        const StreamPosition pos = train_data->position();
        train_data->next_batch(x.data(), y.data());
        model.forward(x.data(), y.data(), true, 1.0 / double(tokens_per_step));
        model.backward();
        model.zero_grad();
        backend->synchronize();
        train_data->set_position(pos);
    }
    res.startup_time_s = seconds_since(t_start);

    // Whether every weight is finite (a scan of a host copy: only when a loss or
    // a validation says something is wrong, and before a checkpoint).
    auto weights_finite = [&]() {
        for (float w : model.params_llmc())
            if (!std::isfinite(w)) return false;
        return true;
    };

    auto evaluate = [&]() {
        const auto t0 = Clock::now();
        const ValResult v = val_windows > 0 ? evaluate_val_windows(model, *val_data, val_windows, T_val, tok, x, y, *comm, /*abortable=*/true)
                                            : evaluate_val(model, *val_data, cfg.run.val_batches, tok, x, y, *comm, /*abortable=*/true);
        const double eval_s = seconds_since(t0);
        st.eval_time_s += eval_s;
        if (v.aborted) return;
        if (!std::isfinite(v.loss))
            run_failed("training diverged: the validation loss is " + fmt(v.loss) + " at step " + std::to_string(st.step) +
                       (weights_finite() ? std::string(" (the weights are finite: the forward pass overflows)") : " (the weights are not finite)") +
                       "; nothing is saved from this state (try a lower optim.lr or optim.grad_clip)");
        last_eval_step = st.step;
        res.final_val_loss = v.loss;
        if (std::isfinite(v.bpb)) res.final_val_bpb = v.bpb;
        // Time to target, interpolated linearly between the two evaluations
        // around the crossing. last_eval_loss holds the target metric's value.
        const double metric = target_bpb ? v.bpb : v.loss;
        if (target > 0 && st.time_to_target_s < 0 && metric <= target) {
            if (!st.have_last_eval || st.last_eval_loss <= target) st.time_to_target_s = st.train_time_s;
            else st.time_to_target_s = st.last_eval_time_s + (st.last_eval_loss - target) / (st.last_eval_loss - metric) *
                                                                    (st.train_time_s - st.last_eval_time_s);
        }
        st.have_last_eval = true;
        st.last_eval_time_s = st.train_time_s;
        st.last_eval_loss = metric;
        log.write("{\"type\":\"val\",\"step\":" + std::to_string(st.step) + ",\"val_loss\":" + jnum(v.loss) + ",\"val_bpb\":" +
                  jnum(v.bpb) + ",\"train_time_s\":" + jnum(st.train_time_s) + ",\"tokens\":" + std::to_string(st.tokens) +
                  ",\"eval_time_s\":" + jnum(eval_s) + "}");
        con.message("step " + std::to_string(st.step) + ": val loss " + fmt(v.loss) +
                    (std::isfinite(v.bpb) ? ", val bpb " + fmt(v.bpb) : std::string()) + " (train time " + human_time(st.train_time_s) + ")");
    };

    // HellaSwag (llm.c's acc and acc_norm) on the training model at its (B,T), off the clock.
    std::vector<HellaswagExample> hellaswag;
    if (cfg.run.hellaswag_every > 0) {
        const Tokenizer hs_tok = Tokenizer::load_default(cfg.data.tokenizer);
        if (hs_tok.vocab_size() != shape.V)
            bad_input("run.hellaswag needs the model's tokenizer: " + Tokenizer::describe(cfg.data.tokenizer) + " has " +
                      std::to_string(hs_tok.vocab_size()) + " tokens, the model " + std::to_string(shape.V));
        hellaswag = load_hellaswag(cfg.run.hellaswag, hs_tok);
        con.message("HellaSwag: " + std::to_string(hellaswag.size()) + " examples from " + cfg.run.hellaswag + ", every " +
                    std::to_string(cfg.run.hellaswag_every) + " steps" +
                    (cfg.run.hellaswag_examples > 0 ? " (the first " + std::to_string(cfg.run.hellaswag_examples) + ")" : std::string()));
    }
    int64_t last_hs_step = -1;
    auto evaluate_hellaswag = [&]() {
        const auto t0 = Clock::now();
        const HellaswagResult h = eval_hellaswag(model, hellaswag, cfg.run.hellaswag_examples, comm.get());
        st.eval_time_s += seconds_since(t0);
        last_hs_step = st.step;
        log.write("{\"type\":\"hellaswag\",\"step\":" + std::to_string(st.step) + ",\"acc\":" + jnum(h.acc()) + ",\"acc_norm\":" +
                  jnum(h.acc_norm()) + ",\"examples\":" + std::to_string(h.total) + ",\"truncated_rows\":" + std::to_string(h.truncated) +
                  ",\"train_time_s\":" + jnum(st.train_time_s) + ",\"tokens\":" + std::to_string(st.tokens) + ",\"eval_time_s\":" +
                  jnum(seconds_since(t0)) + "}");
        con.message("step " + std::to_string(st.step) + ": HellaSwag acc_norm " + fmt(h.acc_norm()) + ", acc " + fmt(h.acc()) + " (" +
                    std::to_string(h.correct_norm) + "/" + std::to_string(h.total) + ")");
    };

    // Samples are generated off the training clock and apart from evaluation
    // (sample_time_s: this process's sampling; eval_time_s is validation only).
    std::unique_ptr<Generator> generator;
    auto print_sample = [&]() {
        const auto t0 = Clock::now();
        if (!generator) generator = std::make_unique<Generator>(model);
        const std::string text = sample_text(*generator, tok, cfg.run.sample_tokens, uint64_t(cfg.run.seed) + uint64_t(st.step));
        res.sample_time_s += seconds_since(t0);
        log.write("{\"type\":\"sample\",\"step\":" + std::to_string(st.step) + ",\"text\":" + json_quote(printable_utf8(text)) + "}");
        con.message("step " + std::to_string(st.step) + " sample: " + text);
    };

    // The whole moments (layout.total elements) on every rank: with ZeRO-1 each
    // rank contributes its shard through an all-gather in backend memory.
    auto gather_moments = [&](int which) {
        const size_t total = model.param_layout().total;
        std::vector<float> mine = optim.moments_host(which);
        if (!zero1) {
            mine.resize(total);
            return mine;
        }
        const DType dt = backend->stat_dtype();
        const size_t esize = dtype_size(dt);
        std::vector<double> d(n_buf, 0.0);
        for (size_t i = 0; i < mine.size(); i++) d[optim.begin() + i] = mine[i];
        std::vector<char> raw(n_buf * esize);
        from_double(d.data(), raw.data(), dt, n_buf);
        void* buf = backend->alloc(raw.size(), "checkpoint moments");
        backend->to_device(buf, raw.data(), raw.size());
        comm->all_gather(View{buf, dt}, n_buf);
        backend->to_host(raw.data(), buf, raw.size());
        backend->free(buf);
        to_double(raw.data(), dt, d.data(), n_buf);
        return std::vector<float>(d.begin(), d.begin() + total);
    };

    bool last_batch_valid = false;  // x, y hold a real batch (of the last step or a validation)
    auto save = [&](int keep = 2) {
        // The weights an update left can be finite and still ruined (lr 1e30):
        // they must give a finite loss on the last batch before they are written.
        if (last_batch_valid) {
            const double check = comm->all_reduce_sum(model.forward(x.data(), y.data(), false));
            if (!std::isfinite(check))
                run_failed("training diverged: the weights after step " + std::to_string(st.step) + " give a loss of " + fmt(check / world) +
                           " on its batch; no checkpoint is written from them" +
                           (res.checkpoint.empty() ? std::string() : " (the last good one is " + res.checkpoint + ")") +
                           " (try a lower optim.lr or optim.grad_clip)");
        }
        TrainState s = st;
        s.data = train_data->position();
        s.rank = 0;
        s.world = world;
        s.m = gather_moments(0);  // collective: every rank takes part
        s.v = gather_moments(1);
        std::vector<float> params;
        if (optim.has_master()) {
            // The float32 master weights, not the bf16 parameters: a resume continues exactly.
            optim.init_master(model.params());  // no-op once set; a checkpoint before the first step has none yet
            const std::vector<float> master = gather_moments(2);  // collective
            for (const auto& t : model.param_layout().tensors)
                params.insert(params.end(), master.begin() + long(t.offset), master.begin() + long(t.offset + t.numel));
        }
        // Every rank holds the same weights, so every rank reaches the same verdict.
        if (params.empty()) params = model.params_llmc();
        for (float w : params)
            if (!std::isfinite(w))
                run_failed("training diverged: the weights are not finite at step " + std::to_string(st.step) +
                           "; no checkpoint is written from them" + (res.checkpoint.empty() ? std::string() : " (the last good one is " + res.checkpoint + ")") +
                           " (try a lower optim.lr or optim.grad_clip)");
        if (!lead) return;
        res.checkpoint = save_checkpoint(cfg.run.out_dir, shape, params, s, config_yaml, keep);
        log.write("{\"type\":\"checkpoint\",\"step\":" + std::to_string(st.step) + ",\"path\":\"" + res.checkpoint + "\"}");
    };

    constexpr int kMaxNonfiniteStreak = 20;  // skip_step gives up after this many in a row
    int nonfinite_streak = 0;
    // The verdict on each update, before it is applied: a NaN/inf loss or norm
    // (run.on_nonfinite) and llm.c's z-score outliers never reach the weights.
    // Without z-score skips the device refuses a non-finite update itself
    // (train/step.h) and this judge, called after the step, only keeps the
    // books (the z-score windows) and names the verdict the device applied.
    std::string skipped;
    bool diverged = false;
    auto judge = [&](double loss, double n) {
        if (!std::isfinite(loss) || !std::isfinite(n)) {
            if (cfg.run.on_nonfinite == "skip_step") skipped = "non-finite loss or gradient norm";
            else diverged = true;
            return false;
        }
        const double zl = st.loss_window.add(loss), zg = st.norm_window.add(n);
        if (cfg.run.skip_update_lossz > 0 && std::isfinite(zl) && zl > cfg.run.skip_update_lossz)
            skipped = "loss z-score " + fmt(zl) + " > run.skip_update_lossz " + fmt(cfg.run.skip_update_lossz);
        else if (cfg.run.skip_update_gradz > 0 && std::isfinite(zg) && zg > cfg.run.skip_update_gradz)
            skipped = "gradient norm z-score " + fmt(zg) + " > run.skip_update_gradz " + fmt(cfg.run.skip_update_gradz);
        return skipped.empty();
    };
    const bool host_judges = cfg.run.skip_update_lossz > 0 || cfg.run.skip_update_gradz > 0;

    StepOptions sopt;
    sopt.accum = accum;
    sopt.zero1 = zero1;
    sopt.cuda_graph = cfg.run.cuda_graph;
    sopt.grad_accum_f32 = cfg.run.grad_accum_f32;
    sopt.reduce_hook = grad_reduce_hook(cfg, model, *comm);
    if (host_judges) sopt.judge = judge;
    TrainStep step(model, optim, *comm, sopt);
    std::string graph_reported;
    const double t_loop_start = st.train_time_s;
    const int64_t step_loop_start = st.step;
    // run.val_every_tokens: evaluations on a grid of tokens (0, E, 2E, ...), at
    // the first step boundary at or past each point, whatever the batch size.
    const int64_t every_tokens = cfg.run.val_every_tokens;
    int64_t next_eval_tokens = every_tokens > 0 && st.tokens > 0 ? (st.tokens / every_tokens + 1) * every_tokens : 0;
    const bool median_clock = cfg.run.step_clock == "median", cpu_clock = cfg.run.step_clock == "cpu";
    if (cpu_clock && backend->name() != "cpu")
        bad_input("run.step_clock cpu times a step by the CPU time of this process, which says nothing of work on a GPU: use median with the " +
                  backend->name() + " backend");
    RunningMedian step_median;
    double wall_train_s = 0;
    for (;;) {
        const bool eval_due = every_tokens > 0 ? st.tokens >= next_eval_tokens : cfg.run.val_every > 0 && st.step % cfg.run.val_every == 0;
        if (eval_due && last_eval_step != st.step) {
            if (every_tokens > 0) next_eval_tokens = (st.tokens / every_tokens + 1) * every_tokens;
            evaluate();
            if (target > 0 && st.time_to_target_s >= 0) { res.stop_reason = "target"; break; }
        }
        if (cfg.run.hellaswag_every > 0 && st.step % cfg.run.hellaswag_every == 0 && last_hs_step != st.step) evaluate_hellaswag();
        if (max_steps > 0 && st.step >= max_steps) { res.stop_reason = "max_steps"; break; }
        if (budget > 0 && st.train_time_s >= budget) { res.stop_reason = "budget"; break; }
        // A signal may reach the ranks at different steps: stop together.
        if (comm->all_reduce_sum(g_interrupted ? 1.0 : 0.0) > 0) { res.stop_reason = "interrupted"; break; }

        const auto t0 = Clock::now();
        const double cpu0 = process_cpu_seconds();
        const StreamPosition step_start = train_data->position();
        try {
            for (int micro = 0; micro < accum; micro++) train_data->next_batch(step.inputs(micro), step.targets(micro));
        } catch (const Error& e) {
            // A shard that went bad under the run (changed, truncated): the
            // weights are those of the last completed step, so they are saved
            // (one process; ranks cannot agree on it here) before the error
            // ends the run.
            if (world == 1 && st.step > step_loop_start && e.kind != ErrorKind::OutOfMemory) {
                train_data->set_position(step_start);
                last_batch_valid = false;
                save();
                throw Error(e.kind, std::string(e.what()) + "\n(at step " + std::to_string(st.step + 1) + "; saving the checkpoint of step " +
                                        std::to_string(st.step) + " first: " + res.checkpoint + ")");
            }
            throw;
        }
        last_batch_valid = true;
        const double lr = learning_rate(cfg, static_cast<int>(st.step));
        // The whole step, waited for once: the loss is the mean over all
        // ranks' micro-batches, the norm the global one before clipping.
        skipped.clear();
        diverged = false;
        const StepResult sr = step.run(lr);
        const double loss = sr.loss, norm = sr.grad_norm;
        if (!host_judges) judge(loss, norm);
        if (cfg.run.cuda_graph && step.graph_state() != graph_reported && step.graph_state() != "waiting") {
            graph_reported = step.graph_state();
            if (step.graph_state() != "replaying")
                con.message("run.cuda_graph: the step runs without a graph (" + step.graph_state() + ")");
            else
                con.message("run.cuda_graph: the step is recorded at step " + std::to_string(st.step + 1) + " and replayed from then on" +
                            (backend->name() == "cuda" ? std::string(" as one CUDA graph")
                                                       : " (the " + backend->name() + " backend replays its recorded op calls: no speed-up, it exists so the recorded step is tested)"));
        }
        if (diverged || (!std::isfinite(loss) && !skipped.empty())) {
            // Is it the weights (an earlier update ruined them) or this step?
            if (!weights_finite())
                run_failed("training diverged: the weights are not finite after the update of step " + std::to_string(st.step) +
                           " (lr " + fmt(learning_rate(cfg, static_cast<int>(st.step) - 1)) +
                           "); nothing was saved from them (try a lower optim.lr or optim.grad_clip)");
        }
        if (diverged)
            run_failed("training diverged: loss " + fmt(loss) + ", gradient norm " + fmt(norm) + " at step " + std::to_string(st.step + 1) +
                       "; the update was not applied and nothing was saved from it (run.on_nonfinite=stop; try a lower optim.lr or "
                       "optim.grad_clip, or run.on_nonfinite=skip_step)");
        if (!skipped.empty()) {
            // The step still counts (schedule, data, the optimizer's step count: TrainStep advanced it), so a resume stays exact.
            st.skipped_steps++;
            nonfinite_streak = std::isfinite(loss) && std::isfinite(norm) ? 0 : nonfinite_streak + 1;
            log.write("{\"type\":\"skip\",\"step\":" + std::to_string(st.step + 1) + ",\"loss\":" + jnum(loss) + ",\"grad_norm\":" +
                      jnum(norm) + ",\"reason\":" + json_quote(skipped) + "}");
            con.message("step " + std::to_string(st.step + 1) + ": update skipped (" + skipped + ")");
            if (nonfinite_streak >= kMaxNonfiniteStreak)
                run_failed("training diverged: " + std::to_string(nonfinite_streak) + " steps in a row had a non-finite loss or gradient norm (last at step " +
                           std::to_string(st.step + 1) + "; run.on_nonfinite=skip_step skipped them all)");
        } else {
            nonfinite_streak = 0;
        }
        // Rank 0's clock decides budgets for everyone, so ranks stop at the same step.
        double measured[2] = {seconds_since(t0), process_cpu_seconds() - cpu0};  // wall, CPU
        comm->broadcast(measured, sizeof measured, 0);
        const double wall_dt = measured[0], cpu_dt = measured[1];
        wall_train_s += wall_dt;
        step_median.add(cpu_clock ? cpu_dt : wall_dt);
        // run.step_clock median / cpu: every step costs the median step time so
        // far (wall or CPU), so a spell in which the process was paused or
        // starved by other processes is not charged.
        const double dt = median_clock || cpu_clock ? step_median.median() : wall_dt;

        st.train_time_s += dt;
        st.step++;
        st.tokens += tokens_per_step;
        last_loss = loss;
        res.step_losses.push_back(loss);

        const double tok_s = tokens_per_step / wall_dt;
        if (cfg.run.log_every > 0 && st.step % cfg.run.log_every == 0)
            log.write("{\"type\":\"step\",\"step\":" + std::to_string(st.step) + ",\"loss\":" + jnum(loss) + ",\"lr\":" + jnum(lr) +
                      ",\"grad_norm\":" + jnum(norm) + ",\"step_ms\":" + jnum(wall_dt * 1e3) + ",\"cpu_ms\":" + jnum(cpu_dt * 1e3) + ",\"tokens_per_s\":" + jnum(tok_s) +
                      ",\"train_time_s\":" + jnum(st.train_time_s) + ",\"tokens\":" + std::to_string(st.tokens) + "}");

        // Progress and ETA against whichever limit is nearer.
        const double avg = (st.train_time_s - t_loop_start) / double(st.step - step_loop_start);
        double frac = 0, eta = -1;
        if (max_steps > 0) { frac = double(st.step) / max_steps; eta = (max_steps - st.step) * avg; }
        if (budget > 0 && (eta < 0 || budget - st.train_time_s < eta)) { eta = budget - st.train_time_s; frac = std::max(frac, st.train_time_s / budget); }
        con.progress(st.step, max_steps, frac, loss, lr, tok_s, eta);

        if (lead && !g_interrupted && cfg.run.sample_every > 0 && st.step % cfg.run.sample_every == 0) print_sample();
        // The last step's checkpoint is written after the loop, after the final validation.
        if (cfg.run.checkpoint_every > 0 && st.step % cfg.run.checkpoint_every == 0 && !(max_steps > 0 && st.step >= max_steps)) save();
    }

    // Interrupted: no final validation (it can take long); the checkpoint is what matters.
    if (res.stop_reason != "interrupted" && last_eval_step != st.step) {
        evaluate();
        if (res.stop_reason != "target" && target > 0 && st.time_to_target_s >= 0) res.stop_reason = "target";
    }
    if (cfg.run.hellaswag_every > 0 && last_hs_step != st.step && res.stop_reason != "interrupted") evaluate_hellaswag();
    // checkpoint_every -1: no checkpoint at all (search trials), except when
    // interrupted, which always saves what was trained. A second signal skips
    // the pruning of old checkpoints.
    if (cfg.run.checkpoint_every >= 0 || res.stop_reason == "interrupted") save(g_interrupted >= 2 ? 0 : 2);

    res.steps = st.step;
    res.step_graph = step.graph_state();
    res.graph_replays = step.replays();
    res.tokens = st.tokens;
    res.train_time_s = st.train_time_s;
    res.eval_time_s = st.eval_time_s;
    res.final_train_loss = last_loss;
    if (st.time_to_target_s >= 0) res.time_to_target_s = st.time_to_target_s;
    // This process's rate; a resumed run that had nothing left to train
    // reports the rate of the whole run so far instead of 0.
    const double loop_time = st.train_time_s - t_loop_start;
    const bool trained_here = st.step > step_loop_start && loop_time > 0;
    res.tokens_per_s = trained_here                ? double(st.step - step_loop_start) * tokens_per_step / loop_time
                       : st.train_time_s > 0 ? double(st.tokens) / st.train_time_s
                                             : 0;

    const double peak_tflops = backend->peak_tflops(nullptr);  // per device
    std::ostringstream sum;
    sum << "{\"type\":\"summary\",\"stop_reason\":\"" << res.stop_reason << "\",\"steps\":" << res.steps << ",\"tokens\":" << res.tokens
        << ",\"train_time_s\":" << jnum(res.train_time_s) << ",\"eval_time_s\":" << jnum(res.eval_time_s)
        << ",\"sample_time_s\":" << jnum(res.sample_time_s)
        << ",\"startup_time_s\":" << jnum(res.startup_time_s) << ",\"tokens_per_s\":" << jnum(res.tokens_per_s)
        << ",\"step_clock\":\"" << cfg.run.step_clock << "\",\"wall_train_time_s\":" << jnum(wall_train_s)
        << ",\"median_step_ms\":" << jnum(step_median.median() * 1e3) << ",\"tokens_per_step\":" << tokens_per_step
        << ",\"flops_per_token\":" << jnum(flops_tok) << ",\"final_train_loss\":" << jnum(res.final_train_loss)
        << ",\"final_val_loss\":" << (res.final_val_loss ? jnum(*res.final_val_loss) : "null")
        << ",\"final_val_bpb\":" << (res.final_val_bpb ? jnum(*res.final_val_bpb) : "null")
        << ",\"target_metric\":\"" << cfg.run.target_metric << "\""
        << ",\"target_val_loss\":" << (target > 0 ? jnum(target) : "null")
        << ",\"time_to_target_s\":" << (res.time_to_target_s ? jnum(*res.time_to_target_s) : "null")
        << ",\"loss_floor\":" << (res.loss_floor ? jnum(*res.loss_floor) : "null")
        << ",\"peak_memory_bytes\":" << backend->peak_allocated_bytes()
        << ",\"peak_tflops\":" << (peak_tflops > 0 ? jnum(peak_tflops) : "null")
        << ",\"mfu\":" << (peak_tflops > 0 ? jnum(res.tokens_per_s * flops_tok / 1e12 / (peak_tflops * world)) : "null")
        << ",\"step_graph\":" << json_quote(step.graph_state()) << ",\"graph_replays\":" << step.replays()
        << ",\"backend\":" << json_quote(backend->name()) << ",\"device\":" << json_quote(backend->device_info())
        << ",\"checkpoint\":\"" << res.checkpoint << "\"}";
    log.write(sum.str());
    // No rank leaves before rank 0 has written its checkpoint and log: under
    // mpirun the first rank to exit can end the others.
    if (world > 1) comm->all_reduce_sum(0.0);
    res.rank = rank;

    std::string done = "done: " + res.stop_reason + " after " + std::to_string(res.steps) + " steps, train time " +
                       fmt(res.train_time_s) + " s (eval " + fmt(res.eval_time_s) + " s" +
                       (res.sample_time_s > 0 ? ", sampling " + fmt(res.sample_time_s) + " s" : std::string()) + ", start-up " +
                       fmt(res.startup_time_s) + " s), " + fmt(res.tokens_per_s) + " tokens/s" +
                       (trained_here ? std::string() : " (the whole run's: no step trained in this process)") + ", final val loss " +
                       (res.final_val_loss ? fmt(*res.final_val_loss) : "n/a");
    if (target > 0) done += ", time to target " + (res.time_to_target_s ? fmt(*res.time_to_target_s) + " s" : std::string("not reached"));
    con.message(done);
    if (!res.checkpoint.empty()) con.message("checkpoint: " + res.checkpoint);
    for (int sig : {SIGINT, SIGTERM, SIGUSR1}) std::signal(sig, SIG_DFL);
    return res;
}

EvalResult evaluate_checkpoint(const Config& cfg, const std::string& weights, const EvalOptions& opt) {
    auto backend = make_backend(cfg);
    EvalResult r;
    // An llm.c model file (e.g. gpt2_124M.bin), a checkpoint or run directory, or a Hugging Face folder.
    Weights w = load_weights(weights);
    r.shape = w.shape;
    r.origin = w.origin;
    auto comm = make_communicator(DistEnv{});
    if (opt.val_batches > 0) {
        // At the config's T, or the model's context when that is shorter.
        r.B = cfg.run.batch_size;
        r.T = std::min(train_seq_len(cfg), w.shape.maxT);
        GPT2 model(w.shape, *backend, r.B, r.T);
        model.load_params_llmc(w.params);
        Config c = cfg;
        c.model.vocab_size = w.shape.V;
        auto val = make_data_source(c, Split::val, r.B, r.T);
        std::vector<int32_t> x(size_t(r.B) * r.T), y(size_t(r.B) * r.T);
        r.val_loss = evaluate_val(model, *val, opt.val_batches, nullptr, x, y, *comm).loss;
        if (!std::isfinite(r.val_loss))
            run_failed("the validation loss of '" + w.origin + "' is " + fmt(r.val_loss) +
                       ": its weights are finite but the forward pass overflows (a diverged run?)");
    }
    if (!opt.hellaswag.empty()) {
        const Tokenizer tok = Tokenizer::load_default(opt.tokenizer.empty() ? cfg.data.tokenizer : opt.tokenizer);
        if (tok.vocab_size() != w.shape.V)
            bad_input("--hellaswag needs the model's tokenizer: " + Tokenizer::describe(opt.tokenizer.empty() ? cfg.data.tokenizer : opt.tokenizer) +
                      " has " + std::to_string(tok.vocab_size()) + " tokens, the model " + std::to_string(w.shape.V));
        const std::vector<HellaswagExample> ex = load_hellaswag(opt.hellaswag, tok);
        // T: the longest row (context + ending) of the examples scored, up to the model's context.
        size_t longest = 2;
        const size_t n = opt.hellaswag_examples > 0 ? std::min(ex.size(), size_t(opt.hellaswag_examples)) : ex.size();
        for (size_t i = 0; i < n; i++)
            for (const auto& e : ex[i].endings) longest = std::max(longest, ex[i].ctx.size() + e.size());
        r.hellaswag_T = int(std::min<size_t>(longest - 1, size_t(w.shape.maxT)));
        r.hellaswag_B = cfg.run.batch_size;
        GPT2 model(w.shape, *backend, r.hellaswag_B, r.hellaswag_T);
        model.load_params_llmc(w.params);
        r.hellaswag = eval_hellaswag(model, ex, opt.hellaswag_examples, comm.get());
    }
    return r;
}

}  // namespace gpt
