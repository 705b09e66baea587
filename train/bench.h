// `gpt bench step`: times full training steps (forward, backward, AdamW) on
// synthetic tokens and reports ms/step, tokens/s and model FLOPs utilisation.
#pragma once

#include "train/config.h"

namespace gpt {

struct BenchOptions {
    int warmup = 2;          // untimed steps first (allocation, caches, BLAS threads)
    int repeats = 10;        // timed steps; the median is reported
    double peak_tflops = 0;  // 0 = the backend's stated default
};

struct BenchResult {
    double median_ms = 0, min_ms = 0, max_ms = 0;
    double tokens_per_s = 0;
    double tflops = 0;       // achieved model TFLOP/s at the median
    double peak_tflops = 0;
    double mfu = 0;          // tflops / peak
    std::string peak_source; // where the peak figure came from
};

BenchResult bench_step(const Config& cfg, const BenchOptions& opt);

// A stated peak for the CPU: cores x clock x FLOPs/cycle from the ISA (AVX-512 or
// AVX2 FMA, two FMA ports). Returns TFLOP/s and a description of the estimate.
double cpu_peak_tflops(std::string* how);

}  // namespace gpt
