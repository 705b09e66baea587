// `gpt bench step`: times full optimizer steps exactly as training runs them
// (train/step.h: the config's gradient accumulation, the gradient reduction
// over ranks, one AdamW update per step, run.cuda_graph) on random tokens or
// on real shards (--data, so token frequencies are real: the embedding
// backward's cost depends on them), and reports ms/step, tokens/s and model
// FLOPs utilisation.
#pragma once

#include <string>
#include <vector>

#include "kernels/backend.h"
#include "train/config.h"

namespace gpt {

struct BenchOptions {
    int warmup = 2;          // untimed steps first (allocation, caches, BLAS threads)
    int repeats = 10;        // timed steps; the median is reported
    double peak_tflops = 0;  // 0 = the backend's stated default
    bool profile = false;    // per-op times over the timed steps (Backend::op_times)
    std::string data;        // train shards (a glob) to draw the tokens from; "" = uniform random tokens
};

struct BenchResult {
    int rank = 0, world = 1;  // data-parallel geometry (gpt launch / mpirun)
    double median_ms = 0, min_ms = 0, max_ms = 0;  // this rank's step times
    double tokens_per_s = 0;                        // all ranks together
    std::vector<double> rank_tokens_per_s;          // each rank's
    double tflops = 0;       // achieved model TFLOP/s at the median
    double peak_tflops = 0;
    double mfu = 0;          // tflops / peak
    std::string peak_source; // where the peak figure came from
    std::string backend, device;
    size_t peak_memory_bytes = 0;             // most memory held through the backend
    std::vector<Backend::OpTime> op_times;     // with profile: ms per step by op, largest first
    int accum = 1;                             // micro-batches per optimizer step
    int optimizer_steps = 0;                   // AdamW updates taken (warm-up and timed steps): one per step, not per micro-batch
    long tokens_per_step = 0;                  // all ranks
    std::string step_graph;                    // TrainStep::graph_state() after the run
    std::string tokens;                        // where the tokens came from
};

BenchResult bench_step(const Config& cfg, const BenchOptions& opt);


}  // namespace gpt
