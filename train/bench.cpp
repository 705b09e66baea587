#include "train/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "model/gpt2.h"
#include "train/dist.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace gpt {

BenchResult bench_step(const Config& cfg, const BenchOptions& opt) {
    auto backend = make_backend(cfg);
    const ModelShape s = model_shape(cfg);
    const int B = cfg.run.batch_size, T = train_seq_len(cfg);
    // Under mpirun / gpt launch every rank times full data-parallel steps
    // (gradient all-reduce or ZeRO-1 collectives included).
    auto comm = make_communicator(detect_dist_env(), cfg.run.dist_timeout_s, backend.get());
    const int rank = comm->rank(), world = comm->world();
    const bool zero1 = cfg.run.zero == 1 && world > 1;
    GPT2 model(s, *backend, B, T, world);
    model.init_weights(static_cast<uint64_t>(cfg.run.seed), init_options(cfg));
    const size_t n = model.buffer_elements(), shard = n / world;
    Optimizer optim(model, cfg.optim, zero1 ? rank * shard : 0, zero1 ? (rank + 1) * shard : n);

    // Uniform random tokens: the step's cost does not depend on the data.
    std::mt19937 gen(1);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    for (auto& t : x) t = static_cast<int32_t>(gen() % s.V);
    for (auto& t : y) t = static_cast<int32_t>(gen() % s.V);

    const std::function<void(int)> reduce_hook = grad_reduce_hook(cfg, model, *comm);
    std::vector<double> ms;
    for (int i = 0; i < opt.warmup + opt.repeats; i++) {
        if (i == opt.warmup && opt.profile) backend->set_profiling(true);
        const auto t0 = std::chrono::steady_clock::now();
        model.zero_grad();
        model.forward(x.data(), y.data(), true, 1.0 / double(B * T * world));
        model.backward(reduce_hook);
        apply_gradients(model, optim, *comm, zero1, cfg.optim.lr, bool(reduce_hook));
        backend->synchronize();
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
    // Every rank's tokens/s, gathered by summing one-hot vectors.
    r.rank_tokens_per_s.assign(world, 0.0);
    r.rank_tokens_per_s[rank] = B * T / (r.median_ms / 1e3);
    comm->all_reduce_sum(View{r.rank_tokens_per_s.data(), DType::f64}, size_t(world));
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
