// OpenMP's waiting policy: passive unless the user chose.
//
// Why: with no OMP_WAIT_POLICY, libgomp's idle threads spin for 300,000
// iterations (GOMP_SPINCOUNT) at every barrier before they sleep. On a machine
// whose cores are busy with other jobs, a spinning thread takes a core from
// the thread it waits for, and the CPU backend's steps got several times
// slower (issue 10; tools/bench-busy measures it). Passive waiting (sleep on
// a futex at once) costs a wake-up per parallel region on an idle machine,
// which the same benchmark shows to be small.
//
// How: libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, in its library
// constructor, before main() and before any constructor of this executable,
// so a setenv() in main() comes too late. The loader's order is:
//   1. the executable's .preinit_array, with the process's environment array
//      (envp, on the stack) as its third argument;
//   2. the shared libraries' constructors: libc first, which installs envp as
//      `environ` (so a setenv() in step 1, which builds a new array, is lost),
//      then libgomp and the others, which read `environ`;
//   3. the executable's constructors, then main().
// So in step 1 we lend one entry of envp itself to "OMP_WAIT_POLICY=passive"
// (an entry of a variable no library reads while starting: `_`, which shells
// set to the command's path, by preference), and in step 3, first of all
// constructors, we put the entry back. From main() on, the environment is
// exactly the one the user gave; libgomp has read passive. Nothing is
// re-executed and nothing is allocated.
//
// When there is no entry to lend (an empty environment, or only variables
// that the libraries might read), main() calls apply_omp_wait_default(),
// which re-executes the program once with OMP_WAIT_POLICY=passive and
// GPT_OMP_DEFAULTS=1 set (the marker stops a second exec; children inherit
// both). That costs a second start-up (loading the CUDA libraries takes
// about half a second of CPU), hence the lending.
#include "kernels/cpu/omp_env.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

extern char** environ;

namespace gpt {

namespace {

constexpr const char* kMarker = "GPT_OMP_DEFAULTS";
char kPassive[] = "OMP_WAIT_POLICY=passive";

// What the pre-init function did. Plain data set before any constructor, so
// no C++ initialisation (which comes later) resets it.
enum class Wait { not_seen, lent, user_policy, user_spincount, no_slot };
Wait g_wait = Wait::not_seen;
char** g_envp = nullptr;    // the array a slot was lent from
int g_slot = -1;            // its index
char* g_original = nullptr; // the entry it held

bool starts_with(const char* s, const char* prefix) { return std::strncmp(s, prefix, std::strlen(prefix)) == 0; }

// Variables a library of this program may read while it starts (OpenMP,
// OpenBLAS, CUDA and its libraries, Open MPI and hwloc, the loader, libc's
// locale and time zone): never lent.
bool libraries_may_read(const char* entry) {
    static const char* const prefixes[] = {"OMP_",   "GOMP_", "KMP_",   "OPENBLAS_", "GOTO", "CUDA",  "CUBLAS", "CUDNN", "NCCL_",
                                           "NVIDIA", "OMPI_", "OPAL_",  "PMIX_",     "ORTE", "HWLOC", "EVENT_", "LD_",   "MALLOC",
                                           "GLIBC",  "LC_",   "LANG",   "TZ",        "TMP",  "HOME=", "PATH=",  "GPT_",  "POSIXLY"};
    for (const char* p : prefixes)
        if (starts_with(entry, p)) return true;
    return false;
}

void lend_a_slot_to_the_wait_policy(int, char**, char** envp) {
    if (!envp) return;
    int n = 0, underscore = -1, other = -1;
    for (; envp[n]; n++) {
        if (starts_with(envp[n], "OMP_WAIT_POLICY=")) g_wait = Wait::user_policy;
        if (starts_with(envp[n], "GOMP_SPINCOUNT=") && g_wait != Wait::user_policy) g_wait = Wait::user_spincount;
        if (starts_with(envp[n], "_=")) underscore = n;
        else if (other < 0 && !libraries_may_read(envp[n])) other = n;
    }
    if (g_wait != Wait::not_seen) return;
    const int slot = underscore >= 0 ? underscore : other;
    if (slot < 0) {
        g_wait = Wait::no_slot;
        return;
    }
    g_envp = envp;
    g_slot = slot;
    g_original = envp[slot];
    envp[slot] = kPassive;
    g_wait = Wait::lent;
}

// The entry goes back before anything of this executable reads the
// environment. A library may have copied the array meanwhile (setenv builds
// a new one): then the lent pointer is found and replaced there.
__attribute__((constructor(101))) void give_the_slot_back() {
    if (g_wait != Wait::lent) return;
    if (g_envp[g_slot] == kPassive) g_envp[g_slot] = g_original;
    if (environ != g_envp && environ)
        for (char** e = environ; *e; e++)
            if (*e == kPassive) *e = g_original;
}

__attribute__((section(".preinit_array"), used)) void (*const g_preinit)(int, char**, char**) = lend_a_slot_to_the_wait_policy;

}  // namespace

void apply_omp_wait_default(char** argv) {
    if (g_wait == Wait::lent || std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT") || std::getenv(kMarker)) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0 || setenv(kMarker, "1", 1) != 0) return;
    execv("/proc/self/exe", argv);
    // No procfs, or exec refused: go on with libgomp's default (omp_wait_note says so).
    unsetenv("OMP_WAIT_POLICY");
    unsetenv(kMarker);
}

std::string omp_wait_note() {
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    const char* spin = std::getenv("GOMP_SPINCOUNT");
    if (g_wait == Wait::lent) return "OMP_WAIT_POLICY=passive (gpt's default)";
    if (policy && std::getenv(kMarker) && std::strcmp(policy, "passive") == 0 && !spin) return "OMP_WAIT_POLICY=passive (gpt's default)";
    std::string note;
    if (policy) note = std::string("OMP_WAIT_POLICY=") + policy;
    if (spin) note += (note.empty() ? "" : " ") + std::string("GOMP_SPINCOUNT=") + spin;
    if (!note.empty()) return note + " (from the environment)";
    return "OpenMP threads spin before they sleep (libgomp's default: gpt's passive default was not applied)";
}

}  // namespace gpt
