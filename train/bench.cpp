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

double cpu_peak_tflops(std::string* how) {
    // The cores this process computes on (OpenMP's threads), so that ranks
    // sharing one machine under gpt launch each state their part of it.
    int cores = omp_get_max_threads();
    double mhz = 0;
    bool avx512 = false, fma = false;
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        if (mhz == 0 && line.rfind("cpu MHz", 0) == 0) mhz = std::stod(line.substr(line.find(':') + 1));
        if (line.rfind("flags", 0) == 0) {
            avx512 = line.find(" avx512f") != std::string::npos;
            fma = line.find(" fma") != std::string::npos;
        }
    }
    if (mhz <= 0) mhz = 2500;
    // fp32 FLOPs per cycle per core: 2 FMA units x lanes x 2 (multiply + add).
    const int flops_cycle = avx512 ? 64 : fma ? 32 : 8;
    const double peak = cores * mhz * 1e6 * flops_cycle / 1e12;
    if (how) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "estimated CPU fp32 peak: %d cores x %.0f MHz x %d FLOP/cycle (%s)", cores, mhz, flops_cycle,
                      avx512 ? "AVX-512" : fma ? "AVX2+FMA" : "SSE");
        *how = buf;
    }
    return peak;
}

BenchResult bench_step(const Config& cfg, const BenchOptions& opt) {
    auto backend = make_backend(cfg.run.backend, cfg.run.threads);
    const ModelShape s = model_shape(cfg);
    const int B = cfg.run.batch_size, T = train_seq_len(cfg);
    // Under mpirun / gpt launch every rank times full data-parallel steps
    // (gradient all-reduce or ZeRO-1 collectives included).
    auto comm = make_communicator(detect_dist_env(), cfg.run.dist_timeout_s);
    const int rank = comm->rank(), world = comm->world();
    const bool zero1 = cfg.run.zero == 1 && world > 1;
    GPT2 model(s, *backend, B, T, world);
    model.init_weights(static_cast<uint64_t>(cfg.run.seed));
    const size_t n = model.buffer_elements(), shard = n / world;
    AdamWOptimizer optim(*backend, model.param_layout(), cfg.optim, zero1 ? rank * shard : 0, zero1 ? (rank + 1) * shard : n);

    // Uniform random tokens: the step's cost does not depend on the data.
    std::mt19937 gen(1);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    for (auto& t : x) t = static_cast<int32_t>(gen() % s.V);
    for (auto& t : y) t = static_cast<int32_t>(gen() % s.V);

    std::vector<double> ms;
    for (int i = 0; i < opt.warmup + opt.repeats; i++) {
        const auto t0 = std::chrono::steady_clock::now();
        model.zero_grad();
        model.forward(x.data(), y.data(), true, 1.0 / double(B * T * world));
        model.backward();
        apply_gradients(model, optim, *comm, zero1, cfg.optim.lr);
        backend->synchronize();
        const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (i >= opt.warmup) ms.push_back(dt);
    }
    std::sort(ms.begin(), ms.end());
    BenchResult r;
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
        r.peak_tflops = cpu_peak_tflops(&r.peak_source);
    }
    r.mfu = r.tflops / (r.peak_tflops * world);  // the peak is per device
    return r;
}

}  // namespace gpt
