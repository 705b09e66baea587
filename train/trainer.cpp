// The training loop.
//
// Time accounting: only the optimizer steps are charged to train_time_s (the
// budget and time-to-target clock). Start-up (backend, weights, data, resume)
// and evaluation are timed separately, so a slower evaluation or a bigger
// model file never looks like slower training.
#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <memory>
#include <optional>
#include <random>
#include <sstream>

#include "data/source.h"
#include "data/tokenizer.h"
#include "kernels/backend.h"
#include "model/generate.h"
#include "model/gpt2.h"
#include "kernels/convert.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/step.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

volatile std::sig_atomic_t g_interrupted = 0;
void on_signal(int) { g_interrupted = 1; }

std::string human_bytes(double b) {
    char buf[32];
    if (b >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1 << 30));
    else std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
    return buf;
}

std::string human_time(double s) {
    char buf[32];
    if (s < 0 || !std::isfinite(s)) return "?";
    if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
    else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
    return buf;
}

std::string fmt(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", x);
    return buf;
}

// JSON number, or null for NaN/inf (JSON has no NaN).
std::string jnum(double x) { return std::isfinite(x) ? fmt(x) : "null"; }

// One JSON object per line, flushed per record so a killed run keeps its log.
// Only rank 0 of a data-parallel job writes (enabled = false elsewhere).
class JsonlLog {
public:
    JsonlLog(const std::string& path, bool append, bool enabled) {
        if (!enabled) return;
        f_.open(path, append ? std::ios::app : std::ios::trunc);
        if (!f_) run_failed("cannot open log file '" + path + "' for writing");
    }
    void write(const std::string& json) {
        if (f_.is_open()) f_ << json << '\n' << std::flush;
    }

private:
    std::ofstream f_;
};

// The live console line: progress bar, loss, tokens/s, ETA. Redrawn in place
// on a terminal; on a pipe or file, one line per second at most.
class Console {
public:
    explicit Console(bool quiet) : quiet_(quiet), tty_(isatty(fileno(stdout))) {}
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
    }
    void message(const std::string& s) {
        if (quiet_) return;
        if (pending_) std::printf("\n");
        pending_ = false;
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
    double loss = 0;  // mean nats per token
    double bpb = NAN; // bits per UTF-8 byte of the targets' text, when a tokenizer is known
};

// Mean loss over `batches` val batches from the start of the val stream, and
// bits per byte: total nats / ln 2 / total bytes of the target tokens' text.
// Each rank evaluates its own part of the val stream; sums are combined over ranks.
ValResult evaluate_val(GPT2& model, DataSource& val, int batches, const Tokenizer* tok, std::vector<int32_t>& x,
                       std::vector<int32_t>& y, Communicator& comm) {
    val.reset();
    double sum = 0, bytes = 0;
    for (int i = 0; i < batches; i++) {
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

}  // namespace

std::function<void(int)> grad_reduce_hook(const Config& cfg, GPT2& model, Communicator& comm) {
    const bool zero1 = cfg.run.zero == 1 && comm.world() > 1;
    if (!cfg.run.overlap_reduce || zero1 || comm.name() == "local") return {};
    return [&model, &comm](int layer) { comm.start_all_reduce_sum(model.grads(), model.grad_ranges(layer)); };
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

    GPT2 model(shape, *backend, B, T, world);
    // ZeRO-1: this rank owns the moments (and the update) of one contiguous shard.
    const size_t n_buf = model.buffer_elements(), shard = n_buf / world;
    AdamWOptimizer optim(*backend, model.param_layout(), cfg.optim, zero1 ? rank * shard : 0, zero1 ? (rank + 1) * shard : n_buf);
    auto train_data = make_data_source(cfg, Split::train, B, T, rank, world);
    auto val_data = make_data_source(cfg, Split::val, B, T, rank, world);
    res.loss_floor = train_data->loss_floor();
    const std::optional<Tokenizer> tokenizer = load_tokenizer(cfg);
    const Tokenizer* tok = tokenizer ? &*tokenizer : nullptr;
    const bool target_bpb = cfg.run.target_metric == "val_bpb";

    TrainState st;
    if (!opt.resume.empty()) {
        const std::string dir = resolve_checkpoint(opt.resume);
        ModelShape file_shape;
        auto params = read_model_file(dir + "/model.bin", file_shape);
        if (file_shape.L != shape.L || file_shape.NH != shape.NH || file_shape.C != shape.C || file_shape.maxT != shape.maxT ||
            file_shape.V != shape.V)
            bad_input("checkpoint '" + dir + "' holds a different model shape than the config (model.* keys)");
        model.load_params_llmc(params);
        if (optim.has_master()) {
            // The file's float32 values are the master weights; the bf16 parameters are their rounding.
            const Layout& lay = model.param_layout();
            std::vector<float> part(optim.size(), 0.0f);
            size_t pos = 0;
            for (const auto& t : lay.tensors)
                for (size_t i = 0; i < t.numel; i++, pos++) {
                    const size_t at = t.offset + i;
                    if (at >= optim.begin() && at < optim.begin() + part.size()) part[at - optim.begin()] = params[pos];
                }
            optim.load_moments_host(2, part);
        }
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
    } else {
        model.init_weights(static_cast<uint64_t>(cfg.run.seed));
    }

    if (lead) {
        std::error_code ec;
        fs::create_directories(cfg.run.out_dir, ec);
        if (ec || !fs::is_directory(cfg.run.out_dir))
            bad_input("run.out_dir '" + cfg.run.out_dir + "': cannot create the run directory" + (ec ? ": " + ec.message() : std::string()));
        if (::access(cfg.run.out_dir.c_str(), W_OK) != 0)
            bad_input("run.out_dir '" + cfg.run.out_dir + "': the run directory is not writable");
        write_file_atomic(cfg.run.out_dir + "/config.yaml", config_yaml);
    }
    JsonlLog log(cfg.run.out_dir + "/log.jsonl", !opt.resume.empty(), lead);

    // Start-up report: backend, model, memory (per rank), data.
    const size_t pbytes = model.buffer_elements() * dtype_size(backend->param_dtype());
    const size_t obytes = 2 * optim.size() * dtype_size(backend->stat_dtype()) + (optim.has_master() ? optim.size() * 4 : 0);
    const size_t abytes = model.act_layout().total_bytes;
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
    con.message("train data: " + train_data->describe());
    con.message("val data: " + val_data->describe());
    if (res.loss_floor) con.message("loss floor (exact entropy of the source at T=" + std::to_string(T) + "): " + fmt(*res.loss_floor) + " nats/token");
    log.write("{\"type\":\"config\",\"backend\":\"" + backend->name() + "\",\"world\":" + std::to_string(world) +
              ",\"communicator\":\"" + comm->name() + "\",\"params\":" + std::to_string(param_count(shape)) +
              ",\"resume_step\":" + std::to_string(st.step) + ",\"loss_floor\":" + (res.loss_floor ? jnum(*res.loss_floor) : "null") +
              ",\"config\":" + config_to_json(cfg) + "}");

    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    g_interrupted = 0;

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

    auto evaluate = [&]() {
        const auto t0 = Clock::now();
        const ValResult v = evaluate_val(model, *val_data, cfg.run.val_batches, tok, x, y, *comm);
        st.eval_time_s += seconds_since(t0);
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
                  ",\"eval_time_s\":" + jnum(seconds_since(t0)) + "}");
        con.message("step " + std::to_string(st.step) + ": val loss " + fmt(v.loss) +
                    (std::isfinite(v.bpb) ? ", val bpb " + fmt(v.bpb) : std::string()) + " (train time " + human_time(st.train_time_s) + ")");
    };

    // Samples are generated off the training clock, like evaluations.
    std::unique_ptr<Generator> generator;
    auto print_sample = [&]() {
        const auto t0 = Clock::now();
        if (!generator) generator = std::make_unique<Generator>(model);
        const std::string text = sample_text(*generator, tok, cfg.run.sample_tokens, uint64_t(cfg.run.seed) + uint64_t(st.step));
        st.eval_time_s += seconds_since(t0);
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

    auto save = [&]() {
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
        if (!lead) return;
        if (params.empty()) params = model.params_llmc();
        res.checkpoint = save_checkpoint(cfg.run.out_dir, shape, params, s, config_yaml);
        log.write("{\"type\":\"checkpoint\",\"step\":" + std::to_string(st.step) + ",\"path\":\"" + res.checkpoint + "\"}");
    };

    StepOptions sopt;
    sopt.accum = accum;
    sopt.zero1 = zero1;
    sopt.cuda_graph = cfg.run.cuda_graph;
    sopt.reduce_hook = grad_reduce_hook(cfg, model, *comm);
    TrainStep step(model, optim, *comm, sopt);
    std::string graph_reported;
    const double t_loop_start = st.train_time_s;
    const int64_t step_loop_start = st.step;
    for (;;) {
        if (cfg.run.val_every > 0 && st.step % cfg.run.val_every == 0 && last_eval_step != st.step) {
            evaluate();
            if (target > 0 && st.time_to_target_s >= 0) { res.stop_reason = "target"; break; }
        }
        if (max_steps > 0 && st.step >= max_steps) { res.stop_reason = "max_steps"; break; }
        if (budget > 0 && st.train_time_s >= budget) { res.stop_reason = "budget"; break; }
        // A signal may reach the ranks at different steps: stop together.
        if (comm->all_reduce_sum(g_interrupted ? 1.0 : 0.0) > 0) { res.stop_reason = "interrupted"; break; }

        const auto t0 = Clock::now();
        for (int micro = 0; micro < accum; micro++) train_data->next_batch(step.inputs(micro), step.targets(micro));
        const double lr = learning_rate(cfg, static_cast<int>(st.step));
        // The whole step, waited for once: the loss is the mean over all
        // ranks' micro-batches, the norm the global one before clipping.
        const StepResult sr = step.run(lr);
        const double loss = sr.loss, norm = sr.grad_norm;
        if (cfg.run.cuda_graph && step.graph_state() != graph_reported && step.graph_state() != "waiting") {
            graph_reported = step.graph_state();
            if (step.graph_state() != "replaying")
                con.message("run.cuda_graph: the step runs without a graph (" + step.graph_state() + ")");
            else
                con.message("run.cuda_graph: the step is recorded at step " + std::to_string(st.step + 1) + " and replayed from then on" +
                            (backend->name() == "cuda" ? std::string(" as one CUDA graph")
                                                       : " (the " + backend->name() + " backend replays its recorded op calls: no speed-up, it exists so the recorded step is tested)"));
        }
        // Rank 0's clock decides budgets for everyone, so ranks stop at the same step.
        double dt = seconds_since(t0);
        comm->broadcast(&dt, sizeof dt, 0);

        st.train_time_s += dt;
        st.step++;
        st.tokens += tokens_per_step;
        last_loss = loss;
        res.step_losses.push_back(loss);
        if (!std::isfinite(loss) || !std::isfinite(norm))
            run_failed("training diverged: loss " + fmt(loss) + ", gradient norm " + fmt(norm) + " at step " + std::to_string(st.step) +
                       " (try a lower optim.lr or optim.grad_clip)");

        const double tok_s = tokens_per_step / dt;
        if (cfg.run.log_every > 0 && st.step % cfg.run.log_every == 0)
            log.write("{\"type\":\"step\",\"step\":" + std::to_string(st.step) + ",\"loss\":" + jnum(loss) + ",\"lr\":" + jnum(lr) +
                      ",\"grad_norm\":" + jnum(norm) + ",\"step_ms\":" + jnum(dt * 1e3) + ",\"tokens_per_s\":" + jnum(tok_s) +
                      ",\"train_time_s\":" + jnum(st.train_time_s) + ",\"tokens\":" + std::to_string(st.tokens) + "}");

        // Progress and ETA against whichever limit is nearer.
        const double avg = (st.train_time_s - t_loop_start) / double(st.step - step_loop_start);
        double frac = 0, eta = -1;
        if (max_steps > 0) { frac = double(st.step) / max_steps; eta = (max_steps - st.step) * avg; }
        if (budget > 0 && (eta < 0 || budget - st.train_time_s < eta)) { eta = budget - st.train_time_s; frac = std::max(frac, st.train_time_s / budget); }
        con.progress(st.step, max_steps, frac, loss, lr, tok_s, eta);

        if (lead && cfg.run.sample_every > 0 && st.step % cfg.run.sample_every == 0) print_sample();
        if (cfg.run.checkpoint_every > 0 && st.step % cfg.run.checkpoint_every == 0) save();
    }

    if (last_eval_step != st.step) {
        evaluate();
        if (res.stop_reason != "target" && target > 0 && st.time_to_target_s >= 0) res.stop_reason = "target";
    }
    // checkpoint_every -1: no checkpoint at all (search trials), except when
    // interrupted, which always saves what was trained.
    if (cfg.run.checkpoint_every >= 0 || res.stop_reason == "interrupted") save();

    res.steps = st.step;
    res.step_graph = step.graph_state();
    res.graph_replays = step.replays();
    res.tokens = st.tokens;
    res.train_time_s = st.train_time_s;
    res.eval_time_s = st.eval_time_s;
    res.final_train_loss = last_loss;
    if (st.time_to_target_s >= 0) res.time_to_target_s = st.time_to_target_s;
    const double loop_time = st.train_time_s - t_loop_start;
    res.tokens_per_s = loop_time > 0 ? double(st.step - step_loop_start) * tokens_per_step / loop_time : 0;

    const double peak_tflops = backend->peak_tflops(nullptr);  // per device
    std::ostringstream sum;
    sum << "{\"type\":\"summary\",\"stop_reason\":\"" << res.stop_reason << "\",\"steps\":" << res.steps << ",\"tokens\":" << res.tokens
        << ",\"train_time_s\":" << jnum(res.train_time_s) << ",\"eval_time_s\":" << jnum(res.eval_time_s)
        << ",\"startup_time_s\":" << jnum(res.startup_time_s) << ",\"tokens_per_s\":" << jnum(res.tokens_per_s)
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

    std::string done = "done: " + res.stop_reason + " after " + std::to_string(res.steps) + " steps, train time " +
                       fmt(res.train_time_s) + " s (eval " + fmt(res.eval_time_s) + " s, start-up " + fmt(res.startup_time_s) +
                       " s), " + fmt(res.tokens_per_s) + " tokens/s, final val loss " +
                       (res.final_val_loss ? fmt(*res.final_val_loss) : "n/a");
    if (target > 0) done += ", time to target " + (res.time_to_target_s ? fmt(*res.time_to_target_s) + " s" : std::string("not reached"));
    con.message(done);
    if (!res.checkpoint.empty()) con.message("checkpoint: " + res.checkpoint);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    return res;
}

double evaluate_checkpoint(const Config& cfg, const std::string& checkpoint, int batches) {
    auto backend = make_backend(cfg);
    // A bare model file (ours or llm.c's, e.g. gpt2_124M.bin) or a checkpoint.
    const std::string file = fs::is_regular_file(checkpoint) ? checkpoint : resolve_checkpoint(checkpoint) + "/model.bin";
    ModelShape shape;
    auto params = read_model_file(file, shape);
    const int B = cfg.run.batch_size, T = std::min(train_seq_len(cfg), shape.maxT);
    GPT2 model(shape, *backend, B, T);
    model.load_params_llmc(params);
    Config c = cfg;
    c.model.vocab_size = shape.V;
    auto val = make_data_source(c, Split::val, B, T);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    auto comm = make_communicator(DistEnv{});
    return evaluate_val(model, *val, batches, nullptr, x, y, *comm).loss;
}

}  // namespace gpt
