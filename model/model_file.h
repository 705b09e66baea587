// Self-describing model files: the parameters as safetensors, with the model
// (shape and every architecture choice) and the effective config in the
// file's metadata, so a file says what it holds whatever the config at hand.
//
// Tensors: one per parameter tensor of the layout (model/layout.h), by its
// layout name (wte, wpe, ln1w, ..., lm_head), stacked tensors with their
// leading L dimension, F32, in layout order.
// Metadata (all strings, as the format wants):
//   format          "gpt-model"
//   format_version  "1"
//   model.<key>     every model.* key that shapes the network: n_layer,
//                   n_head, n_embd, seq_len, vocab_size, padded_vocab_size,
//                   pos_emb, rope_base, norm, norm_params, qk_norm,
//                   activation, bias, tied_head, logit_softcap (values as the
//                   config writes them)
//   config          the effective config (YAML) of the run that wrote the file
// Reading rebuilds the ModelShape from the model.* entries alone. A missing
// entry, a value this build does not know, or a model.* entry it does not
// know is BadInput naming the file and the key: the model is one this build
// cannot describe, and guessing would compute something else.
#pragma once

#include <string>
#include <vector>

#include "model/layout.h"
#include "model/safetensors.h"

namespace gpt {

inline constexpr const char* kModelFormat = "gpt-model";
inline constexpr int kModelFormatVersion = 1;

// The model.* metadata entries that describe a model (key -> value text).
std::vector<std::pair<std::string, std::string>> model_metadata(const ModelShape& s);

// The first model.* key whose value differs between two models, in the
// order of model_metadata, as "model.pos_emb is rope there, learned here"
// with the two sides named by `there` and `here`; "" when they are the same
// model. rope_base counts only with rotary positions.
std::string first_model_difference(const ModelShape& there, const ModelShape& here, const std::string& there_name = "there",
                                   const std::string& here_name = "here");

// Writes params (layout order, no alignment gaps, as GPT2::params_llmc gives
// them) to path atomically. config_yaml may be empty.
void write_model_safetensors(const std::string& path, const ModelShape& s, const std::vector<float>& params,
                             const std::string& config_yaml);
// The writer write_model_safetensors uses, for a caller that writes the bytes
// itself (SafetensorsWriter::write_fd: a checkpoint's directory is its atomic
// unit). params must outlive it.
SafetensorsWriter model_safetensors_writer(const ModelShape& s, const std::vector<float>& params, const std::string& config_yaml);

// Reads a file written by write_model_safetensors: the parameters in layout
// order, the shape in shape_out, the config (may be empty) in config_yaml.
// A non-finite parameter is BadInput naming the tensor and the index.
std::vector<float> read_model_safetensors(const std::string& path, ModelShape& shape_out, std::string* config_yaml = nullptr);

// True when the file starts like a safetensors file (a plausible u64 header
// length followed by '{'), false for anything else (an llm.c model file).
bool looks_like_safetensors(const std::string& path);

}  // namespace gpt
