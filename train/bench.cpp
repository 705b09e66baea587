#include "train/bench.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "data/source.h"
#include "kernels/backend.h"
#include "model/gpt2.h"
#include "train/dist.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/trainer.h"

namespace gpt {

BenchResult bench_step(const Config& cfg_in, const BenchOptions& opt) {
    Config cfg = cfg_in;
    if (!opt.data.empty()) {
        cfg.data.source = "shards";
        cfg.data.train = opt.data;
    }
    auto backend = make_backend(cfg);
    const ModelShape s = model_shape(cfg);
    const int B = cfg.run.batch_size, T = train_seq_len(cfg);
    // Under mpirun / gpt launch every rank times full data-parallel steps
    // (gradient all-reduce or ZeRO-1 collectives included).
    auto comm = make_communicator(detect_dist_env(), cfg.run.dist_timeout_s, backend.get());
    const int rank = comm->rank(), world = comm->world();
    const bool zero1 = cfg.run.zero == 1 && world > 1;
    const long tokens_per_round = long(B) * T * world;
    if (cfg.run.total_batch_tokens > 0 && cfg.run.total_batch_tokens % tokens_per_round != 0)
        bad_input("run.total_batch_tokens (" + std::to_string(cfg.run.total_batch_tokens) + ") must be a multiple of run.batch_size * T * ranks = " +
                  std::to_string(tokens_per_round));
    const int accum = cfg.run.total_batch_tokens > 0 ? int(cfg.run.total_batch_tokens / tokens_per_round) : 1;
    GPT2 model(s, *backend, B, T, world);
    model.init_weights(static_cast<uint64_t>(cfg.run.seed), init_options(cfg));
    const size_t n = model.buffer_elements(), shard = n / world;
    Optimizer optim(model, cfg.optim, zero1 ? rank * shard : 0, zero1 ? (rank + 1) * shard : n);

    StepOptions sopt;
    sopt.accum = accum;
    sopt.zero1 = zero1;
    sopt.cuda_graph = cfg.run.cuda_graph;
    sopt.grad_accum_f32 = cfg.run.grad_accum_f32;
    if (opt.profile) sopt.no_graph_reason = "--profile times each op, which a replayed step cannot report";
    sopt.reduce_hook = grad_reduce_hook(cfg, model, *comm);
    TrainStep step(model, optim, *comm, sopt);

    // Tokens: from the shards, drawn for every step as training does; else
    // uniform random tokens, staged once (a step's cost then does not depend
    // on them, except the embedding backward's, which --data makes real).
    std::unique_ptr<DataSource> data;
    if (!opt.data.empty()) data = make_data_source(cfg, Split::train, B, T, rank, world);
    std::mt19937 gen(1 + unsigned(rank));
    for (int m = 0; m < accum && !data; m++)
        for (size_t i = 0; i < size_t(B) * T; i++) {
            step.inputs(m)[i] = static_cast<int32_t>(gen() % s.V);
            step.targets(m)[i] = static_cast<int32_t>(gen() % s.V);
        }

    std::vector<double> ms;
    for (int i = 0; i < opt.warmup + opt.repeats; i++) {
        if (i == opt.warmup && opt.profile) backend->set_profiling(true);
        const auto t0 = std::chrono::steady_clock::now();
        if (data)
            for (int m = 0; m < accum; m++) data->next_batch(step.inputs(m), step.targets(m));
        step.run(cfg.optim.lr);
        const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (i >= opt.warmup) ms.push_back(dt);
    }
    std::sort(ms.begin(), ms.end());
    BenchResult r;
    r.backend = backend->name();
    r.device = backend->device_info();
    r.peak_memory_bytes = backend->peak_allocated_bytes();
    if (opt.profile) {
        r.op_times = backend->op_times();  // totals over the timed steps
        for (auto& t : r.op_times) t.ms /= opt.repeats;
        backend->set_profiling(false);
    }
    r.median_ms = ms[ms.size() / 2];
    r.min_ms = ms.front();
    r.max_ms = ms.back();
    r.rank = rank;
    r.world = world;
    r.accum = accum;
    r.optimizer_steps = optim.step_count();
    r.tokens_per_step = tokens_per_round * accum;
    r.step_graph = step.graph_state();
    r.tokens = data ? "shards " + opt.data : std::string("uniform random tokens");
    // Every rank's tokens/s, gathered with host scalars (the communicator's
    // buffer collectives want backend memory).
    const double mine = double(B) * T * accum / (r.median_ms / 1e3);
    r.rank_tokens_per_s.assign(world, 0.0);
    for (int k = 0; k < world; k++) r.rank_tokens_per_s[k] = world > 1 ? comm->all_reduce_sum(k == rank ? mine : 0.0) : mine;
    r.tokens_per_s = 0;
    for (double t : r.rank_tokens_per_s) r.tokens_per_s += t;
    r.tflops = r.tokens_per_s * flops_per_token(s, T) / 1e12;
    if (opt.peak_tflops > 0) {
        r.peak_tflops = opt.peak_tflops;
        r.peak_source = "given by --peak-tflops";
    } else {
        r.peak_tflops = backend->peak_tflops(&r.peak_source);
    }
    r.mfu = r.peak_tflops > 0 ? r.tflops / (r.peak_tflops * world) : 0;  // the peak is per device
    return r;
}

}  // namespace gpt
