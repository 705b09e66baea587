// Elementwise ops: the MLP activation (tanh-approximated GELU, GPT-2's; or
// ReLU², model.activation: relu2) and the residual add.
//
// gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3*0.044715 x^2)
// relu2(x) = max(x, 0)^2,  relu2'(x) = 2 max(x, 0)
// forward:  out (N) = act(inp);  backward: dinp (N) = dout * act'(inp),
//           overwritten; dinp may alias dout (each element is read before it
//           is written, by the same iteration).
// residual: out (N) = a + b.
//
// Parallel split: static over elements; every output is independent.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;
}  // namespace

template <class T>
void gelu_forward(const GeluFwd& a) {
    T* out = a.out.as<T>();
    const T* inp = a.inp.as<T>();
    const long n = long(a.N);
    if (a.act == Activation::relu2) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            const T r = inp[i] > T(0) ? inp[i] : T(0);
            out[i] = r * r;
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const T x = inp[i];
        const T u = T(kSqrt2OverPi) * (x + T(kCubic) * x * x * x);
        out[i] = T(0.5) * x * (T(1) + std::tanh(u));
    }
}

template <class T>
void gelu_backward(const GeluBwd& a) {
    T* dinp = a.dinp.as<T>();
    const T* inp = a.inp.as<T>();
    const T* dout = a.dout.as<T>();
    const long n = long(a.N);
    if (a.act == Activation::relu2) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) dinp[i] = (inp[i] > T(0) ? T(2) * inp[i] : T(0)) * dout[i];
        return;
    }
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const T x = inp[i];
        const T u = T(kSqrt2OverPi) * (x + T(kCubic) * x * x * x);
        const T th = std::tanh(u);
        const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kCubic) * x * x);
        const T g = T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
        dinp[i] = g * dout[i];
    }
}

template <class T>
void residual_forward(const ResidualFwd& a) {
    T* out = a.out.as<T>();
    const T* x = a.a.as<T>();
    const T* y = a.b.as<T>();
    const long n = long(a.N);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = x[i] + y[i];
}

template void gelu_forward<float>(const GeluFwd&);
template void gelu_forward<double>(const GeluFwd&);
template void gelu_backward<float>(const GeluBwd&);
template void gelu_backward<double>(const GeluBwd&);
template void residual_forward<float>(const ResidualFwd&);
template void residual_forward<double>(const ResidualFwd&);

}  // namespace gpt::cpu
