// The optimizer over the model's parameter buffer (or one rank's shard of it,
// for ZeRO-1), with global gradient-norm clipping: AdamW for every tensor
// (optim.type: adamw), or Muon for the hidden matrices and AdamW for the rest
// (optim.type: muon), with per-group learning rates.
//
// Parameter groups (each lr follows the schedule: it is scaled by the
// schedule's lr / optim.lr at every step):
//   hidden matrices   per layer q, k, v (of qkvw), attprojw, fcw, fcprojw:
//                     Muon at optim.muon_lr, or AdamW at optim.lr
//   embeddings        wte, wpe: AdamW at optim.embed_lr (0 = optim.lr)
//   head              an untied lm_head: AdamW at optim.head_lr (0 = optim.lr)
//   gains and biases  AdamW at optim.lr, never decayed
// AdamW's weight decay applies to the 2-D tensors it updates (layout decay flag).
//
// State: moments m and v (the backend's stat dtype) share the parameter layout
// table, so AdamW is one backend call and the state is one buffer each for
// checkpoints and sharding. Muon's momentum lives in m at its matrices'
// offsets (their v stays zero), so checkpoints need no second format. When
// the backend keeps parameters in bf16 (CUDA), the optimizer also owns float32
// master weights for its range: updates run on them and the bf16 parameters
// are their rounded copy.
//
// ZeRO-1 and Muon: Muon needs a whole matrix and its whole summed gradient.
// A rank owns the AdamW elements of its equal shard [begin, end) and every
// hidden matrix that intersects the shard, whole: a matrix crossing a shard
// boundary is updated by both ranks, identically (same summed gradient, same
// momentum, same arithmetic), each keeping its momentum. Its state therefore
// covers [begin(), begin() + size()), the shard widened to whole matrices (at
// most one matrix on each side). The trainer all-reduces the gradients
// instead of reduce-scattering them when uses_muon() (see train/step.cpp),
// and all-gathers the parameters by shard as for AdamW: every element is
// then written by the rank whose shard holds it.
#pragma once

#include <vector>

#include "kernels/backend.h"
#include "model/gpt2.h"
#include "train/config.h"

namespace gpt {

class Optimizer {
public:
    // Owns the update of the shard [begin, end) of the model's parameter
    // buffer (end = 0: the whole buffer). Ranks of a ZeRO-1 job own disjoint shards.
    Optimizer(const GPT2& model, const OptimConfig& cfg, size_t begin = 0, size_t end = 0);
    ~Optimizer();
    Optimizer(const Optimizer&) = delete;
    Optimizer& operator=(const Optimizer&) = delete;

    // Sum of squares of the gradients in this optimizer's shard (grads is the
    // whole buffer); the global norm is the square root of its sum over ranks.
    double grad_sq(View grads);
    // L2 norm of the gradients when this optimizer owns the whole buffer.
    double grad_norm(View grads);
    // One update at learning rate lr (the schedule's value for optim.lr; the
    // other groups are scaled alike). params and grads are the whole buffers;
    // grads must hold the summed gradients over the shard, and over whole
    // matrices when uses_muon(). Clips to cfg.grad_clip using the global `norm`.
    void step(View params, View grads, double lr, double norm);

    bool uses_muon() const { return !muon_.empty(); }
    // The same update with nothing read back to the host (train/step.h):
    // enqueue_grad_sq writes the sum of squares of this shard's gradients into
    // norm_sq (one f64 element of backend memory); enqueue_update reads lr and
    // the step number t from hyper (f64 {lr, t}) and the global sum of squares
    // from norm_sq when it runs, so a recorded step replays with each step's
    // values. The caller writes hyper and advances step_count() itself. The
    // master weights must be set first (init_master): their initial copy is
    // not part of a step.
    void enqueue_grad_sq(View grads, View norm_sq);
    // guard (f64, optional): with norm_sq, when either is not finite as the
    // update runs, nothing is updated. Not with Muon (its update takes host
    // values): run_failed.
    void enqueue_update(View params, View grads, View hyper, View norm_sq, View guard = {});

    int step_count() const { return t_; }
    void set_step_count(int t) { t_ = t; }
    // Host copies of the state of [begin(), begin() + size()) for checkpoints
    // (layout order, float32): 0 = m (and Muon's momentum), 1 = v,
    // 2 = master weights (only when has_master()).
    std::vector<float> moments_host(int which) const;
    void load_moments_host(int which, const std::vector<float>& values);
    bool has_master() const { return master_ != nullptr; }
    // Takes the master weights from the parameters, once: before the first
    // step unless load_moments_host(2, ...) already set them.
    void init_master(View params);
    size_t size() const { return n_; }    // elements of state: the shard widened to whole Muon matrices
    size_t begin() const { return lo_; }

private:
    // A run of `count` whole matrices of one stack that this optimizer updates with Muon.
    struct MuonRun { size_t offset; int count, rows, cols; };
    AdamW adamw_args(View params, View grads, double lr, double scale) const;
    // Distinct stochastic-rounding streams for the shards of a ZeRO-1 job.
    uint64_t shard_seed() const { return 0x9E3779B97F4A7C15ull ^ uint64_t(lo_); }

    Backend& be_;
    OptimConfig cfg_;
    std::vector<ParamRange> ranges_;  // AdamW, offsets relative to lo_
    std::vector<MuonRun> muon_;       // offsets in the whole buffer
    size_t begin_, end_;              // the shard
    size_t lo_, n_;                   // the state's range
    void* m_ = nullptr;
    void* v_ = nullptr;
    void* master_ = nullptr;  // f32, n_ elements, when parameters are not f32
    bool master_ready_ = false;
    int t_ = 0;
};

}  // namespace gpt
