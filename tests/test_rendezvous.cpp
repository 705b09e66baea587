// The TCP rendezvous (train/rendezvous.h) with real processes on loopback:
// ranks > 0 are fork()ed children that report what they received (or the error
// they threw) through a pipe; rank 0 runs in the test process.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/error.h"
#include "train/rendezvous.h"

namespace {

using gpt::DistEnv;
using gpt::Error;
using gpt::ErrorKind;

// A port that was free a moment ago: bind port 0 on loopback and read back
// what the kernel chose. Another process could take it before rank 0 binds,
// but the kernel hands ephemeral ports out in turn, so not within a test.
int free_port(int family = AF_INET) {
    const int s = ::socket(family, SOCK_STREAM, 0);
    if (s < 0) return 0;
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *in;
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        in6->sin6_addr = in6addr_loopback;
        len = sizeof *in6;
    }
    int port = 0;
    if (::bind(s, reinterpret_cast<sockaddr*>(&ss), len) == 0 && ::getsockname(s, reinterpret_cast<sockaddr*>(&ss), &len) == 0)
        port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    ::close(s);
    return port;
}

DistEnv make_env(int rank, int world, int port, const std::string& addr = "127.0.0.1") {
    DistEnv env;
    env.rank = rank;
    env.world = world;
    env.launcher = "torchrun";
    env.master_addr = addr;
    env.master_port = port;
    return env;
}

// What a rank ended with: the blob, or the error it threw.
struct Outcome {
    bool ok = false;
    std::string blob;
    ErrorKind kind = ErrorKind::RunFailed;
    std::string error;
};

Outcome run_rank(const DistEnv& env, const std::string& blob, double timeout_s) {
    Outcome o;
    try {
        o.blob = gpt::rendezvous_broadcast(env, blob, timeout_s);
        o.ok = true;
    } catch (const Error& e) {
        o.kind = e.kind;
        o.error = e.what();
    }
    return o;
}

// A rank in a child process. The child writes its outcome to a pipe as
// "<tag><payload>" (tag 'O' ok, 'B' BadInput, 'R' other error) and leaves with
// _exit, so it never returns into GoogleTest or runs the parent's destructors.
struct Child {
    pid_t pid = -1;
    int read_fd = -1;
};

Child spawn_rank(const DistEnv& env, double timeout_s) {
    int fds[2];
    if (::pipe(fds) != 0) return {};
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::close(fds[0]);
        const Outcome o = run_rank(env, "", timeout_s);
        const std::string msg = (o.ok ? "O" : o.kind == ErrorKind::BadInput ? "B" : "R") + (o.ok ? o.blob : o.error);
        size_t off = 0;
        while (off < msg.size()) {
            const ssize_t k = ::write(fds[1], msg.data() + off, msg.size() - off);
            if (k <= 0) _exit(3);
            off += static_cast<size_t>(k);
        }
        _exit(0);
    }
    ::close(fds[1]);
    return {pid, fds[0]};
}

Outcome wait_rank(Child& c) {
    Outcome o;
    std::string msg;
    char buf[4096];
    for (;;) {
        const ssize_t k = ::read(c.read_fd, buf, sizeof buf);
        if (k > 0) {
            msg.append(buf, static_cast<size_t>(k));
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else {
            break;
        }
    }
    ::close(c.read_fd);
    int status = 0;
    ::waitpid(c.pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || msg.empty()) {
        o.error = "child process for this rank died (status " + std::to_string(status) + ")";
        return o;
    }
    o.ok = msg[0] == 'O';
    o.kind = msg[0] == 'B' ? ErrorKind::BadInput : ErrorKind::RunFailed;
    (o.ok ? o.blob : o.error) = msg.substr(1);
    return o;
}

std::string random_blob(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() & 0xff);
    return s;
}

// Every rank of a world gets rank 0's blob, the ranks > 0 started
// `head_start` before rank 0.
void expect_broadcast(int world, const std::string& blob, const std::string& addr, int port,
                      std::chrono::milliseconds head_start = std::chrono::milliseconds(0)) {
    ASSERT_GT(port, 0);
    std::vector<Child> children;
    for (int r = 1; r < world; ++r) children.push_back(spawn_rank(make_env(r, world, port, addr), 3.0));
    std::this_thread::sleep_for(head_start);
    const Outcome root = run_rank(make_env(0, world, port, addr), blob, 3.0);
    EXPECT_TRUE(root.ok) << root.error;
    EXPECT_EQ(root.blob, blob);
    for (int r = 1; r < world; ++r) {
        const Outcome o = wait_rank(children[static_cast<size_t>(r - 1)]);
        EXPECT_TRUE(o.ok) << "rank " << r << ": " << o.error;
        EXPECT_EQ(o.blob, blob) << "rank " << r;
    }
}

TEST(Rendezvous, WorldOfOneNeedsNoNetwork) {
    DistEnv env;  // no MASTER_ADDR: world 1 never looks at it
    EXPECT_EQ(gpt::rendezvous_broadcast(env, "abc", 1.0), "abc");
}

TEST(Rendezvous, WorldOfTwo) { expect_broadcast(2, random_blob(128, 1), "127.0.0.1", free_port()); }

TEST(Rendezvous, WorldOfFourWithNulBytes) {
    std::string blob = random_blob(128, 2);
    blob[0] = blob[17] = blob[127] = '\0';
    expect_broadcast(4, blob, "127.0.0.1", free_port());
}

TEST(Rendezvous, EmptyBlob) { expect_broadcast(3, "", "127.0.0.1", free_port()); }

TEST(Rendezvous, AllZeroBlob) { expect_broadcast(2, std::string(128, '\0'), "127.0.0.1", free_port()); }

TEST(Rendezvous, RanksStartBeforeRankZero) {
    // The children find nothing listening and must retry until rank 0 is up.
    expect_broadcast(4, random_blob(128, 3), "127.0.0.1", free_port(), std::chrono::milliseconds(400));
}

TEST(Rendezvous, Ipv6Loopback) {
    const int port = free_port(AF_INET6);
    if (port == 0) GTEST_SKIP() << "no IPv6 loopback on this machine";
    expect_broadcast(2, random_blob(128, 4), "::1", port);
}

TEST(Rendezvous, Localhost) {
    // "localhost" may resolve to both ::1 and 127.0.0.1: rank 0 listens on each.
    expect_broadcast(3, random_blob(128, 6), "localhost", free_port());
}

TEST(Rendezvous, MissingRankTimesOutNamingIt) {
    const int port = free_port();
    ASSERT_GT(port, 0);
    // World 4 with rank 2 never started. The other ranks' own timeouts are far
    // longer than rank 0's, so what they report shows who gave up first: rank 0,
    // at its timeout, telling them why (judged by the messages, not a clock).
    Child c1 = spawn_rank(make_env(1, 4, port), 60.0);
    Child c3 = spawn_rank(make_env(3, 4, port), 60.0);
    const Outcome root = run_rank(make_env(0, 4, port), random_blob(128, 5), 1.0);
    ASSERT_FALSE(root.ok);
    EXPECT_EQ(root.kind, ErrorKind::RunFailed);
    EXPECT_NE(root.error.find("rank 0 waited 1 s for rank 2 at 127.0.0.1:" + std::to_string(port)), std::string::npos) << root.error;
    // The ranks that did connect hear the same reason instead of waiting out their own timeout.
    for (Child* c : {&c1, &c3}) {
        const Outcome o = wait_rank(*c);
        ASSERT_FALSE(o.ok);
        EXPECT_NE(o.error.find("stopped the rendezvous"), std::string::npos) << o.error;
        EXPECT_NE(o.error.find("for rank 2"), std::string::npos) << o.error;
    }
}

TEST(Rendezvous, SeveralMissingRanksAreListed) {
    const int port = free_port();
    ASSERT_GT(port, 0);
    Child c1 = spawn_rank(make_env(1, 4, port), 3.0);
    const Outcome root = run_rank(make_env(0, 4, port), "id", 1.0);
    ASSERT_FALSE(root.ok);
    EXPECT_NE(root.error.find("rank 0 waited 1 s for ranks 2, 3 at"), std::string::npos) << root.error;
    EXPECT_FALSE(wait_rank(c1).ok);
}

TEST(Rendezvous, NoRankZeroTimesOutOnThePeer) {
    const int port = free_port();
    ASSERT_GT(port, 0);
    const Outcome o = run_rank(make_env(1, 2, port), "", 1.0);
    ASSERT_FALSE(o.ok);
    EXPECT_EQ(o.kind, ErrorKind::RunFailed);
    EXPECT_NE(o.error.find("rank 1 waited 1 s for rank 0 at 127.0.0.1:" + std::to_string(port)), std::string::npos) << o.error;
}

TEST(Rendezvous, PeerWithAnotherWorldSizeIsRejected) {
    const int port = free_port();
    ASSERT_GT(port, 0);
    Child c = spawn_rank(make_env(1, 3, port), 3.0);  // thinks the world is 3
    const Outcome root = run_rank(make_env(0, 2, port), "id", 3.0);
    ASSERT_FALSE(root.ok);
    EXPECT_EQ(root.kind, ErrorKind::RunFailed);
    EXPECT_NE(root.error.find("rank 1 of a world of 3"), std::string::npos) << root.error;
    EXPECT_NE(root.error.find("world size 2"), std::string::npos) << root.error;
    const Outcome o = wait_rank(c);
    ASSERT_FALSE(o.ok);
    EXPECT_EQ(o.kind, ErrorKind::RunFailed);
    EXPECT_NE(o.error.find("rank 1 of a world of 3"), std::string::npos) << o.error;
}

TEST(Rendezvous, SameRankTwiceIsRejected) {
    const int port = free_port();
    ASSERT_GT(port, 0);
    Child a = spawn_rank(make_env(1, 3, port), 3.0);
    Child b = spawn_rank(make_env(1, 3, port), 3.0);
    const Outcome root = run_rank(make_env(0, 3, port), "id", 3.0);
    ASSERT_FALSE(root.ok);
    EXPECT_NE(root.error.find("two hellos from rank 1"), std::string::npos) << root.error;
    for (Child* c : {&a, &b}) {
        const Outcome o = wait_rank(*c);
        EXPECT_FALSE(o.ok);
        EXPECT_NE(o.error.find("two hellos from rank 1"), std::string::npos) << o.error;
    }
}

TEST(Rendezvous, SomethingElseOnThePortIsRejected) {
    const int port = free_port();
    ASSERT_GT(port, 0);
    // A client that speaks another protocol (an HTTP probe).
    const pid_t pid = ::fork();
    if (pid == 0) {
        for (int i = 0; i < 100; ++i) {
            const int s = ::socket(AF_INET, SOCK_STREAM, 0);
            sockaddr_in in{};
            in.sin_family = AF_INET;
            in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            in.sin_port = htons(static_cast<uint16_t>(port));
            if (::connect(s, reinterpret_cast<sockaddr*>(&in), sizeof in) == 0) {
                const char req[] = "GET / HTTP/1.0\r\n\r\n";
                (void)!::send(s, req, sizeof req - 1, MSG_NOSIGNAL);
                char buf[256];
                while (::recv(s, buf, sizeof buf, 0) > 0) {
                }
                ::close(s);
                _exit(0);
            }
            ::close(s);
            ::usleep(20000);
        }
        _exit(1);
    }
    const Outcome root = run_rank(make_env(0, 2, port), "id", 3.0);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_FALSE(root.ok);
    EXPECT_EQ(root.kind, ErrorKind::RunFailed);
    EXPECT_NE(root.error.find("not a gpt rank"), std::string::npos) << root.error;
}

TEST(Rendezvous, RankZeroThatIsNotOursIsRejected) {
    // A server that answers a hello with something else.
    const int port = free_port();
    ASSERT_GT(port, 0);
    const int ls = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    in.sin_port = htons(static_cast<uint16_t>(port));
    ASSERT_EQ(::bind(ls, reinterpret_cast<sockaddr*>(&in), sizeof in), 0);
    ASSERT_EQ(::listen(ls, 4), 0);
    Child c = spawn_rank(make_env(1, 2, port), 3.0);
    const int conn = ::accept(ls, nullptr, nullptr);
    ASSERT_GE(conn, 0);
    const char reply[] = "HTTP/1.0 400 Bad Request\r\n\r\n";
    ASSERT_GT(::send(conn, reply, sizeof reply - 1, MSG_NOSIGNAL), 0);
    const Outcome o = wait_rank(c);
    ::close(conn);
    ::close(ls);
    ASSERT_FALSE(o.ok);
    EXPECT_NE(o.error.find("not a gpt rank 0"), std::string::npos) << o.error;
}

TEST(Rendezvous, BadEnvironmentIsBadInput) {
    auto error_of = [](const DistEnv& env) {
        const Outcome o = run_rank(env, "id", 1.0);
        EXPECT_FALSE(o.ok);
        EXPECT_EQ(o.kind, ErrorKind::BadInput) << o.error;
        return o.error;
    };
    for (int rank : {0, 1}) {
        EXPECT_NE(error_of(make_env(rank, 2, 0)).find("MASTER_PORT=0"), std::string::npos);
        EXPECT_NE(error_of(make_env(rank, 2, 70000)).find("MASTER_PORT=70000"), std::string::npos);
        EXPECT_NE(error_of(make_env(rank, 2, 29500, "")).find("MASTER_ADDR is not set"), std::string::npos);
        // .invalid is reserved never to resolve (RFC 6761).
        EXPECT_NE(error_of(make_env(rank, 2, 29500, "no-such-host.invalid")).find("cannot resolve MASTER_ADDR='no-such-host.invalid'"),
                  std::string::npos);
    }
    EXPECT_NE(error_of(make_env(2, 2, 29500)).find("outside a world of 2"), std::string::npos);
}

}  // namespace
