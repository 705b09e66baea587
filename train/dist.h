// Multi-process training: who we are (rank detection from the launcher's
// environment) and how ranks talk (a Communicator over the backend's buffers).
//
// Implementations: "local" (world size 1, every collective is the identity),
// "mpi" (Open MPI, for the CPU backend: multi-process training is real and
// testable without GPUs), and "nccl" (the CUDA backend, train/nccl_comm.cpp).
// Collectives work in place on backend memory described by a View (f32 or f64
// on the CPU, bf16/f32 device memory under NCCL).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace gpt {

class Backend;

// Where this process sits in the job, read from the launcher's variables:
//   Open MPI  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK
//   Slurm     SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
//   torchrun  RANK / WORLD_SIZE / LOCAL_RANK (+ MASTER_ADDR, MASTER_PORT)
// Without any of them: rank 0 of 1. Inconsistent values (rank >= world,
// world < 1, a non-number) are BadInput naming the variable.
struct DistEnv {
    int rank = 0;
    int world = 1;
    int local_rank = 0;
    std::string launcher = "none";  // none | mpi | slurm | torchrun
    std::string master_addr;        // torchrun only
    int master_port = 0;
};

using GetEnv = std::function<const char*(const char*)>;
DistEnv detect_dist_env(const GetEnv& getenv_fn);
DistEnv detect_dist_env();  // from the process environment

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual std::string name() const = 0;  // "local", "mpi"
    virtual int rank() const = 0;
    virtual int world() const = 0;

    // buf (n elements) <- sum over ranks of buf. In place.
    virtual void all_reduce_sum(View buf, size_t n) = 0;
    // buf holds n elements, n a multiple of world(); afterwards this rank's
    // shard buf[rank*n/world, (rank+1)*n/world) holds the sum over ranks of that
    // shard (the rest of buf is unspecified). In place.
    virtual void reduce_scatter_sum(View buf, size_t n) = 0;
    // buf holds n elements, n a multiple of world(); every rank's shard is
    // copied to every other rank. In place.
    virtual void all_gather(View buf, size_t n) = 0;
    // Bucketed gradient reduction that overlaps the backward pass: starts
    // summing over ranks the given ranges of buf (elements [offset, offset +
    // size), already final on this rank) and returns at once;
    // finish_all_reduce waits for every range started. The result equals
    // all_reduce_sum on those ranges. Default: synchronous.
    virtual void start_all_reduce_sum(View buf, const std::vector<ParamRange>& ranges) {
        for (const auto& r : ranges) all_reduce_sum(buf.at(r.offset), r.size);
    }
    virtual void finish_all_reduce() {}
    virtual void broadcast(void* buf, size_t bytes, int root) = 0;
    virtual double all_reduce_sum(double x) = 0;  // a scalar (loss, norm^2)
    virtual void barrier() = 0;
};

// The communicator for an environment and backend: "local" when world == 1;
// for the CUDA backend NCCL, its unique id passed through MPI when MPI
// launched us (mpirun, gpt launch, srun with PMIx) or else through the TCP
// rendezvous on MASTER_ADDR:MASTER_PORT (torchrun); for the CPU backend MPI.
// Throws BadInput when the job needs a transport this build or launch does
// not provide (e.g. torchrun variables with the CPU backend, which uses MPI:
// launch with mpirun or gpt launch).
// A collective that waits longer than timeout_s (0 = never) ends this rank
// with a message naming it and the collective, so a hung or dead rank cannot
// stall the job forever (run.dist_timeout_s).
std::unique_ptr<Communicator> make_communicator(const DistEnv& env, double timeout_s = 600, Backend* backend = nullptr);

// True when this build includes the MPI communicator.
bool have_mpi();

}  // namespace gpt
