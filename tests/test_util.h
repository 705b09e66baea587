// Shared helpers for the test executables: temp dirs, running the gpt binary,
// and error metrics for comparing a computation with its reference.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace gpt {
class Backend;
class Communicator;
class GPT2;
class Optimizer;
struct Config;
}

namespace gpt::test {

// Uniform random parameters in [-scale, scale], LayerNorm weights in
// [1 - scale, 1 + scale]: larger than GPT-2's init, so every gradient matters.
void randomize_params(GPT2& m, uint64_t seed, double scale);


// What a TrainStep runs on, built from a config as the trainer builds it: the
// backend, the model at run.batch_size x model.seq_len initialised from
// run.seed, AdamW (or Muon) over the whole buffer, and a single-process
// communicator.
struct StepParts {
    std::unique_ptr<Backend> backend;
    std::unique_ptr<GPT2> model;
    std::unique_ptr<Optimizer> optim;
    std::unique_ptr<Communicator> comm;
    explicit StepParts(const Config& cfg);
    ~StepParts();
};

// A fresh empty directory under the system temp dir, removed at destruction.
struct TempDir {
    std::string path;
    TempDir();
    ~TempDir();
    std::string file(const std::string& name) const { return path + "/" + name; }
};

struct RunResult {
    int code;            // exit code; run_shell: 128 + N when the shell was killed by signal N
    std::string output;  // stdout and stderr together
};

// Runs the built `gpt` binary with the given argument string (shell syntax).
RunResult run_gpt(const std::string& args);

// Runs a shell command line (sh -c), stdout and stderr together.
RunResult run_shell(const std::string& command);

// Path of a file in the source tree, e.g. source_path("configs/tiny.yaml").
std::string source_path(const std::string& rel);

void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);
// One numeric field of every record of a given type in a run's log.jsonl
// (e.g. "step", "loss"), in order; records without the field are skipped.
std::vector<double> log_field(const std::string& log_path, const std::string& type, const std::string& field);

// max |a-b| / max(|b|, floor) over all elements; NaN anywhere gives +inf.
double max_rel_error(const double* a, const double* b, size_t n, double floor = 1e-8);
double max_rel_error(const float* a, const float* b, size_t n, double floor = 1e-6);

}  // namespace gpt::test
