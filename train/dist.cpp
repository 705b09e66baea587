// Rank detection and the communicators declared in train/dist.h: "local"
// (world 1) always, "mpi" (Open MPI over MPI_COMM_WORLD) when the build found
// MPI (GPT_HAVE_MPI).
#include "train/dist.h"

#include "kernels/backend.h"
#include "train/nccl_comm.h"
#include "train/rendezvous.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#ifdef GPT_HAVE_MPI
// The C API only: Open MPI's mpi.h otherwise pulls in the deprecated C++
// bindings, whose symbols live in a library MPI::MPI_C does not link.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace gpt {

namespace {

// An integer environment variable; a non-number or a value outside int is BadInput.
int env_int(const char* name, const char* value) {
    const std::string s = value;
    errno = 0;
    char* end = nullptr;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE || v < INT_MIN || v > INT_MAX)
        bad_input(std::string("environment variable ") + name + "='" + s + "' is not an integer");
    return static_cast<int>(v);
}

}  // namespace

DistEnv detect_dist_env(const GetEnv& getenv_fn) {
    struct Launcher {
        const char* name;
        const char* rank;
        const char* world;
        const char* local_rank;
    };
    // Order is precedence: mpirun inside a Slurm allocation sets both Open MPI's
    // and Slurm's variables, and Open MPI's describe the processes it started.
    // The torchrun names are generic (RANK is set by unrelated tools too), so last.
    const Launcher launchers[] = {
        {"mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
        {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    };
    DistEnv env;
    for (const auto& l : launchers) {
        const char* rank = getenv_fn(l.rank);
        const char* world = getenv_fn(l.world);
        if (!rank && !world) continue;
        if (!rank || !world)
            bad_input(std::string("environment variable ") + (rank ? l.rank : l.world) + " is set but " + (rank ? l.world : l.rank) +
                      " is not: cannot tell this process's place in the " + l.name + " job");
        const char* world_name = l.world;
        // Inside an sbatch script SLURM_NTASKS is the allocation's task count; a
        // job step (srun) also sets SLURM_STEP_NUM_TASKS, the count of the
        // processes actually started, which is the world.
        if (std::strcmp(l.name, "slurm") == 0 && getenv_fn("SLURM_STEP_NUM_TASKS")) {
            world_name = "SLURM_STEP_NUM_TASKS";
            world = getenv_fn(world_name);
        }
        env.launcher = l.name;
        env.rank = env_int(l.rank, rank);
        env.world = env_int(world_name, world);
        const char* local = getenv_fn(l.local_rank);
        env.local_rank = local ? env_int(l.local_rank, local) : 0;
        if (env.world < 1)
            bad_input(std::string("environment variable ") + world_name + "='" + world + "': the world size must be at least 1");
        if (env.rank < 0 || env.rank >= env.world)
            bad_input(std::string("environment variable ") + l.rank + "='" + rank + "' is outside [0, " + world_name + "=" +
                      std::to_string(env.world) + ")");
        if (env.local_rank < 0 || env.local_rank >= env.world)
            bad_input(std::string("environment variable ") + l.local_rank + "='" + local + "' is outside [0, " + world_name + "=" +
                      std::to_string(env.world) + ")");
        if (env.launcher == "torchrun") {
            if (const char* a = getenv_fn("MASTER_ADDR")) env.master_addr = a;
            if (const char* p = getenv_fn("MASTER_PORT")) {
                env.master_port = env_int("MASTER_PORT", p);
                if (env.master_port < 1 || env.master_port > 65535)
                    bad_input(std::string("environment variable MASTER_PORT='") + p + "' is not a port (1..65535)");
            }
        }
        return env;
    }
    return env;
}

DistEnv detect_dist_env() {
    return detect_dist_env([](const char* name) { return static_cast<const char*>(std::getenv(name)); });
}

namespace {

void check_sharded(const char* op, const View& buf, size_t n, int world) {
    if (n % static_cast<size_t>(world) != 0)
        run_failed(std::string(op) + ": " + std::to_string(n) + " elements is not a multiple of the world size " + std::to_string(world));
    if (n > 0 && !buf) run_failed(std::string(op) + ": null buffer for " + std::to_string(n) + " elements");
}

// World 1: every collective leaves the buffer as it is (the sum over one rank).
class LocalCommunicator final : public Communicator {
public:
    std::string name() const override { return "local"; }
    int rank() const override { return 0; }
    int world() const override { return 1; }
    void all_reduce_sum(View, size_t) override {}
    void reduce_scatter_sum(View buf, size_t n) override { check_sharded("reduce_scatter_sum", buf, n, 1); }
    void all_gather(View buf, size_t n) override { check_sharded("all_gather", buf, n, 1); }
    void broadcast(void*, size_t, int root) override {
        if (root != 0) run_failed("broadcast: root " + std::to_string(root) + " is not a rank of a world of 1");
    }
    double all_reduce_sum(double x) override { return x; }
    void barrier() override {}
};

}  // namespace

#ifdef GPT_HAVE_MPI

namespace {

int g_mpi_rank = -1;              // this process's rank once MPI is initialised, for error messages
bool g_mpi_skip_finalize = false;  // an error is unwinding: leave without MPI_Finalize (see MpiRuntime)

std::string mpi_error_string(int code) {
    char buf[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
    return std::string(buf, static_cast<size_t>(len));
}

void mpi_check(int rc, const char* what, const char* file, int line) {
    if (rc == MPI_SUCCESS) return;
    g_mpi_skip_finalize = true;
    run_failed(std::string(what) + " failed on rank " + std::to_string(g_mpi_rank) + ": " + mpi_error_string(rc) + " (" + file + ":" +
               std::to_string(line) + ")");
}

#define MPI_CHECK(call) mpi_check((call), #call, __FILE__, __LINE__)

// MPI_Init_thread once per process, MPI_Finalize once at exit (a function-local
// static is destroyed after main returns). Only the thread that called
// MPI_Init (main) calls MPI; OpenMP threads inside kernels never do, so
// MPI_THREAD_FUNNELED is enough.
//
// When a rank leaves with an error while the others may sit in a collective,
// MPI_Finalize (which synchronises with every rank in Open MPI) would hang it;
// leaving without it instead makes mpirun see a failed rank and stop the job.
struct MpiRuntime {
    bool owns = false;
    MpiRuntime() {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (!initialized) {
            int provided = 0;
            const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
            if (rc != MPI_SUCCESS) run_failed("MPI_Init_thread failed: " + mpi_error_string(rc));
            if (provided < MPI_THREAD_FUNNELED)
                run_failed("MPI_Init_thread: this MPI provides thread level " + std::to_string(provided) +
                           ", below MPI_THREAD_FUNNELED");
            owns = true;
        }
        MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
        MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_mpi_rank));
    }
    ~MpiRuntime() {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (owns && !finalized && !g_mpi_skip_finalize) MPI_Finalize();
    }
};

void mpi_runtime() { static MpiRuntime runtime; }

// Most elements one MPI call moves: counts are int, and Open MPI multiplies a
// count by the world size or the element size in places. GPT_MPI_MAX_COUNT
// lowers it so that tests can exercise the chunked paths on small buffers.
size_t max_count() {
    static const size_t m = [] {
        size_t v = size_t(1) << 30;
        if (const char* s = std::getenv("GPT_MPI_MAX_COUNT")) {
            const int x = env_int("GPT_MPI_MAX_COUNT", s);
            if (x < 1) bad_input(std::string("environment variable GPT_MPI_MAX_COUNT='") + s + "' must be at least 1");
            v = std::min(v, static_cast<size_t>(x));
        }
        return v;
    }();
    return m;
}

// A collective blocks until every rank joins it: a rank that hangs (or dies
// without the launcher noticing) would stall the others forever. The watchdog
// thread ends this rank when one collective has waited longer than the
// timeout; its non-zero exit makes mpirun end the whole job.
class Watchdog {
public:
    Watchdog(double timeout_s, int rank) : timeout_s_(timeout_s), rank_(rank) {
        if (timeout_s_ > 0) thread_ = std::thread([this] { run(); });
    }
    ~Watchdog() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    // Marks one collective as in flight for the lifetime of the guard.
    struct Guard {
        Watchdog& w;
        Guard(Watchdog& wd, const char* op) : w(wd) {
            w.op_ = op;
            w.since_ns_ = now_ns();
        }
        ~Guard() { w.since_ns_ = 0; }
    };

private:
    static int64_t now_ns() {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
    }
    void run() {
        const auto tick = std::chrono::milliseconds(std::clamp<int64_t>(int64_t(timeout_s_ * 100), 10, 1000));
        while (!stop_) {
            std::this_thread::sleep_for(tick);
            const int64_t since = since_ns_;
            if (since != 0 && (now_ns() - since) * 1e-9 > timeout_s_) {
                std::fprintf(stderr,
                             "\ngpt: rank %d: collective %s has not completed after %.0f s (run.dist_timeout_s): another rank has "
                             "died or hung; ending this rank so that the launcher ends the job\n",
                             rank_, op_.load(), timeout_s_);
                std::fflush(stderr);
                std::_Exit(1);
            }
        }
    }
    double timeout_s_;
    int rank_;
    std::atomic<bool> stop_{false};
    std::atomic<int64_t> since_ns_{0};
    std::atomic<const char*> op_{""};
    std::thread thread_;
};

class MpiCommunicator final : public Communicator {
public:
    explicit MpiCommunicator(double timeout_s) {
        mpi_runtime();
        MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
        MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
        watchdog_ = std::make_unique<Watchdog>(timeout_s, rank_);
    }
    ~MpiCommunicator() override {
        if (std::uncaught_exceptions() > 0) g_mpi_skip_finalize = true;
    }
    std::string name() const override { return "mpi"; }
    int rank() const override { return rank_; }
    int world() const override { return world_; }

    void all_reduce_sum(View buf, size_t n) override {
        Watchdog::Guard g(*watchdog_, "all_reduce_sum");
        const MPI_Datatype t = type_of("all_reduce_sum", buf);
        if (n > 0 && !buf) run_failed("all_reduce_sum: null buffer for " + std::to_string(n) + " elements");
        for (size_t off = 0; off < n; off += max_count()) {
            const int c = static_cast<int>(std::min(max_count(), n - off));
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf.at(off).ptr, c, t, MPI_SUM, MPI_COMM_WORLD));
        }
    }

    // Non-blocking all-reduces, one per range (chunked like all_reduce_sum);
    // every rank starts the same ranges in the same order.
    void start_all_reduce_sum(View buf, const std::vector<ParamRange>& ranges) override {
        const MPI_Datatype t = type_of("start_all_reduce_sum", buf);
        for (const auto& r : ranges)
            for (size_t off = 0; off < r.size; off += max_count()) {
                const int c = static_cast<int>(std::min(max_count(), r.size - off));
                pending_.emplace_back();
                MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.at(r.offset + off).ptr, c, t, MPI_SUM, MPI_COMM_WORLD, &pending_.back()));
            }
    }
    void finish_all_reduce() override {
        Watchdog::Guard g(*watchdog_, "all_reduce_sum (gradient buckets)");
        if (!pending_.empty()) MPI_CHECK(MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE));
        pending_.clear();
    }

    void reduce_scatter_sum(View buf, size_t n) override {
        Watchdog::Guard g(*watchdog_, "reduce_scatter_sum");
        const MPI_Datatype t = type_of("reduce_scatter_sum", buf);
        check_sharded("reduce_scatter_sum", buf, n, world_);
        const size_t shard = n / world_;
        if (shard == 0) return;
        if (n <= max_count()) {
            // In place, the whole buffer is the input and the result lands at
            // its start; the contract puts it at this rank's shard.
            MPI_CHECK(MPI_Reduce_scatter_block(MPI_IN_PLACE, buf.ptr, static_cast<int>(shard), t, MPI_SUM, MPI_COMM_WORLD));
            if (rank_ > 0) std::memmove(buf.at(rank_ * shard).ptr, buf.ptr, shard * dtype_size(buf.dtype));
            return;
        }
        // Too large for one call: reduce each rank's shard to that rank, in chunks.
        for (int r = 0; r < world_; r++) {
            for (size_t off = 0; off < shard; off += max_count()) {
                const int c = static_cast<int>(std::min(max_count(), shard - off));
                void* p = buf.at(r * shard + off).ptr;
                MPI_CHECK(MPI_Reduce(r == rank_ ? MPI_IN_PLACE : p, p, c, t, MPI_SUM, r, MPI_COMM_WORLD));
            }
        }
    }

    void all_gather(View buf, size_t n) override {
        Watchdog::Guard g(*watchdog_, "all_gather");
        const MPI_Datatype t = type_of("all_gather", buf);
        check_sharded("all_gather", buf, n, world_);
        const size_t shard = n / world_;
        if (shard == 0) return;
        if (n <= max_count()) {
            MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf.ptr, static_cast<int>(shard), t, MPI_COMM_WORLD));
            return;
        }
        // Too large for one call: each rank broadcasts its shard, in chunks.
        for (int r = 0; r < world_; r++) {
            for (size_t off = 0; off < shard; off += max_count()) {
                const int c = static_cast<int>(std::min(max_count(), shard - off));
                MPI_CHECK(MPI_Bcast(buf.at(r * shard + off).ptr, c, t, r, MPI_COMM_WORLD));
            }
        }
    }

    void broadcast(void* buf, size_t bytes, int root) override {
        Watchdog::Guard g(*watchdog_, "broadcast");
        if (root < 0 || root >= world_)
            run_failed("broadcast: root " + std::to_string(root) + " is not a rank of a world of " + std::to_string(world_));
        if (bytes > 0 && !buf) run_failed("broadcast: null buffer for " + std::to_string(bytes) + " bytes");
        for (size_t off = 0; off < bytes; off += max_count()) {
            const int c = static_cast<int>(std::min(max_count(), bytes - off));
            MPI_CHECK(MPI_Bcast(static_cast<char*>(buf) + off, c, MPI_BYTE, root, MPI_COMM_WORLD));
        }
    }

    double all_reduce_sum(double x) override {
        Watchdog::Guard g(*watchdog_, "all_reduce_sum (scalar)");
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
        return x;
    }

    void barrier() override {
        Watchdog::Guard g(*watchdog_, "barrier");
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    }

private:
    int rank_ = 0, world_ = 1;
    std::unique_ptr<Watchdog> watchdog_;
    std::vector<MPI_Request> pending_;  // started by start_all_reduce_sum

    MPI_Datatype type_of(const char* op, const View& buf) const {
        switch (buf.dtype) {
            case DType::f32: return MPI_FLOAT;
            case DType::f64: return MPI_DOUBLE;
            default:
                run_failed(std::string(op) + ": dtype " + dtype_name(buf.dtype) +
                           " is not supported by the MPI communicator (CPU buffers are f32 or f64)");
        }
    }
};

}  // namespace

bool have_mpi() { return true; }

#else

bool have_mpi() { return false; }

#endif

std::unique_ptr<Communicator> make_communicator(const DistEnv& env, double timeout_s, Backend* backend) {
    // A launched CUDA job uses NCCL even with one rank (torchrun
    // --nproc-per-node 1, gpt launch -n 1), so that path runs on one GPU too.
    const bool nccl_job = backend && backend->name() == "cuda" && env.launcher != "none";
    if (env.world <= 1 && !nccl_job) return std::make_unique<LocalCommunicator>();
    const std::string where =
        "rank " + std::to_string(env.rank) + " of " + std::to_string(env.world) + " (from the " + env.launcher + " environment)";
    if (backend && backend->name() == "cuda") {
#if GPT_HAVE_NCCL
        // NCCL moves the device buffers; the unique id travels over MPI when
        // MPI started us, else over the TCP rendezvous (torchrun).
        std::unique_ptr<Communicator> host;
        std::string id;
        if (env.launcher != "torchrun" && have_mpi()) {
#ifdef GPT_HAVE_MPI
            host = std::make_unique<MpiCommunicator>(timeout_s);
#endif
            id = env.rank == 0 ? nccl_unique_id() : std::string(nccl_id_bytes(), '\0');
            host->broadcast(id.data(), id.size(), 0);
        } else {
            if (env.launcher != "torchrun")
                bad_input(where + ": this build has no MPI to pass NCCL's unique id; launch with torchrun (MASTER_ADDR, MASTER_PORT) "
                                  "or rebuild with Open MPI");
            id = rendezvous_broadcast(env, env.rank == 0 ? nccl_unique_id() : std::string(), timeout_s);
        }
        return make_nccl_communicator(env, id, *backend, timeout_s, std::move(host));
#else
        bad_input(where + " with the CUDA backend, but this build of gpt has no NCCL (libnccl-dev) : rebuild with NCCL");
#endif
    }
    if (env.launcher == "torchrun")
        bad_input(where + ": torchrun-style variables (RANK, WORLD_SIZE), but the CPU backend's transport is MPI: launch with mpirun -np " +
                  std::to_string(env.world) + " or gpt launch -n " + std::to_string(env.world) + " instead");
    if (!have_mpi())
        bad_input(where + ", but this build of gpt has no MPI: install Open MPI (apt-get install libopenmpi-dev openmpi-bin; "
                          "tools/bootstrap does) and rebuild");
#ifdef GPT_HAVE_MPI
    auto comm = std::make_unique<MpiCommunicator>(timeout_s);
    if (comm->rank() != env.rank || comm->world() != env.world) {
        std::string hint = env.launcher == "slurm" ? ": srun did not start MPI (use srun --mpi=pmix, or mpirun)" : "";
        run_failed("the " + env.launcher + " environment says rank " + std::to_string(env.rank) + " of " + std::to_string(env.world) +
                   " but MPI_COMM_WORLD has rank " + std::to_string(comm->rank()) + " of " + std::to_string(comm->world()) + hint);
    }
    return comm;
#else
    return nullptr;
#endif
}

}  // namespace gpt
