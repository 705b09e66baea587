// AdamW over the model's parameter buffer (or one rank's shard of it, for
// ZeRO-1), with global gradient-norm clipping.
//
// Moments m and v (float32, or the backend's stat dtype) share the parameter
// layout table, so the update is one backend call and the state is one buffer
// each for checkpoints and sharding. Weight decay applies to the tensors the
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

    int step_count() const { return t_; }
    void set_step_count(int t) { t_ = t; }
    // Host copies of the moments for checkpoints (layout order, float32).
    std::vector<float> moments_host(int which) const;  // 0 = m, 1 = v
    void load_moments_host(int which, const std::vector<float>& values);
    size_t size() const { return n_; }    // elements in the shard
    size_t begin() const { return begin_; }

private:
    Backend& be_;
    OptimConfig cfg_;
    std::vector<ParamRange> ranges_;  // offsets relative to begin_
    size_t begin_, n_;
    void* m_ = nullptr;
    void* v_ = nullptr;
    int t_ = 0;
};

}  // namespace gpt
