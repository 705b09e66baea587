// HellaSwag as llm.c scores it: the published jsonl format, each ending's
// loss checked against a separate forward pass of that row alone, acc (sum)
// and acc_norm (mean) recomputed from those, and a model trained on the right
// endings that must get every example right, from gpt eval and during training.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "data/json.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/error.h"
#include "model/gpt2.h"
#include "train/hellaswag.h"
#include "tests/test_util.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

std::string example_line(const std::string& ctx, const std::vector<std::string>& endings, const Json& label) {
    Json j = Json::object();
    j.set("ind", Json(24));
    j.set("activity_label", Json("Roof shingle removal"));
    j.set("ctx_a", Json(ctx));
    j.set("ctx_b", Json(""));
    j.set("ctx", Json(ctx));
    j.set("split", Json("val"));
    j.set("split_type", Json("indomain"));
    j.set("label", label);
    Json e = Json::array();
    for (const auto& s : endings) e.push(Json(s));
    j.set("endings", e);
    j.set("source_id", Json("activitynet~v_-JhWjGDPHMY"));
    return j.dump() + "\n";
}

// Six everyday contexts, their right endings, and three wrong ones each.
struct Story {
    std::string ctx, right;
    std::vector<std::string> wrong;
};
const std::vector<Story> kStories = {
    {"The chef opened the hot oven and", "took out a golden loaf of bread.", {"painted the fence blue.", "swam across the lake.", "read the newspaper aloud."}},
    {"A man is sitting on a roof. He", "starts pulling up roofing on a roof.", {"is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube."}},
    {"The children ran onto the field and", "kicked the ball toward the goal.", {"baked a cake for dinner.", "typed a long letter.", "fixed the broken sink."}},
    {"She poured water into the kettle and", "switched it on to boil.", {"climbed the tall mountain.", "sang to the audience.", "parked the car outside."}},
    {"The mechanic lifted the hood of the car and", "checked the oil level.", {"planted tomatoes in rows.", "wrote a poem about the sea.", "folded the laundry neatly."}},
    {"After the rain stopped, the farmer", "walked out to inspect the wet fields.", {"played the violin softly.", "opened a new bank account.", "knitted a warm scarf."}},
};

// The jsonl: the right ending at a different index in each example.
std::string stories_jsonl() {
    std::string out;
    for (size_t i = 0; i < kStories.size(); i++) {
        std::vector<std::string> e = kStories[i].wrong;
        const int label = int(i % 4);
        e.insert(e.begin() + label, kStories[i].right);
        out += example_line(kStories[i].ctx, e, Json(label));
    }
    return out;
}

ModelShape gpt2_vocab_shape(int maxT) {
    ModelShape s;
    s.L = 1;
    s.NH = 2;
    s.C = 16;
    s.maxT = maxT;
    s.V = 50257;
    s.Vp = 50304;
    return s;
}

// The summed loss over tokens[from..] of one row, from a forward pass of that row alone.
double row_loss(const ModelShape& s, const std::vector<float>& params, const std::vector<int32_t>& tokens, size_t from) {
    auto be = make_backend("cpu", 1);
    const int T = int(tokens.size()) - 1;
    GPT2 m(s, *be, 1, T);
    m.load_params_llmc(params);
    std::vector<int32_t> x(tokens.begin(), tokens.end() - 1), y(tokens.begin() + 1, tokens.end());
    m.forward(x.data(), y.data());
    const std::vector<double> l = m.losses();
    double sum = 0;
    for (size_t j = from; j < tokens.size(); j++) sum += l[j - 1];
    return sum;
}

}  // namespace

TEST(Hellaswag, ReadsThePublishedFormat) {
    TempDir d;
    const Tokenizer tok = Tokenizer::builtin();
    test::write_file(d.file("hs.jsonl"), example_line("A man is sitting on a roof. he", {"is using wrap.", "is ripping tiles off.", "b", "c"}, Json(3)) +
                                             "\n" + example_line("x", {"y", "z"}, Json("1")));
    const auto ex = load_hellaswag(d.file("hs.jsonl"), tok);
    ASSERT_EQ(ex.size(), 2u);
    EXPECT_EQ(ex[0].ctx, tok.encode("A man is sitting on a roof. he"));
    ASSERT_EQ(ex[0].endings.size(), 4u);
    EXPECT_EQ(ex[0].endings[1], tok.encode(" is ripping tiles off.")) << "each ending is encoded with a leading space";
    EXPECT_EQ(ex[0].label, 3);
    EXPECT_EQ(ex[1].label, 1) << "a label given as a string";

    auto error_of = [&](const std::string& text) -> std::string {
        test::write_file(d.file("bad.jsonl"), text);
        try {
            load_hellaswag(d.file("bad.jsonl"), tok);
            return "";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            return e.what();
        }
    };
    EXPECT_NE(error_of(example_line("a", {"b", "c"}, Json(0)) + "{oops\n").find("line 2"), std::string::npos);
    EXPECT_NE(error_of(example_line("a", {"b", "c"}, Json(2))).find("\"label\" must be the index"), std::string::npos);
    EXPECT_NE(error_of(example_line("a", {"b", "c"}, Json(-1))).find("\"label\""), std::string::npos);
    EXPECT_NE(error_of(example_line("a", {"b"}, Json(0))).find("at least two"), std::string::npos);
    EXPECT_NE(error_of("{\"endings\":[\"a\",\"b\"],\"label\":0}\n").find("no \"ctx\""), std::string::npos);
    EXPECT_NE(error_of("\n\n").find("no examples"), std::string::npos);
    EXPECT_THROW(load_hellaswag(d.file("absent.jsonl"), tok), Error);
}

TEST(Hellaswag, EndingScoresAreEachRowsOwnLoss) {
    TempDir d;
    const Tokenizer tok = Tokenizer::builtin();
    test::write_file(d.file("hs.jsonl"), stories_jsonl());
    const auto ex = load_hellaswag(d.file("hs.jsonl"), tok);
    const ModelShape s = gpt2_vocab_shape(32);
    auto be = make_backend("cpu", 1);
    // B = 3: the four rows of an example straddle forward passes.
    GPT2 m(s, *be, 3, 24);
    test::randomize_params(m, 17, 0.2);
    const std::vector<float> params = m.params_llmc();
    std::vector<EndingScores> scores;
    const HellaswagResult r = eval_hellaswag(m, ex, 0, nullptr, &scores);
    ASSERT_EQ(r.total, int64_t(ex.size()));
    EXPECT_EQ(r.truncated, 0);
    ASSERT_EQ(scores.size(), ex.size());
    int64_t correct = 0, correct_norm = 0, disagree = 0;
    for (size_t i = 0; i < ex.size(); i++) {
        std::vector<double> sum, mean;
        for (size_t e = 0; e < ex[i].endings.size(); e++) {
            std::vector<int32_t> row = ex[i].ctx;
            row.insert(row.end(), ex[i].endings[e].begin(), ex[i].endings[e].end());
            sum.push_back(row_loss(s, params, row, ex[i].ctx.size()));
            mean.push_back(sum.back() / double(ex[i].endings[e].size()));
            EXPECT_NEAR(scores[i].sum[e], sum.back(), 1e-5 * sum.back()) << "example " << i << " ending " << e;
            EXPECT_NEAR(scores[i].mean[e], mean.back(), 1e-5 * mean.back());
        }
        const long p = std::min_element(sum.begin(), sum.end()) - sum.begin(), pn = std::min_element(mean.begin(), mean.end()) - mean.begin();
        correct += p == ex[i].label;
        correct_norm += pn == ex[i].label;
        disagree += p != pn;
    }
    EXPECT_EQ(r.correct, correct);
    EXPECT_EQ(r.correct_norm, correct_norm);
    EXPECT_GT(disagree, 0) << "the data should exercise acc and acc_norm choosing differently";
    // The first example only, with rows longer than the model's window: cut from the left.
    GPT2 small(s, *be, 4, 6);
    small.load_params_llmc(params);
    std::vector<EndingScores> cut;
    const HellaswagResult rc = eval_hellaswag(small, ex, 1, nullptr, &cut);
    EXPECT_EQ(rc.total, 1);
    EXPECT_EQ(rc.truncated, 4);
    for (size_t e = 0; e < 4; e++) {
        std::vector<int32_t> row = ex[0].ctx;
        row.insert(row.end(), ex[0].endings[e].begin(), ex[0].endings[e].end());
        const size_t drop = row.size() - 7;
        const std::vector<int32_t> kept(row.begin() + long(drop), row.end());
        const size_t from = ex[0].ctx.size() > drop ? ex[0].ctx.size() - drop : 1;
        EXPECT_NEAR(cut[0].sum[e], row_loss(s, params, kept, from), 1e-5 * cut[0].sum[e]) << e;
    }
}

TEST(Hellaswag, ModelTrainedOnTheRightEndingsGetsThemAllRight) {
    TempDir d;
    const Tokenizer tok = Tokenizer::builtin();
    test::write_file(d.file("hs.jsonl"), stories_jsonl());
    // The corpus: each story with its right ending, as text, many times over.
    std::vector<int32_t> tokens;
    std::mt19937 rng(3);
    for (int rep = 0; rep < 60; rep++) {
        std::vector<size_t> order(kStories.size());
        for (size_t i = 0; i < order.size(); i++) order[i] = i;
        std::shuffle(order.begin(), order.end(), rng);
        for (size_t i : order) {
            const auto t = tok.encode(kStories[i].ctx + " " + kStories[i].right + "\n");
            tokens.insert(tokens.end(), t.begin(), t.end());
        }
    }
    write_shard(d.file("train.bin"), tokens, 50257);
    write_shard(d.file("val.bin"), std::vector<int32_t>(tokens.begin(), tokens.begin() + 2000), 50257);
    const std::string common = "--set data.source=shards --set data.train=" + d.file("train.bin") + " --set data.val=" + d.file("val.bin") +
                               " --set model.vocab_size=50257 --set model.n_layer=2 --set model.n_head=2 --set model.n_embd=32 --set model.seq_len=32"
                               " --set run.batch_size=8 --set optim.lr=1e-2 --set schedule.warmup_steps=10 --set run.val_batches=1";
    auto r = test::run_gpt("train --quiet " + common + " --set run.max_steps=60 --set run.val_every=0 --set run.hellaswag=" + d.file("hs.jsonl") +
                           " --set run.hellaswag_every=20 --set run.out_dir=" + d.file("run"));
    ASSERT_EQ(r.code, 0) << r.output;
    // During training: a record at steps 0, 20, 40 and 60; the untrained model
    // does not know the answers, the trained one knows them all.
    std::vector<Json> hs;
    for (const auto& line : [&] {
             std::vector<std::string> v;
             std::string all = test::read_file(d.file("run/log.jsonl")), cur;
             for (char c : all)
                 if (c == '\n') v.push_back(cur), cur.clear();
                 else cur += c;
             return v;
         }())
        if (!line.empty() && parse_json(line).string("type") == "hellaswag") hs.push_back(parse_json(line));
    ASSERT_EQ(hs.size(), 4u);
    EXPECT_EQ(hs.front().number("step"), 0);
    EXPECT_LT(hs.front().number("acc_norm"), 1.0) << hs.front().dump();
    EXPECT_EQ(hs.back().number("step"), 60);
    EXPECT_EQ(hs.back().number("examples"), 6);
    EXPECT_EQ(hs.back().number("acc_norm"), 1.0) << hs.back().dump();
    EXPECT_EQ(hs.back().number("acc"), 1.0) << hs.back().dump();
    // gpt eval on the checkpoint says the same.
    r = test::run_gpt("eval --checkpoint " + d.file("run") + " --hellaswag " + d.file("hs.jsonl"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("hellaswag acc_norm 1.0000 acc 1.0000 (6/6 and 6/6 of 6 examples"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("val_loss "), std::string::npos) << "the checkpoint's config gives the val data too";
    // --examples, and bad input.
    r = test::run_gpt("eval --checkpoint " + d.file("run") + " --hellaswag " + d.file("hs.jsonl") + " --examples 2");
    EXPECT_NE(r.output.find("(2/2 and 2/2 of 2 examples"), std::string::npos) << r.output;
    r = test::run_gpt("eval --checkpoint " + d.file("run") + " --hellaswag " + d.file("nope.jsonl"));
    EXPECT_EQ(r.code, 2) << r.output;
    r = test::run_gpt("train --quiet --set run.max_steps=30 --set run.hellaswag_every=5 --set run.out_dir=" + d.file("x"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("run.hellaswag"), std::string::npos) << r.output;
}
