// OpenMP's waiting policy for the CPU backend, chosen before libgomp starts
// (see omp_env.cpp).
#pragma once

#include <string>

namespace gpt {

// Called first thing in main(). When the user set neither OMP_WAIT_POLICY nor
// GOMP_SPINCOUNT, re-executes this program (/proc/self/exe, same arguments)
// once with OMP_WAIT_POLICY=passive and GPT_OMP_DEFAULTS=1 added to its
// environment, and does not return; otherwise, or if that exec fails, returns
// and the process goes on as it is.
void apply_omp_wait_default(char** argv);

// How this process's OpenMP threads wait, for the start-up line:
// "OMP_WAIT_POLICY=passive (gpt's default)", the user's OMP_WAIT_POLICY or
// GOMP_SPINCOUNT, or libgomp's own default.
std::string omp_wait_note();

}  // namespace gpt
