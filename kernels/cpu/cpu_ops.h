// The CPU reference ops: one template per argument struct of kernels/ops.h,
// instantiated for float (the "cpu" backend) and double (the "cpu-f64"
// backend used by the gradient checks).
//
// All Views passed in must already have the dtype of T (CpuBackend checks it).
// Every op is deterministic for a given thread count: work is split with
// static OpenMP schedules, and every reduction either runs over disjoint
// outputs (one thread owns an output element and sums in a fixed order) or
// combines fixed-size partial sums in index order. No atomics anywhere.
// BLAS (OpenBLAS) is only ever called outside OpenMP parallel regions.
#pragma once

#include <cstddef>

#include "kernels/ops.h"

namespace gpt::cpu {

// kernels/cpu/encoder.cpp
template <class T> void encoder_forward(const EncoderFwd& a);
template <class T> void encoder_backward(const EncoderBwd& a);

// kernels/cpu/layernorm.cpp
template <class T> void layernorm_forward(const LayerNormFwd& a);
template <class T> void layernorm_backward(const LayerNormBwd& a);
template <class T> void residual_layernorm_forward(const ResidualLayerNormFwd& a);
template <class T> void qknorm_forward(const QKNormFwd& a);
template <class T> void qknorm_backward(const QKNormBwd& a);

// kernels/cpu/rope.cpp
template <class T> void rope(const Rope& a);

// kernels/cpu/matmul.cpp; loops = the `cpu_matmul: loops` variant instead of BLAS.
template <class T> void matmul_forward(const MatmulFwd& a, bool loops = false);
template <class T> void matmul_backward(const MatmulBwd& a, bool loops = false);

// kernels/cpu/attention.cpp
template <class T> void attention_forward(const AttentionFwd& a);
template <class T> void attention_backward(const AttentionBwd& a);
template <class T> void attention_decode(const AttentionDecode& a);

// kernels/cpu/gelu.cpp
template <class T> void gelu_forward(const GeluFwd& a);
template <class T> void gelu_backward(const GeluBwd& a);
template <class T> void residual_forward(const ResidualFwd& a);

// kernels/cpu/classifier.cpp
template <class T> void classifier(const ClassifierFwdBwd& a);
// dst (f64) += scale * sum of src (f32 or f64), in index order.
void sum_into(const SumInto& a);

// kernels/cpu/adamw.cpp
// Sum of squares of grads (n elements) in double, over fixed blocks of
// kGradNormBlock elements whose partial sums are added in block order: the
// result is bit-identical whatever the thread count.
inline constexpr size_t kGradNormBlock = 65536;
template <class T> double grad_norm_squared(View grads, size_t n);
template <class T> void adamw_update(const AdamW& a);

// kernels/cpu/muon.cpp
template <class T> void muon_update(const Muon& a);

}  // namespace gpt::cpu
