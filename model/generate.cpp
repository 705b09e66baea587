// One decoding step of GPT-2 for a single sequence (B=1, one position), the
// same op list as GPT2::forward with N=1 rows and attention_decode reading
// the KV cache instead of attending over a whole (B,T,3C) qkv tensor. With
// rotary positions the cache holds keys already rotated to their positions.
#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/convert.h"

namespace gpt {

Generator::Generator(const GPT2& model) : model_(model), be_(model.backend()) {
    const ModelShape& s = model.shape();
    const int64_t C = s.C;
    const DType act = be_.act_dtype(), stat = be_.stat_dtype();
    layout_.add("kcache", {s.L, s.maxT, C}, false, act);  // (L, maxT, C)
    layout_.add("vcache", {s.L, s.maxT, C}, false, act);
    layout_.add("x", {C}, false, act);  // the residual stream of the new position
    layout_.add("ln", {C}, false, act);
    layout_.add("mean", {1}, false, stat);
    layout_.add("rstd", {1}, false, stat);
    layout_.add("qkv", {3 * C}, false, act);
    layout_.add("qk_rstd", {2 * s.NH}, false, stat);
    layout_.add("atty", {C}, false, act);
    layout_.add("proj", {C}, false, act);
    layout_.add("fch", {4 * C}, false, act);
    layout_.add("logits", {s.Vp}, false, act);
    buf_ = be_.alloc(layout_.total_bytes, "sampling KV cache");
    be_.zero(buf_, layout_.total_bytes);
    token_ = static_cast<int32_t*>(be_.alloc(4, "sampling token"));
}

Generator::~Generator() {
    be_.free(token_);
    be_.free(buf_);
}

View Generator::scratch(const std::string& name, int layer) const {
    const auto& t = layout_.get(name);
    size_t off = t.byte_offset;
    if (layer >= 0) off += size_t(layer) * (t.numel / size_t(t.shape[0])) * dtype_size(t.dtype);
    return View{static_cast<char*>(buf_) + off, t.dtype};
}

void Generator::reset() { history_.clear(); }

std::vector<double> Generator::feed(int32_t token) {
    const int maxT = model_.shape().maxT;
    if (static_cast<int>(history_.size()) == maxT) {
        // Full: keep the newest half and rebuild the cache from it.
        std::vector<int32_t> keep(history_.end() - maxT / 2, history_.end());
        history_.clear();
        for (int32_t t : keep) {
            step(t, position());
            history_.push_back(t);
        }
    }
    auto logits = step(token, position());
    history_.push_back(token);
    return logits;
}

std::vector<double> Generator::step(int32_t token, int pos) {
    const ModelShape& s = model_.shape();
    const int C = s.C;
    const GPT2& m = model_;
    be_.to_device(token_, &token, 4);
    View x = scratch("x"), ln = scratch("ln"), mean = scratch("mean"), rstd = scratch("rstd");
    View qkv = scratch("qkv"), atty = scratch("atty"), proj = scratch("proj"), fch = scratch("fch");

    const Arch& arch = s.arch;
    const bool rms = arch.norm == NormKind::rmsnorm;
    // wpe row `pos`: the encoder adds wpe[t] for t = 0 of this one-token batch (no wpe with rope).
    View wpe = m.param("wpe");
    be_.encoder_forward({x, token_, m.param("wte"), wpe ? wpe.at(size_t(pos) * C) : View{}, 1, 1, C});  // (C)
    for (int l = 0; l < s.L; l++) {
        be_.layernorm_forward({ln, mean, rstd, x, m.param("ln1w", l), m.param("ln1b", l), 1, C, rms});
        be_.matmul_forward({qkv, ln, m.param("qkvw", l), m.param("qkvb", l), 1, C, 3 * C});  // (3C)
        if (arch.pos == PosEmb::rope) be_.rope({qkv, 1, 1, pos, C, s.NH, arch.rope_base});
        if (arch.qk_norm) be_.qknorm_forward({qkv, scratch("qk_rstd"), 1, C, s.NH});
        be_.attention_decode({atty, qkv, scratch("kcache", l), scratch("vcache", l), 1, pos, s.maxT, C, s.NH});
        be_.matmul_forward({proj, atty, m.param("attprojw", l), m.param("attprojb", l), 1, C, C});
        be_.residual_forward({x, x, proj, size_t(C)});
        be_.layernorm_forward({ln, mean, rstd, x, m.param("ln2w", l), m.param("ln2b", l), 1, C, rms});
        be_.matmul_forward({fch, ln, m.param("fcw", l), m.param("fcb", l), 1, C, 4 * C});  // (4C)
        be_.gelu_forward({fch, fch, size_t(4) * C, arch.act});
        be_.matmul_forward({proj, fch, m.param("fcprojw", l), m.param("fcprojb", l), 1, 4 * C, C});
        be_.residual_forward({x, x, proj, size_t(C)});
    }
    be_.layernorm_forward({ln, mean, rstd, x, m.param("lnfw"), m.param("lnfb"), 1, C, rms});
    View logits = scratch("logits");
    be_.matmul_forward({logits, ln, m.head(), View{}, 1, C, s.Vp});  // (Vp)
    if (arch.softcap > 0) be_.classifier({logits, View{}, nullptr, 1, s.V, s.Vp, 0.0, false, arch.softcap});

    std::vector<char> raw(size_t(s.V) * dtype_size(logits.dtype));
    be_.to_host(raw.data(), logits.ptr, raw.size());
    std::vector<double> out(s.V);
    to_double(raw.data(), logits.dtype, out.data(), out.size());
    return out;
}

int32_t sample_token(const std::vector<double>& logits, double temperature, int top_k, std::mt19937_64& rng) {
    const int V = static_cast<int>(logits.size());
    if (temperature <= 0) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    std::vector<int> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    int k = top_k > 0 ? std::min(top_k, V) : V;
    if (k < V) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    double mx = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < k; i++) mx = std::max(mx, logits[idx[i]]);
    std::vector<double> p(k);
    double sum = 0;
    for (int i = 0; i < k; i++) sum += (p[i] = std::exp((logits[idx[i]] - mx) / temperature));
    // Inverse-CDF draw from 53 random bits: the same on every standard library.
    double u = double(rng() >> 11) * 0x1.0p-53 * sum;
    for (int i = 0; i < k; i++) {
        if (u < p[i]) return idx[i];
        u -= p[i];
    }
    return idx[k - 1];
}

}  // namespace gpt
