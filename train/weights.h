// Where a command's weights come from, whatever the user points at:
//
//   hf:DIR, or a folder with config.json + model.safetensors   a Hugging Face GPT-2 (model/hf.h)
//   a regular file                                              a gpt model file (model.safetensors, self-describing)
//                                                               or an llm.c model file (gpt2_124M.bin, version 3 or 5)
//   a checkpoint directory, or a run directory                  its (latest) checkpoint's model.safetensors
//                                                               (model.bin for a checkpoint without one)
//
// `gpt train --init`, `gpt eval`, `gpt sample` and `gpt export` all resolve
// their argument here, so each accepts every form.
#pragma once

#include <string>
#include <vector>

#include "model/layout.h"

namespace gpt {

struct Weights {
    ModelShape shape;
    std::vector<float> params;   // llm.c order, float32
    std::string origin;          // what was read: a file or folder path, for messages
    std::string checkpoint_dir;  // set when the weights came from a checkpoint (which has config.yaml)
};

// Throws BadInput naming the path and what it is not.
Weights load_weights(const std::string& spec);

// The checkpoint directory `spec` names ("" for a model file or an HF folder):
// commands use its config.yaml when no -c is given.
std::string weights_checkpoint_dir(const std::string& spec);

}  // namespace gpt
