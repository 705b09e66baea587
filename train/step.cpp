#include "train/step.h"

#include <cmath>
#include <cstring>

#include "model/gpt2.h"
#include "train/dist.h"
#include "train/optimizer.h"

namespace gpt {

namespace {
constexpr size_t kStepValues = 4;  // backend memory, f64: {loss, norm^2, lr, t}
}

TrainStep::TrainStep(GPT2& model, Optimizer& optim, Communicator& comm, const StepOptions& opt)
    : model_(model), optim_(optim), comm_(comm), opt_(opt), be_(model.backend()), bt_(size_t(model.B()) * model.T()) {
    if (opt_.accum < 1) run_failed("train step: accum must be >= 1, got " + std::to_string(opt_.accum));
    try {
        staged_ = static_cast<int32_t*>(be_.alloc_host(size_t(opt_.accum) * 2 * bt_ * sizeof(int32_t), "staged tokens"));
        host_in_ = static_cast<double*>(be_.alloc_host(2 * sizeof(double), "step values (host)"));
        host_out_ = static_cast<double*>(be_.alloc_host(2 * sizeof(double), "step results (host)"));
        dev_ = be_.alloc(kStepValues * sizeof(double), "step values");
        if (opt_.grad_accum_f32) {
            // f32, or the backend's own wider type (the f64 CPU reference).
            const DType dt = be_.param_dtype() == DType::bf16 ? DType::f32 : be_.param_dtype();
            sum_ = View{be_.alloc(model_.buffer_elements() * dtype_size(dt), "f32 gradient sum (run.grad_accum_f32)"), dt};
            // The layers' ranges do not cover the layout's alignment gaps, which the norm reads.
            be_.zero(sum_.ptr, model_.buffer_elements() * dtype_size(dt));
        }
    } catch (...) {
        release();
        throw;
    }
    std::memset(staged_, 0, size_t(opt_.accum) * 2 * bt_ * sizeof(int32_t));
    be_.zero(dev_, kStepValues * sizeof(double));
    two_halves_ = optim_.uses_muon() || bool(opt_.judge);
    if (opt_.cuda_graph) {
        graph_ = Graph::waiting;
        if (two_halves_) {
            graph_ = Graph::failed;
            why_ = optim_.uses_muon() ? "Muon's update takes host values" : "run.skip_update_lossz/gradz judge each update on the host";
        } else if (!opt_.no_graph_reason.empty()) {
            graph_ = Graph::failed;
            why_ = opt_.no_graph_reason;
        } else if (comm_.world() > 1) {
            // The collectives run on a second stream and wait for it from the
            // host (train/nccl_comm.cpp): not recordable as they are.
            graph_ = Graph::failed;
            why_ = "data-parallel steps (" + std::to_string(comm_.world()) + " ranks) are not recorded";
        }
    }
}

TrainStep::~TrainStep() { release(); }

void TrainStep::release() {
    if (sum_) be_.free(sum_.ptr);
    sum_ = View{};
    if (dev_) be_.free(dev_);
    if (host_out_) be_.free_host(host_out_);
    if (host_in_) be_.free_host(host_in_);
    if (staged_) be_.free_host(staged_);
    dev_ = nullptr;
    host_out_ = host_in_ = nullptr;
    staged_ = nullptr;
}

View TrainStep::gradients() const { return sum_ ? sum_ : model_.grads(); }

int32_t* TrainStep::inputs(int micro) { return staged_ + size_t(micro) * 2 * bt_; }
int32_t* TrainStep::targets(int micro) { return staged_ + size_t(micro) * 2 * bt_ + bt_; }

void TrainStep::enqueue_gradients() {
    double* dev = static_cast<double*>(dev_);
    const View loss{dev, DType::f64}, norm_sq{dev + 1, DType::f64};
    const int accum = opt_.accum;
    // dloss divides by the global token count, so gradients are summed over
    // micro-batches and ranks; the loss is this rank's mean.
    const double dloss = 1.0 / (double(bt_) * accum * comm_.world());
    const double loss_scale = 1.0 / (double(bt_) * accum);

    const size_t n = model_.buffer_elements();
    // The bucketed reduction during the last backward: of the gradient buffer,
    // or of the f32 sum, each layer's ranges added into it (copied, for a
    // single micro-batch) once that layer's gradients are final.
    std::function<void(int)> hook;
    if (opt_.reduce_hook && !sum_) hook = [this](int layer) { opt_.reduce_hook(model_.grads(), layer); };
    if (opt_.reduce_hook && sum_)
        hook = [this, first = accum == 1](int layer) {
            for (const ParamRange& r : model_.grad_ranges(layer)) {
                const View dst = sum_.at(r.offset), src = model_.grads().at(r.offset);
                if (first) be_.copy(dst, src, r.size);
                else be_.accumulate({dst, src, r.size});
            }
            opt_.reduce_hook(sum_, layer);
        };
    be_.zero(loss.ptr, sizeof(double));
    model_.zero_grad();
    for (int m = 0; m < accum; m++) {
        const bool last = m == accum - 1;
        if (sum_ && m > 0) model_.zero_grad();
        model_.load_tokens_async(inputs(m));
        model_.forward_pass(true, true, dloss, loss, loss_scale);
        model_.backward(last ? hook : nullptr);
        if (!sum_ || (last && hook)) continue;  // the hook added the last micro-batch
        if (m == 0) be_.copy(sum_, model_.grads(), n);
        else be_.accumulate({sum_, model_.grads(), n});
    }
    const View grads = gradients();
    if (opt_.zero1) {
        // This rank's shard of the summed gradients; Muon's matrices need
        // theirs whole, so with Muon every rank gets every sum.
        if (optim_.uses_muon()) comm_.all_reduce_sum(grads, n);
        else comm_.reduce_scatter_sum(grads, n);
        optim_.enqueue_grad_sq(grads, norm_sq);
        comm_.all_reduce_sum(loss, 2);  // {loss, norm^2}: both summed over ranks
    } else {
        if (hook) comm_.finish_all_reduce();
        else comm_.all_reduce_sum(grads, n);
        optim_.enqueue_grad_sq(grads, norm_sq);  // of the summed gradients: the same on every rank
        if (comm_.world() > 1) comm_.all_reduce_sum(loss, 1);
    }
}

void TrainStep::enqueue_step() {
    double* dev = static_cast<double*>(dev_);
    const View loss{dev, DType::f64}, norm_sq{dev + 1, DType::f64}, hyper{dev + 2, DType::f64};
    be_.to_device_async(hyper.ptr, host_in_, 2 * sizeof(double));
    enqueue_gradients();
    // The loss summed over ranks guards the update alike on every rank.
    optim_.enqueue_update(model_.params(), gradients(), hyper, norm_sq, loss);
    if (opt_.zero1) comm_.all_gather(model_.params(), model_.buffer_elements());  // every rank's updated shard to every rank
    be_.to_host_async(host_out_, loss.ptr, 2 * sizeof(double));
}

StepResult TrainStep::run_judged(double lr) {
    const int t = optim_.step_count() + 1;
    enqueue_gradients();
    be_.to_host_async(host_out_, dev_, 2 * sizeof(double));
    be_.synchronize();
    StepResult r;
    r.loss = host_out_[0] / comm_.world();
    r.grad_norm = std::sqrt(host_out_[1]);
    r.applied = opt_.judge ? opt_.judge(r.loss, r.grad_norm) : std::isfinite(r.loss) && std::isfinite(r.grad_norm);
    if (r.applied) {
        optim_.step(model_.params(), gradients(), lr, r.grad_norm);
        if (opt_.zero1) comm_.all_gather(model_.params(), model_.buffer_elements());
        be_.synchronize();
    }
    optim_.set_step_count(t);  // a skipped update still counts as a step
    steps_++;
    return r;
}

StepResult TrainStep::run(double lr) {
    optim_.init_master(model_.params());  // once; never part of a recorded step
    if (two_halves_) return run_judged(lr);
    const int t = optim_.step_count() + 1;
    host_in_[0] = lr;
    host_in_[1] = double(t);

    if (graph_ == Graph::waiting && steps_ >= 1) {
        std::string why;
        if (!be_.begin_capture(&why)) {
            graph_ = Graph::failed;
            why_ = why;
        } else {
            bool recorded = true;
            try {
                enqueue_step();
            } catch (const std::exception& e) {
                // Nothing recorded has run: discard it and run the step directly.
                be_.abort_capture();
                recorded = false;
                graph_ = Graph::failed;
                why_ = std::string("recording the step failed: ") + e.what();
            }
            if (recorded) {
                if (be_.end_capture(&why)) {
                    graph_ = Graph::replaying;
                } else {
                    graph_ = Graph::failed;
                    why_ = why;
                }
            }
        }
    }
    StepResult r;
    if (graph_ == Graph::replaying) {
        be_.replay();
        r.replayed = true;
        replays_++;
    } else {
        enqueue_step();
    }
    be_.synchronize();
    optim_.set_step_count(t);
    steps_++;
    r.loss = host_out_[0] / comm_.world();
    r.grad_norm = std::sqrt(host_out_[1]);
    r.applied = std::isfinite(r.loss) && std::isfinite(r.grad_norm);  // as the device judged it
    return r;
}

std::string TrainStep::graph_state() const {
    switch (graph_) {
        case Graph::off: return "off";
        case Graph::waiting: return "waiting";
        case Graph::replaying: return "replaying";
        case Graph::failed: return "direct: " + why_;
    }
    return "";
}

}  // namespace gpt
