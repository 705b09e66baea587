// The training loop: gradient accumulation, clipping, AdamW, LR schedule,
// periodic validation, stop conditions, JSONL log, console progress, checkpoints.
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "train/config.h"
#include "train/hellaswag.h"

namespace gpt {
class GPT2;
class Optimizer;
class Communicator;
}  // namespace gpt

namespace gpt {

struct TrainOptions {
    std::string resume;        // checkpoint or run directory to continue from ("" = fresh)
    bool quiet = false;        // no console progress (tests)
    // A new run into a run directory that holds another run moves that run's
    // files into <out_dir>/previous-<time>/ instead of refusing (gpt train --force).
    bool force = false;
};

struct TrainResult {
    int64_t steps = 0;
    int64_t tokens = 0;
    double train_time_s = 0;          // training only: no start-up, no evaluation
    double eval_time_s = 0;           // validation (the whole run, across resumes)
    double sample_time_s = 0;         // run.sample_every samples, in this process
    double startup_time_s = 0;        // backend, model, data, resume
    std::optional<double> time_to_target_s;  // interpolated; empty when not reached
    double final_train_loss = 0;
    std::optional<double> final_val_loss;
    std::optional<double> final_val_bpb;   // with a tokenizer: bits per UTF-8 byte
    std::optional<double> loss_floor;  // known for the synthetic source
    double tokens_per_s = 0;
    std::string stop_reason;           // max_steps | budget | target | interrupted
    std::string checkpoint;            // directory of the last checkpoint written (rank 0; "" on the others)
    int rank = 0;                      // this process's rank in a data-parallel job
    std::vector<double> step_losses;   // train loss of each step run in this process
    std::string step_graph;            // run.cuda_graph: TrainStep::graph_state() at the end
    long graph_replays = 0;            // steps run as a replay of the recorded step
};

// The backend run.backend names, with the config's threads and kernel choices.
std::unique_ptr<Backend> make_backend(const Config& cfg);

// Runs training. Throws gpt::Error: BadInput for config/data/checkpoint
// problems, RunFailed for a diverged or failed run.
TrainResult train(const Config& cfg, const TrainOptions& opt);

// The backward hook that starts the gradient all-reduce bucket by bucket
// (one layer's gradients at a time) while the pass goes on; empty when the
// job does not need one (one rank, ZeRO-1, or run.overlap_reduce off).
std::function<void(View grads, int layer)> grad_reduce_hook(const Config& cfg, GPT2& model, Communicator& comm);

// Whether train() left its progress line open on a terminal (redrawn in
// place, no newline yet): an error message printed now needs one first.
bool progress_line_open();

struct EvalOptions {
    int val_batches = 0;             // validation batches (0 = no validation loss)
    std::string hellaswag;           // HellaSwag jsonl ("" = none)
    int64_t hellaswag_examples = 0;  // 0 = all
    std::string tokenizer;           // for HellaSwag: "" = cfg's data.tokenizer, else the default
};

struct EvalResult {
    ModelShape shape;
    std::string origin;                        // the file or folder the weights came from
    double val_loss = NAN;
    int B = 0, T = 0;                          // the validation's batch: T is min(config T, the model's maxT)
    std::optional<HellaswagResult> hellaswag;
    int hellaswag_B = 0, hellaswag_T = 0;
};

// `gpt eval`: the validation loss on cfg's val data and/or HellaSwag of any
// weights load_weights takes (checkpoint, run directory, llm.c file, HF folder).
EvalResult evaluate_checkpoint(const Config& cfg, const std::string& weights, const EvalOptions& opt);

}  // namespace gpt
