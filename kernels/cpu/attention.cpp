// Causal multi-head self-attention (GPT-2), without a stored T x T matrix.
//
// qkv (B,T,3C): row (b,t) is [q | k | v], each C = NH heads x hs (hs = C/NH),
// head h at columns h*hs .. h*hs+hs-1 of its third. scale = 1/sqrt(hs).
// forward:  s[t,u] = scale * q_t . k_u for u <= t (masked above the diagonal)
//           lse (B,NH,T)[t] = log sum_u exp(s[t,u])
//           out (B,T,C)[t, head h] = sum_u p[t,u] v_u,  p = exp(s - lse)
// backward: p is recomputed from q, k and lse; with D_t = dout_t . out_t,
//           ds[t,u] = p[t,u] (dout_t . v_u - D_t)
//           dq_t = scale sum_u ds[t,u] k_u;  dk_u = scale sum_t ds[t,u] q_t;
//           dv_u = sum_t p[t,u] dout_t.      dqkv (B,T,3C) is overwritten.
// decode:   one new query per sequence against a KV cache (B,maxT,C) for
//           sampling: the same arithmetic as row `pos` of the forward.
//
// Parallel split: forward over (b, h, t) query rows, each with a per-thread
// score scratch of T; the backward over (b, h) pairs, because dk and dv of a
// head gather contributions from every query row of that head: one thread
// owns all of a head's dq/dk/dv and adds in a fixed order, so results do not
// depend on the thread count. Dot products and softmax sums run in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

template <class T>
void attention_forward(const AttentionFwd& a) {
    const int B = a.B, T_ = a.T, C = a.C, NH = a.NH, hs = C / NH;
    const size_t C3 = size_t(3) * C;
    const double scale = 1.0 / std::sqrt(double(hs));
    T* out = a.out.as<T>();
    T* lse = a.lse.as<T>();
    const T* qkv = a.qkv.as<T>();
    const long rows = long(B) * NH * T_;
#pragma omp parallel
    {
        std::vector<double> s(static_cast<size_t>(T_));  // scores of one query row (T)
        std::vector<double> acc(static_cast<size_t>(hs));
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            const int t = int(r % T_);
            const int h = int((r / T_) % NH);
            const int b = int(r / (long(T_) * NH));
            const T* base = qkv + size_t(b) * T_ * C3;
            const T* q = base + size_t(t) * C3 + size_t(h) * hs;
            double mx = -INFINITY;
            for (int u = 0; u <= t; u++) {
                const T* k = base + size_t(u) * C3 + C + size_t(h) * hs;
                double d = 0;
                for (int i = 0; i < hs; i++) d += double(q[i]) * k[i];
                s[u] = d * scale;
                mx = std::max(mx, s[u]);
            }
            double sum = 0;
            for (int u = 0; u <= t; u++) {
                s[u] = std::exp(s[u] - mx);
                sum += s[u];
            }
            const double inv = 1.0 / sum;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int u = 0; u <= t; u++) {
                const T* v = base + size_t(u) * C3 + 2 * size_t(C) + size_t(h) * hs;
                const double p = s[u] * inv;
                for (int i = 0; i < hs; i++) acc[i] += p * v[i];
            }
            T* o = out + (size_t(b) * T_ + t) * C + size_t(h) * hs;
            for (int i = 0; i < hs; i++) o[i] = T(acc[i]);
            lse[r] = T(mx + std::log(sum));
        }
    }
}

template <class T>
void attention_backward(const AttentionBwd& a) {
    const int B = a.B, T_ = a.T, C = a.C, NH = a.NH, hs = C / NH;
    const size_t C3 = size_t(3) * C;
    const double scale = 1.0 / std::sqrt(double(hs));
    T* dqkv = a.dqkv.as<T>();
    const T* dout = a.dout.as<T>();
    const T* qkv = a.qkv.as<T>();
    const T* out = a.out.as<T>();
    const T* lse = a.lse.as<T>();
    const long pairs = long(B) * NH;
#pragma omp parallel
    {
        std::vector<double> dq(static_cast<size_t>(hs));
#pragma omp for schedule(static)
        for (long bh = 0; bh < pairs; bh++) {
            const int b = int(bh / NH), h = int(bh % NH);
            const T* base = qkv + size_t(b) * T_ * C3;
            T* dbase = dqkv + size_t(b) * T_ * C3;
            const size_t qo = size_t(h) * hs, ko = C + qo, vo = 2 * size_t(C) + qo;
            // This head's dq, dk, dv slices are owned by this iteration: clear them.
            for (int t = 0; t < T_; t++) {
                T* row = dbase + size_t(t) * C3;
                for (int i = 0; i < hs; i++) row[qo + i] = row[ko + i] = row[vo + i] = T(0);
            }
            for (int t = 0; t < T_; t++) {
                const T* q = base + size_t(t) * C3 + qo;
                const T* d = dout + (size_t(b) * T_ + t) * C + qo;
                const T* o = out + (size_t(b) * T_ + t) * C + qo;
                const double l = lse[size_t(bh) * T_ + t];
                double D = 0;
                for (int i = 0; i < hs; i++) D += double(d[i]) * o[i];
                std::fill(dq.begin(), dq.end(), 0.0);
                for (int u = 0; u <= t; u++) {
                    const T* k = base + size_t(u) * C3 + ko;
                    const T* v = base + size_t(u) * C3 + vo;
                    double qk = 0, dv = 0;
                    for (int i = 0; i < hs; i++) {
                        qk += double(q[i]) * k[i];
                        dv += double(d[i]) * v[i];
                    }
                    const double p = std::exp(qk * scale - l);
                    const double ds = p * (dv - D) * scale;
                    T* dk = dbase + size_t(u) * C3 + ko;
                    T* dvv = dbase + size_t(u) * C3 + vo;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += ds * k[i];
                        dk[i] = T(dk[i] + ds * q[i]);
                        dvv[i] = T(dvv[i] + p * d[i]);
                    }
                }
                T* dqr = dbase + size_t(t) * C3 + qo;
                for (int i = 0; i < hs; i++) dqr[i] = T(dq[i]);
            }
        }
    }
}

template <class T>
void attention_decode(const AttentionDecode& a) {
    const int B = a.B, C = a.C, NH = a.NH, hs = C / NH, pos = a.pos;
    const double scale = 1.0 / std::sqrt(double(hs));
    T* out = a.out.as<T>();
    const T* qkv = a.qkv.as<T>();
    T* kc = a.kcache.as<T>();
    T* vc = a.vcache.as<T>();
    // Append this position's k and v to the caches (B,maxT,C).
    for (int b = 0; b < B; b++) {
        const T* row = qkv + size_t(b) * 3 * C;
        std::copy(row + C, row + 2 * C, kc + (size_t(b) * a.maxT + pos) * C);
        std::copy(row + 2 * C, row + 3 * C, vc + (size_t(b) * a.maxT + pos) * C);
    }
#pragma omp parallel
    {
        std::vector<double> s(size_t(pos) + 1), acc(static_cast<size_t>(hs));
#pragma omp for schedule(static)
        for (long bh = 0; bh < long(B) * NH; bh++) {
            const int b = int(bh / NH), h = int(bh % NH);
            const T* q = qkv + size_t(b) * 3 * C + size_t(h) * hs;
            const T* kb = kc + size_t(b) * a.maxT * C + size_t(h) * hs;
            const T* vb = vc + size_t(b) * a.maxT * C + size_t(h) * hs;
            double mx = -INFINITY;
            for (int u = 0; u <= pos; u++) {
                double d = 0;
                for (int i = 0; i < hs; i++) d += double(q[i]) * kb[size_t(u) * C + i];
                s[u] = d * scale;
                mx = std::max(mx, s[u]);
            }
            double sum = 0;
            for (int u = 0; u <= pos; u++) sum += (s[u] = std::exp(s[u] - mx));
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int u = 0; u <= pos; u++)
                for (int i = 0; i < hs; i++) acc[i] += s[u] / sum * vb[size_t(u) * C + i];
            T* o = out + size_t(b) * C + size_t(h) * hs;
            for (int i = 0; i < hs; i++) o[i] = T(acc[i]);
        }
    }
}

template void attention_forward<float>(const AttentionFwd&);
template void attention_forward<double>(const AttentionFwd&);
template void attention_backward<float>(const AttentionBwd&);
template void attention_backward<double>(const AttentionBwd&);
template void attention_decode<float>(const AttentionDecode&);
template void attention_decode<double>(const AttentionDecode&);

}  // namespace gpt::cpu
