#include "model/hf.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "data/json.h"
#include "kernels/convert.h"
#include "kernels/error.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

// One of our tensors (or one layer's slice of a stacked one) and its HF twin.
struct HfTensor {
    std::string hf_name;
    size_t pos;                  // offset in the llm.c-order parameter vector
    std::vector<int64_t> shape;  // HF's shape
    bool transpose;              // ours is (out, in); HF's Conv1D is (in, out)
};

std::vector<HfTensor> hf_tensors(const ModelShape& s) {
    const Layout lay = param_layout(s);
    std::map<std::string, size_t> pos;  // start of each of our tensors in the gap-free vector
    size_t at = 0;
    for (const auto& t : lay.tensors) {
        pos[t.name] = at;
        at += t.numel;
    }
    const int64_t C = s.C;
    std::vector<HfTensor> out;
    out.push_back({"transformer.wte.weight", pos["wte"], {s.V, C}, false});  // the V real rows of (Vp, C)
    out.push_back({"transformer.wpe.weight", pos["wpe"], {s.maxT, C}, false});
    // Per layer, in the order HF lists a block's parameters.
    struct PerLayer {
        const char* ours;
        const char* hf;
        std::vector<int64_t> hf_shape;
        bool transpose;
    };
    const std::vector<PerLayer> per_layer = {
        {"ln1w", "ln_1.weight", {C}, false},
        {"ln1b", "ln_1.bias", {C}, false},
        {"qkvw", "attn.c_attn.weight", {C, 3 * C}, true},
        {"qkvb", "attn.c_attn.bias", {3 * C}, false},
        {"attprojw", "attn.c_proj.weight", {C, C}, true},
        {"attprojb", "attn.c_proj.bias", {C}, false},
        {"ln2w", "ln_2.weight", {C}, false},
        {"ln2b", "ln_2.bias", {C}, false},
        {"fcw", "mlp.c_fc.weight", {C, 4 * C}, true},
        {"fcb", "mlp.c_fc.bias", {4 * C}, false},
        {"fcprojw", "mlp.c_proj.weight", {4 * C, C}, true},
        {"fcprojb", "mlp.c_proj.bias", {C}, false},
    };
    for (int l = 0; l < s.L; l++)
        for (const auto& p : per_layer) {
            const TensorSpec& t = lay.get(p.ours);
            const size_t per = t.numel / size_t(t.shape[0]);
            out.push_back({"transformer.h." + std::to_string(l) + "." + p.hf, pos[p.ours] + size_t(l) * per, p.hf_shape, p.transpose});
        }
    out.push_back({"transformer.ln_f.weight", pos["lnfw"], {C}, false});
    out.push_back({"transformer.ln_f.bias", pos["lnfb"], {C}, false});
    return out;
}

std::string read_text(const std::string& path, const char* what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) bad_input(std::string(what) + " '" + path + "': cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_text(const fs::path& path, const std::string& text) {
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        f << text;
        f.flush();
        if (!f) run_failed("writing '" + tmp.string() + "' failed");
    }
    fs::rename(tmp, path);
}

// The weights of a folder: one model.safetensors, or the shards an index names.
class HfWeights {
public:
    explicit HfWeights(const fs::path& dir) {
        const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
        if (fs::exists(single)) {
            files_.push_back(std::make_unique<SafetensorsReader>(single.string()));
        } else if (fs::exists(index)) {
            Json j;
            try {
                j = parse_json(read_text(index.string(), "safetensors index"));
            } catch (const std::runtime_error& e) {
                bad_input("safetensors index '" + index.string() + "': " + e.what());
            }
            const Json* map = j.find("weight_map");
            if (!map || !map->is_object()) bad_input("safetensors index '" + index.string() + "': no weight_map object");
            std::map<std::string, size_t> opened;
            for (const auto& [name, file] : map->obj) {
                if (!file.is_string() || file.str.find('/') != std::string::npos)
                    bad_input("safetensors index '" + index.string() + "': weight_map entry '" + name + "' is not a file name in the folder");
                if (!opened.count(file.str)) {
                    opened[file.str] = files_.size();
                    files_.push_back(std::make_unique<SafetensorsReader>((dir / file.str).string()));
                }
            }
        } else if (fs::exists(dir / "pytorch_model.bin")) {
            bad_input("Hugging Face folder '" + dir.string() +
                      "' has only pytorch_model.bin (a pickle): convert it to model.safetensors first (transformers: "
                      "model.save_pretrained(dir, safe_serialization=True))");
        } else {
            bad_input("Hugging Face folder '" + dir.string() + "': no model.safetensors or model.safetensors.index.json");
        }
        for (size_t i = 0; i < files_.size(); i++)
            for (const auto& t : files_[i]->tensors()) {
                if (where_.count(t.name))
                    bad_input("Hugging Face folder '" + dir.string() + "': tensor '" + t.name + "' is in two shards");
                where_[t.name] = i;
            }
    }
    const std::map<std::string, size_t>& names() const { return where_; }
    const SafetensorsReader& file(const std::string& name) const { return *files_[where_.at(name)]; }

private:
    std::vector<std::unique_ptr<SafetensorsReader>> files_;
    std::map<std::string, size_t> where_;
};

}  // namespace

std::vector<std::string> hf_tensor_names(const ModelShape& shape) {
    std::vector<std::string> out;
    for (const auto& t : hf_tensors(shape)) out.push_back(t.hf_name);
    return out;
}

bool is_hf_dir(const std::string& path) {
    const fs::path p(path);
    std::error_code ec;
    return fs::is_directory(p, ec) && fs::exists(p / "config.json", ec) &&
           (fs::exists(p / "model.safetensors", ec) || fs::exists(p / "model.safetensors.index.json", ec));
}

void export_hf(const std::string& dir, const ModelShape& s, const std::vector<float>& params, const HfExportOptions& opt) {
    // transformers' GPT2LMHeadModel is GPT-2: a rotary, RMSNorm, ... model in its files would load and compute something else.
    if (const std::string other = s.arch.non_gpt2_summary(); !other.empty())
        bad_input("cannot export this model as a Hugging Face GPT-2 (GPT2LMHeadModel describes GPT-2 only): it has " + other +
                  "; its checkpoint's model.safetensors holds it with its architecture in the metadata");
    if (params.size() != param_count(s))
        bad_input("export: " + std::to_string(params.size()) + " parameters for a model that has " + std::to_string(param_count(s)));
    if (opt.dtype != StDType::F32 && opt.dtype != StDType::BF16 && opt.dtype != StDType::F16)
        bad_input(std::string("export: unsupported dtype ") + st_dtype_name(opt.dtype) + " (F32, BF16 or F16)");
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (!fs::is_directory(dir)) bad_input("export directory '" + dir + "': cannot create it" + (ec ? ": " + ec.message() : std::string()));

    SafetensorsWriter w;
    w.set_metadata("format", "pt");  // transformers checks this key when loading
    if (!opt.source.empty()) w.set_metadata("gpt.source", opt.source);
    const StDType dt = opt.dtype;
    for (const auto& t : hf_tensors(s)) {
        const float* base = params.data() + t.pos;
        if (!t.transpose) {
            w.add_from_f32(t.hf_name, dt, t.shape, base);
            continue;
        }
        // HF (in, out) element [i][o] is ours (out, in) [o][i]: filled chunk by chunk.
        const size_t in = size_t(t.shape[0]), out = size_t(t.shape[1]);
        w.add(t.hf_name, dt, t.shape, [base, in, out, dt](void* dst, size_t first, size_t count) {
            for (size_t k = 0; k < count; k++) {
                const size_t e = first + k, i = e / out, o = e % out;
                const float v = base[o * in + i];
                if (dt == StDType::F32) static_cast<float*>(dst)[k] = v;
                else if (dt == StDType::BF16) static_cast<uint16_t*>(dst)[k] = double_to_bf16(v);
                else static_cast<uint16_t*>(dst)[k] = float_to_f16(v);
            }
        });
    }
    w.write((fs::path(dir) / "model.safetensors").string());

    Json cfg = Json::object();
    cfg.set("architectures", [] {
        Json a = Json::array();
        a.push(Json("GPT2LMHeadModel"));
        return a;
    }());
    cfg.set("model_type", Json("gpt2"));
    cfg.set("vocab_size", Json(s.V));
    cfg.set("n_positions", Json(s.maxT));
    cfg.set("n_ctx", Json(s.maxT));
    cfg.set("n_embd", Json(s.C));
    cfg.set("n_layer", Json(s.L));
    cfg.set("n_head", Json(s.NH));
    cfg.set("n_inner", Json());  // null: 4 x n_embd
    cfg.set("activation_function", Json("gelu_new"));  // GELU, tanh approximation
    cfg.set("layer_norm_epsilon", Json(1e-5));
    cfg.set("initializer_range", Json(0.02));
    cfg.set("resid_pdrop", Json(0.0));
    cfg.set("embd_pdrop", Json(0.0));
    cfg.set("attn_pdrop", Json(0.0));
    cfg.set("scale_attn_weights", Json(true));
    cfg.set("scale_attn_by_inverse_layer_idx", Json(false));
    cfg.set("reorder_and_upcast_attn", Json(false));
    cfg.set("tie_word_embeddings", Json(true));
    cfg.set("use_cache", Json(true));
    const bool gpt2_vocab = s.V == 50257;
    if (gpt2_vocab) {
        cfg.set("bos_token_id", Json(50256));
        cfg.set("eos_token_id", Json(50256));
    }
    cfg.set("torch_dtype", Json(dt == StDType::F32 ? "float32" : dt == StDType::BF16 ? "bfloat16" : "float16"));
    write_text(fs::path(dir) / "config.json", cfg.dump() + "\n");

    if (!opt.encoder_json.empty() && !opt.vocab_bpe.empty()) {
        // OpenAI's encoder.json and vocab.bpe are, byte for byte, HF's vocab.json and merges.txt.
        write_text(fs::path(dir) / "vocab.json", opt.encoder_json);
        write_text(fs::path(dir) / "merges.txt", opt.vocab_bpe);
        Json tc = Json::object();
        tc.set("tokenizer_class", Json("GPT2Tokenizer"));
        tc.set("model_max_length", Json(s.maxT));
        tc.set("bos_token", Json("<|endoftext|>"));
        tc.set("eos_token", Json("<|endoftext|>"));
        tc.set("unk_token", Json("<|endoftext|>"));
        tc.set("add_prefix_space", Json(false));
        write_text(fs::path(dir) / "tokenizer_config.json", tc.dump() + "\n");
    }
}

std::vector<float> import_hf(const std::string& dir, ModelShape& s) {
    const fs::path cfg_path = fs::path(dir) / "config.json";
    if (!fs::exists(cfg_path)) bad_input("Hugging Face folder '" + dir + "': no config.json");
    HfWeights weights{fs::path(dir)};  // first: a folder with only a pickle is refused as that
    Json cfg;
    try {
        cfg = parse_json(read_text(cfg_path.string(), "config"));
    } catch (const std::runtime_error& e) {
        bad_input("'" + cfg_path.string() + "': " + e.what());
    }
    auto bad_cfg = [&](const std::string& what) { bad_input("'" + cfg_path.string() + "': " + what); };
    if (!cfg.is_object()) bad_cfg("not a JSON object");
    const std::string type = cfg.string("model_type", "gpt2");
    if (type != "gpt2") bad_cfg("model_type is '" + type + "': only GPT-2 (model_type gpt2) can be imported");
    auto int_key = [&](const char* key, const char* alt) -> int {
        const Json* j = cfg.find(key);
        if ((!j || j->is_null()) && alt) j = cfg.find(alt);
        if (!j || !j->is_number() || j->num < 1 || j->num != std::floor(j->num) || j->num > 1e9)
            bad_cfg(std::string("needs a positive integer ") + key + (alt ? std::string(" (or ") + alt + ")" : std::string()));
        return int(j->num);
    };
    s.L = int_key("n_layer", "num_hidden_layers");
    s.NH = int_key("n_head", "num_attention_heads");
    s.C = int_key("n_embd", "hidden_size");
    s.maxT = int_key("n_positions", "n_ctx");
    s.V = int_key("vocab_size", nullptr);
    s.Vp = (s.V + 127) / 128 * 128;
    if (s.C % s.NH != 0) bad_cfg("n_embd " + std::to_string(s.C) + " is not a multiple of n_head " + std::to_string(s.NH));
    // What our model computes: tanh GELU, LayerNorm eps 1e-5, 4C MLP, a tied head, 1/sqrt(hs) attention.
    const std::string act = cfg.string("activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
        bad_cfg("activation_function '" + act + "': this model computes GELU with the tanh approximation (gelu_new)");
    if (const Json* e = cfg.find("layer_norm_epsilon"); e && e->is_number() && std::fabs(e->num - 1e-5) > 1e-12)
        bad_cfg("layer_norm_epsilon " + number_text(e->num) + ": this model's LayerNorm uses 1e-5");
    if (const Json* n = cfg.find("n_inner"); n && !n->is_null() && !(n->is_number() && n->num == 4.0 * s.C))
        bad_cfg("n_inner " + n->scalar_text() + ": this model's MLP is 4 x n_embd = " + std::to_string(4 * s.C));
    if (!cfg.boolean("scale_attn_weights", true) || cfg.boolean("scale_attn_by_inverse_layer_idx", false))
        bad_cfg("attention scaling other than 1/sqrt(head size) (scale_attn_weights false or scale_attn_by_inverse_layer_idx true)");
    if (!cfg.boolean("tie_word_embeddings", true)) bad_cfg("tie_word_embeddings is false: this model's head is tied to wte");

    // Our names with "transformer.", as the file has them or without the prefix.
    auto file_name = [&](const std::string& name) -> std::string {
        if (weights.names().count(name)) return name;
        const std::string bare = name.substr(std::string("transformer.").size());
        if (weights.names().count(bare)) return bare;
        bad_input("Hugging Face folder '" + dir + "': no tensor '" + name + "' (nor '" + bare + "') for the shape config.json gives (" +
                  std::to_string(s.L) + " layers, n_embd " + std::to_string(s.C) + ")");
    };
    std::vector<float> params(param_count(s), 0.0f);
    std::set<std::string> used;
    for (const auto& t : hf_tensors(s)) {
        const std::string name = file_name(t.hf_name);
        used.insert(name);
        const std::vector<float> v = weights.file(name).read_f32(name, t.shape);
        if (!t.transpose) {
            std::copy(v.begin(), v.end(), params.begin() + long(t.pos));
            continue;
        }
        const size_t in = size_t(t.shape[0]), out = size_t(t.shape[1]);
        for (size_t i = 0; i < in; i++)
            for (size_t o = 0; o < out; o++) params[t.pos + o * in + i] = v[i * out + o];
    }
    // The rest must be what GPT-2 checkpoints also carry: the tied head and attention-mask buffers.
    std::vector<std::string> unknown;
    for (const auto& entry : weights.names()) {
        const std::string& name = entry.first;
        if (used.count(name)) continue;
        const bool mask = name.size() > 10 && (name.compare(name.size() - 10, 10, ".attn.bias") == 0 ||
                                               (name.size() > 17 && name.compare(name.size() - 17, 17, ".attn.masked_bias") == 0));
        if (mask) continue;
        if (name == "lm_head.weight") {
            const std::vector<float> head = weights.file(name).read_f32(name, {s.V, s.C});
            const std::string wte = file_name("transformer.wte.weight");
            if (head != weights.file(wte).read_f32(wte))
                bad_input("Hugging Face folder '" + dir + "': lm_head.weight differs from wte: an untied head, which this model does not have");
            continue;
        }
        unknown.push_back(name);
    }
    if (!unknown.empty()) {
        std::string list;
        for (size_t i = 0; i < unknown.size() && i < 5; i++) list += (i ? ", " : "") + unknown[i];
        if (unknown.size() > 5) list += ", ... (" + std::to_string(unknown.size()) + " in all)";
        bad_input("Hugging Face folder '" + dir + "': tensors GPT-2 does not have: " + list);
    }
    return params;
}

}  // namespace gpt
