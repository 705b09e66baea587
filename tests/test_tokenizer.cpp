// GPT-2 tokenizer: exact ids against the JavaScript reference encoder
// (tests/data/tokenizer_vectors.jsonl, tools/make-tokenizer-vectors.js), byte
// round trips for any input including invalid UTF-8, special tokens, errors for
// bad tokenizer files, and `gpt data encode` / `decode`.
//
// The tokenizer files live in the repository (data/gpt2-tokenizer) and are
// compiled into the binary: the tests use the built-in copy, check that it is
// byte for byte the repository's, and that the binary needs no file at all.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "data/tokenizer.h"
#include "data/utf8.h"
#include "kernels/error.h"
#include "tests/test_util.h"

namespace gpt {
namespace {

// The repository's copy of GPT-2's files.
std::string tokenizer_dir() { return test::source_path("data/gpt2-tokenizer"); }

// Loaded once: reading 50257 tokens and 50000 merges takes a moment.
const Tokenizer& gpt2() {
    static const Tokenizer* tok = new Tokenizer(Tokenizer::builtin());
    return *tok;
}

// The gpt binary with GPT_TOKENIZER_DIR removed from its environment, so that
// it falls back to the built-in files whatever the caller's environment holds.
test::RunResult run_gpt_no_env(const std::string& args, const std::string& cwd = "") {
    std::string cmd = "env -u GPT_TOKENIZER_DIR " + std::string(GPT_BINARY) + " " + args;
    if (!cwd.empty()) cmd = "cd '" + cwd + "' && " + cmd;
    return test::run_shell(cmd);
}

// The built-in files are the repository's, and those are OpenAI's GPT-2 files
// (the sha256 that data/gpt2-tokenizer/README.md states).
TEST(Tokenizer, BuiltinFilesAreTheRepositorys) {
    EXPECT_EQ(std::string(embedded::gpt2_encoder_json()), test::read_file(tokenizer_dir() + "/encoder.json"));
    EXPECT_EQ(std::string(embedded::gpt2_vocab_bpe()), test::read_file(tokenizer_dir() + "/vocab.bpe"));
    EXPECT_EQ(embedded::gpt2_encoder_json().size(), 1042301u);
    EXPECT_EQ(embedded::gpt2_vocab_bpe().size(), 456318u);
    const std::string readme = test::read_file(tokenizer_dir() + "/README.md");
    const test::RunResult sums = test::run_shell("cd '" + tokenizer_dir() + "' && sha256sum encoder.json vocab.bpe");
    ASSERT_EQ(sums.code, 0) << sums.output;
    for (const std::string want : {"196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783  encoder.json",
                                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5  vocab.bpe"}) {
        EXPECT_NE(sums.output.find(want), std::string::npos) << sums.output;
        EXPECT_NE(readme.find(want), std::string::npos) << "README.md does not state " << want;
    }
    // Loading the folder gives the same tokenizer as the built-in copy.
    const Tokenizer from_dir = Tokenizer::load(tokenizer_dir());
    ASSERT_EQ(from_dir.vocab_size(), gpt2().vocab_size());
    for (int32_t id = 0; id < from_dir.vocab_size(); id += 97) EXPECT_EQ(from_dir.token_bytes(id), gpt2().token_bytes(id));
    const std::string text = "GPT-2's tokenizer, built in: caf\xc3\xa9 \xe4\xb8\xad 12345 <|endoftext|>\n\n  x";
    EXPECT_EQ(from_dir.encode(text, true), gpt2().encode(text, true));
}


// One line of the vectors file: {"text": "...", "ids": [...]} with ASCII-only
// JSON string escapes (\uXXXX, surrogate pairs for astral characters).
struct Vector {
    std::string text;
    std::vector<int32_t> ids;
};

Vector parse_vector(const std::string& line) {
    Vector v;
    size_t i = line.find("\"text\": \"");
    if (i == std::string::npos) throw std::runtime_error("no text field: " + line);
    i += 9;
    auto hex4 = [&](size_t at) { return uint32_t(std::stoul(line.substr(at, 4), nullptr, 16)); };
    for (;;) {
        char c = line.at(i++);
        if (c == '"') break;
        if (c != '\\') {
            v.text += c;
            continue;
        }
        char e = line.at(i++);
        switch (e) {
            case 'n': v.text += '\n'; break;
            case 't': v.text += '\t'; break;
            case 'r': v.text += '\r'; break;
            case 'b': v.text += '\b'; break;
            case 'f': v.text += '\f'; break;
            case 'u': {
                uint32_t cp = hex4(i);
                i += 4;
                if (cp >= 0xD800 && cp < 0xDC00) {
                    uint32_t lo = hex4(i + 2);
                    i += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                append_utf8(v.text, cp);
                break;
            }
            default: v.text += e;
        }
    }
    size_t a = line.find("\"ids\": [", i);
    if (a == std::string::npos) throw std::runtime_error("no ids field: " + line);
    std::string list = line.substr(a + 8, line.find(']', a) - a - 8);
    for (char& c : list)
        if (c == ',') c = ' ';
    std::istringstream ss(list);
    for (int32_t x; ss >> x;) v.ids.push_back(x);
    return v;
}

std::string show(const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t x : ids) s += std::to_string(x) + " ";
    return s;
}

TEST(Tokenizer, MatchesReferenceVectors) {
    const Tokenizer& tok = gpt2();
    std::ifstream f(test::source_path("tests/data/tokenizer_vectors.jsonl"));
    ASSERT_TRUE(f) << "tests/data/tokenizer_vectors.jsonl missing";
    int count = 0, bad = 0;
    for (std::string line; std::getline(f, line);) {
        if (line.empty()) continue;
        Vector v = parse_vector(line);
        count++;
        std::vector<int32_t> got = tok.encode(v.text);
        if (got != v.ids) {
            bad++;
            ADD_FAILURE() << "vector " << count << " " << line << "\n  want " << show(v.ids) << "\n  got  "
                          << show(got);
        }
        EXPECT_EQ(tok.decode(v.ids), v.text) << line;
    }
    EXPECT_GE(count, 300);
    std::cout << "[          ] " << count - bad << " of " << count << " reference vectors match\n";
}

TEST(Tokenizer, KnownIds) {
    const Tokenizer& tok = gpt2();
    EXPECT_EQ(tok.vocab_size(), 50257);
    EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
    EXPECT_EQ(tok.token_bytes(Tokenizer::kEndOfText), "<|endoftext|>");
    EXPECT_EQ(tok.token_bytes(220), " ");
    EXPECT_TRUE(tok.encode("").empty());
    EXPECT_THROW(tok.token_bytes(50257), Error);
    EXPECT_THROW(tok.token_bytes(-1), Error);
    EXPECT_THROW(tok.decode({15496, 99999}), Error);
}

TEST(Tokenizer, AllowSpecial) {
    const Tokenizer& tok = gpt2();
    const std::string t = "a<|endoftext|>b<|endoftext|><|endoftext|>";
    std::vector<int32_t> plain = tok.encode(t), special = tok.encode(t, true);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), Tokenizer::kEndOfText), 0);
    std::vector<int32_t> want = tok.encode("a");
    want.push_back(Tokenizer::kEndOfText);
    for (int32_t x : tok.encode("b")) want.push_back(x);
    want.push_back(Tokenizer::kEndOfText);
    want.push_back(Tokenizer::kEndOfText);
    EXPECT_EQ(special, want);
    EXPECT_EQ(tok.decode(special), t);
    EXPECT_EQ(tok.decode(plain), t);
    EXPECT_EQ(tok.encode("<|endoftext|>", true), (std::vector<int32_t>{Tokenizer::kEndOfText}));
    EXPECT_EQ(tok.encode("no special here", true), tok.encode("no special here"));
    EXPECT_EQ(tok.encode("<|endoftext", true), tok.encode("<|endoftext"));
}

// Invalid UTF-8: each byte no regex match covers is its own single-byte token,
// and the valid text around it tokenizes as if cut there.
TEST(Tokenizer, InvalidUtf8ByteByByte) {
    const Tokenizer& tok = gpt2();
    for (std::string bad : {"\xff", "\xc3", "\xe2\x82", "\x80", "\xed\xa0\x80", "\xf5\x80\x80\x80", "\xc0\xaf"}) {
        std::vector<int32_t> ids = tok.encode(bad);
        ASSERT_EQ(ids.size(), bad.size()) << "invalid bytes each become one token";
        for (size_t k = 0; k < bad.size(); k++) EXPECT_EQ(tok.token_bytes(ids[k]), bad.substr(k, 1));
        std::vector<int32_t> mixed = tok.encode("hello" + bad + "world"), want = tok.encode("hello");
        want.insert(want.end(), ids.begin(), ids.end());
        for (int32_t x : tok.encode("world")) want.push_back(x);
        EXPECT_EQ(mixed, want);
        EXPECT_EQ(tok.decode(mixed), "hello" + bad + "world");
    }
}

TEST(Tokenizer, RoundTripRandomBytes) {
    const Tokenizer& tok = gpt2();
    std::mt19937_64 rng(7);
    const std::string alphabet =
        "  \n\t\r'sStT0123456789.,!?-_<|>abcdefXYZ\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\x80\xff";
    int checked = 0;
    for (int n = 0; n < 3000; n++) {
        size_t len = rng() % (n % 100 == 0 ? 5000 : 64);
        std::string s;
        int mode = int(rng() % 3);
        for (size_t k = 0; k < len; k++) {
            if (mode == 0) s += char(rng() % 256);                             // any byte, NULs included
            else if (mode == 1) s += alphabet[rng() % alphabet.size()];        // pieces of valid and invalid UTF-8
            else s += std::string(1 + rng() % 40, alphabet[rng() % alphabet.size()]);  // long runs
        }
        std::vector<int32_t> ids = tok.encode(s);
        ASSERT_EQ(tok.decode(ids), s) << "round trip failed for a string of " << s.size() << " bytes";
        std::vector<int32_t> sp = tok.encode(s, true);
        ASSERT_EQ(tok.decode(sp), s);
        checked++;
    }
    EXPECT_EQ(checked, 3000);
}

TEST(Tokenizer, RoundTripRandomUnicode) {
    const Tokenizer& tok = gpt2();
    std::mt19937_64 rng(11);
    // Ranges: ASCII, Latin-1, Greek/Cyrillic, Devanagari, CJK, Hangul, emoji, modifiers.
    const uint32_t ranges[][2] = {{0x20, 0x7E},     {0x00, 0x20},     {0xA0, 0x17F},   {0x370, 0x4FF},
                                  {0x900, 0x97F},   {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x1F300, 0x1FAFF},
                                  {0x1F3FB, 0x1F3FF}, {0x200B, 0x200D}, {0xFE00, 0xFE0F}, {0x10000, 0x10FFFF}};
    const size_t nr = sizeof ranges / sizeof ranges[0];
    for (int n = 0; n < 2000; n++) {
        std::string s;
        size_t len = rng() % 50;
        for (size_t k = 0; k < len; k++) {
            const auto& r = ranges[rng() % nr];
            uint32_t cp = r[0] + uint32_t(rng() % (r[1] - r[0] + 1));
            if (cp >= 0xD800 && cp < 0xE000) cp = 'x';
            append_utf8(s, cp);
        }
        ASSERT_EQ(tok.decode(tok.encode(s)), s);
    }
}

// Pieces far beyond the exact loop's size go through the heap path; both must
// agree with each other (the reference vectors pin the long cases to GPT-2).
TEST(Tokenizer, LongPiecesAndRuns) {
    const Tokenizer& tok = gpt2();
    std::string word;
    std::mt19937_64 rng(3);
    for (int k = 0; k < 200000; k++) word += char('a' + rng() % 26);
    std::vector<int32_t> ids = tok.encode(word);
    EXPECT_EQ(tok.decode(ids), word);
    // A long word tokenizes the same whether or not a short prefix comes first
    // with a space between (pieces are independent).
    std::vector<int32_t> two = tok.encode("ab " + word);
    std::vector<int32_t> want = tok.encode("ab");
    std::vector<int32_t> tail = tok.encode(" " + word);
    want.insert(want.end(), tail.begin(), tail.end());
    EXPECT_EQ(two, want);
    const std::string spaces(1 << 20, ' '), digits(100000, '7');
    EXPECT_EQ(tok.decode(tok.encode(spaces + "x")), spaces + "x");
    EXPECT_EQ(tok.decode(tok.encode(digits)), digits);
}

TEST(Tokenizer, ThreadSafe) {
    const Tokenizer& tok = gpt2();
    std::vector<std::string> texts;
    for (int k = 0; k < 64; k++)
        texts.push_back("Document " + std::to_string(k) + ": the quick brown fox's " + std::string(size_t(k), '!') +
                        " jumps\n\n over caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 " + std::to_string(k * 7919));
    std::vector<std::vector<int32_t>> want;
    for (auto& t : texts) want.push_back(tok.encode(t));
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++)
        threads.emplace_back([&, t] {
            for (int rep = 0; rep < 50; rep++)
                for (size_t k = 0; k < texts.size(); k++)
                    if (tok.encode(texts[(k + size_t(t)) % texts.size()]) != want[(k + size_t(t)) % texts.size()])
                        mismatches[size_t(t)]++;
        });
    for (auto& th : threads) th.join();
    for (int m : mismatches) EXPECT_EQ(m, 0);
}

// A copy of the real files in a temp dir, for breaking one of them.
struct BadDir {
    test::TempDir dir;
    std::string enc, bpe;
    BadDir() {
        enc = std::string(embedded::gpt2_encoder_json());
        bpe = std::string(embedded::gpt2_vocab_bpe());
    }
    std::string write() {
        test::write_file(dir.file("encoder.json"), enc);
        test::write_file(dir.file("vocab.bpe"), bpe);
        return dir.path;
    }
};

std::string load_error(const std::string& dir) {
    try {
        Tokenizer::load(dir);
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        return e.what();
    }
    ADD_FAILURE() << "load(" << dir << ") did not throw";
    return "";
}

TEST(Tokenizer, BadFiles) {
    gpt2();
    {
        test::TempDir empty;
        std::string msg = load_error(empty.path);
        EXPECT_NE(msg.find(empty.file("encoder.json")), std::string::npos) << msg;
    }
    {
        BadDir d;
        std::string path = d.write();
        std::filesystem::remove(d.dir.file("vocab.bpe"));
        std::string msg = load_error(path);
        EXPECT_NE(msg.find(d.dir.file("vocab.bpe")), std::string::npos) << msg;
    }
    {
        BadDir d;
        d.enc = "{\"a\": 0, \"b\" 1}";
        std::string msg = load_error(d.write());
        EXPECT_NE(msg.find("encoder.json: malformed JSON at byte offset 13"), std::string::npos) << msg;
    }
    {
        BadDir d;
        d.enc.resize(d.enc.size() / 2);
        std::string msg = load_error(d.write());
        EXPECT_NE(msg.find("encoder.json: malformed JSON"), std::string::npos) << msg;
    }
    {
        BadDir d;
        d.enc = "{}";
        std::string msg = load_error(d.write());
        EXPECT_NE(msg.find("encoder.json"), std::string::npos) << msg;
    }
    {
        BadDir d;
        d.bpe += "zzzq\xc4\xa0 qqqz\n";  // neither part is a token
        std::string msg = load_error(d.write());
        EXPECT_NE(msg.find("vocab.bpe:50002: merge part"), std::string::npos) << msg;
        EXPECT_NE(msg.find("not in the vocabulary"), std::string::npos) << msg;
    }
    {
        BadDir d;
        d.bpe += "a b c\n";
        std::string msg = load_error(d.write());
        EXPECT_NE(msg.find("vocab.bpe:50002: expected a merge"), std::string::npos) << msg;
    }
    {
        BadDir d;
        d.enc.replace(d.enc.find("\"!\": 0"), 6, "\"\\u4e2d\": 0");  // not in the byte alphabet
        std::string msg = load_error(d.write());
        EXPECT_NE(msg.find("encoder.json"), std::string::npos) << msg;
        EXPECT_NE(msg.find("U+4E2D"), std::string::npos) << msg;
    }
}

// A folder given wins over $GPT_TOKENIZER_DIR, which wins over the built-in files.
TEST(Tokenizer, ResolveDir) {
    EXPECT_EQ(Tokenizer::resolve_dir("/x/y"), "/x/y");
    const char* old = std::getenv("GPT_TOKENIZER_DIR");
    std::string saved = old ? old : "";
    setenv("GPT_TOKENIZER_DIR", "/from/env", 1);
    EXPECT_EQ(Tokenizer::resolve_dir(""), "/from/env");
    EXPECT_EQ(Tokenizer::resolve_dir("/flag"), "/flag");
    EXPECT_NE(Tokenizer::describe("").find("/from/env"), std::string::npos);
    try {
        Tokenizer::load_default("");
        ADD_FAILURE() << "no throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput);
        EXPECT_NE(std::string(e.what()).find("/from/env/encoder.json"), std::string::npos) << e.what();
    }
    unsetenv("GPT_TOKENIZER_DIR");
    EXPECT_EQ(Tokenizer::resolve_dir(""), "");
    EXPECT_EQ(Tokenizer::describe(""), "the built-in GPT-2 tokenizer");
    EXPECT_EQ(Tokenizer::load_default("").encode("Hello world"), (std::vector<int32_t>{15496, 995}));
    EXPECT_EQ(Tokenizer::load_default(tokenizer_dir()).vocab_size(), 50257);
    if (old) setenv("GPT_TOKENIZER_DIR", saved.c_str(), 1);
}

TEST(Tokenizer, CliEncodeDecode) {
    const Tokenizer& tok = gpt2();
    test::TempDir d;
    std::string raw = "Hello world, it's <|endoftext|> caf\xc3\xa9 \xff";
    raw += '\0';
    raw += " end\n\n";
    test::write_file(d.file("in.txt"), raw);
    const std::string flag = " --tokenizer '" + tokenizer_dir() + "'";
    const char* old_env = std::getenv("GPT_TOKENIZER_DIR");
    const std::string saved_env = old_env ? old_env : "";

    auto expect_ids = [&](const std::string& out, const std::vector<int32_t>& ids) {
        std::string want;
        for (size_t k = 0; k < ids.size(); k++) want += (k ? " " : "") + std::to_string(ids[k]);
        EXPECT_EQ(out, want + "\n");
    };
    test::RunResult r = test::run_gpt("data encode" + flag + " < '" + d.file("in.txt") + "'");
    ASSERT_EQ(r.code, 0) << r.output;
    expect_ids(r.output, tok.encode(raw));
    r = test::run_gpt("data encode --allow-special" + flag + " < '" + d.file("in.txt") + "'");
    ASSERT_EQ(r.code, 0) << r.output;
    expect_ids(r.output, tok.encode(raw, true));
    test::write_file(d.file("ids.txt"), r.output);

    r = test::run_gpt("data decode" + flag + " < '" + d.file("ids.txt") + "' > '" + d.file("out.bin") + "'");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(test::read_file(d.file("out.bin")), raw);

    // Through the environment variable; an empty input is an empty line.
    setenv("GPT_TOKENIZER_DIR", tokenizer_dir().c_str(), 1);
    r = test::run_gpt("data encode < /dev/null");
    unsetenv("GPT_TOKENIZER_DIR");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output, "\n");

    // A bad id is bad input (exit 2) naming it.
    test::write_file(d.file("bad.txt"), "15496 50257 995\n");
    r = test::run_gpt("data decode" + flag + " < '" + d.file("bad.txt") + "'");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("'50257'"), std::string::npos) << r.output;
    test::write_file(d.file("bad.txt"), "15496 hello\n");
    r = test::run_gpt("data decode" + flag + " < '" + d.file("bad.txt") + "'");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("'hello'"), std::string::npos) << r.output;

    // A folder without its files, given or through the environment: exit 2 naming the file.
    r = test::run_gpt("data encode --tokenizer '" + d.file("nope") + "' < /dev/null");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(d.file("nope") + "/encoder.json"), std::string::npos) << r.output;
    r = test::run_shell("GPT_TOKENIZER_DIR='" + d.file("nope") + "' " + std::string(GPT_BINARY) + " data decode < /dev/null");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(d.file("nope") + "/encoder.json"), std::string::npos) << r.output;

    r = test::run_gpt("data encode --help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.output.find("--allow-special"), std::string::npos);
    r = test::run_gpt("data decode --help");
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.output.find("--tokenizer"), std::string::npos);
    r = test::run_gpt("data --help");
    EXPECT_NE(r.output.find("encode"), std::string::npos);
    EXPECT_NE(r.output.find("decode"), std::string::npos);
    if (old_env) setenv("GPT_TOKENIZER_DIR", saved_env.c_str(), 1);
}

// No flag, no environment variable, another working directory, and a copy of
// the binary away from the source and build trees: encode and decode still
// work, from the files compiled in.
TEST(Tokenizer, DefaultNeedsNoFileFromAnyDirectory) {
    const Tokenizer& tok = gpt2();
    test::TempDir d;
    const std::string text = "It's the default: no --tokenizer, no GPT_TOKENIZER_DIR. caf\xc3\xa9\n";
    test::write_file(d.file("in.txt"), text);
    std::string want;
    for (int32_t id : tok.encode(text)) want += (want.empty() ? "" : " ") + std::to_string(id);
    test::RunResult r = run_gpt_no_env("data encode < in.txt", d.path);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output, want + "\n");

    std::filesystem::copy_file(GPT_BINARY, d.file("gpt"));
    r = test::run_shell("cd / && env -u GPT_TOKENIZER_DIR '" + d.file("gpt") + "' data encode < '" + d.file("in.txt") + "'");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output, want + "\n");
    test::write_file(d.file("ids.txt"), want);
    r = test::run_shell("cd / && env -u GPT_TOKENIZER_DIR '" + d.file("gpt") + "' data decode < '" + d.file("ids.txt") + "'");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output, text);
}

}  // namespace
}  // namespace gpt
