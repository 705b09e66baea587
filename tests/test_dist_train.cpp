// Data-parallel training over MPI on the CPU: N ranks with micro-batch B
// train exactly what one process with micro-batch N*B trains (the ranks read
// disjoint rows that together are the big batch's rows), with the optimizer
// replicated (run.zero=0) or sharded (run.zero=1); a 2-rank run resumes on
// the same curve; a killed rank ends the job with a message naming it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/test_util.h"

using gpt::test::log_field;
using gpt::test::run_gpt;
using gpt::test::TempDir;

namespace {

std::string config(const std::string& out, int batch, int steps, const std::string& extra = "") {
    return "--set model.preset=nano --set model.n_layer=2 --set data.synthetic.vocab=32 --set data.synthetic.order=1 "
           "--set run.batch_size=" + std::to_string(batch) + " --set run.max_steps=" + std::to_string(steps) +
           " --set schedule.steps=12 --set schedule.warmup_steps=2 --set optim.lr=0.01 --set run.val_every=4 --set run.val_batches=2 "
           "--set run.threads=1 --set run.out_dir=" + out + " " + extra;
}

void expect_same_curve(const std::vector<double>& got, const std::vector<double>& want, double rel, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    ASSERT_FALSE(want.empty()) << what;
    for (size_t i = 0; i < want.size(); i++) {
        ASSERT_FALSE(std::isnan(got[i])) << what;
        EXPECT_NEAR(got[i], want[i], rel * std::fabs(want[i])) << what << " record " << i;
    }
}

}  // namespace

TEST(DataParallel, RanksTrainWhatOneProcessTrains) {
    TempDir d;
    for (int world : {2, 3}) {
        const std::string single = d.file("single" + std::to_string(world));
        auto s = run_gpt("train " + config(single, 2 * world, 8));
        ASSERT_EQ(s.code, 0) << s.output;
        // ZeRO 0 with the gradient all-reduce overlapping the backward pass (the
        // default), without overlap, with it after two accumulated micro-batches
        // (batch 1 x 2), and ZeRO 1; the accumulated ones again with the
        // micro-batches summed in a separate f32 buffer (run.grad_accum_f32: the
        // reduction then runs after the pass, on that buffer).
        struct Mode { int zero, batch; std::string extra; };
        const std::string accum = "--set run.total_batch_tokens=" + std::to_string(2 * world * 8);
        const std::vector<Mode> modes = {
            {0, 2, ""},
            {0, 2, "--set run.overlap_reduce=false"},
            {0, 1, accum},
            {1, 2, ""},
            {0, 1, accum + " --set run.grad_accum_f32=true"},
            {1, 1, accum + " --set run.grad_accum_f32=true"},
        };
        for (size_t i = 0; i < modes.size(); i++) {
            const int zero = modes[i].zero;
            const std::string multi = d.file("w" + std::to_string(world) + "m" + std::to_string(i));
            auto m = run_gpt("launch -n " + std::to_string(world) + " -- train " +
                             config(multi, modes[i].batch, 8, "--set run.zero=" + std::to_string(zero) + " " + modes[i].extra));
            ASSERT_EQ(m.code, 0) << m.output;
            EXPECT_NE(m.output.find("data parallel: " + std::to_string(world) + " ranks"), std::string::npos) << m.output;
            const std::string tag = "world " + std::to_string(world) + " zero " + std::to_string(zero) + " " + modes[i].extra;
            // float32 sums in a different order: agreement to ~1e-6, well below any training signal.
            expect_same_curve(log_field(multi + "/log.jsonl", "step", "loss"), log_field(single + "/log.jsonl", "step", "loss"), 2e-5,
                              tag + " train loss");
            expect_same_curve(log_field(multi + "/log.jsonl", "step", "grad_norm"), log_field(single + "/log.jsonl", "step", "grad_norm"), 2e-5,
                              tag + " grad norm");
            // Validation reads run.batch_size sequences per rank: the same set as one process only at batch 2.
            if (modes[i].batch == 2)
                expect_same_curve(log_field(multi + "/log.jsonl", "val", "val_loss"), log_field(single + "/log.jsonl", "val", "val_loss"), 2e-5,
                                  tag + " val loss");
            if (zero == 1) EXPECT_NE(m.output.find("ZeRO-1"), std::string::npos) << m.output;
        }
    }
}

// Every modern architecture choice, with Muon.
const std::string kModern =
    "--set optim.type=muon --set optim.muon_lr=0.02 --set optim.embed_lr=0.05 --set model.pos_emb=rope --set model.norm=rmsnorm "
    "--set model.qk_norm=true --set model.activation=relu2 --set model.bias=false --set model.tied_head=false "
    "--set model.logit_softcap=15";

// Muon with the modern architecture: 2 and 3 ranks, replicated and ZeRO-1,
// train what one process trains. With ZeRO-1 a rank owns the hidden matrices
// that meet its shard, whole; at 3 ranks the shard boundaries fall inside
// matrices, which both neighbours then update identically.
TEST(DataParallel, MuonRanksTrainWhatOneProcessTrains) {
    TempDir d;
    const std::string& modern = kModern;
    for (int world : {2, 3}) {
        const std::string single = d.file("single" + std::to_string(world));
        auto s = run_gpt("train " + config(single, 2 * world, 8, modern));
        ASSERT_EQ(s.code, 0) << s.output;
        EXPECT_NE(s.output.find("optimizer: Muon"), std::string::npos) << s.output;
        for (int zero : {0, 1}) {
            const std::string multi = d.file("w" + std::to_string(world) + "z" + std::to_string(zero));
            auto m = run_gpt("launch -n " + std::to_string(world) + " -- train " + config(multi, 2, 8, modern + " --set run.zero=" + std::to_string(zero)));
            ASSERT_EQ(m.code, 0) << m.output;
            const std::string tag = "muon world " + std::to_string(world) + " zero " + std::to_string(zero);
            expect_same_curve(log_field(multi + "/log.jsonl", "step", "loss"), log_field(single + "/log.jsonl", "step", "loss"), 2e-5,
                              tag + " train loss");
            expect_same_curve(log_field(multi + "/log.jsonl", "step", "grad_norm"), log_field(single + "/log.jsonl", "step", "grad_norm"), 2e-5,
                              tag + " grad norm");
        }
    }
}

// The modern model with Muon under ZeRO-1: a checkpoint written by 2 ranks
// (model.safetensors, the moments gathered from both shards) resumes in 2
// ranks and in one process (the moments re-sharded, micro-batch 2 x 2 rows),
// and both continue the curve of the run that was never stopped.
TEST(DataParallel, MuonZeroOneCheckpointResumesAtTwoRanksAndAtOne) {
    TempDir d;
    const std::string single = d.file("single"), two = d.file("two"), one = d.file("one");
    auto s = run_gpt("train " + config(single, 4, 10, kModern));
    ASSERT_EQ(s.code, 0) << s.output;
    auto a = run_gpt("launch -n 2 -- train " + config(two, 2, 5, kModern + " --set run.zero=1"));
    ASSERT_EQ(a.code, 0) << a.output;
    EXPECT_TRUE(std::filesystem::exists(two + "/checkpoints/step_000005/model.safetensors")) << a.output;
    std::filesystem::copy(two, one, std::filesystem::copy_options::recursive);
    auto b = run_gpt("launch -n 2 -- train --resume " + two + " --set run.max_steps=10");
    ASSERT_EQ(b.code, 0) << b.output;
    expect_same_curve(log_field(two + "/log.jsonl", "step", "loss"), log_field(single + "/log.jsonl", "step", "loss"), 2e-5,
                      "muon zero 1: 2 ranks resumed at 2");
    auto c = run_gpt("train --resume " + one + " --set run.max_steps=10 --set run.batch_size=4");
    ASSERT_EQ(c.code, 0) << c.output;
    EXPECT_NE(c.output.find("re-sharded"), std::string::npos) << c.output;
    expect_same_curve(log_field(one + "/log.jsonl", "step", "loss"), log_field(single + "/log.jsonl", "step", "loss"), 2e-5,
                      "muon zero 1: 2 ranks resumed at 1");
    // The validations at the single run's steps (the stopped run also validated at its last step, 5).
    const std::vector<double> val_steps = log_field(one + "/log.jsonl", "val", "step"), val = log_field(one + "/log.jsonl", "val", "val_loss");
    std::vector<double> val_at_single_steps;
    for (size_t i = 0; i < val.size() && i < val_steps.size(); i++)
        if (val_steps[i] != 5) val_at_single_steps.push_back(val[i]);
    expect_same_curve(val_at_single_steps, log_field(single + "/log.jsonl", "val", "val_loss"), 2e-5, "muon zero 1: 2 ranks resumed at 1, val");
}

TEST(DataParallel, TwoRankResumeContinuesTheCurve) {
    TempDir d;
    const std::string full = d.file("full"), part = d.file("part");
    ASSERT_EQ(run_gpt("launch -n 2 -- train " + config(full, 2, 12, "--set run.zero=1")).code, 0);
    auto a = run_gpt("launch -n 2 -- train " + config(part, 2, 5, "--set run.zero=1"));
    ASSERT_EQ(a.code, 0) << a.output;
    auto b = run_gpt("launch -n 2 -- train --resume " + part + " --set run.max_steps=12");
    ASSERT_EQ(b.code, 0) << b.output;
    expect_same_curve(log_field(part + "/log.jsonl", "step", "loss"), log_field(full + "/log.jsonl", "step", "loss"), 1e-6, "resumed loss");
    // The same checkpoint also resumes in one process (the moments are re-sharded).
    auto c = run_gpt("train --resume " + part + " --set run.max_steps=14 --set schedule.steps=14");
    EXPECT_EQ(c.code, 0) << c.output;
    EXPECT_NE(c.output.find("re-sharded"), std::string::npos) << c.output;
}

// Starts a long 2-rank run, sends `signal` to one rank (not the launcher, not
// mpirun) once training has started, and returns the job's output; the job
// must end within 60 s. rc_out gets its exit code.
std::string run_and_signal_a_rank(const TempDir& d, const std::string& signal, const std::string& extra, int& rc_out) {
    const std::string out = d.file("run"), log = d.file("launch.log"), rc = d.file("rc");
    const std::string bin = GPT_BINARY;
    const std::string script =
        "(" + bin + " launch -n 2 -- train " + config(out, 2, 1000000, "--set run.budget_s=120 --set schedule.steps=1000000 " + extra) +
        " > " + log + " 2>&1; echo $? > " + rc + ") & "
        "for i in $(seq 1 300); do grep -q '\"type\":\"step\"' " + out + "/log.jsonl 2>/dev/null && break; sleep 0.1; done; "
        "victim=$(pgrep -f '^" + bin + " train .*" + out + "' | head -n 1); kill -" + signal + " $victim; "
        "start=$(date +%s); while [ ! -s " + rc + " ] && [ $(( $(date +%s) - start )) -lt 60 ]; do sleep 0.2; done; "
        "kill -9 $victim 2>/dev/null; true";
    const std::string script_file = d.file("signal.sh");
    gpt::test::write_file(script_file, script);
    EXPECT_EQ(std::system(("bash " + script_file).c_str()), 0);
    const std::string code = gpt::test::read_file(rc);
    rc_out = code.empty() ? -1 : std::stoi(code);
    return gpt::test::read_file(log);
}

TEST(DataParallel, KilledRankEndsTheJobNamingIt) {
    TempDir d;
    int rc = 0;
    const std::string output = run_and_signal_a_rank(d, "9", "", rc);
    ASSERT_NE(rc, -1) << "the job did not end within 60 s of a rank being killed\n" << output;
    EXPECT_NE(rc, 0);
    EXPECT_NE(output.find("rank"), std::string::npos) << output;
}

// A rank that hangs (stopped, not dead: the launcher sees nothing) stalls the
// others in their next collective; run.dist_timeout_s ends the job.
TEST(DataParallel, HungRankEndsTheJobAfterTheTimeout) {
    TempDir d;
    int rc = 0;
    const std::string output = run_and_signal_a_rank(d, "STOP", "--set run.dist_timeout_s=3", rc);
    ASSERT_NE(rc, -1) << "the job did not end within 60 s of a rank hanging\n" << output;
    EXPECT_NE(rc, 0);
    EXPECT_NE(output.find("has not completed after 3 s (run.dist_timeout_s)"), std::string::npos) << output;
}

// `gpt bench step` under the launcher times data-parallel steps and reports
// every rank's tokens/s and the total (the multi-GPU scaling benchmark).
TEST(DataParallel, BenchStepReportsPerRankAndTotal) {
    auto r = run_gpt("launch -n 2 -- bench step --set model.preset=nano --set run.batch_size=2 --set run.zero=1 --repeats 2 --warmup 1 --json");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("\"ranks\":2"), std::string::npos) << r.output;
    const auto p = r.output.find("\"rank_tokens_per_s\":[");
    ASSERT_NE(p, std::string::npos) << r.output;
    const std::string list = r.output.substr(p, r.output.find(']', p) - p);
    EXPECT_EQ(std::count(list.begin(), list.end(), ','), 1) << list;
    // Only rank 0 reports.
    EXPECT_EQ(r.output.find("\"B\":"), r.output.rfind("\"B\":")) << r.output;
}
