// The interop paths end to end through the gpt binary: export a trained run
// to a Hugging Face folder and an llm.c file, import it back, evaluate and
// train from every form (--init), and the eval/config/log behaviours that
// users comparing runs rely on (the T actually evaluated, configs without a
// stop condition, full-precision log numbers).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <regex>
#include <sstream>

#include "data/json.h"
#include "model/hf.h"
#include "model/safetensors.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

using namespace gpt;
using gpt::test::run_gpt;
using gpt::test::TempDir;

namespace {

// The "val_loss X" gpt eval prints.
double val_loss_of(const std::string& out) {
    std::smatch m;
    if (!std::regex_search(out, m, std::regex("val_loss ([0-9.]+)"))) return NAN;
    return std::stod(m[1]);
}

std::vector<Json> records(const std::string& log, const std::string& type) {
    std::vector<Json> out;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);)
        if (!line.empty() && parse_json(line).string("type") == type) out.push_back(parse_json(line));
    return out;
}

// A tiny model with the GPT-2 vocabulary would be slow to train here: the
// embedded tiny config (vocab 64) exercises every path but the tokenizer files.
const char* kQuick = " --set run.batch_size=4 --set run.val_batches=2 --set schedule.warmup_steps=0";

}  // namespace

TEST(Interop, ExportImportEvalAndInitAgree) {
    TempDir d;
    auto r = run_gpt("train --quiet --set run.max_steps=20" + std::string(kQuick) + " --set run.out_dir=" + d.file("run"));
    ASSERT_EQ(r.code, 0) << r.output;
    const std::string cfg = " -c " + d.file("run/config.yaml");

    // The run's own evaluation, then the same weights through each format.
    r = run_gpt("eval --checkpoint " + d.file("run"));
    ASSERT_EQ(r.code, 0) << r.output;
    const double base = val_loss_of(r.output);
    ASSERT_TRUE(std::isfinite(base)) << r.output;

    r = run_gpt("export hf --checkpoint " + d.file("run") + " --out " + d.file("hf"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("GPT2LMHeadModel.from_pretrained"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("no tokenizer files (the vocabulary is not GPT-2's)"), std::string::npos) << r.output;
    EXPECT_TRUE(is_hf_dir(d.file("hf")));
    r = run_gpt("eval --checkpoint hf:" + d.file("hf") + cfg);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(val_loss_of(r.output), base) << "the HF export evaluates to the checkpoint's loss, digit for digit";
    r = run_gpt("eval --checkpoint " + d.file("hf") + cfg);  // a folder is recognised without hf:
    EXPECT_EQ(val_loss_of(r.output), base) << r.output;

    r = run_gpt("import hf " + d.file("hf") + " --out " + d.file("imported.bin"));
    ASSERT_EQ(r.code, 0) << r.output;
    r = run_gpt("eval --checkpoint " + d.file("imported.bin") + cfg);
    EXPECT_EQ(val_loss_of(r.output), base) << r.output;
    // The checkpoint's weights and the imported file's agree bit for bit (the
    // padding rows of wte are not in an HF model and come back as zeros).
    ModelShape s1, s2;
    const std::vector<float> a = read_model_file(d.file("run/checkpoints/step_000020/model.bin"), s1);
    std::vector<float> b = read_model_file(d.file("imported.bin"), s2);
    ASSERT_EQ(a.size(), b.size());
    size_t differ = 0;
    const size_t pad_begin = size_t(s1.V) * s1.C, pad_end = size_t(s1.Vp) * s1.C;  // wte is first
    for (size_t i = 0; i < a.size(); i++) {
        if (i >= pad_begin && i < pad_end) {
            EXPECT_EQ(b[i], 0.0f);
            continue;
        }
        differ += a[i] != b[i];
    }
    EXPECT_EQ(differ, 0u);

    r = run_gpt("export llmc --checkpoint hf:" + d.file("hf") + " --out " + d.file("again.bin"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(test::read_file(d.file("again.bin")), test::read_file(d.file("imported.bin")));

    // --init from each form: a fresh optimizer on those weights, so the step-0
    // evaluation is the checkpoint's loss.
    for (const std::string init : {"hf:" + d.file("hf"), d.file("imported.bin"), d.file("run")}) {
        const std::string out = d.file("init" + std::to_string(std::hash<std::string>{}(init) % 1000));
        r = run_gpt("train --quiet --init " + init + " --set run.max_steps=2 --set run.val_every=1" + kQuick + " --set run.out_dir=" + out);
        ASSERT_EQ(r.code, 0) << init << ": " << r.output;
        const auto vals = records(test::read_file(out + "/log.jsonl"), "val");
        ASSERT_FALSE(vals.empty());
        EXPECT_EQ(vals[0].number("step"), 0);
        EXPECT_NEAR(vals[0].number("val_loss"), base, 1e-6 * base) << init;
        const auto summary = records(test::read_file(out + "/log.jsonl"), "summary");
        ASSERT_EQ(summary.size(), 1u);
        EXPECT_EQ(summary[0].number("steps"), 2) << "the step count starts at 0: a fresh run on pretrained weights";
    }
    // The config key works like the flag, and a shape mismatch says what to set.
    r = run_gpt("train --quiet --set model.init=" + d.file("imported.bin") + " --set model.n_embd=64 --set run.max_steps=1" + kQuick +
                " --set run.out_dir=" + d.file("mismatch"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("--set model.n_embd=128"), std::string::npos) << r.output;
    r = run_gpt("train --init " + d.file("imported.bin") + " --resume " + d.file("run"));
    EXPECT_EQ(r.code, 2) << r.output;
    r = run_gpt("train --quiet --init " + d.file("nothing") + " --set run.max_steps=1" + kQuick + " --set run.out_dir=" + d.file("x"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(d.file("nothing")), std::string::npos) << r.output;
    // Bad exports.
    r = run_gpt("export hf --checkpoint " + d.file("run"));
    EXPECT_EQ(r.code, 2) << r.output;
    r = run_gpt("export onnx --checkpoint " + d.file("run") + " --out x");
    EXPECT_EQ(r.code, 2) << r.output;
    r = run_gpt("export hf --checkpoint " + d.file("run") + " --out " + d.file("h2") + " --dtype f8");
    EXPECT_EQ(r.code, 2) << r.output;
    r = run_gpt("import hf " + d.file("run") + " --out " + d.file("y.bin"));
    EXPECT_EQ(r.code, 2) << r.output;
}

TEST(Interop, HfExportOfAGpt2VocabularyModelCarriesTheTokenizer) {
    // An untrained GPT-2-vocabulary model written as an llm.c file is enough:
    // export reads any weights.
    TempDir d;
    ModelShape s;
    s.L = 1;
    s.NH = 2;
    s.C = 8;
    s.maxT = 16;
    s.V = 50257;
    s.Vp = 50304;
    write_model_file(d.file("m.bin"), s, std::vector<float>(param_count(s), 0.01f));
    auto r = run_gpt("export hf --checkpoint " + d.file("m.bin") + " --out " + d.file("hf") + " --dtype bf16");
    ASSERT_EQ(r.code, 0) << r.output;
    // OpenAI's encoder.json and vocab.bpe are HF's vocab.json and merges.txt, byte for byte.
    EXPECT_EQ(test::read_file(d.file("hf/vocab.json")), test::read_file(test::source_path("data/gpt2-tokenizer/encoder.json")));
    EXPECT_EQ(test::read_file(d.file("hf/merges.txt")), test::read_file(test::source_path("data/gpt2-tokenizer/vocab.bpe")));
    const Json tc = parse_json(test::read_file(d.file("hf/tokenizer_config.json")));
    EXPECT_EQ(tc.string("tokenizer_class"), "GPT2Tokenizer");
    EXPECT_EQ(tc.number("model_max_length"), 16);
    const Json cfg = parse_json(test::read_file(d.file("hf/config.json")));
    EXPECT_EQ(cfg.number("eos_token_id"), 50256);
    EXPECT_EQ(cfg.string("torch_dtype"), "bfloat16");
    SafetensorsReader st(d.file("hf/model.safetensors"));
    EXPECT_EQ(st.info("transformer.wte.weight").dtype, StDType::BF16);
    EXPECT_EQ(st.info("transformer.wte.weight").shape, (std::vector<int64_t>{50257, 8}));
}

TEST(Interop, EvalSaysWhichTAndAcceptsConfigsThatCannotTrain) {
    TempDir d;
    // A model with a 16-token context, evaluated with a config whose T is 64.
    auto r = run_gpt("train --quiet --set model.seq_len=16 --set run.max_steps=2" + std::string(kQuick) + " --set run.out_dir=" + d.file("run"));
    ASSERT_EQ(r.code, 0) << r.output;
    // A config with no stop condition: it cannot train, but it can evaluate and be shown.
    test::write_file(d.file("eval.yaml"), "model:\n  n_layer: 2\n  n_head: 4\n  n_embd: 128\n  seq_len: 64\n  vocab_size: 64\n"
                                          "data:\n  source: synthetic\n  synthetic:\n    order: 1\n    vocab: 64\n"
                                          "run:\n  batch_size: 2\n  val_batches: 2\n");
    r = run_gpt("eval --checkpoint " + d.file("run/checkpoints/step_000002/model.bin") + " -c " + d.file("eval.yaml"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("(2 batches of 2 x 16,"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("T is the model's context 16, shorter than the config's 64"), std::string::npos) << r.output;
    r = run_gpt("config -c " + d.file("eval.yaml"));
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("max_steps: 0"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("note: gpt train would refuse this config"), std::string::npos) << r.output;
    r = run_gpt("train -c " + d.file("eval.yaml"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("would never stop"), std::string::npos) << r.output;
}

TEST(Interop, LogNumbersRoundTripExactly) {
    TempDir d;
    auto r = run_gpt("train --quiet --set run.max_steps=3 --set run.val_every=1" + std::string(kQuick) + " --set run.out_dir=" + d.file("run"));
    ASSERT_EQ(r.code, 0) << r.output;
    const std::string log = test::read_file(d.file("run/log.jsonl"));
    // Every "loss":X is the shortest text of a double: more digits than %.6g
    // where the value needs them, and it reads back as the value it prints.
    std::regex num("\"(loss|val_loss|grad_norm|lr)\":(-?[0-9.eE+-]+)");
    size_t long_ones = 0, all = 0;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), num); it != std::sregex_iterator(); ++it) {
        const std::string text = (*it)[2];
        const double v = std::stod(text);
        EXPECT_EQ(number_text(v), text);
        size_t digits = 0;
        for (char c : text.substr(0, text.find_first_of("eE")))
            if (std::isdigit(static_cast<unsigned char>(c))) digits++;
        long_ones += digits > 6;
        all++;
    }
    EXPECT_GE(all, 10u);
    EXPECT_GE(long_ones, all / 2) << log;
}
