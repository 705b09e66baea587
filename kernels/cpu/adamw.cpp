// AdamW (llm.c / PyTorch semantics) and the global gradient norm.
//
// adamw_update, for every element i of every ParamRange (elements outside all
// ranges are left untouched), with the 1-based step t:
//   g = grads[i] * grad_scale
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   mhat = m / (1 - beta1^t);      vhat = v / (1 - beta2^t)
//   p -= lr_r * (mhat / (sqrt(vhat) + eps) + (decay ? weight_decay * p : 0))
// with lr_r = lr * the range's lr_scale (parameter groups).
// params, grads, m, v all hold n elements of T; the update math runs in T.
// With a.hyper / a.norm_sq (f64 in backend memory, see kernels/ops.h) lr, t and
// the clip scale are read from there when the update runs.
//
// grad_norm_squared: sum of grads[i]^2 in double, over fixed blocks of
// kGradNormBlock elements; the block sums are then added in block order, so
// the result is the same bits whatever the thread count.
//
// Parallel split: static over elements within each range (independent), and
// over blocks for the norm.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

template <class T>
double grad_norm_squared(View grads, size_t n) {
    const T* g = grads.as<T>();
    const long nblocks = long((n + kGradNormBlock - 1) / kGradNormBlock);
    std::vector<double> partial(size_t(nblocks), 0.0);
#pragma omp parallel for schedule(static)
    for (long blk = 0; blk < nblocks; blk++) {
        const size_t i0 = size_t(blk) * kGradNormBlock;
        const size_t i1 = std::min(n, i0 + kGradNormBlock);
        double s = 0;
        for (size_t i = i0; i < i1; i++) s += double(g[i]) * g[i];
        partial[size_t(blk)] = s;
    }
    double total = 0;
    for (double s : partial) total += s;
    return total;
}

template <class T>
void adamw_update(const AdamW& a) {
    T* p = a.params.as<T>();
    const T* g = a.grads.as<T>();
    T* m = a.m.as<T>();
    T* v = a.v.as<T>();
    // Per-element math in T (float for the trainer: it vectorises twice as
    // wide and the optimizer is memory-bound anyway); the bias corrections
    // 1/(1 - beta^t) are computed once in double.
    // lr and t from backend memory (hyper), and the clip scale from the norm
    // there (norm_sq), when given: a recorded step replays with new values.
    double lr = a.lr, t = a.t, gs = a.grad_scale;
    if (a.hyper) {
        lr = a.hyper.as<double>()[0];
        t = a.hyper.as<double>()[1];
    }
    if ((a.norm_sq && !std::isfinite(*a.norm_sq.as<double>())) || (a.guard && !std::isfinite(*a.guard.as<double>()))) return;
    if (a.norm_sq && a.grad_clip > 0) {
        const double norm = std::sqrt(*a.norm_sq.as<double>());
        if (norm > a.grad_clip) gs *= a.grad_clip / norm;
    }
    const T tb1 = a.beta1, tb2 = a.beta2, teps = a.eps, tgs = T(gs);
    const T ic1 = T(1.0 / (1.0 - std::pow(double(a.beta1), t)));
    const T ic2 = T(1.0 / (1.0 - std::pow(double(a.beta2), t)));
    for (int r = 0; r < a.n_ranges; r++) {
        const ParamRange& range = a.ranges[r];
        const T twd = range.decay ? T(a.weight_decay) : T(0);
        const T tlr = T(lr * range.lr_scale);
        const long n = long(range.size);
        T* pr = p + range.offset;
        const T* gr = g + range.offset;
        T* mr = m + range.offset;
        T* vr = v + range.offset;
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            const T gi = gr[i] * tgs;
            const T mi = tb1 * mr[i] + (T(1) - tb1) * gi;
            const T vi = tb2 * vr[i] + (T(1) - tb2) * gi * gi;
            mr[i] = mi;
            vr[i] = vi;
            pr[i] -= tlr * (mi * ic1 / (std::sqrt(vi * ic2) + teps) + twd * pr[i]);
        }
    }
}

template double grad_norm_squared<float>(View, size_t);
template double grad_norm_squared<double>(View, size_t);
template void adamw_update<float>(const AdamW&);
template void adamw_update<double>(const AdamW&);

}  // namespace gpt::cpu
