// .ci/run, the CI entry point: it must run the README's test command in a copy
// of the checkout that has nothing beside it. Checked on a small git
// repository made here: tracked, untracked, ignored and deleted files, and a
// shared/ folder beside it that the copy must not see.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tests/test_util.h"

namespace fs = std::filesystem;
using gpt::test::run_shell;
using gpt::test::TempDir;
using gpt::test::write_file;

namespace {

// The last non-empty line of a command's output.
std::string last_line(const std::string& out) {
    std::string s = out;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    const size_t nl = s.rfind('\n');
    return nl == std::string::npos ? s : s.substr(nl + 1);
}

struct Checkout {
    TempDir d;
    std::string repo = d.file("gpt");
    Checkout() {
        fs::create_directories(repo + "/.ci");
        fs::create_directories(repo + "/sub");
        fs::create_directories(repo + "/build");
        fs::create_directories(d.file("shared"));
        fs::create_directories(d.file("tmp"));
        fs::copy_file(gpt::test::source_path(".ci/run"), repo + "/.ci/run");
        write_file(repo + "/README.md", "Run the tests:\n\n    tools/bootstrap && tools/test\n");
        write_file(repo + "/.gitignore", "/build*/\n");
        write_file(repo + "/a.txt", "tracked");
        write_file(repo + "/sub/b.txt", "tracked too");
        write_file(repo + "/deleted.txt", "tracked, then deleted");
        write_file(repo + "/build/object.o", "ignored");
        write_file(d.file("shared/marker"), "beside the checkout");
        const auto r = run_shell("cd '" + repo + "' && git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init && "
                                 "rm deleted.txt && echo new > untracked.txt");
        EXPECT_EQ(r.code, 0) << r.output;
    }
    gpt::test::RunResult run(const std::string& args) { return run_shell("TMPDIR='" + d.file("tmp") + "' '" + repo + "/.ci/run' " + args); }
};

}  // namespace

TEST(CiRun, CopiesTheCheckoutAloneIntoAFreshTempDir) {
    if (run_shell("git --version").code != 0) GTEST_SKIP() << "git is not installed (tools/bootstrap installs it)";
    Checkout c;
    const auto r = c.run("--copy-only");
    ASSERT_EQ(r.code, 0) << r.output;
    const fs::path copy = last_line(r.output);
    ASSERT_TRUE(fs::is_directory(copy)) << r.output;
    EXPECT_EQ(fs::canonical(copy.parent_path().parent_path()), fs::canonical(c.d.file("tmp"))) << "not a fresh dir under $TMPDIR: " << copy;
    EXPECT_EQ(gpt::test::read_file(copy / "a.txt"), "tracked");
    EXPECT_EQ(gpt::test::read_file(copy / "sub/b.txt"), "tracked too");
    EXPECT_EQ(gpt::test::read_file(copy / "untracked.txt"), "new\n");
    EXPECT_TRUE(fs::exists(copy / ".ci/run"));
    EXPECT_FALSE(fs::exists(copy / "deleted.txt"));
    EXPECT_FALSE(fs::exists(copy / "build")) << "ignored build output copied";
    EXPECT_FALSE(fs::exists(copy / ".git"));
    // Nothing beside the copy: no ../shared.
    int neighbours = 0;
    for (const auto& e : fs::directory_iterator(copy.parent_path())) neighbours += e.path() != copy;
    EXPECT_EQ(neighbours, 0);
    EXPECT_FALSE(fs::exists(copy.parent_path() / "shared"));
}

TEST(CiRun, RunsTheReadmesTestCommandOrSaysWhyNot) {
    if (run_shell("git --version").code != 0) GTEST_SKIP() << "git is not installed (tools/bootstrap installs it)";
    Checkout c;
    // The README's command, in the copy: here a tools/bootstrap and tools/test
    // that report where they ran and whether ../shared exists there.
    fs::create_directories(c.repo + "/tools");
    write_file(c.repo + "/tools/bootstrap", "#!/bin/sh\necho bootstrap in \"$PWD\"\n");
    write_file(c.repo + "/tools/test", "#!/bin/sh\nif [ -e ../shared ]; then echo shared beside; exit 1; fi\necho test in \"$PWD\"\n");
    // CI's second step, the short fuzz run from the committed seeds.
    write_file(c.repo + "/tools/fuzz", "#!/bin/sh\necho fuzz in \"$PWD\" \"$@\"\n");
    ASSERT_EQ(run_shell("chmod +x '" + c.repo + "/tools/bootstrap' '" + c.repo + "/tools/test' '" + c.repo + "/tools/fuzz'").code, 0);
    auto r = c.run("");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("bootstrap in " + c.d.file("tmp/gpt-ci.")), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("test in " + c.d.file("tmp/gpt-ci.")), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("fuzz in " + c.d.file("tmp/gpt-ci.")), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("all 2 steps passed"), std::string::npos) << r.output;
    EXPECT_TRUE(fs::is_empty(c.d.file("tmp"))) << "the copy was not removed";

    // A failing step fails the run.
    write_file(c.repo + "/tools/test", "#!/bin/sh\necho failing; exit 3\n");
    r = c.run("");
    EXPECT_NE(r.code, 0) << r.output;
    EXPECT_EQ(r.output.find("steps passed"), std::string::npos) << r.output;

    // A README that no longer shows the command, and a bad option.
    write_file(c.repo + "/README.md", "Run the tests: make check\n");
    r = c.run("");
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find("README.md no longer shows the test command"), std::string::npos) << r.output;
    r = c.run("--frobnicate");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("--frobnicate"), std::string::npos) << r.output;
}

// tools/cuda-tests.sh, gpu-check's runner of the CUDA tests: after a test that
// lost the CUDA context (the binary's "[ CONTEXT  ]" exit) or a crash, it runs
// the tests not yet run in a fresh process, and counts every test once. A fake
// test binary answers each filter the runner should send.
TEST(CudaTestsRunner, RestartsAfterALostContextAndCountsEveryTest) {
    TempDir d;
    write_file(d.file("fake"), R"(#!/bin/bash
for a in "$@"; do case $a in --gtest_filter=*) f=${a#--gtest_filter=} ;; esac; done
echo "$f" >>")" + d.file("calls") + R"("
case $f in
'*') printf '[ RUN      ] S.A\n[       OK ] S.A (1 ms)\n[ RUN      ] S.B\n[  FAILED  ] S.B (2 ms)\n[ RUN      ] P/S.C/"x"\n'
     printf '[ CONTEXT  ] P/S.C/"x" lost the CUDA context (cudaErrorLaunchFailure: unspecified launch failure): exiting\n'
     exit 3 ;;
'-S.A:S.B:P/S.C/"x"') printf '[ RUN      ] S.D\n[  SKIPPED ] S.D (0 ms)\n[ RUN      ] S.E\n'; kill -SEGV $$ ;;
'-S.A:S.B:P/S.C/"x":S.D:S.E') printf '[ RUN      ] S.F\n[       OK ] S.F (0 ms)\n[==========] 1 test from 1 test suite ran. (0 ms total)\n'
     printf '[  FAILED  ] S.B\n'
     exit 0 ;;
*) echo "unexpected filter $f"; exit 9 ;;
esac
)");
    const auto r = run_shell("chmod +x '" + d.file("fake") + "' && '" + gpt::test::source_path("tools/cuda-tests.sh") + "' '" + d.file("fake") +
                             "' '" + d.file("logs") + "'");
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find("[==========] cuda tests: 2 passed, 1 failed, 2 lost (a lost context, a crash or a hang), 1 skipped, in 3 process(es)"), std::string::npos)
        << r.output;
    EXPECT_EQ(gpt::test::read_file(d.file("calls")), "*\n-S.A:S.B:P/S.C/\"x\"\n-S.A:S.B:P/S.C/\"x\":S.D:S.E\n");
    const std::string failed = gpt::test::read_file(d.file("logs/cuda-tests-failed.txt"));
    EXPECT_NE(failed.find("[  FAILED  ] S.B\n"), std::string::npos) << failed;
    EXPECT_NE(failed.find("[  LOST    ] P/S.C/\"x\" (P/S.C/\"x\" lost the CUDA context (cudaErrorLaunchFailure"), std::string::npos) << failed;
    EXPECT_NE(failed.find("[  LOST    ] S.E (the process ended with status 139)"), std::string::npos) << failed;
    // Every test passing or skipped: status 0, one process.
    write_file(d.file("fake"), "#!/bin/bash\nprintf '[ RUN      ] S.A\\n[       OK ] S.A (1 ms)\\n[==========] 1 test from 1 test suite ran.\\n'\n");
    const auto ok = run_shell("'" + gpt::test::source_path("tools/cuda-tests.sh") + "' '" + d.file("fake") + "' '" + d.file("logs2") + "'");
    EXPECT_EQ(ok.code, 0) << ok.output;
    EXPECT_NE(ok.output.find("1 passed, 0 failed, 0 lost (a lost context, a crash or a hang), 0 skipped, in 1 process(es)"), std::string::npos)
        << ok.output;
    // A test that hangs (a kernel stuck at a hardware barrier): after CUDA_TEST_STALL_S seconds without
    // output its process is killed, the test counts as lost, and the rest run in a fresh process.
    write_file(d.file("fake"), R"(#!/bin/bash
for a in "$@"; do case $a in --gtest_filter=*) f=${a#--gtest_filter=} ;; esac; done
case $f in
'*') printf '[ RUN      ] S.A
[       OK ] S.A (1 ms)
[ RUN      ] S.H
'; exec sleep 300 ;;
'-S.A:S.H') printf '[ RUN      ] S.I
[       OK ] S.I (0 ms)
[==========] 1 test from 1 test suite ran. (0 ms total)
' ;;
*) echo "unexpected filter $f"; exit 9 ;;
esac
)");
    const auto hung = run_shell("CUDA_TEST_STALL_S=2 '" + gpt::test::source_path("tools/cuda-tests.sh") + "' '" + d.file("fake") + "' '" +
                                d.file("logs3") + "'");
    EXPECT_EQ(hung.code, 1) << hung.output;
    EXPECT_NE(hung.output.find("2 passed, 0 failed, 1 lost (a lost context, a crash or a hang), 0 skipped, in 2 process(es)"), std::string::npos)
        << hung.output;
    EXPECT_NE(gpt::test::read_file(d.file("logs3/cuda-tests-failed.txt")).find("[  LOST    ] S.H (hung: no output for 2 s, killed)"),
              std::string::npos)
        << hung.output;
}
