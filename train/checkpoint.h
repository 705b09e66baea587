// Checkpoints: a directory per saved step, written so that a kill at any
// moment loses nothing that was saved before.
//
//   <out_dir>/checkpoints/step_000100/model.safetensors  weights, self-describing
//                                                  (model/model_file.h: shape, architecture, config)
//   <out_dir>/checkpoints/step_000100/model.bin    the same weights in llm.c's model-file layout,
//                                                  plain GPT-2 only (llm.c cannot describe the rest)
//   <out_dir>/checkpoints/step_000100/state.bin    optimizer moments, step, data position, timers
//   <out_dir>/checkpoints/step_000100/config.yaml  the effective config
//   <out_dir>/checkpoints/latest                   name of the newest complete checkpoint
//
// Writing (save_checkpoint), one path for every case:
//   1. leftovers of writers that died (names with a `.tmp.` `.new.` `.old.`
//      `.del.` part and the writer's PID, see below) are finished or removed;
//   2. the files go to step_N.tmp.<pid>, each fsync'ed, then the directory;
//   3. a new step is renamed into place; an existing step_N (a resumed or
//      finished run saving the same step again) is swapped with the new copy
//      in one renameat2(RENAME_EXCHANGE), so step_N is complete at every
//      instant. On a file system without exchange (NFS, some FUSE), the new
//      copy is first renamed to step_N.new.<pid> (complete), the old one to
//      step_N.old.<pid>, then the new one to step_N: a kill in between leaves
//      both copies, and readers and the next writer use them (step 1);
//   4. `latest` is replaced atomically (temp file, fsync, rename);
//   5. the newest `keep` checkpoints by step number stay; older ones are
//      renamed to step_M.del.<pid> and removed.
// A leftover is only touched when its PID is not a live process (or is this
// process), so a second reader or writer never races a live one. PIDs are
// compared on this machine: two machines writing one directory over NFS is
// not supported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/files.h"
#include "data/source.h"
#include "model/layout.h"
#include "train/outlier.h"

namespace gpt {

// llm.c's model file: 256 int32 header then the parameters in llm.c order.
// header[0] = 20240326, [1] = version (3: float32, 5: bf16), [2] = maxT,
// [3] = V, [4] = L, [5] = NH, [6] = C, [7] = Vp.
constexpr int32_t kModelMagic = 20240326;
// Refuses (BadInput naming path and the first non-GPT-2 model.* key) a model
// that is not plain GPT-2: llm.c's header has no field for any other choice.
void check_llmc_describable(const ModelShape& s, const std::string& path);
void write_model_file(const std::string& path, const ModelShape& s, const std::vector<float>& params);
// Reads a model file (float32 or bf16), checking magic, version, shape bounds,
// the exact size (before reading the parameters) and that every parameter is
// finite. Throws BadInput naming the file.
std::vector<float> read_model_file(const std::string& path, ModelShape& shape_out);

// The model file a checkpoint directory is read from: its model.safetensors,
// or model.bin when it has none (a checkpoint of an older build).
std::string checkpoint_model_file(const std::string& checkpoint_dir);

// Reads a model file of either kind, told apart by its first bytes: a
// self-describing safetensors (model/model_file.h) or an llm.c model file
// (plain GPT-2). The parameters in layout order, the shape and architecture
// in shape_out. Throws BadInput naming the file.
std::vector<float> read_any_model_file(const std::string& path, ModelShape& shape_out);

// BadInput (naming `what` and the file) unless the model a file holds is the
// one the config describes, naming the first model.* key that differs; an
// llm.c file read for a config that is not plain GPT-2 says that it cannot
// hold that model.
void check_model_matches(const ModelShape& file, const ModelShape& config, const std::string& file_path, const std::string& what);

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
    // Updates skipped (run.on_nonfinite: skip_step, the z-score skip) and the
    // z-score windows of the loss and the gradient norm (state.bin version 2).
    int64_t skipped_steps = 0;
    ZScoreWindow loss_window, norm_window;
    std::vector<float> m, v;       // AdamW moments, parameter layout order
};

// Bounds every field of a state read back is checked against.
constexpr int64_t kMaxStateStep = int64_t(1) << 48;
constexpr int32_t kMaxStateWorld = 1 << 20;

// Saves a checkpoint of `step` under out_dir/checkpoints and updates `latest`.
// Keeps the newest `keep` checkpoints by step number (0 = all). Returns the
// checkpoint's directory. Refuses (RunFailed) non-finite parameters or moments.
std::string save_checkpoint(const std::string& out_dir, const ModelShape& shape, const std::vector<float>& params,
                            const TrainState& state, const std::string& config_yaml, int keep = 2);

// Resolves a --resume/--checkpoint argument: a checkpoint directory, or a run
// directory whose checkpoints/latest names one. When `latest` names a step
// whose directory a killed writer left missing, its complete copy
// (step_N.new.<pid> or step_N.old.<pid>) is returned; without `latest` (a kill
// before the first one was written), the newest complete step. Throws BadInput
// when there is none, naming what there is.
std::string resolve_checkpoint(const std::string& path);

// The run directory a checkpoint directory belongs to (`R` for
// `R/checkpoints/step_N`, also for its .new/.old copies), "" when it is not
// inside one.
std::string run_dir_of_checkpoint(const std::string& checkpoint_dir);

// Reads state.bin: its size is checked against its count before anything is
// allocated, and every field against its bounds (BadInput naming the field).
void read_state_file(const std::string& path, TrainState& state);

// The step number of a checkpoint directory name `step_<digits>`, -1 otherwise.
int64_t checkpoint_step_of(const std::string& name);

}  // namespace gpt
