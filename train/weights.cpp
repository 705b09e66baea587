#include "train/weights.h"

#include <filesystem>

#include "kernels/error.h"
#include "model/hf.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

// "hf:DIR" -> DIR; a folder that looks like an HF model -> itself; else "".
std::string hf_dir_of(const std::string& spec) {
    if (spec.rfind("hf:", 0) == 0) return spec.substr(3);
    return is_hf_dir(spec) ? spec : std::string();
}

}  // namespace

std::string weights_checkpoint_dir(const std::string& spec) {
    if (spec.rfind("hf:", 0) == 0 || is_hf_dir(spec)) return "";
    std::error_code ec;
    if (fs::is_regular_file(spec, ec)) return "";
    return resolve_checkpoint(spec);
}

Weights load_weights(const std::string& spec) {
    Weights w;
    if (spec.empty()) bad_input("no weights given (a model file, a checkpoint or run directory, or hf:DIR)");
    if (const std::string hf = hf_dir_of(spec); !hf.empty()) {
        w.params = import_hf(hf, w.shape);
        w.origin = hf;
        return w;
    }
    std::error_code ec;
    if (fs::is_regular_file(spec, ec)) {
        w.params = read_any_model_file(spec, w.shape);
        w.origin = spec;
        return w;
    }
    if (fs::is_directory(spec, ec) && fs::exists(fs::path(spec) / "config.json") && !fs::exists(fs::path(spec) / "checkpoints") &&
        !fs::exists(fs::path(spec) / "model.bin") &&
        !fs::exists(fs::path(spec) / "state.bin"))
        bad_input("'" + spec + "' has a config.json but no model.safetensors (or model.safetensors.index.json): not a Hugging Face model folder");
    w.checkpoint_dir = resolve_checkpoint(spec);
    w.origin = checkpoint_model_file(w.checkpoint_dir);
    w.params = read_any_model_file(w.origin, w.shape);
    return w;
}

}  // namespace gpt
