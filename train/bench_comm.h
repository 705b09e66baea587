// `gpt bench comm`: times and verifies the communicator's collectives, like
// nccl-tests. Run under mpirun or `gpt launch -n N`; with one process it times
// the local (identity) communicator.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "train/dist.h"

namespace gpt {

struct CommBenchOptions {
    size_t bytes = size_t(64) << 20;  // requested buffer size; rounded up to whole floats, a multiple of the world
    int warmup = 1;                   // untimed runs of each collective first
    int repeats = 20;                 // timed runs; the median is reported
};

struct CommBenchResult {
    std::string op;         // all_reduce_sum, reduce_scatter_sum, all_gather
    double median_ms = 0;   // of the slowest rank in each repeat
    double algbw_gbs = 0;   // buffer bytes / time, GB/s (1e9)
    double busbw_gbs = 0;   // algbw x nccl-tests' factor: 2(n-1)/n all-reduce, (n-1)/n the others
    size_t wrong = 0;       // elements with a wrong result, over all ranks and runs
    std::string first_error;  // where the first wrong element was (this rank's view)
};

// n, the float32 element count actually used for a request of `bytes` on `world` ranks.
size_t comm_bench_elements(size_t bytes, int world);

// Collective: every rank must call it with the same options. Fills the buffer
// with small rank-dependent integers, so that every float sum is exact and the
// check is equality. With a backend, the buffer lives in its memory (device
// memory under NCCL); filling and checking copy outside the timed region.
std::vector<CommBenchResult> bench_comm(Communicator& comm, const CommBenchOptions& opt, Backend* backend = nullptr);

}  // namespace gpt
