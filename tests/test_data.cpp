// Token shards, the shard and synthetic streams, the Markov chain's exact
// entropies, and the `gpt data` subcommand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "data/data_cli.h"
#include "data/markov.h"
#include "data/shard.h"
#include "data/source.h"
#include "kernels/error.h"
#include "tests/test_util.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

// Runs f and checks it throws Error(BadInput) whose message has every `parts`.
void expect_bad_input(const std::function<void()>& f, const std::vector<std::string>& parts) {
    try {
        f();
        ADD_FAILURE() << "no error thrown; wanted one mentioning '" << parts.front() << "'";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput) << e.what();
        for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
            << "message '" << e.what() << "' lacks '" << p << "'";
    }
}

// Raw shard bytes: a header with the given fields, then `tokens`, then `extra` bytes.
void write_raw(const std::string& path, int32_t magic, int32_t version, int32_t count,
               const std::vector<uint16_t>& tokens, size_t extra = 0) {
    std::vector<int32_t> h(256, 0);
    h[0] = magic;
    h[1] = version;
    h[2] = count;
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(h.data()), 1024);
    f.write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(tokens.size() * 2));
    std::string pad(extra, '\0');
    f.write(pad.data(), std::streamsize(extra));
}

std::vector<int32_t> ramp(size_t n, int32_t start, int32_t mod = 50000) {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; i++) t[i] = int32_t((start + int64_t(i) * 7) % mod);
    return t;
}

Config shard_config(const std::string& train_glob) {
    Config c;
    c.data.source = "shards";
    c.data.train = train_glob;
    c.data.val = train_glob;
    return c;
}

Config synthetic_config(int order, int vocab, double sharpness, int seed) {
    Config c;
    c.data.source = "synthetic";
    c.data.synthetic.order = order;
    c.data.synthetic.vocab = vocab;
    c.data.synthetic.sharpness = sharpness;
    c.data.synthetic.seed = seed;
    return c;
}

struct Batch {
    std::vector<int32_t> in, tg;
    bool operator==(const Batch&) const = default;
};

Batch next(DataSource& s, int B, int T) {
    Batch b{std::vector<int32_t>(size_t(B) * T), std::vector<int32_t>(size_t(B) * T)};
    s.next_batch(b.in.data(), b.tg.data());
    return b;
}

}  // namespace

TEST(Shard, RoundTrip) {
    TempDir d;
    auto toks = ramp(12345, 3);
    toks[100] = 50256;
    write_shard(d.file("a.bin"), toks, 50257);
    Shard s(d.file("a.bin"), 50257, "data.train");
    ASSERT_EQ(s.size(), toks.size());
    EXPECT_EQ(s.header().magic, kShardMagic);
    EXPECT_EQ(s.header().version, kShardVersion);
    EXPECT_EQ(s.header().file_bytes, 1024 + 2 * toks.size());
    for (size_t i = 0; i < toks.size(); i++) ASSERT_EQ(int32_t(s.tokens()[i]), toks[i]) << i;
    // The temporary file was renamed away.
    int files = 0;
    for (auto& e : std::filesystem::directory_iterator(d.path)) files += e.is_regular_file();
    EXPECT_EQ(files, 1);
    EXPECT_EQ(read_shard_header(d.file("a.bin"), "").count, toks.size());
}

TEST(Shard, WriteRefusesBadTokens) {
    TempDir d;
    expect_bad_input([&] { write_shard(d.file("x.bin"), {1, 2, 70000}, 65536); }, {"x.bin", "70000", "index 2"});
    expect_bad_input([&] { write_shard(d.file("x.bin"), {1, 50257}, 50257); }, {"x.bin", "50257", "index 1"});
    expect_bad_input([&] { write_shard(d.file("x.bin"), {1, -1}, 50257); }, {"x.bin", "-1"});
    expect_bad_input([&] { write_shard(d.file("x.bin"), {}, 50257); }, {"x.bin", "no tokens"});
    EXPECT_FALSE(std::filesystem::exists(d.file("x.bin")));
}

TEST(Shard, BadInputs) {
    TempDir d;
    auto open = [&](const std::string& name) {
        return [&, name] { Shard s(d.file(name), 50257, "data.train"); };
    };
    expect_bad_input(open("missing.bin"), {"data.train", "missing.bin", "cannot open"});

    gpt::test::write_file(d.file("empty.bin"), "");
    expect_bad_input(open("empty.bin"), {"empty.bin", "empty file"});

    gpt::test::write_file(d.file("short.bin"), std::string(100, 'x'));
    expect_bad_input(open("short.bin"), {"short.bin", "too small", "100 bytes"});

    // Header says 1000 tokens (2024 bytes) but 238 tokens follow: 1500 bytes.
    write_raw(d.file("trunc.bin"), kShardMagic, 1, 1000, std::vector<uint16_t>(238, 1));
    expect_bad_input(open("trunc.bin"), {"trunc.bin", "truncated: header says 1000 tokens (3024 bytes) but the file has 1500 bytes"});

    write_raw(d.file("trail.bin"), kShardMagic, 1, 10, std::vector<uint16_t>(10, 1), 3);
    expect_bad_input(open("trail.bin"), {"trail.bin", "trailing bytes", "1047 bytes"});

    write_raw(d.file("magic.bin"), 12345, 1, 10, std::vector<uint16_t>(10, 1));
    expect_bad_input(open("magic.bin"), {"data.train: shard '", "magic.bin", "bad magic 12345 (expected 20240520"});

    write_raw(d.file("version.bin"), kShardMagic, 7, 10, std::vector<uint16_t>(10, 1));
    expect_bad_input(open("version.bin"), {"version.bin", "version 7"});

    write_raw(d.file("zero.bin"), kShardMagic, 1, 0, {});
    expect_bad_input(open("zero.bin"), {"zero.bin", "0 tokens"});

    std::vector<uint16_t> t(100, 5);
    t[17] = 50300;
    t[40] = 60000;
    write_raw(d.file("vocab.bin"), kShardMagic, 1, 100, t);
    expect_bad_input(open("vocab.bin"), {"vocab.bin", "token 50300 at index 17 is >= model.vocab_size 50257"});

    // Header-only reads check the same things except the token scan.
    expect_bad_input([&] { read_shard_header(d.file("magic.bin"), "data.val"); }, {"data.val", "magic.bin", "bad magic"});
    EXPECT_EQ(read_shard_header(d.file("vocab.bin"), "").count, 100u);
}

TEST(Shard, GlobSortedAndNoMatch) {
    TempDir d;
    for (const char* n : {"b_002.bin", "b_000.bin", "b_001.bin"}) write_shard(d.file(n), {1, 2, 3});
    auto files = glob_files(d.file("b_*.bin"), "data.train");
    ASSERT_EQ(files.size(), 3u);
    EXPECT_EQ(files[0], d.file("b_000.bin"));
    EXPECT_EQ(files[2], d.file("b_002.bin"));
    expect_bad_input([&] { glob_files(d.file("nope_*.bin"), "data.train"); }, {"data.train", "nope_*.bin", "no file matches"});
    expect_bad_input([&] { glob_files("", "data.val"); }, {"data.val", "empty"});
    Config c = shard_config(d.file("none_*.bin"));
    expect_bad_input([&] { make_data_source(c, Split::train, 2, 4); }, {"data.train", "none_*.bin"});
}

TEST(ShardSource, BadShardNamedOnOpen) {
    TempDir d;
    write_shard(d.file("s_000.bin"), ramp(1000, 0));
    write_raw(d.file("s_001.bin"), 999, 1, 10, std::vector<uint16_t>(10, 1));
    Config c = shard_config(d.file("s_*.bin"));
    expect_bad_input([&] { make_data_source(c, Split::train, 2, 4); }, {"data.train", "s_001.bin", "bad magic 999"});
}

TEST(ShardSource, ShardSmallerThanOneBatch) {
    TempDir d;
    write_shard(d.file("s_000.bin"), ramp(1000, 0));
    write_shard(d.file("s_001.bin"), ramp(64, 0));  // B*T*world+1 = 4*16*1+1 = 65
    Config c = shard_config(d.file("s_*.bin"));
    expect_bad_input([&] { make_data_source(c, Split::train, 4, 16); }, {"data.train", "s_001.bin", "64 tokens", "65"});
    // A world of 2 needs 2*B*T+1 tokens from each shard.
    std::filesystem::remove(d.file("s_001.bin"));
    expect_bad_input([&] { make_data_source(c, Split::train, 4, 125, 0, 2); }, {"s_000.bin", "1001"});
}

TEST(ShardSource, DeterministicShiftedBatches) {
    TempDir d;
    auto toks = ramp(1000, 11);
    write_shard(d.file("s_000.bin"), toks);
    Config c = shard_config(d.file("s_*.bin"));
    const int B = 3, T = 8;
    auto a = make_data_source(c, Split::train, B, T);
    auto b = make_data_source(c, Split::train, B, T);
    EXPECT_NE(a->describe().find("shards: 1 file, 1,000 tokens (data.train='"), std::string::npos) << a->describe();
    EXPECT_FALSE(a->loss_floor().has_value());
    for (int n = 0; n < 5; n++) {
        Batch x = next(*a, B, T), y = next(*b, B, T);
        EXPECT_EQ(x, y);
        for (int i = 0; i < B * T; i++) {
            EXPECT_EQ(x.in[size_t(i)], toks[size_t(n * B * T + i)]);
            EXPECT_EQ(x.tg[size_t(i)], toks[size_t(n * B * T + i + 1)]);
        }
    }
    EXPECT_EQ(a->position().offset, uint64_t(5 * B * T));
    a->reset();
    EXPECT_EQ(a->position().offset, 0u);
    Batch first = next(*a, B, T);
    EXPECT_EQ(first.in[0], toks[0]);
}

TEST(ShardSource, WrapsToNextShardAndEpoch) {
    TempDir d;
    const int B = 2, T = 5;  // 10 tokens a batch
    auto s0 = ramp(25, 0), s1 = ramp(31, 1000);  // shard 0 supplies 2 batches, shard 1 three
    write_shard(d.file("w_000.bin"), s0);
    write_shard(d.file("w_001.bin"), s1);
    Config c = shard_config(d.file("w_*.bin"));
    auto src = make_data_source(c, Split::train, B, T);
    EXPECT_NE(src->describe().find("2 files, 56 tokens"), std::string::npos) << src->describe();
    const std::vector<std::pair<const std::vector<int32_t>*, int>> expect = {
        {&s0, 0}, {&s0, 10}, {&s1, 0}, {&s1, 10}, {&s1, 20}, {&s0, 0}, {&s0, 10}, {&s1, 0}};
    for (size_t n = 0; n < expect.size(); n++) {
        Batch b = next(*src, B, T);
        const auto& tok = *expect[n].first;
        for (int i = 0; i < B * T; i++) {
            ASSERT_EQ(b.in[size_t(i)], tok[size_t(expect[n].second + i)]) << "batch " << n;
            ASSERT_EQ(b.tg[size_t(i)], tok[size_t(expect[n].second + i + 1)]) << "batch " << n;
        }
        StreamPosition p = src->position();
        EXPECT_EQ(p.shard, expect[n].first == &s0 ? 0u : 1u);
        EXPECT_EQ(p.epoch, n >= 5 ? 1u : 0u);
    }
}

TEST(ShardSource, ResumeMatchesUninterrupted) {
    TempDir d;
    write_shard(d.file("r_000.bin"), ramp(301, 0));
    write_shard(d.file("r_001.bin"), ramp(177, 500));
    write_shard(d.file("r_002.bin"), ramp(250, 900));
    Config c = shard_config(d.file("r_*.bin"));
    const int B = 4, T = 7;
    auto a = make_data_source(c, Split::train, B, T);
    for (int n = 0; n < 9; n++) next(*a, B, T);
    StreamPosition p = a->position();
    auto b = make_data_source(c, Split::train, B, T);
    b->set_position(p);
    for (int n = 0; n < 40; n++) ASSERT_EQ(next(*a, B, T), next(*b, B, T)) << n;
    EXPECT_GE(a->position().epoch, 1u);
    StreamPosition bad{7, 0, 0};
    expect_bad_input([&] { b->set_position(bad); }, {"data.train", "shard 7"});
}

TEST(ShardSource, RanksSplitTheWorldStream) {
    TempDir d;
    const int B = 2, T = 6;
    write_shard(d.file("k_000.bin"), ramp(8 * B * T + 1, 0));
    write_shard(d.file("k_001.bin"), ramp(4 * B * T + 1, 300));
    Config c = shard_config(d.file("k_*.bin"));
    auto one = make_data_source(c, Split::train, B, T, 0, 1);
    auto r0 = make_data_source(c, Split::train, B, T, 0, 2);
    auto r1 = make_data_source(c, Split::train, B, T, 1, 2);
    // Two full epochs: world 1 batch 2n+r is rank r's batch n.
    for (int n = 0; n < 12; n++) {
        Batch a = next(*r0, B, T), b = next(*r1, B, T);
        EXPECT_NE(a, b);
        ASSERT_EQ(next(*one, B, T), a) << n;
        ASSERT_EQ(next(*one, B, T), b) << n;
    }
    // The epoch counter goes up when the next batch wraps, not after the last one.
    EXPECT_EQ(r0->position().epoch, 1u);
    next(*r0, B, T);
    EXPECT_EQ(r0->position().epoch, 2u);
    EXPECT_EQ(r0->position().offset, uint64_t(2 * B * T));
}

TEST(SyntheticSource, DescribeFloorAndDeterminism) {
    Config c = synthetic_config(2, 64, 2.0, 1234);
    const int B = 3, T = 64;
    auto a = make_data_source(c, Split::train, B, T);
    auto b = make_data_source(c, Split::train, B, T);
    auto v = make_data_source(c, Split::val, B, T);
    ASSERT_TRUE(a->loss_floor().has_value());
    EXPECT_NE(a->describe().find("synthetic Markov chain: order 2, vocab 64, sharpness 2.0, entropy rate "),
              std::string::npos) << a->describe();
    EXPECT_NE(a->describe().find("floor at T=64: "), std::string::npos);
    for (int n = 0; n < 4; n++) {
        Batch x = next(*a, B, T), y = next(*b, B, T), z = next(*v, B, T);
        EXPECT_EQ(x, y);
        EXPECT_NE(x, z);  // val is a different row stream
        for (int r = 0; r < B; r++)
            for (int t = 0; t + 1 < T; t++) EXPECT_EQ(x.tg[size_t(r * T + t)], x.in[size_t(r * T + t + 1)]);
        for (int32_t tok : x.in) ASSERT_TRUE(tok >= 0 && tok < 64);
    }
    EXPECT_EQ(a->position().offset, 4u);
}

TEST(SyntheticSource, ResumeAndRanks) {
    Config c = synthetic_config(3, 8, 1.5, 7);
    const int B = 2, T = 16;
    auto a = make_data_source(c, Split::train, B, T);
    for (int n = 0; n < 5; n++) next(*a, B, T);
    auto b = make_data_source(c, Split::train, B, T);
    b->set_position(a->position());
    for (int n = 0; n < 10; n++) ASSERT_EQ(next(*a, B, T), next(*b, B, T));

    auto one = make_data_source(c, Split::val, B, T, 0, 1);
    auto r0 = make_data_source(c, Split::val, B, T, 0, 2);
    auto r1 = make_data_source(c, Split::val, B, T, 1, 2);
    for (int n = 0; n < 6; n++) {
        Batch x = next(*r0, B, T), y = next(*r1, B, T);
        ASSERT_EQ(next(*one, B, T), x);
        ASSERT_EQ(next(*one, B, T), y);
    }
}

TEST(Markov, StationaryDistribution) {
    MarkovChain m(SyntheticConfig{2, 12, 2.0, 99}, 50257);
    const auto& pi = m.stationary();
    ASSERT_EQ(pi.size(), 144u);
    double s = 0;
    for (double x : pi) s += x;
    EXPECT_NEAR(s, 1.0, 1e-12);
    // pi P = pi on contexts: (a, b) -> (b, y).
    std::vector<double> next(144, 0.0);
    for (uint64_t c = 0; c < 144; c++)
        for (int y = 0; y < 12; y++) next[(c % 12) * 12 + uint64_t(y)] += pi[c] * m.prob(c, y);
    for (size_t c = 0; c < 144; c++) EXPECT_NEAR(next[c], pi[c], 1e-12);
    for (uint64_t c = 0; c < 144; c++) {
        double r = 0;
        for (int y = 0; y < 12; y++) r += m.prob(c, y);
        EXPECT_NEAR(r, 1.0, 1e-12);
    }
}

TEST(Markov, EntropyRateMatchesOrder1ClosedForm) {
    const int V = 7;
    MarkovChain m(SyntheticConfig{1, V, 1.3, 5}, 50257);
    // pi solves pi (P - I) = 0 with sum(pi) = 1: Gaussian elimination on the
    // transposed system, the last equation replaced by the normalization.
    std::vector<std::vector<double>> A(V, std::vector<double>(V + 1, 0.0));
    for (int i = 0; i < V; i++)
        for (int j = 0; j < V; j++) A[size_t(i)][size_t(j)] = m.prob(uint64_t(j), i) - (i == j ? 1.0 : 0.0);
    for (int j = 0; j <= V; j++) A[V - 1][size_t(j)] = 1.0;
    for (int col = 0; col < V; col++) {
        int piv = col;
        for (int r = col + 1; r < V; r++)
            if (std::fabs(A[size_t(r)][size_t(col)]) > std::fabs(A[size_t(piv)][size_t(col)])) piv = r;
        std::swap(A[size_t(col)], A[size_t(piv)]);
        for (int r = 0; r < V; r++) {
            if (r == col) continue;
            double f = A[size_t(r)][size_t(col)] / A[size_t(col)][size_t(col)];
            for (int j = col; j <= V; j++) A[size_t(r)][size_t(j)] -= f * A[size_t(col)][size_t(j)];
        }
    }
    double H = 0, H1 = 0;
    for (int i = 0; i < V; i++) {
        double pi = A[size_t(i)][size_t(V)] / A[size_t(i)][size_t(i)];
        EXPECT_NEAR(m.stationary()[size_t(i)], pi, 1e-12);
        H1 -= pi * std::log(pi);
        for (int j = 0; j < V; j++) H -= pi * m.prob(uint64_t(i), j) * std::log(m.prob(uint64_t(i), j));
    }
    EXPECT_NEAR(m.entropy_rate(), H, 1e-12);
    EXPECT_NEAR(m.block_entropy(1), H1, 1e-12);
    // Order 1: every prediction already sees its whole context.
    EXPECT_NEAR(m.loss_floor(1), H, 1e-12);
    EXPECT_NEAR(m.loss_floor(50), H, 1e-12);
}

TEST(Markov, EntropyRateMatchesEmpiricalLoss) {
    MarkovChain m(SyntheticConfig{2, 16, 2.0, 3}, 50257);
    const int k = 2, V = 16, rows = 60000;
    // One transition per row: the rows are independent, so the standard error is exact.
    double sum = 0, sum2 = 0;
    std::vector<int32_t> r(k + 1);
    for (int i = 0; i < rows; i++) {
        m.sample_row(0, uint64_t(i), k + 1, r.data());
        double l = -std::log(m.prob(uint64_t(r[0]) * V + uint64_t(r[1]), r[2]));
        sum += l;
        sum2 += l * l;
    }
    double mean = sum / rows, var = sum2 / rows - mean * mean, se = std::sqrt(var / rows);
    EXPECT_NEAR(mean, m.entropy_rate(), 4 * se) << "se " << se;
    // floor(1) is the loss of predicting X_1 from X_0 alone, with
    // p(x1 | x0) = pi(x0, x1) / p(x0) from the stationary pair distribution.
    std::vector<double> uni(V, 0.0);
    for (uint64_t c = 0; c < 256; c++) uni[c / V] += m.stationary()[c];
    sum = sum2 = 0;
    for (int i = 0; i < rows; i++) {
        m.sample_row(1, uint64_t(i), 2, r.data());
        double l = -std::log(m.stationary()[size_t(r[0] * V + r[1])] / uni[size_t(r[0])]);
        sum += l;
        sum2 += l * l;
    }
    mean = sum / rows;
    se = std::sqrt((sum2 / rows - mean * mean) / rows);
    EXPECT_NEAR(mean, m.loss_floor(1), 4 * se);
}

TEST(Markov, FloorAboveEntropyRateAndDecreasing) {
    MarkovChain m(SyntheticConfig{3, 6, 2.5, 11}, 50257);
    const double H = m.entropy_rate();
    EXPECT_GT(H, 0.0);
    EXPECT_LT(H, std::log(6.0));
    double prev = INFINITY;
    for (int T : {1, 2, 3, 4, 8, 64, 1024, 65536}) {
        double f = m.loss_floor(T);
        EXPECT_GE(f, H - 1e-12) << T;
        EXPECT_LT(f, prev) << T;
        prev = f;
    }
    EXPECT_LT(m.loss_floor(65536) - H, 1e-3);
    // Beyond the order, floor(T) - H shrinks exactly like 1/T.
    EXPECT_NEAR((m.loss_floor(100) - H) * 100, (m.loss_floor(1000) - H) * 1000, 1e-9);
}

TEST(Markov, SeededAndRefusesBadSizes) {
    MarkovChain a(SyntheticConfig{2, 10, 2.0, 1}, 50257), b(SyntheticConfig{2, 10, 2.0, 1}, 50257),
        c(SyntheticConfig{2, 10, 2.0, 2}, 50257);
    int same = 0, diff = 0;
    for (uint64_t ctx = 0; ctx < 100; ctx++)
        for (int y = 0; y < 10; y++) {
            same += a.prob(ctx, y) == b.prob(ctx, y);
            diff += a.prob(ctx, y) != c.prob(ctx, y);
        }
    EXPECT_EQ(same, 1000);
    EXPECT_GT(diff, 990);
    EXPECT_EQ(a.entropy_rate(), b.entropy_rate());
    EXPECT_NE(a.entropy_rate(), c.entropy_rate());

    expect_bad_input([] { MarkovChain(SyntheticConfig{0, 10, 2.0, 1}, 50257); }, {"data.synthetic.order"});
    expect_bad_input([] { MarkovChain(SyntheticConfig{1, 1, 2.0, 1}, 50257); }, {"data.synthetic.vocab"});
    expect_bad_input([] { MarkovChain(SyntheticConfig{1, 10, -1.0, 1}, 50257); }, {"data.synthetic.sharpness"});
    expect_bad_input([] { MarkovChain(SyntheticConfig{3, 65, 2.0, 1}, 50257); }, {"data.synthetic.vocab", "2^24"});
    expect_bad_input([] { MarkovChain(SyntheticConfig{1, 100, 2.0, 1}, 64); }, {"data.synthetic.vocab", "model.vocab_size"});
    // Exactly 2^24 entries is allowed; sharpness 0 is the uniform chain.
    MarkovChain u(SyntheticConfig{1, 4096, 0.0, 1}, 50257);
    EXPECT_NEAR(u.entropy_rate(), std::log(4096.0), 1e-12);
    EXPECT_NEAR(u.loss_floor(10), std::log(4096.0), 1e-12);
}

TEST(DataCli, ExitCodes) {
    TempDir d;
    write_shard(d.file("good.bin"), ramp(500, 0, 50257));
    write_raw(d.file("bad.bin"), 1, 1, 10, std::vector<uint16_t>(10, 1));
    EXPECT_EQ(data_main({"info", d.file("good.bin")}), 0);
    EXPECT_EQ(data_main({"info", d.file("bad.bin")}), 2);
    EXPECT_EQ(data_main({"info", d.file("good.bin"), d.file("bad.bin")}), 2);
    EXPECT_EQ(data_main({"info", d.file("missing.bin")}), 2);
    EXPECT_EQ(data_main({"info"}), 2);
    EXPECT_EQ(data_main({"frobnicate"}), 2);
    EXPECT_EQ(data_main({}), 2);
    EXPECT_EQ(data_main({"info", "--bogus", d.file("good.bin")}), 2);
    EXPECT_EQ(data_main({"synthetic-info", "--nope", "1"}), 2);
    EXPECT_EQ(data_main({"--help"}), 0);
    EXPECT_EQ(data_main({"info", "--help"}), 0);
    EXPECT_EQ(data_main({"write-shard", "-h"}), 0);
    EXPECT_EQ(data_main({"synthetic-info", "--help"}), 0);
    EXPECT_EQ(data_main({"synthetic-info", "--order", "1", "--vocab", "8", "--seq-len", "16"}), 0);
    EXPECT_EQ(data_main({"synthetic-info", "--order", "0"}), 2);

    gpt::test::write_file(d.file("ids.txt"), "1 2 3\n  4\t5\n\n50256\n");
    EXPECT_EQ(data_main({"write-shard", d.file("out.bin"), "--input", d.file("ids.txt")}), 0);
    Shard s(d.file("out.bin"), 50257, "");
    ASSERT_EQ(s.size(), 6u);
    EXPECT_EQ(s.tokens()[5], 50256);
    gpt::test::write_file(d.file("bad.txt"), "1 2\n3 x4 5\n");
    EXPECT_EQ(data_main({"write-shard", d.file("bad2.bin"), "--input", d.file("bad.txt")}), 2);
    gpt::test::write_file(d.file("big.txt"), "1 2 300\n");
    EXPECT_EQ(data_main({"write-shard", d.file("bad3.bin"), "--input", d.file("big.txt"), "--vocab", "256"}), 2);
    EXPECT_EQ(data_main({"write-shard", d.file("bad4.bin"), "--input", d.file("missing.txt")}), 2);
    EXPECT_FALSE(std::filesystem::exists(d.file("bad2.bin")));
}
