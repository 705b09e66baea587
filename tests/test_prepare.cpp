// `gpt data prepare`: raw text / JSONL to token shards. The JSON scanner, the
// document stream and its split, shard sizes, determinism across thread
// counts, error handling (skip / stop, exit codes), temp-file hygiene, and the
// shards feeding `gpt data info` and `gpt train`.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "kernels/error.h"
#include "tests/test_util.h"

using namespace gpt;
using gpt::test::run_gpt;
using gpt::test::TempDir;
using gpt::test::write_file;
namespace fs = std::filesystem;

namespace {

constexpr int32_t kEot = Tokenizer::kEndOfText;

// The repository's copy of GPT-2's tokenizer files (also compiled into the binary).
std::string tokenizer_dir() { return gpt::test::source_path("data/gpt2-tokenizer"); }

const Tokenizer& tokenizer() {
    static const Tokenizer* t = new Tokenizer(Tokenizer::builtin());
    return *t;
}

// Every token of the shards, in order.
std::vector<int32_t> read_tokens(const std::vector<std::string>& shards) {
    std::vector<int32_t> out;
    for (const auto& p : shards) {
        Shard s(p, 50257, "test");
        out.insert(out.end(), s.tokens(), s.tokens() + s.size());
    }
    return out;
}

// The documents of a token stream: split at <|endoftext|>, which must lead.
std::vector<std::string> documents(const std::vector<int32_t>& toks) {
    std::vector<std::string> docs;
    EXPECT_TRUE(toks.empty() || toks[0] == kEot) << "the stream must start with <|endoftext|>";
    std::vector<int32_t> cur;
    for (size_t i = 0; i < toks.size(); i++) {
        if (toks[i] == kEot) {
            if (i > 0) docs.push_back(tokenizer().decode(cur));
            cur.clear();
        } else {
            cur.push_back(toks[i]);
        }
    }
    if (!toks.empty()) docs.push_back(tokenizer().decode(cur));
    return docs;
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"') o += "\\\"";
        else if (c == '\\') o += "\\\\";
        else if (c == '\n') o += "\\n";
        else if (c == '\t') o += "\\t";
        else o += c;
    }
    return o;
}

// Deterministic English-like text: document k, about `words` words.
std::string make_doc(int k, int words) {
    static const char* w[] = {"the", "model", "reads", "a", "token", "stream", "and", "learns", "which",
                              "word", "comes", "next", "in", "every", "sentence", "of", "plain", "English",
                              "text", "from", "many", "sources", "quickly", "slowly"};
    std::string s = "Document " + std::to_string(k) + ":";
    uint32_t x = uint32_t(k) * 2654435761u + 1;
    for (int i = 0; i < words; i++) {
        x = x * 1664525u + 1013904223u;
        s += " ";
        s += w[(x >> 16) % (sizeof w / sizeof *w)];
        if (i % 12 == 11) s += ".\n";
    }
    return s + ".";
}

PrepareOptions options(const std::string& out, std::vector<std::string> inputs) {
    PrepareOptions o;
    o.out_dir = out;
    o.inputs = std::move(inputs);
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    return o;
}

PrepareStats run_prepare(const PrepareOptions& o, std::string* log_out = nullptr) {
    std::ostringstream log;
    PrepareStats s = prepare(o, log);
    if (log_out) *log_out = log.str();
    return s;
}

std::vector<std::string> dir_listing(const std::string& dir) {
    std::vector<std::string> v;
    for (auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
}

bool has_temp_file(const std::string& dir) {
    for (auto& f : dir_listing(dir))
        if (f.find(".tmp") != std::string::npos) return true;
    return false;
}

}  // namespace

TEST(PrepareJson, ExtractsAndUnescapesTheField) {
    std::string out;
    EXPECT_EQ(json_string_field(R"({"text": "hi"})", "text", out), "");
    EXPECT_EQ(out, "hi");
    EXPECT_EQ(json_string_field(R"(  {"id": [1, {"a": "}"}, -2.5e3, true, null], "text":"a\"b\\c\/\n\t\u00e9\ud83d\ude00"} )",
                                "text", out), "");
    EXPECT_EQ(out, "a\"b\\c/\n\t\xc3\xa9\xf0\x9f\x98\x80");
    EXPECT_EQ(json_string_field(R"({"text": "first", "text": "last"})", "text", out), "");
    EXPECT_EQ(out, "last");
    EXPECT_EQ(json_string_field(R"({"content": "x", "text": ""})", "content", out), "");
    EXPECT_EQ(out, "x");
    EXPECT_EQ(json_string_field(R"({"text": "lone \ud800 surrogate"})", "text", out), "");
    EXPECT_EQ(out, "lone \xef\xbf\xbd surrogate");
    EXPECT_EQ(json_string_field("{\"text\": \"raw \xc3\xa9 utf8\"}\r", "text", out), "");
    EXPECT_EQ(out, "raw \xc3\xa9 utf8");
}

TEST(PrepareJson, SaysWhatIsWrong) {
    std::string out;
    auto err = [&](std::string_view line) { return json_string_field(line, "text", out); };
    EXPECT_EQ(err(R"({"id": 1})"), "no field 'text'");
    EXPECT_EQ(err(R"({"text": 3})"), "field 'text' is a number, not a string");
    EXPECT_EQ(err(R"({"text": null})"), "field 'text' is null, not a string");
    EXPECT_EQ(err(R"({"text": ["a"]})"), "field 'text' is an array, not a string");
    EXPECT_EQ(err(R"(["text"])"), "not a JSON object (an array)");
    EXPECT_EQ(err("hello"), "not JSON: expected '{'");
    EXPECT_NE(err(R"({"text": "unterminated)").find("not JSON"), std::string::npos);
    EXPECT_NE(err(R"({"text": "x"} trailing)").find("trailing"), std::string::npos);
    EXPECT_NE(err(R"({"text": "bad \q escape"})").find("escape"), std::string::npos);
    EXPECT_NE(err("{\"text\": \"tab\tinside\"}").find("control character"), std::string::npos);
    EXPECT_NE(err(R"({"text": "x",})").find("not JSON"), std::string::npos);
    EXPECT_NE(err(R"({"a": tru, "text": "x"})").find("not JSON"), std::string::npos);
    EXPECT_NE(err(R"({"a": 1.2.3, "text": "x"})").find("not JSON"), std::string::npos);
}

// A file, a directory (recursed in sorted order, hidden files skipped) and a
// JSONL file, in command-line order, decode back to the documents.
TEST(Prepare, TextDirectoryAndJsonlDecodeBackInOrder) {
    tokenizer();
    TempDir d;
    write_file(d.file("single.txt"), "A single file.\nWith two lines.");
    fs::create_directories(d.file("dir/sub"));
    write_file(d.file("dir/b.txt"), "Second from the directory.");
    write_file(d.file("dir/a.md"), "First from the directory: caf\xc3\xa9 <|endoftext|> stays text.");
    write_file(d.file("dir/sub/c.txt"), "  Nested, last of the directory.\n");
    write_file(d.file("dir/.hidden"), "never read");
    write_file(d.file("docs.jsonl"), "{\"text\": \"json one\\nline two\", \"id\": 1}\n\n"
                                     "{\"id\": 2, \"text\": \"json two \\u00e9\"}\r\n"
                                     "{\"text\": \"json three, no newline\"}");
    auto o = options(d.file("out"), {d.file("single.txt"), d.file("dir"), d.file("docs.jsonl")});
    o.val_every = 0;
    PrepareStats s = run_prepare(o);
    const std::vector<std::string> want = {"A single file.\nWith two lines.",
                                           "First from the directory: caf\xc3\xa9 <|endoftext|> stays text.",
                                           "Second from the directory.",
                                           "  Nested, last of the directory.\n",
                                           "json one\nline two",
                                           "json two \xc3\xa9",
                                           "json three, no newline"};
    ASSERT_EQ(s.train_shards.size(), 1u);
    EXPECT_EQ(s.train_shards[0], d.file("out/data_train_000000.bin"));
    EXPECT_TRUE(s.val_shards.empty());
    std::vector<int32_t> toks = read_tokens(s.train_shards);
    EXPECT_EQ(documents(toks), want);
    EXPECT_EQ(s.docs_train, want.size());
    EXPECT_EQ(s.tokens_train, toks.size());
    EXPECT_EQ(s.files, 5u);
    size_t bytes = 0;
    for (auto& w : want) bytes += w.size();
    EXPECT_EQ(s.text_bytes, bytes);
    // Each document is exactly [EOT] + encode(text), "<|endoftext|>" in text as ordinary text.
    std::vector<int32_t> expect;
    for (auto& w : want) {
        expect.push_back(kEot);
        auto e = tokenizer().encode(w);
        expect.insert(expect.end(), e.begin(), e.end());
    }
    EXPECT_EQ(toks, expect);
    EXPECT_EQ(dir_listing(d.file("out")), std::vector<std::string>{"data_train_000000.bin"});
}

TEST(Prepare, GlobInputsAndTextField) {
    tokenizer();
    TempDir d;
    write_file(d.file("p2.jsonl"), "{\"body\": \"two\"}\n");
    write_file(d.file("p1.jsonl"), "{\"body\": \"one\"}\n");
    write_file(d.file("q.txt"), "not matched");
    auto o = options(d.file("out"), {d.file("p*.jsonl")});
    o.text_field = "body";
    o.val_every = 0;
    o.name = "fw";
    PrepareStats s = run_prepare(o);
    ASSERT_EQ(s.train_shards.size(), 1u);
    EXPECT_EQ(s.train_shards[0], d.file("out/fw_train_000000.bin"));
    EXPECT_EQ(documents(read_tokens(s.train_shards)), (std::vector<std::string>{"one", "two"}));
}

// Document i (1-based) goes to val when i % K == 0.
TEST(Prepare, SplitsByDocumentIndex) {
    tokenizer();
    TempDir d;
    std::string jl;
    for (int i = 1; i <= 10; i++) jl += "{\"text\": \"doc " + std::to_string(i) + "\"}\n";
    write_file(d.file("d.jsonl"), jl);
    auto o = options(d.file("out"), {d.file("d.jsonl")});
    o.val_every = 3;
    PrepareStats s = run_prepare(o);
    EXPECT_EQ(s.docs_train, 7u);
    EXPECT_EQ(s.docs_val, 3u);
    EXPECT_EQ(documents(read_tokens(s.val_shards)), (std::vector<std::string>{"doc 3", "doc 6", "doc 9"}));
    EXPECT_EQ(documents(read_tokens(s.train_shards)),
              (std::vector<std::string>{"doc 1", "doc 2", "doc 4", "doc 5", "doc 7", "doc 8", "doc 10"}));
    EXPECT_EQ(s.val_shards, std::vector<std::string>{d.file("out/data_val_000000.bin")});
}

// Shards hold exactly N tokens (the last fewer); documents span shards; the
// concatenation is the same stream as with one big shard.
TEST(Prepare, ShardSizeLimitAndDocumentsSpanningShards) {
    tokenizer();
    TempDir d;
    std::string jl;
    for (int i = 0; i < 40; i++) jl += "{\"text\": \"" + json_escape(make_doc(i, 30)) + "\"}\n";
    write_file(d.file("d.jsonl"), jl);
    auto big = options(d.file("big"), {d.file("d.jsonl")});
    PrepareStats sb = run_prepare(big);
    auto small = options(d.file("small"), {d.file("d.jsonl")});
    small.shard_tokens = 97;
    PrepareStats ss = run_prepare(small);
    ASSERT_GT(ss.train_shards.size(), 5u);
    for (size_t i = 0; i < ss.train_shards.size(); i++) {
        ShardHeader h = read_shard_header(ss.train_shards[i], "test");
        if (i + 1 < ss.train_shards.size()) EXPECT_EQ(h.count, 97u) << ss.train_shards[i];
        else EXPECT_LE(h.count, 97u);
        char name[64];
        std::snprintf(name, sizeof name, "small/data_train_%06zu.bin", i);
        EXPECT_EQ(ss.train_shards[i], d.file(name));
    }
    EXPECT_EQ(read_tokens(ss.train_shards), read_tokens(sb.train_shards));
    EXPECT_EQ(read_tokens(ss.val_shards), read_tokens(sb.val_shards));
    EXPECT_EQ(ss.tokens_train, sb.tokens_train);
    EXPECT_EQ(ss.docs_val, 2u);
}

// The bytes written do not depend on the thread count.
TEST(Prepare, IdenticalBytesWithOneAndTwoThreads) {
    tokenizer();
    TempDir d;
    fs::create_directories(d.file("txt"));
    std::string jl;
    for (int i = 0; i < 300; i++) {
        jl += "{\"text\": \"" + json_escape(make_doc(i, 5 + (i * 37) % 200)) + "\"}\n";
        if (i % 10 == 0) write_file(d.file("txt/" + std::to_string(1000 + i) + ".txt"), make_doc(-i, 50 + i));
    }
    write_file(d.file("d.jsonl"), jl);
    std::vector<std::vector<std::string>> listings;
    std::vector<std::string> contents[2];
    for (int t = 1; t <= 2; t++) {
        const std::string out = d.file("out" + std::to_string(t));
        auto o = options(out, {d.file("d.jsonl"), d.file("txt")});
        o.threads = t;
        o.shard_tokens = 5000;
        o.val_every = 7;
        run_prepare(o);
        listings.push_back(dir_listing(out));
        for (auto& f : listings.back()) contents[t - 1].push_back(gpt::test::read_file(out + "/" + f));
    }
    EXPECT_EQ(listings[0], listings[1]);
    EXPECT_GT(listings[0].size(), 3u);
    EXPECT_TRUE(contents[0] == contents[1]) << "shards differ between 1 and 2 threads";
}

TEST(Prepare, MalformedJsonlSkipOrStopThroughTheBinary) {
    tokenizer();
    TempDir d;
    write_file(d.file("bad.jsonl"), "{\"text\": \"good one\"}\n"
                                    "{\"text\": 42}\n"
                                    "this is not json\n"
                                    "{\"other\": \"x\"}\n"
                                    "{\"text\": \"good two\"}\n");
    const std::string base = "data prepare --tokenizer " + tokenizer_dir() + " --val-every 0 --quiet ";
    auto skip = run_gpt(base + "--out " + d.file("skip") + " " + d.file("bad.jsonl"));
    EXPECT_EQ(skip.code, 0) << skip.output;
    for (int line : {2, 3, 4})
        EXPECT_NE(skip.output.find("bad.jsonl:" + std::to_string(line) + ":"), std::string::npos) << skip.output;
    EXPECT_NE(skip.output.find("field 'text' is a number, not a string"), std::string::npos) << skip.output;
    EXPECT_NE(skip.output.find("no field 'text'"), std::string::npos) << skip.output;
    EXPECT_NE(skip.output.find("skipped  3 lines, 0 files"), std::string::npos) << skip.output;
    EXPECT_EQ(documents(read_tokens({d.file("skip/data_train_000000.bin")})),
              (std::vector<std::string>{"good one", "good two"}));
    EXPECT_FALSE(has_temp_file(d.file("skip")));

    auto stop = run_gpt(base + "--on-error stop --out " + d.file("stop") + " " + d.file("bad.jsonl"));
    EXPECT_EQ(stop.code, 2) << stop.output;
    EXPECT_NE(stop.output.find("bad.jsonl:2: field 'text' is a number"), std::string::npos) << stop.output;
    EXPECT_EQ(stop.output.find("bad.jsonl:3"), std::string::npos) << "stop mode goes on: " << stop.output;
    // Nothing but complete shards: here none, the first bad line came before any full shard.
    EXPECT_TRUE(dir_listing(d.file("stop")).empty());

    // Through the API: the same error as Error(BadInput).
    auto o = options(d.file("api"), {d.file("bad.jsonl")});
    o.stop_on_error = true;
    try {
        run_prepare(o);
        ADD_FAILURE() << "no error in stop mode";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
    }
}

// A run stopped by a bad line leaves the output directory as it was: no
// partial set of shards that would look complete, no temp or staging files.
TEST(Prepare, StopModeLeavesTheOutputAsItWas) {
    tokenizer();
    TempDir d;
    std::string jl;
    for (int i = 0; i < 50; i++) jl += "{\"text\": \"" + json_escape(make_doc(i, 40)) + "\"}\n";
    jl += "{broken\n";
    write_file(d.file("d.jsonl"), jl);
    auto r = run_gpt("data prepare --quiet --tokenizer " + tokenizer_dir() + " --on-error stop --shard-tokens 1000 --out " +
                     d.file("out") + " " + d.file("d.jsonl"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("d.jsonl:51"), std::string::npos) << r.output;
    EXPECT_FALSE(has_temp_file(d.file("out")));
    EXPECT_TRUE(std::filesystem::is_empty(d.file("out")));
}

TEST(Prepare, InputAndTokenizerErrors) {
    tokenizer();
    TempDir d;
    write_file(d.file("ok.txt"), "fine text");
    const std::string tk = " --tokenizer " + tokenizer_dir();
    auto none = run_gpt("data prepare --out " + d.file("o1") + tk + " " + d.file("nothing-*.jsonl"));
    EXPECT_EQ(none.code, 2) << none.output;
    EXPECT_NE(none.output.find("nothing-*.jsonl"), std::string::npos) << none.output;
    EXPECT_NE(none.output.find("matched nothing"), std::string::npos) << none.output;

    auto missing_skip = run_gpt("data prepare --quiet --out " + d.file("o2") + tk + " " + d.file("ok.txt") + " " +
                                d.file("missing.txt"));
    EXPECT_EQ(missing_skip.code, 0) << missing_skip.output;
    EXPECT_NE(missing_skip.output.find("missing.txt"), std::string::npos) << missing_skip.output;
    EXPECT_NE(missing_skip.output.find("skipped  0 lines, 1 files"), std::string::npos) << missing_skip.output;

    auto missing_stop = run_gpt("data prepare --on-error stop --out " + d.file("o3") + tk + " " + d.file("ok.txt") +
                                " " + d.file("missing.txt"));
    EXPECT_EQ(missing_stop.code, 2) << missing_stop.output;
    EXPECT_NE(missing_stop.output.find("missing.txt"), std::string::npos) << missing_stop.output;

    auto no_tok = run_gpt("data prepare --out " + d.file("o4") + " --tokenizer " + d.file("no-tokenizer") + " " +
                          d.file("ok.txt"));
    EXPECT_EQ(no_tok.code, 2) << no_tok.output;
    EXPECT_NE(no_tok.output.find("no-tokenizer"), std::string::npos) << no_tok.output;

    auto empty = run_gpt("data prepare --out " + d.file("o5") + tk);
    EXPECT_EQ(empty.code, 2) << empty.output;
    auto bad_flag = run_gpt("data prepare --out " + d.file("o6") + tk + " --on-error maybe " + d.file("ok.txt"));
    EXPECT_EQ(bad_flag.code, 2) << bad_flag.output;
    EXPECT_NE(bad_flag.output.find("--on-error"), std::string::npos) << bad_flag.output;
}

// A rerun replaces the shards of the same name: stale higher-numbered shards
// and temp files left by a killed run go; other names stay.
TEST(Prepare, RerunRemovesStaleShardsAndTempFiles) {
    tokenizer();
    TempDir d;
    std::string jl;
    for (int i = 0; i < 20; i++) jl += "{\"text\": \"" + json_escape(make_doc(i, 30)) + "\"}\n";
    write_file(d.file("d.jsonl"), jl);
    auto o = options(d.file("out"), {d.file("d.jsonl")});
    o.shard_tokens = 100;
    PrepareStats first = run_prepare(o);
    ASSERT_GT(first.train_shards.size(), 2u);
    write_file(d.file("out/data_train_000001.bin.tmp.99999"), "half a shard");
    write_file(d.file("out/other_train_000000.bin"), "not ours");
    o.shard_tokens = 100000;
    std::string log;
    PrepareStats second = run_prepare(o, &log);
    EXPECT_EQ(dir_listing(d.file("out")),
              (std::vector<std::string>{"data_train_000000.bin", "data_val_000000.bin", "other_train_000000.bin"}));
    EXPECT_NE(log.find("data_train_000002.bin"), std::string::npos) << log;
    EXPECT_EQ(second.tokens_train, first.tokens_train);
}

// Prepared shards load with `gpt data info` and train a few steps. No
// --tokenizer and no GPT_TOKENIZER_DIR: the built-in files are the default.
TEST(Prepare, ShardsWorkWithDataInfoAndTrain) {
    tokenizer();
    TempDir d;
    fs::create_directories(d.file("corpus"));
    for (int i = 0; i < 40; i++) write_file(d.file("corpus/" + std::to_string(100 + i) + ".txt"), make_doc(i, 120));
    auto p = gpt::test::run_shell("cd '" + d.path + "' && env -u GPT_TOKENIZER_DIR " + std::string(GPT_BINARY) +
                                  " data prepare --val-every 10 --shard-tokens 3000 --out shards corpus");
    ASSERT_EQ(p.code, 0) << p.output;
    EXPECT_NE(p.output.find("prepared 40 documents (train 36, val 4)"), std::string::npos) << p.output;
    auto info = run_gpt("data info " + d.file("shards/data_train_000000.bin") + " " +
                        d.file("shards/data_val_000000.bin"));
    EXPECT_EQ(info.code, 0) << info.output;
    EXPECT_NE(info.output.find("tokens      3000"), std::string::npos) << info.output;
    auto t = run_gpt("train --set model.preset=nano --set model.vocab_size=50257 --set data.source=shards"
                     " --set data.train='" + d.file("shards/data_train_*.bin") + "' --set data.val='" +
                     d.file("shards/data_val_*.bin") + "' --set run.batch_size=1 --set run.seq_len=8"
                     " --set run.max_steps=4 --set schedule.warmup_steps=1 --set run.val_every=2 --set run.val_batches=2 --set run.out_dir=" +
                     d.file("run"));
    EXPECT_EQ(t.code, 0) << t.output;
    EXPECT_NE(t.output.find("final val loss"), std::string::npos) << t.output;
    // GPT-2 shards and vocabulary: bits per byte from the default tokenizer.
    EXPECT_NE(t.output.find("val bpb"), std::string::npos) << t.output;
}
