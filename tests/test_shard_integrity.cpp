// Shards under change: a shard overwritten or truncated in place while a run
// uses it never crashes the run (it is read, not mapped) and ends it with a
// message and a checkpoint; an interrupted re-run of `gpt data prepare` into
// the same directory never leaves a silent mix of two runs' shards.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "data/shard.h"
#include "kernels/error.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace gpt;
using gpt::test::TempDir;

namespace {

const std::string kGpt = GPT_BINARY;
const std::string kFaultLib = GPT_FAULT_LIB;

// A shell command line; stdout and stderr together, code 128 + N when killed by signal N.
using Shell = gpt::test::RunResult;
Shell sh(const std::string& cmd) { return gpt::test::run_shell(cmd); }

std::vector<int32_t> tokens(size_t n, int seed) {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; i++) t[i] = int32_t((i * 7 + size_t(seed) * 13) % 32);
    return t;
}

}  // namespace

// What was read and validated stays what the run trains on: truncating and
// rewriting the file afterwards changes nothing (with a mapping this was a
// SIGBUS, or tokens never validated).
TEST(ShardIntegrity, ReadShardIsImmuneToInPlaceChanges) {
    TempDir d;
    const auto want = tokens(10000, 1);
    write_shard(d.file("a.bin"), want, 32);
    const Shard s(d.file("a.bin"), 32, "data.train");
    ::truncate(d.file("a.bin").c_str(), 1024);
    std::ofstream(d.file("a.bin"), std::ios::binary | std::ios::app) << std::string(100, '\xff');
    uint64_t same = 0;
    for (size_t i = 0; i < want.size(); i++) same += s.tokens()[i] == want[i];
    EXPECT_EQ(same, want.size());
}

// A shard truncated in place under a running training: when the run reaches
// it, the run ends with exit 2 naming the shard, after saving the checkpoint
// of its last completed step.
TEST(ShardIntegrity, ShardTruncatedUnderARunEndsItWithACheckpoint) {
    TempDir d;
    write_shard(d.file("train_0.bin"), tokens(400000, 1), 32);
    write_shard(d.file("train_1.bin"), tokens(400000, 2), 32);
    write_shard(d.file("val.bin"), tokens(5000, 3), 32);
    const std::string run = d.file("run");
    const std::string cmd = kGpt +
                            " train --set model.n_layer=1 --set model.n_head=2 --set model.n_embd=16 --set model.seq_len=8 --set model.vocab_size=32"
                            " --set run.batch_size=2 --set run.threads=1 --set run.val_every=0 --set run.val_batches=1 --set run.max_steps=1000000"
                            " --set schedule.steps=1000000 --set schedule.warmup_steps=1 --set data.source=shards --set data.train=" +
                            d.file("train_*.bin") + " --set data.val=" + d.file("val.bin") + " --set run.out_dir=" + run + " --quiet";
    std::thread truncator([&] {
        for (int i = 0; i < 1200 && !fs::exists(run + "/log.jsonl"); i++) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        ::truncate(d.file("train_1.bin").c_str(), 5000);  // in place: same inode, the run cannot see it coming
    });
    const Shell r = sh(cmd);
    truncator.join();
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(d.file("train_1.bin")), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("saving the checkpoint of step"), std::string::npos) << r.output;
    EXPECT_TRUE(fs::exists(run + "/checkpoints/latest")) << r.output;
}

namespace {

// The headers of DIR/NAME_train_*.bin and whether the set check accepts them.
struct DirState {
    std::vector<std::string> files;
    std::vector<ShardHeader> headers;
    bool accepted = false;
    std::string refusal;
};

DirState state_of(const std::string& dir, const std::string& name) {
    DirState s;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n.rfind(name + "_train_", 0) == 0 && n.size() > 4 && n.substr(n.size() - 4) == ".bin") s.files.push_back(e.path().string());
    }
    std::sort(s.files.begin(), s.files.end());
    for (const auto& f : s.files) s.headers.push_back(read_shard_header(f, "test"));
    try {
        check_shard_sets(s.files, s.headers, "data.train");
        s.accepted = true;
    } catch (const Error& e) {
        s.refusal = e.what();
    }
    return s;
}

}  // namespace

// A first prepare (run A, 7 train shards), then a second one (run B, other
// text, 4 train shards) into the same directory, killed at each of its
// renames/unlinks in turn (LD_PRELOAD). After every kill the train shards are
// run A's complete set, run B's complete set, or a mix the trainer refuses
// with a message: never an accepted mix. Re-running B then leaves B's set only.
TEST(ShardIntegrity, KilledPrepareRerunNeverLeavesASilentMix) {
    TempDir d;
    std::string text_a, text_b;
    for (int i = 0; i < 300; i++) text_a += "{\"text\":\"document " + std::to_string(i) + " of the first corpus, with some words\"}\n";
    for (int i = 0; i < 180; i++) text_b += "{\"text\":\"other " + std::to_string(i) + " text\"}\n";
    test::write_file(d.file("a.jsonl"), text_a);
    test::write_file(d.file("b.jsonl"), text_b);
    const std::string out = d.file("out"), a = d.file("saved_a");
    const std::string common = " data prepare --quiet --name n --shard-tokens 500 --val-every 10 --out " + out + " ";
    ASSERT_EQ(sh(kGpt + common + d.file("a.jsonl")).code, 0);
    const DirState first = state_of(out, "n");
    ASSERT_TRUE(first.accepted) << first.refusal;
    ASSERT_GE(first.files.size(), 6u);
    fs::copy(out, a, fs::copy_options::recursive);

    // Count B's namespace changes.
    const std::string trace = d.file("trace.txt");
    ASSERT_EQ(sh("env LD_PRELOAD=" + kFaultLib + " GPT_FAULT_TRACE=" + trace + " " + kGpt + common + d.file("b.jsonl")).code, 0);
    const DirState second = state_of(out, "n");
    ASSERT_TRUE(second.accepted) << second.refusal;
    ASSERT_LT(second.files.size(), first.files.size());
    size_t calls = 0;
    {
        std::ifstream t(trace);
        std::string line;
        while (std::getline(t, line)) calls++;
    }
    ASSERT_GT(calls, second.files.size());

    int kills = 0, refused = 0;
    for (size_t k = 1; k <= calls; k++) {
        SCOPED_TRACE("killed at namespace change " + std::to_string(k) + " of " + std::to_string(calls));
        fs::remove_all(out);
        fs::copy(a, out, fs::copy_options::recursive);
        const Shell killed = sh("env LD_PRELOAD=" + kFaultLib + " GPT_FAULT_KILL_AT=" + std::to_string(k) + " " + kGpt + common + d.file("b.jsonl"));
        ASSERT_EQ(killed.code, 128 + SIGKILL) << killed.output;
        kills++;
        const DirState s = state_of(out, "n");
        if (!s.accepted) {
            refused++;
            EXPECT_NE(s.refusal.find("mix two `gpt data prepare` runs"), std::string::npos) << s.refusal;
            continue;
        }
        // Accepted: exactly one run's complete set.
        const uint64_t id = s.headers.front().set.id;
        for (const auto& h : s.headers) EXPECT_EQ(h.set.id, id);
        EXPECT_EQ(s.files.size(), size_t(s.headers.front().set.count));
        EXPECT_TRUE(s.files.size() == first.files.size() || s.files.size() == second.files.size());
    }
    // The trainer says so too, and a completed re-run repairs the directory.
    fs::remove_all(out);
    fs::copy(a, out, fs::copy_options::recursive);
    const Shell killed = sh("env LD_PRELOAD=" + kFaultLib + " GPT_FAULT_KILL_AT=" + std::to_string(calls - 1) + " " + kGpt + common + d.file("b.jsonl"));
    ASSERT_EQ(killed.code, 128 + SIGKILL);
    const Shell train = sh(kGpt + " train --set model.preset=nano --set run.max_steps=1 --set schedule.warmup_steps=0 --set data.source=shards --set data.train='" + out +
                           "/n_train_*.bin' --set data.val='" + out + "/n_val_*.bin' --set run.out_dir=" + d.file("run") + " --quiet");
    if (!state_of(out, "n").accepted) {
        EXPECT_EQ(train.code, 2) << train.output;
        EXPECT_NE(train.output.find("A re-run into the same directory was interrupted"), std::string::npos) << train.output;
    }
    ASSERT_EQ(sh(kGpt + common + d.file("b.jsonl")).code, 0);
    const DirState repaired = state_of(out, "n");
    EXPECT_TRUE(repaired.accepted) << repaired.refusal;
    EXPECT_EQ(repaired.files.size(), second.files.size());
    for (const auto& e : fs::directory_iterator(out)) EXPECT_EQ(e.path().filename().string().find(".prepare."), std::string::npos) << e.path();
    std::printf("prepare re-run: %d kills injected, %d left a mix the check refused, the rest a complete set\n", kills, refused);
    EXPECT_GT(refused, 0) << "no kill point fell inside the final moves";
}
