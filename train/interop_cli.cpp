#include "train/interop_cli.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/tokenizer.h"
#include "kernels/error.h"
#include "model/hf.h"
#include "train/checkpoint.h"
#include "train/cli_args.h"
#include "train/config.h"
#include "train/weights.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

const char* kExportHelp = R"(usage: gpt export hf --checkpoint PATH --out DIR [--dtype f32|bf16|f16] [--tokenizer DIR]
       gpt export llmc --checkpoint PATH --out FILE [--dtype f32|bf16]

hf: writes a Hugging Face folder that transformers' GPT2LMHeadModel.from_pretrained(DIR)
loads: model.safetensors (HF names, Conv1D weights transposed to (in, out), the head
tied to wte), config.json, and for a GPT-2-vocabulary model the tokenizer (vocab.json,
merges.txt, tokenizer_config.json; from --tokenizer DIR, else the checkpoint's
data.tokenizer, else $GPT_TOKENIZER_DIR, else the built-in GPT-2 files). The padding
rows of our embedding (vocab padded to a multiple of 128) are not exported.

llmc: writes an llm.c model file (the 256-int header and the parameters in llm.c's
order): --dtype f32 is version 3, bf16 is version 5 (what llm.c's trainer writes).

PATH is a checkpoint directory, a run directory (its latest checkpoint), a model file
(a checkpoint's model.safetensors or an llm.c file) or an HF folder (hf:DIR). Default
--dtype f32 (the float32 master weights). Both formats describe GPT-2 only: a model
with another architecture (model.pos_emb=rope, ...) is refused naming the key.
)";

const char* kImportHelp = R"(usage: gpt import hf DIR --out FILE [--dtype f32|bf16]

Reads a Hugging Face GPT-2 folder (config.json + model.safetensors, e.g. OpenAI's
released gpt2 weights) and writes it as an llm.c model file, which gpt train --init,
gpt eval --checkpoint and gpt sample --checkpoint take (they also take hf:DIR
directly). Checked on the way in: model_type gpt2, tanh GELU, LayerNorm eps 1e-5, a
tied head, and every tensor's name and shape; anything else is refused by name.
)";

// Writes an llm.c model file atomically: a temp file beside it, then a rename.
void write_model_file_atomic(const std::string& path, const ModelShape& shape, const std::vector<float>& params, bool bf16) {
    if (bf16) bad_input("--dtype bf16 for llm.c model files (version 5) is not written yet by this build");
    check_llmc_describable(shape, path);
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    write_model_file(tmp, shape, params);
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) {
        fs::remove(tmp);
        run_failed("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
    }
}

std::string shape_text(const ModelShape& s) {
    return "L=" + std::to_string(s.L) + " NH=" + std::to_string(s.NH) + " C=" + std::to_string(s.C) + " maxT=" + std::to_string(s.maxT) +
           " V=" + std::to_string(s.V);
}

std::string read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) bad_input("tokenizer file '" + path + "': cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

}  // namespace

int export_main(const std::vector<std::string>& args) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::printf("%s", kExportHelp);
        return args.empty() ? 2 : 0;
    }
    const std::string format = args[0];
    if (format != "hf" && format != "llmc") bad_input("unknown export format '" + format + "' (valid: hf, llmc)");
    const CliOptions o = parse_cli_options("export " + format, {args.begin() + 1, args.end()}, {"--checkpoint", "--out", "--dtype", "--tokenizer"}, {});
    if (o.has("--help")) {
        std::printf("%s", kExportHelp);
        return 0;
    }
    if (!o.has("--checkpoint")) bad_input("gpt export " + format + " needs --checkpoint PATH (a checkpoint or run directory, a model file, hf:DIR)");
    if (!o.has("--out")) bad_input("gpt export " + format + " needs --out " + (format == "hf" ? "DIR" : "FILE"));
    const std::string dtype = o.get("--dtype", "f32");
    const Weights w = load_weights(o.get("--checkpoint"));
    const std::string out = o.get("--out");

    if (format == "llmc") {
        if (dtype != "f32" && dtype != "bf16") bad_input("--dtype '" + dtype + "': llm.c model files are f32 (version 3) or bf16 (version 5)");
        write_model_file_atomic(out, w.shape, w.params, dtype == "bf16");
        std::printf("gpt export: wrote %s (llm.c model file, version %d, %s, %zu parameters) from %s\n", out.c_str(), dtype == "bf16" ? 5 : 3,
                    shape_text(w.shape).c_str(), w.params.size(), w.origin.c_str());
        return 0;
    }
    HfExportOptions opt;
    if (dtype == "f32") opt.dtype = StDType::F32;
    else if (dtype == "bf16") opt.dtype = StDType::BF16;
    else if (dtype == "f16") opt.dtype = StDType::F16;
    else bad_input("--dtype '" + dtype + "': valid: f32, bf16, f16");
    opt.source = w.origin;
    std::string tok_note = "no tokenizer files (the vocabulary is not GPT-2's)";
    if (w.shape.V == 50257) {
        // The tokenizer the run used: --tokenizer, else its config's data.tokenizer, else the default.
        std::string dir = o.get("--tokenizer");
        if (dir.empty() && !w.checkpoint_dir.empty()) dir = parse_config_text(read_all(w.checkpoint_dir + "/config.yaml"), w.checkpoint_dir + "/config.yaml").data.tokenizer;
        const std::string from = Tokenizer::resolve_dir(dir);
        if (from.empty()) {
            opt.encoder_json = std::string(embedded::gpt2_encoder_json());
            opt.vocab_bpe = std::string(embedded::gpt2_vocab_bpe());
        } else {
            opt.encoder_json = read_all((fs::path(from) / "encoder.json").string());
            opt.vocab_bpe = read_all((fs::path(from) / "vocab.bpe").string());
        }
        const Tokenizer check = Tokenizer::load_default(dir);
        if (check.vocab_size() != w.shape.V)
            bad_input(Tokenizer::describe(dir) + " has " + std::to_string(check.vocab_size()) + " tokens, the model " + std::to_string(w.shape.V));
        tok_note = "vocab.json, merges.txt, tokenizer_config.json from " + Tokenizer::describe(dir);
    }
    export_hf(out, w.shape, w.params, opt);
    std::printf("gpt export: wrote %s: model.safetensors (%s, %s), config.json, %s\n"
                "  load it with transformers: GPT2LMHeadModel.from_pretrained(\"%s\")\n",
                out.c_str(), st_dtype_name(opt.dtype), shape_text(w.shape).c_str(), tok_note.c_str(), out.c_str());
    return 0;
}

int import_main(const std::vector<std::string>& args) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::printf("%s", kImportHelp);
        return args.empty() ? 2 : 0;
    }
    if (args[0] != "hf") bad_input("unknown import format '" + args[0] + "' (valid: hf)");
    const CliOptions o = parse_cli_options("import hf", {args.begin() + 1, args.end()}, {"--out", "--dtype"}, {}, 1);
    if (o.has("--help")) {
        std::printf("%s", kImportHelp);
        return 0;
    }
    if (o.positional.empty()) bad_input("gpt import hf needs the folder: gpt import hf DIR --out FILE");
    if (!o.has("--out")) bad_input("gpt import hf needs --out FILE (the llm.c model file to write)");
    const std::string dtype = o.get("--dtype", "f32");
    if (dtype != "f32" && dtype != "bf16") bad_input("--dtype '" + dtype + "': valid: f32 (version 3), bf16 (version 5)");
    ModelShape shape;
    const std::vector<float> params = import_hf(o.positional[0], shape);
    write_model_file_atomic(o.get("--out"), shape, params, dtype == "bf16");
    std::printf("gpt import: wrote %s (llm.c model file, %s, %zu parameters) from %s\n", o.get("--out").c_str(), shape_text(shape).c_str(),
                params.size(), o.positional[0].c_str());
    return 0;
}

}  // namespace gpt
