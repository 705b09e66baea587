// Files gpt reads are regular files (FIFOs, devices and directories are
// refused by name before they are opened, so nothing blocks or reads
// forever), files read whole have size limits, and writes that fail (a full
// disk) are errors naming the file, never torn records.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/files.h"
#include "data/json.h"
#include "kernels/error.h"
#include "search/journal.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace gpt;
using gpt::test::TempDir;

namespace {

// A shell command line; stdout and stderr together, code 128 + N when killed by signal N.
using Shell = gpt::test::RunResult;
Shell sh(const std::string& cmd) { return gpt::test::run_shell(cmd); }

const std::string kGpt = GPT_BINARY;
const std::string kFaultLib = GPT_FAULT_LIB;
// A regression that blocks on a FIFO fails after this instead of hanging the suite.
const std::string kGuard = "timeout -s KILL 60 ";

void fifo(const std::string& path) { ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0) << path; }

std::string tiny_sets(const std::string& out) {
    return " --set model.n_layer=1 --set model.n_head=2 --set model.n_embd=16 --set model.seq_len=8 --set model.vocab_size=32"
           " --set data.synthetic.vocab=32 --set data.synthetic.order=1 --set run.batch_size=2 --set run.val_batches=1"
           " --set run.val_every=0 --set run.threads=1 --set schedule.warmup_steps=1 --set run.max_steps=2 --set run.out_dir=" +
           out + " --quiet";
}

// A byte-level tokenizer with GPT-2's vocabulary size: the 256 byte tokens
// (GPT-2's byte alphabet), fillers, <|endoftext|> at 50256, no merges.
void write_byte_tokenizer(const std::string& dir) {
    fs::create_directories(dir);
    std::vector<int> cp(256, -1);
    int next = 256;
    for (int b = 0; b < 256; b++) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp[size_t(b)] = printable ? b : next++;
    }
    std::ostringstream j;
    j << "{";
    for (int b = 0; b < 256; b++) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "\"\\u%04x\": %d, ", cp[size_t(b)], b);
        j << buf;
    }
    for (int id = 256; id < 50256; id++) j << "\"x" << id << "\": " << id << ", ";
    j << "\"<|endoftext|>\": 50256}";
    test::write_file(dir + "/encoder.json", j.str());
    test::write_file(dir + "/vocab.bpe", "#version: 0.2\n");
}

void expect_refused(const Shell& r, const std::string& what) {
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(what), std::string::npos) << "want '" << what << "' in:\n" << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
}

}  // namespace

TEST(InputFiles, HelperRefusesSpecialFilesAndLimitsSizes) {
    TempDir d;
    fifo(d.file("pipe"));
    auto refused = [](const std::string& path, const std::string& kind) {
        try {
            InputFile::open(path, "config file");
            ADD_FAILURE() << path;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            EXPECT_EQ(std::string(e.what()), "config file '" + path + "': is " + kind + ", not a regular file");
        }
    };
    refused(d.file("pipe"), "a FIFO (named pipe)");
    refused("/dev/zero", "a character device");
    refused(d.path, "a directory");
    EXPECT_EQ(special_file_kind(d.file("pipe")), "a FIFO (named pipe)");
    EXPECT_EQ(special_file_kind(d.file("nothing")), "");

    test::write_file(d.file("big"), std::string(1000, 'a'));
    EXPECT_EQ(read_input(d.file("big"), "x", 1000).size(), 1000u);
    try {
        read_input(d.file("big"), "tokenizer file", 999);
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("1000 bytes is more than the 999-byte limit for a tokenizer file"), std::string::npos) << e.what();
    }
    // Lines, with and without a last newline.
    test::write_file(d.file("lines"), "a\n\nbb\nccc");
    InputFile f = InputFile::open(d.file("lines"), "input");
    std::string line, all;
    while (f.read_line(line)) all += "[" + line + "]";
    EXPECT_EQ(all, "[a][][bb][ccc]");
}

// Every file gpt reads, given a FIFO, /dev/zero or a directory: exit 2 at
// once with the kind of file named (none of these may block or run away).
TEST(InputFiles, EveryReaderRefusesSpecialFiles) {
    TempDir d;
    fifo(d.file("pipe"));
    const std::string pipe = d.file("pipe");
    const std::string fifo_msg = "is a FIFO (named pipe), not a regular file";
    int cases = 0;
    auto check = [&](const std::string& args, const std::string& msg) {
        SCOPED_TRACE(args);
        expect_refused(sh(kGuard + kGpt + " " + args), msg);
        cases++;
    };
    // Configs.
    check("config -c " + pipe, "config file '" + pipe + "': " + fifo_msg);
    check("config -c /dev/zero", "config file '/dev/zero': is a character device");
    check("train -c " + d.path, "config file '" + d.path + "': is a directory");
    // Shards.
    check("train --set data.source=shards --set data.train=" + pipe + " --set data.val=" + pipe + tiny_sets(d.file("r1")),
          "shard '" + pipe + "': " + fifo_msg);
    check("data info " + pipe, fifo_msg);
    check("data write-shard " + d.file("out.bin") + " --input " + pipe, "--input '" + pipe + "': " + fifo_msg);

    // Checkpoints: `latest`, model.safetensors, model.bin, state.bin.
    ASSERT_EQ(sh(kGpt + " train" + tiny_sets(d.file("run"))).code, 0);
    const std::string ck = d.file("run/checkpoints/step_000002");
    fs::copy_file(ck + "/model.bin", d.file("model.bin"));
    fs::copy_file(ck + "/state.bin", d.file("state.bin"));
    fs::rename(d.file("run/checkpoints/latest"), d.file("latest"));
    fifo(d.file("run/checkpoints/latest"));
    check("eval --checkpoint " + d.file("run"), "checkpoint pointer '" + d.file("run/checkpoints/latest") + "': " + fifo_msg);
    fs::remove(d.file("run/checkpoints/latest"));
    fs::rename(d.file("latest"), d.file("run/checkpoints/latest"));

    // The model file read: model.safetensors, then model.bin of a checkpoint without one (an older build's).
    fs::copy_file(ck + "/model.safetensors", d.file("model.safetensors"));
    for (const std::string name : {"model.safetensors", "model.bin"}) {
        const std::string m = ck + "/" + name;
        fs::remove(m);
        fifo(m);
        check("eval --checkpoint " + ck, "model file '" + m + "': " + fifo_msg);
        fs::remove(m);
        fs::create_symlink("/dev/zero", m);
        check("eval --checkpoint " + ck, "model file '" + m + "': is a character device");
        fs::remove(m);
        fs::create_directory(m);
        check("eval --checkpoint " + ck, "model file '" + m + "': is a directory");
        fs::remove(m);
        if (name == "model.bin") fs::copy_file(d.file(name), m);
    }
    fs::copy_file(d.file("model.safetensors"), ck + "/model.safetensors");
    check("eval --checkpoint /dev/zero", "checkpoint '/dev/zero': is a character device");

    fs::remove(ck + "/state.bin");
    fifo(ck + "/state.bin");
    check("train --resume " + ck + " --set run.max_steps=3", "state file '" + ck + "/state.bin': " + fifo_msg);
    fs::remove(ck + "/state.bin");
    fs::copy_file(d.file("state.bin"), ck + "/state.bin");

    // Tokenizer files.
    const std::string tok = d.file("tok");
    write_byte_tokenizer(tok);
    ASSERT_EQ(sh("echo hi | " + kGpt + " data encode --tokenizer " + tok).code, 0);
    fs::rename(tok + "/vocab.bpe", tok + "/vocab.saved");
    fifo(tok + "/vocab.bpe");
    check("data encode --tokenizer " + tok + " < /dev/null", "tokenizer file '" + tok + "/vocab.bpe': " + fifo_msg);
    fs::remove(tok + "/vocab.bpe");
    fs::rename(tok + "/vocab.saved", tok + "/vocab.bpe");

    // Prepare input: a FIFO among the inputs is refused (skip mode reports and skips it).
    test::write_file(d.file("doc.txt"), "hello world");
    check("data prepare --quiet --on-error stop --out " + d.file("prep") + " --tokenizer " + tok + " " + pipe,
          "input file '" + pipe + "': " + fifo_msg);
    const Shell skip = sh(kGuard + kGpt + " data prepare --quiet --out " + d.file("prep2") + " --tokenizer " + tok + " " + d.file("doc.txt") + " " + pipe);
    EXPECT_EQ(skip.code, 0) << skip.output;
    EXPECT_NE(skip.output.find(fifo_msg), std::string::npos) << skip.output;
    cases++;

    // Search journal and search space file.
    fs::create_directories(d.file("search"));
    fifo(d.file("search/journal.jsonl"));
    check("search report " + d.file("search"), "search journal '" + d.file("search/journal.jsonl") + "': " + fifo_msg);
    check("search check " + pipe, fifo_msg);
    std::printf("special files: %d cases\n", cases);
}

// The append-only writer: a write that fails part way is cut back off the
// file, so it ends with whole records; the error names the file.
TEST(OutputFiles, AppendFileNeverLeavesATornRecord) {
    TempDir d;
    const std::string path = d.file("log.jsonl");
    {
        AppendFile f(path, true, "run log");
        f.append("{\"a\":1}\n");
    }
    // A file size limit makes the kernel take the first 4 bytes of the next
    // record and refuse the rest (EFBIG): a real short write.
    struct rlimit old_limit;
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old_limit;
    lim.rlim_cur = fs::file_size(path) + 4;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
    std::string err;
    try {
        AppendFile f(path, false, "run log");
        f.append("{\"b\":2222222222}\n");
    } catch (const Error& e) {
        err = e.what();
        EXPECT_EQ(e.kind, ErrorKind::RunFailed);
    }
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_NE(err.find("cannot write the run log '" + path + "': File too large; the record of 17 bytes was not written"), std::string::npos) << err;
    EXPECT_EQ(test::read_file(path), "{\"a\":1}\n");
    // Special files are refused for writing too (a FIFO would block).
    try {
        AppendFile full("/dev/full", false, "run log");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("is a character device"), std::string::npos) << e.what();
    }
}

// The search journal appends through the same rule: a record cut short by a
// full file system is removed again, and the error names the journal.
TEST(OutputFiles, JournalAppendNeverLeavesATornRecord) {
    TempDir d;
    const std::string path = d.file("journal.jsonl");
    std::vector<Json> records;
    search::Journal j(path, records, nullptr);
    Json rec = Json::object();
    rec.set("type", "trial");
    rec.set("id", 1);
    j.append(rec);
    const std::string before = test::read_file(path);
    struct rlimit old_limit;
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old_limit;
    lim.rlim_cur = before.size() + 5;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
    std::string err;
    try {
        rec.set("note", std::string(200, 'x'));
        j.append(rec);
    } catch (const Error& e) {
        err = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_NE(err.find(path), std::string::npos) << err;
    EXPECT_NE(err.find("File too large"), std::string::npos) << err;
    EXPECT_EQ(test::read_file(path), before);
}

// Integer fields of a damaged or hand-edited search journal (ids, pairs,
// seeds) that no int holds, or that are not integers, are bad input naming the
// record and the field; converting them was undefined behaviour (found by
// tests/fuzz/fuzz_journal.cpp, seed huge_id.jsonl). A seed may be any int.
TEST(InputFiles, JournalIntegersOutOfRangeAreBadInput) {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {R"({"type":"run","id":1e300})", "'run' record's \"id\""},
        {R"({"type":"run","id":3,"trial":-1e300})", "'run' record's \"trial\""},
        {R"({"type":"run","id":3,"pair":0.5})", "'run' record's \"pair\""},
        {R"({"type":"trial","id":2147483647})", "'trial' record's \"id\""},
        {R"({"type":"plan","id":1,"parent":1e10})", "'plan' record's \"parent\""},
        {R"({"type":"batch","runs":[{"id":1,"seed_index":-1e20}]})", "\"seed_index\""},
        {R"({"type":"batch","runs":[{"id":1e300}]})", "\"id\""},
    };
    for (const auto& [record, field] : bad) {
        try {
            (void)search::replay({parse_json(record)});
            ADD_FAILURE() << "accepted " << record;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput) << record;
            EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << record << ": " << e.what();
        }
    }
    const Json run = parse_json(R"({"type":"run","id":4,"trial":1,"pair":0,"seed":-2147483647})");
    EXPECT_EQ(search::RunPlan::from_json(run).seed, -2147483647);
    EXPECT_EQ(search::replay({run}).next_run, 5);

    // The CLI: exit 2 with the message, from `search report` and `--resume`.
    TempDir d;
    // A real search's journal (header and baseline) with its first run's id damaged.
    std::string journal = test::read_file(test::source_path("tests/fuzz/corpus/journal/baseline.jsonl"));
    const std::string first_run = R"({"type":"run","id":0,)";
    ASSERT_NE(journal.find(first_run), std::string::npos);
    journal.replace(journal.find(first_run), first_run.size(), R"({"type":"run","id":1e300,)");
    test::write_file(d.file("journal.jsonl"), journal);
    for (const std::string cmd : {" search report ", " search --resume "}) {
        const Shell r = sh(kGpt + cmd + d.path);
        EXPECT_EQ(r.code, 2) << cmd << r.output;
        EXPECT_NE(r.output.find("not an integer in [-2^30, 2^30]"), std::string::npos) << cmd << r.output;
        EXPECT_EQ(r.output.find("internal"), std::string::npos) << cmd << r.output;
    }
}

// A full disk under a training run: its log and checkpoints fail with exit 1
// and a message naming the file; log.jsonl holds only whole records; no
// temporary checkpoint is left to keep the disk full; the run resumes from
// what is there once space is back. Injected (LD_PRELOAD: writes to the run
// directory fail with ENOSPC after N bytes) at a spread of N, and on a real
// tiny tmpfs when this machine lets the test mount one.
TEST(OutputFiles, FullDiskIsAnErrorNotATruncation) {
    TempDir d;
    auto check_run = [&](const std::string& run, const Shell& r, const std::string& where) {
        SCOPED_TRACE(where);
        if (r.code == 0) return false;  // everything fitted
        EXPECT_EQ(r.code, 1) << r.output;
        EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find(run), std::string::npos) << "the message names no file of the run:\n" << r.output;
        if (fs::exists(run + "/log.jsonl")) {
            const std::string log = test::read_file(run + "/log.jsonl");
            EXPECT_TRUE(log.empty() || log.back() == '\n') << "torn last record";
            std::istringstream in(log);
            std::string line;
            while (std::getline(in, line)) EXPECT_NO_THROW(parse_json(line)) << line;
        }
        if (fs::exists(run + "/checkpoints"))
            for (const auto& e : fs::directory_iterator(run + "/checkpoints"))
                EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
        return true;
    };
    int cases = 0, failures = 0;
    for (const long after : {0L, 100L, 2000L, 6000L, 20000L, 60000L, 100000L, 200000L}) {
        const std::string run = d.file("inj" + std::to_string(after));
        const Shell r = sh("env LD_PRELOAD=" + kFaultLib + " GPT_FAULT_ENOSPC=" + run + " GPT_FAULT_ENOSPC_AFTER=" + std::to_string(after) + " " +
                           kGpt + " train" + tiny_sets(run) + " --set run.max_steps=6 --set run.checkpoint_every=2");
        failures += check_run(run, r, "injected after " + std::to_string(after) + " bytes");
        cases++;
        // Space again: a checkpoint that was completed resumes; else a new run starts over.
        const Shell again = sh(kGpt + " eval --checkpoint " + run + " --batches 1").code == 0
                                ? sh(kGpt + " train --resume " + run + " --set run.max_steps=6 --quiet")
                                : sh(kGpt + " train --force" + tiny_sets(run) + " --set run.max_steps=6");
        EXPECT_EQ(again.code, 0) << again.output;
    }
    EXPECT_GE(failures, 5);

    // A real full file system, where the machine allows mounting one (root, no seccomp/userns ban).
    const std::string mnt = d.file("tmpfs");
    fs::create_directories(mnt);
    if (::geteuid() == 0 && ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") == 0) {
        const std::string run = mnt + "/run";
        const Shell r = sh(kGpt + " train" + tiny_sets(run) + " --set run.max_steps=20 --set run.checkpoint_every=1");
        const bool failed = check_run(run, r, "tmpfs of 64 KiB");
        EXPECT_TRUE(failed) << "the run fitted in 64 KiB:\n" << r.output;
        failures += failed;
        cases++;
        ::umount(mnt.c_str());
        std::printf("full disk: a real 64 KiB tmpfs was mounted and filled\n");
    } else {
        std::printf("full disk: this machine does not allow mounting a tmpfs here; injected ENOSPC only\n");
    }
    std::printf("full disk: %d cases, %d ended in a reported error\n", cases, failures);
}
