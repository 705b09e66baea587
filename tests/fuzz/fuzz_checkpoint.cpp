// Checkpoint files (train/checkpoint.cpp): model.bin, state.bin and the
// `latest` pointer. The first byte picks which one the rest of the input is.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "tests/fuzz/fuzz_util.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const int which = data[0] % 3;
    data++;
    size--;
    if (which == 0) {
        const std::string path = gpt::fuzz::as_file(data, size);
        gpt::fuzz::expect_only_gpt_errors([&] {
            gpt::ModelShape s;
            const auto params = gpt::read_model_file(path, s);
            if (params.size() != gpt::param_count(s)) std::abort();
            for (float x : params)
                if (!std::isfinite(x)) std::abort();  // non-finite weights are refused
        });
    } else if (which == 1) {
        const std::string path = gpt::fuzz::as_file(data, size);
        gpt::fuzz::expect_only_gpt_errors([&] {
            gpt::TrainState st;
            gpt::read_state_file(path, st);
            if (st.step < 0 || st.world < 1 || st.rank < 0 || st.rank >= st.world || st.m.size() != st.v.size()) std::abort();
        });
    } else {
        // A run directory whose checkpoints/latest holds the input.
        static const std::string dir = [] {
            char tmpl[] = "/tmp/gpt-fuzz-ckpt.XXXXXX";
            const char* d = ::mkdtemp(tmpl);
            if (!d) std::abort();
            std::filesystem::create_directories(std::string(d) + "/checkpoints/step_000001");
            std::ofstream(std::string(d) + "/checkpoints/step_000001/model.bin") << "x";
            std::ofstream(std::string(d) + "/checkpoints/step_000001/state.bin") << "x";
            return std::string(d);
        }();
        {
            std::ofstream f(dir + "/checkpoints/latest", std::ios::binary | std::ios::trunc);
            f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
        }
        gpt::fuzz::expect_only_gpt_errors([&] {
            const std::string ck = gpt::resolve_checkpoint(dir);
            if (ck.rfind(dir + "/checkpoints/step_", 0) != 0) std::abort();  // never outside the run
        });
    }
    return 0;
}
