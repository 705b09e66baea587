// The `gpt` binary end to end: commands, exit codes and error messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "tests/test_util.h"

using gpt::test::run_gpt;
using gpt::test::TempDir;

namespace {

// A fast model on the synthetic source, as --set flags.
std::string quick(const std::string& out) {
    return "--set model.preset=nano --set data.synthetic.vocab=32 --set data.synthetic.order=1 --set run.batch_size=2 "
           "--set run.max_steps=6 --set schedule.warmup_steps=1 --set run.val_every=3 --set run.val_batches=2 --set run.out_dir=" + out;
}

void expect_bad_input(const std::string& args, const std::string& needle) {
    auto r = run_gpt(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
}

void write_shard(const std::string& path, const std::vector<uint16_t>& toks, int32_t magic = 20240520, int32_t count = -1) {
    int32_t h[256] = {};
    h[0] = magic;
    h[1] = 1;
    h[2] = count >= 0 ? count : static_cast<int32_t>(toks.size());
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(h), sizeof h);
    f.write(reinterpret_cast<const char*>(toks.data()), toks.size() * 2);
}

// tests/data/english.txt as JSON lines, one document per non-empty line;
// returns the number of documents.
int write_english_jsonl(const std::string& path) {
    std::ifstream in(gpt::test::source_path("tests/data/english.txt"));
    std::string jsonl, line;
    int docs = 0;
    while (std::getline(in, line))
        if (!line.empty()) {
            std::string esc;
            for (char c : line) esc += c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c);
            jsonl += "{\"text\": \"" + esc + "\"}\n";
            docs++;
        }
    gpt::test::write_file(path, jsonl);
    return docs;
}

}  // namespace

TEST(Cli, HelpAndUnknownCommands) {
    auto r = run_gpt("--help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.output.find("usage: gpt"), std::string::npos);
    for (const char* c : {"train", "eval", "data", "config"}) {
        auto h = run_gpt(std::string(c) + " --help");
        EXPECT_EQ(h.code, 0) << c << "\n" << h.output;
        EXPECT_NE(h.output.find("usage"), std::string::npos) << c;
    }
    EXPECT_EQ(run_gpt("bench step --help").code, 0);
    expect_bad_input("frobnicate", "unknown command 'frobnicate'");
    expect_bad_input("train --frobnicate", "unknown option '--frobnicate'");
    expect_bad_input("train --set", "needs a value");
    expect_bad_input("bench nothing", "unknown bench");
    expect_bad_input("bench step --repeats zero", "--repeats");
    EXPECT_EQ(run_gpt("version").code, 0);
}

// The top-level help names every command and the data and search
// subcommands; the unknown-command message lists exactly the commands that
// exist, each of which answers --help.
TEST(Cli, HelpListsEveryCommand) {
    const std::string help = run_gpt("--help").output;
    for (const char* s : {"gpt data prepare", "gpt data encode", "decode", "write-shard", "info", "synthetic-info", "check SPACE.yaml",
                          "gpt kernels list", "gpt launch", "gpt sample", "report DIR", "tune"})
        EXPECT_NE(help.find(s), std::string::npos) << "gpt --help does not mention '" << s << "':\n" << help;
    const auto r = run_gpt("frobnicate");
    EXPECT_EQ(r.code, 2);
    const auto a = r.output.find("(valid: "), b = r.output.find(";", a);
    ASSERT_NE(a, std::string::npos) << r.output;
    std::string list = r.output.substr(a + 8, b - a - 8);
    std::vector<std::string> commands;
    for (size_t p = 0; p < list.size();) {
        const size_t comma = list.find(", ", p);
        commands.push_back(list.substr(p, comma == std::string::npos ? std::string::npos : comma - p));
        p = comma == std::string::npos ? list.size() : comma + 2;
    }
    EXPECT_GE(commands.size(), 11u) << list;
    for (const char* c : {"train", "eval", "bench", "data", "sample", "config", "kernels", "launch", "search", "plot", "version"})
        EXPECT_NE(std::find(commands.begin(), commands.end(), c), commands.end()) << c << " missing from: " << list;
    for (const auto& c : commands) {
        EXPECT_NE(help.find("\n  " + c + " "), std::string::npos) << "'" << c << "' is not a line of gpt --help";
        const auto h = run_gpt(c + " --help");
        EXPECT_EQ(h.code, 0) << c << ": " << h.output;
    }
}

// Error messages start on their own first line: no empty line before them
// when no progress line is open (train and sample, which print one).
TEST(Cli, ErrorsStartWithoutAnEmptyLine) {
    TempDir d;
    for (const std::string& args : {std::string("train --set optim.learning_rate=1"), "sample --checkpoint " + d.file("nowhere"),
                                    std::string("eval --checkpoint ") + d.file("nowhere"), std::string("bench step --set run.backend=tpu")}) {
        const auto r = run_gpt(args);
        EXPECT_EQ(r.code, 2) << args;
        EXPECT_EQ(r.output.rfind("gpt ", 0), 0u) << args << ": the output does not start with the message:\n[" << r.output << "]";
    }
    // After training has printed its lines, an error is one line too.
    const auto r = run_gpt("train " + quick(d.file("run")) + " --set data.source=shards --set data.train=" + d.file("none-*.bin") +
                           " --set data.val=" + d.file("none-*.bin"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output.find("\n\n"), std::string::npos) << r.output;
}

// `gpt train --set run.max_steps=5` on the default config, whose warm-up (20
// steps) was written for 400: the warm-up is scaled with the horizon and a
// note says so; a warm-up given on the command line that does not fit is an
// error that says how to fix it.
TEST(Cli, ShortRunOfTheDefaultConfigScalesItsWarmup) {
    TempDir d;
    auto r = run_gpt("train --set run.max_steps=5 --set run.val_batches=1 --set run.out_dir=" + d.file("run"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("note: schedule.warmup_steps 20 (embedded configs/tiny.yaml:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("does not fit the 5-step horizon of --set run.max_steps=5: scaled with the horizon to 0 (20 x 5 / 400)"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("done: max_steps after 5 steps"), std::string::npos) << r.output;
    EXPECT_NE(gpt::test::read_file(d.file("run/config.yaml")).find("warmup_steps: 0"), std::string::npos);
    expect_bad_input("train --set run.max_steps=5 --set schedule.warmup_steps=8",
                     "schedule.warmup_steps (8) must be <= the decay horizon (5, run.max_steps): set a shorter warm-up, e.g. --set "
                     "schedule.warmup_steps=0");
    // gpt config shows the effective value and the note.
    r = run_gpt("config --set run.max_steps=10");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("warmup_steps: 0\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("note: schedule.warmup_steps 20"), std::string::npos) << r.output;
    // A warm-up that fits the shorter run is kept as it is.
    r = run_gpt("config --set run.max_steps=40");
    EXPECT_NE(r.output.find("warmup_steps: 20\n"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("note:"), std::string::npos) << r.output;
}

// Under `gpt launch` with the output going to a pipe, the progress comes as
// plain lines: Open MPI gives each rank a pseudo-terminal, which must not
// make it redraw with carriage returns and escape codes.
TEST(Cli, ProgressUnderLaunchIntoAPipeHasNoEscapes) {
    TempDir d;
    const auto r = run_gpt("launch -n 1 -- train " + quick(d.file("run")) + " --set run.max_steps=30 --set schedule.steps=30 | cat");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("step     30/30 ["), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find('\r'), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("\033["), std::string::npos) << r.output;
}

// Resuming a run that has nothing left to train says so and reports the run's
// own rate, not 0 tokens/s.
TEST(Cli, ResumingAFinishedRunSaysSo) {
    TempDir d;
    const std::string out = d.file("run");
    ASSERT_EQ(run_gpt("train " + quick(out)).code, 0);
    const auto r = run_gpt("train --resume " + out);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("note: the run is already at run.max_steps (6): nothing to train"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find(" 0 tokens/s"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("tokens/s (the whole run's: no step trained in this process)"), std::string::npos) << r.output;
    const std::string log = gpt::test::read_file(out + "/log.jsonl");
    const auto s = log.rfind("\"type\":\"summary\"");
    ASSERT_NE(s, std::string::npos);
    EXPECT_GT(std::stod(log.substr(log.find("\"tokens_per_s\":", s) + 15)), 0.0) << log.substr(s);
}

TEST(Cli, BadConfigIsExitCode2WithKeyAndSuggestion) {
    TempDir d;
    expect_bad_input("train -c " + d.file("missing.yaml"), "missing.yaml");
    expect_bad_input("train --set optim.lr=-1", "optim.lr");
    expect_bad_input("train --set optim.learning_rate=0.1", "optim.lr");
    gpt::test::write_file(d.file("bad.yaml"), "optim:\n  lr: 0.001\n  betaa1: 0.9\n");
    auto r = run_gpt("train -c " + d.file("bad.yaml"));
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.output.find("bad.yaml:3"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("optim.beta1"), std::string::npos) << r.output;
    expect_bad_input("train --set run.backend=tpu", "run.backend");
    // A batch far beyond the machine's memory: the sizes, not a kill later.
    expect_bad_input("train --set model.preset=nano --set model.seq_len=1024 --set run.batch_size=100000 --set data.synthetic.vocab=32",
                     "out of memory: this run needs");
}

TEST(Cli, BadShardsAreExitCode2NamingTheFile) {
    TempDir d;
    std::vector<uint16_t> toks(5000);
    for (size_t i = 0; i < toks.size(); i++) toks[i] = static_cast<uint16_t>(i % 50);
    write_shard(d.file("val.bin"), toks);
    write_shard(d.file("magic.bin"), toks, 1234);
    write_shard(d.file("short.bin"), toks, 20240520, 6000);  // header claims more tokens than the file has
    std::vector<uint16_t> big = toks;
    big[77] = 60000;
    write_shard(d.file("range.bin"), big);
    const std::string base = quick(d.file("run")) + " --set data.source=shards --set data.val=" + d.file("val.bin") + " --set data.train=";
    expect_bad_input("train " + base + d.file("magic.bin"), "magic.bin");
    expect_bad_input("train " + base + d.file("short.bin"), "short.bin");
    expect_bad_input("train " + base + d.file("range.bin"), "range.bin");
    expect_bad_input("train " + base + d.file("nothing-*.bin"), "nothing-*.bin");
    expect_bad_input("data info " + d.file("magic.bin"), "magic");
    EXPECT_EQ(run_gpt("data info " + d.file("val.bin")).code, 0);
}

// Token list -> `gpt data write-shard` -> `gpt data info` -> `gpt train` on the shards.
TEST(Cli, WriteShardThenTrainOnIt) {
    TempDir d;
    std::string ids;
    for (int i = 0; i < 3000; i++) ids += std::to_string((i * 7 + i / 13) % 64) + (i % 20 == 19 ? "\n" : " ");
    gpt::test::write_file(d.file("tokens.txt"), ids);
    auto w = run_gpt("data write-shard " + d.file("train_000.bin") + " --input " + d.file("tokens.txt") + " --vocab 64");
    ASSERT_EQ(w.code, 0) << w.output;
    ASSERT_EQ(run_gpt("data write-shard " + d.file("val_000.bin") + " --vocab 64 < " + d.file("tokens.txt")).code, 0);
    auto info = run_gpt("data info --vocab 64 " + d.file("train_000.bin"));
    EXPECT_EQ(info.code, 0) << info.output;
    EXPECT_NE(info.output.find("3000"), std::string::npos) << info.output;
    auto t = run_gpt("train " + quick(d.file("run")) + " --set model.vocab_size=64 --set data.source=shards --set data.train=" +
                     d.file("train_*.bin") + " --set data.val=" + d.file("val_*.bin"));
    EXPECT_EQ(t.code, 0) << t.output;
    EXPECT_NE(t.output.find("shards: 1 file, 3,000 tokens"), std::string::npos) << t.output;
    // An id out of range in the token list is named, with exit code 2.
    gpt::test::write_file(d.file("bad.txt"), "1 2 3\n4 99 5\n");
    expect_bad_input("data write-shard " + d.file("x.bin") + " --vocab 64 --input " + d.file("bad.txt"), "99");
    EXPECT_FALSE(std::filesystem::exists(d.file("x.bin")));
}

TEST(Cli, TrainEvalResumeBenchEndToEnd) {
    TempDir d;
    const std::string out = d.file("run");
    auto r = run_gpt("train " + quick(out));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("backend: cpu"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("memory:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("tok/s"), std::string::npos) << r.output;
    const std::string log = gpt::test::read_file(out + "/log.jsonl");
    EXPECT_NE(log.find("\"type\":\"config\""), std::string::npos);
    EXPECT_NE(log.find("\"type\":\"step\""), std::string::npos);
    EXPECT_NE(log.find("\"type\":\"val\""), std::string::npos);
    EXPECT_NE(log.find("\"type\":\"summary\""), std::string::npos);
    EXPECT_TRUE(std::filesystem::exists(out + "/config.yaml"));

    auto e = run_gpt("eval --checkpoint " + out);
    EXPECT_EQ(e.code, 0) << e.output;
    EXPECT_NE(e.output.find("val_loss"), std::string::npos) << e.output;

    auto res = run_gpt("train --resume " + out + " --set run.max_steps=9 --set schedule.steps=9");
    EXPECT_EQ(res.code, 0) << res.output;
    EXPECT_NE(res.output.find("resumed from"), std::string::npos) << res.output;
    EXPECT_NE(gpt::test::read_file(out + "/checkpoints/latest").find("step_000009"), std::string::npos);
    // A bare model file (llm.c layout) evaluates with a config for its data.
    const std::string model_file = out + "/checkpoints/step_000009/model.bin";
    auto bare = run_gpt("eval --checkpoint " + model_file + " -c " + gpt::test::source_path("configs/tiny.yaml") + " " + quick(out));
    EXPECT_EQ(bare.code, 0) << bare.output;
    EXPECT_NE(bare.output.find("val_loss"), std::string::npos) << bare.output;
    expect_bad_input("eval --checkpoint " + model_file, "-c FILE");
    expect_bad_input("train --resume " + d.file("nowhere"), "nowhere");
    expect_bad_input("eval --checkpoint " + d.file("nowhere"), "nowhere");

    auto b = run_gpt("bench step --set model.preset=nano --set run.batch_size=2 --repeats 3 --warmup 1");
    EXPECT_EQ(b.code, 0) << b.output;
    EXPECT_NE(b.output.find("tokens/s"), std::string::npos) << b.output;
    EXPECT_NE(b.output.find("MFU"), std::string::npos) << b.output;

    // Optimizer steps as training takes them: 2 micro-batches of accumulation
    // per step, one AdamW update per step; tokens drawn from a shard (--data);
    // the step recorded and replayed (run.cuda_graph, the CPU backend records too).
    std::vector<uint16_t> toks(4000);
    for (size_t i = 0; i < toks.size(); i++) toks[i] = uint16_t((i * 7919) % 50 + (i % 3 == 0 ? 0 : 13));
    write_shard(d.file("bench_train.bin"), toks);
    auto acc = run_gpt("bench step --set model.preset=nano --set run.batch_size=2 --set run.seq_len=8 --set run.total_batch_tokens=32 "
                       "--set run.cuda_graph=true --repeats 3 --warmup 2 --json --data " + d.file("bench_train.bin"));
    ASSERT_EQ(acc.code, 0) << acc.output;
    EXPECT_NE(acc.output.find("\"accum\":2,"), std::string::npos) << acc.output;
    EXPECT_NE(acc.output.find("\"optimizer_steps\":5,"), std::string::npos) << acc.output;
    EXPECT_NE(acc.output.find("\"tokens_per_step\":32,"), std::string::npos) << acc.output;
    EXPECT_NE(acc.output.find("\"step_graph\":\"replaying\""), std::string::npos) << acc.output;
    EXPECT_NE(acc.output.find("bench_train.bin"), std::string::npos) << acc.output;
    expect_bad_input("bench step --set model.preset=nano --data " + d.file("no_such_shard.bin"), "no_such_shard");
    auto prof = run_gpt("bench step --set model.preset=nano --set run.batch_size=2 --set run.cuda_graph=true --repeats 1 --warmup 2 --profile");
    EXPECT_EQ(prof.code, 0) << prof.output;
    EXPECT_NE(prof.output.find("step graph (run.cuda_graph): direct: --profile"), std::string::npos) << prof.output;

    // The kernel lab on the CPU: each variant of cpu_matmul on both ops at one shape, checked and timed.
    auto lab = run_gpt("bench kernels --backend cpu --family cpu_matmul --shape N=8,C=16,OC=24,bias=1,gelu=1 --repeats 2 --warmup 1 --json");
    ASSERT_EQ(lab.code, 0) << lab.output;
    for (const char* v : {"\"variant\":\"blas\"", "\"variant\":\"loops\"", "\"op\":\"forward\"", "\"op\":\"backward\""})
        EXPECT_NE(lab.output.find(v), std::string::npos) << v << "\n" << lab.output;
    size_t lines = 0;
    for (size_t p = lab.output.find("\"ok\":true"); p != std::string::npos; p = lab.output.find("\"ok\":true", p + 1)) lines++;
    EXPECT_EQ(lines, 4u) << lab.output;
    auto table = run_gpt("bench kernels --backend cpu --family layernorm --op backward --shape N=16,C=8 --repeats 2 --warmup 0");
    EXPECT_EQ(table.code, 0) << table.output;
    EXPECT_NE(table.output.find("layernorm separate"), std::string::npos) << table.output;
    EXPECT_NE(table.output.find("backward N=16 C=8"), std::string::npos) << table.output;
    expect_bad_input("bench kernels --backend cpu --family bogus", "no such kernel family");
    expect_bad_input("bench kernels --backend cpu --family gelu", "gpt bench step");
    expect_bad_input("bench kernels --backend cpu --family attention", "does not read");
    expect_bad_input("bench kernels --backend cpu --family cpu_matmul --shape Q=1", "no dimension 'Q'");
    expect_bad_input("bench kernels --backend cpu --family cpu_matmul --op sideways", "has the ops");

    auto c = run_gpt("config --reference");
    EXPECT_EQ(c.code, 0);
    EXPECT_NE(c.output.find("optim.lr"), std::string::npos);
    // The architecture and optimizer choices, in the reference and in the kernel registry.
    for (const char* key : {"model.pos_emb", "model.rope_base", "model.norm ", "model.norm_params", "model.qk_norm", "model.activation",
                            "model.bias", "model.tied_head", "model.head_init_std", "model.logit_softcap", "model.zero_init_proj",
                            "optim.type", "optim.embed_lr", "optim.head_lr", "optim.muon_lr", "optim.muon_momentum",
                            "optim.muon_nesterov", "optim.muon_ns_steps", "optim.muon_weight_decay"})
        EXPECT_NE(c.output.find(key), std::string::npos) << key;
    auto k = run_gpt("kernels list");
    EXPECT_EQ(k.code, 0) << k.output;
    for (const char* family : {"kernels.rope ", "kernels.qknorm ", "kernels.muon ", "model.pos_emb: rope", "optim.type: muon"})
        EXPECT_NE(k.output.find(family), std::string::npos) << family << "\n" << k.output;
    // The modern search space validates: every key and value against the schema.
    auto sm = run_gpt("search check " + gpt::test::source_path("configs/search-modern.yaml"));
    EXPECT_EQ(sm.code, 0) << sm.output;
    expect_bad_input("train --set model.pos_emb=alibi", "model.pos_emb");
    expect_bad_input("train --set model.pos_emb=rope --set model.n_head=2 --set model.n_embd=18", "even head size");
    auto eff = run_gpt("config --set optim.lr=0.5");
    EXPECT_EQ(eff.code, 0);
    EXPECT_NE(eff.output.find("0.5"), std::string::npos) << eff.output;
}

// Real text through the whole path, with no tokenizer named anywhere (the
// built-in GPT-2 files): tests/data/english.txt, one paragraph per document,
// to shards with `gpt data prepare`, then training that reports val_bpb and
// samples, and `gpt sample` output that starts with the prompt.
TEST(Cli, RealTextBitsPerByteAndSampling) {
    TempDir d;
    ASSERT_EQ(write_english_jsonl(d.file("english.jsonl")), 20);
    const std::string gpt_no_env = "env -u GPT_TOKENIZER_DIR " + std::string(GPT_BINARY);
    auto prep = gpt::test::run_shell("cd '" + d.path + "' && " + gpt_no_env + " data prepare --quiet --val-every 5 --name en --out shards english.jsonl");
    ASSERT_EQ(prep.code, 0) << prep.output;
    EXPECT_NE(prep.output.find("prepared 20 documents (train 16, val 4)"), std::string::npos) << prep.output;
    // The shard decodes to the documents, each after an <|endoftext|>.
    auto text = gpt::test::run_shell(gpt_no_env + " data decode --shard " + d.file("shards/en_train_000000.bin"));
    ASSERT_EQ(text.code, 0) << text.output;
    EXPECT_EQ(text.output.rfind("<|endoftext|>The river runs slowly past the old mill", 0), 0u) << text.output.substr(0, 200);

    const std::string out = d.file("run");
    const std::string common = "--set model.preset=tiny --set model.vocab_size=50257 --set data.source=shards --set data.train=" +
                               d.file("shards/en_train_*.bin") + " --set data.val=" + d.file("shards/en_val_*.bin") +
                               " --set run.batch_size=2 --set run.seq_len=32 --set run.val_batches=2 --set schedule.warmup_steps=1";
    auto t = gpt::test::run_shell(gpt_no_env + " train " + common +
                                  " --set run.max_steps=4 --set run.val_every=2 --set run.sample_every=2 --set run.sample_tokens=8 "
                                  "--set run.out_dir=" + out);
    ASSERT_EQ(t.code, 0) << t.output;
    EXPECT_NE(t.output.find("val bpb"), std::string::npos) << t.output;
    EXPECT_NE(t.output.find("step 2 sample: "), std::string::npos) << t.output;
    const std::string log = gpt::test::read_file(out + "/log.jsonl");
    EXPECT_NE(log.find("\"type\":\"sample\""), std::string::npos);
    // bpb = loss / ln 2 / (bytes per token): this plain prose has about 4.5
    // bytes per token (each <|endoftext|> counts its 13 bytes).
    const auto vpos = log.rfind("\"type\":\"val\"");
    ASSERT_NE(vpos, std::string::npos);
    const double loss = std::stod(log.substr(log.find("\"val_loss\":", vpos) + 11));
    const double bpb = std::stod(log.substr(log.find("\"val_bpb\":", vpos) + 10));
    const double bytes_per_token = loss / std::log(2.0) / bpb;
    EXPECT_GT(bytes_per_token, 3.5) << log;
    EXPECT_LT(bytes_per_token, 6.0) << log;
    // The summary's eval_time_s is the validations' time and nothing else (the
    // samples have their own sample_time_s).
    double val_sum = 0;
    for (auto p = log.find("\"type\":\"val\""); p != std::string::npos; p = log.find("\"type\":\"val\"", p + 1))
        val_sum += std::stod(log.substr(log.find("\"eval_time_s\":", p) + 14));
    const auto spos = log.rfind("\"type\":\"summary\"");
    ASSERT_NE(spos, std::string::npos);
    EXPECT_NEAR(std::stod(log.substr(log.find("\"eval_time_s\":", spos) + 14)), val_sum, 1e-5 * val_sum + 1e-6) << log.substr(spos);
    EXPECT_GT(std::stod(log.substr(log.find("\"sample_time_s\":", spos) + 16)), 0.0) << log.substr(spos);

    auto s = gpt::test::run_shell(gpt_no_env + " sample --checkpoint " + out + " --prompt 'The meaning of' --max-tokens 12 --seed 3");
    ASSERT_EQ(s.code, 0) << s.output;
    EXPECT_EQ(s.output.rfind("The meaning of", 0), 0u) << s.output;
    EXPECT_NE(s.output.find("tokens/s"), std::string::npos) << s.output;
    // Same seed, same text (the timing line on stderr aside).
    auto text_of = [&](int seed) {
        std::string o = run_gpt("sample --checkpoint " + out + " --prompt 'The meaning of' --max-tokens 12 --seed " + std::to_string(seed)).output;
        return o.substr(0, o.find("sampled 12 tokens"));
    };
    EXPECT_EQ(text_of(3), text_of(3));
    EXPECT_NE(text_of(3), text_of(4));
    expect_bad_input("sample --checkpoint " + out + " --prompt x --prompt-ids 1", "not both");
    expect_bad_input("sample --checkpoint " + out + " --tokenizer " + d.file("nowhere"), "nowhere");
    // The bpb target needs a tokenizer, and the model's own: the built-in
    // GPT-2 files do not fit a 32-token synthetic model.
    expect_bad_input("train " + quick(d.file("r2")) + " --set run.target_metric=val_bpb --set run.target_val_loss=1 --set data.tokenizer=" +
                         d.file("nowhere"), "nowhere");
    expect_bad_input("train " + quick(d.file("r3")) + " --set run.target_metric=val_bpb --set run.target_val_loss=1",
                     "the built-in GPT-2 tokenizer (data.tokenizer) has 50257 tokens but model.vocab_size is 64");
}

// configs/english-mix-cpu.yaml, the README's real-text example on a CPU:
// `gpt config` takes it as it is (its data paths name shards this test does
// not read), and raw text through `gpt data prepare` trains with it once
// data.train and data.val point at the prepared shards.
TEST(Cli, EnglishMixCpuConfigTrainsOnPreparedText) {
    TempDir d;
    const std::string config = gpt::test::source_path("configs/english-mix-cpu.yaml");
    const auto c = run_gpt("config -c " + config);
    ASSERT_EQ(c.code, 0) << c.output;
    for (const char* line : {"n_layer: 2\n", "n_embd: 128\n", "seq_len: 128\n", "vocab_size: 50257\n", "source: shards\n", "backend: cpu\n"})
        EXPECT_NE(c.output.find(line), std::string::npos) << line << " missing from:\n" << c.output;

    ASSERT_EQ(write_english_jsonl(d.file("english.jsonl")), 20);
    auto prep = gpt::test::run_shell("cd '" + d.path + "' && " + std::string(GPT_BINARY) +
                                     " data prepare --quiet --val-every 5 --name en --out shards english.jsonl");
    ASSERT_EQ(prep.code, 0) << prep.output;
    auto t = run_gpt("train -c " + config + " --set data.train=" + d.file("shards/en_train_*.bin") + " --set data.val=" +
                     d.file("shards/en_val_*.bin") + " --set run.batch_size=1 --set run.max_steps=2 --set run.val_batches=1 --set run.out_dir=" +
                     d.file("run"));
    ASSERT_EQ(t.code, 0) << t.output;
    EXPECT_NE(t.output.find("model: 6852096 parameters, L=2 NH=4 C=128 maxT=128 V=50257"), std::string::npos) << t.output;
    EXPECT_NE(t.output.find("done: max_steps after 2 steps"), std::string::npos) << t.output;
    EXPECT_NE(t.output.find("val bpb"), std::string::npos) << t.output;
}

TEST(Cli, SampleIdsFromASyntheticModel) {
    TempDir d;
    const std::string out = d.file("run");
    ASSERT_EQ(run_gpt("train " + quick(out)).code, 0);
    auto s = run_gpt("sample --checkpoint " + out + " --prompt-ids '1 2 3' --max-tokens 5 --temperature 0");
    ASSERT_EQ(s.code, 0) << s.output;
    EXPECT_EQ(s.output.rfind("1 2 3 ", 0), 0u) << s.output;
    expect_bad_input("sample --checkpoint " + out + " --prompt hello", "--prompt-ids");
    expect_bad_input("sample --checkpoint " + out + " --prompt-ids '1 999'", "999");
    expect_bad_input("sample --checkpoint " + out + " --top-k -1", "--top-k");
}

TEST(Cli, UnusableRunDirectoryIsBadInput) {
    TempDir d;
    gpt::test::write_file(d.file("afile"), "x");
    expect_bad_input("train " + quick(d.file("afile") + "/run"), "run.out_dir");
}
