// NaN/inf policy (run.on_nonfinite: stop | skip_step), checked before every
// update and on the weights after it: a ruined state is never checkpointed
// and never evaluates to a silent NaN. llm.c's z-score outlier skip, and an
// exact resume across it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "kernels/error.h"
#include "model/gpt2.h"
#include "model/model_file.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/dist.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace gpt;
using gpt::test::TempDir;

namespace {

const std::string kGpt = GPT_BINARY;

std::vector<std::string> small_sets(const std::string& out, int steps) {
    return {"model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.seq_len=8", "model.vocab_size=32", "data.synthetic.vocab=32",
            "data.synthetic.order=1", "run.batch_size=2", "run.val_batches=1", "run.val_every=0", "run.threads=1", "schedule.warmup_steps=1",
            "schedule.steps=200", "run.max_steps=" + std::to_string(steps), "run.out_dir=" + out};
}

std::string cli_sets(const std::string& out, int steps) {
    std::string s;
    for (const auto& kv : small_sets(out, steps)) s += " --set " + kv;
    return s + " --quiet";
}

// The step runs one of two ways (train/step.h): one unit of enqueued work
// whose AdamW refuses a non-finite update on the device, or two halves with
// the host judging in between, taken with Muon or with a z-score judge
// (run.skip_update_*z). Every policy test runs on each.
struct StepPath {
    const char* name;
    std::vector<std::string> sets;
};
const std::vector<StepPath>& step_paths() {
    static const std::vector<StepPath> paths = {
        {"adamw, device guard", {}},
        // A z-score threshold no update reaches before the 128-step window is full: only the path changes.
        {"adamw, host judge", {"run.skip_update_lossz=100"}},
        {"muon, host", {"optim.type=muon"}},
        {"muon, host judge", {"optim.type=muon", "run.skip_update_gradz=100"}},
    };
    return paths;
}

std::string cli(const std::vector<std::string>& sets) {
    std::string s;
    for (const auto& kv : sets) s += " --set " + kv;
    return s;
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

int count_records(const std::string& log, const std::string& type) {
    std::ifstream f(log);
    std::string line;
    int n = 0;
    while (std::getline(f, line)) n += line.find("\"type\":\"" + type + "\"") != std::string::npos;
    return n;
}

}  // namespace

// lr 1e30 for one or two steps: the weights become huge (finite) or
// infinite. The run ends with exit 1 and "diverged"; no checkpoint is
// written from the ruined weights, and nothing prints a NaN loss as a result.
// With Muon both learning rates are 1e30.
TEST(NonFinite, RuinousUpdateIsNeverSaved) {
    for (const auto& path : step_paths())
        for (const std::string extra : {" --set run.max_steps=1", " --set run.max_steps=3 --set run.checkpoint_every=1"}) {
            SCOPED_TRACE(std::string(path.name) + extra);
            TempDir d;
            const auto r = test::run_gpt("train" + cli_sets(d.path, 1) + cli(path.sets) + " --set optim.lr=1e30 --set optim.muon_lr=1e30" + extra);
            EXPECT_EQ(r.code, 1) << r.output;
            EXPECT_NE(r.output.find("training diverged"), std::string::npos) << r.output;
            EXPECT_EQ(r.output.find("final val loss"), std::string::npos) << r.output;
            EXPECT_FALSE(fs::exists(d.path + "/checkpoints/latest"));
            const auto ev = test::run_gpt("eval --checkpoint " + d.path);
            EXPECT_EQ(ev.code, 2) << ev.output;  // nothing to evaluate
        }
}

// A checkpoint whose weights are finite but make the loss infinite (wte and
// the final LayerNorm at 1e30). stop: the first step ends the run, its update not applied,
// nothing saved. skip_step: updates are skipped (logged) and the run gives up
// after 20 in a row. gpt eval of it: exit 1, the loss is not printed as NaN.
// On every step path (the saved config carries it into the resumed runs).
TEST(NonFinite, PoliciesOnAnOverflowingModel) {
    for (const auto& path : step_paths()) {
        SCOPED_TRACE(path.name);
        TempDir d;
        TrainOptions quiet;
        quiet.quiet = true;
        train(parse_config_text("{}", "test", plus(small_sets(d.path, 2), path.sets)), quiet);
        const std::string ck = resolve_checkpoint(d.path);
        ModelShape s;
        std::vector<float> w = read_model_file(ck + "/model.bin", s);
        // wte and the final LayerNorm's weight and bias (the last 2C values) at 1e30: finite, but
        // the logits (1e60) are not.
        for (size_t i = 0; i < size_t(s.Vp) * s.C; i++) w[i] = w[i] >= 0 ? 1e30f : -1e30f;
        for (size_t i = w.size() - 2 * size_t(s.C); i < w.size(); i++) w[i] = 1e30f;
        write_model_file(ck + "/model.bin", s, w);
        write_model_safetensors(ck + "/model.safetensors", s, w, test::read_file(ck + "/config.yaml"));  // the file a resume reads
        const std::string latest = test::read_file(d.path + "/checkpoints/latest");

        auto stop = test::run_gpt("train --resume " + d.path + " --set run.max_steps=10 --quiet");
        EXPECT_EQ(stop.code, 1) << stop.output;
        EXPECT_NE(stop.output.find("the update was not applied"), std::string::npos) << stop.output;
        EXPECT_NE(stop.output.find("run.on_nonfinite=skip_step"), std::string::npos) << stop.output;
        EXPECT_EQ(test::read_file(d.path + "/checkpoints/latest"), latest);

        auto skip = test::run_gpt("train --resume " + d.path + " --set run.max_steps=40 --set run.on_nonfinite=skip_step --quiet");
        EXPECT_EQ(skip.code, 1) << skip.output;
        EXPECT_NE(skip.output.find("20 steps in a row had a non-finite loss"), std::string::npos) << skip.output;
        EXPECT_EQ(count_records(d.path + "/log.jsonl", "skip"), 20);
        EXPECT_EQ(test::read_file(d.path + "/checkpoints/latest"), latest);

        auto ev = test::run_gpt("eval --checkpoint " + d.path);
        EXPECT_EQ(ev.code, 1) << ev.output;
        EXPECT_NE(ev.output.find("forward pass overflows"), std::string::npos) << ev.output;
        EXPECT_EQ(ev.output.find("val_loss"), std::string::npos) << ev.output;
    }
}

// The step itself (train/step.h), on each path: a finite step updates the
// weights; a step whose loss is not finite leaves every weight as it was
// (refused on the device, or by the host between the halves), still counts
// as a step, and says it was not applied; the next finite step updates again.
TEST(NonFinite, RefusedUpdateLeavesTheWeightsOnEveryPath) {
    for (const auto& path : step_paths()) {
        SCOPED_TRACE(path.name);
        TempDir d;
        const Config cfg = parse_config_text("{}", "test", plus(small_sets(d.path, 3), path.sets));
        test::StepParts parts(cfg);
        GPT2& model = *parts.model;
        Optimizer& optim = *parts.optim;
        const ModelShape& s = model.shape();
        const int B = model.B(), T = model.T();
        ASSERT_EQ(optim.uses_muon(), cfg.optim.type == "muon");
        StepOptions sopt;
        int judged = 0, judged_nonfinite = 0;
        const bool host_judges = cfg.run.skip_update_lossz > 0 || cfg.run.skip_update_gradz > 0;
        if (host_judges)
            sopt.judge = [&](double loss, double norm) {
                judged++;
                const bool finite = std::isfinite(loss) && std::isfinite(norm);
                judged_nonfinite += !finite;
                return finite;
            };
        TrainStep step(model, optim, *parts.comm, sopt);
        for (size_t i = 0; i < size_t(B) * T; i++) {
            step.inputs(0)[i] = int32_t((i * 7 + 3) % s.V);
            step.targets(0)[i] = int32_t((i * 5 + 1) % s.V);
        }

        const std::vector<float> w0 = model.params_llmc();
        const StepResult first = step.run(1e-2);
        EXPECT_TRUE(first.applied);
        EXPECT_TRUE(std::isfinite(first.loss));
        std::vector<float> w1 = model.params_llmc();
        EXPECT_NE(w1, w0);

        // wte and the final norm at 1e30: every weight finite, the logits not.
        for (size_t i = 0; i < size_t(s.Vp) * s.C; i++) w1[i] = w1[i] >= 0 ? 1e30f : -1e30f;
        for (size_t i = w1.size() - 2 * size_t(s.C); i < w1.size(); i++) w1[i] = 1e30f;
        model.load_params_llmc(w1);
        const std::vector<float> ruined = model.params_llmc();
        const StepResult refused = step.run(1e-2);
        EXPECT_FALSE(refused.applied);
        EXPECT_FALSE(std::isfinite(refused.loss) && std::isfinite(refused.grad_norm)) << refused.loss << " " << refused.grad_norm;
        EXPECT_EQ(model.params_llmc(), ruined);
        EXPECT_EQ(optim.step_count(), 2);
        if (host_judges) {
            EXPECT_EQ(judged, 2);
            EXPECT_EQ(judged_nonfinite, 1);
        }

        model.load_params_llmc(w0);
        const StepResult again = step.run(1e-2);
        EXPECT_TRUE(again.applied);
        EXPECT_NE(model.params_llmc(), w0);
        EXPECT_EQ(optim.step_count(), 3);
    }
}

// llm.c's z-score skip: with a low threshold, updates are skipped once the
// 128-step window is full; the window is saved with the checkpoint, so an
// interrupted and resumed run skips the same updates and ends with the same
// weights, bit for bit. With AdamW and with Muon (whose momentum is saved too).
TEST(NonFinite, ZScoreSkipAndExactResume) {
    for (const std::string optimizer : {"adamw", "muon"}) {
        SCOPED_TRACE(optimizer);
        TempDir a, b;
        TrainOptions quiet;
        quiet.quiet = true;
        auto sets = [&](const std::string& out, int steps) {
            auto s = small_sets(out, steps);
            s.push_back("run.skip_update_lossz=0.3");
            s.push_back("run.skip_update_gradz=0.3");
            s.push_back("run.checkpoint_every=0");
            s.push_back("optim.type=" + optimizer);
            return s;
        };
        const TrainResult full = train(parse_config_text("{}", "test", sets(a.path, 150)), quiet);
        const int skipped = count_records(a.path + "/log.jsonl", "skip");
        EXPECT_GT(skipped, 3);
        EXPECT_LT(skipped, 22 + 1);  // at most the steps after the window filled
        train(parse_config_text("{}", "test", sets(b.path, 137)), quiet);
        TrainOptions resume = quiet;
        resume.resume = b.path;
        const TrainResult rest = train(parse_config_text("{}", "test", sets(b.path, 150)), resume);
        EXPECT_EQ(count_records(b.path + "/log.jsonl", "skip"), skipped);
        ASSERT_EQ(rest.step_losses.size(), 13u);
        for (size_t i = 0; i < 13; i++) EXPECT_EQ(rest.step_losses[i], full.step_losses[137 + i]) << "step " << 138 + i;
        EXPECT_EQ(test::read_file(resolve_checkpoint(a.path) + "/model.bin"), test::read_file(resolve_checkpoint(b.path) + "/model.bin"));
        TrainState st;
        read_state_file(resolve_checkpoint(b.path) + "/state.bin", st);
        EXPECT_EQ(st.skipped_steps, skipped);
        std::printf("z-score skip (%s): %d of 150 updates skipped\n", optimizer.c_str(), skipped);
    }
}
