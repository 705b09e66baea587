// Token + position embedding (GPT-2 encoder).
//
// forward:  out (B,T,C)[b,t,:] = wte (Vp,C)[tokens[b,t],:] + wpe (maxT,C)[t,:]
//           (without wpe, for rotary positions: out = wte[tokens])
// backward: dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:] (when dwpe is given)
//
// Parallel split: forward over the B*T rows (disjoint outputs). The backward
// scatters into dwte rows that repeat across (b,t), so it is split over
// CHANNELS instead: each thread owns a fixed slice of C and walks every (b,t)
// in order, so each output element is summed in the same order whatever the
// thread count (bit-identical results, no atomics).
#include <omp.h>

#include <algorithm>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

template <class T>
void encoder_forward(const EncoderFwd& a) {
    T* out = a.out.as<T>();
    const T* wte = a.wte.as<T>();
    const T* wpe = a.wpe.as<T>();
    const int C = a.C, T_ = a.T;
    const long rows = long(a.B) * T_;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        const int t = int(r % T_);
        const T* e = wte + size_t(a.tokens[r]) * C;
        T* o = out + size_t(r) * C;
        if (!wpe) {
            for (int c = 0; c < C; c++) o[c] = e[c];
            continue;
        }
        const T* p = wpe + size_t(t) * C;
        for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
    }
}

template <class T>
void encoder_backward(const EncoderBwd& a) {
    T* dwte = a.dwte.as<T>();
    T* dwpe = a.dwpe.as<T>();
    const T* dout = a.dout.as<T>();
    const int C = a.C, B = a.B, T_ = a.T;
#pragma omp parallel
    {
        // This thread's channel slice [c0, c1): a fixed function of C and the
        // thread count, and each element's additions run in (b,t) order.
        const int nth = omp_get_num_threads(), th = omp_get_thread_num();
        const int c0 = int(long(C) * th / nth), c1 = int(long(C) * (th + 1) / nth);
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T_; t++) {
                const size_t r = size_t(b) * T_ + t;
                const T* d = dout + r * C;
                T* we = dwte + size_t(a.tokens[r]) * C;
                for (int c = c0; c < c1; c++) we[c] += d[c];
                if (!dwpe) continue;
                T* pe = dwpe + size_t(t) * C;
                for (int c = c0; c < c1; c++) pe[c] += d[c];
            }
        }
    }
}

template void encoder_forward<float>(const EncoderFwd&);
template void encoder_forward<double>(const EncoderFwd&);
template void encoder_backward<float>(const EncoderBwd&);
template void encoder_backward<double>(const EncoderBwd&);

}  // namespace gpt::cpu
