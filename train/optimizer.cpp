#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/convert.h"

namespace gpt {

AdamWOptimizer::AdamWOptimizer(Backend& be, const Layout& layout, const OptimConfig& cfg, size_t begin, size_t end)
    : be_(be), cfg_(cfg), begin_(begin), n_((end ? end : layout.total) - begin) {
    // The layout's tensors clipped to the shard [begin, begin + n).
    for (const auto& t : layout.tensors) {
        const size_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.numel, begin_ + n_);
        if (lo < hi) ranges_.push_back({lo - begin_, hi - lo, t.decay});
    }
    const size_t bytes = n_ * dtype_size(be_.stat_dtype());
    m_ = be_.alloc(bytes, "AdamW first moments");
    v_ = be_.alloc(bytes, "AdamW second moments");
    be_.zero(m_, bytes);
    be_.zero(v_, bytes);
    if (be_.param_dtype() != DType::f32 && be_.param_dtype() != DType::f64)
        master_ = be_.alloc(n_ * sizeof(float), "AdamW master weights (float32)");
}

AdamWOptimizer::~AdamWOptimizer() {
    if (master_) be_.free(master_);
    be_.free(v_);
    be_.free(m_);
}

double AdamWOptimizer::grad_sq(View grads) { return be_.grad_norm_squared(grads.at(begin_), n_); }

double AdamWOptimizer::grad_norm(View grads) { return std::sqrt(grad_sq(grads)); }

void AdamWOptimizer::step(View params, View grads, double lr, double norm) {
    // Clip the global norm to grad_clip (PyTorch's clip_grad_norm_ without its 1e-6).
    double scale = 1.0;
    if (cfg_.grad_clip > 0 && norm > cfg_.grad_clip) scale = cfg_.grad_clip / norm;
    if (master_ && !master_ready_) init_master(params);
    t_++;
    be_.adamw_update(update_args(params, grads, lr, scale));
}

void AdamWOptimizer::enqueue_grad_sq(View grads, View norm_sq) { be_.grad_sumsq({norm_sq, grads.at(begin_), n_}); }

void AdamWOptimizer::enqueue_update(View params, View grads, View hyper, View norm_sq) {
    if (master_ && !master_ready_) run_failed("optimizer: enqueue_update before the master weights were set (init_master)");
    AdamW a = update_args(params, grads, 0.0, 1.0);
    a.hyper = hyper;
    a.norm_sq = norm_sq;
    a.grad_clip = cfg_.grad_clip;
    be_.adamw_update(a);
}

AdamW AdamWOptimizer::update_args(View params, View grads, double lr, double scale) const {
    AdamW a;
    a.params = params.at(begin_);
    a.grads = grads.at(begin_);
    a.m = View{m_, be_.stat_dtype()};
    a.v = View{v_, be_.stat_dtype()};
    a.ranges = ranges_.data();
    a.n_ranges = static_cast<int>(ranges_.size());
    a.lr = lr;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.weight_decay = cfg_.weight_decay;
    a.grad_scale = scale;
    a.t = t_;
    if (master_) {
        a.master = View{master_, DType::f32};
        a.seed = 0x9E3779B97F4A7C15ull ^ uint64_t(begin_);  // distinct streams for the shards of a ZeRO-1 job
        a.stochastic_rounding = be_.kernels().param("adamw", "stochastic_rounding") != 0;
    }
    return a;
}

void AdamWOptimizer::init_master(View params) {
    if (!master_ || master_ready_) return;
    be_.copy(View{master_, DType::f32}, params.at(begin_), n_);
    master_ready_ = true;
}

std::vector<float> AdamWOptimizer::moments_host(int which) const {
    if (which == 2) {
        if (!master_) run_failed("optimizer: no master weights (the parameters are not bf16)");
        if (!master_ready_) run_failed("optimizer: master weights read before they were set");
        std::vector<float> out(n_);
        be_.to_host(out.data(), master_, n_ * sizeof(float));
        return out;
    }
    const DType dt = be_.stat_dtype();
    std::vector<char> raw(n_ * dtype_size(dt));
    be_.to_host(raw.data(), which == 0 ? m_ : v_, raw.size());
    std::vector<double> d(n_);
    to_double(raw.data(), dt, d.data(), n_);
    return std::vector<float>(d.begin(), d.end());
}

void AdamWOptimizer::load_moments_host(int which, const std::vector<float>& values) {
    if (values.size() != n_)
        bad_input("optimizer state holds " + std::to_string(values.size()) + " values, the model needs " + std::to_string(n_));
    if (which == 2) {
        if (!master_) run_failed("optimizer: no master weights (the parameters are not bf16)");
        be_.to_device(master_, values.data(), n_ * sizeof(float));
        master_ready_ = true;
        return;
    }
    const DType dt = be_.stat_dtype();
    std::vector<double> d(values.begin(), values.end());
    std::vector<char> raw(n_ * dtype_size(dt));
    from_double(d.data(), raw.data(), dt, n_);
    be_.to_device(which == 0 ? m_ : v_, raw.data(), raw.size());
}

}  // namespace gpt
