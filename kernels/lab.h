// The kernel lab: one harness that runs an op of a kernel family on a problem
// shape with any registered variant and launch parameters, checks it against a
// reference backend, and times it the way a kernel benchmark should. llm.c's
// dev/cuda labs as one command over the code the trainer runs:
//
//   gpt bench kernels [--family F] [--op OP] [--shape k=v,...] [--backend cuda|cpu]
//   the registry-generated tests (tests/test_kernels_cuda.cpp, test_kernels_cpu.cpp)
//
// Cases: every variant of a family x every combination of its launch
// parameters x the shapes, filtered by the family's can_run (registry.h);
// registering a variant or a parameter value adds its cases. A case runs on a
// backend made with exactly its kernel choices, so the code timed is the code
// the trainer dispatches to.
//
// Checking: the inputs are random (never zeros), rounded to the tested
// backend's precision so both sides start from the same numbers; outputs the
// op overwrites are poisoned (NaN) on the tested side first, accumulated ones
// start from the same random values; each output's relative L2 error against
// the reference (NaN anywhere = infinity) is compared with the family's bound
// for that output and precision.
//
// Timing: warm-up runs, then each repetition flushes the last-level cache
// (a memset of 4x its size, outside the timed region), takes the next of a few
// copies of the inputs (rotation, so no repetition finds its inputs cached),
// and is timed by the backend's per-op profiling (CUDA events on the GPU, wall
// time on the CPU); the median is reported with min and max. TFLOP/s and GB/s
// come from the case's own FLOP and byte counts (the variant's executed FLOPs:
// the flash backward recomputes the scores, 7 products where cuDNN's does 5;
// the minimum DRAM traffic of its passes: the separate residual + LayerNorm
// reads and writes more than the fused one), and the roofline fraction is the
// time the device's datasheet peaks allow over the measured time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "kernels/registry.h"

namespace gpt::lab {

struct Case {
    std::string family, variant;
    std::vector<std::pair<std::string, int>> params;  // launch parameters, registry order
    KernelProblem problem;
    std::map<std::string, std::string> choices() const;  // the kernels map: family -> variant, family.param -> value
    std::string name() const;  // "attention flash block_q=128 block_k=64 | backward B=3 T=77 NH=4 HD=64"
};

// The families and ops the lab has problems for, e.g. attention: forward,
// backward. A family in the registry with no lab op (gelu, bias_grad: their
// variants are a model-level choice of which passes run, not a kernel) is
// timed by gpt bench step and tested by the model tests.
std::vector<std::string> ops(const std::string& family);

enum class ShapeSet { bench, tests };
// bench: GPT-2 124M at B=64, T=1024 (the trainer's shapes); tests: small and
// awkward (T not a multiple of any tile, C = 72 and 1600, odd batch).
// The bench shapes are smaller for the CPU backend (`backend` "cpu").
std::vector<KernelProblem> shapes(const std::string& family, const std::string& op, ShapeSet set, const std::string& backend = "cuda");
// op's default bench shape with "k=v,k=v" overriding its dims; BadInput names a bad key or value.
KernelProblem parse_shape(const std::string& family, const std::string& op, const std::string& text, const std::string& backend = "cuda");

// Every variant x parameter combination of the family for each problem (can_run not applied).
std::vector<Case> cases(const std::string& family, const std::vector<KernelProblem>& problems);
// "" when the family's can_run accepts the case on the device, else why not.
std::string can_run(const Case& c, const DeviceCaps& caps);

struct OutputError {
    std::string output;
    double rel_l2 = 0, bound = 0;
};

struct Timing {
    int warmup = 5, repeats = 50;
    bool flush = true;
    // Cases above these sizes are not compared with the CPU reference (it
    // would take minutes): their outputs are only checked for NaN.
    double check_max_flops = 2e11;
    size_t check_max_bytes = size_t(2) << 30;
};

struct Result {
    Case c;
    std::string cannot_run;     // set when the case was skipped (can_run, or BadInput from the kernel)
    std::vector<OutputError> errors;  // per output, against the reference
    bool checked = false;       // compared with the reference (else: outputs checked for NaN only)
    bool ok = false;            // every error within its bound
    bool timed = false;
    double median_ms = 0, min_ms = 0, max_ms = 0;
    double flops = 0, bytes = 0;         // the case's own counts
    double tflops = 0, gbs = 0;          // at the median
    double roofline = 0;                 // ideal time / median, 0 when the device's peaks are unknown
    int rotation = 1;                    // copies of the inputs cycled through
};

// Builds the tested backend for the case (backend name plus the case's kernel
// choices), checks against `reference` (always without timing; with timing,
// within its check limits) and, with timing, times it.
Result run(const std::string& backend, const Case& c, Backend& reference, const Timing* timing, uint64_t seed = 1);

// The case's problem on the float32 CPU backend (its default kernels) against
// `reference` (float64 CPU), whatever backends the family names: a CUDA-only
// family's problem (its buffers, its call, the CPU twin of the op on the same
// shapes) checked on a machine without a GPU. Never timed.
Result run_twin(const Case& c, Backend& reference, uint64_t seed = 1);

// The reference for a tested backend: float32 CPU for cuda, float64 CPU for cpu.
std::unique_ptr<Backend> reference_for(const std::string& backend);

// One line per result: the table of `gpt bench kernels`; and its JSON.
std::string table(const std::vector<Result>& results, const Backend& be);
std::string json(const Result& r);

}  // namespace gpt::lab
