// GPT-2 forward and backward, one layer at a time, as a list of backend ops.
//
// Notation: B batch, T time, C channels, NH heads, L layers, Vp padded vocab,
// BT = B*T rows. Per-layer activations are slices of tensors stacked over L
// (see model/layout.cpp); the backward's gradient buffers are shared scratch.
//
// The architecture choices (ModelShape::arch) appear as named calls in the
// list: rotary positions (rope on q and k after the qkv product, no wpe),
// QK-norm (after rope), RMSNorm in place of LayerNorm (the norm ops' rms
// flag), ReLU² in place of GELU (the activation of the fc product), an untied
// head (lm_head in place of wte^T) and the logit soft cap (in the classifier).
// A tensor the architecture leaves out (a bias, a gain, wpe) is a null View,
// which every op reads as absent.
#include "model/gpt2.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "kernels/convert.h"

namespace gpt {

GPT2::GPT2(const ModelShape& shape, Backend& backend, int B, int T, int shards)
    : shape_(shape), be_(backend), B_(B), T_(T) {
    if (T > shape.maxT) bad_input("sequence length " + std::to_string(T) + " exceeds the model's context length " + std::to_string(shape.maxT));
    if (shape.C % shape.NH != 0) bad_input("n_embd " + std::to_string(shape.C) + " is not a multiple of n_head " + std::to_string(shape.NH));
    params_layout_ = gpt::param_layout(shape);
    gelu_recompute_ = be_.kernels().variant("gelu") == "recompute";
    bias_folded_ = be_.kernels().variant("bias_grad") == "folded";
    const std::string head = be_.kernels().variant("head");
    head_fused_ = head == "fused";
    if (head == "chunked") head_rows_ = be_.kernels().param("head", "rows");
    if (head_fused_) head_rows_ = be_.kernels().param("head", "fused_rows");
    if ((head == "chunked" || head_fused_) && head_rows_ <= 0)
        bad_input("kernels.head." + std::string(head_fused_ ? "fused_rows" : "rows") + " must be positive (got " + std::to_string(head_rows_) + ")");
    acts_layout_ = activation_layout(shape, B, T, be_.act_dtype(), be_.stat_dtype(), gelu_recompute_,
                                     logit_rows(be_.kernels(), int64_t(B) * T));
    const size_t quantum = kLayoutAlign * size_t(std::max(1, shards));
    n_elems_ = (params_layout_.total + quantum - 1) / quantum * quantum;
    const size_t pbytes = n_elems_ * dtype_size(be_.param_dtype());
    params_ = be_.alloc(pbytes, "parameters");
    grads_ = be_.alloc(pbytes, "gradients");
    acts_ = be_.alloc(acts_layout_.total_bytes, "activations");
    tokens_ = static_cast<int32_t*>(be_.alloc(2 * size_t(B) * T * 4, "input and target tokens"));
    inputs_ = tokens_;
    targets_ = tokens_ + size_t(B) * T;
    be_.zero(params_, pbytes);
    be_.zero(grads_, pbytes);
    be_.zero(acts_, acts_layout_.total_bytes);
}

GPT2::~GPT2() {
    be_.free(tokens_);
    be_.free(acts_);
    be_.free(grads_);
    be_.free(params_);
}

// A slice of a stacked (L, ...) tensor, or the whole tensor when layer < 0.
static View slice(void* base, DType dt, const TensorSpec& t, size_t byte_offset, int layer) {
    size_t off = byte_offset;
    if (layer >= 0) off += size_t(layer) * (t.numel / size_t(t.shape[0])) * dtype_size(dt);
    return View{static_cast<char*>(base) + off, dt};
}

// The tensors some architectures leave out: absent, they read as null Views.
static bool optional_tensor(const std::string& name) {
    for (const char* n : {"wpe", "ln1w", "ln1b", "qkvb", "attprojb", "ln2w", "ln2b", "fcb", "fcprojb", "lnfw", "lnfb", "lm_head"})
        if (name == n) return true;
    return false;
}

View GPT2::param(const std::string& name, int layer) const {
    const TensorSpec* t = params_layout_.find(name);
    if (!t && optional_tensor(name)) return View{};
    if (!t) t = &params_layout_.get(name);  // throws, naming the tensor
    const DType dt = be_.param_dtype();
    return slice(params_, dt, *t, t->offset * dtype_size(dt), layer);
}

View GPT2::grad(const std::string& name, int layer) const {
    const TensorSpec* t = params_layout_.find(name);
    if (!t && optional_tensor(name)) return View{};
    if (!t) t = &params_layout_.get(name);
    const DType dt = be_.param_dtype();
    return slice(grads_, dt, *t, t->offset * dtype_size(dt), layer);
}

View GPT2::act(const std::string& name, int layer) const {
    const auto& t = acts_layout_.get(name);
    return slice(acts_, t.dtype, t, t.byte_offset, layer);
}

// The GELU output of layer l: its own slice, or the shared buffer under recompute.
View GPT2::fch_gelu(int layer) const { return gelu_recompute_ ? act("fch_gelu") : act("fch_gelu", layer); }

// Portable normal samples: mt19937_64 is specified bit-exactly by the
// standard, std::normal_distribution is not, so the same seed gives the same
// weights with every standard library.
namespace {
struct NormalRng {
    std::mt19937_64 gen;
    bool have = false;
    double spare = 0;
    explicit NormalRng(uint64_t seed) : gen(seed) {}
    double uniform() { return (double(gen() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0,1)
    double next() {
        if (have) { have = false; return spare; }
        double u1 = uniform(), u2 = uniform();
        double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * M_PI * u2;
        spare = r * std::sin(a);
        have = true;
        return r * std::cos(a);
    }
};
}  // namespace

void GPT2::init_weights(uint64_t seed, const InitOptions& opt) {
    NormalRng rng(seed);
    const double std_base = 0.02, std_resid = opt.zero_init_proj ? 0.0 : 0.02 / std::sqrt(2.0 * shape_.L);
    const DType dt = be_.param_dtype();
    std::vector<double> chunk;
    std::vector<char> staged;
    // Written in chunks so that initialising a 1.5B model needs no host copy of it.
    const size_t kChunk = size_t(1) << 20;
    auto fill = [&](const TensorSpec* t, size_t numel, bool random, double stdev, double constant) {
        for (size_t start = 0; start < numel; start += kChunk) {
            const size_t n = std::min(kChunk, numel - start);
            chunk.resize(n);
            for (size_t i = 0; i < n; i++) chunk[i] = random ? rng.next() * stdev : constant;
            if (random && stdev == 0) std::fill(chunk.begin(), chunk.end(), 0.0);  // drawn, then zeroed: no -0.0
            if (!t) continue;  // drawn for the stream only: a tensor this architecture has not
            staged.resize(n * dtype_size(dt));
            from_double(chunk.data(), staged.data(), dt, n);
            be_.to_device(static_cast<char*>(params_) + (t->offset + start) * dtype_size(dt), staged.data(), staged.size());
        }
    };
    // The random stream runs over GPT-2's tensors in GPT-2's order.
    ModelShape gpt2 = shape_;
    gpt2.arch = Arch{};
    for (const auto& g : gpt::param_layout(gpt2).tensors) {
        const bool is_gain = g.name == "ln1w" || g.name == "ln2w" || g.name == "lnfw";
        const bool is_weight = g.decay;  // the 2-D matrices and embeddings
        const double stdev = (g.name == "attprojw" || g.name == "fcprojw") ? std_resid : std_base;
        fill(params_layout_.find(g.name), g.numel, is_weight, stdev, is_gain ? 1.0 : 0.0);
    }
    if (const TensorSpec* h = params_layout_.find("lm_head")) fill(h, h->numel, opt.head_init_std > 0, opt.head_init_std, 0.0);
}

double GPT2::forward(const int32_t* inputs, const int32_t* targets, bool grad, double dloss) {
    load_tokens(inputs, targets);
    forward_pass(targets != nullptr, grad, dloss);
    if (!targets) return std::numeric_limits<double>::quiet_NaN();
    double sum = 0;
    for (double x : losses()) sum += x;
    return sum / (double(B_) * T_);
}

void GPT2::load_tokens(const int32_t* inputs, const int32_t* targets) {
    const size_t BT = size_t(B_) * T_;
    staging_.resize(2 * BT);
    std::copy(inputs, inputs + BT, staging_.begin());
    if (targets) std::copy(targets, targets + BT, staging_.begin() + long(BT));
    be_.to_device(tokens_, staging_.data(), (targets ? 2 : 1) * BT * 4);
}

void GPT2::load_tokens_async(const int32_t* staged) { be_.to_device_async(tokens_, staged, 2 * size_t(B_) * T_ * 4); }

void GPT2::forward_pass(bool with_targets, bool grad, double dloss, View loss_sum, double loss_scale) {
    const int B = B_, T = T_, C = shape_.C, NH = shape_.NH, L = shape_.L, Vp = shape_.Vp;
    const int BT = B * T;
    const Arch& arch = shape_.arch;
    const bool rms = arch.norm == NormKind::rmsnorm;

    be_.encoder_forward({act("encoded"), inputs_, param("wte"), param("wpe"), B, T, C});  // (B,T,C); no wpe with rope
    be_.layernorm_forward({act("ln1", 0), act("ln1_mean", 0), act("ln1_rstd", 0), act("encoded"), param("ln1w", 0), param("ln1b", 0), BT, C, rms});

    // Each residual add is fused with the norm that reads its result:
    // the attention's into ln2, the MLP's into the next layer's ln1 (or lnf).
    for (int l = 0; l < L; l++) {
        View residual = l == 0 ? act("encoded") : act("residual3", l - 1);                 // (B,T,C)
        View ln1 = act("ln1", l), qkv = act("qkv", l), atty = act("atty", l);
        View residual2 = act("residual2", l), ln2 = act("ln2", l);
        View fch = act("fch", l), residual3 = act("residual3", l);
        View proj = act("dln");  // (B,T,C) scratch for the projections' output, free during the forward

        be_.matmul_forward({qkv, ln1, param("qkvw", l), param("qkvb", l), BT, C, 3 * C});          // (B,T,3C)
        if (arch.pos == PosEmb::rope) be_.rope({qkv, BT, T, 0, C, NH, arch.rope_base});            // q, k rotated in place
        if (arch.qk_norm) be_.qknorm_forward({qkv, act("qk_rstd", l), BT, C, NH});                // q, k normalised in place; (B,T,2NH)
        be_.attention_forward({atty, act("lse", l), qkv, B, T, C, NH});                           // (B,T,C)
        be_.matmul_forward({proj, atty, param("attprojw", l), param("attprojb", l), BT, C, C});   // (B,T,C)
        be_.residual_layernorm_forward({residual2, ln2, act("ln2_mean", l), act("ln2_rstd", l), residual, proj,
                                        param("ln2w", l), param("ln2b", l), BT, C, rms});
        // fch (B,T,4C) keeps the pre-activation for the backward; the activation is the matmul's epilogue.
        be_.matmul_forward({fch_gelu(l), ln2, param("fcw", l), param("fcb", l), BT, C, 4 * C, fch, arch.act});
        be_.matmul_forward({proj, fch_gelu(l), param("fcprojw", l), param("fcprojb", l), BT, 4 * C, C});  // (B,T,C)
        if (l + 1 < L)
            be_.residual_layernorm_forward({residual3, act("ln1", l + 1), act("ln1_mean", l + 1), act("ln1_rstd", l + 1), residual2, proj,
                                            param("ln1w", l + 1), param("ln1b", l + 1), BT, C, rms});
        else
            be_.residual_layernorm_forward({residual3, act("lnf"), act("lnf_mean"), act("lnf_rstd"), residual2, proj,
                                            param("lnfw"), param("lnfb"), BT, C, rms});
    }

    dlnf_done_ = false;
    if (!with_targets && head_fused_) refuse_all_logits();
    if (!with_targets) {
        // Logits only (generation): capped like the training logits.
        be_.matmul_forward({act("logits"), act("lnf"), head(), View{}, BT, C, Vp});  // (B,T,Vp), wte^T when tied
        if (arch.softcap > 0) be_.classifier({act("logits"), View{}, nullptr, BT, shape_.V, Vp, 0.0, false, arch.softcap});
        return;
    }
    // The head over rows [r0, r0 + n): logits (n,Vp) = lnf @ head^T, losses
    // and dlogits in place, and with grad dlnf (n,C) = dlogits @ head into dln
    // (free again: the last layer's projection was its last use as scratch).
    // kernels.head: chunked takes the rows a chunk at a time, so the three
    // passes over a chunk's logits find it in cache; whole takes all BT at once.
    // lm_head's weight gradient needs every row: it stays in backward(), except
    // with kernels.head: fused, where each chunk adds its part here and the
    // logits buffer holds one chunk, every chunk's logits at its start.
    const int rows = head_rows_ > 0 ? head_rows_ : BT;
    for (int r0 = 0; r0 < BT; r0 += rows) {
        const int n = std::min(rows, BT - r0);
        const View logits = act("logits").at(head_fused_ ? 0 : size_t(r0) * Vp), lnf = act("lnf").at(size_t(r0) * C);
        be_.matmul_forward({logits, lnf, head(), View{}, n, C, Vp});
        be_.classifier({logits, act("losses").at(size_t(r0)), targets_ + r0, n, shape_.V, Vp, dloss, grad, arch.softcap});
        if (grad && head_rows_ > 0)
            be_.matmul_backward({act("dln").at(size_t(r0) * C), head_fused_ ? head_grad() : View{}, View{}, logits, lnf, head(), n, C, Vp});
    }
    dlnf_done_ = grad && head_rows_ > 0;
    if (loss_sum) be_.sum_into({loss_sum, act("losses"), size_t(BT), loss_scale});
}

std::vector<ParamRange> GPT2::grad_ranges(int layer) const {
    std::vector<ParamRange> out;
    for (const auto& t : params_layout_.tensors) {
        // Stacked per-layer tensors are (L, ...); wte, wpe, lnf and lm_head are not.
        const bool stacked = t.name != "wte" && t.name != "wpe" && t.name != "lnfw" && t.name != "lnfb" && t.name != "lm_head";
        if (stacked != (layer >= 0)) continue;
        if (!stacked) {
            out.push_back({t.offset, t.numel, t.decay});
            continue;
        }
        const size_t per_layer = t.numel / size_t(shape_.L);
        out.push_back({t.offset + size_t(layer) * per_layer, per_layer, t.decay});
    }
    return out;
}

void GPT2::backward(const std::function<void(int layer)>& on_grads) {
    const int B = B_, T = T_, C = shape_.C, NH = shape_.NH, L = shape_.L, Vp = shape_.Vp;
    const int BT = B * T;
    const Arch& arch = shape_.arch;
    const bool rms = arch.norm == NormKind::rmsnorm;
    View dresidual = act("dresidual"), dln = act("dln"), dqkv = act("dqkv"), datty = act("datty"), dfch = act("dfch");

    // With kernels.bias_grad: folded, a projection's bias gradient (the column
    // sums of the gradient at its output) comes from a pass that already has
    // that gradient: the LayerNorm backward that completes the residual
    // stream's gradient (attproj, fcproj), the dGELU product (fc). `folded(b)`
    // is the bias gradient handed to the folding pass, `own(b)` the one the
    // projection's own backward sums.
    auto folded = [&](View b) { return bias_folded_ ? b : View{}; };
    auto own = [&](View b) { return bias_folded_ ? View{} : b; };

    // Head: logits now hold dlogits (B,T,Vp), written by the classifier;
    // with a chunked head dlnf is already in dln, only the weight's gradient is
    // left; with a fused head that is done too.
    if (!(dlnf_done_ && head_fused_))
        be_.matmul_backward({dlnf_done_ ? View{} : dln, head_grad(), View{}, act("logits"), act("lnf"), head(), BT, C, Vp});
    be_.zero(dresidual.ptr, size_t(BT) * C * dtype_size(dresidual.dtype));
    be_.layernorm_backward({dresidual, grad("lnfw"), grad("lnfb"), dln, act("residual3", L - 1), param("lnfw"),
                            act("lnf_mean"), act("lnf_rstd"), BT, C, rms, folded(grad("fcprojb", L - 1))});

    for (int l = L - 1; l >= 0; l--) {
        View residual = l == 0 ? act("encoded") : act("residual3", l - 1);
        // MLP: residual3 = residual2 + fcproj(act(fc(ln2(residual2)))); the
        // activation's backward is fused into the product that yields dfch.
        if (gelu_recompute_) be_.gelu_forward({fch_gelu(l), act("fch", l), size_t(BT) * 4 * C, arch.act});
        be_.matmul_backward({dfch, grad("fcprojw", l), own(grad("fcprojb", l)), dresidual, fch_gelu(l), param("fcprojw", l), BT, 4 * C, C,
                             act("fch", l), arch.act, folded(grad("fcb", l))});
        be_.matmul_backward({dln, grad("fcw", l), own(grad("fcb", l)), dfch, act("ln2", l), param("fcw", l), BT, C, 4 * C});
        be_.layernorm_backward({dresidual, grad("ln2w", l), grad("ln2b", l), dln, act("residual2", l), param("ln2w", l),
                                act("ln2_mean", l), act("ln2_rstd", l), BT, C, rms, folded(grad("attprojb", l))});
        // Attention: residual2 = residual + attproj(attention(qknorm(rope(qkv(ln1(residual))))))
        be_.matmul_backward({datty, grad("attprojw", l), own(grad("attprojb", l)), dresidual, act("atty", l), param("attprojw", l), BT, C, C});
        be_.attention_backward({dqkv, datty, act("qkv", l), act("atty", l), act("lse", l), B, T, C, NH});  // (B,T,3C)
        if (arch.qk_norm) be_.qknorm_backward({dqkv, act("qkv", l), act("qk_rstd", l), BT, C, NH});
        if (arch.pos == PosEmb::rope) be_.rope({dqkv, BT, T, 0, C, NH, arch.rope_base, true});
        be_.matmul_backward({dln, grad("qkvw", l), grad("qkvb", l), dqkv, act("ln1", l), param("qkvw", l), BT, C, 3 * C});
        // The residual stream's gradient below layer l is complete here: the
        // previous layer's fcproj bias gradient (none below layer 0).
        be_.layernorm_backward({dresidual, grad("ln1w", l), grad("ln1b", l), dln, residual, param("ln1w", l),
                                act("ln1_mean", l), act("ln1_rstd", l), BT, C, rms, l > 0 ? folded(grad("fcprojb", l - 1)) : View{}});
        if (on_grads) on_grads(l);  // layer l's parameter gradients are final
    }
    be_.encoder_backward({grad("wte"), grad("wpe"), dresidual, inputs_, B, T, C});
    if (on_grads) on_grads(-1);
}

void GPT2::zero_grad() { be_.zero(grads_, n_elems_ * dtype_size(be_.param_dtype())); }

static std::vector<double> read_view(Backend& be, View v, size_t n) {
    std::vector<char> raw(n * dtype_size(v.dtype));
    be.to_host(raw.data(), v.ptr, raw.size());
    std::vector<double> out(n);
    to_double(raw.data(), v.dtype, out.data(), n);
    return out;
}

std::vector<double> GPT2::losses() const { return read_view(be_, act("losses"), size_t(B_) * T_); }
void GPT2::refuse_all_logits() {
    run_failed("kernels.head: fused keeps one chunk of logits: the logits of every position need kernels.head: whole or chunked");
}

std::vector<double> GPT2::logits() const {
    if (head_fused_) refuse_all_logits();
    return read_view(be_, act("logits"), size_t(B_) * T_ * shape_.Vp);
}

int64_t GPT2::logit_rows(const KernelChoices& k, int64_t BT) {
    if (k.variant("head") != "fused") return BT;
    return std::max<int64_t>(1, std::min<int64_t>(BT, k.param("head", "fused_rows")));
}

std::vector<double> GPT2::read_param(const std::string& name) const {
    return read_view(be_, param(name), params_layout_.get(name).numel);
}

std::vector<double> GPT2::read_grad(const std::string& name) const {
    return read_view(be_, grad(name), params_layout_.get(name).numel);
}

void GPT2::write_param(const std::string& name, const std::vector<double>& values) {
    const auto& t = params_layout_.get(name);
    if (values.size() != t.numel)
        bad_input("parameter '" + name + "' has " + std::to_string(t.numel) + " elements, got " + std::to_string(values.size()));
    View v = param(name);
    std::vector<char> raw(t.numel * dtype_size(v.dtype));
    from_double(values.data(), raw.data(), v.dtype, t.numel);
    be_.to_device(v.ptr, raw.data(), raw.size());
}

std::vector<float> GPT2::params_llmc() const {
    std::vector<float> out;
    out.reserve(param_count(shape_));
    std::vector<char> raw;
    std::vector<double> tmp;
    for (const auto& t : params_layout_.tensors) {
        View v = param(t.name);
        raw.resize(t.numel * dtype_size(v.dtype));
        be_.to_host(raw.data(), v.ptr, raw.size());
        tmp.resize(t.numel);
        to_double(raw.data(), v.dtype, tmp.data(), t.numel);
        out.insert(out.end(), tmp.begin(), tmp.end());
    }
    return out;
}

void GPT2::load_params_llmc(const std::vector<float>& values) {
    if (values.size() != param_count(shape_))
        bad_input("parameter file holds " + std::to_string(values.size()) + " values, the model needs " + std::to_string(param_count(shape_)));
    size_t pos = 0;
    std::vector<double> tmp;
    for (const auto& t : params_layout_.tensors) {
        tmp.assign(values.begin() + pos, values.begin() + pos + t.numel);
        write_param(t.name, tmp);
        pos += t.numel;
    }
}

}  // namespace gpt
