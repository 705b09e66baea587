// The operations a training step calls, as one plain argument struct each.
//
// Every backend (kernels/cpu, and kernels/cuda in the CUDA issue) implements
// the same structs, so the model code in model/gpt2.cpp is written once.
// Pointers are typed Views (pointer + dtype) into backend memory: the CPU
// backend uses f32 (or f64 for the gradient checks), the CUDA backend will use
// bf16 activations and f32 statistics. Shapes are given in the comments; all
// tensors are row-major and contiguous.
//
// Gradient convention: parameter gradients ACCUMULATE (+=) so that gradient
// accumulation over micro-batches needs no extra buffer; activation gradients
// are OVERWRITTEN, except layernorm_backward's dinp, which adds into the
// residual-stream gradient (the residual connection's own gradient path).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/error.h"

namespace gpt {

enum class DType : uint8_t { f32, f64, bf16 };

// The MLP's elementwise activation (model.activation): GPT-2's tanh GELU, or
// ReLU² = max(x, 0)^2 (the speedrun's choice: cheaper, and sparse).
enum class Activation : uint8_t { gelu, relu2 };
inline const char* activation_name(Activation a) { return a == Activation::gelu ? "gelu" : "relu2"; }

inline size_t dtype_size(DType t) { return t == DType::f64 ? 8 : t == DType::f32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::f64 ? "f64" : t == DType::f32 ? "f32" : "bf16"; }

// A typed pointer into backend memory. A null View means "absent" (e.g. no bias).
struct View {
    void* ptr = nullptr;
    DType dtype = DType::f32;

    explicit operator bool() const { return ptr != nullptr; }
    template <class T> T* as() const { return static_cast<T*>(ptr); }
    // View of the element at index i (same dtype).
    View at(size_t i) const { return View{ptr ? static_cast<char*>(ptr) + i * dtype_size(dtype) : nullptr, dtype}; }
};

// out (B,T,C) = wte[tokens] + wpe[t]; without wpe (null: rotary positions) out = wte[tokens].
struct EncoderFwd { View out; const int32_t* tokens; View wte; View wpe; int B, T, C; };
// dwte (Vp,C) += ..., dwpe (maxT,C) += ... from dout (B,T,C); a null dwpe is skipped.
struct EncoderBwd { View dwte; View dwpe; View dout; const int32_t* tokens; int B, T, C; };

// out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) are saved (always f32/f64 like the op).
// With rms (RMSNorm): out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps);
// mean is not used (may be null). A null weight is 1 and a null bias 0
// (parameter-free norms, models without biases).
struct LayerNormFwd { View out; View mean; View rstd; View inp; View weight; View bias; int N, C; bool rms = false; View dres_bias = {}; };
// dinp (N,C) +=, dweight (C) +=, dbias (C) +=; null dweight / dbias are skipped.
// With dres_bias set: dres_bias (C) += the column sums of dinp after the update,
// i.e. the bias gradient of the projection whose output was added into this
// residual stream, taken in the pass that already writes dinp (kernels.bias_grad: folded).
struct LayerNormBwd { View dinp; View dweight; View dbias; View dout; View inp; View weight; View mean; View rstd; int N, C; bool rms = false; View dres_bias = {}; };

// out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC, optional).
// With pre_act (N,OC) set, the activation `act` is fused: pre_act = inp @ weight^T + bias
// (saved for the backward) and out = act(pre_act).
struct MatmulFwd { View out; View inp; View weight; View bias; int N, C, OC; View pre_act = {}; Activation act = Activation::gelu; };
// dinp (N,C) = dout @ weight (overwritten); dweight (OC,C) += dout^T @ inp; dbias (OC) += sum_n dout.
// With dact_pre (N,C) set, the activation's backward is fused into dinp:
// dinp = (dout @ weight) * act'(dact_pre), dact_pre being the pre-activation
// of the activation whose output was inp; with dact_dbias set too, dact_dbias
// (C) += the column sums of that dinp: the bias gradient of the layer that made
// the pre-activation, from the product that writes it (kernels.bias_grad: folded).
struct MatmulBwd { View dinp; View dweight; View dbias; View dout; View inp; View weight; int N, C, OC; View dact_pre = {}; Activation act = Activation::gelu; View dact_dbias = {}; };

// Causal self-attention. qkv (B,T,3C) holds q, k, v for NH heads of size C/NH;
// out (B,T,C); lse (B,NH,T) is the log-sum-exp of each softmax row, saved so the
// backward can recompute probabilities without a T x T buffer.
struct AttentionFwd { View out; View lse; View qkv; int B, T, C, NH; };
// dqkv (B,T,3C) overwritten, from dout (B,T,C).
struct AttentionBwd { View dqkv; View dout; View qkv; View out; View lse; int B, T, C, NH; };

// Attention for ONE new position per sequence, with a KV cache (sampling).
// qkv (B,3C) holds q, k, v of the token at position pos; kcache, vcache
// (B,maxT,C) hold the keys and values of positions 0..pos-1. The op stores
// this token's k and v at row pos, then out (B,C) = causal attention of q
// over rows 0..pos. Equal to row pos of attention_forward on the whole prefix.
struct AttentionDecode { View out; View qkv; View kcache; View vcache; int B, pos, maxT, C, NH; };

// Rotary position embedding (RoPE) of the q and k heads of qkv (N,3C), IN
// PLACE; v is untouched. Row r sits at position pos = pos0 + r % T. Each head
// (size hs = C/NH, even) is rotated pairwise, element i with element i + hs/2
// (the "rotate half" pairing of GPT-NeoX and LLaMA), by the angle
// pos * base^(-2i/hs), i < hs/2:  (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos).
// backward: the transposed rotation (angle negated), applied to dqkv in place.
struct Rope { View qkv; int N, T, pos0, C, NH; double base; bool backward = false; };
// The angle of pair i of a head of size hs at position pos, in double: every
// backend takes its cosines and sines from this one function.
inline double rope_angle(int pos, int i, int hs, double base) { return double(pos) * std::pow(base, -2.0 * i / hs); }

// QK-norm: each head's q and k of qkv (N,3C) divided by its RMS, IN PLACE,
// parameter-free: y = x * rstd, rstd = 1/sqrt(mean(x^2) + eps) over the hs
// elements of the head; rstd (N, 2NH) is saved (q heads, then k heads).
struct QKNormFwd { View qkv; View rstd; int N, C, NH; };
// dqkv's q and k parts, in place: dx = rstd (dy - y mean(dy * y)), with y the
// normalised values (qkv after the forward); the v part is untouched.
struct QKNormBwd { View dqkv; View qkv; View rstd; int N, C, NH; };

// Residual add fused with the LayerNorm (or RMSNorm, rms) that follows it:
// residual (N,C) = a + b; out (N,C) = layernorm(residual) saving mean, rstd (N).
// The same values as residual_forward then layernorm_forward.
struct ResidualLayerNormFwd { View residual; View out; View mean; View rstd; View a; View b; View weight; View bias; int N, C; bool rms = false; };

// The MLP activation (tanh-approximated GELU, or ReLU²), elementwise over N values.
struct GeluFwd { View out; View inp; size_t N; Activation act = Activation::gelu; };
// dinp = dout * act'(inp); dinp may alias dout (in place).
struct GeluBwd { View dinp; View inp; View dout; size_t N; Activation act = Activation::gelu; };

// out = a + b, elementwise over N values.
struct ResidualFwd { View out; View a; View b; size_t N; };

// Fused softmax + cross-entropy over the first V of Vp logits per row.
// logits (N,Vp), targets (N), losses (N) = -log softmax(logits)[target].
// With grad, logits is overwritten IN PLACE by dlogits = (softmax - onehot) * dloss,
// padded columns (V..Vp) set to zero: no separate probability buffer.
// softcap > 0: the logits are first capped, z -> softcap * tanh(z / softcap)
// (dlogits then include the cap's derivative 1 - tanh^2). Without targets
// (null) the op only caps the first V logits of each row in place (sampling);
// losses is then not written. With targets and without grad the logits are
// left unchanged.
struct ClassifierFwdBwd { View logits; View losses; const int32_t* targets; int N, V, Vp; double dloss; bool grad; double softcap = 0; };

// dst[0] += scale * (sum of the n values of src), the sum taken in f64 in a
// fixed order. dst is one f64 element of backend memory; src is f32 or f64 (the
// stat dtype: the classifier's losses). The step's loss stays on the device
// until the step is done, so no micro-step waits for it.
struct SumInto { View dst; View src; size_t n; double scale; };

// dst[i] += src[i] for n elements: one micro-batch's gradients into their f32
// sum (run.grad_accum_f32). dst is f32 (f64 on the f64 CPU backend); src is the
// gradient dtype (bf16 on CUDA) or dst's own.
struct Accumulate { View dst; View src; size_t n; };

// out[0] = sum of grads[i]^2 over n values, in f64 (one f64 element of backend
// memory): the gradient norm's square without a host round trip.
struct GradSumSq { View out; View grads; size_t n; };

// One contiguous range of the parameter buffer, with its weight-decay flag and
// its learning rate as a multiple of the update's lr (parameter groups).
struct ParamRange { size_t offset, size; bool decay; double lr_scale = 1.0; };

// AdamW over the whole parameter buffer in one call. Decoupled weight decay on
// ranges with decay=true only; bias correction with the 1-based step t; each
// range's learning rate is lr * its lr_scale.
// grads are multiplied by grad_scale first (gradient clipping).
// Mixed precision: with master set (f32, same n elements), the update is
// applied to the master weights and params (bf16) receives their rounded copy,
// stochastically rounded when stochastic_rounding, from a counter-based random
// stream keyed by seed and t (deterministic for a given seed). ranges are
// host memory; the backend copies them as it needs.
struct AdamW {
    View params; View grads; View m; View v;  // all n elements
    const ParamRange* ranges; int n_ranges;
    double lr, beta1, beta2, eps, weight_decay, grad_scale;  // double so the f64 backend is exact
    int t;
    View master;                    // optional f32 master weights
    uint64_t seed = 0;              // stochastic rounding stream
    bool stochastic_rounding = true;
    // Values read from backend memory when the update runs, so that one
    // recorded step (a CUDA graph) serves every step: with `hyper` set (f64
    // {lr, t}) they replace lr and t; with `norm_sq` set (f64, the global sum
    // of squared gradients) and grad_clip > 0, the gradients are also scaled
    // by min(1, grad_clip / sqrt(norm_sq)) (clip_grad_norm_ without its 1e-6).
    View hyper;
    View norm_sq;
    double grad_clip = 0;
    // With norm_sq or guard set (f64) and either not finite when the update
    // runs, nothing is updated: a NaN/inf step never reaches the weights, and
    // the host, which reads both after the step, knows it was skipped.
    View guard;
};

// Muon on `count` matrices of shape (rows, cols), stored one after another
// (a stack, e.g. one layer's q, k and v blocks of qkvw), each updated alone:
//   g   = grads * grad_scale
//   buf = beta buf + (1 - beta) g                     (momentum, in place)
//   u   = nesterov ? beta buf + (1 - beta) g : buf
//   X   = NS(u): ns_steps quintic Newton-Schulz iterations towards the nearest
//         semi-orthogonal matrix, on X0 = u / (||u||_F + 1e-7), worked on the
//         wide orientation (X^T when rows > cols):
//         A = X X^T;  X <- a X + (b A + c A A) X,  (a, b, c) = (3.4445, -4.7750, 2.0315)
//   p  <- p - lr weight_decay p - lr sqrt(max(1, rows / cols)) X
// params, grads (count*rows*cols) in the parameter dtype; momentum in the stat
// dtype. With master (f32) the update goes to the master weights and params
// receive their rounding (stochastic from seed and t, like AdamW).
struct Muon {
    View params; View grads; View momentum;
    int count, rows, cols;
    double lr, beta, weight_decay, grad_scale;
    bool nesterov;
    int ns_steps;
    View master = {};
    uint64_t seed = 0;
    int t = 0;
    bool stochastic_rounding = true;
};

// The Newton-Schulz coefficients of Muon (Keller Jordan's quintic).
inline constexpr double kMuonNsA = 3.4445, kMuonNsB = -4.7750, kMuonNsC = 2.0315;

}  // namespace gpt
