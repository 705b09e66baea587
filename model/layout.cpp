#include "model/layout.h"

#include <algorithm>

#include <cstdio>

namespace gpt {

std::vector<std::string> Arch::non_gpt2_keys() const {
    const Arch gpt2;
    std::vector<std::string> out;
    auto num = [](double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", v);
        return std::string(buf);
    };
    if (pos != gpt2.pos) out.push_back("model.pos_emb=rope");
    if (pos == PosEmb::rope && rope_base != gpt2.rope_base) out.push_back("model.rope_base=" + num(rope_base));
    if (norm != gpt2.norm) out.push_back("model.norm=rmsnorm");
    if (norm_params != gpt2.norm_params) out.push_back("model.norm_params=false");
    if (qk_norm != gpt2.qk_norm) out.push_back("model.qk_norm=true");
    if (act != gpt2.act) out.push_back(std::string("model.activation=") + activation_name(act));
    if (bias != gpt2.bias) out.push_back("model.bias=false");
    if (tied_head != gpt2.tied_head) out.push_back("model.tied_head=false");
    if (softcap != gpt2.softcap) out.push_back("model.logit_softcap=" + num(softcap));
    return out;
}

std::string Arch::non_gpt2_summary() const {
    const std::vector<std::string> keys = non_gpt2_keys();
    if (keys.empty()) return "";
    return keys.front() + (keys.size() > 1 ? " (and " + std::to_string(keys.size() - 1) + " more non-GPT-2 choices)" : std::string());
}

const TensorSpec& Layout::get(const std::string& name) const {
    for (const auto& t : tensors)
        if (t.name == name) return t;
    run_failed("layout has no tensor named '" + name + "'");
}

const TensorSpec* Layout::find(const std::string& name) const {
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

void Layout::add(const std::string& name, std::vector<int64_t> shape, bool decay, DType dtype) {
    TensorSpec t;
    t.name = name;
    t.shape = std::move(shape);
    t.numel = 1;
    for (auto d : t.shape) t.numel *= static_cast<size_t>(d);
    t.offset = total;
    t.byte_offset = total_bytes;
    t.decay = decay;
    t.dtype = dtype;
    total += (t.numel + kLayoutAlign - 1) / kLayoutAlign * kLayoutAlign;
    total_bytes += (t.numel * dtype_size(dtype) + 255) / 256 * 256;
    tensors.push_back(std::move(t));
}

Layout param_layout(const ModelShape& s) {
    const int64_t L = s.L, C = s.C;
    const Arch& a = s.arch;
    const bool gain = a.norm_params, norm_bias = a.norm_params && a.bias && a.norm == NormKind::layernorm;
    Layout l;
    l.add("wte", {s.Vp, C}, true);
    if (a.pos == PosEmb::learned) l.add("wpe", {s.maxT, C}, true);
    if (gain) l.add("ln1w", {L, C});
    if (norm_bias) l.add("ln1b", {L, C});
    l.add("qkvw", {L, 3 * C, C}, true);
    if (a.bias) l.add("qkvb", {L, 3 * C});
    l.add("attprojw", {L, C, C}, true);
    if (a.bias) l.add("attprojb", {L, C});
    if (gain) l.add("ln2w", {L, C});
    if (norm_bias) l.add("ln2b", {L, C});
    l.add("fcw", {L, 4 * C, C}, true);
    if (a.bias) l.add("fcb", {L, 4 * C});
    l.add("fcprojw", {L, C, 4 * C}, true);
    if (a.bias) l.add("fcprojb", {L, C});
    if (gain) l.add("lnfw", {C});
    if (norm_bias) l.add("lnfb", {C});
    if (!a.tied_head) l.add("lm_head", {s.Vp, C}, true);
    return l;
}

std::vector<MatrixStack> hidden_matrices(const Layout& params, const ModelShape& s) {
    // qkvw (L,3C,C) is 3L matrices (C,C) one after another: q, k, v of each layer.
    return {{"qkvw", params.get("qkvw").offset, 3 * s.L, s.C, s.C},
            {"attprojw", params.get("attprojw").offset, s.L, s.C, s.C},
            {"fcw", params.get("fcw").offset, s.L, 4 * s.C, s.C},
            {"fcprojw", params.get("fcprojw").offset, s.L, s.C, 4 * s.C}};
}

Layout activation_layout(const ModelShape& s, int B, int T, DType act, DType stat, bool gelu_recompute, int64_t logit_rows) {
    const int64_t L = s.L, C = s.C, NH = s.NH, BT = int64_t(B) * T;
    Layout l;
    // Per layer, stacked over L: what the forward saves for the backward.
    l.add("ln1", {L, BT, C}, false, act);
    l.add("ln1_mean", {L, BT}, false, stat);
    l.add("ln1_rstd", {L, BT}, false, stat);
    l.add("qkv", {L, BT, 3 * C}, false, act);
    if (s.arch.qk_norm) l.add("qk_rstd", {L, BT, 2 * NH}, false, stat);
    l.add("atty", {L, BT, C}, false, act);
    l.add("lse", {L, B, NH, T}, false, stat);
    l.add("residual2", {L, BT, C}, false, act);
    l.add("ln2", {L, BT, C}, false, act);
    l.add("ln2_mean", {L, BT}, false, stat);
    l.add("ln2_rstd", {L, BT}, false, stat);
    l.add("fch", {L, BT, 4 * C}, false, act);
    // With GELU recompute only the pre-activation is kept per layer; the
    // GELU output is one (BT,4C) buffer, refilled per layer in the backward.
    if (gelu_recompute) l.add("fch_gelu", {BT, 4 * C}, false, act);
    else l.add("fch_gelu", {L, BT, 4 * C}, false, act);
    l.add("residual3", {L, BT, C}, false, act);
    // Model input and head.
    l.add("encoded", {BT, C}, false, act);
    l.add("lnf", {BT, C}, false, act);
    l.add("lnf_mean", {BT}, false, stat);
    l.add("lnf_rstd", {BT}, false, stat);
    l.add("logits", {logit_rows > 0 ? std::min(logit_rows, BT) : BT, s.Vp}, false, act);
    l.add("losses", {BT}, false, stat);
    // Backward scratch, reused by every layer: the residual-stream gradient
    // flows through all layers in dresidual; the rest are overwritten per op.
    l.add("dresidual", {BT, C}, false, act);
    l.add("dln", {BT, C}, false, act);
    l.add("dqkv", {BT, 3 * C}, false, act);
    l.add("datty", {BT, C}, false, act);
    l.add("dfch", {BT, 4 * C}, false, act);
    return l;
}

size_t param_count(const ModelShape& s) {
    size_t n = 0;
    for (const auto& t : param_layout(s).tensors) n += t.numel;
    return n;
}

double flops_per_token(const ModelShape& s, int T) {
    // 6 FLOPs per parameter per token (2 forward, 4 backward), plus the two
    // attention products (scores and values), counted without the causal
    // saving as nanoGPT and PaLM do, so MFU figures are comparable with theirs.
    // Muon's Newton-Schulz products are per step, not per token: not counted.
    return 6.0 * double(param_count(s)) + 12.0 * s.L * s.C * double(T);
}

}  // namespace gpt
