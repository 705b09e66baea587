// The NCCL communicator: collectives on the CUDA backend's device buffers,
// enqueued on the backend's stream so they run in order with the kernels.
//
// Every rank needs the same NCCL unique id before ncclCommInitRank; rank 0
// makes it (nccl_unique_id) and the caller hands it to the others, through
// MPI when MPI launched the job, else through the TCP rendezvous on
// MASTER_ADDR:MASTER_PORT (torchrun). See make_communicator in train/dist.cpp.
#pragma once

#include <memory>
#include <string>

#include "train/dist.h"

namespace gpt {

class Backend;

#if GPT_HAVE_NCCL
// A fresh unique id as bytes (call on rank 0 only), and its size.
std::string nccl_unique_id();
size_t nccl_id_bytes();

// A communicator over NCCL for the backend's device and stream (the backend
// must outlive it). Host-side
// broadcasts go through `host` when given (MPI), else through the device.
// A collective that has not completed after timeout_s (0 = never) aborts the
// NCCL communicator and ends the process with a message naming the rank and
// the collective, so that the launcher ends the job instead of hanging.
std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, const std::string& unique_id, Backend& backend,
                                                     double timeout_s, std::unique_ptr<Communicator> host);
#endif

}  // namespace gpt
