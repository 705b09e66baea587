#include "tests/test_util.h"

#include "kernels/cpu/omp_env.h"
#include "model/gpt2.h"
#include "train/config.h"
#include "train/dist.h"
#include "train/optimizer.h"
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

namespace gpt::test {

TempDir::TempDir() {
    std::random_device rd;
    auto base = std::filesystem::temp_directory_path();
    for (;;) {
        auto p = base / ("gpt-test-" + std::to_string(rd()));
        if (std::filesystem::create_directory(p)) { path = p.string(); break; }
    }
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
}

StepParts::StepParts(const Config& cfg) : backend(make_backend(cfg)) {
    model = std::make_unique<GPT2>(model_shape(cfg), *backend, cfg.run.batch_size, cfg.model.seq_len, 1);
    model->init_weights(uint64_t(cfg.run.seed), init_options(cfg));
    optim = std::make_unique<Optimizer>(*model, cfg.optim, 0, model->buffer_elements());
    comm = make_communicator(DistEnv{}, 60, backend.get());
}

StepParts::~StepParts() = default;

void randomize_params(GPT2& m, uint64_t seed, double scale) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<double> u(-scale, scale);
    for (const auto& t : m.param_layout().tensors) {
        const bool ln_weight = t.name == "ln1w" || t.name == "ln2w" || t.name == "lnfw";
        std::vector<double> v(t.numel);
        for (auto& x : v) x = (ln_weight ? 1.0 : 0.0) + u(g);
        m.write_param(t.name, v);
    }
}

// $GPT_BINARY and $GPT_SOURCE_DIR override the paths compiled in: a test
// binary built on one machine and run on another (tools/gpu-check.sh with
// prebuilt binaries) finds the checkout it runs in.
static std::string env_or(const char* name, const char* compiled) {
    const char* v = std::getenv(name);
    return v && *v ? v : compiled;
}

RunResult run_gpt(const std::string& args) { return run_shell(env_or("GPT_BINARY", GPT_BINARY) + " " + args); }

RunResult run_shell(const std::string& command) {
    const std::string cmd = "{ " + command + "\n} 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    RunResult r{-1, ""};
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    int st = pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
    return r;
}

std::string source_path(const std::string& rel) { return env_or("GPT_SOURCE_DIR", GPT_SOURCE_DIR) + "/" + rel; }

void write_file(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

template <class T>
static double rel_error(const T* a, const T* b, size_t n, double floor) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double x = a[i], y = b[i];
        if (std::isnan(x) || std::isnan(y)) return std::numeric_limits<double>::infinity();
        double e = std::fabs(x - y) / std::max(std::fabs(y), floor);
        worst = std::max(worst, e);
    }
    return worst;
}

double max_rel_error(const double* a, const double* b, size_t n, double floor) { return rel_error(a, b, n, floor); }
double max_rel_error(const float* a, const float* b, size_t n, double floor) { return rel_error(a, b, n, floor); }

std::vector<double> log_field(const std::string& log_path, const std::string& type, const std::string& field) {
    std::ifstream f(log_path);
    std::string line;
    std::vector<double> out;
    const std::string tag = "\"type\":\"" + type + "\"", key = "\"" + field + "\":";
    while (std::getline(f, line)) {
        if (line.find(tag) == std::string::npos) continue;
        const auto p = line.find(key);
        if (p != std::string::npos) out.push_back(std::stod(line.substr(p + key.size())));
    }
    return out;
}

}  // namespace gpt::test

// Every test executable starts like the gpt binary: OpenMP's threads wait
// passively unless the environment says otherwise (this may re-execute the
// test binary once, before GoogleTest starts).
int main(int argc, char** argv) {
    gpt::apply_omp_wait_default(argv);
    testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
