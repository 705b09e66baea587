// The training loop: schedules, learning the synthetic source down to its
// entropy floor, bit-identical resume, time-to-target, checkpoint files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <sstream>

#include "kernels/backend.h"
#include "kernels/error.h"
#include "model/gpt2.h"
#include "model/model_file.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/schedule.h"
#include "train/step.h"
#include "train/trainer.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

// A small, fast run on the synthetic source.
Config small_config(const std::string& out_dir, std::vector<std::string> extra = {}) {
    std::vector<std::string> sets = {"model.n_layer=2",      "model.n_head=2",       "model.n_embd=32",  "model.seq_len=16",
                                     "model.vocab_size=32",  "data.synthetic.vocab=32", "data.synthetic.order=1",
                                     "run.batch_size=4",     "run.max_steps=12",     "schedule.steps=12", "schedule.warmup_steps=2",
                                     "optim.lr=0.003",       "run.val_every=4",      "run.val_batches=2", "run.threads=2",
                                     "run.out_dir=" + out_dir};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return parse_config_text("{}", "test", sets);
}

std::vector<double> step_losses_from_log(const std::string& path) { return test::log_field(path, "step", "loss"); }
std::vector<double> grad_norms_from_log(const std::string& path) { return test::log_field(path, "step", "grad_norm"); }

}  // namespace

TEST(Schedule, WarmupThenDecayShapes) {
    Config c = parse_config_text("{}", "test", {"run.max_steps=100", "schedule.warmup_steps=10", "optim.lr=1.0",
                                                 "schedule.final_lr_frac=0.1"});
    EXPECT_DOUBLE_EQ(learning_rate(c, 0), 0.1);  // llm.c's warmup: (step+1)/warmup
    EXPECT_DOUBLE_EQ(learning_rate(c, 9), 1.0);
    EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1.0);               // cosine starts at the peak
    EXPECT_NEAR(learning_rate(c, 55), 0.1 + 0.9 * 0.5, 1e-12);  // halfway
    EXPECT_NEAR(learning_rate(c, 100), 0.1, 1e-12);
    EXPECT_NEAR(learning_rate(c, 1000), 0.1, 1e-12);
    c.schedule.type = "linear";
    EXPECT_NEAR(learning_rate(c, 55), 0.55, 1e-12);
    c.schedule.type = "constant";
    EXPECT_DOUBLE_EQ(learning_rate(c, 99), 1.0);
    c.schedule.type = "wsd";
    c.schedule.decay_frac = 0.2;  // stable until step 80, then linear to 0.1 at 100
    EXPECT_DOUBLE_EQ(learning_rate(c, 79), 1.0);
    EXPECT_NEAR(learning_rate(c, 90), 0.55, 1e-12);
    EXPECT_NEAR(learning_rate(c, 100), 0.1, 1e-12);
}

// The embedded default config learns the synthetic source to within 10% of
// its exact entropy floor (the promise for configs/tiny.yaml).
TEST(Train, TinyConfigReachesEntropyFloor) {
    TempDir dir;
    Config cfg = load_config(test::source_path("configs/tiny.yaml"), {"run.out_dir=" + dir.path});
    TrainOptions opt;
    opt.quiet = true;
    TrainResult r = train(cfg, opt);
    ASSERT_TRUE(r.loss_floor.has_value());
    ASSERT_TRUE(r.final_val_loss.has_value());
    std::printf("tiny: val loss %.4f, floor %.4f (ratio %.3f), %lld steps, %.1f s training, %.0f tokens/s\n", *r.final_val_loss,
                *r.loss_floor, *r.final_val_loss / *r.loss_floor, static_cast<long long>(r.steps), r.train_time_s, r.tokens_per_s);
    EXPECT_LE(*r.final_val_loss, 1.10 * *r.loss_floor);
    EXPECT_GE(*r.final_val_loss, 0.97 * *r.loss_floor) << "below the entropy floor: the floor or the loss is wrong";
}

TEST(Train, ResumeIsBitIdentical) {
    TempDir a, b;
    TrainOptions quiet;
    quiet.quiet = true;
    // Uninterrupted: 12 steps.
    TrainResult full = train(small_config(a.path), quiet);
    ASSERT_EQ(full.steps, 12);
    // Interrupted at step 5 (not a multiple of anything), then resumed to 12.
    Config first = small_config(b.path, {"run.max_steps=5"});
    first.schedule.steps = 12;
    TrainResult part1 = train(first, quiet);
    ASSERT_EQ(part1.steps, 5);
    TrainOptions resume = quiet;
    resume.resume = b.path;
    TrainResult part2 = train(small_config(b.path), resume);
    ASSERT_EQ(part2.steps, 12);

    std::vector<double> joined = part1.step_losses;
    joined.insert(joined.end(), part2.step_losses.begin(), part2.step_losses.end());
    ASSERT_EQ(joined.size(), full.step_losses.size());
    for (size_t i = 0; i < joined.size(); i++) EXPECT_EQ(joined[i], full.step_losses[i]) << "step " << i + 1;
    // The log of the resumed run continues the same curve.
    EXPECT_EQ(step_losses_from_log(b.file("log.jsonl")).size(), 12u);
    // Final weights are bit-identical too.
    ModelShape sa, sb;
    auto wa = read_model_file(resolve_checkpoint(a.path) + "/model.bin", sa);
    auto wb = read_model_file(resolve_checkpoint(b.path) + "/model.bin", sb);
    ASSERT_EQ(wa.size(), wb.size());
    EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * 4));
}

namespace {

// Every modern choice at once, with Muon: the model a checkpoint must describe itself.
const std::vector<std::string> kModern = {
    "model.pos_emb=rope",    "model.rope_base=500",     "model.norm=rmsnorm",      "model.qk_norm=true",
    "model.activation=relu2", "model.bias=false",       "model.tied_head=false",   "model.logit_softcap=15",
    "model.zero_init_proj=true", "optim.type=muon",     "optim.muon_lr=0.02",      "optim.embed_lr=0.01",
    "optim.head_lr=0.005"};

std::vector<std::string> with_modern(std::vector<std::string> extra) {
    extra.insert(extra.begin(), kModern.begin(), kModern.end());
    return extra;
}

}  // namespace

// The modern model trains, stops at step 5, resumes from its checkpoint (a
// model.safetensors; no model.bin, which cannot hold it) and continues bit for
// bit: the losses in the log and the final weights are those of the run that
// was never stopped. gpt eval and gpt sample read the checkpoint without a
// config; a config that differs from the checkpoint's model, an llm.c file
// for it and an llm.c or Hugging Face export of it are refused naming the key.
TEST(Train, ModernModelResumesBitIdenticallyFromItsSelfDescribingCheckpoint) {
    TempDir a, b;
    TrainOptions quiet;
    quiet.quiet = true;
    TrainResult full = train(small_config(a.path, with_modern({})), quiet);
    ASSERT_EQ(full.steps, 12);
    TrainResult part1 = train(small_config(b.path, with_modern({"run.max_steps=5"})), quiet);
    ASSERT_EQ(part1.steps, 5);
    const std::string ck5 = resolve_checkpoint(b.path);
    EXPECT_TRUE(std::filesystem::exists(ck5 + "/model.safetensors")) << ck5;
    EXPECT_FALSE(std::filesystem::exists(ck5 + "/model.bin")) << "an llm.c file cannot describe this model";
    TrainOptions resume = quiet;
    resume.resume = b.path;
    TrainResult part2 = train(small_config(b.path, with_modern({})), resume);
    ASSERT_EQ(part2.steps, 12);
    const std::vector<double> want = step_losses_from_log(a.file("log.jsonl")), got = step_losses_from_log(b.file("log.jsonl"));
    ASSERT_EQ(want.size(), 12u);
    ASSERT_EQ(got.size(), 12u);
    for (size_t i = 0; i < want.size(); i++) EXPECT_EQ(got[i], want[i]) << "step " << i + 1;
    ModelShape sa, sb;
    const auto wa = read_model_safetensors(resolve_checkpoint(a.path) + "/model.safetensors", sa);
    const auto wb = read_model_safetensors(resolve_checkpoint(b.path) + "/model.safetensors", sb);
    EXPECT_TRUE(sb.arch == model_shape(small_config(b.path, with_modern({}))).arch);
    ASSERT_EQ(wa.size(), wb.size());
    EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * 4));

    // eval and sample: the checkpoint alone says what model it is.
    auto ev = test::run_gpt("eval --checkpoint " + b.path + " --batches 2 --set data.synthetic.vocab=32 --set data.synthetic.order=1");
    EXPECT_EQ(ev.code, 0) << ev.output;
    EXPECT_NE(ev.output.find("val_loss"), std::string::npos) << ev.output;
    EXPECT_NE(ev.output.find("model.safetensors"), std::string::npos) << ev.output;
    // Greedy: the prompt, then 6 tokens of the model's vocabulary, the same each time the checkpoint is read.
    const std::string sample = std::string(GPT_BINARY) + " sample --checkpoint " + b.path + " --prompt-ids '1 2 3' --max-tokens 6 --temperature 0 2>/dev/null";
    auto sm = test::run_shell(sample);
    EXPECT_EQ(sm.code, 0) << sm.output;
    std::istringstream ids(sm.output);
    std::vector<int> tokens;
    for (int id; ids >> id;) tokens.push_back(id);
    ASSERT_EQ(tokens.size(), 9u) << sm.output;
    EXPECT_EQ(tokens[0], 1);
    for (int id : tokens) EXPECT_TRUE(id >= 0 && id < 32) << sm.output;
    EXPECT_EQ(test::run_shell(sample).output, sm.output);

    // A config that differs from the checkpoint's model: exit 2 naming the first key.
    auto r = test::run_gpt("train --resume " + b.path + " --set run.max_steps=14 --set model.activation=gelu --quiet");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("model.activation is relu2 there, gelu in the config"), std::string::npos) << r.output;
    r = test::run_gpt("train --resume " + b.path + " --set run.max_steps=14 --set model.rope_base=10000 --quiet");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("model.rope_base is 500 there, 10000 in the config"), std::string::npos) << r.output;
    // Exports that cannot describe it.
    r = test::run_gpt("export llmc --checkpoint " + b.path + " --out " + b.file("m.bin"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("cannot write '" + b.file("m.bin") + "' as an llm.c model file"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("model.pos_emb=rope"), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(b.file("m.bin")));
    r = test::run_gpt("export hf --checkpoint " + b.path + " --out " + b.file("hf"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("model.pos_emb=rope"), std::string::npos) << r.output;

    // --init: from the checkpoint (a fresh optimizer), and from a plain GPT-2 llm.c file, which cannot hold this model.
    std::string sets;
    for (const auto& kv : kModern) sets += " --set " + kv;
    const std::string shape_sets =
        " --set model.n_layer=2 --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=16 --set model.vocab_size=32"
        " --set data.synthetic.vocab=32 --set run.batch_size=4 --set run.max_steps=2 --set run.val_every=0 --set run.threads=1 --quiet";
    TempDir c;
    r = test::run_gpt("train --init " + b.path + sets + shape_sets + " --set run.out_dir=" + c.file("init"));
    EXPECT_EQ(r.code, 0) << r.output;
    ModelShape ps = model_shape(small_config(b.path));
    write_model_file(c.file("gpt2.bin"), ps, std::vector<float>(param_count(ps), 0.01f));
    r = test::run_gpt("train --init " + c.file("gpt2.bin") + sets + shape_sets + " --set run.out_dir=" + c.file("init2"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("is an llm.c model file, which describes plain GPT-2 only, but the config has model.pos_emb=rope"),
              std::string::npos)
        << r.output;
}

// B=2 with 2 accumulation steps sees the same rows as B=4 in one step and
// must take the same optimizer steps (up to float summation order).
// The untimed warm-up pass before step 1 changes nothing that is trained:
// same weights, same data position, so the same losses bit for bit.
TEST(Train, WarmupPassDoesNotTrain) {
    test::TempDir a, b;
    TrainOptions quiet;
    quiet.quiet = true;
    TrainResult with = train(small_config(a.path, {"run.max_steps=6", "run.warmup_pass=true"}), quiet);
    TrainResult without = train(small_config(b.path, {"run.max_steps=6", "run.warmup_pass=false"}), quiet);
    ASSERT_EQ(with.step_losses.size(), 6u);
    EXPECT_EQ(with.step_losses, without.step_losses);
    EXPECT_EQ(with.final_val_loss, without.final_val_loss);
}

TEST(Train, GradientAccumulationMatchesTheBigBatch) {
    TempDir a, b;
    TrainOptions quiet;
    quiet.quiet = true;
    TrainResult big = train(small_config(a.path, {"run.batch_size=4", "run.max_steps=6", "schedule.steps=6"}), quiet);
    TrainResult acc = train(small_config(b.path, {"run.batch_size=2", "run.total_batch_tokens=64", "run.max_steps=6", "schedule.steps=6"}), quiet);
    ASSERT_EQ(big.step_losses.size(), 6u);
    ASSERT_EQ(acc.step_losses.size(), 6u);
    EXPECT_EQ(big.tokens, acc.tokens);
    for (size_t i = 0; i < 6; i++) EXPECT_NEAR(acc.step_losses[i], big.step_losses[i], 1e-5 * big.step_losses[i]) << "step " << i + 1;
}

// run.grad_accum_f32: each micro-batch's gradients go into a separate sum that
// the norm and the update read. Without accumulation the sum is a copy of the
// gradients: the run is bit-identical to the plain one. With 4 micro-batches
// it matches the big batch as the plain accumulation does (norms and losses
// to 1e-5: a micro-batch missed or counted twice moves the norm by 10% or
// more), and the recorded step replays it bit for bit (the copy, the zeroing
// and the additions reach the recording).
TEST(Train, F32GradientSumMatchesTheBufferAndTheBigBatch) {
    TrainOptions quiet;
    quiet.quiet = true;
    {
        TempDir a, b;
        const std::vector<std::string> common = {"run.max_steps=6", "schedule.steps=6", "optim.grad_clip=1.5"};
        auto with = common, without = common;
        with.push_back("run.grad_accum_f32=true");
        TrainResult f = train(small_config(a.path, with), quiet), p = train(small_config(b.path, without), quiet);
        ASSERT_EQ(f.step_losses.size(), 6u);
        EXPECT_EQ(f.step_losses, p.step_losses);
        EXPECT_EQ(grad_norms_from_log(a.file("log.jsonl")), grad_norms_from_log(b.file("log.jsonl")));
    }
    TempDir big_dir;
    TrainResult big = train(small_config(big_dir.path, {"run.batch_size=4", "run.max_steps=6", "schedule.steps=6"}), quiet);
    const std::vector<double> big_norms = grad_norms_from_log(big_dir.file("log.jsonl"));
    ASSERT_EQ(big_norms.size(), 6u);
    std::vector<double> direct;
    for (const char* graph : {"run.cuda_graph=false", "run.cuda_graph=true"}) {
        SCOPED_TRACE(graph);
        TempDir d;
        TrainResult acc = train(small_config(d.path, {"run.batch_size=1", "run.total_batch_tokens=64", "run.max_steps=6", "schedule.steps=6",
                                                      "run.grad_accum_f32=true", graph}),
                                quiet);
        ASSERT_EQ(acc.step_losses.size(), 6u);
        EXPECT_EQ(big.tokens, acc.tokens);
        const std::vector<double> norms = grad_norms_from_log(d.file("log.jsonl"));
        ASSERT_EQ(norms.size(), 6u);
        for (size_t i = 0; i < 6; i++) {
            EXPECT_NEAR(acc.step_losses[i], big.step_losses[i], 1e-5 * big.step_losses[i]) << "step " << i + 1;
            EXPECT_NEAR(norms[i], big_norms[i], 1e-5 * big_norms[i]) << "step " << i + 1;
        }
        if (direct.empty()) {
            direct = acc.step_losses;
        } else {
            EXPECT_EQ(acc.step_graph, "replaying");
            EXPECT_EQ(acc.step_losses, direct);
        }
    }
}

// run.grad_accum_f32 with the bucketed reduction (several ranks, run.overlap_reduce):
// during the last micro-batch's backward, each layer's ranges are added into
// the f32 sum (copied, for one micro-batch) before the hook starts that
// layer's reduction on the sum. The hook sees each layer once (L-1 down to 0,
// then -1), on the sum's memory, with that part already final; and the step's
// gradients equal those of the same step without the hook, bit for bit.
TEST(Train, F32GradientSumFeedsTheBucketedReduction) {
    for (int accum : {1, 3}) {
        SCOPED_TRACE("micro-batches " + std::to_string(accum));
        std::vector<float> plain;
        for (bool with_hook : {false, true}) {
            TempDir d;
            const Config cfg = small_config(d.path, {"run.grad_accum_f32=true"});
            test::StepParts parts(cfg);
            GPT2& model = *parts.model;
            Backend& backend = *parts.backend;
            const ModelShape& shape = model.shape();
            const int B = model.B(), T = model.T();
            StepOptions sopt;
            sopt.accum = accum;
            sopt.grad_accum_f32 = true;
            const TrainStep* step_of_hook = nullptr;
            std::vector<int> layers;
            std::vector<std::pair<size_t, std::vector<float>>> at_hook;  // (offset, values) of each range when its reduction started
            if (with_hook)
                sopt.reduce_hook = [&](View grads, int layer) {
                    layers.push_back(layer);
                    EXPECT_EQ(grads.ptr, step_of_hook->gradients().ptr) << "the reduction reads the f32 sum";
                    ASSERT_EQ(grads.dtype, DType::f32);
                    for (const ParamRange& r : model.grad_ranges(layer)) {
                        std::vector<float> v(r.size);
                        backend.to_host(v.data(), grads.at(r.offset).ptr, r.size * sizeof(float));
                        at_hook.emplace_back(r.offset, std::move(v));
                    }
                };
            TrainStep step(model, *parts.optim, *parts.comm, sopt);
            step_of_hook = &step;
            for (int m = 0; m < accum; m++)
                for (size_t i = 0; i < size_t(B) * T; i++) {
                    step.inputs(m)[i] = int32_t((i * 7 + 3 * m + 1) % shape.V);
                    step.targets(m)[i] = int32_t((i * 5 + m + 2) % shape.V);
                }
            const StepResult r = step.run(1e-2);
            ASSERT_TRUE(r.applied);
            std::vector<float> sum(model.buffer_elements());
            ASSERT_EQ(step.gradients().dtype, DType::f32);
            backend.to_host(sum.data(), step.gradients().ptr, sum.size() * sizeof(float));
            if (!with_hook) {
                plain = sum;
                continue;
            }
            std::vector<int> want;
            for (int l = shape.L - 1; l >= -1; l--) want.push_back(l);
            EXPECT_EQ(layers, want);
            for (const auto& [offset, v] : at_hook)
                for (size_t i = 0; i < v.size(); i++) ASSERT_EQ(v[i], sum[offset + i]) << "element " << offset + i << " changed after its reduction started";
            EXPECT_EQ(sum, plain) << "the same gradients as without the hook";
            double total = 0;
            for (float g : sum) total += std::fabs(g);
            EXPECT_GT(total, 0);
        }
    }
}

// run.cuda_graph on the CPU backend: the step is recorded at step 2 and
// replayed from then on (the CPU backend records its op calls). Every value
// that changes from step to step (tokens of each micro-batch, lr of the
// warm-up and cosine schedule, AdamW's t and clip scale) must reach the
// recording through memory, so the replayed run must equal the direct one
// bit for bit; an argument frozen into the recording would change the curve.
TEST(Train, RecordedStepReplaysBitIdentically) {
    TrainOptions quiet;
    quiet.quiet = true;
    for (const char* accum : {"run.total_batch_tokens=0", "run.total_batch_tokens=128"}) {
        SCOPED_TRACE(accum);
        TempDir a, b;
        // grad_clip 1.5: the norms of this run fall from ~2 to ~1.3, so some steps are clipped and some not.
        const std::vector<std::string> common = {accum, "run.batch_size=2", "run.max_steps=10", "schedule.steps=10", "optim.grad_clip=1.5"};
        std::vector<std::string> with = common, without = common;
        with.push_back("run.cuda_graph=true");
        without.push_back("run.cuda_graph=false");
        TrainResult g = train(small_config(a.path, with), quiet);
        TrainResult d = train(small_config(b.path, without), quiet);
        ASSERT_EQ(g.step_losses.size(), 10u);
        EXPECT_EQ(g.step_losses, d.step_losses);
        EXPECT_EQ(g.final_val_loss, d.final_val_loss);
        EXPECT_EQ(g.step_graph, "replaying");
        EXPECT_EQ(g.graph_replays, 9);  // step 1 runs directly; step 2 is recorded, then every step replays
        EXPECT_EQ(d.step_graph, "off");
        EXPECT_EQ(d.graph_replays, 0);
        // The learning rate changed between the replays (warm-up 2, cosine to 0 over 10).
        EXPECT_LT(d.step_losses.back(), d.step_losses.front());
    }
}

TEST(Train, StopsAtTargetWithInterpolatedTime) {
    TempDir d;
    // Order-1 chain over 32 tokens: the loss falls quickly below 3.0 nats.
    Config cfg = small_config(d.path, {"run.max_steps=200", "schedule.steps=200", "run.target_val_loss=3.0", "run.val_every=2"});
    TrainOptions o;
    o.quiet = true;
    TrainResult r = train(cfg, o);
    EXPECT_EQ(r.stop_reason, "target");
    ASSERT_TRUE(r.time_to_target_s.has_value());
    EXPECT_GT(*r.time_to_target_s, 0.0);
    EXPECT_LE(*r.time_to_target_s, r.train_time_s);
    EXPECT_LE(*r.final_val_loss, 3.0);
    EXPECT_LT(r.steps, 200);
    // The summary record carries the same figure.
    std::string log = test::read_file(d.file("log.jsonl"));
    EXPECT_NE(log.find("\"stop_reason\":\"target\""), std::string::npos);
    EXPECT_NE(log.find("\"time_to_target_s\":"), std::string::npos);
}

TEST(Train, BudgetStopsTheRunAndMissedTargetIsNull) {
    TempDir d;
    Config cfg = small_config(d.path, {"run.max_steps=0", "run.budget_s=0.5", "schedule.steps=100000", "run.target_val_loss=0.001"});
    TrainOptions o;
    o.quiet = true;
    TrainResult r = train(cfg, o);
    EXPECT_EQ(r.stop_reason, "budget");
    EXPECT_GE(r.train_time_s, 0.5);
    EXPECT_FALSE(r.time_to_target_s.has_value());
    EXPECT_NE(test::read_file(d.file("log.jsonl")).find("\"time_to_target_s\":null"), std::string::npos);
}

// run.val_tokens / run.val_seq_len: one validation set whatever the batch
// size (same init, same set: the same loss before any step, exactly), and
// run.val_every_tokens: evaluations where the token count crosses the grid.
TEST(Train, FixedValidationSetAndTokenGridDoNotMoveWithTheBatch) {
    TempDir a, b, c;
    TrainOptions quiet;
    quiet.quiet = true;
    const std::vector<std::string> protocol = {"run.val_every=0", "run.val_tokens=192", "run.val_seq_len=12", "run.val_every_tokens=256",
                                               "run.max_steps=8", "schedule.steps=8"};
    auto with = [&](std::vector<std::string> v, std::vector<std::string> more) {
        v.insert(v.end(), more.begin(), more.end());
        return v;
    };
    train(small_config(a.path, with(protocol, {"run.batch_size=4"})), quiet);   // 64 tokens per step
    train(small_config(b.path, with(protocol, {"run.batch_size=6"})), quiet);   // 96 tokens per step
    // The legacy set (val_batches x B x T) changes with the batch: a control that the first test can fail.
    train(small_config(c.path, {"run.batch_size=6", "run.max_steps=2", "schedule.steps=2"}), quiet);
    auto evals = [](const std::string& log) {
        std::vector<std::pair<long, double>> out;  // (tokens, val loss)
        std::ifstream f(log);
        std::string line;
        while (std::getline(f, line)) {
            if (line.find("\"type\":\"val\"") == std::string::npos) continue;
            out.push_back({std::stol(line.substr(line.find("\"tokens\":") + 9)), std::stod(line.substr(line.find("\"val_loss\":") + 11))});
        }
        return out;
    };
    const auto ea = evals(a.file("log.jsonl")), eb = evals(b.file("log.jsonl")), ec = evals(c.file("log.jsonl"));
    std::printf("  first val loss: B=4 %.17g, B=6 %.17g, control %.17g\n", ea[0].second, eb[0].second, ec[0].second);
    ASSERT_FALSE(ea.empty());
    ASSERT_FALSE(eb.empty());
    ASSERT_FALSE(ec.empty());
    EXPECT_EQ(ea[0].first, 0);
    // The same weights on the same windows: equal to float32 rounding (the
    // products' rounding may change with their number of rows, and the log
    // keeps full precision). The control differs a hundred times more than that bound.
    EXPECT_NEAR(ea[0].second, eb[0].second, 1e-6 * std::fabs(ea[0].second)) << "the same weights on the same validation set";
    EXPECT_GT(std::fabs(ea[0].second - ec[0].second), 1e-4 * std::fabs(ea[0].second)) << "control: the batch-sized set differs";
    // B=4: 64 tokens a step, evaluations at 0, 256 and 512 (also the end); B=6: 96 a step: 0, 288, 576 and the end, 768.
    std::vector<long> ta, tb;
    for (const auto& e : ea) ta.push_back(e.first);
    for (const auto& e : eb) tb.push_back(e.first);
    EXPECT_EQ(ta, (std::vector<long>{0, 256, 512}));
    EXPECT_EQ(tb, (std::vector<long>{0, 288, 576, 768}));
    // A window longer than the training T is refused, naming the key.
    try {
        small_config(a.path, {"run.val_seq_len=32"});
        ADD_FAILURE() << "run.val_seq_len > T accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("run.val_seq_len"), std::string::npos) << e.what();
    }
}

// run.step_clock median / cpu: each step charges the running median of the
// measured step times (step_ms, the wall clock; cpu_ms, the process's CPU
// time) to the training clock (train_time_s), so a step slowed by a pause or a
// busy machine costs what a typical one does. Recomputed from the log's own
// step records.
TEST(Train, MedianAndCpuStepClocksChargeTheRunningMedian) {
    for (const std::string clock : {"median", "cpu"}) {
        TempDir d;
        TrainOptions quiet;
        quiet.quiet = true;
        const TrainResult r =
            train(small_config(d.path, {"run.max_steps=25", "schedule.steps=25", "run.step_clock=" + clock, "run.val_every=0", "run.threads=1"}), quiet);
        std::ifstream f(d.file("log.jsonl"));
        std::string line;
        std::vector<double> seen;
        double charged = 0, wall_sum = 0;
        const std::string key = clock == "cpu" ? "\"cpu_ms\":" : "\"step_ms\":";
        while (std::getline(f, line)) {
            if (line.find("\"type\":\"step\"") == std::string::npos) continue;
            seen.push_back(std::stod(line.substr(line.find(key) + key.size())) / 1e3);
            wall_sum += std::stod(line.substr(line.find("\"step_ms\":") + 10)) / 1e3;
            std::vector<double> sorted = seen;
            std::sort(sorted.begin(), sorted.end());
            const size_t n = sorted.size();
            charged += n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
            const double logged = std::stod(line.substr(line.find("\"train_time_s\":") + 15));
            EXPECT_NEAR(logged, charged, 1e-4 * charged + 1e-6) << clock << ", step " << n;
        }
        ASSERT_EQ(seen.size(), 25u) << clock;
        EXPECT_NEAR(r.train_time_s, charged, 1e-4 * charged + 1e-6) << clock;
        const std::string log = test::read_file(d.file("log.jsonl"));
        EXPECT_NEAR(std::stod(log.substr(log.find("\"wall_train_time_s\":") + 20)), wall_sum, 1e-3 * wall_sum + 1e-5) << clock;
        EXPECT_NE(log.find("\"step_clock\":\"" + clock + "\""), std::string::npos);
    }
}

TEST(Checkpoint, ModelFileRoundTripAndBadFiles) {
    TempDir d;
    ModelShape s;
    s.L = 1;
    s.NH = 2;
    s.C = 8;
    s.maxT = 4;
    s.V = 10;
    s.Vp = 128;
    std::vector<float> p(param_count(s));
    for (size_t i = 0; i < p.size(); i++) p[i] = float(i) * 0.5f;
    write_model_file(d.file("m.bin"), s, p);
    ModelShape r;
    EXPECT_EQ(read_model_file(d.file("m.bin"), r), p);
    EXPECT_EQ(r.C, 8);
    EXPECT_EQ(r.Vp, 128);

    std::string bytes = test::read_file(d.file("m.bin"));
    auto expect_bad = [&](const std::string& content, const std::string& needle) {
        test::write_file(d.file("bad.bin"), content);
        try {
            read_model_file(d.file("bad.bin"), r);
            ADD_FAILURE() << "accepted a bad model file (" << needle << ")";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            EXPECT_NE(std::string(e.what()).find("bad.bin"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_bad(bytes.substr(0, bytes.size() - 4), "does not match");
    expect_bad(bytes.substr(0, 100), "truncated");
    std::string wrong_magic = bytes;
    wrong_magic[0] = 1;
    expect_bad(wrong_magic, "bad magic");
    std::string wrong_version = bytes;
    wrong_version[4] = 9;
    expect_bad(wrong_version, "version");
}

TEST(Checkpoint, ResolveAndStateErrors) {
    TempDir d;
    try {
        resolve_checkpoint(d.file("nope"));
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        EXPECT_NE(std::string(e.what()).find("no such"), std::string::npos);
    }
    TrainOptions o;
    o.quiet = true;
    train(small_config(d.path, {"run.max_steps=2", "schedule.steps=2"}), o);
    const std::string ck = resolve_checkpoint(d.path);
    EXPECT_TRUE(std::filesystem::exists(ck + "/config.yaml"));
    // A truncated state file is reported, not read past its end.
    std::string st = test::read_file(ck + "/state.bin");
    test::write_file(ck + "/state.bin", st.substr(0, st.size() - 10));
    TrainState s;
    try {
        read_state_file(ck + "/state.bin", s);
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        EXPECT_NE(std::string(e.what()).find("state.bin"), std::string::npos);
    }
    // No temporary files are left behind by a completed save.
    for (const auto& e : std::filesystem::recursive_directory_iterator(d.path))
        EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}
