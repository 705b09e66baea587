// Host-side conversion between double and a backend dtype (f32, f64, bf16).
//
// Used where host values cross into backend memory: weight init, checkpoints,
// tests. bf16 conversion rounds to nearest even, as the hardware does.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/ops.h"

namespace gpt {

inline uint16_t double_to_bf16(double x) {
    float f = static_cast<float>(x);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

inline double bf16_to_double(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// dst (n elements of dtype) <- src (n doubles)
inline void from_double(const double* src, void* dst, DType t, size_t n) {
    switch (t) {
        case DType::f64: std::memcpy(dst, src, n * 8); break;
        case DType::f32: for (size_t i = 0; i < n; i++) static_cast<float*>(dst)[i] = static_cast<float>(src[i]); break;
        case DType::bf16: for (size_t i = 0; i < n; i++) static_cast<uint16_t*>(dst)[i] = double_to_bf16(src[i]); break;
    }
}

// dst (n doubles) <- src (n elements of dtype)
inline void to_double(const void* src, DType t, double* dst, size_t n) {
    switch (t) {
        case DType::f64: std::memcpy(dst, src, n * 8); break;
        case DType::f32: for (size_t i = 0; i < n; i++) dst[i] = static_cast<const float*>(src)[i]; break;
        case DType::bf16: for (size_t i = 0; i < n; i++) dst[i] = bf16_to_double(static_cast<const uint16_t*>(src)[i]); break;
    }
}

}  // namespace gpt
