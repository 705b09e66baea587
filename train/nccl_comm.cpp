#include "train/nccl_comm.h"

#if GPT_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels/backend.h"

namespace gpt {

namespace {

void nccl_check(ncclResult_t r, const char* what, int rank) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    run_failed("rank " + std::to_string(rank) + ": " + what + " failed: " + ncclGetErrorString(r) +
               (r == ncclSystemError || r == ncclRemoteError ? " (a peer rank may have died; NCCL_DEBUG=WARN tells more)" : ""));
}

void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) run_failed(std::string(what) + " failed: " + cudaGetErrorString(e));
}

ncclDataType_t nccl_type(DType t) {
    switch (t) {
        case DType::f32: return ncclFloat32;
        case DType::f64: return ncclFloat64;
        case DType::bf16: return ncclBfloat16;
    }
    return ncclFloat32;
}

class NcclCommunicator final : public Communicator {
public:
    NcclCommunicator(const DistEnv& env, const std::string& id, Backend& be, double timeout_s, std::unique_ptr<Communicator> host)
        : rank_(env.rank), world_(env.world), timeout_s_(timeout_s), host_(std::move(host)) {
        be_ = &be;
        // Collectives run on their own stream, after the compute stream's work
        // so far (an event), so that bucketed gradient reductions overlap the
        // rest of the backward pass. One stream for every NCCL call keeps them
        // in issue order, the same on every rank.
        int lo = 0, hi = 0;
        cuda_check(cudaDeviceGetStreamPriorityRange(&lo, &hi), "cudaDeviceGetStreamPriorityRange");
        cuda_check(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, hi), "cudaStreamCreateWithPriority");
        cuda_check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
        if (id.size() != sizeof(ncclUniqueId)) run_failed("NCCL unique id has " + std::to_string(id.size()) + " bytes, expected " +
                                                          std::to_string(sizeof(ncclUniqueId)));
        ncclUniqueId uid;
        std::memcpy(&uid, id.data(), sizeof uid);
        // A blocking communicator (every call returns when enqueued), whose
        // init waits for all ranks: a rank that never joins would hang it, so
        // a watchdog ends this rank with a message after the timeout.
        {
            std::atomic<bool> done{false};
            std::thread watchdog([&] {
                const auto t0 = std::chrono::steady_clock::now();
                while (!done) {
                    std::this_thread::sleep_for(std::chrono::milliseconds(100));
                    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    if (timeout_s_ > 0 && waited > timeout_s_ && !done) {
                        std::fprintf(stderr,
                                     "\ngpt: rank %d: ncclCommInitRank has not completed after %.0f s (run.dist_timeout_s): another rank "
                                     "is missing or cannot reach this one; ending this rank\n",
                                     rank_, timeout_s_);
                        std::fflush(stderr);
                        std::_Exit(1);
                    }
                }
            });
            const ncclResult_t r = ncclCommInitRank(&comm_, world_, uid, rank_);
            done = true;
            watchdog.join();
            nccl_check(r, "ncclCommInitRank", rank_);
        }
        cuda_check(cudaMalloc(&scalar_, 64), "cudaMalloc (NCCL scalar buffer)");
    }
    ~NcclCommunicator() override {
        if (scalar_) cudaFree(scalar_);
        if (ready_) cudaEventDestroy(ready_);
        if (comm_stream_) cudaStreamDestroy(comm_stream_);
        if (comm_) {
            if (std::uncaught_exceptions() > 0) ncclCommAbort(comm_);
            else ncclCommDestroy(comm_);
        }
    }
    std::string name() const override { return "nccl"; }
    int rank() const override { return rank_; }
    int world() const override { return world_; }

    void all_reduce_sum(View buf, size_t n) override {
        after_compute();
        nccl_check(ncclAllReduce(buf.ptr, buf.ptr, n, nccl_type(buf.dtype), ncclSum, comm_, comm_stream_), "ncclAllReduce", rank_);
        wait_stream("all_reduce_sum");
    }
    void start_all_reduce_sum(View buf, const std::vector<ParamRange>& ranges) override {
        after_compute();
        nccl_check(ncclGroupStart(), "ncclGroupStart", rank_);
        for (const auto& r : ranges)
            nccl_check(ncclAllReduce(buf.at(r.offset).ptr, buf.at(r.offset).ptr, r.size, nccl_type(buf.dtype), ncclSum, comm_, comm_stream_),
                       "ncclAllReduce", rank_);
        nccl_check(ncclGroupEnd(), "ncclGroupEnd", rank_);
    }
    void finish_all_reduce() override { wait_stream("all_reduce_sum (gradient buckets)"); }
    void reduce_scatter_sum(View buf, size_t n) override {
        const size_t shard = n / world_;
        after_compute();
        // In place: NCCL's recvbuff may be sendbuff + rank * recvcount.
        nccl_check(ncclReduceScatter(buf.ptr, buf.at(size_t(rank_) * shard).ptr, shard, nccl_type(buf.dtype), ncclSum, comm_, comm_stream_),
                   "ncclReduceScatter", rank_);
        wait_stream("reduce_scatter_sum");
    }
    void all_gather(View buf, size_t n) override {
        const size_t shard = n / world_;
        after_compute();
        nccl_check(ncclAllGather(buf.at(size_t(rank_) * shard).ptr, buf.ptr, shard, nccl_type(buf.dtype), comm_, comm_stream_),
                   "ncclAllGather", rank_);
        wait_stream("all_gather");
    }
    // buf is host memory (the config hash, small control values).
    void broadcast(void* buf, size_t bytes, int root) override {
        if (host_) return host_->broadcast(buf, bytes, root);
        for (size_t off = 0; off < bytes; off += 64) {
            const size_t len = std::min<size_t>(64, bytes - off);
            cuda_check(cudaMemcpyAsync(scalar_, static_cast<char*>(buf) + off, len, cudaMemcpyHostToDevice, comm_stream_), "cudaMemcpyAsync");
            nccl_check(ncclBroadcast(scalar_, scalar_, len, ncclUint8, root, comm_, comm_stream_), "ncclBroadcast", rank_);
            cuda_check(cudaMemcpyAsync(static_cast<char*>(buf) + off, scalar_, len, cudaMemcpyDeviceToHost, comm_stream_), "cudaMemcpyAsync");
            wait_stream("broadcast");
        }
    }
    double all_reduce_sum(double x) override {
        cuda_check(cudaMemcpyAsync(scalar_, &x, sizeof x, cudaMemcpyHostToDevice, comm_stream_), "cudaMemcpyAsync");
        nccl_check(ncclAllReduce(scalar_, scalar_, 1, ncclFloat64, ncclSum, comm_, comm_stream_), "ncclAllReduce", rank_);
        cuda_check(cudaMemcpyAsync(&x, scalar_, sizeof x, cudaMemcpyDeviceToHost, comm_stream_), "cudaMemcpyAsync");
        wait_stream("all_reduce_sum(scalar)");
        return x;
    }
    void barrier() override { all_reduce_sum(0.0); }

private:
    // The collective enqueued next must see every kernel enqueued so far:
    // native_stream() first joins any work the backend has on other streams
    // (the weight gradients of kernels.matmul.dw_stream).
    void after_compute() {
        cuda_check(cudaEventRecord(ready_, static_cast<cudaStream_t>(be_->native_stream())), "cudaEventRecord");
        cuda_check(cudaStreamWaitEvent(comm_stream_, ready_, 0), "cudaStreamWaitEvent");
    }
    // Waits for the collectives' stream while watching NCCL's asynchronous error state and
    // the clock: a dead or hung peer never completes the collective.
    void wait_stream(const char* op) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int spin = 0;; spin++) {
            const cudaError_t e = cudaStreamQuery(comm_stream_);
            if (e == cudaSuccess) return;
            if (e != cudaErrorNotReady) cuda_check(e, op);
            check_async(op, t0, spin);
        }
    }
    void check_async(const char* op, std::chrono::steady_clock::time_point t0, int spin) {
        ncclResult_t st = ncclSuccess;
        ncclCommGetAsyncError(comm_, &st);
        if (st != ncclSuccess && st != ncclInProgress) {
            ncclCommAbort(comm_);
            comm_ = nullptr;
            nccl_check(st, op, rank_);
        }
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (timeout_s_ > 0 && waited > timeout_s_) {
            std::fprintf(stderr,
                         "\ngpt: rank %d: NCCL collective %s has not completed after %.0f s (run.dist_timeout_s): another rank has "
                         "died or hung; aborting NCCL and ending this rank so that the launcher ends the job\n",
                         rank_, op, timeout_s_);
            std::fflush(stderr);
            ncclCommAbort(comm_);
            std::_Exit(1);
        }
        // Spin briefly (collectives of a step take microseconds to milliseconds), then yield the core.
        if (spin > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }

    int rank_, world_;
    double timeout_s_;
    std::unique_ptr<Communicator> host_;
    Backend* be_ = nullptr;               // its compute stream: be_->native_stream()
    cudaStream_t comm_stream_ = nullptr;  // every NCCL call, in issue order
    cudaEvent_t ready_ = nullptr;
    ncclComm_t comm_ = nullptr;
    void* scalar_ = nullptr;
};

}  // namespace

std::string nccl_unique_id() {
    ncclUniqueId id;
    nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId", 0);
    return std::string(reinterpret_cast<const char*>(&id), sizeof id);
}

size_t nccl_id_bytes() { return sizeof(ncclUniqueId); }

std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, const std::string& unique_id, Backend& backend,
                                                     double timeout_s, std::unique_ptr<Communicator> host) {
    return std::make_unique<NcclCommunicator>(env, unique_id, backend, timeout_s, std::move(host));
}

}  // namespace gpt

#endif  // GPT_HAVE_NCCL
