// Fused softmax + cross-entropy over the first V of Vp logits per row.
//
// logits (N,Vp), targets (N) in [0,V) (the data layer checks), losses (N):
//   lse_n    = log sum_{j<V} exp(logits[n,j])          (double accumulation)
//   losses_n = lse_n - logits[n, targets[n]]
// With grad, logits is overwritten IN PLACE:
//   logits[n,j] = (exp(logits[n,j] - lse_n) - [j == target]) * dloss   for j < V
//   logits[n,j] = 0                                                    for V <= j < Vp
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
    const double dloss = a.dloss;
#pragma omp parallel for schedule(static)
    for (long n = 0; n < a.N; n++) {
        T* row = logits + size_t(n) * Vp;
        const int target = a.targets[n];
        double mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = std::max(mx, double(row[j]));
        double sum = 0;
        for (int j = 0; j < V; j++) sum += std::exp(double(row[j]) - mx);
        const double lse = mx + std::log(sum);
        if (losses) losses[n] = T(lse - double(row[target]));
        if (a.grad) {
            for (int j = 0; j < V; j++) {
                const double p = std::exp(double(row[j]) - lse);
                row[j] = T((p - (j == target ? 1.0 : 0.0)) * dloss);
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
