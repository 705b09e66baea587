// Layout tables: one contiguous buffer per kind of state (parameters,
// gradients, activations), described by a table of named tensors.
//
// The CUDA backend, the optimizer, checkpoints and multi-GPU sharding all use
// these tables instead of per-tensor allocations or magic indices. Offsets are
// in elements and aligned to 64 elements (256 bytes in f32) so every tensor
// starts on a 16-byte-vector boundary; the gaps are zero and stay zero.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace gpt {

// The shape of a GPT-2 model.
struct ModelShape {
    int L = 12;       // layers
    int NH = 12;      // attention heads
    int C = 768;      // channels
    int maxT = 1024;  // context length (rows of wpe)
    int V = 50257;    // real vocabulary
    int Vp = 50304;   // vocabulary padded to a multiple of 128 (rows of wte)
};

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
    size_t offset = 0;       // in elements from the start of a one-dtype buffer
    size_t byte_offset = 0;  // in bytes, honouring each tensor's own dtype (mixed buffers)
    size_t numel = 0;
    bool decay = false; // weight decay applies (2-D weights only)
    DType dtype = DType::f32;
};

struct Layout {
    std::vector<TensorSpec> tensors;
    size_t total = 0;        // elements, including alignment gaps (one-dtype buffers)
    size_t total_bytes = 0;  // bytes when each tensor uses its own dtype

    const TensorSpec& get(const std::string& name) const;  // throws if absent
    void add(const std::string& name, std::vector<int64_t> shape, bool decay = false, DType dtype = DType::f32);
};

constexpr size_t kLayoutAlign = 64;

// Parameters in llm.c's model-file order (each kind stacked over layers):
// wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
// attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C) fcb (L,4C)
// fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C)
Layout param_layout(const ModelShape& s);

// Activations of one forward/backward pass at micro-batch (B,T), with the
// dtypes the backend asks for (act for tensors, stat for mean/rstd/lse/losses).
// Per layer (stacked over L): ln1 ln1_mean ln1_rstd qkv atty lse residual2 ln2
// ln2_mean ln2_rstd fch fch_gelu residual3; then encoded lnf lnf_mean lnf_rstd
// logits losses; then the backward's scratch gradients dresidual dln dqkv datty dfch.
Layout activation_layout(const ModelShape& s, int B, int T, DType act, DType stat, bool gelu_recompute = false);

// Parameter count (no alignment gaps), and the number used for FLOP estimates.
size_t param_count(const ModelShape& s);

// Training FLOPs per token (forward + backward): 6 * params + 6 * L * C * T
// (the attention score and value products), the PaLM/nanoGPT estimate.
double flops_per_token(const ModelShape& s, int T);

}  // namespace gpt
