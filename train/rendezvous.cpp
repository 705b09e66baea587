// The TCP rendezvous declared in train/rendezvous.h, on plain POSIX sockets.
//
// Every socket is non-blocking and every wait is a poll() bounded by the one
// deadline, so no step (accept, connect, read, write) can outlive timeout_s.
// Sends use MSG_NOSIGNAL: a peer that vanished is an error to report, not a
// SIGPIPE that kills the process before it can say which rank it was.
#include "train/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/error.h"

namespace gpt {

namespace {

constexpr uint32_t kMagic = 0x47505452;  // "GPTR"
constexpr uint32_t kVersion = 1;
constexpr size_t kHelloBytes = 16;   // magic, version, world, rank
constexpr size_t kHeaderBytes = 16;  // magic, version, status, length
constexpr uint32_t kAccepted = 0;
constexpr uint32_t kRejected = 1;
// A peer refuses a longer reply: whatever sent it is not our rank 0, and a
// garbage length must not become a huge allocation. The NCCL id is 128 bytes.
constexpr uint32_t kMaxPayload = 1u << 20;
// Longest single connect attempt: with several addresses for MASTER_ADDR (IPv6
// and IPv4), one that silently drops packets must not use up the whole deadline.
constexpr int kConnectAttemptMs = 2000;

using Clock = std::chrono::steady_clock;

class Deadline {
public:
    explicit Deadline(double seconds)
        : infinite_(seconds <= 0 || seconds > 1e9),
          end_(infinite_ ? Clock::time_point::max()
                         : Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds))) {}
    bool passed() const { return !infinite_ && Clock::now() >= end_; }
    // Milliseconds for poll(): -1 (forever) without a deadline, otherwise the
    // time left rounded up (so a sub-millisecond remainder does not spin),
    // capped at cap_ms when that is >= 0.
    int poll_ms(int cap_ms = -1) const {
        if (infinite_) return cap_ms;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(end_ - Clock::now()).count();
        const long long ms = std::max<long long>(0, left);
        return static_cast<int>(cap_ms >= 0 ? std::min<long long>(ms, cap_ms) : std::min<long long>(ms, 1 << 30));
    }

private:
    bool infinite_;
    Clock::time_point end_;
};

// An owned file descriptor.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }
    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
};

std::string errno_text(int err) { return std::strerror(err); }

std::string seconds_text(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", s);
    return buf;
}

// "rank 2", "ranks 2, 3", "ranks 1-5, 9": a world of thousands stays one line.
std::string ranks_text(const std::vector<int>& ranks) {
    std::string out = ranks.size() == 1 ? "rank " : "ranks ";
    for (size_t i = 0; i < ranks.size();) {
        size_t j = i;
        while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
        if (i > 0) out += ", ";
        if (j - i >= 2) {
            out += std::to_string(ranks[i]) + "-" + std::to_string(ranks[j]);
        } else {
            out += std::to_string(ranks[i]);
            if (j > i) out += ", " + std::to_string(ranks[j]);
        }
        i = j + 1;
    }
    return out;
}

void put_u32(unsigned char* p, uint32_t v) {
    const uint32_t be = htonl(v);
    std::memcpy(p, &be, 4);
}

uint32_t get_u32(const unsigned char* p) {
    uint32_t be = 0;
    std::memcpy(&be, p, 4);
    return ntohl(be);
}

// Waits until fd is ready for events; false when the deadline (or cap_ms)
// passes first. EINTR restarts the wait with the time that is left.
bool wait_ready(int fd, short events, const Deadline& dl, int cap_ms = -1) {
    for (;;) {
        pollfd p{fd, events, 0};
        const int rc = ::poll(&p, 1, dl.poll_ms(cap_ms));
        if (rc > 0) return true;  // ready, or an error/hangup the next call reports
        if (rc == 0) return false;
        if (errno != EINTR) run_failed("rendezvous: poll failed: " + errno_text(errno));
    }
}

enum class Io { Ok, Closed, TimedOut, Failed };  // Failed leaves errno set

// Writes all n bytes, however many calls it takes.
Io write_all(int fd, const void* data, size_t n, const Deadline& dl) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= static_cast<size_t>(k);
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fd, POLLOUT, dl)) return Io::TimedOut;
        } else {
            return Io::Failed;
        }
    }
    return Io::Ok;
}

// Reads exactly n bytes; Closed when the other side closes first.
Io read_exact(int fd, void* data, size_t n, const Deadline& dl) {
    char* p = static_cast<char*>(data);
    while (n > 0) {
        const ssize_t k = ::recv(fd, p, n, 0);
        if (k > 0) {
            p += k;
            n -= static_cast<size_t>(k);
        } else if (k == 0) {
            return Io::Closed;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!wait_ready(fd, POLLIN, dl)) return Io::TimedOut;
        } else {
            return Io::Failed;
        }
    }
    return Io::Ok;
}

struct AddrInfoFree {
    void operator()(addrinfo* a) const { ::freeaddrinfo(a); }
};
using AddrList = std::unique_ptr<addrinfo, AddrInfoFree>;

// "127.0.0.1:29500", "[::1]:29500": how messages name the rendezvous point.
std::string endpoint_text(const DistEnv& env) {
    const bool v6_literal = env.master_addr.find(':') != std::string::npos;
    return (v6_literal ? "[" + env.master_addr + "]" : env.master_addr) + ":" + std::to_string(env.master_port);
}

AddrList resolve(const DistEnv& env) {
    if (env.master_addr.empty())
        bad_input("rendezvous: MASTER_ADDR is not set: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world) +
                  " needs the address of rank 0 (set MASTER_ADDR and MASTER_PORT, as torchrun does)");
    if (env.master_port < 1 || env.master_port > 65535)
        bad_input("rendezvous: MASTER_PORT=" + std::to_string(env.master_port) + " is not a port (1..65535)");
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* list = nullptr;
    const std::string port = std::to_string(env.master_port);
    int rc = 0;
    do {
        rc = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &list);
    } while (rc == EAI_SYSTEM && errno == EINTR);
    if (rc != 0)
        bad_input("rendezvous: cannot resolve MASTER_ADDR='" + env.master_addr +
                  "': " + (rc == EAI_SYSTEM ? errno_text(errno) : std::string(::gai_strerror(rc))));
    return AddrList(list);
}

bool is_loopback(const sockaddr* sa) {
    if (sa->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

// A listening socket on addr, or an invalid Fd with err set.
Fd listen_on(const sockaddr* addr, socklen_t len, bool dual_stack, int& err) {
    Fd s(::socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!s.valid()) {
        err = errno;
        return Fd();
    }
    // A job restarted on the same port must not wait out the previous run's
    // TIME_WAIT connections.
    const int one = 1;
    ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr->sa_family == AF_INET6) {
        const int v6only = dual_stack ? 0 : 1;
        ::setsockopt(s.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    }
    if (::bind(s.get(), addr, len) != 0 || ::listen(s.get(), SOMAXCONN) != 0) {
        err = errno;
        return Fd();
    }
    return s;
}

// Rank 0's listeners. When MASTER_ADDR names this machine's loopback (a
// single-node job) we listen only there, on each of its addresses ("localhost"
// can be both ::1 and 127.0.0.1). Otherwise we listen on every interface, as
// torchrun's own store does: MASTER_ADDR is how the other nodes reach us, and
// the node's own name may resolve to an address they cannot use (Debian maps
// the hostname to 127.0.1.1).
std::vector<Fd> open_listeners(const DistEnv& env, const addrinfo* list) {
    const std::string where = endpoint_text(env);
    bool all_loopback = true;
    for (const addrinfo* a = list; a; a = a->ai_next) all_loopback = all_loopback && is_loopback(a->ai_addr);
    std::vector<Fd> out;
    int err = 0;
    if (all_loopback) {
        for (const addrinfo* a = list; a; a = a->ai_next) {
            Fd s = listen_on(a->ai_addr, a->ai_addrlen, false, err);
            if (s.valid()) {
                out.push_back(std::move(s));
            } else if (err != EADDRNOTAVAIL && err != EAFNOSUPPORT) {
                // Anything but "this machine has no such address" (IPv6 turned
                // off) would leave peers that try this address talking to
                // whatever holds it.
                run_failed("rendezvous: rank 0 cannot listen on " + where + ": " + errno_text(err));
            }
        }
    } else {
        sockaddr_in6 any6{};
        any6.sin6_family = AF_INET6;
        any6.sin6_addr = in6addr_any;
        any6.sin6_port = htons(static_cast<uint16_t>(env.master_port));
        Fd s = listen_on(reinterpret_cast<const sockaddr*>(&any6), sizeof any6, true, err);
        if (!s.valid() && (err == EAFNOSUPPORT || err == EADDRNOTAVAIL)) {
            sockaddr_in any4{};
            any4.sin_family = AF_INET;
            any4.sin_addr.s_addr = htonl(INADDR_ANY);
            any4.sin_port = htons(static_cast<uint16_t>(env.master_port));
            s = listen_on(reinterpret_cast<const sockaddr*>(&any4), sizeof any4, false, err);
        }
        if (s.valid()) out.push_back(std::move(s));
    }
    if (out.empty())
        run_failed("rendezvous: rank 0 cannot listen on port " + std::to_string(env.master_port) + " for " + where + ": " +
                   errno_text(err));
    return out;
}

// The reply frame: header, then the blob or the error message.
std::string reply_frame(uint32_t status, const std::string& payload) {
    std::string f(kHeaderBytes, '\0');
    auto* p = reinterpret_cast<unsigned char*>(f.data());
    put_u32(p, kMagic);
    put_u32(p + 4, kVersion);
    put_u32(p + 8, status);
    put_u32(p + 12, static_cast<uint32_t>(payload.size()));
    return f + payload;
}

std::string rank0(const DistEnv& env, const std::string& blob, double timeout_s) {
    const Deadline dl(timeout_s);
    const std::string where = endpoint_text(env);
    if (blob.size() > kMaxPayload)
        bad_input("rendezvous: the blob is " + std::to_string(blob.size()) + " bytes, more than the " + std::to_string(kMaxPayload) +
                  " a peer accepts");
    const AddrList addrs = resolve(env);
    const std::vector<Fd> listeners = open_listeners(env, addrs.get());

    // A connection whose hello is still arriving.
    struct Pending {
        Fd fd;
        unsigned char hello[kHelloBytes] = {};
        size_t got = 0;
    };
    std::vector<Pending> pending;
    std::vector<Fd> peers(static_cast<size_t>(env.world));  // by rank; [0] unused
    int missing = env.world - 1;

    // Every connected rank hears why the job cannot start (best effort, a short
    // wait: the message fits in the socket buffer), then rank 0 throws it.
    auto fail = [&](const std::string& msg, Fd* offender) -> void {
        const std::string frame = reply_frame(kRejected, msg);
        const Deadline quick(1.0);
        for (auto& p : peers)
            if (p.valid()) write_all(p.get(), frame.data(), frame.size(), quick);
        if (offender) write_all(offender->get(), frame.data(), frame.size(), quick);
        run_failed("rendezvous: " + msg);
    };

    while (missing > 0) {
        if (dl.passed()) {
            std::vector<int> absent;
            for (int r = 1; r < env.world; ++r)
                if (!peers[static_cast<size_t>(r)].valid()) absent.push_back(r);
            fail("rank 0 waited " + seconds_text(timeout_s) + " s for " + ranks_text(absent) + " at " + where +
                     " (not started, a different MASTER_ADDR/MASTER_PORT, or a firewall?)",
                 nullptr);
        }
        std::vector<pollfd> fds;
        for (const auto& l : listeners) fds.push_back({l.get(), POLLIN, 0});
        for (const auto& p : pending) fds.push_back({p.fd.get(), POLLIN, 0});
        const int rc = ::poll(fds.data(), fds.size(), dl.poll_ms());
        if (rc < 0) {
            if (errno == EINTR) continue;
            run_failed("rendezvous: rank 0 poll failed: " + errno_text(errno));
        }
        for (size_t i = 0; i < listeners.size(); ++i) {
            if (!fds[i].revents) continue;
            for (;;) {
                const int c = ::accept4(listeners[i].get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c >= 0) {
                    pending.push_back(Pending{Fd(c)});
                    continue;
                }
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                fail("rank 0 cannot accept connections on " + where + ": " + errno_text(errno), nullptr);
            }
        }
        for (size_t i = 0; i < pending.size() && listeners.size() + i < fds.size(); ++i) {
            if (!fds[listeners.size() + i].revents) continue;
            Pending& p = pending[i];
            const ssize_t k = ::recv(p.fd.get(), p.hello + p.got, kHelloBytes - p.got, 0);
            if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            if (k <= 0) {
                // Gone before a whole hello: a port probe, or a rank that died,
                // which the timeout will name. Nothing to answer.
                p.fd.reset();
                continue;
            }
            p.got += static_cast<size_t>(k);
            if (p.got < kHelloBytes) continue;
            const uint32_t magic = get_u32(p.hello), version = get_u32(p.hello + 4);
            const uint32_t world = get_u32(p.hello + 8), rank = get_u32(p.hello + 12);
            const std::string at = " at " + where;
            if (magic != kMagic)
                fail("rank 0 got a connection" + at + " that is not a gpt rank (another program using MASTER_PORT?)", &p.fd);
            if (version != kVersion)
                fail("rank 0 got a hello from rank " + std::to_string(rank) + at + " in protocol version " +
                         std::to_string(version) + ", but speaks version " + std::to_string(kVersion) +
                         " (ranks running different gpt builds?)",
                     &p.fd);
            if (world != static_cast<uint32_t>(env.world))
                fail("rank 0 (world size " + std::to_string(env.world) + ") got a hello from a process that says it is rank " +
                         std::to_string(rank) + " of a world of " + std::to_string(world) + at +
                         " (WORLD_SIZE differs between ranks, or a process from another job uses this MASTER_PORT)",
                     &p.fd);
            if (rank < 1 || rank >= world)
                fail("rank 0 got a hello from a process that says it is rank " + std::to_string(rank) + at +
                         ", outside 1.." + std::to_string(env.world - 1),
                     &p.fd);
            if (peers[rank].valid())
                fail("rank 0 got two hellos from rank " + std::to_string(rank) + at +
                         " (two processes with the same RANK, or a process from another job uses this MASTER_PORT)",
                     &p.fd);
            peers[rank] = std::move(p.fd);
            --missing;
        }
        pending.erase(std::remove_if(pending.begin(), pending.end(), [](const Pending& p) { return !p.fd.valid(); }), pending.end());
    }

    // Everyone is here: the blob goes out, with a fresh allowance so that a
    // rendezvous that took most of timeout_s can still deliver it.
    const std::string frame = reply_frame(kAccepted, blob);
    const Deadline send_dl(timeout_s);
    for (int r = 1; r < env.world; ++r) {
        const Io io = write_all(peers[static_cast<size_t>(r)].get(), frame.data(), frame.size(), send_dl);
        if (io != Io::Ok)
            run_failed("rendezvous: rank 0 could not send the id to rank " + std::to_string(r) + " at " + where + ": " +
                       (io == Io::TimedOut ? "timed out after " + seconds_text(timeout_s) + " s" : errno_text(errno)));
    }
    return blob;
}

// One connect attempt to each address in turn; an invalid Fd (why in last_error)
// when none answers.
Fd try_connect(const addrinfo* list, const Deadline& dl, std::string& last_error) {
    for (const addrinfo* a = list; a; a = a->ai_next) {
        Fd s(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
        if (!s.valid()) {
            last_error = "socket: " + errno_text(errno);
            continue;
        }
        // EINTR leaves the connection in progress, like EINPROGRESS.
        if (::connect(s.get(), a->ai_addr, a->ai_addrlen) == 0) return s;
        if (errno != EINPROGRESS && errno != EINTR) {
            last_error = "connect: " + errno_text(errno);
            continue;
        }
        if (!wait_ready(s.get(), POLLOUT, dl, kConnectAttemptMs)) {
            last_error = "connect: no answer";
            continue;
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err == 0) return s;
        last_error = "connect: " + errno_text(err);
    }
    return Fd();
}

std::string peer(const DistEnv& env, double timeout_s) {
    const Deadline dl(timeout_s);
    const std::string me = "rendezvous: rank " + std::to_string(env.rank);
    const std::string where = endpoint_text(env);
    const AddrList addrs = resolve(env);
    auto timed_out = [&](const std::string& why) {
        run_failed(me + " waited " + seconds_text(timeout_s) + " s for rank 0 at " + where + ": " + why);
    };

    // Rank 0 may not be listening yet (it may start later, or still be loading):
    // a refused connection is retried, backing off to at most every 500 ms.
    Fd s;
    std::string last_error = "connect: no attempt";
    auto backoff = std::chrono::milliseconds(20);
    for (;;) {
        s = try_connect(addrs.get(), dl, last_error);
        if (s.valid()) break;
        if (dl.passed()) timed_out(last_error);
        const int left = dl.poll_ms(static_cast<int>(backoff.count()));
        std::this_thread::sleep_for(std::chrono::milliseconds(left < 0 ? backoff.count() : left));
        backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
    }

    unsigned char hello[kHelloBytes];
    put_u32(hello, kMagic);
    put_u32(hello + 4, kVersion);
    put_u32(hello + 8, static_cast<uint32_t>(env.world));
    put_u32(hello + 12, static_cast<uint32_t>(env.rank));
    auto io_error = [&](Io io, const char* step) {
        if (io == Io::TimedOut)
            timed_out(std::string("connected, but ") + step + " timed out (rank 0 waits for every rank before it answers)");
        if (io == Io::Closed)
            run_failed(me + ": rank 0 at " + where + " closed the connection without sending the id (did rank 0 fail?)");
        run_failed(me + ": talking to rank 0 at " + where + " failed while " + step + ": " + errno_text(errno));
    };
    if (const Io io = write_all(s.get(), hello, sizeof hello, dl); io != Io::Ok) io_error(io, "sending the hello");

    unsigned char header[kHeaderBytes];
    if (const Io io = read_exact(s.get(), header, sizeof header, dl); io != Io::Ok) io_error(io, "waiting for the id");
    const uint32_t magic = get_u32(header), version = get_u32(header + 4);
    const uint32_t status = get_u32(header + 8), length = get_u32(header + 12);
    if (magic != kMagic || (status != kAccepted && status != kRejected) || length > kMaxPayload)
        run_failed(me + ": the process at " + where + " is not a gpt rank 0 (another program using MASTER_PORT?)");
    if (version != kVersion)
        run_failed(me + ": rank 0 at " + where + " speaks rendezvous protocol version " + std::to_string(version) + ", this rank " +
                   std::to_string(kVersion) + " (ranks running different gpt builds?)");
    std::string payload(length, '\0');
    if (const Io io = read_exact(s.get(), payload.data(), length, dl); io != Io::Ok) io_error(io, "receiving the id");
    if (status == kRejected) run_failed(me + ": rank 0 at " + where + " stopped the rendezvous: " + payload);
    return payload;
}

}  // namespace

std::string rendezvous_broadcast(const DistEnv& env, const std::string& blob_on_rank0, double timeout_s) {
    if (env.world < 1 || env.rank < 0 || env.rank >= env.world)
        bad_input("rendezvous: rank " + std::to_string(env.rank) + " is outside a world of " + std::to_string(env.world));
    if (env.world == 1) return blob_on_rank0;
    return env.rank == 0 ? rank0(env, blob_on_rank0, timeout_s) : peer(env, timeout_s);
}

}  // namespace gpt
