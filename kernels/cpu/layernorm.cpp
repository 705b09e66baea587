// LayerNorm and RMSNorm over the last dimension, eps 1e-5 (GPT-2 / PyTorch
// LayerNorm default; RMSNorm uses the same), and QK-norm (RMSNorm of each
// attention head's q and k, parameter-free).
//
// forward:  inp, out (N,C); weight, bias (C), either may be null (1 and 0);
//           saves mean, rstd (N)
//           LayerNorm: out = (inp - mean) * rstd * weight + bias, rstd = 1/sqrt(var + eps)
//                      (biased variance; statistics accumulated in double)
//           RMSNorm:   out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps); no mean
// backward: with norm = (inp - mean) * rstd (RMSNorm: inp * rstd) and g = dout * weight,
//           dinp    (N,C) += (g - mean_c(g) - norm * mean_c(g * norm)) * rstd
//                            (RMSNorm: (g - norm * mean_c(g * norm)) * rstd)
//           dweight (C)   += sum_n dout * norm
//           dbias   (C)   += sum_n dout
// QK-norm:  for every row of qkv (N,3C) and head h, the q and k vectors x (hs)
//           become y = x * rstd, rstd = 1/sqrt(mean(x^2) + eps), saved in rstd
//           (N, 2NH) as [q heads | k heads]; backward dx = rstd (dy - y mean(dy y)),
//           in place on dqkv.
//
// Parallel split: forward and dinp over rows (disjoint outputs). dweight and
// dbias reduce over rows, so they are split over CHANNELS: each thread owns a
// fixed channel slice and sums all N rows in order into double accumulators,
// which gives the same bits whatever the thread count.
#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

namespace {

constexpr double kEps = 1e-5;

// One row: out = layernorm(x), saving mean and rstd. GPT-2's norm (weight
// and bias) keeps its own loop so that its arithmetic never changes.
template <class T>
inline void layernorm_row(const T* x, T* o, T* mean, T* rstd, const T* w, const T* bias, int C) {
    double s = 0;
    for (int c = 0; c < C; c++) s += x[c];
    const double m = s / C;
    double v = 0;
    for (int c = 0; c < C; c++) {
        const double d = x[c] - m;
        v += d * d;
    }
    const double r = 1.0 / std::sqrt(v / C + kEps);
    if (w && bias)
        for (int c = 0; c < C; c++) o[c] = T((x[c] - m) * r * w[c] + bias[c]);
    else
        for (int c = 0; c < C; c++) o[c] = T((x[c] - m) * r * (w ? double(w[c]) : 1.0) + (bias ? double(bias[c]) : 0.0));
    *mean = T(m);
    *rstd = T(r);
}

// One row: out = rmsnorm(x) (weight optional), saving rstd.
template <class T>
inline void rmsnorm_row(const T* x, T* o, T* rstd, const T* w, int C) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += double(x[c]) * x[c];
    const double r = 1.0 / std::sqrt(ss / C + kEps);
    for (int c = 0; c < C; c++) o[c] = T(x[c] * r * (w ? double(w[c]) : 1.0));
    *rstd = T(r);
}

template <class T>
inline void norm_row(bool rms, const T* x, T* o, T* mean, T* rstd, const T* w, const T* bias, int C) {
    if (rms) rmsnorm_row<T>(x, o, rstd, w, C);
    else layernorm_row<T>(x, o, mean, rstd, w, bias, C);
}

}  // namespace

template <class T>
void layernorm_forward(const LayerNormFwd& a) {
    const int C = a.C;
    T* mean = a.mean.as<T>();
#pragma omp parallel for schedule(static)
    for (long n = 0; n < a.N; n++)
        norm_row<T>(a.rms, a.inp.as<T>() + size_t(n) * C, a.out.as<T>() + size_t(n) * C, mean ? mean + n : nullptr, a.rstd.as<T>() + n,
                    a.weight.as<T>(), a.bias.as<T>(), C);
}

// The `layernorm: fused` variant: each row's residual sum is formed and
// normalised while it is in cache, instead of a second pass over (N,C).
// Same arithmetic as residual_forward then layernorm_forward, bit for bit.
template <class T>
void residual_layernorm_forward(const ResidualLayerNormFwd& a) {
    const int C = a.C;
#pragma omp parallel for schedule(static)
    for (long n = 0; n < a.N; n++) {
        const size_t row = size_t(n) * C;
        T* r = a.residual.as<T>() + row;
        const T* x = a.a.as<T>() + row;
        const T* y = a.b.as<T>() + row;
        for (int c = 0; c < C; c++) r[c] = x[c] + y[c];
        T* mean = a.mean.as<T>();
        norm_row<T>(a.rms, r, a.out.as<T>() + row, mean ? mean + n : nullptr, a.rstd.as<T>() + n, a.weight.as<T>(), a.bias.as<T>(), C);
    }
}

template <class T>
void layernorm_backward(const LayerNormBwd& a) {
    const int C = a.C;
    const long N = a.N;
    const bool rms = a.rms;
    T* dinp = a.dinp.as<T>();
    T* dw = a.dweight.as<T>();
    T* db = a.dbias.as<T>();
    const T* dout = a.dout.as<T>();
    const T* inp = a.inp.as<T>();
    const T* w = a.weight.as<T>();
    const T* mean = a.mean.as<T>();
    const T* rstd = a.rstd.as<T>();
    // The row's centre: its mean for LayerNorm, 0 for RMSNorm.
    auto centre = [&](long n) { return rms ? 0.0 : double(mean[n]); };
    auto weight = [&](int c) { return w ? double(w[c]) : 1.0; };

#pragma omp parallel
    {
        // dinp: rows split statically across threads.
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const T* x = inp + size_t(n) * C;
            const T* d = dout + size_t(n) * C;
            const double m = centre(n), r = rstd[n];
            double g_mean = 0, gn_mean = 0;
            for (int c = 0; c < C; c++) {
                const double g = double(d[c]) * weight(c);
                g_mean += g;
                gn_mean += g * (x[c] - m) * r;
            }
            g_mean = rms ? 0.0 : g_mean / C;
            gn_mean /= C;
            T* di = dinp + size_t(n) * C;
            for (int c = 0; c < C; c++) {
                const double g = double(d[c]) * weight(c);
                const double norm = (x[c] - m) * r;
                di[c] = T(di[c] + (g - g_mean - norm * gn_mean) * r);
            }
        }

        // dweight, dbias (and dres_bias, the column sums of the updated dinp):
        // this thread's channel slice [c0, c1), rows in order. The loop above
        // ends with a barrier, so every row of dinp is final here.
        T* dr = a.dres_bias.as<T>();
        if (dw || db || dr) {
            const int nth = omp_get_num_threads(), th = omp_get_thread_num();
            const int c0 = int(long(C) * th / nth), c1 = int(long(C) * (th + 1) / nth);
            std::vector<double> acc_w(size_t(c1 - c0), 0.0), acc_b(size_t(c1 - c0), 0.0), acc_r(dr ? size_t(c1 - c0) : 0, 0.0);
            for (long n = 0; n < N; n++) {
                const T* x = inp + size_t(n) * C;
                const T* d = dout + size_t(n) * C;
                const T* di = dinp + size_t(n) * C;
                const double m = centre(n), r = rstd[n];
                for (int c = c0; c < c1; c++) {
                    acc_w[c - c0] += double(d[c]) * ((x[c] - m) * r);
                    acc_b[c - c0] += d[c];
                }
                if (dr)
                    for (int c = c0; c < c1; c++) acc_r[c - c0] += di[c];
            }
            for (int c = c0; c < c1; c++) {
                if (dw) dw[c] = T(dw[c] + acc_w[c - c0]);
                if (db) db[c] = T(db[c] + acc_b[c - c0]);
                if (dr) dr[c] = T(dr[c] + acc_r[c - c0]);
            }
        }
    }
}

template <class T>
void qknorm_forward(const QKNormFwd& a) {
    const int C = a.C, NH = a.NH, hs = C / NH;
    T* qkv = a.qkv.as<T>();
    T* rstd = a.rstd.as<T>();
#pragma omp parallel for schedule(static)
    for (long n = 0; n < a.N; n++)
        for (int j = 0; j < 2 * NH; j++) {  // q heads, then k heads: both at j * hs in the row
            T* x = qkv + size_t(n) * 3 * C + size_t(j) * hs;
            rmsnorm_row<T>(x, x, rstd + size_t(n) * 2 * NH + j, static_cast<const T*>(nullptr), hs);
        }
}

template <class T>
void qknorm_backward(const QKNormBwd& a) {
    const int C = a.C, NH = a.NH, hs = C / NH;
    T* dqkv = a.dqkv.as<T>();
    const T* qkv = a.qkv.as<T>();
    const T* rstd = a.rstd.as<T>();
#pragma omp parallel for schedule(static)
    for (long n = 0; n < a.N; n++)
        for (int j = 0; j < 2 * NH; j++) {
            const size_t off = size_t(n) * 3 * C + size_t(j) * hs;
            const T* y = qkv + off;
            T* d = dqkv + off;
            double dy_y = 0;
            for (int i = 0; i < hs; i++) dy_y += double(d[i]) * y[i];
            dy_y /= hs;
            const double r = rstd[size_t(n) * 2 * NH + j];
            for (int i = 0; i < hs; i++) d[i] = T(r * (double(d[i]) - double(y[i]) * dy_y));
        }
}

template void residual_layernorm_forward<float>(const ResidualLayerNormFwd&);
template void residual_layernorm_forward<double>(const ResidualLayerNormFwd&);
template void layernorm_forward<float>(const LayerNormFwd&);
template void layernorm_forward<double>(const LayerNormFwd&);
template void layernorm_backward<float>(const LayerNormBwd&);
template void layernorm_backward<double>(const LayerNormBwd&);
template void qknorm_forward<float>(const QKNormFwd&);
template void qknorm_forward<double>(const QKNormFwd&);
template void qknorm_backward<float>(const QKNormBwd&);
template void qknorm_backward<double>(const QKNormBwd&);

}  // namespace gpt::cpu
