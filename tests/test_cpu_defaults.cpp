// The CPU backend's defaults on a shared machine: OpenMP's threads wait
// passively unless the user chose (kernels/cpu/omp_env.cpp). libgomp reads
// OMP_WAIT_POLICY before main(); OMP_DISPLAY_ENV=verbose shows what it took:
// a spin count of 0 when passive, 300000 by default, the user's value else.
// Whether that is faster is a benchmark's question (tools/bench-busy), not a
// test's.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cpu/omp_env.h"
#include "tests/test_util.h"

using gpt::test::run_shell;
using gpt::test::TempDir;

extern char** environ;

namespace {

gpt::test::RunResult gpt_with_env(const std::string& env, const std::string& args) {
    return run_shell("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u GPT_OMP_DEFAULTS " + env + " " + std::string(GPT_BINARY) + " " + args);
}

// The spin count libgomp used in the process that ran (the last display
// block: a re-executed process displays twice).
std::string spin_count(const std::string& out) {
    const auto p = out.rfind("GOMP_SPINCOUNT = '");
    return p == std::string::npos ? std::string("?") : out.substr(p + 18, out.find('\'', p + 18) - p - 18);
}

// A fast run on the synthetic source.
std::string quick(const std::string& out) {
    return "--set model.preset=nano --set data.synthetic.vocab=32 --set run.max_steps=3 --set run.val_batches=1 --set run.backend=cpu "
           "--set run.out_dir=" + out;
}

}  // namespace

TEST(CpuDefaults, OpenMpWaitsPassivelyUnlessTheUserChooses) {
    auto r = gpt_with_env("OMP_DISPLAY_ENV=verbose", "version");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(spin_count(r.output), "0") << r.output;
    EXPECT_NE(r.output.find("gpt "), std::string::npos) << r.output;
    r = gpt_with_env("OMP_DISPLAY_ENV=verbose OMP_WAIT_POLICY=active", "version");
    EXPECT_EQ(spin_count(r.output), "30000000000") << r.output;
    EXPECT_NE(r.output.find("OMP_WAIT_POLICY = 'ACTIVE'"), std::string::npos) << r.output;
    r = gpt_with_env("OMP_DISPLAY_ENV=verbose GOMP_SPINCOUNT=1234", "version");
    EXPECT_EQ(spin_count(r.output), "1234") << r.output;

    // The start-up line says which policy applies.
    TempDir d;
    r = gpt_with_env("", "train " + quick(d.file("a")));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("OMP_WAIT_POLICY=passive (gpt's default)"), std::string::npos) << r.output;
    r = gpt_with_env("OMP_WAIT_POLICY=active", "train " + quick(d.file("b")));
    EXPECT_NE(r.output.find("OMP_WAIT_POLICY=active (from the environment)"), std::string::npos) << r.output;
    r = gpt_with_env("GOMP_SPINCOUNT=1000", "bench step --set model.preset=nano --set run.backend=cpu --repeats 1 --warmup 0 --json");
    EXPECT_NE(r.output.find("GOMP_SPINCOUNT=1000 (from the environment)"), std::string::npos) << r.output;
}

// The default is applied by lending one entry of the environment array to
// libgomp while it starts, and taking it back before main(). Every variable
// the user gave is there for the program, the lent one included; arguments
// are untouched.
TEST(CpuDefaults, TheEnvironmentStaysTheUsers) {
    // The lent entry is `_` when there is one, else the first variable no
    // library reads at start-up (FOO here); GPT_TOKENIZER_DIR shows that the
    // program sees the environment afterwards.
    for (const std::string env : {"env -i _=/bin/true FOO=bar", "env -i FOO=bar", "env -i TERM=dumb HOME=/nowhere-home"}) {
        const auto r = run_shell(env + " GPT_TOKENIZER_DIR=/nowhere OMP_DISPLAY_ENV=verbose " + std::string(GPT_BINARY) +
                                 " data encode < /dev/null");
        EXPECT_EQ(r.code, 2) << env << "\n" << r.output;
        EXPECT_NE(r.output.find("/nowhere/encoder.json"), std::string::npos) << env << "\n" << r.output;
        EXPECT_EQ(spin_count(r.output), "0") << env << "\n" << r.output;
    }
    // Nothing to lend (no variable at all): a single re-execution with the
    // variable set, which the display shows as a second block.
    auto r = run_shell("env -i OMP_DISPLAY_ENV=verbose " + std::string(GPT_BINARY) + " version");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(spin_count(r.output), "0") << r.output;
    // Arguments with spaces and quotes reach main() as given, either way.
    for (const std::string env : {"", "env -i"}) {
        r = run_shell(env + " " + std::string(GPT_BINARY) + " config --set \"run.out_dir=a dir/with 'quotes'\"");
        EXPECT_EQ(r.code, 0) << r.output;
        EXPECT_NE(r.output.find("out_dir: \"a dir/with 'quotes'\""), std::string::npos) << env << "\n" << r.output;
    }
}

// This test executable starts like gpt (tests/test_util.cpp's main): its
// environment, as main() sees it, is the one it was started with, entry for
// entry (/proc/self/environ holds the kernel's copy of that).
TEST(CpuDefaults, InThisProcessTheEnvironmentIsTheOneItWasStartedWith) {
    const std::string raw = gpt::test::read_file("/proc/self/environ");
    ASSERT_FALSE(raw.empty());
    std::vector<std::string> started;
    for (size_t p = 0; p < raw.size();) {
        const size_t z = raw.find('\0', p);
        started.push_back(raw.substr(p, z - p));
        p = z == std::string::npos ? raw.size() : z + 1;
    }
    std::vector<std::string> now;
    for (char** e = environ; *e; e++) now.push_back(*e);
    const bool user_chose = std::any_of(started.begin(), started.end(), [](const std::string& s) {
        return s.rfind("OMP_WAIT_POLICY=", 0) == 0 || s.rfind("GOMP_SPINCOUNT=", 0) == 0;
    });
    if (std::getenv("GPT_OMP_DEFAULTS")) {
        // Started without anything to lend: re-executed with the variable set.
        EXPECT_STREQ(std::getenv("OMP_WAIT_POLICY"), "passive");
    } else {
        std::sort(started.begin(), started.end());
        std::sort(now.begin(), now.end());
        EXPECT_EQ(now, started);
    }
    if (!user_chose) EXPECT_EQ(gpt::omp_wait_note(), "OMP_WAIT_POLICY=passive (gpt's default)");
}
