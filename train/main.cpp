// The `gpt` command line: one binary, one subcommand per job.
//
// Exit codes: 0 ok, 1 the run failed, 2 bad usage or bad input (a config key,
// a shard, a checkpoint, a flag), 130 interrupted (a checkpoint was saved).
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <new>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data/data_cli.h"
#include "data/tokenizer.h"
#include "embedded_configs.h"
#include "kernels/backend.h"
#include "kernels/cpu/omp_env.h"
#include "kernels/error.h"
#include "kernels/registry.h"
#include "model/generate.h"
#include "model/gpt2.h"
#include "search/search_cli.h"
#include "kernels/lab.h"
#include "train/bench.h"
#include "train/cli_args.h"
#include "train/bench_comm.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/dist.h"
#include "train/interop_cli.h"
#include "train/plot.h"
#include "train/trainer.h"
#include "train/weights.h"

namespace {

using gpt::bad_input;

const char* kMainHelp = R"(gpt: a GPT-2 trainer (hand-written CUDA kernels on cuBLASLt; a float32 CPU reference backend)

usage: gpt <command> [options]

commands:
  train    train a model:            gpt train [-c FILE] [--set key=value ...] [--resume DIR | --init WEIGHTS]
  eval     validation loss, HellaSwag: gpt eval --checkpoint DIR [-c FILE] [--set ...] [--batches N] [--hellaswag FILE.jsonl]
  bench    time training steps:      gpt bench step [-c FILE] [--set ...] [--repeats N] [--peak-tflops X] [--profile]
           time collectives:         gpt bench comm [--bytes N] [--repeats R] [--backend cpu|cuda]   (under gpt launch / mpirun)
           time kernels:             gpt bench kernels [--family F] [--op OP] [--shape k=v,...] [--backend cuda|cpu]
  data     text and token shards:    gpt data prepare --out DIR INPUT...   raw text / JSONL -> GPT-2 token shards
                                     gpt data encode | decode              GPT-2 token ids of stdin's text, or text of ids
                                     gpt data {write-shard, info, synthetic-info} ...
  sample   generate text:            gpt sample --checkpoint DIR [--prompt TEXT] [--max-tokens N] [--temperature T] [--top-k K]
  config   show the effective config: gpt config [-c FILE] [--set ...] | gpt config --reference
  kernels  the kernel variants:      gpt kernels list
  launch   run N processes:          gpt launch -n N [--] <command> [args]   (e.g. gpt launch -n 2 -- train)
  search   find faster configs:      gpt search SPACE.yaml [--out DIR] | --resume DIR | report DIR | tune | check SPACE.yaml
  plot     loss curves as SVG/PNG:   gpt plot RUN_DIR... [--out FILE.svg]
  export   to Hugging Face / llm.c:  gpt export hf --checkpoint RUN --out DIR | gpt export llmc --checkpoint RUN --out FILE [--dtype bf16]
  import   from Hugging Face:        gpt import hf DIR --out FILE.bin   (or use hf:DIR wherever a checkpoint is taken)
  version  print the version

Without -c, train/bench/config use the embedded default (configs/tiny.yaml): a small
model on the built-in synthetic Markov source, which needs no files. The GPT-2
tokenizer is built in too (data/gpt2-tokenizer; --tokenizer DIR overrides it).
`gpt <command> --help` describes each command.
)";

using Options = gpt::CliOptions;

Options parse_options(const std::string& cmd, const std::vector<std::string>& args, const std::set<std::string>& with_value,
                      const std::set<std::string>& switches, size_t max_positional = 0) {
    return gpt::parse_cli_options(cmd, args, with_value, switches, max_positional);
}
int parse_int(const std::string& flag, const std::string& s, int min) { return gpt::parse_int_option(flag, s, min); }
double parse_double(const std::string& flag, const std::string& s) { return gpt::parse_positive_option(flag, s); }

// The config of a command: -c FILE, else the embedded default, then --set overrides.
gpt::Config command_config(const Options& o, gpt::ConfigUse use = gpt::ConfigUse::train) {
    if (o.has("--config")) return gpt::load_config(o.get("--config"), o.sets, use);
    return gpt::parse_config_text(gpt::embedded::kTinyYaml, "embedded configs/tiny.yaml", o.sets, use);
}

int cmd_train(const std::vector<std::string>& args) {
    Options o = parse_options("train", args, {"--config", "--set", "--resume", "--init"}, {"--quiet", "--force"});
    if (o.has("--init")) {
        if (o.has("--resume")) bad_input("give --resume or --init, not both (--resume continues a run with its optimizer state)");
        o.sets.push_back("model.init=" + o.get("--init"));
    }
    if (o.has("--help")) {
        std::printf(R"(usage: gpt train [-c FILE] [--set key=value ...] [--resume DIR | --init WEIGHTS] [--force] [--quiet]

Trains a model. Without -c, uses the embedded configs/tiny.yaml. --set overrides any
config key (repeatable; see `gpt config --reference`). --resume continues a run from a
checkpoint directory or a run directory (its checkpoints/latest); without -c the run's
own config is used, with --set applied on top (e.g. --set run.max_steps=2000). A resumed
run trains into the run directory it was resumed from (a copy of a run directory
continues in the copy), unless --set run.out_dir=DIR names another.
--init starts from pretrained weights with a fresh optimizer (model.init): an llm.c
model file (gpt2_124M.bin), a checkpoint or run directory, or hf:DIR (a Hugging Face
GPT-2 folder); the model keys must match its shape.

Writes <run.out_dir>/log.jsonl (config, steps, validations, summary), config.yaml and
checkpoints/. A new run into a directory that already holds a run is refused; --force
moves the old run's log.jsonl, config.yaml and checkpoints/ into
<run.out_dir>/previous-<time>/ first (nothing is deleted).
Stops at run.max_steps, run.budget_s of training time, or when the validation loss
reaches run.target_val_loss, whichever comes first. Ctrl-C (or SIGTERM) stops after
the current step, saves a checkpoint without a final validation and exits with code
130; a second signal skips whatever else is optional.
)");
        return 0;
    }
    gpt::Config cfg;
    if (o.has("--resume")) {
        const std::string dir = gpt::resolve_checkpoint(o.get("--resume"));
        cfg = o.has("--config") ? command_config(o) : gpt::load_config(dir + "/config.yaml", o.sets);
        // The run continues where it is (the directory resumed, e.g. a copy of
        // a run), not where its saved config says it was written.
        const std::string run_dir = gpt::run_dir_of_checkpoint(dir);
        bool out_dir_set = false;
        for (const auto& s : o.sets) out_dir_set = out_dir_set || s.rfind("run.out_dir=", 0) == 0;
        if (!run_dir.empty() && !out_dir_set) cfg.run.out_dir = run_dir;
    } else {
        cfg = command_config(o);
    }
    gpt::TrainOptions topt;
    topt.resume = o.get("--resume");
    topt.quiet = o.has("--quiet");
    topt.force = o.has("--force");
    auto res = gpt::train(cfg, topt);
    if (res.stop_reason == "interrupted") {
        // Rank 0 wrote the checkpoint and says where; the other ranks took part and say nothing.
        if (res.rank == 0)
            std::fprintf(stderr, "gpt train: interrupted; checkpoint saved to %s (continue with --resume %s)\n", res.checkpoint.c_str(),
                         cfg.run.out_dir.c_str());
        return 130;
    }
    return 0;
}

int cmd_eval(const std::vector<std::string>& args) {
    Options o = parse_options("eval", args, {"--config", "--set", "--checkpoint", "--batches", "--hellaswag", "--examples", "--tokenizer"}, {});
    if (o.has("--help")) {
        std::printf(R"(usage: gpt eval --checkpoint PATH [-c FILE] [--set key=value ...] [--batches N]
                [--hellaswag FILE.jsonl [--examples N] [--tokenizer DIR]]

Evaluates a checkpoint directory, a run directory (its latest checkpoint), an llm.c
model file (e.g. llm.c's gpt2_124M.bin) or a Hugging Face GPT-2 folder (hf:DIR):

  validation loss on the val data of the config (the checkpoint's own config.yaml
  unless -c is given; a bare model file or HF folder needs -c), over N batches
  (default run.val_batches), at T = the config's T or the model's context if shorter.

  --hellaswag FILE.jsonl: HellaSwag's validation set as published (one JSON object a
  line with ctx, endings, label), scored as llm.c does: each ending by the model's
  loss on the ending's tokens after the context; acc takes the lowest total loss,
  acc_norm the lowest mean loss per token. --examples N scores the first N. Without
  -c or a checkpoint's config only HellaSwag is run.
)");
        return 0;
    }
    if (!o.has("--checkpoint")) bad_input("gpt eval needs --checkpoint PATH");
    const std::string ck = o.get("--checkpoint");
    const std::string dir = gpt::weights_checkpoint_dir(ck);  // "" for a model file or an HF folder
    const bool hellaswag = o.has("--hellaswag");
    if (dir.empty() && !o.has("--config") && !hellaswag)
        bad_input("gpt eval: '" + ck + "' is a bare model (a model file or a Hugging Face folder): give -c FILE for its validation data");
    // Evaluation needs no stop condition: a config without one is fine here.
    const bool have_config = o.has("--config") || !dir.empty();
    gpt::Config cfg = o.has("--config") ? gpt::load_config(o.get("--config"), o.sets, gpt::ConfigUse::inspect)
                      : !dir.empty()    ? gpt::load_config(dir + "/config.yaml", o.sets, gpt::ConfigUse::inspect)
                                        : gpt::parse_config_text(gpt::embedded::kTinyYaml, "embedded configs/tiny.yaml", o.sets, gpt::ConfigUse::inspect);
    gpt::EvalOptions eo;
    eo.val_batches = have_config ? (o.has("--batches") ? parse_int("--batches", o.get("--batches"), 1) : cfg.run.val_batches) : 0;
    eo.hellaswag = o.get("--hellaswag");
    if (o.has("--examples")) eo.hellaswag_examples = parse_int("--examples", o.get("--examples"), 1);
    eo.tokenizer = o.get("--tokenizer");
    const gpt::EvalResult r = gpt::evaluate_checkpoint(cfg, ck, eo);
    if (eo.val_batches > 0) {
        std::printf("val_loss %.6f (%d batches of %d x %d, %s)\n", r.val_loss, eo.val_batches, r.B, r.T, r.origin.c_str());
        if (r.T < gpt::train_seq_len(cfg))
            std::printf("  note: T is the model's context %d, shorter than the config's %d\n", r.T, gpt::train_seq_len(cfg));
    }
    if (r.hellaswag) {
        const auto& h = *r.hellaswag;
        std::printf("hellaswag acc_norm %.4f acc %.4f (%lld/%lld and %lld/%lld of %lld examples from %s, rows of up to %d tokens, %s)\n", h.acc_norm(),
                    h.acc(), static_cast<long long>(h.correct_norm), static_cast<long long>(h.total), static_cast<long long>(h.correct),
                    static_cast<long long>(h.total), static_cast<long long>(h.total), eo.hellaswag.c_str(), r.hellaswag_T + 1, r.origin.c_str());
        if (h.truncated > 0)
            std::printf("  note: %lld rows were longer than the model's context and lost their first tokens\n", static_cast<long long>(h.truncated));
    }
    return 0;
}

int cmd_bench(const std::vector<std::string>& args);

// `gpt bench kernels`: the kernel lab (kernels/lab.h) over every variant and
// launch parameter of the chosen families. Exit code 1 when a case's result is
// wrong (beyond its error bound, or NaN).
int cmd_bench_kernels(const std::vector<std::string>& args) {
    Options o = parse_options("bench kernels", args, {"--family", "--op", "--shape", "--backend", "--warmup", "--repeats"},
                              {"--json", "--no-flush", "--test-shapes", "--check-only"});
    if (o.has("--help")) return cmd_bench({"--help"});
    std::string backend = o.get("--backend", "auto");
    if (backend == "auto") {
#if GPT_HAVE_CUDA
        backend = gpt::cuda_device_count() > 0 ? "cuda" : "cpu";
#else
        backend = "cpu";
#endif
    }
    if (backend != "cuda" && backend != "cpu") bad_input("--backend '" + backend + "': the kernel lab runs on cuda or cpu");
    auto device = gpt::make_backend(backend);  // for the device's name and peaks; fails early without a device
    std::vector<std::string> families;
    if (o.has("--family")) {
        std::stringstream ss(o.get("--family"));
        std::string f;
        while (std::getline(ss, f, ','))
            if (!f.empty()) families.push_back(f);
    } else {
        for (const auto& f : gpt::kernel_families())
            if (std::find(f.backends.begin(), f.backends.end(), backend) != f.backends.end() && !gpt::lab::ops(f.name).empty())
                families.push_back(f.name);
    }
    gpt::lab::Timing timing;
    if (o.has("--warmup")) timing.warmup = parse_int("--warmup", o.get("--warmup"), 0);
    if (o.has("--repeats")) timing.repeats = parse_int("--repeats", o.get("--repeats"), 1);
    timing.flush = !o.has("--no-flush");
    const auto set = o.has("--test-shapes") ? gpt::lab::ShapeSet::tests : gpt::lab::ShapeSet::bench;
    std::vector<gpt::lab::Case> all;
    for (const auto& fam : families) {
        const gpt::KernelFamily* f = gpt::find_kernel_family(fam);
        if (!f) {
            std::string known;
            for (const auto& k : gpt::kernel_families()) known += (known.empty() ? "" : ", ") + k.name;
            bad_input("--family '" + fam + "': no such kernel family (" + known + ")");
        }
        if (std::find(f->backends.begin(), f->backends.end(), backend) == f->backends.end())
            bad_input("--family '" + fam + "': the " + backend + " backend does not read kernels." + fam);
        const auto ops = gpt::lab::ops(fam);
        if (ops.empty())
            bad_input("--family '" + fam + "': the lab has no op for it (its variants are a model-level choice of which passes run, not a kernel: time them with gpt bench step)");
        bool matched = false;
        for (const auto& op : ops) {
            if (o.has("--op") && o.get("--op") != op) continue;
            matched = true;
            std::vector<gpt::KernelProblem> problems = o.has("--shape")
                                                           ? std::vector<gpt::KernelProblem>{gpt::lab::parse_shape(fam, op, o.get("--shape"), backend)}
                                                           : gpt::lab::shapes(fam, op, set, backend);
            const auto c = gpt::lab::cases(fam, problems);
            all.insert(all.end(), c.begin(), c.end());
        }
        if (!matched) {
            std::string known;
            for (const auto& op : ops) known += (known.empty() ? "" : ", ") + op;
            bad_input("--op '" + o.get("--op") + "': kernels." + fam + " has the ops " + known);
        }
    }
    auto ref = gpt::lab::reference_for(backend);
    std::vector<gpt::lab::Result> results;
    bool wrong = false;
    for (const auto& c : all) {
        results.push_back(gpt::lab::run(backend, c, *ref, o.has("--check-only") ? nullptr : &timing));
        const auto& r = results.back();
        wrong = wrong || (r.cannot_run.empty() && !r.ok);
        if (o.has("--json")) std::printf("%s\n", gpt::lab::json(r).c_str());
        std::fflush(stdout);
    }
    if (!o.has("--json")) std::printf("%s", gpt::lab::table(results, *device).c_str());
    if (wrong) std::fprintf(stderr, "gpt bench kernels: WRONG RESULTS (see the check column)\n");
    return wrong ? 1 : 0;
}

// `gpt bench comm`: every rank runs the collectives; rank 0 prints.
int cmd_bench_comm(const std::vector<std::string>& args) {
    Options o = parse_options("bench comm", args, {"--bytes", "--repeats", "--warmup", "--backend"}, {});
    if (o.has("--help")) return cmd_bench({"--help"});
    gpt::CommBenchOptions opt;
    if (o.has("--bytes")) opt.bytes = static_cast<size_t>(parse_int("--bytes", o.get("--bytes"), 1));
    if (o.has("--repeats")) opt.repeats = parse_int("--repeats", o.get("--repeats"), 1);
    if (o.has("--warmup")) opt.warmup = parse_int("--warmup", o.get("--warmup"), 0);
    // --backend cuda: device buffers and the NCCL communicator; default: host buffers over MPI.
    std::unique_ptr<gpt::Backend> backend;
    const gpt::DistEnv env = gpt::detect_dist_env();
    if (o.has("--backend") && o.get("--backend") != "cpu") {
        gpt::BackendOptions bo;
        bo.local_rank = env.local_rank;
        backend = gpt::make_backend(o.get("--backend"), bo);
    }
    auto comm = gpt::make_communicator(env, 600, backend.get());
    const int world = comm->world();
    const size_t n = gpt::comm_bench_elements(opt.bytes, world);
    auto results = gpt::bench_comm(*comm, opt, backend.get());
    bool ok = true;
    for (const auto& r : results) {
        if (!r.first_error.empty()) std::fprintf(stderr, "gpt bench comm: wrong result: %s\n", r.first_error.c_str());
        ok = ok && r.wrong == 0;
    }
    if (comm->rank() == 0) {
        std::printf("bench comm: %s communicator, %d rank%s, %zu bytes requested -> %zu float32 (%zu bytes, %zu per rank), %d repeats after %d "
                    "warm-up\n",
                    comm->name().c_str(), world, world == 1 ? "" : "s", opt.bytes, n, n * sizeof(float), n / world, opt.repeats, opt.warmup);
        std::printf("  %-20s %12s %14s %14s  %s\n", "collective", "time (ms)", "algbw (GB/s)", "busbw (GB/s)", "check");
        for (const auto& r : results) {
            const std::string check = r.wrong == 0 ? "ok" : "WRONG (" + std::to_string(r.wrong) + " elements)";
            std::printf("  %-20s %12.4f %14.3f %14.3f  %s\n", r.op.c_str(), r.median_ms, r.algbw_gbs, r.busbw_gbs, check.c_str());
        }
        std::printf(ok ? "bench comm: all results verified\n" : "bench comm: WRONG RESULTS\n");
        std::fflush(stdout);
    }
    return ok ? 0 : 1;
}

int cmd_bench(const std::vector<std::string>& args) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::printf(R"(usage: gpt bench step [-c FILE] [--set key=value ...] [--warmup N] [--repeats N] [--peak-tflops X] [--profile]
                      [--data GLOB] [--json]
       gpt bench comm [--bytes N] [--repeats R]
       gpt bench kernels [--family F[,F...]] [--op OP] [--shape k=v,...] [--backend cuda|cpu] [--warmup N] [--repeats N]
                         [--no-flush] [--test-shapes] [--check-only] [--json]

step: times full optimizer steps of the config's model exactly as training runs them:
run.total_batch_tokens / (run.batch_size x T x ranks) micro-batches of forward and
backward, the gradient reduction, one AdamW update, and run.cuda_graph (the step is
recorded at the second step and replayed; with the default --warmup 2 every timed
step is a replay). Reports the median ms per optimizer step over the repeats,
tokens/s, achieved model TFLOP/s (6N + 12LCT FLOPs per token) and MFU against a
stated peak (--peak-tflops, else the device's dense bf16 peak on CUDA, or an estimate
for the CPU from its cores, clock and ISA), and the peak memory held by the backend.
Tokens are uniform random unless --data names train shards (a glob of llm.c .bin
files): then every step draws its batches from them, as training does, and the
embedding backward sees real token frequencies (a few tokens make up several percent
of English text).
--profile adds each op's time per step and share of the step (device time on CUDA);
it runs the step without a graph.

comm: times all_reduce_sum, reduce_scatter_sum and all_gather of the communicator on a
float32 buffer of N bytes (default 64 MiB; rounded up to a multiple of the world size)
and verifies every result exactly. Run it under `gpt launch -n N --` or mpirun. Rank 0
prints per collective the median time (slowest rank), the algorithm bandwidth
(bytes / time) and the bus bandwidth (nccl-tests: algbw x 2(n-1)/n for all-reduce,
x (n-1)/n for reduce-scatter and all-gather). Exit code 1 when a result is wrong.
--backend cuda puts the buffer in device memory and uses NCCL (under a launcher).

kernels: the kernel lab. Every variant and launch-parameter combination of the chosen
families (default: all the backend reads) on each op's problem: GPT-2 124M's shapes at
B=64, T=1024 (smaller on the CPU), or --shape to change dimensions of one op's shape
(e.g. --family attention --op backward --shape T=2048), or --test-shapes (the awkward
shapes the tests use). Each case runs on a backend made with exactly its kernel choices,
is compared with the CPU reference (float32 for cuda, float64 for cpu; cases too large
for the CPU are only checked for NaN), then timed: warm-up runs, --repeats repetitions
each after a flush of the last-level cache and on the next of up to 4 rotated copies of
the inputs, CUDA events on the GPU; the median is printed with TFLOP/s and GB/s from the
case's own FLOP and byte counts and the fraction of the device's roofline (datasheet
peaks). A case the device cannot run says why. Exit code 1 when a result is wrong.
--check-only skips the timing; --json prints one object per case.
)");
        return args.empty() ? 2 : 0;
    }
    if (args[0] == "comm") return cmd_bench_comm({args.begin() + 1, args.end()});
    if (args[0] == "kernels") return cmd_bench_kernels({args.begin() + 1, args.end()});
    if (args[0] != "step") bad_input("unknown bench '" + args[0] + "' (valid: step, comm, kernels)");
    Options o = parse_options("bench step", {args.begin() + 1, args.end()},
                              {"--config", "--set", "--warmup", "--repeats", "--peak-tflops", "--data"}, {"--json", "--profile"});
    if (o.has("--help")) return cmd_bench({"--help"});
    gpt::Config cfg = command_config(o);
    gpt::BenchOptions b;
    if (o.has("--warmup")) b.warmup = parse_int("--warmup", o.get("--warmup"), 0);
    if (o.has("--repeats")) b.repeats = parse_int("--repeats", o.get("--repeats"), 1);
    if (o.has("--peak-tflops")) b.peak_tflops = parse_double("--peak-tflops", o.get("--peak-tflops"));
    b.profile = o.has("--profile");
    if (o.has("--data")) b.data = o.get("--data");
    auto r = gpt::bench_step(cfg, b);
    if (r.rank != 0) return 0;  // rank 0 reports for the job
    const int T = gpt::train_seq_len(cfg);
    std::string per_rank;
    for (size_t i = 0; i < r.rank_tokens_per_s.size(); i++) {
        if (i) per_rank += ',';
        per_rank += std::to_string(r.rank_tokens_per_s[i]);
    }
    std::string ops;
    for (const auto& t : r.op_times) {
        if (!ops.empty()) ops += ',';
        ops += gpt::json_quote(t.op) + ":{\"calls_per_step\":" + std::to_string(double(t.calls) / b.repeats) + ",\"ms\":" + std::to_string(t.ms) + "}";
    }
    if (o.has("--json")) {
        std::printf("{\"B\":%d,\"T\":%d,\"n_layer\":%d,\"n_embd\":%d,\"ranks\":%d,\"median_ms\":%.4f,\"min_ms\":%.4f,\"max_ms\":%.4f,"
                    "\"tokens_per_s\":%.1f,\"rank_tokens_per_s\":[%s],\"tflops\":%.5f,\"peak_tflops\":%.4f,\"mfu\":%.5f,"
                    "\"peak_memory_bytes\":%zu,\"accum\":%d,\"optimizer_steps\":%d,\"tokens_per_step\":%ld,\"step_graph\":%s,\"tokens\":%s,"
                    "\"backend\":%s,\"device\":%s,\"ops\":{%s}}\n",
                    cfg.run.batch_size, T, cfg.model.n_layer, cfg.model.n_embd, r.world, r.median_ms, r.min_ms, r.max_ms, r.tokens_per_s,
                    per_rank.c_str(), r.tflops, r.peak_tflops, r.mfu, r.peak_memory_bytes, r.accum, r.optimizer_steps, r.tokens_per_step,
                    gpt::json_quote(r.step_graph).c_str(), gpt::json_quote(r.tokens).c_str(), gpt::json_quote(r.backend).c_str(),
                    gpt::json_quote(r.device).c_str(), ops.c_str());
    } else {
        std::printf("bench step: B=%d T=%d L=%d C=%d, %d accumulation, %d rank%s = %ld tokens per optimizer step, %d repeats after %d warm-up\n",
                    cfg.run.batch_size, T, cfg.model.n_layer, cfg.model.n_embd, r.accum, r.world, r.world == 1 ? "" : "s", r.tokens_per_step,
                    b.repeats, b.warmup);
        std::printf("  backend %s: %s\n", r.backend.c_str(), r.device.c_str());
        std::printf("  tokens: %s; step graph (run.cuda_graph): %s\n", r.tokens.c_str(), r.step_graph.c_str());
        std::printf("  %.2f ms/step (median; min %.2f, max %.2f)\n", r.median_ms, r.min_ms, r.max_ms);
        if (r.world > 1)
            for (int i = 0; i < r.world; i++) std::printf("  rank %d: %.0f tokens/s\n", i, r.rank_tokens_per_s[size_t(i)]);
        std::printf("  %.0f tokens/s%s\n", r.tokens_per_s, r.world > 1 ? " in total" : "");
        if (r.peak_tflops > 0)
            std::printf("  %.4f TFLOP/s achieved, MFU %.1f%% of %d x %.3f TFLOP/s (%s)\n", r.tflops, 100 * r.mfu, r.world, r.peak_tflops,
                        r.peak_source.c_str());
        else
            std::printf("  %.4f TFLOP/s achieved (no stated peak for this device: pass --peak-tflops for MFU)\n", r.tflops);
        std::printf("  peak memory %.1f MiB\n", double(r.peak_memory_bytes) / (1 << 20));
        if (!r.op_times.empty()) {
            double total = 0;
            for (const auto& t : r.op_times) total += t.ms;
            std::printf("  per op (ms per step, share of the ops' time, calls per step):\n");
            for (const auto& t : r.op_times)
                std::printf("    %-28s %9.3f  %5.1f%%  %5.1f\n", t.op.c_str(), t.ms, total > 0 ? 100 * t.ms / total : 0.0,
                            double(t.calls) / b.repeats);
        }
    }
    return 0;
}

int cmd_kernels(const std::vector<std::string>& args) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] != "list") {
        std::printf(R"(usage: gpt kernels list

Prints the kernel variant registry: each family with its variants (default first),
its launch parameters and their valid values, and the backends that read it. Choose
them in a config's kernels: section or with --set, e.g.
  --set kernels.attention=cudnn --set kernels.attention.block_q=64
`gpt search` mutates exactly these dimensions.
)");
        if (!args.empty() && args[0] != "--help" && args[0] != "-h") bad_input("unknown kernels command '" + args[0] + "' (valid: list)");
        return args.empty() ? 2 : 0;
    }
    if (args.size() > 1) bad_input("gpt kernels list takes no arguments, got '" + args[1] + "'");
    std::fputs(gpt::kernel_registry_text().c_str(), stdout);
    return 0;
}

int cmd_sample(const std::vector<std::string>& args) {
    Options o = parse_options("sample", args,
                              {"--config", "--set", "--checkpoint", "--prompt", "--prompt-ids", "--max-tokens", "--temperature", "--top-k",
                               "--seed", "--tokenizer"},
                              {"--ids"});
    if (o.has("--help")) {
        std::printf(R"(usage: gpt sample --checkpoint PATH [--prompt TEXT | --prompt-ids "ID ..."] [--max-tokens N]
                  [--temperature T] [--top-k K] [--seed S] [--tokenizer DIR] [--ids] [-c FILE] [--set ...]

Generates text from a checkpoint directory, a run directory, an llm.c model file or
a Hugging Face GPT-2 folder (hf:DIR), streaming it to the terminal. Decoding uses a KV cache (one row per layer per
token, not a forward pass over the prefix). A GPT-2-vocabulary model encodes the
prompt and decodes its output with the GPT-2 tokenizer (--tokenizer DIR, else
data.tokenizer of the config, else $GPT_TOKENIZER_DIR, else the built-in one); other models take
--prompt-ids and print ids. An empty prompt starts from <|endoftext|> (or token 0).
Defaults: --max-tokens 64, --temperature 1.0 (0 = greedy), --top-k 40 (0 = all), --seed 1337.
)");
        return 0;
    }
    if (!o.has("--checkpoint")) bad_input("gpt sample needs --checkpoint PATH");
    if (o.has("--prompt") && o.has("--prompt-ids")) bad_input("give --prompt or --prompt-ids, not both");
    const std::string ck = o.get("--checkpoint");
    const std::string dir = gpt::weights_checkpoint_dir(ck);  // "" for a model file or an HF folder
    gpt::Config cfg = o.has("--config") ? gpt::load_config(o.get("--config"), o.sets, gpt::ConfigUse::inspect)
                      : dir.empty()     ? gpt::parse_config_text(gpt::embedded::kTinyYaml, "embedded configs/tiny.yaml", o.sets, gpt::ConfigUse::inspect)
                                        : gpt::load_config(dir + "/config.yaml", o.sets, gpt::ConfigUse::inspect);
    const int max_tokens = o.has("--max-tokens") ? parse_int("--max-tokens", o.get("--max-tokens"), 1) : 64;
    const int top_k = o.has("--top-k") ? parse_int("--top-k", o.get("--top-k"), 0) : 40;
    const int seed = o.has("--seed") ? parse_int("--seed", o.get("--seed"), 0) : 1337;
    double temperature = 1.0;
    if (o.has("--temperature")) {
        const std::string t = o.get("--temperature");
        temperature = t == "0" ? 0.0 : parse_double("--temperature", t);
    }

    const gpt::Weights weights = gpt::load_weights(ck);
    const gpt::ModelShape shape = weights.shape;
    auto backend = gpt::make_backend(cfg);
    gpt::GPT2 model(shape, *backend, 1, 1);
    model.load_params_llmc(weights.params);

    std::optional<gpt::Tokenizer> tok;
    if (shape.V == 50257 && !o.has("--ids")) {
        tok = gpt::Tokenizer::load_default(o.has("--tokenizer") ? o.get("--tokenizer") : cfg.data.tokenizer);
    } else if (o.has("--prompt") && !o.get("--prompt").empty()) {
        bad_input("this model's vocabulary (" + std::to_string(shape.V) + " tokens) is not GPT-2's: give --prompt-ids instead of --prompt");
    }
    std::vector<int32_t> prompt;
    if (o.has("--prompt-ids")) {
        std::istringstream in(o.get("--prompt-ids"));
        std::string w;
        while (in >> w) {
            const int id = parse_int("--prompt-ids", w, 0);
            if (id >= shape.V) bad_input("--prompt-ids: id " + w + " is >= the model's vocabulary size " + std::to_string(shape.V));
            prompt.push_back(id);
        }
    } else if (tok && o.has("--prompt")) {
        prompt = tok->encode(o.get("--prompt"));
    }
    if (prompt.empty()) prompt.push_back(tok ? gpt::Tokenizer::kEndOfText : 0);

    auto emit = [&](int32_t id, bool first) {
        if (tok) {
            const std::string& b = tok->token_bytes(id);
            std::fwrite(b.data(), 1, b.size(), stdout);
        } else {
            std::printf(first ? "%d" : " %d", id);
        }
        std::fflush(stdout);
    };
    bool first = true;
    for (int32_t id : prompt) {
        if (tok && id == gpt::Tokenizer::kEndOfText && prompt.size() == 1) continue;  // the implicit start token
        emit(id, first);
        first = false;
    }
    gpt::Generator gen(model);
    std::mt19937_64 rng(static_cast<uint64_t>(seed));
    std::vector<double> logits;
    for (int32_t id : prompt) logits = gen.feed(id);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < max_tokens; i++) {
        const int32_t next = gpt::sample_token(logits, temperature, top_k, rng);
        emit(next, first);
        first = false;
        if (i + 1 < max_tokens) logits = gen.feed(next);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("\n");
    std::fprintf(stderr, "sampled %d tokens in %.2f s (%.1f tokens/s, %s)\n", max_tokens, s, max_tokens / s, backend->name().c_str());
    return 0;
}

int cmd_config(const std::vector<std::string>& args) {
    Options o = parse_options("config", args, {"--config", "--set"}, {"--reference", "--json"});
    if (o.has("--help")) {
        std::printf("usage: gpt config [-c FILE] [--set key=value ...] [--json] | gpt config --reference\n\n"
                    "Prints the effective config (YAML, or JSON with --json) after the file and the overrides,\n"
                    "or with --reference every key with its type, default and meaning.\n");
        return 0;
    }
    if (o.has("--reference")) {
        std::printf("%s", gpt::config_reference().c_str());
        return 0;
    }
    // Printing a config does not train it: one without a stop condition is shown, with a note.
    gpt::Config cfg = command_config(o, gpt::ConfigUse::inspect);
    for (const std::string& note : cfg.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
    std::printf("%s", o.has("--json") ? (gpt::config_to_json(cfg) + "\n").c_str() : gpt::config_to_yaml(cfg).c_str());
    if (const std::string why = gpt::training_problem(cfg); !why.empty()) std::fprintf(stderr, "note: gpt train would refuse this config: %s\n", why.c_str());
    return 0;
}


// The CPUs this process may run on (its affinity mask: a container's or a
// Slurm job's share, not the whole machine).
int usable_cores() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return static_cast<int>(std::clamp(sysconf(_SC_NPROCESSORS_ONLN), 1L, 4096L));
}

// An executable named `name` on $PATH, or "".
std::string find_on_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        const std::string p = (dir.empty() ? std::string(".") : dir) + "/" + name;
        if (access(p.c_str(), X_OK) == 0 && std::filesystem::is_regular_file(p)) return p;
    }
    return "";
}

pid_t g_launch_child = 0;
volatile std::sig_atomic_t g_launch_signal = 0;   // the last SIGINT/SIGTERM/SIGHUP received
volatile std::sig_atomic_t g_launch_pending = 0;  // received, not yet passed on
bool g_launch_signalled = false;

void on_launch_signal(int sig) {
    g_launch_signal = sig;
    g_launch_pending = 1;
}

// The processes below `root` running this same executable: the ranks mpirun started.
std::vector<pid_t> ranks_below(pid_t root, const std::string& self) {
    std::map<pid_t, pid_t> parent;
    for (const auto& e : std::filesystem::directory_iterator("/proc", std::filesystem::directory_options::skip_permission_denied)) {
        const std::string name = e.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::FILE* f = std::fopen((e.path() / "stat").c_str(), "r");
        if (!f) continue;
        char buf[512];
        const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[n] = 0;
        const char* close = std::strrchr(buf, ')');  // after "pid (comm)": " state ppid ..."
        char state;
        int ppid;
        if (close && std::sscanf(close + 1, " %c %d", &state, &ppid) == 2) parent[pid_t(std::stol(name))] = pid_t(ppid);
    }
    std::vector<pid_t> out;
    for (const auto& [pid, pp] : parent) {
        bool below = false;
        for (pid_t p = pp, hops = 0; p > 1 && hops < 16; hops++) {
            if (p == root) {
                below = true;
                break;
            }
            auto it = parent.find(p);
            p = it == parent.end() ? 0 : it->second;
        }
        std::error_code ec;
        if (below && std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec).string() == self) out.push_back(pid);
    }
    return out;
}

// Runs argv (argv[0] a path), waits, and returns its exit code (128 + the
// signal when killed by one). mpirun runs in its own process group, so a
// terminal's Ctrl-C reaches this process only; SIGINT, SIGTERM and SIGHUP are
// passed on to the ranks themselves (mpirun's own reaction to them is to
// kill the ranks shortly after), which stop after their step, save and exit;
// the job then exits 130. If this process is killed (kill -9), the kernel
// sends mpirun SIGUSR1, which mpirun passes on to the ranks (its SIGTERM
// would kill them a second later, mid-save), and the ranks also watch this PID
// (GPT_LAUNCH_PID): they stop and save, mpirun ends with them, and nothing
// trains on orphaned.
int run_and_wait(const std::vector<std::string>& argv, const std::string& self) {
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    std::fflush(stdout);
    std::fflush(stderr);
    struct sigaction sa {};
    sa.sa_handler = on_launch_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: waitpid returns, and the signal is passed on
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) gpt::run_failed(std::string("gpt launch: fork failed: ") + std::strerror(errno));
    if (pid == 0) {
        for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, SIG_DFL);
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGUSR1);
        if (getppid() != parent) _exit(130);  // the launcher died before the line above
        execv(cargv[0], cargv.data());
        std::fprintf(stderr, "gpt launch: cannot run %s: %s\n", cargv[0], std::strerror(errno));
        _exit(127);
    }
    g_launch_child = pid;
    int status = 0;
    for (;;) {
        const pid_t r = waitpid(pid, &status, 0);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) gpt::run_failed(std::string("gpt launch: waitpid failed: ") + std::strerror(errno));
        if (g_launch_pending) {
            g_launch_pending = 0;
            g_launch_signalled = true;
            const int sig = g_launch_signal == SIGHUP ? SIGTERM : int(g_launch_signal);
            const auto ranks = ranks_below(pid, self);
            for (pid_t rank : ranks) kill(rank, sig);
            if (ranks.empty()) kill(pid, sig);  // not started yet: mpirun ends the job
        }
    }
    g_launch_child = 0;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
    if (g_launch_signalled && code != 0) return 130;
    return code;
}

int cmd_launch(const std::vector<std::string>& args) {
    const char* help = R"(usage: gpt launch -n N [--] <command> [args]

Runs N processes of this gpt binary on this machine, each running `gpt <command> [args]`
as one rank of a job (e.g. gpt launch -n 2 -- train -c configs/tiny.yaml), and waits for
them. The CPU backend's ranks talk through MPI: the processes are started with Open MPI's
mpirun (--bind-to none, so each rank's OpenMP threads may use any core; --oversubscribe
when N exceeds the cores), with OMP_NUM_THREADS = max(1, cores / N) unless it is set.
When this command's output is not a terminal, the ranks print progress as plain lines
(GPT_PROGRESS=lines; Open MPI would otherwise give them a terminal of their own).
Exit code: 0 when every rank succeeded, else the failing ranks' code as mpirun reports it
(2 for bad input, 1 for a failed run). Ctrl-C, SIGTERM or SIGHUP reach the ranks, which stop
after their step and save a checkpoint; the job then exits 130. If gpt launch is killed, the
ranks notice, stop and save; nothing keeps running. For several machines use mpirun (or srun
--mpi=pmix) directly: every rank reads its place from the launcher's environment.
)";
    int n = -1;
    size_t i = 0;
    for (; i < args.size(); i++) {
        const std::string& a = args[i];
        if (a == "--help" || a == "-h") {
            std::printf("%s", help);
            return 0;
        }
        if (a == "-n" || a == "--np") {
            if (i + 1 >= args.size()) bad_input("option '" + a + "' needs a value");
            n = parse_int(a, args[++i], 1);
        } else if (a.rfind("-n=", 0) == 0 || a.rfind("--np=", 0) == 0) {
            n = parse_int(a.substr(0, a.find('=')), a.substr(a.find('=') + 1), 1);
        } else if (a == "--") {
            i++;
            break;
        } else if (a.size() > 1 && a[0] == '-') {
            bad_input("unknown option '" + a + "' for 'gpt launch' (valid: -n N, --help; the command to run comes after --)");
        } else {
            break;
        }
    }
    if (n < 0) bad_input("gpt launch needs -n N, the number of processes (see gpt launch --help)");
    const std::vector<std::string> command(args.begin() + static_cast<long>(i), args.end());
    if (command.empty()) bad_input("gpt launch needs a command to run, e.g. gpt launch -n " + std::to_string(n) + " -- train");
    if (command[0] == "launch") bad_input("gpt launch: the command to run cannot itself be 'launch'");

    std::error_code ec;
    const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
    if (ec) gpt::run_failed("gpt launch: cannot find this executable (/proc/self/exe): " + ec.message());
    const int cores = usable_cores();
    // Each rank's OpenMP (and OpenBLAS) threads share the cores with the other ranks'.
    setenv("OMP_NUM_THREADS", std::to_string(std::max(1, cores / n)).c_str(), /*overwrite=*/0);
    // Open MPI gives each rank a pseudo-terminal, so the ranks cannot tell that
    // this command's output goes to a pipe or a file: say it for them, so the
    // progress line is printed as lines, without carriage returns and escapes.
    if (!isatty(fileno(stdout))) setenv("GPT_PROGRESS", "lines", /*overwrite=*/0);

    // Transport: the CPU backend's ranks talk through MPI, so mpirun starts them.
    // The CUDA backend's NCCL path goes HERE: one process per GPU, started
    // directly (fork/exec of `self`) with RANK, WORLD_SIZE, LOCAL_RANK,
    // MASTER_ADDR=127.0.0.1 and MASTER_PORT set, torchrun-style, no mpirun.
    const std::string mpirun = find_on_path("mpirun");
    if (mpirun.empty())
        bad_input("gpt launch: mpirun not found on PATH: install Open MPI (apt-get install openmpi-bin libopenmpi-dev; tools/bootstrap "
                  "does), then rebuild gpt so that it includes MPI");
    if (n > 1 && !gpt::have_mpi())
        bad_input("gpt launch -n " + std::to_string(n) +
                  ": this build of gpt has no MPI, so its ranks could not talk: install libopenmpi-dev (tools/bootstrap does) and rebuild");
    std::vector<std::string> argv = {mpirun, "-np", std::to_string(n)};
    if (geteuid() == 0) argv.push_back("--allow-run-as-root");
    // Open MPI counts slots as physical cores by default; count hardware threads,
    // as `cores` does, and allow more ranks than that (slower, but it runs).
    argv.push_back("--use-hwthread-cpus");
    if (n > cores) argv.push_back("--oversubscribe");
    // The ranks watch this process (GPT_LAUNCH_PID) and stop, saving, when it is gone.
    setenv("GPT_LAUNCH_PID", std::to_string(getpid()).c_str(), 1);
    // --stdin none: mpirun runs in its own process group (see run_and_wait), where reading the terminal would stop it.
    for (const char* a : {"--bind-to", "none", "--stdin", "none", "-x", "OMP_NUM_THREADS", "-x", "GPT_LAUNCH_PID"}) argv.push_back(a);
    for (const char* var : {"GPT_PROGRESS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GPT_OMP_DEFAULTS"})
        if (std::getenv(var)) argv.insert(argv.end(), {"-x", var});
    argv.push_back(self);
    argv.insert(argv.end(), command.begin(), command.end());
    std::string line;
    for (const auto& a : argv) line += (line.empty() ? "" : " ") + a;
    std::fprintf(stderr, "gpt launch: %s (OMP_NUM_THREADS=%s)\n", line.c_str(), std::getenv("OMP_NUM_THREADS"));
    return run_and_wait(argv, self);
}

// An error printed while the training progress line is open on the terminal
// starts on a line of its own; otherwise it is the first thing on its line.
void end_progress_line() {
    if (gpt::progress_line_open()) {
        std::fputc('\n', stdout);
        std::fflush(stdout);
    }
}

}  // namespace

int main(int argc, char** argv) {
    // Before anything else: OpenMP's threads wait passively unless the user
    // chose (may re-execute this program once; kernels/cpu/omp_env.cpp).
    gpt::apply_omp_wait_default(argv);
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::printf("%s", kMainHelp);
        return args.empty() ? 2 : 0;
    }
    const std::string cmd = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    try {
        if (cmd == "train") return cmd_train(rest);
        if (cmd == "eval") return cmd_eval(rest);
        if (cmd == "bench") return cmd_bench(rest);
        if (cmd == "config") return cmd_config(rest);
        if (cmd == "sample") return cmd_sample(rest);
        if (cmd == "data") return gpt::data_main(rest);
        if (cmd == "launch") return cmd_launch(rest);
        if (cmd == "search") return gpt::search::search_main(rest, gpt::embedded::kTinyYaml);
        if (cmd == "kernels") return cmd_kernels(rest);
        if (cmd == "plot") return gpt::plot_main(rest);
        if (cmd == "export") return gpt::export_main(rest);
        if (cmd == "import") return gpt::import_main(rest);
        if (cmd == "version" || cmd == "--version") {
            std::printf("gpt %s\n", GPT_VERSION);
            return 0;
        }
        std::fprintf(stderr, "gpt: error: unknown command '%s' (valid: train, eval, bench, data, sample, config, launch, search, plot, export, import, kernels, version; see gpt --help)\n", cmd.c_str());
        return 2;
    } catch (const gpt::Error& e) {
        end_progress_line();
        std::fprintf(stderr, "gpt %s: error: %s\n", cmd.c_str(), e.what());
        return gpt::exit_code(e.kind);
    } catch (const std::bad_alloc&) {
        end_progress_line();
        std::fprintf(stderr, "gpt %s: error: out of memory (an allocation failed); reduce the model, the batch or the data held in memory\n",
                     cmd.c_str());
        return gpt::exit_code(gpt::ErrorKind::OutOfMemory);
    } catch (const std::exception& e) {
        end_progress_line();
        std::fprintf(stderr, "gpt %s: internal error: %s\n", cmd.c_str(), e.what());
        return 1;
    }
}
