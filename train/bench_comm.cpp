// `gpt bench comm`: see train/bench_comm.h.
#include "train/bench_comm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

namespace gpt {

namespace {

// Rank r's value at index i: a small integer, so every partial sum over up to
// thousands of ranks stays below 2^24 and float32 adds it exactly.
float value(int r, size_t i) { return static_cast<float>(i % 1021 + r % 64 + 1); }

// The sum over ranks of value(r, i).
float sum_value(int world, size_t i) {
    double s = 0;
    for (int r = 0; r < world; r++) s += value(r, i);
    return static_cast<float>(s);
}

struct Collective {
    const char* name;
    double bus_factor;                                   // busbw / algbw (nccl-tests)
    std::function<void(std::vector<float>&)> fill;       // this rank's input
    std::function<void(View, size_t)> run;               // the collective, in place
    std::function<bool(size_t, float, float*)> expect;   // index, value -> right?, expected value
};

}  // namespace

size_t comm_bench_elements(size_t bytes, int world) {
    const size_t w = static_cast<size_t>(std::max(world, 1));
    const size_t floats = std::max<size_t>((bytes + sizeof(float) - 1) / sizeof(float), 1);
    return (floats + w - 1) / w * w;
}

std::vector<CommBenchResult> bench_comm(Communicator& comm, const CommBenchOptions& opt, Backend* backend) {
    const int rank = comm.rank(), world = comm.world();
    const size_t n = comm_bench_elements(opt.bytes, world);
    const size_t shard = n / world;
    const double nw = world;
    std::vector<float> buf(n);
    std::vector<float> sums(n);
    for (size_t i = 0; i < n; i++) sums[i] = sum_value(world, i);

    auto fill_own = [&](std::vector<float>& b) {
        for (size_t i = 0; i < n; i++) b[i] = value(rank, i);
    };
    const std::vector<Collective> collectives = {
        {"all_reduce_sum", 2 * (nw - 1) / nw, fill_own, [&](View v, size_t m) { comm.all_reduce_sum(v, m); },
         [&](size_t i, float x, float* want) {
             *want = sums[i];
             return x == *want;
         }},
        {"reduce_scatter_sum", (nw - 1) / nw, fill_own, [&](View v, size_t m) { comm.reduce_scatter_sum(v, m); },
         [&](size_t i, float x, float* want) {
             *want = sums[i];
             return i / shard != static_cast<size_t>(rank) || x == *want;  // the rest of the buffer is unspecified
         }},
        {"all_gather", (nw - 1) / nw,
         [&](std::vector<float>& b) {
             for (size_t i = 0; i < n; i++) b[i] = i / shard == static_cast<size_t>(rank) ? value(rank, i) : -1.0f;
         },
         [&](View v, size_t m) { comm.all_gather(v, m); },
         [&](size_t i, float x, float* want) {
             *want = value(static_cast<int>(i / shard), i);
             return x == *want;
         }},
    };

    // The buffer the collectives see: host memory, or the backend's.
    void* dev = backend ? backend->alloc(n * sizeof(float), "bench comm buffer") : nullptr;
    const View target{dev ? dev : buf.data(), DType::f32};

    std::vector<CommBenchResult> results;
    std::vector<double> times(world);
    for (const auto& c : collectives) {
        CommBenchResult res;
        res.op = c.name;
        std::vector<double> ms;
        double wrong = 0;
        for (int it = 0; it < opt.warmup + opt.repeats; it++) {
            c.fill(buf);
            if (dev) {
                backend->to_device(dev, buf.data(), n * sizeof(float));
                backend->synchronize();
            }
            comm.barrier();
            const auto t0 = std::chrono::steady_clock::now();
            c.run(target, n);
            if (dev) backend->synchronize();
            const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            if (dev) backend->to_host(buf.data(), dev, n * sizeof(float));
            // The slowest rank's time is the collective's time.
            std::fill(times.begin(), times.end(), 0.0);
            times[rank] = dt;
            comm.all_reduce_sum(View{times.data(), DType::f64}, times.size());
            if (it >= opt.warmup) ms.push_back(*std::max_element(times.begin(), times.end()));
            for (size_t i = 0; i < n; i++) {
                float want = 0;
                if (c.expect(i, buf[i], &want)) continue;
                if (wrong == 0) {
                    char msg[200];
                    std::snprintf(msg, sizeof msg, "%s: rank %d, run %d, element %zu of %zu: got %.1f, expected %.1f", c.name, rank, it, i,
                                  n, static_cast<double>(buf[i]), static_cast<double>(want));
                    res.first_error = msg;
                }
                wrong++;
            }
        }
        res.wrong = static_cast<size_t>(comm.all_reduce_sum(wrong));
        if (!ms.empty()) {
            std::sort(ms.begin(), ms.end());
            res.median_ms = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
        }
        const double bytes = static_cast<double>(n) * sizeof(float);
        res.algbw_gbs = res.median_ms > 0 ? bytes / (res.median_ms * 1e-3) / 1e9 : 0;
        res.busbw_gbs = res.algbw_gbs * c.bus_factor;
        results.push_back(res);
    }
    if (dev) backend->free(dev);
    return results;
}

}  // namespace gpt
