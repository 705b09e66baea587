// One optimizer step of training as one unit of enqueued work, used by the
// trainer and by `gpt bench step` alike:
//
//   upload {lr, t} | zero loss, grads | for each micro-batch: upload its tokens,
//   forward (loss summed on the device), backward | gradient reduction over
//   ranks | global gradient norm on the device | AdamW (lr, t and the clip
//   scale read from backend memory; skipped on the device when the loss or the
//   norm is not finite) | download {loss, norm^2}
//
// With StepOptions::grad_accum_f32 (run.grad_accum_f32) the gradient buffer
// holds one micro-batch's gradients at a time (zeroed before each backward)
// and each is added into an f32 sum (Backend::accumulate; the first copied),
// which the reduction, the norm and the update read: on CUDA the gradients
// are then rounded to bf16 once per micro-batch instead of the running sum
// being rounded at every addition. During the last micro-batch's backward,
// each layer's gradients are added into the sum as soon as they are final,
// and the bucketed reduction (reduce_hook) starts on that layer's part of the
// sum: the reduction still overlaps the backward pass.
//
// The host fills the staged tokens (inputs(i), targets(i), page-locked on
// CUDA), calls run(lr), and waits once, at the end, for the loss and the
// norm: no micro-step waits for the device.
//
// Two halves instead, with one wait between them for the loss and the norm,
// when the update needs the host: Muon (its update takes host values) or a
// judge (StepOptions::judge: llm.c's z-score skips) that may refuse the update.
// Such a step is never recorded.
//
// With run.cuda_graph the step is recorded once (Backend::begin_capture) and
// replayed from then on: the first step runs directly (it builds what ops
// create on first use: plans, tuned algorithms, scratch buffers, the master
// weights), the second is recorded and replayed, and so is every later one.
// Everything that differs from step to step reaches the recording through
// memory it reads when it runs (the staged tokens, {lr, t}). When the step
// cannot be recorded (a backend without recording, several ranks, profiling,
// or a recording that fails) it runs directly from then on, and
// graph_state() says why.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "kernels/backend.h"

namespace gpt {

class GPT2;
class Optimizer;
class Communicator;

struct StepOptions {
    int accum = 1;            // micro-batches per optimizer step (per rank)
    bool zero1 = false;       // ZeRO-1: reduce-scatter, sharded update, all-gather
    bool cuda_graph = false;  // run.cuda_graph: record the step and replay it
    bool grad_accum_f32 = false;  // run.grad_accum_f32: micro-batch gradients summed in f32
    std::string no_graph_reason;  // set by the caller when recording is not allowed (profiling)
    // Started during the last micro-step's backward, once a layer's gradients
    // are final (GPT2::backward's on_grads): starts the all-reduce of that
    // layer's ranges (GPT2::grad_ranges) of `grads`, the gradient buffer or the
    // f32 sum (grad_reduce_hook).
    std::function<void(View grads, int layer)> reduce_hook;
    // Sees the step's loss and global norm before the update and may refuse it
    // (false: the update is skipped, the step still counts). With a judge the
    // step runs in two halves. Without one, an update whose loss or norm is
    // not finite is skipped on the device.
    std::function<bool(double loss, double norm)> judge;
};

struct StepResult {
    double loss = 0;       // mean train loss over the step's tokens, all ranks
    double grad_norm = 0;  // global gradient norm before clipping
    bool replayed = false; // this step ran as a replay of the recorded step
    bool applied = true;   // the update reached the weights (see StepOptions::judge)
};

class TrainStep {
public:
    TrainStep(GPT2& model, Optimizer& optim, Communicator& comm, const StepOptions& opt);
    ~TrainStep();
    TrainStep(const TrainStep&) = delete;
    TrainStep& operator=(const TrainStep&) = delete;

    // The staged tokens of micro-batch i (B*T each): fill before run().
    int32_t* inputs(int micro);
    int32_t* targets(int micro);

    // One optimizer step at learning rate lr; waits for it.
    StepResult run(double lr);

    // "off" (not asked for), "waiting" (asked for, not yet recorded),
    // "replaying", or "direct: <why not recorded>".
    std::string graph_state() const;
    long replays() const { return replays_; }

    // The gradients the reduction, the norm and the update read: the model's
    // gradient buffer, or the f32 sum of run.grad_accum_f32 (after run(), the
    // last step's, reduced over ranks).
    View gradients() const;

private:
    enum class Graph { off, waiting, replaying, failed };

    void enqueue_step();  // the whole step, between begin_capture/end_capture or directly
    void enqueue_gradients();  // zero, forward, backward, reduction, norm^2 and the loss over ranks
    StepResult run_judged(double lr);  // two halves, the host between them
    void release();

    GPT2& model_;
    Optimizer& optim_;
    Communicator& comm_;
    StepOptions opt_;
    Backend& be_;
    size_t bt_;            // B*T
    int32_t* staged_ = nullptr;   // host (accum, 2, B, T)
    double* host_in_ = nullptr;   // host {lr, t}
    double* host_out_ = nullptr;  // host {loss, norm^2}
    void* dev_ = nullptr;         // backend memory f64 {loss, norm^2, lr, t}
    View sum_;                    // backend memory: the f32 gradient sum (grad_accum_f32), else null
    bool two_halves_ = false;  // Muon or a judge
    Graph graph_ = Graph::off;
    std::string why_;
    long steps_ = 0, replays_ = 0;
};

}  // namespace gpt
