// The `cudnn` attention variant: cuDNN's fused flash attention (SDPA) through
// the backend graph API, the baseline the hand-written `flash` kernels are
// measured against.
//
// With only cuDNN's C backend API (no cudnn_frontend), the operation graphs are
// built by hand exactly as cudnn_frontend's composite SDPA nodes lower them for
// cuDNN 9.x (CompositeSDPANode / CompositeSDPABackwardNode with the composite
// diagonal band mask, the lowering the frontend uses below cuDNN 9.21 for a
// causal mask), because cuDNN's runtime-fusion engines recognise that pattern.
// Data types follow the frontend's rule: a virtual tensor whose type the
// frontend leaves unset takes the intermediate type, f32.
//
// forward (training, with stats), all [B, NH, ., .]:
//   S = Q K^T (f32) -> S * scale -> causal mask -> max = reduce_max(S) ->
//   E = exp(S - max) -> sum = reduce_add(E) -> Stats = max + log(sum) ->
//   P = E / sum -> O = P V. P is declared bf16: the frontend sets the second
//   matmul's A to the I/O type ("bmm2 aType as i/o type").
// causal mask (the frontend's composite diagonal band mask, right bound 0):
//   row = gen_index(S, axis 2), col = gen_index(S, axis 3), both INT32 tensors
//   computed at the graph's compute precision (f32; the frontend sets no compute
//   type on GEN_INDEX), keep = row >= col (CMP_GE, BOOLEAN), binary_select(S,
//   fill, keep) with fill = -inf from cuDNN 9.10 on and the lowest float before
//   (the frontend's get_negative_inf_value, by the runtime version).
// backward:
//   Dsum = reduce_add(dO * O) * 1 (f32 workspace tensor "softmax_sum"; dO * O
//   is a virtual [B,NH,T,hd] with the frontend's strides [NH*T*hd, T*hd, NH*hd, 1])
//   P = exp(mask(Q K^T * scale - Stats)) (f32); dV = P^T dO (P^T a bf16 reshape)
//   dS = (dO V^T - Dsum) * P * scale (f32); dK = dS^T Q (dS^T a bf16 reshape);
//   dQ = identity(dQacc = dS K), K a reshape of K^T left at the intermediate
//   type f32 as in the frontend, dQacc an f32 workspace tensor (cuDNN
//   zero-fills it itself since 9.6). The frontend uses this dQacc form on
//   Hopper whenever B*NH*T^2*2 bytes exceed 256 MiB (GPT-2 at B=64 does);
//   below that it writes dQ directly, which this file does not build, so small
//   test shapes run the same graph as training.
// Stats is cuDNN's max + log(sum) of the scaled scores, natural log: the same
// definition as our lse (kernels/cpu/attention.cpp).
//
// Q, K, V are read straight from the interleaved qkv (B,T,3C) buffer: dims
// [B, NH, T, hd], strides [T*3C, hd, 3C, 1] at column offsets 0, C, 2C (K and V
// are declared transposed, [B, NH, hd, T] with strides [T*3C, hd, 1, 3C], which
// is how the backend's matmuls take them); out and dout are [T*C, hd, C, 1];
// dq, dk, dv are written into dqkv (B,T,3C) with qkv's strides.
//
// One finalized execution plan per (context, B, T, NH, hd, direction) is cached
// here with the descriptors it was built from; its workspace (plus, for the
// backward, the two f32 work tensors) lives in Context scratch slot kCudnn.
// cuDNN's default backward engine accumulates dQ with atomics, so unlike the
// flash variant this one is not bitwise reproducible run to run.
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace gpt::cuda {
namespace {

// Tensor unique ids of the variant packs (virtual tensors get ids from kVirtual up).
// V is a plain [B,NH,T,hd] operand of the forward and V^T one of the backward.
enum Uid : int64_t {
    kQ = 1, kKt, kVt, kO, kStats, kScale, kMaskFill, kDO, kDQ, kDK, kDV, kOne, kSoftmaxSum, kDQAccum, kVirtual = 100,
    kV = kVt
};

using Dims = std::array<int64_t, 4>;

// A finalized plan and every descriptor it was built from (destroyed together).
struct Plan {
    std::vector<cudnnBackendDescriptor_t> owned;
    cudnnBackendDescriptor_t plan = nullptr;
    int64_t workspace = 0;  // bytes the plan itself needs
    ~Plan() {
        for (auto it = owned.rbegin(); it != owned.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
    }
};

// Builds one operation graph. Every descriptor it creates is owned by `plan`.
class GraphBuilder {
public:
    explicit GraphBuilder(Plan& plan) : plan_(plan) {}

    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type) {
        cudnnBackendDescriptor_t d = nullptr;
        GPT_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d));
        plan_.owned.push_back(d);
        return d;
    }

    static void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                    int64_t count, const void* value) {
        GPT_CUDNN_CHECK(cudnnBackendSetAttribute(d, name, type, count, value));
    }
    static void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t v) {
        set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
    }

    // A 4-d tensor; virtual tensors live only inside the fused kernel,
    // by-value tensors are scalars passed from host memory in the variant pack.
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, Dims dims, Dims strides, bool is_virtual,
                                    bool by_value = false) {
        cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        const int64_t alignment = 16;
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
        set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
        if (by_value) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
        GPT_CUDNN_CHECK(cudnnBackendFinalize(t));
        return t;
    }
    cudnnBackendDescriptor_t virt(cudnnDataType_t type, Dims dims, Dims strides) {
        return tensor(next_virtual_++, type, dims, strides, true);
    }
    cudnnBackendDescriptor_t scalar(int64_t uid) {
        return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
    }

    // y = op(x [, b [, t]]); math precision `prec`; axis only for GEN_INDEX.
    void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                   cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, cudnnDataType_t prec = CUDNN_DATA_FLOAT,
                   int64_t axis = -1) {
        cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
        if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
        GPT_CUDNN_CHECK(cudnnBackendFinalize(pw));
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
        if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
        if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
        finalize_op(op);
    }

    // c [.., M, N] = a [.., M, K] @ b [.., K, N], f32 accumulation.
    void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
        cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
        GPT_CUDNN_CHECK(cudnnBackendFinalize(mm));
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
        finalize_op(op);
    }

    // y [.., 1] = reduce over the last dimension of x.
    void reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        cudnnBackendDescriptor_t rd = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
        set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
        GPT_CUDNN_CHECK(cudnnBackendFinalize(rd));
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd);
        finalize_op(op);
    }

    // y = x viewed with y's dims and strides (a transpose, here).
    void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
        finalize_op(op);
    }

    // The causal mask of the scores s [B, NH, T, T]: keep (row >= col), else
    // `fill` (-inf, or the lowest float before cuDNN 9.10; exp gives 0 either
    // way). Returns the masked scores (f32, virtual).
    cudnnBackendDescriptor_t causal_mask(cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t fill, Dims sd, Dims ss) {
        cudnnBackendDescriptor_t row = virt(CUDNN_DATA_INT32, sd, ss);
        cudnnBackendDescriptor_t col = virt(CUDNN_DATA_INT32, sd, ss);
        cudnnBackendDescriptor_t keep = virt(CUDNN_DATA_BOOLEAN, sd, ss);
        cudnnBackendDescriptor_t out = virt(CUDNN_DATA_FLOAT, sd, ss);
        pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_FLOAT, 2);
        pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_FLOAT, 3);
        pointwise(CUDNN_POINTWISE_CMP_GE, row, col, nullptr, keep, CUDNN_DATA_BOOLEAN);
        pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, fill, keep, out);
        return out;
    }

    // Finalizes the graph and the first engine configuration cuDNN's heuristics
    // offer that builds a plan. False when none does (shape not supported).
    bool finish(cudnnHandle_t handle) {
        cudnnBackendDescriptor_t graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()), ops_.data());
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        if (cudnnBackendFinalize(graph) != CUDNN_STATUS_SUCCESS) return false;

        cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
        const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
        set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
        set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
        if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) return false;
        int64_t count = 0;
        GPT_CUDNN_CHECK(
            cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
        if (count <= 0) return false;
        std::vector<cudnnBackendDescriptor_t> configs(static_cast<size_t>(count));
        for (auto& c : configs) c = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
        GPT_CUDNN_CHECK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                                 count, &count, configs.data()));
        for (int64_t i = 0; i < count; i++) {
            cudnnBackendDescriptor_t plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
            // The plan's handle is a required attribute: without it every
            // finalize fails (BAD_PARAM) and no engine would ever be found.
            set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
            set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[size_t(i)]);
            if (cudnnBackendFinalize(plan) != CUDNN_STATUS_SUCCESS) continue;
            int64_t n = 0;  // element count out-parameter: pass a real pointer, as cudnn_frontend does
            GPT_CUDNN_CHECK(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                                     &n, &plan_.workspace));
            plan_.plan = plan;
            return true;
        }
        return false;
    }

private:
    void finalize_op(cudnnBackendDescriptor_t op) {
        GPT_CUDNN_CHECK(cudnnBackendFinalize(op));
        ops_.push_back(op);
    }

    Plan& plan_;
    std::vector<cudnnBackendDescriptor_t> ops_;
    int64_t next_virtual_ = kVirtual;
};

struct Shape {
    int64_t B, T, NH, D, C;
    Dims qkv_strides() const { return {T * 3 * C, D, 3 * C, 1}; }         // q, k, v, dq, dk, dv  [B,NH,T,D]
    Dims transposed_strides() const { return {T * 3 * C, D, 1, 3 * C}; }  // K^T, V^T            [B,NH,D,T]
    Dims out_strides() const { return {T * C, D, C, 1}; }                 // out, dout           [B,NH,T,D]
    Dims bhtd() const { return {B, NH, T, D}; }
    Dims bhdt() const { return {B, NH, D, T}; }
    Dims scores() const { return {B, NH, T, T}; }
    Dims scores_strides() const { return {NH * T * T, T * T, T, 1}; }
    Dims scores_t_strides() const { return {NH * T * T, T * T, 1, T}; }  // the transpose of a [T, T] score tile
    Dims rows() const { return {B, NH, T, 1}; }
    Dims rows_strides() const { return {NH * T, T, 1, 1}; }
};

void build_forward(GraphBuilder& g, const Shape& s) {
    const auto bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
    auto q = g.tensor(kQ, bf, s.bhtd(), s.qkv_strides(), false);
    auto kt = g.tensor(kKt, bf, s.bhdt(), s.transposed_strides(), false);
    auto v = g.tensor(kV, bf, s.bhtd(), s.qkv_strides(), false);
    auto o = g.tensor(kO, bf, s.bhtd(), s.out_strides(), false);
    auto stats = g.tensor(kStats, f32, s.rows(), s.rows_strides(), false);
    auto scale = g.scalar(kScale);
    auto fill = g.scalar(kMaskFill);
    const Dims sd = s.scores(), ss = s.scores_strides(), rd = s.rows(), rs = s.rows_strides();

    auto s0 = g.virt(f32, sd, ss);
    g.matmul(q, kt, s0);
    auto s1 = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, s0, scale, nullptr, s1);
    auto s2 = g.causal_mask(s1, fill, sd, ss);
    auto mx = g.virt(f32, rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, s2, mx);
    auto sub = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, s2, mx, nullptr, sub);
    auto e = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_EXP, sub, nullptr, nullptr, e);
    auto sum = g.virt(f32, rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
    auto lg = g.virt(f32, rd, rs);
    g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, nullptr, lg);
    g.pointwise(CUDNN_POINTWISE_ADD, mx, lg, nullptr, stats);
    auto p = g.virt(bf, sd, ss);  // the second matmul takes P in the I/O type
    g.pointwise(CUDNN_POINTWISE_DIV, e, sum, nullptr, p);
    g.matmul(p, v, o);
}

void build_backward(GraphBuilder& g, const Shape& s) {
    const auto bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
    auto q = g.tensor(kQ, bf, s.bhtd(), s.qkv_strides(), false);
    auto kt = g.tensor(kKt, bf, s.bhdt(), s.transposed_strides(), false);
    auto vt = g.tensor(kVt, bf, s.bhdt(), s.transposed_strides(), false);
    auto o = g.tensor(kO, bf, s.bhtd(), s.out_strides(), false);
    auto dout = g.tensor(kDO, bf, s.bhtd(), s.out_strides(), false);
    auto stats = g.tensor(kStats, f32, s.rows(), s.rows_strides(), false);
    auto dq = g.tensor(kDQ, bf, s.bhtd(), s.qkv_strides(), false);
    auto dk = g.tensor(kDK, bf, s.bhtd(), s.qkv_strides(), false);
    auto dv = g.tensor(kDV, bf, s.bhtd(), s.qkv_strides(), false);
    auto scale = g.scalar(kScale);
    auto fill = g.scalar(kMaskFill);
    auto one = g.scalar(kOne);
    const Dims packed = {s.NH * s.T * s.D, s.T * s.D, s.D, 1};
    auto softmax_sum = g.tensor(kSoftmaxSum, f32, s.rows(), s.rows_strides(), false);  // workspace
    auto dq_accum = g.tensor(kDQAccum, f32, s.bhtd(), packed, false);                   // workspace
    const Dims sd = s.scores(), ss = s.scores_strides(), rd = s.rows(), rs = s.rows_strides();

    // softmax_sum (B,NH,T,1) = rowsum(dO * O); the product's strides as the frontend sets them
    auto d_o = g.virt(f32, s.bhtd(), {s.NH * s.T * s.D, s.T * s.D, s.NH * s.D, 1});
    g.pointwise(CUDNN_POINTWISE_MUL, dout, o, nullptr, d_o);
    auto dsum = g.virt(f32, rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, d_o, dsum);
    g.pointwise(CUDNN_POINTWISE_MUL, dsum, one, nullptr, softmax_sum);

    // P = exp(mask(Q K^T * scale - Stats)); dV = P^T dO
    auto s0 = g.virt(f32, sd, ss);
    g.matmul(q, kt, s0);
    auto s1 = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, s0, scale, nullptr, s1);
    auto s2 = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, s1, stats, nullptr, s2);
    auto s3 = g.causal_mask(s2, fill, sd, ss);
    auto p = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_EXP, s3, nullptr, nullptr, p);
    auto pt = g.virt(bf, sd, s.scores_t_strides());
    g.reshape(p, pt);
    g.matmul(pt, dout, dv);

    // dS = (dO V^T - softmax_sum) * P * scale; dK = dS^T Q
    auto dp = g.virt(f32, sd, ss);
    g.matmul(dout, vt, dp);
    auto t1 = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, dp, softmax_sum, nullptr, t1);
    auto t2 = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, t1, p, nullptr, t2);
    auto ds = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, t2, scale, nullptr, ds);
    auto dst = g.virt(bf, sd, s.scores_t_strides());
    g.reshape(ds, dst);
    g.matmul(dst, q, dk);

    // dQ = dS K, accumulated in f32, then copied out as bf16. The view of K is
    // left at the intermediate type (f32), as the frontend's reshape_k is.
    auto k = g.virt(f32, s.bhtd(), s.qkv_strides());
    g.reshape(kt, k);
    g.matmul(ds, k, dq_accum);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, nullptr, nullptr, dq);
}

// Plans, keyed by (context, B, T, NH, hd, backward).
using Key = std::tuple<const Context*, int64_t, int64_t, int64_t, int64_t, bool>;
std::mutex g_mutex;
std::map<Key, std::unique_ptr<Plan>> g_plans;

constexpr size_t kAlign = 256;

// The masked scores' value: -inf from cuDNN 9.10, the lowest float before (as
// cudnn_frontend's get_negative_inf_value decides, by the runtime version).
float mask_fill() {
    return cudnnGetVersion() >= 91000 ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::lowest();
}
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void check_supported(const Shape& s, std::initializer_list<const void*> ptrs) {
    // cuDNN's fused attention wants a head size that is a multiple of 8 (16-byte
    // rows) and at most 256 on Hopper (128 on Ampere/Ada for the backward).
    if (s.D % 8 != 0 || s.D > 256)
        bad_input("attention variant 'cudnn': cuDNN's fused attention needs a head size that is a multiple of 8 and at "
                  "most 256 (got " + std::to_string(s.D) + "); use kernels.attention: flash");
    for (const void* p : ptrs)
        if ((reinterpret_cast<uintptr_t>(p) & 15) != 0)
            bad_input("attention variant 'cudnn': tensors must be 16-byte aligned");
}

Plan& get_plan(Context& ctx, const Shape& s, bool backward) {
    const Key key{&ctx, s.B, s.T, s.NH, s.D, backward};
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_plans.find(key);
    if (it != g_plans.end()) return *it->second;
    auto plan = std::make_unique<Plan>();
    GraphBuilder g(*plan);
    if (backward)
        build_backward(g, s);
    else
        build_forward(g, s);
    if (!g.finish(cudnn_handle(ctx))) {
        char detail[512] = {};
        cudnnGetLastErrorString(detail, sizeof detail);
        bad_input(std::string("attention variant 'cudnn': cuDNN ") + std::to_string(cudnnGetVersion()) +
                  " has no fused attention engine for the causal " + (backward ? "backward" : "forward") +
                  " with B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " NH=" + std::to_string(s.NH) +
                  " hd=" + std::to_string(s.D) + (detail[0] ? std::string(" (") + detail + ")" : std::string()) +
                  "; use kernels.attention: flash");
    }
    return *g_plans.emplace(key, std::move(plan)).first->second;
}

void execute(Context& ctx, const Plan& plan, const std::vector<int64_t>& uids, const std::vector<void*>& ptrs,
             void* workspace) {
    cudnnBackendDescriptor_t pack = nullptr;
    GPT_CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack));
    // Destroy the pack on every path, including a failing check.
    struct Guard {
        cudnnBackendDescriptor_t d;
        ~Guard() { cudnnBackendDestroyDescriptor(d); }
    } guard{pack};
    GPT_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                             int64_t(uids.size()), uids.data()));
    GPT_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                             int64_t(ptrs.size()), ptrs.data()));
    GPT_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace));
    GPT_CUDNN_CHECK(cudnnBackendFinalize(pack));
    cudnnHandle_t handle = cudnn_handle(ctx);
    GPT_CUDNN_CHECK(cudnnSetStream(handle, ctx.stream));
    GPT_CUDNN_CHECK(cudnnBackendExecute(handle, plan.plan, pack));
}

}  // namespace

void attention_forward_cudnn(Context& ctx, const AttentionFwd& a) {
    const Shape s{a.B, a.T, a.NH, a.C / a.NH, a.C};
    check_supported(s, {a.out.ptr, a.qkv.ptr, a.lse.ptr});
    Plan& plan = get_plan(ctx, s, false);
    void* ws = ctx.scratch(Context::kCudnn, std::max<size_t>(align_up(size_t(plan.workspace)), kAlign));
    // By-value scalars are read from host memory when the plan executes.
    float scale = 1.f / std::sqrt(float(s.D)), fill = mask_fill();
    auto* qkv = a.qkv.as<__nv_bfloat16>();
    const std::vector<int64_t> uids = {kQ, kKt, kV, kO, kStats, kScale, kMaskFill};
    const std::vector<void*> ptrs = {qkv, qkv + s.C, qkv + 2 * s.C, a.out.ptr, a.lse.ptr, &scale, &fill};
    execute(ctx, plan, uids, ptrs, ws);
}

void attention_backward_cudnn(Context& ctx, const AttentionBwd& a) {
    const Shape s{a.B, a.T, a.NH, a.C / a.NH, a.C};
    check_supported(s, {a.dqkv.ptr, a.dout.ptr, a.qkv.ptr, a.out.ptr, a.lse.ptr});
    Plan& plan = get_plan(ctx, s, true);
    // Workspace: [plan workspace | softmax_sum (B,NH,T) f32 | dQ accumulator (B,NH,T,hd) f32]
    const size_t ws_bytes = align_up(size_t(plan.workspace));
    const size_t sum_bytes = align_up(size_t(s.B * s.NH * s.T) * sizeof(float));
    const size_t acc_bytes = align_up(size_t(s.B * s.NH * s.T * s.D) * sizeof(float));
    char* ws = static_cast<char*>(ctx.scratch(Context::kCudnn, ws_bytes + sum_bytes + acc_bytes));
    float scale = 1.f / std::sqrt(float(s.D)), fill = mask_fill(), one = 1.f;
    auto* qkv = a.qkv.as<__nv_bfloat16>();
    auto* dqkv = a.dqkv.as<__nv_bfloat16>();
    const std::vector<int64_t> uids = {kQ,  kKt, kVt, kO, kDO,    kStats,      kDQ,     kDK,
                                       kDV, kScale, kMaskFill, kOne, kSoftmaxSum, kDQAccum};
    const std::vector<void*> ptrs = {qkv,           qkv + s.C,  qkv + 2 * s.C, a.out.ptr, a.dout.ptr,
                                     a.lse.ptr,     dqkv,       dqkv + s.C,    dqkv + 2 * s.C,
                                     &scale,        &fill,      &one,          ws + ws_bytes,
                                     ws + ws_bytes + sum_bytes};
    // cudnn_frontend memsets the dQ accumulator itself for cuDNN older than
    // 9.6 (from 9.6 the backward engine zero-fills it): do the same here, so a
    // runtime library older than the headers cannot accumulate into garbage.
    if (cudnnGetVersion() < 90600)
        GPT_CUDA_CHECK(cudaMemsetAsync(ws + ws_bytes + sum_bytes, 0, acc_bytes, ctx.stream));
    execute(ctx, plan, uids, ptrs, ws);
}

void attention_cudnn_release(Context& ctx) {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (auto it = g_plans.begin(); it != g_plans.end();) {
        if (std::get<0>(it->first) == &ctx)
            it = g_plans.erase(it);
        else
            ++it;
    }
}

}  // namespace gpt::cuda
