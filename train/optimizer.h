// AdamW over the model's whole parameter buffer, with global gradient-norm clipping.
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
    AdamWOptimizer(Backend& be, const Layout& layout, const OptimConfig& cfg);
    ~AdamWOptimizer();
    AdamWOptimizer(const AdamWOptimizer&) = delete;
    AdamWOptimizer& operator=(const AdamWOptimizer&) = delete;

    // Global L2 norm of the gradients (before clipping).
    double grad_norm(View grads);
    // One update at learning rate lr. Clips to cfg.grad_clip using `norm`
    // (pass the value grad_norm returned). Returns nothing; advances step().
    void step(View params, View grads, double lr, double norm);

    int step_count() const { return t_; }
    void set_step_count(int t) { t_ = t; }
    // Host copies of the moments for checkpoints (layout order, float32).
    std::vector<float> moments_host(int which) const;  // 0 = m, 1 = v
    void load_moments_host(int which, const std::vector<float>& values);
    size_t size() const { return n_; }

private:
    Backend& be_;
    OptimConfig cfg_;
    std::vector<ParamRange> ranges_;
    size_t n_;
    void* m_ = nullptr;
    void* v_ = nullptr;
    int t_ = 0;
};

}  // namespace gpt
