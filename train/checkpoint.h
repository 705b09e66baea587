// Checkpoints: a directory per saved step, written atomically.
//
//   <out_dir>/checkpoints/step_000100/model.bin    weights, llm.c model-file layout
//   <out_dir>/checkpoints/step_000100/state.bin    optimizer moments, step, data position, timers
//   <out_dir>/checkpoints/step_000100/config.yaml  the effective config
//   <out_dir>/checkpoints/latest                   name of the newest complete checkpoint
//
// Each checkpoint is written under a temporary name, flushed to disk and
// renamed; `latest` is replaced by rename after that. A kill at any moment
// leaves the previous checkpoint intact and `latest` pointing at a complete one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/source.h"
#include "model/layout.h"

namespace gpt {

// llm.c's model file: 256 int32 header then the parameters in llm.c order.
// header[0] = 20240326, [1] = version (3: float32, 5: bf16), [2] = maxT,
// [3] = V, [4] = L, [5] = NH, [6] = C, [7] = Vp.
constexpr int32_t kModelMagic = 20240326;
void write_model_file(const std::string& path, const ModelShape& s, const std::vector<float>& params);
// Reads a model file (float32 or bf16), checking magic, version and size. Throws BadInput naming the file.
std::vector<float> read_model_file(const std::string& path, ModelShape& shape_out);

// Training state beyond the weights.
struct TrainState {
    int64_t step = 0;              // optimizer steps completed
    int64_t tokens = 0;            // training tokens consumed
    double train_time_s = 0;       // training wall clock so far (no eval, no start-up)
    double eval_time_s = 0;        // evaluation wall clock so far
    StreamPosition data;           // where the train stream continues
    int32_t rank = 0, world = 1;   // data-parallel geometry the position belongs to
    // The last evaluation, for time-to-target interpolation across a resume.
    bool have_last_eval = false;
    double last_eval_time_s = 0, last_eval_loss = 0;
    double time_to_target_s = -1;  // < 0: not reached yet
    std::vector<float> m, v;       // AdamW moments, parameter layout order
};

// Saves a checkpoint of `step` under out_dir/checkpoints and updates `latest`.
// Keeps the newest `keep` checkpoints (0 = all). Returns the checkpoint's directory.
std::string save_checkpoint(const std::string& out_dir, const ModelShape& shape, const std::vector<float>& params,
                            const TrainState& state, const std::string& config_yaml, int keep = 2);

// Resolves a --resume/--checkpoint argument: a checkpoint directory, or a run
// directory whose checkpoints/latest names one. Throws BadInput when neither.
std::string resolve_checkpoint(const std::string& path);

void read_state_file(const std::string& path, TrainState& state);

// Writes bytes to path atomically: temp file in the same directory, fsync, rename.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace gpt
