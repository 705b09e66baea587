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
}

AdamWOptimizer::~AdamWOptimizer() {
    be_.free(v_);
    be_.free(m_);
}

double AdamWOptimizer::grad_sq(View grads) { return be_.grad_norm_squared(grads.at(begin_), n_); }

double AdamWOptimizer::grad_norm(View grads) { return std::sqrt(grad_sq(grads)); }

void AdamWOptimizer::step(View params, View grads, double lr, double norm) {
    // Clip the global norm to grad_clip (PyTorch's clip_grad_norm_ without its 1e-6).
    double scale = 1.0;
    if (cfg_.grad_clip > 0 && norm > cfg_.grad_clip) scale = cfg_.grad_clip / norm;
    t_++;
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
    be_.adamw_update(a);
}

std::vector<float> AdamWOptimizer::moments_host(int which) const {
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
    const DType dt = be_.stat_dtype();
    std::vector<double> d(values.begin(), values.end());
    std::vector<char> raw(n_ * dtype_size(dt));
    from_double(d.data(), raw.data(), dt, n_);
    be_.to_device(which == 0 ? m_ : v_, raw.data(), raw.size());
}

}  // namespace gpt
