// A TCP rendezvous for jobs launched without MPI (torchrun): rank 0 hands every
// other rank a small blob, the NCCL unique id that ncclCommInitRank needs on
// every rank before any collective can run.
//
// Rank 0 listens on MASTER_ADDR:MASTER_PORT; every other rank connects (retrying
// until the deadline, since rank 0 may start later), says who it is, and waits.
// Once all world-1 ranks have checked in, rank 0 sends each the blob. Until then
// nobody receives anything, so when one rank is missing or misconfigured every
// connected rank gets the same error instead of half the job going on into a
// communicator init that would hang.
//
// The wire format (all integers u32, big-endian):
//   hello  (rank r -> rank 0): magic "GPTR", version, world size, r
//   reply  (rank 0 -> rank r): magic "GPTR", version, status, length, then
//          length bytes: the blob (status 0) or rank 0's error message (status 1)
#pragma once

#include <string>

#include "train/dist.h"

namespace gpt {

// Returns blob_on_rank0 on every rank (the argument is ignored on ranks > 0).
// World 1 returns it without touching the network. timeout_s bounds the whole
// exchange on each rank; 0 waits forever.
//
// Throws BadInput for an unusable environment (MASTER_ADDR unset or not
// resolvable, MASTER_PORT outside 1..65535, rank outside the world) and
// RunFailed, naming the rank(s) and the address, for a timeout ("rank 0 waited
// 30 s for ranks 2, 3 at 127.0.0.1:29500"), a peer that does not fit this job
// (another job on the same port, a different world size, a rank twice) or a
// socket error.
std::string rendezvous_broadcast(const DistEnv& env, const std::string& blob_on_rank0, double timeout_s);

}  // namespace gpt
