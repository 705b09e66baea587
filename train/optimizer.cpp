#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/convert.h"

namespace gpt {

namespace {

// The AdamW learning rate of a tensor as a multiple of optim.lr (its group).
double lr_scale(const std::string& name, const OptimConfig& cfg) {
    if ((name == "wte" || name == "wpe") && cfg.embed_lr > 0) return cfg.embed_lr / cfg.lr;
    if (name == "lm_head" && cfg.head_lr > 0) return cfg.head_lr / cfg.lr;
    return 1.0;
}

}  // namespace

Optimizer::Optimizer(const GPT2& model, const OptimConfig& cfg, size_t begin, size_t end)
    : be_(model.backend()), cfg_(cfg), begin_(begin), end_(end ? end : model.param_layout().total) {
    const Layout& layout = model.param_layout();
    // Muon: the hidden matrices that intersect the shard, whole.
    std::vector<std::string> muon_tensors;
    lo_ = begin_;
    size_t hi = end_;
    if (cfg_.type == "muon") {
        for (const MatrixStack& st : hidden_matrices(layout, model.shape())) {
            muon_tensors.push_back(st.name);
            const size_t m = size_t(st.rows) * st.cols;
            int first = -1, count = 0;
            for (int k = 0; k < st.count; k++) {
                const size_t a = st.offset + size_t(k) * m, b = a + m;
                if (a >= end_ || b <= begin_) continue;
                if (first < 0) first = k;
                count++;
                lo_ = std::min(lo_, a);
                hi = std::max(hi, b);
            }
            if (count > 0) muon_.push_back({st.offset + size_t(first) * m, count, st.rows, st.cols});
        }
    }
    n_ = hi - lo_;
    // AdamW: every other tensor, clipped to the shard.
    for (const auto& t : layout.tensors) {
        if (std::find(muon_tensors.begin(), muon_tensors.end(), t.name) != muon_tensors.end()) continue;
        const size_t a = std::max(t.offset, begin_), b = std::min(t.offset + t.numel, end_);
        if (a < b) ranges_.push_back({a - lo_, b - a, t.decay, lr_scale(t.name, cfg_)});
    }
    const size_t bytes = n_ * dtype_size(be_.stat_dtype());
    m_ = be_.alloc(bytes, uses_muon() ? "AdamW first moments and Muon momentum" : "AdamW first moments");
    v_ = be_.alloc(bytes, "AdamW second moments");
    be_.zero(m_, bytes);
    be_.zero(v_, bytes);
    if (be_.param_dtype() != DType::f32 && be_.param_dtype() != DType::f64)
        master_ = be_.alloc(n_ * sizeof(float), "optimizer master weights (float32)");
}

Optimizer::~Optimizer() {
    if (master_) be_.free(master_);
    be_.free(v_);
    be_.free(m_);
}

double Optimizer::grad_sq(View grads) { return be_.grad_norm_squared(grads.at(begin_), end_ - begin_); }

double Optimizer::grad_norm(View grads) { return std::sqrt(grad_sq(grads)); }

void Optimizer::step(View params, View grads, double lr, double norm) {
    // Clip the global norm to grad_clip (PyTorch's clip_grad_norm_ without its 1e-6).
    double scale = 1.0;
    if (cfg_.grad_clip > 0 && norm > cfg_.grad_clip) scale = cfg_.grad_clip / norm;
    if (master_ && !master_ready_) init_master(params);
    t_++;
    const DType st = be_.stat_dtype();
    if (!ranges_.empty()) be_.adamw_update(adamw_args(params, grads, lr, scale));
    // Muon's lr follows the same schedule as optim.lr.
    const double muon_lr = cfg_.muon_lr * (lr / cfg_.lr);
    for (const MuonRun& r : muon_) {
        const size_t rel = r.offset - lo_;
        Muon u{params.at(r.offset), grads.at(r.offset), View{m_, st}.at(rel), r.count, r.rows, r.cols,
               muon_lr, cfg_.muon_momentum, cfg_.muon_weight_decay, scale, cfg_.muon_nesterov, cfg_.muon_ns_steps};
        if (master_) {
            u.master = View{master_, DType::f32}.at(rel);
            u.seed = shard_seed() ^ uint64_t(r.offset);
            u.t = t_;
            u.stochastic_rounding = be_.kernels().param("adamw", "stochastic_rounding") != 0;
        }
        be_.muon_update(u);
    }
}

void Optimizer::enqueue_grad_sq(View grads, View norm_sq) { be_.grad_sumsq({norm_sq, grads.at(begin_), end_ - begin_}); }

void Optimizer::enqueue_update(View params, View grads, View hyper, View norm_sq, View guard) {
    if (uses_muon()) run_failed("optimizer: Muon's update takes host values and cannot be enqueued (enqueue_update)");
    if (master_ && !master_ready_) run_failed("optimizer: enqueue_update before the master weights were set (init_master)");
    if (ranges_.empty()) return;
    AdamW a = adamw_args(params, grads, 0.0, 1.0);
    a.hyper = hyper;
    a.norm_sq = norm_sq;
    a.guard = guard;
    a.grad_clip = cfg_.grad_clip;
    be_.adamw_update(a);
}

AdamW Optimizer::adamw_args(View params, View grads, double lr, double scale) const {
    AdamW a;
    a.params = params.at(lo_);
    a.grads = grads.at(lo_);
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
        a.seed = shard_seed();
        a.stochastic_rounding = be_.kernels().param("adamw", "stochastic_rounding") != 0;
    }
    return a;
}

void Optimizer::init_master(View params) {
    if (!master_ || master_ready_) return;
    be_.copy(View{master_, DType::f32}, params.at(lo_), n_);
    master_ready_ = true;
}

std::vector<float> Optimizer::moments_host(int which) const {
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

void Optimizer::load_moments_host(int which, const std::vector<float>& values) {
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
