// tools/reference/torch_gpt2.py, the PyTorch reference tools/gpu-check.sh
// measures beside `gpt` on the GPU host, checked here on the CPU where a
// python3 with torch exists (Debian's python3-torch; skipped otherwise):
//   - its batches are gpt's batches (data/source.cpp) on the same shard;
//   - its model has gpt's parameter count for the same shape (MFU uses it);
//   - its learning rate is gpt's schedule, step by step;
//   - --dry-run runs both phases (tiny model, CPU, no compile) and reports
//     them, with the time to target interpolated from its own evaluations
//     the way gpt's trainer does it;
//   - the --sync-dir handshake measures only after go.<phase> appears.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/json.h"
#include "data/source.h"
#include "model/layout.h"
#include "tests/test_util.h"
#include "train/config.h"
#include "train/schedule.h"

namespace gpt {
namespace {

using test::run_shell;
using test::TempDir;

// The first python3 that imports torch: the one on PATH, else Debian's.
std::string python_with_torch() {
    for (const char* py : {"python3", "/usr/bin/python3"})
        if (run_shell(std::string(py) + " -c 'import torch, numpy'").code == 0) return py;
    return "";
}

#define SKIP_WITHOUT_TORCH(py)                                                                     \
    const std::string py = python_with_torch();                                                    \
    if (py.empty()) GTEST_SKIP() << "no python3 with torch and numpy (Debian: python3-torch)"

std::string script() { return test::source_path("tools/reference/torch_gpt2.py"); }

void write_shard(const std::string& path, const std::vector<uint16_t>& toks) {
    int32_t h[256] = {};
    h[0] = 20240520;
    h[1] = 1;
    h[2] = int32_t(toks.size());
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(h), sizeof h);
    f.write(reinterpret_cast<const char*>(toks.data()), std::streamsize(toks.size() * 2));
}

// A cycle of 37 tokens: learnable in a few steps, so a target is crossed.
std::vector<uint16_t> cyclic_tokens(size_t n) {
    std::vector<uint16_t> t(n);
    for (size_t i = 0; i < n; i++) t[i] = uint16_t((i % 37) * 1361 % 50257);
    return t;
}

std::vector<uint16_t> some_tokens(size_t n, uint32_t seed) {
    std::vector<uint16_t> t(n);
    uint32_t x = seed;
    for (auto& v : t) {
        x = x * 1664525u + 1013904223u;
        v = uint16_t((x >> 8) % 50257);
    }
    return t;
}

// The REFERENCE_RESULT lines of an output, parsed.
std::vector<Json> results(const std::string& out) {
    std::vector<Json> r;
    std::istringstream in(out);
    std::string line;
    const std::string tag = "REFERENCE_RESULT ";
    while (std::getline(in, line))
        if (line.rfind(tag, 0) == 0) r.push_back(parse_json(line.substr(tag.size())));
    return r;
}

TEST(Reference, BatchesAndScheduleAreGpts) {
    SKIP_WITHOUT_TORCH(py);
    TempDir d;
    write_shard(d.file("train.bin"), some_tokens(1000, 1));
    const int B = 3, T = 7;
    Config cfg = parse_config_text("{}", "test", {"data.source=shards", "data.train=" + d.file("train.bin"), "data.val=" + d.file("train.bin"), "model.vocab_size=50257",
                                                  "optim.lr=0.001", "schedule.warmup_steps=5", "schedule.steps=40",
                                                  "schedule.final_lr_frac=0.1", "run.max_steps=40"});
    auto src = make_data_source(cfg, Split::train, B, T);
    // 50 batches wrap the 1000-token shard several times.
    std::string want;
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    for (int k = 0; k < 50; k++) {
        src->next_batch(x.data(), y.data());
        want += std::to_string(x[0]) + "," + std::to_string(x.back()) + "," + std::to_string(y[0]) + "," + std::to_string(y.back()) + ";";
    }
    std::string lrs;
    for (int s = 0; s < 45; s++) lrs += std::to_string(learning_rate(cfg, s)) + ";";
    const std::string prog =
        "import sys; sys.path.insert(0, '" + test::source_path("tools/reference") +
        "'); import torch_gpt2 as m, types\n"
        "s = m.Stream(m.read_shard('" + d.file("train.bin") + "'), 3, 7)\n"
        "out = ''\n"
        "for k in range(50):\n"
        "    x, y = s.next_batch()\n"
        "    out += '%d,%d,%d,%d;' % (x.flatten()[0], x.flatten()[-1], y.flatten()[0], y.flatten()[-1])\n"
        "print('BATCHES', out)\n"
        "a = types.SimpleNamespace(lr=0.001, warmup=5, schedule_steps=40, final_lr_frac=0.1)\n"
        "print('LRS', ''.join('%f;' % m.learning_rate(i, a) for i in range(45)))\n";
    test::write_file(d.file("check.py"), prog);
    auto r = run_shell(py + " " + d.file("check.py"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("BATCHES " + want), std::string::npos) << "gpt: " << want << "\n" << r.output;
    EXPECT_NE(r.output.find("LRS " + lrs), std::string::npos) << "gpt: " << lrs << "\n" << r.output;
}

TEST(Reference, DryRunReportsBothPhases) {
    SKIP_WITHOUT_TORCH(py);
    TempDir d;
    write_shard(d.file("train.bin"), cyclic_tokens(4000));
    write_shard(d.file("val.bin"), cyclic_tokens(1000));
    // The first evaluation is about ln 50257 = 10.8; the cycle is learnt below 10.5 within a few steps at this lr.
    auto r = run_shell(py + " " + script() + " --dry-run -B 2 -T 16 --warmup-steps 1 --repeats 3 --train " + d.file("train.bin") +
                         " --val " + d.file("val.bin") + " --max-steps 8 --val-every 2 --val-batches 2 --lr 0.01 --warmup 1 "
                         "--schedule-steps 8 --target 10.5");
    ASSERT_EQ(r.code, 0) << r.output;
    const auto res = results(r.output);
    ASSERT_EQ(res.size(), 2u) << r.output;
    const Json& bench = res[0];
    const Json& ttt = res[1];
    EXPECT_EQ(bench.find("phase")->str, "bench");
    EXPECT_GT(bench.number("median_ms"), 0.0);
    EXPECT_EQ(bench.number("repeats"), 3.0);
    ModelShape s;
    s.L = 2, s.NH = 2, s.C = 32, s.maxT = 64, s.V = 50257, s.Vp = 50304;
    EXPECT_EQ(bench.number("params"), double(param_count(s))) << "the reference's model is not gpt's shape";
    EXPECT_NEAR(bench.number("tflops") * 1e12, bench.number("tokens_per_s") * flops_per_token(s, 16),
                1e-9 * bench.number("tflops") * 1e12);

    EXPECT_EQ(ttt.find("phase")->str, "ttt");
    const Json* evals = ttt.find("evals");
    ASSERT_TRUE(evals && evals->arr.size() >= 2) << r.output;
    for (size_t i = 0; i < evals->arr.size(); i++) EXPECT_EQ(evals->arr[i].arr[0].num, double(2 * i)) << "evaluation every 2 steps from step 0";
    // The crossing, interpolated between the two evaluations around it (as gpt's trainer does).
    const Json* ttt_s = ttt.find("time_to_target_s");
    ASSERT_TRUE(ttt_s && ttt_s->is_number()) << "target 10.5 not reached in 8 steps:\n" << r.output;
    const auto& e = evals->arr;
    size_t k = 0;
    while (k < e.size() && e[k].arr[2].num > 10.5) k++;
    ASSERT_LT(k, e.size());
    const double want = k == 0 ? e[0].arr[1].num
                               : e[k - 1].arr[1].num + (e[k - 1].arr[2].num - 10.5) / (e[k - 1].arr[2].num - e[k].arr[2].num) *
                                                           (e[k].arr[1].num - e[k - 1].arr[1].num);
    EXPECT_NEAR(ttt_s->num, want, 1e-3 + 1e-3 * want);
    EXPECT_EQ(ttt.number("steps"), e.back().arr[0].num) << "the run stops at the evaluation that crosses the target";

    // Bad input: the ttt phase without shards.
    auto bad = run_shell(py + " " + script() + " --dry-run --phases ttt");
    EXPECT_NE(bad.code, 0);
    EXPECT_NE(bad.output.find("--train"), std::string::npos) << bad.output;
}

TEST(Reference, WaitsForTheGoFile) {
    SKIP_WITHOUT_TORCH(py);
    TempDir d;
    const std::string sync = d.file("sync");
    ASSERT_EQ(run_shell("mkdir -p " + sync).code, 0);
    // Started in the background: it prepares, says ready, and waits.
    ASSERT_EQ(run_shell(py + " " + script() + " --dry-run --phases bench -B 1 -T 8 --warmup-steps 1 --repeats 1 --sync-dir " + sync +
                          " > " + d.file("out.txt") + " 2>&1 &")
                  .code,
              0);
    auto exists = [&](const std::string& f) { return run_shell("test -e " + sync + "/" + f).code == 0; };
    for (int i = 0; i < 600 && !exists("ready.bench"); i++) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(exists("ready.bench")) << test::read_file(d.file("out.txt"));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_FALSE(exists("done.bench")) << "measured before go.bench";
    test::write_file(sync + "/go.bench", "");
    for (int i = 0; i < 600 && !exists("done.bench"); i++) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(exists("done.bench")) << test::read_file(d.file("out.txt"));
    const Json done = parse_json(test::read_file(sync + "/done.bench"));
    EXPECT_EQ(done.find("phase")->str, "bench");
}

}  // namespace
}  // namespace gpt
