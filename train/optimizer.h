// AdamW over the model's parameter buffer (or one rank's shard of it, for
// ZeRO-1), with global gradient-norm clipping.
//
// Moments m and v (float32, or the backend's stat dtype) share the parameter
// layout table, so the update is one backend call and the state is one buffer
// each for checkpoints and sharding. When the backend keeps parameters in
// bf16 (CUDA), the optimizer also owns float32 master weights for its shard:
// the update runs on them and the bf16 parameters are their rounded copy. Weight decay applies to the tensors the
// layout marks decay=true (2-D weights), never to biases or LayerNorm.
#pragma once

#include <vector>

#include "kernels/backend.h"
#include "model/layout.h"
#include "train/config.h"

namespace gpt {

class AdamWOptimizer {
public:
    // Owns the moments of elements [begin, end) of the parameter buffer
    // (end = 0: the whole layout). Ranks of a ZeRO-1 job own disjoint shards.
    AdamWOptimizer(Backend& be, const Layout& layout, const OptimConfig& cfg, size_t begin = 0, size_t end = 0);
    ~AdamWOptimizer();
    AdamWOptimizer(const AdamWOptimizer&) = delete;
    AdamWOptimizer& operator=(const AdamWOptimizer&) = delete;

    // Sum of squares of the gradients in this optimizer's shard (grads is the
    // whole buffer); the global norm is the square root of its sum over ranks.
    double grad_sq(View grads);
    // L2 norm of the gradients when this optimizer owns the whole buffer.
    double grad_norm(View grads);
    // One update of the shard at learning rate lr (params and grads are the
    // whole buffers). Clips to cfg.grad_clip using the global `norm`.
    void step(View params, View grads, double lr, double norm);

    // The same update with nothing read back to the host (train/step.h):
    // enqueue_grad_sq writes the sum of squares of this shard's gradients into
    // norm_sq (one f64 element of backend memory); enqueue_update reads lr and
    // the step number t from hyper (f64 {lr, t}) and the global sum of squares
    // from norm_sq when it runs, so a recorded step replays with each step's
    // values. The caller writes hyper and advances step_count() itself. The
    // master weights must be set first (init_master): their initial copy is
    // not part of a step.
    void enqueue_grad_sq(View grads, View norm_sq);
    void enqueue_update(View params, View grads, View hyper, View norm_sq);

    int step_count() const { return t_; }
    void set_step_count(int t) { t_ = t; }
    // Host copies of the state for checkpoints (layout order, float32):
    // 0 = m, 1 = v, 2 = master weights (only when has_master()).
    std::vector<float> moments_host(int which) const;
    void load_moments_host(int which, const std::vector<float>& values);
    bool has_master() const { return master_ != nullptr; }
    // Takes the master weights from the parameters, once: before the first
    // step unless load_moments_host(2, ...) already set them.
    void init_master(View params);
    size_t size() const { return n_; }    // elements in the shard
    size_t begin() const { return begin_; }

private:
    AdamW update_args(View params, View grads, double lr, double scale) const;

    Backend& be_;
    OptimConfig cfg_;
    std::vector<ParamRange> ranges_;  // offsets relative to begin_
    size_t begin_, n_;
    void* m_ = nullptr;
    void* v_ = nullptr;
    void* master_ = nullptr;  // f32, n_ elements, when parameters are not f32
    bool master_ready_ = false;
    int t_ = 0;
};

}  // namespace gpt
