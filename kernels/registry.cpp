#include "kernels/registry.h"

#include "kernels/error.h"

namespace gpt {

long KernelProblem::dim(const std::string& name) const {
    for (const auto& [k, v] : dims)
        if (k == name) return v;
    return 0;
}

std::string KernelProblem::text() const {
    std::string out = op;
    for (const auto& [k, v] : dims) out += " " + k + "=" + std::to_string(v);
    return out;
}

namespace {

// attention: cuDNN's fused SDPA wants a head size that is a multiple of 8, at
// most 256 (128 for the backward before Hopper), and sm_80 or newer.
std::string attention_can_run(const KernelProblem& p, const KernelChoices& k, const DeviceCaps& d) {
    if (k.variant("attention") == "wgmma" && d.sm && d.sm != 90) return "the wgmma variant is built for sm_90a (Hopper) only";
    if (k.variant("attention") != "cudnn") return "";
    const long hd = p.dim("HD");
    if (d.sm && d.sm < 80) return "cuDNN fused attention needs sm_80 or newer";
    if (hd % 8 != 0 || hd > 256) return "cuDNN fused attention needs a head size that is a multiple of 8 and at most 256";
    if (p.op == "backward" && d.sm && d.sm < 90 && hd > 128) return "cuDNN's fused attention backward needs head size <= 128 before Hopper";
    return "";
}

}  // namespace

const std::vector<KernelFamily>& kernel_families() {
    static const std::vector<KernelFamily> families = {
        {"attention", {"cuda"}, {"flash", "cudnn", "wgmma"},
         {{"block_q", {128, 64}, "query rows per thread block (flash); warps = block_q / 16", {"flash"}},
          {"block_k", {64, 32}, "key rows per shared-memory tile (flash)", {"flash"}},
          {"p_regs", {0, 1}, "forward: P through shared memory (0) or kept in registers as the A operand of the P V product (1), FlashAttention-3's way", {"wgmma"}, {"forward"}},
          {"tma", {0, 1, 2, 3}, "forward: K and V tiles loaded by every thread with cp.async (0), or by a producer warpgroup with TMA into a 2-stage ring guarded by mbarriers, FlashAttention-3's warp specialization (1), and with each tile's softmax overlapping the previous tile's P V product (2), and with the two consumer warpgroups taking turns at the tensor cores, FlashAttention-3's ping-pong (3); 1, 2 and 3 are bit-identical", {"wgmma"}, {"forward"}},
          {"fold_d", {0, 1}, "backward: D = rowsum(dO * O) in a pass of its own (0), or inside the dQ kernel, which reads dO anyway (1; bit-identical)", {"flash"}, {"backward"}},
          {"wgmma_bwd", {0, 1}, "backward: flash's kernels (0), or one warpgroup-MMA kernel per 128 keys computing S and dP once (5 products, not 7), its dQ parts summed in a fixed order without atomics (1; deterministic)", {"wgmma"}, {"backward"}}},
         true, "causal self-attention: hand-written flash kernels, cuDNN's fused SDPA as the baseline, or 'wgmma': Hopper's warpgroup MMA (sm_90a; head sizes 64 and 128) for the forward, and for the backward with wgmma_bwd", attention_can_run},
        {"layernorm", {"cpu", "cuda"}, {"fused", "separate"}, {},
         true, "residual add + LayerNorm (or RMSNorm, model.norm) in one pass, or as two ops"},
        {"gelu", {"cpu", "cuda"}, {"epilogue", "recompute"}, {},
         true, "the MLP activation (GELU, or ReLU^2 with model.activation: relu2) fused into the fc matmul (cuBLASLt's GELU epilogue; ReLU^2 as one fused bias+activation pass); 'recompute' keeps only the pre-activation per layer and recomputes it in the backward (saves L x B x T x 4C activations)"},
        {"matmul", {"cuda"}, {"cublaslt"},
         {{"algo", {0, 1, 2, 3, -1}, "index into cuBLASLt's heuristic list for each shape (0 = its first choice); -1 = time the top 8 on each shape at first use and keep the fastest"},
          {"bgrad", {0, 1}, "with bias_grad: folded, the GELU layer's bias gradient: 0 = a deterministic column sum of dinp, 1 = cuBLASLt's DGELU_BGRAD epilogue (one pass less; its reduction order is cuBLASLt's)", {}, {"backward"}},
          {"dw_stream", {0, 1}, "backward: weight and bias gradients on the main stream after dinp (0), or on a second stream beside the dinp product and what follows it (1; bit-identical, overlaps the products' tails)", {}, {"backward"}}},
         true, "matrix products through cuBLASLt with bias/GELU/dGELU/bias-gradient epilogues"},
        {"bias_grad", {"cpu", "cuda"}, {"separate", "folded"}, {},
         true, "bias gradients of the projections: each summed from its product's dout in a pass of its own, or 'folded' into passes that already read the data (the LayerNorm backward for attproj/fcproj, the dGELU product for fc): 6 of the 9 per-layer column sums saved"},
        {"cpu_matmul", {"cpu"}, {"blas", "loops"}, {},
         true, "CPU matrix products: row blocks on single-threaded BLAS, or plain loops (slow; a second variant to tune against)"},
        {"classifier", {"cuda"}, {"fused", "onepass"},
         {{"threads", {1024, 512, 256}, "threads per row of logits"}},
         true, "softmax + cross-entropy + dlogits in place, one kernel: 'fused' reads each row twice; 'onepass' once, keeping it in shared memory, with ex2.approx"},
        {"head", {"cpu", "cuda"}, {"whole", "chunked", "fused"},
         {{"rows", {256, 64, 1024, 4096}, "rows of logits per chunk: 256 x 50304 bf16 logits are 26 MB, inside an H100's or H200's 50 MB L2", {"chunked"}},
          {"fused_rows", {8192, 2048, 32768}, "rows of logits per chunk, and of the logits buffer: 8192 x 50304 bf16 are 824 MB (B=64, T=1024 in 8 chunks: 6.6 GB of logits made 0.8); each chunk re-reads and re-writes the head's weight gradient", {"fused"}}},
         true, "the output head: 'whole' runs lm_head, the classifier and dlnf each over all B*T rows (the logits go to memory and back three times); 'chunked' runs the three per chunk of rows, so a chunk's logits are still in cache when the classifier and the dlnf product read them; lm_head's weight gradient stays one product over all rows in the backward; 'fused' also adds each chunk's part of that gradient in the forward, so only one chunk of logits is ever kept (memory; training and evaluation only: logits of every position need whole or chunked)"},
        {"rope", {"cpu", "cuda"}, {"table"}, {},
         true, "rotary position embedding of q and k in place after the qkv product (model.pos_emb: rope), cosines and sines from a table built in double on the host"},
        {"qknorm", {"cpu", "cuda"}, {"warp"}, {},
         true, "QK-norm (model.qk_norm): RMS normalisation of each head's q and k in place, one warp per head vector"},
        {"adamw", {"cuda"}, {"fused"},
         {{"stochastic_rounding", {1, 0}, "round the bf16 parameter write-back stochastically (1) or to nearest (0); Muon's write-back too"}},
         false, "one launch over the whole parameter buffer, float32 master weights, a learning rate per parameter group"},
        {"muon", {"cuda"}, {"tf32", "fp32"}, {},
         false, "Muon's Newton-Schulz products (optim.type: muon) on cuBLASLt, batched over each stack of matrices: TF32 tensor cores, or full float32"},
    };
    return families;
}

const KernelFamily* find_kernel_family(const std::string& name) {
    for (const auto& f : kernel_families())
        if (f.name == name) return &f;
    return nullptr;
}

std::string KernelChoices::variant(const std::string& family) const {
    const KernelFamily* f = find_kernel_family(family);
    if (!f) run_failed("unknown kernel family '" + family + "'");
    auto it = m_.find(family);
    return it == m_.end() ? f->variants.front() : it->second;
}

int KernelChoices::param(const std::string& family, const std::string& name) const {
    const KernelFamily* f = find_kernel_family(family);
    if (!f) run_failed("unknown kernel family '" + family + "'");
    for (const auto& p : f->params) {
        if (p.name != name) continue;
        auto it = m_.find(family + "." + name);
        return it == m_.end() ? p.values.front() : std::stoi(it->second);
    }
    run_failed("kernel family '" + family + "' has no parameter '" + name + "'");
}

std::string kernel_registry_text() {
    std::string out;
    for (const auto& f : kernel_families()) {
        std::string backends, variants;
        for (const auto& b : f.backends) {
            if (!backends.empty()) backends += ", ";
            backends += b;
        }
        for (size_t i = 0; i < f.variants.size(); i++) {
            if (i) variants += ", ";
            variants += f.variants[i];
            if (i == 0) variants += " (default)";
        }
        out.append("kernels.").append(f.name).append("  [").append(backends).append("]  ").append(f.help).append("\n");
        out.append("    variants: ").append(variants).append("\n");
        for (const auto& p : f.params) {
            std::string vals;
            for (size_t i = 0; i < p.values.size(); i++) {
                if (i) vals += ", ";
                vals += std::to_string(p.values[i]);
            }
            out.append("    ").append(f.name).append(".").append(p.name).append(": ").append(vals);
            std::string where;
            for (const auto& v : p.variants) where += (where.empty() ? "" : ", ") + v;
            if (!where.empty()) where += " only";
            for (const auto& o : p.ops) where += (where.empty() ? "" : ", ") + o;
            if (!where.empty()) out.append(" [").append(where).append("]");
            out.append(" (default ").append(std::to_string(p.values.front())).append(")  ").append(p.help).append("\n");
        }
        if (!f.same_arithmetic) out += "    (variants change the arithmetic: judged by retraining)\n";
    }
    out += "\nmodel and optimizer choices (gpt config --reference) and the kernels they run:\n"
           "  model.pos_emb: rope           rope (no wpe: encoder without positions)\n"
           "  model.norm: rmsnorm           layernorm (its RMSNorm kernels); model.norm_params: false drops the gains\n"
           "  model.qk_norm: true           qknorm\n"
           "  model.activation: relu2       gelu (ReLU^2), matmul (plain product + fused bias/ReLU^2 pass)\n"
           "  model.bias: false             matmul without bias epilogues, layernorm without bias\n"
           "  model.tied_head: false        matmul (lm_head instead of wte^T)\n"
           "  model.logit_softcap: c > 0    classifier (capped)\n"
           "  optim.type: muon              muon (hidden matrices), adamw (embeddings, head, gains, biases)\n";
    return out;
}

}  // namespace gpt
