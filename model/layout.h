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

enum class PosEmb : uint8_t { learned, rope };
enum class NormKind : uint8_t { layernorm, rmsnorm };

// The architecture choices beyond the shape (config keys model.*). The
// defaults are GPT-2 exactly; each other value is a modern alternative the
// search can turn on (see configs/search-modern.yaml).
struct Arch {
    PosEmb pos = PosEmb::learned;   // learned wpe rows, or rotary q/k (no wpe)
    double rope_base = 10000;       // RoPE: angle of pair i = pos * base^(-2i/hs)
    NormKind norm = NormKind::layernorm;
    bool norm_params = true;        // learnable norm gains (and LayerNorm biases when bias)
    bool qk_norm = false;           // RMSNorm of each head's q and k before attention
    Activation act = Activation::gelu;
    bool bias = true;               // biases of the linear layers and of LayerNorm
    bool tied_head = true;          // logits through wte^T, else through its own lm_head
    double softcap = 0;             // > 0: logits capped to softcap * tanh(z / softcap)

    bool operator==(const Arch&) const = default;
    // The config keys (model.*) whose values differ from GPT-2's, each as
    // "key=value"; empty for plain GPT-2.
    std::vector<std::string> non_gpt2_keys() const;
    // For messages: the first of them, and how many more ("model.pos_emb=rope
    // (and 2 more non-GPT-2 choices)"); empty for plain GPT-2.
    std::string non_gpt2_summary() const;
};

// Initialisation choices beyond GPT-2's (config keys model.zero_init_proj,
// model.head_init_std).
struct InitOptions {
    bool zero_init_proj = false;  // attprojw and fcprojw start at zero (the blocks start as the identity)
    double head_init_std = 0.02;  // an untied lm_head's N(0, std); 0 = zeros
};

// The shape of a GPT-2 model, and its architecture choices.
struct ModelShape {
    int L = 12;       // layers
    int NH = 12;      // attention heads
    int C = 768;      // channels
    int maxT = 1024;  // context length (rows of wpe; the longest sequence with rotary positions)
    int V = 50257;    // real vocabulary
    int Vp = 50304;   // vocabulary padded to a multiple of 128 (rows of wte)
    Arch arch = {};
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
    const TensorSpec* find(const std::string& name) const;  // nullptr if absent
    void add(const std::string& name, std::vector<int64_t> shape, bool decay = false, DType dtype = DType::f32);
};

constexpr size_t kLayoutAlign = 64;

// Parameters in llm.c's model-file order (each kind stacked over layers):
// wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
// attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C) fcb (L,4C)
// fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C)
// and after them, with an untied head, lm_head (Vp,C). The architecture
// leaves tensors out: wpe with rotary positions; the norm gains without
// norm_params; the norm biases with RMSNorm or without bias; the linear
// biases (qkvb attprojb fcb fcprojb) without bias.
Layout param_layout(const ModelShape& s);

// The parameter tensors the model's optimizer treats as hidden matrices (Muon):
// per layer q, k and v of qkvw, attprojw, fcw and fcprojw; as a stack of
// `count` matrices of (rows, cols) starting at element `offset`.
struct MatrixStack { std::string name; size_t offset; int count, rows, cols; };
std::vector<MatrixStack> hidden_matrices(const Layout& params, const ModelShape& s);

// Activations of one forward/backward pass at micro-batch (B,T), with the
// dtypes the backend asks for (act for tensors, stat for mean/rstd/lse/losses).
// Per layer (stacked over L): ln1 ln1_mean ln1_rstd qkv [qk_rstd] atty lse
// residual2 ln2 ln2_mean ln2_rstd fch fch_gelu residual3; then encoded lnf
// lnf_mean lnf_rstd logits losses; then the backward's scratch gradients
// dresidual dln dqkv datty dfch. (fch_gelu is the MLP activation's output,
// GELU or ReLU²; qk_rstd only with QK-norm.)
// logit_rows: rows of the logits buffer, 0 = all B*T (kernels.head: fused keeps one chunk, GPT2::logit_rows).
Layout activation_layout(const ModelShape& s, int B, int T, DType act, DType stat, bool gelu_recompute = false, int64_t logit_rows = 0);

// Parameter count (no alignment gaps), and the number used for FLOP estimates.
size_t param_count(const ModelShape& s);

// Training FLOPs per token (forward + backward): 6 * params + 6 * L * C * T
// (the attention score and value products), the PaLM/nanoGPT estimate.
double flops_per_token(const ModelShape& s, int T);

}  // namespace gpt
