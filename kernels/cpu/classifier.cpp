// Fused softmax + cross-entropy over the first V of Vp logits per row, with
// an optional tanh soft cap of the logits.
//
// logits (N,Vp), targets (N) in [0,V) (the data layer checks), losses (N):
//   z_nj     = softcap > 0 ? softcap * tanh(logits[n,j] / softcap) : logits[n,j]
//   lse_n    = log sum_{j<V} exp(z_nj)                  (double accumulation)
//   losses_n = lse_n - z_n,target
// With grad, logits is overwritten IN PLACE:
//   logits[n,j] = (exp(z_nj - lse_n) - [j == target]) * dloss * dz_nj   for j < V
//   logits[n,j] = 0                                                      for V <= j < Vp
// with dz = 1 - (z / softcap)^2 (the cap's derivative, 1 without a cap).
// Without grad (evaluation) the logits are left as they are, as on CUDA.
// Without targets (sampling), only the cap is applied: logits[n,j] = z_nj, j < V.
//
// Parallel split: static over rows; each row is independent.
//
// sum_into (the step's loss): dst[0] += scale * sum of src, in double and in
// index order (serial: it sums one value per position).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

template <class T>
void classifier(const ClassifierFwdBwd& a) {
    T* logits = a.logits.as<T>();
    T* losses = a.losses.as<T>();
    const int V = a.V, Vp = a.Vp;
    const double dloss = a.dloss, cap = a.softcap;
    if (!a.targets) {
        if (cap <= 0) return;
#pragma omp parallel for schedule(static)
        for (long n = 0; n < a.N; n++) {
            T* row = logits + size_t(n) * Vp;
            for (int j = 0; j < V; j++) row[j] = T(cap * std::tanh(double(row[j]) / cap));
        }
        return;
    }
    if (cap > 0 && a.grad) {
        // The capped logits, in place (dlogits overwrite the row anyway); the
        // gradient below takes the cap's derivative from them (tanh = z / cap).
#pragma omp parallel for schedule(static)
        for (long n = 0; n < a.N; n++) {
            T* row = logits + size_t(n) * Vp;
            for (int j = 0; j < V; j++) row[j] = T(cap * std::tanh(double(row[j]) / cap));
        }
    }
#pragma omp parallel for schedule(static)
    for (long n = 0; n < a.N; n++) {
        T* row = logits + size_t(n) * Vp;
        const int target = a.targets[n];
        // z: capped in place above with grad; capped here, the row untouched, without.
        auto z = [&](int j) { return cap > 0 && !a.grad ? double(T(cap * std::tanh(double(row[j]) / cap))) : double(row[j]); };
        double mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = std::max(mx, z(j));
        double sum = 0;
        for (int j = 0; j < V; j++) sum += std::exp(z(j) - mx);
        const double lse = mx + std::log(sum);
        if (losses) losses[n] = T(lse - z(target));
        if (a.grad) {
            for (int j = 0; j < V; j++) {
                const double p = std::exp(double(row[j]) - lse);
                double d = (p - (j == target ? 1.0 : 0.0)) * dloss;
                if (cap > 0) {
                    const double th = double(row[j]) / cap;
                    d *= 1.0 - th * th;
                }
                row[j] = T(d);
            }
            for (int j = V; j < Vp; j++) row[j] = T(0);
        }
    }
}

void sum_into(const SumInto& a) {
    double s = 0;
    if (a.src.dtype == DType::f64)
        for (size_t i = 0; i < a.n; i++) s += a.src.as<double>()[i];
    else
        for (size_t i = 0; i < a.n; i++) s += a.src.as<float>()[i];
    *a.dst.as<double>() += a.scale * s;
}

template void classifier<float>(const ClassifierFwdBwd&);
template void classifier<double>(const ClassifierFwdBwd&);

}  // namespace gpt::cpu
