// Config loading: the schema, --set overrides, presets, validation messages
// (key, file:line, suggestion) and the YAML / JSON / reference printers.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <sstream>

#include "kernels/error.h"
#include "tests/test_util.h"
#include "kernels/registry.h"
#include "train/config.h"
#include "train/yaml_input.h"

namespace {

using gpt::Config;
using gpt::test::TempDir;
using gpt::test::write_file;

// A small runnable config every test can start from.
const char* kBase = R"(model:
  preset: nano
data:
  source: synthetic
  synthetic:
    vocab: 16
run:
  max_steps: 10
)";

// Loads text from a temp file; returns the BadInput message or fails the test.
std::string error_of_file(const std::string& text, const std::vector<std::string>& sets = {}, std::string* path_out = nullptr) {
    TempDir dir;
    const std::string path = dir.file("x.yaml");
    write_file(path, text);
    if (path_out) *path_out = path;
    try {
        gpt::load_config(path, sets);
    } catch (const gpt::Error& e) {
        EXPECT_EQ(e.kind, gpt::ErrorKind::BadInput) << e.what();
        return e.what();
    }
    ADD_FAILURE() << "no error for:\n" << text;
    return "";
}

std::string error_of_sets(const std::vector<std::string>& sets, const std::string& text = kBase) {
    try {
        gpt::parse_config_text(text, "base.yaml", sets);
    } catch (const gpt::Error& e) {
        EXPECT_EQ(e.kind, gpt::ErrorKind::BadInput) << e.what();
        return e.what();
    }
    ADD_FAILURE() << "no error for --set";
    return "";
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg) << "\nmissing: " << (part)

TEST(Config, DefaultsLoadWithEmptyPath) {
    const Config c = gpt::load_config("", {});
    const Config d;
    EXPECT_EQ(c.model.n_layer, d.model.n_layer);
    EXPECT_EQ(c.optim.lr, d.optim.lr);
    EXPECT_EQ(c.run.out_dir, d.run.out_dir);
    EXPECT_EQ(c.source, "");
    EXPECT_TRUE(c.kernels.empty());
}

TEST(Config, EmptyPathWithOverridesIsValidated) {
    const Config c = gpt::load_config("", {"run.max_steps=5"});
    EXPECT_EQ(c.run.max_steps, 5);
    EXPECT_EQ(c.model.n_embd, 768);
}

TEST(Config, EverySectionParses) {
    TempDir dir;
    const std::string path = dir.file("full.yaml");
    write_file(path, R"(# every section
model:
  n_layer: 3
  n_head: 2
  n_embd: 32
  seq_len: 16
  vocab_size: 100
data:
  source: shards
  train: "data/train_*.bin"
  val: data/val_*.bin
  synthetic:
    order: 3
    vocab: 20
    sharpness: 1.5
    seed: 7
optim:
  lr: 1e-3
  beta1: 0.8
  beta2: 0.99
  eps: 1.0e-6
  weight_decay: 0.0
  grad_clip: 0
schedule:
  type: wsd
  warmup_steps: 5
  steps: 100
  final_lr_frac: 0.05
  decay_frac: 0.3
run:
  backend: cpu
  threads: 2
  seed: -3
  batch_size: 2
  seq_len: 8
  total_batch_tokens: 64
  max_steps: 50
  budget_s: 12.5
  target_val_loss: 1.25
  val_every: 10
  val_batches: 2
  log_every: 5
  checkpoint_every: 25
  out_dir: runs/full
kernels: {}
)");
    const Config c = gpt::load_config(path, {});
    EXPECT_EQ(c.source, path);
    EXPECT_EQ(c.model.n_layer, 3);
    EXPECT_EQ(c.model.vocab_size, 100);
    EXPECT_EQ(c.data.source, "shards");
    EXPECT_EQ(c.data.train, "data/train_*.bin");
    EXPECT_EQ(c.data.val, "data/val_*.bin");
    EXPECT_EQ(c.data.synthetic.order, 3);
    EXPECT_DOUBLE_EQ(c.data.synthetic.sharpness, 1.5);
    EXPECT_EQ(c.data.synthetic.seed, 7);
    EXPECT_DOUBLE_EQ(c.optim.lr, 1e-3);
    EXPECT_DOUBLE_EQ(c.optim.eps, 1e-6);
    EXPECT_DOUBLE_EQ(c.optim.grad_clip, 0);
    EXPECT_EQ(c.schedule.type, "wsd");
    EXPECT_DOUBLE_EQ(c.schedule.decay_frac, 0.3);
    EXPECT_EQ(c.run.backend, "cpu");
    EXPECT_EQ(c.run.seed, -3);
    EXPECT_EQ(c.run.total_batch_tokens, 64);
    EXPECT_DOUBLE_EQ(c.run.budget_s, 12.5);
    EXPECT_EQ(c.run.out_dir, "runs/full");
}

TEST(Config, RepoConfigsLoad) {
    const Config c = gpt::load_config(gpt::test::source_path("configs/tiny.yaml"), {});
    EXPECT_EQ(c.model.n_embd, 128);
    EXPECT_EQ(c.data.source, "synthetic");
    EXPECT_GT(c.run.max_steps, 0);
    for (const char* f : {"configs/gpt2-124m.yaml", "configs/english-mix.yaml"}) {
        const Config g = gpt::load_config(gpt::test::source_path(f), {});
        EXPECT_EQ(g.model.n_layer, 12) << f;
        EXPECT_EQ(g.model.n_embd, 768) << f;
        EXPECT_EQ(g.run.batch_size, 64) << f;
        EXPECT_EQ(g.data.source, "shards") << f;
    }
}

TEST(Config, UnknownKeySuggestsClosest) {
    std::string path;
    const std::string msg = error_of_file("model:\n  preset: nano\noptim:\n  learning_rate: 0.1\n", {}, &path);
    EXPECT_HAS(msg, path + ":4:3: unknown key 'optim.learning_rate' (did you mean 'optim.lr'?)");

    EXPECT_HAS(error_of_file("optim:\n  lr_rate: 0.1\n"), "did you mean 'optim.lr'?");
    EXPECT_HAS(error_of_file("run:\n  lr: 0.1\n"), "unknown key 'run.lr' (did you mean 'optim.lr'?)");
    EXPECT_HAS(error_of_file("run:\n  batchsize: 2\n"), "did you mean 'run.batch_size'?");
    EXPECT_HAS(error_of_file("schedule:\n  warmup: 2\n"), "did you mean 'schedule.warmup_steps'?");
    EXPECT_HAS(error_of_file("optimizer:\n  lr: 2\n"), "unknown key 'optimizer' (did you mean 'optim'?)");
    EXPECT_HAS(error_of_file("data:\n  synthetic:\n    ordr: 2\n"), ":3:5: unknown key 'data.synthetic.ordr' (did you mean 'data.synthetic.order'?)");
}

TEST(Config, BadValuesNameKeyFileAndLine) {
    std::string path;
    std::string msg = error_of_file("run:\n  max_steps: 3\n\noptim:\n  lr: fast\n", {}, &path);
    EXPECT_HAS(msg, path + ":5:7: optim.lr: expected a number, got 'fast'");

    msg = error_of_file("run:\n  max_steps: 3\noptim:\n  lr: -0.001\n", {}, &path);
    EXPECT_HAS(msg, path + ":4:7: optim.lr: must be > 0, got '-0.001'");

    EXPECT_HAS(error_of_file("optim:\n  beta1: 1\n"), "optim.beta1: must be in [0, 1), got '1'");
    EXPECT_HAS(error_of_file("optim:\n  weight_decay: -1\n"), "optim.weight_decay: must be >= 0");
    EXPECT_HAS(error_of_file("schedule:\n  final_lr_frac: 1.5\n"), "schedule.final_lr_frac: must be in [0, 1]");
    EXPECT_HAS(error_of_file("run:\n  batch_size: 0\n"), ":2:15: run.batch_size: must be in [1, 1048576], got '0'");
    EXPECT_HAS(error_of_file("run:\n  max_steps: -1\n"), "run.max_steps: must be >= 0");
    EXPECT_HAS(error_of_file("run:\n  batch_size: 3.5\n"), "run.batch_size: expected an integer, got '3.5'");
    EXPECT_HAS(error_of_file("run:\n  batch_size: 99999999999\n"), "run.batch_size: got '99999999999' is out of range");
    EXPECT_HAS(error_of_file("run:\n  batch_size: [1, 2]\n"), ":2:15: run.batch_size: expected an integer, got a list");
    EXPECT_HAS(error_of_file("optim:\n  lr: {a: 1}\n"), "optim.lr: expected a number, got a map");
    EXPECT_HAS(error_of_file("optim:\n  lr:\n"), "optim.lr: expected a number, got nothing");
    EXPECT_HAS(error_of_file("optim:\n  lr: .nan\n"), "optim.lr: expected a number, got '.nan'");
    EXPECT_HAS(error_of_file("run:\n  out_dir: [a]\n"), "run.out_dir: expected a string, got a list");
}

TEST(Config, ChoicesListTheValidValues) {
    EXPECT_HAS(error_of_file("data:\n  source: web\n"), "data.source: unknown value 'web' (valid: synthetic, shards)");
    EXPECT_HAS(error_of_file("schedule:\n  type: step\n"), "schedule.type: unknown value 'step' (valid: cosine, linear, wsd, constant)");
    EXPECT_HAS(error_of_file("run:\n  backend: tpu\n"), "run.backend: unknown value 'tpu' (valid: auto, cpu, cuda)");
    EXPECT_HAS(error_of_file("model:\n  preset: d13\n"), ":2:11: model.preset: unknown preset 'd13' (valid: d12, d24, d36, d48, tiny, nano)");
}

TEST(Config, StructuralErrors) {
    std::string path;
    std::string msg = error_of_file("optim:\n  lr: [1, 2\n", {}, &path);
    EXPECT_HAS(msg, path + ":");
    EXPECT_HAS(msg, "YAML syntax error");

    msg = error_of_file("optim: 3\n", {}, &path);
    EXPECT_HAS(msg, path + ":1:8: optim: expected a section (a map of keys), got a scalar '3'");
    EXPECT_HAS(error_of_file("model:\n  - 1\n"), "model: expected a section (a map of keys), got a list");
    EXPECT_HAS(error_of_file("- 1\n- 2\n"), "expected a map of sections");
    EXPECT_HAS(error_of_file("optim:\n  lr: 1\n  lr: 2\n"), ":3:3: duplicate key 'optim.lr' (first set at ");

    try {
        gpt::load_config("/nonexistent/dir/c.yaml", {});
        ADD_FAILURE();
    } catch (const gpt::Error& e) {
        EXPECT_EQ(e.kind, gpt::ErrorKind::BadInput);
        EXPECT_HAS(std::string(e.what()), "config file '/nonexistent/dir/c.yaml': cannot open: No such file or directory");
    }
    TempDir dir;
    try {
        gpt::load_config(dir.path, {});
        ADD_FAILURE();
    } catch (const gpt::Error& e) {
        EXPECT_HAS(std::string(e.what()), "config file '" + dir.path + "': is a directory, not a regular file");
    }
}

TEST(Config, KernelsSectionIsCheckedAgainstTheRegistry) {
    std::string path;
    const std::string msg = error_of_file("kernels:\n  attention: v2\n", {}, &path);
    EXPECT_HAS(msg, path + ":2:14: kernels.attention: unknown variant 'v2' (valid: flash, cudnn, wgmma)");
    EXPECT_HAS(error_of_file("kernels: v2\n"), "kernels: expected a section");
    EXPECT_HAS(error_of_file("kernels:\n  atention: flash\n"), "kernels.atention: unknown kernel family 'atention' (valid: attention, ");
    EXPECT_HAS(error_of_sets({"kernels.attention.block_q=48"}),
               "--set kernels.attention.block_q=48: kernels.attention.block_q: invalid value '48' (valid: 128, 64)");
    EXPECT_HAS(error_of_sets({"kernels.attention.tile=4"}), "kernel family 'attention' has no parameter 'tile' (valid: attention.block_q, attention.block_k, attention.p_regs, attention.tma, attention.fold_d, attention.wgmma_bwd)");
    EXPECT_HAS(error_of_sets({"kernels.layernorm.x=1"}), "kernel family 'layernorm' has no parameter 'x' (it has none)");

    const Config c = gpt::parse_config_text("run:\n  max_steps: 5\nkernels:\n  attention: cudnn\n  attention.block_q: 64\n", "k.yaml",
                                            {"kernels.layernorm=separate"});
    EXPECT_EQ(c.kernels.at("attention"), "cudnn");
    EXPECT_EQ(c.kernels.at("attention.block_q"), "64");
    const gpt::KernelChoices k(c.kernels);
    EXPECT_EQ(k.variant("layernorm"), "separate");
    EXPECT_EQ(k.variant("gelu"), "epilogue");  // the default
    EXPECT_EQ(k.param("attention", "block_q"), 64);
    EXPECT_EQ(k.param("attention", "block_k"), 64);
    // The effective config round-trips the kernels section.
    const Config back = gpt::parse_config_text(gpt::config_to_yaml(c), "back.yaml");
    EXPECT_EQ(back.kernels, c.kernels);
}

TEST(Config, OverridesWinInOrderAndAreValidated) {
    const Config c = gpt::parse_config_text(kBase, "base.yaml", {"optim.lr=0.01", "optim.lr=0.02", "run.out_dir=runs/x y", "schedule.type=linear"});
    EXPECT_DOUBLE_EQ(c.optim.lr, 0.02);
    EXPECT_EQ(c.run.out_dir, "runs/x y");
    EXPECT_EQ(c.schedule.type, "linear");
    EXPECT_EQ(c.source, "base.yaml");

    EXPECT_HAS(error_of_sets({"optim.lr=abc"}), "--set optim.lr=abc: optim.lr: expected a number, got 'abc'");
    EXPECT_HAS(error_of_sets({"foo"}), "--set foo: expected key=value");
    EXPECT_HAS(error_of_sets({"=3"}), "--set =3: expected key=value");
    EXPECT_HAS(error_of_sets({"optim.learning_rate=1"}), "--set optim.learning_rate=1: unknown key 'optim.learning_rate' (did you mean 'optim.lr'?)");
    EXPECT_HAS(error_of_sets({"optim.lr=0"}), "--set optim.lr=0: optim.lr: must be > 0, got '0'");
    EXPECT_HAS(error_of_sets({"run.batch_size=[1]"}), "run.batch_size: expected an integer, got a list");
    EXPECT_HAS(error_of_sets({"optim=1"}), "--set optim=1: 'optim' is a section");
}

TEST(Config, OverridesLoadFromFile) {
    TempDir dir;
    const std::string path = dir.file("c.yaml");
    write_file(path, kBase);
    const Config c = gpt::load_config(path, {"run.batch_size=3", "data.synthetic.seed=9"});
    EXPECT_EQ(c.run.batch_size, 3);
    EXPECT_EQ(c.data.synthetic.seed, 9);
}

TEST(Config, PresetsFillTheShape) {
    Config c = gpt::parse_config_text("model:\n  preset: d24\nrun:\n  max_steps: 1\n", "p");
    EXPECT_EQ(c.model.preset, "d24");
    EXPECT_EQ(c.model.n_layer, 24);
    EXPECT_EQ(c.model.n_head, 16);
    EXPECT_EQ(c.model.n_embd, 1024);
    EXPECT_EQ(c.model.seq_len, 1024);
    EXPECT_EQ(c.model.vocab_size, 50257);

    c = gpt::parse_config_text("model:\n  preset: d48\nrun:\n  max_steps: 1\n", "p");
    EXPECT_EQ(c.model.n_head, 25);
    EXPECT_EQ(c.model.n_embd, 1600);

    c = gpt::parse_config_text("model:\n  preset: tiny\nrun:\n  max_steps: 1\n", "p");
    EXPECT_EQ(c.model.n_layer, 2);
    EXPECT_EQ(c.model.n_embd, 128);
    EXPECT_EQ(c.model.seq_len, 64);
    EXPECT_EQ(c.model.vocab_size, 256);
}

// Preset semantics: the file's keys, then the --set overrides, are applied in
// order (a later assignment of the same key wins); the preset that results
// fills only the shape keys nobody set, so an explicit shape key wins over a
// preset wherever either came from (file or --set) and whatever the order.
TEST(Config, ExplicitModelKeysWinOverPresetWhateverTheOrder) {
    const std::string run = "run:\n  max_steps: 1\n";
    auto shape = [](const Config& c) {
        return std::vector<int>{c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.seq_len, c.model.vocab_size};
    };
    // In the file, before or after the preset.
    Config c = gpt::parse_config_text("model:\n  n_layer: 5\n  preset: tiny\n" + run, "p");
    EXPECT_EQ(shape(c), (std::vector<int>{5, 4, 128, 64, 256}));
    c = gpt::parse_config_text("model:\n  preset: tiny\n  n_layer: 5\n" + run, "p");
    EXPECT_EQ(shape(c), (std::vector<int>{5, 4, 128, 64, 256}));
    // A preset from --set fills what the file did not set; the file's key wins.
    c = gpt::parse_config_text("model:\n  n_embd: 64\n" + run, "p", {"model.preset=tiny"});
    EXPECT_EQ(shape(c), (std::vector<int>{2, 4, 64, 64, 256}));
    // --set preset over the file's preset: the later one is the preset, and the
    // file's explicit vocab_size still wins over it.
    c = gpt::parse_config_text("model:\n  preset: d12\n  vocab_size: 50257\n" + run, "p", {"model.preset=nano"});
    EXPECT_EQ(c.model.preset, "nano");
    EXPECT_EQ(shape(c), (std::vector<int>{1, 2, 16, 8, 50257}));
    // Two presets by --set: in order, the last one counts.
    c = gpt::parse_config_text(kBase, "p", {"model.preset=d12", "model.preset=tiny"});
    EXPECT_EQ(shape(c), (std::vector<int>{2, 4, 128, 64, 256}));
    // Shape keys by --set win over a --set preset, before or after it.
    c = gpt::parse_config_text("model:\n  n_embd: 64\n" + run, "p", {"model.n_embd=32", "model.preset=tiny"});
    EXPECT_EQ(c.model.n_embd, 32);
    c = gpt::parse_config_text("model:\n  n_embd: 64\n" + run, "p", {"model.preset=tiny", "model.n_embd=32"});
    EXPECT_EQ(c.model.n_embd, 32);
    // A --set key over the file's preset, and over the file's own value of the key.
    c = gpt::parse_config_text(kBase, "p", {"model.n_layer=4"});
    EXPECT_EQ(shape(c), (std::vector<int>{4, 2, 16, 8, 64}));
    c = gpt::parse_config_text("model:\n  preset: tiny\n  n_layer: 5\n" + run, "p", {"model.n_layer=3"});
    EXPECT_EQ(c.model.n_layer, 3);
    // The embedded default names its vocabulary (the synthetic source's 64):
    // --set model.preset=nano gives nano's shape with that vocabulary.
    c = gpt::parse_config_text(gpt::test::read_file(gpt::test::source_path("configs/tiny.yaml")), "tiny.yaml", {"model.preset=nano"});
    EXPECT_EQ(shape(c), (std::vector<int>{1, 2, 16, 8, 64}));
}

// A run shortened by --set keeps the shape of the file's schedule: a warm-up
// that no longer fits is scaled with the horizon, with a note; one that fits is
// kept; one set by --set, or one that does not fit the file's own horizon, is
// an error.
TEST(Config, WarmupScalesWithAHorizonShortenedOnTheCommandLine) {
    const std::string text = "model:\n  preset: nano\nschedule:\n  warmup_steps: 20\nrun:\n  max_steps: 400\n";
    Config c = gpt::parse_config_text(text, "f.yaml", {"run.max_steps=50"});
    EXPECT_EQ(c.schedule.warmup_steps, 20);
    EXPECT_TRUE(c.notes.empty());
    c = gpt::parse_config_text(text, "f.yaml", {"run.max_steps=10"});
    EXPECT_EQ(c.schedule.warmup_steps, 0);
    c = gpt::parse_config_text(text, "f.yaml", {"run.max_steps=19"});
    EXPECT_EQ(c.schedule.warmup_steps, 0);
    c = gpt::parse_config_text("model:\n  preset: nano\nschedule:\n  warmup_steps: 100\n  steps: 1000\nrun:\n  max_steps: 1000\n", "g.yaml",
                               {"schedule.steps=50"});
    EXPECT_EQ(c.schedule.warmup_steps, 5);
    ASSERT_EQ(c.notes.size(), 1u);
    EXPECT_HAS(c.notes[0], "schedule.warmup_steps 100 (g.yaml:4:17) does not fit the 50-step horizon of --set schedule.steps=50: scaled "
                           "with the horizon to 5 (100 x 50 / 1000)");
    EXPECT_HAS(error_of_sets({"run.max_steps=5", "schedule.warmup_steps=8"}, text),
               "--set schedule.warmup_steps=8: schedule.warmup_steps (8) must be <= the decay horizon (5, run.max_steps)");
    EXPECT_HAS(error_of_sets({}, "model:\n  preset: nano\nschedule:\n  warmup_steps: 20\nrun:\n  max_steps: 10\n"),
               "schedule.warmup_steps (20) must be <= the decay horizon (10, run.max_steps)");
}

TEST(Config, CrossFieldChecksNameTheKeys) {
    std::string path;
    std::string msg = error_of_file("model:\n  n_head: 5\nrun:\n  max_steps: 1\n", {}, &path);
    EXPECT_HAS(msg, path + ":2:11: model.n_embd (768) must be divisible by model.n_head (5)");
    EXPECT_HAS(error_of_sets({"run.seq_len=9"}), "--set run.seq_len=9: run.seq_len (9) must be <= model.seq_len (8)");
    EXPECT_HAS(error_of_sets({"run.total_batch_tokens=100"}),
               "run.total_batch_tokens (100) must be 0 or a multiple of run.batch_size * T = 4 * 8 = 32");
    EXPECT_EQ(gpt::parse_config_text(kBase, "p", {"run.total_batch_tokens=96"}).run.total_batch_tokens, 96);
    EXPECT_HAS(error_of_sets({"run.max_steps=0"}), "the run would never stop");
    EXPECT_HAS(error_of_sets({"run.max_steps=0", "run.budget_s=10"}), "schedule.type cosine needs a decay horizon");
    EXPECT_EQ(gpt::parse_config_text(kBase, "p", {"run.max_steps=0", "run.budget_s=10", "schedule.type=constant"}).run.budget_s, 10);
    EXPECT_EQ(gpt::parse_config_text(kBase, "p", {"run.max_steps=0", "run.budget_s=10", "schedule.steps=100"}).schedule.steps, 100);
    EXPECT_HAS(error_of_sets({"schedule.warmup_steps=11"}), "schedule.warmup_steps (11) must be <= the decay horizon (10, run.max_steps)");
    EXPECT_HAS(error_of_sets({"data.source=shards"}), "data.train is empty");
    EXPECT_HAS(error_of_sets({"data.source=shards", "data.train=a*.bin"}), "data.val is empty");
    EXPECT_HAS(error_of_sets({"data.synthetic.vocab=65"}), "data.synthetic.vocab (65) must be <= model.vocab_size (64)");
}

// Every field differs from its default so a dropped key would show.
Config unusual_config() {
    return gpt::parse_config_text(R"(model:
  preset: tiny
  n_layer: 3
data:
  source: shards
  train: "dir with space/train_*.bin"
  val: 'quote"and\back #hash: colon'
  synthetic:
    order: 3
    vocab: 17
    sharpness: 0.1
    seed: -5
optim:
  lr: 0.000123456789012345
  beta1: 0.1
  beta2: 0.3
  eps: 1e-300
  weight_decay: 0.7
  grad_clip: 2.5
schedule:
  type: wsd
  warmup_steps: 3
  steps: 77
  final_lr_frac: 0.3333333333333333
  decay_frac: 1
run:
  backend: cuda
  threads: 3
  seed: 11
  batch_size: 2
  seq_len: 32
  total_batch_tokens: 128
  max_steps: 55
  budget_s: 1e20
  target_val_loss: 2.0
  val_every: 7
  val_batches: 9
  log_every: 4
  checkpoint_every: 8
  out_dir: "null"
)",
                                  "unusual");
}

void expect_same(const Config& a, const Config& b) {
    EXPECT_EQ(config_to_yaml(a), config_to_yaml(b));
    EXPECT_EQ(a.model.preset, b.model.preset);
    EXPECT_EQ(a.model.n_layer, b.model.n_layer);
    EXPECT_EQ(a.model.n_embd, b.model.n_embd);
    EXPECT_EQ(a.data.train, b.data.train);
    EXPECT_EQ(a.data.val, b.data.val);
    EXPECT_EQ(a.data.synthetic.seed, b.data.synthetic.seed);
    EXPECT_EQ(a.data.synthetic.sharpness, b.data.synthetic.sharpness);
    EXPECT_EQ(a.optim.lr, b.optim.lr);
    EXPECT_EQ(a.optim.eps, b.optim.eps);
    EXPECT_EQ(a.schedule.final_lr_frac, b.schedule.final_lr_frac);
    EXPECT_EQ(a.run.budget_s, b.run.budget_s);
    EXPECT_EQ(a.run.total_batch_tokens, b.run.total_batch_tokens);
    EXPECT_EQ(a.run.out_dir, b.run.out_dir);
    EXPECT_EQ(a.kernels, b.kernels);
}

TEST(Config, YamlRoundTrip) {
    const Config a = unusual_config();
    EXPECT_EQ(a.data.val, "quote\"and\\back #hash: colon");
    EXPECT_EQ(a.run.out_dir, "null");
    const std::string yaml = gpt::config_to_yaml(a);
    const Config b = gpt::parse_config_text(yaml, "round trip");
    expect_same(a, b);
    EXPECT_NE(yaml.find("preset: tiny"), std::string::npos) << yaml;
    EXPECT_NE(yaml.find("kernels: {}"), std::string::npos) << yaml;

    const Config base = gpt::parse_config_text(kBase, "base");
    expect_same(base, gpt::parse_config_text(gpt::config_to_yaml(base), "round trip"));
}

TEST(Config, JsonIsParseable) {
    const Config a = unusual_config();
    const std::string json = gpt::config_to_json(a);
    EXPECT_EQ(json.find('\n'), std::string::npos);
    const YAML::Node n = YAML::Load(json);
    ASSERT_TRUE(n.IsMap());
    EXPECT_EQ(n["model"]["preset"].as<std::string>(), "tiny");
    EXPECT_EQ(n["model"]["n_layer"].as<int>(), 3);
    EXPECT_EQ(n["data"]["val"].as<std::string>(), a.data.val);
    EXPECT_EQ(n["data"]["synthetic"]["seed"].as<int>(), -5);
    EXPECT_EQ(n["optim"]["lr"].as<double>(), a.optim.lr);
    EXPECT_EQ(n["optim"]["eps"].as<double>(), 1e-300);
    EXPECT_EQ(n["run"]["out_dir"].as<std::string>(), "null");
    EXPECT_TRUE(n["kernels"].IsMap());
    EXPECT_EQ(n["kernels"].size(), 0u);
    // JSON carries the same values back through the YAML loader.
    expect_same(a, gpt::parse_config_text(json, "json"));
}

// The README's key table is `gpt config --reference`, verbatim: a key added,
// renamed or re-explained in the schema must be carried there too.
TEST(Config, ReadmeKeyTableIsTheReference) {
    const std::string readme = gpt::test::read_file(gpt::test::source_path("README.md"));
    const std::string intro = "Every key (`gpt config --reference` prints this table from the schema itself):\n\n```\n";
    const size_t at = readme.find(intro);
    ASSERT_NE(at, std::string::npos) << "README.md no longer introduces the key table";
    const size_t begin = at + intro.size(), end = readme.find("```", begin);
    ASSERT_NE(end, std::string::npos);
    EXPECT_EQ(readme.substr(begin, end - begin), gpt::config_reference())
        << "README.md's key table differs from `gpt config --reference`: paste the command's output there";
}

TEST(Config, ReferenceListsEveryKey) {
    const std::string ref = gpt::config_reference();
    const YAML::Node keys = YAML::Load(gpt::config_to_json(Config{}));
    size_t n = 0;
    std::function<void(const YAML::Node&, const std::string&)> visit = [&](const YAML::Node& node, const std::string& prefix) {
        for (auto it = node.begin(); it != node.end(); ++it) {
            const std::string key = prefix.empty() ? it->first.as<std::string>() : prefix + "." + it->first.as<std::string>();
            if (it->second.IsMap()) {
                visit(it->second, key);
            } else {
                EXPECT_NE(ref.find(key + " "), std::string::npos) << key;
                n++;
            }
        }
    };
    visit(keys, "");
    EXPECT_GE(n, 38u);
    EXPECT_NE(ref.find("kernels.<family>"), std::string::npos);

    // One aligned line per key: "optim.lr  float  0.0006  peak learning rate".
    std::istringstream lines(ref);
    std::string line, lr_line;
    size_t type_col = std::string::npos;
    while (std::getline(lines, line)) {
        const size_t col = line.find("  ") + 2;
        const size_t type_at = line.find_first_not_of(' ', col - 2);
        if (type_col == std::string::npos) type_col = type_at;
        EXPECT_EQ(type_at, type_col) << line;
        if (line.rfind("optim.lr ", 0) == 0) lr_line = line;
    }
    EXPECT_NE(lr_line.find("float"), std::string::npos);
    EXPECT_NE(lr_line.find("0.0006"), std::string::npos);
    EXPECT_NE(lr_line.find("peak learning rate"), std::string::npos);
}

}  // namespace

// A second YAML document would be silently unread: it is an error naming its line.
TEST(Config, SecondDocumentIsAnError) {
    std::string path;
    const std::string msg = error_of_file("run:\n  max_steps: 1\n---\nrun:\n  max_steps: 2\n", {}, &path);
    EXPECT_HAS(msg, path + ":4:1: a second YAML document (after '---'");
    // One document with an explicit start and end marker is fine.
    TempDir dir;
    write_file(dir.file("one.yaml"), "---\nrun:\n  max_steps: 3\n...\n");
    EXPECT_EQ(gpt::load_config(dir.file("one.yaml"), {}).run.max_steps, 3);
}

// yaml-cpp 0.7 never returns (it allocates until the machine runs out) on a
// document whose root is a flow collection or a quoted scalar followed by a
// comma; the fuzzer found "{}," in a config. Each is a syntax error naming the
// place, in a file and in a --set value; the same texts without the comma, and
// commas inside brackets or in a block map, still reach yaml-cpp.
TEST(Config, TextThatHangsYamlCppIsASyntaxError) {
    const std::vector<std::pair<std::string, std::string>> hangs = {
        {"{},\n", ":1:3:"},          {"[],\n", ":1:3:"},        {"{} ,\n", ":1:4:"},           {"\"x\",\n", ":1:4:"},
        {"'x',\n", ":1:4:"},         {"{a: 1}, b\n", ":1:7:"},  {"&a {},\n", ":1:6:"},         {"!!map {},\n", ":1:9:"},
        {"# c\n  {} ,\n", ":2:6:"}, {"{}\n,\n", ":2:1:"},      {"run: {}\n---\n[],\n", ":3:3:"}, {"--- {},\n", ":1:7:"},
        {",\n", ":1:1:"},            {", a\n", ":1:1:"},         {"# x\n,]\n", ":2:1:"},      {"run: {}\n---\n,\n", ":3:1:"}};
    for (const auto& [text, place] : hangs) {
        std::string path;
        const std::string msg = error_of_file(text, {}, &path);
        EXPECT_HAS(msg, path + place + " YAML syntax error: a");
    }
    EXPECT_HAS(error_of_sets({"model.n_layer={},"}), "model.n_layer value:1:3: YAML syntax error: a ','");
    // Not the pattern: yaml-cpp's own answer.
    EXPECT_HAS(error_of_file("run: {max_steps: 1},\n"), "YAML syntax error: end of map not found");
    TempDir dir;
    write_file(dir.file("flow.yaml"), "{run: {max_steps: 7}, model: {n_layer: 1}}  # a whole config as one flow map\n");
    EXPECT_EQ(gpt::load_config(dir.file("flow.yaml"), {}).run.max_steps, 7);
}

// load_yaml_document reads one document and asks for at most one more, so
// that no input makes it loop on documents (yaml-cpp 0.7's LoadAll can).
TEST(Config, YamlDocumentAndWhatFollowsIt) {
    gpt::YamlDocument one = gpt::load_yaml_document("---\nrun: {max_steps: 3}\n...\n", "one");
    EXPECT_FALSE(one.has_second);
    EXPECT_EQ(one.root["run"]["max_steps"].as<int>(), 3);
    const gpt::YamlDocument three = gpt::load_yaml_document("a: 1\n---\nb: 2\n---\nc: 3\n", "three");
    EXPECT_TRUE(three.has_second);
    EXPECT_EQ(three.second.line, 2);
    EXPECT_EQ(three.root["a"].as<int>(), 1);
    EXPECT_FALSE(three.root["b"]);
    // A --set value that is two documents is refused, not half read.
    EXPECT_HAS(error_of_sets({"run.max_steps=3\n---\n4"}), "the value is more than one YAML document");
}

// Values that used to overflow integer arithmetic further on (the padded
// vocabulary, vocab^(order+1), thread creation) are bounded where they are read.
TEST(Config, SizesAreBoundedBeforeTheyCanOverflow) {
    EXPECT_HAS(error_of_sets({"model.vocab_size=2147483647"}), "model.vocab_size: must be in [1, 16777216], got '2147483647'");
    EXPECT_HAS(error_of_sets({"data.synthetic.order=2147483647"}), "data.synthetic.order: must be in [1, 23], got '2147483647'");
    const std::string order = error_of_sets({"data.synthetic.order=20", "data.synthetic.vocab=64"});
    EXPECT_HAS(order, "= 64^21 is more than 2^24");
    EXPECT_EQ(order.find("-2147483648"), std::string::npos) << order;
    EXPECT_HAS(error_of_sets({"run.threads=100000"}), "run.threads: must be in [0, 1024], got '100000'");
    EXPECT_HAS(error_of_sets({"model.n_embd=2000000", "model.n_head=1"}), "model.n_embd: must be in [1, 1048576]");
    EXPECT_HAS(error_of_sets({"model.n_layer=100000"}), "model.n_layer: must be in [1, 4096]");
    EXPECT_HAS(error_of_sets({"run.on_nonfinite=ignore"}), "run.on_nonfinite: unknown value 'ignore' (valid: stop, skip_step)");
    EXPECT_HAS(error_of_sets({"run.skip_update_lossz=-1"}), "run.skip_update_lossz: must be >= 0");
}
