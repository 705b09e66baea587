// `gpt export` and `gpt import`: models in and out of other tools' formats.
//
//   gpt export hf --checkpoint PATH --out DIR [--dtype f32|bf16|f16] [--tokenizer DIR]
//       a Hugging Face GPT2LMHeadModel folder (model/hf.h)
//   gpt export llmc --checkpoint PATH --out FILE [--dtype f32|bf16]
//       an llm.c model file (version 3 float32, or 5 bf16)
//   gpt import hf DIR --out FILE [--dtype f32|bf16]
//       an HF folder as an llm.c model file, which every command accepts
#pragma once

#include <string>
#include <vector>

namespace gpt {

int export_main(const std::vector<std::string>& args);
int import_main(const std::vector<std::string>& args);

}  // namespace gpt
