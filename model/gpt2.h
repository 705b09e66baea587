// GPT-2 on a Backend: parameters, gradients and activations in one buffer
// each (see model/layout.h), forward and backward as a linear list of op calls.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/backend.h"
#include "model/layout.h"

namespace gpt {

class GPT2 {
public:
    // Allocates parameters, gradients and activations for micro-batch (B,T),
    // T <= maxT. The parameter and gradient buffers are padded to a multiple
    // of `shards` x 64 elements so that they split evenly across data-parallel
    // ranks (ZeRO-1 shards); the padding is zero and stays zero.
    GPT2(const ModelShape& shape, Backend& backend, int B, int T, int shards = 1);
    ~GPT2();
    GPT2(const GPT2&) = delete;
    GPT2& operator=(const GPT2&) = delete;

    // GPT-2 initialisation: N(0, 0.02), residual projections (attprojw,
    // fcprojw) N(0, 0.02/sqrt(2L)) (or zeros with zero_init_proj), norm gains
    // 1, biases 0, an untied lm_head N(0, head_init_std). Seeded: the same seed
    // gives the same weights on every backend and machine, and every tensor a
    // variant shares with GPT-2 gets GPT-2's values (the random stream always
    // runs over GPT-2's tensors), so a change of architecture is not also a
    // change of initial weights.
    void init_weights(uint64_t seed, const InitOptions& opt = {});

    // Forward pass on inputs (B,T). With targets (B,T) it computes the mean
    // loss over the B*T positions and returns it; without, returns NaN and
    // leaves the logits (B,T,Vp) readable through logits().
    // With grad=true the classifier writes dlogits in place, ready for backward().
    // This waits for the device (the upload and the loss): evaluation, tests,
    // generation. Training enqueues the same work without waiting:
    // load_tokens_async + forward_pass (train/step.h).
    double forward(const int32_t* inputs, const int32_t* targets, bool grad = false, double dloss = 0.0);

    // The micro-batch's tokens in backend memory, (2,B,T): inputs, then targets.
    // load_tokens uploads them in one copy and waits (targets may be null);
    // load_tokens_async enqueues the copy of `staged`, host memory from
    // Backend::alloc_host holding (2,B,T) that stays unchanged until the
    // backend synchronizes.
    void load_tokens(const int32_t* inputs, const int32_t* targets);
    void load_tokens_async(const int32_t* staged);
    // The forward pass on the loaded tokens, enqueued: nothing is read back.
    // With targets, the classifier writes the per-position losses (and with
    // grad, dlogits in place); with loss_sum set (one f64 element of backend
    // memory), loss_scale x the sum of the B*T losses is added to it.
    void forward_pass(bool with_targets, bool grad, double dloss, View loss_sum = {}, double loss_scale = 0.0);

    // Backward pass of the last forward(grad=true): parameter gradients ACCUMULATE.
    // on_grads, when given, is called as soon as a group of gradients is
    // final for this pass: with layer l = L-1 down to 0 after that layer's
    // backward, then with -1 after the embeddings' (wte, wpe, lnf, lm_head): the hook
    // for bucketed gradient reduction overlapping the rest of the pass.
    void backward(const std::function<void(int layer)>& on_grads = {});
    // The gradient buffer's element ranges written by layer l (or by the
    // non-layer tensors when l < 0), in layout order.
    std::vector<ParamRange> grad_ranges(int layer) const;
    void zero_grad();

    // Per-position losses (B*T) of the last forward with targets.
    std::vector<double> losses() const;
    // Logits (B,T,Vp) of the last forward without targets (or dlogits after one with grad).
    // kernels.head: fused keeps one chunk of them: refused (RunFailed) there.
    std::vector<double> logits() const;
    // Rows of the logits buffer with these kernel choices at B*T = BT: one
    // chunk with kernels.head: fused, else all of them.
    static int64_t logit_rows(const KernelChoices& k, int64_t BT);

    // Host access by tensor name (any dtype, converted to/from double).
    std::vector<double> read_param(const std::string& name) const;
    void write_param(const std::string& name, const std::vector<double>& values);
    std::vector<double> read_grad(const std::string& name) const;

    // All parameters in layout order (llm.c's file order for GPT-2), without
    // alignment gaps, as float32.
    std::vector<float> params_llmc() const;
    void load_params_llmc(const std::vector<float>& values);

    const ModelShape& shape() const { return shape_; }
    const Layout& param_layout() const { return params_layout_; }
    const Layout& act_layout() const { return acts_layout_; }
    Backend& backend() const { return be_; }
    size_t buffer_elements() const { return n_elems_; }  // parameter buffer length incl. padding
    View params() const { return {params_, be_.param_dtype()}; }
    View grads() const { return {grads_, be_.param_dtype()}; }
    int B() const { return B_; }
    int T() const { return T_; }
    // A parameter tensor, or with layer >= 0 that layer's slice of a stacked
    // one; a null View when the architecture has no such tensor (wpe with
    // rotary positions, biases, norm gains).
    View param(const std::string& name, int layer = -1) const;
    // The output head's weight (Vp,C): wte when tied, else lm_head.
    View head() const { return param(shape_.arch.tied_head ? "wte" : "lm_head"); }
    View head_grad() const { return grad(shape_.arch.tied_head ? "wte" : "lm_head"); }
    [[noreturn]] static void refuse_all_logits();  // kernels.head: fused keeps one chunk of them

private:
    View grad(const std::string& name, int layer = -1) const;
    View act(const std::string& name, int layer = -1) const;
    View fch_gelu(int layer) const;

    ModelShape shape_;
    Backend& be_;
    int B_, T_;
    bool gelu_recompute_ = false;  // kernels.gelu: recompute
    bool bias_folded_ = false;     // kernels.bias_grad: folded
    int head_rows_ = 0;            // kernels.head: chunked or fused, its rows per chunk (0: whole)
    bool head_fused_ = false;      // kernels.head: fused: the head's weight gradient per chunk, one chunk of logits kept
    bool dlnf_done_ = false;       // the last forward_pass wrote dlnf (chunked or fused head with grad),
                                   // and with a fused head the head's weight gradient too
    Layout params_layout_, acts_layout_;
    size_t n_elems_ = 0;
    void* params_ = nullptr;
    void* grads_ = nullptr;
    void* acts_ = nullptr;
    int32_t* tokens_ = nullptr;   // (2,B,T) in backend memory: inputs, then targets
    int32_t* inputs_ = nullptr;   // tokens_ row 0
    int32_t* targets_ = nullptr;  // tokens_ row 1
    std::vector<int32_t> staging_;  // load_tokens' host copy of both rows
};

}  // namespace gpt
