// Hugging Face GPT-2 folders: what transformers' GPT2LMHeadModel saves and loads.
//
//   DIR/model.safetensors   the weights by HF name (or model.safetensors.index.json + shards)
//   DIR/config.json         GPT2Config: n_layer, n_head, n_embd, n_positions, vocab_size, ...
//   DIR/vocab.json, merges.txt, tokenizer_config.json   GPT-2's tokenizer (export only)
//
// Names and layouts, ours (llm.c's) on the left:
//   wte (Vp,C)            transformer.wte.weight (V,C)       the V real rows; padding rows are not exported
//   wpe (maxT,C)          transformer.wpe.weight (maxT,C)
//   ln1w/ln1b [l] (C)     transformer.h.l.ln_1.weight / .bias
//   qkvw [l] (3C,C)       transformer.h.l.attn.c_attn.weight (C,3C)   transposed: HF's Conv1D stores (in, out)
//   qkvb [l] (3C)         transformer.h.l.attn.c_attn.bias
//   attprojw [l] (C,C)    transformer.h.l.attn.c_proj.weight (C,C)    transposed
//   attprojb [l] (C)      transformer.h.l.attn.c_proj.bias
//   ln2w/ln2b [l] (C)     transformer.h.l.ln_2.weight / .bias
//   fcw [l] (4C,C)        transformer.h.l.mlp.c_fc.weight (C,4C)      transposed
//   fcb [l] (4C)          transformer.h.l.mlp.c_fc.bias
//   fcprojw [l] (C,4C)    transformer.h.l.mlp.c_proj.weight (4C,C)    transposed
//   fcprojb [l] (C)       transformer.h.l.mlp.c_proj.bias
//   lnfw/lnfb (C)         transformer.ln_f.weight / .bias
// The head is tied to wte, so lm_head.weight is not written (as save_pretrained
// does); on import it may be present and must equal wte. Importing accepts names
// with or without the "transformer." prefix (OpenAI's released checkpoint has
// none) and ignores the attention-mask buffers (h.l.attn.bias, attn.masked_bias)
// that older checkpoints carry.
#pragma once

#include <string>
#include <vector>

#include "model/layout.h"
#include "model/safetensors.h"

namespace gpt {

struct HfExportOptions {
    StDType dtype = StDType::F32;  // F32, BF16 or F16
    // GPT-2's tokenizer files, written as vocab.json (OpenAI's encoder.json) and
    // merges.txt (OpenAI's vocab.bpe) with a tokenizer_config.json; empty = none.
    std::string encoder_json, vocab_bpe;
    std::string source;            // recorded in the safetensors metadata (where the weights came from)
};

// Writes DIR (created if needed) from parameters in llm.c order (param_layout, no gaps).
// A model that is not plain GPT-2 (shape.arch) is BadInput naming its first non-GPT-2 key.
void export_hf(const std::string& dir, const ModelShape& shape, const std::vector<float>& params, const HfExportOptions& opt);

// True when `path` looks like a Hugging Face model folder (config.json and model.safetensors[.index.json]).
bool is_hf_dir(const std::string& path);

// Reads a Hugging Face GPT-2 folder into parameters in llm.c order; the shape
// comes from config.json and is checked against every tensor. Padding rows of
// wte (V..Vp) are zero. Throws BadInput naming the file and the tensor or key.
std::vector<float> import_hf(const std::string& dir, ModelShape& shape_out);

// The HF tensor names of a shape, in export order.
std::vector<std::string> hf_tensor_names(const ModelShape& shape);

}  // namespace gpt
