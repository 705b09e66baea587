// Rotary position embedding (RoPE) of the q and k heads of qkv, in place.
//
// qkv (N,3C), rows at positions pos0 + r % T; q heads at columns [0, C), k
// heads at [C, 2C), each head hs = C/NH wide (hs even), v untouched.
// forward:  for i < hs/2, with angle = pos * base^(-2i/hs):
//             x1 = x[i], x2 = x[i + hs/2]
//             x[i]        = x1 cos - x2 sin
//             x[i + hs/2] = x1 sin + x2 cos
// backward: the same with the angle negated (the rotation's transpose), on dqkv.
//
// Angles and their cosines and sines are computed in double from pos and i
// alone (rope_angle in kernels/ops.h), so the training forward, the decode step and the
// CUDA backend's table (built on the host from the same function) agree.
//
// Parallel split: static over rows; every row is independent.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

template <class T>
void rope(const Rope& a) {
    const int C = a.C, NH = a.NH, hs = C / NH, half = hs / 2;
    T* qkv = a.qkv.as<T>();
    const double sign = a.backward ? -1.0 : 1.0;
#pragma omp parallel
    {
        std::vector<double> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
        for (long r = 0; r < a.N; r++) {
            const int pos = a.pos0 + int(r % a.T);
            for (int i = 0; i < half; i++) {
                const double th = rope_angle(pos, i, hs, a.base);
                cs[size_t(i)] = std::cos(th);
                sn[size_t(i)] = sign * std::sin(th);
            }
            for (int j = 0; j < 2 * NH; j++) {  // q heads, then k heads
                T* x = qkv + size_t(r) * 3 * C + size_t(j) * hs;
                for (int i = 0; i < half; i++) {
                    const double x1 = x[i], x2 = x[i + half];
                    x[i] = T(x1 * cs[size_t(i)] - x2 * sn[size_t(i)]);
                    x[i + half] = T(x1 * sn[size_t(i)] + x2 * cs[size_t(i)]);
                }
            }
        }
    }
}

template void rope<float>(const Rope&);
template void rope<double>(const Rope&);

}  // namespace gpt::cpu
