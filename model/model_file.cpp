#include "model/model_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "kernels/error.h"
#include "model/safetensors.h"

namespace gpt {

namespace {

std::string num(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

const char* yes_no(bool b) { return b ? "true" : "false"; }

// The metadata keys a model file may carry; anything else under model. is unknown.
const std::set<std::string>& known_model_keys() {
    static const std::set<std::string> keys = {
        "model.n_layer", "model.n_head",      "model.n_embd",  "model.seq_len", "model.vocab_size", "model.padded_vocab_size",
        "model.pos_emb", "model.rope_base",   "model.norm",    "model.norm_params", "model.qk_norm", "model.activation",
        "model.bias",    "model.tied_head",   "model.logit_softcap"};
    return keys;
}

struct MetaReader {
    const std::map<std::string, std::string>& meta;
    const std::string& path;

    const std::string& get(const std::string& key) const {
        auto it = meta.find(key);
        if (it == meta.end()) bad_input("model file '" + path + "': its metadata has no '" + key + "' (not a complete gpt model file)");
        return it->second;
    }
    [[noreturn]] void bad(const std::string& key, const std::string& why) const {
        bad_input("model file '" + path + "': metadata " + key + "=" + get(key) + ": " + why);
    }
    int integer(const std::string& key, int lo) const {
        const std::string& v = get(key);
        char* end = nullptr;
        errno = 0;
        const long x = std::strtol(v.c_str(), &end, 10);
        if (v.empty() || *end || errno || x < lo || x > (1L << 30)) bad(key, "not an integer >= " + std::to_string(lo));
        return int(x);
    }
    double real(const std::string& key, double lo, bool open) const {
        const std::string& v = get(key);
        char* end = nullptr;
        const double x = std::strtod(v.c_str(), &end);
        if (v.empty() || *end || !(open ? x > lo : x >= lo) || !std::isfinite(x)) bad(key, std::string("not a number ") + (open ? "> " : ">= ") + num(lo));
        return x;
    }
    bool boolean(const std::string& key) const {
        const std::string& v = get(key);
        if (v == "true") return true;
        if (v == "false") return false;
        bad(key, "not true or false");
    }
    const std::string& choice(const std::string& key, std::initializer_list<const char*> valid) const {
        const std::string& v = get(key);
        std::string list;
        for (const char* c : valid) {
            if (v == c) return v;
            list += (list.empty() ? "" : ", ") + std::string(c);
        }
        bad(key, "this build knows " + list);
    }
};

}  // namespace

std::vector<std::pair<std::string, std::string>> model_metadata(const ModelShape& s) {
    const Arch& a = s.arch;
    return {{"model.n_layer", std::to_string(s.L)},
            {"model.n_head", std::to_string(s.NH)},
            {"model.n_embd", std::to_string(s.C)},
            {"model.seq_len", std::to_string(s.maxT)},
            {"model.vocab_size", std::to_string(s.V)},
            {"model.padded_vocab_size", std::to_string(s.Vp)},
            {"model.pos_emb", a.pos == PosEmb::rope ? "rope" : "learned"},
            {"model.rope_base", num(a.rope_base)},
            {"model.norm", a.norm == NormKind::rmsnorm ? "rmsnorm" : "layernorm"},
            {"model.norm_params", yes_no(a.norm_params)},
            {"model.qk_norm", yes_no(a.qk_norm)},
            {"model.activation", activation_name(a.act)},
            {"model.bias", yes_no(a.bias)},
            {"model.tied_head", yes_no(a.tied_head)},
            {"model.logit_softcap", num(a.softcap)}};
}

std::string first_model_difference(const ModelShape& there, const ModelShape& here, const std::string& there_name,
                                   const std::string& here_name) {
    const auto a = model_metadata(there), b = model_metadata(here);
    const bool rope = there.arch.pos == PosEmb::rope || here.arch.pos == PosEmb::rope;
    for (size_t i = 0; i < a.size() && i < b.size(); i++) {
        if (a[i].second == b[i].second || (a[i].first == "model.rope_base" && !rope)) continue;
        return a[i].first + " is " + a[i].second + " " + there_name + ", " + b[i].second + " " + here_name;
    }
    return "";
}

void write_model_safetensors(const std::string& path, const ModelShape& s, const std::vector<float>& params,
                             const std::string& config_yaml) {
    model_safetensors_writer(s, params, config_yaml).write(path);
}

SafetensorsWriter model_safetensors_writer(const ModelShape& s, const std::vector<float>& params, const std::string& config_yaml) {
    const Layout layout = param_layout(s);
    size_t total = 0;
    for (const auto& t : layout.tensors) total += t.numel;
    if (params.size() != total)
        run_failed("write_model_safetensors: " + std::to_string(params.size()) + " values for a model of " + std::to_string(total));
    SafetensorsWriter w;
    w.set_metadata("format", kModelFormat);
    w.set_metadata("format_version", std::to_string(kModelFormatVersion));
    for (const auto& [k, v] : model_metadata(s)) w.set_metadata(k, v);
    if (!config_yaml.empty()) w.set_metadata("config", config_yaml);
    size_t pos = 0;
    for (const auto& t : layout.tensors) {
        w.add(t.name, StDType::F32, t.shape, params.data() + pos);
        pos += t.numel;
    }
    return w;
}

std::vector<float> read_model_safetensors(const std::string& path, ModelShape& s, std::string* config_yaml) {
    SafetensorsReader r(path);
    const auto& meta = r.metadata();
    const MetaReader m{meta, path};
    auto fmt = meta.find("format");
    if (fmt == meta.end() || fmt->second != kModelFormat)
        bad_input("model file '" + path + "': a safetensors file, but not a gpt model file (metadata format is " +
                  (fmt == meta.end() ? std::string("missing") : "'" + fmt->second + "'") + ", expected '" + kModelFormat +
                  "'; a Hugging Face GPT-2 file is imported with its own command)");
    if (m.integer("format_version", 1) != kModelFormatVersion)
        m.bad("format_version", "this build reads version " + std::to_string(kModelFormatVersion));
    for (const auto& [k, v] : meta)
        if (k.rfind("model.", 0) == 0 && !known_model_keys().count(k))
            bad_input("model file '" + path + "': metadata " + k + "=" + v +
                      " is an architecture choice this build does not know: it cannot run this model");
    s = ModelShape{};
    s.L = m.integer("model.n_layer", 1);
    s.NH = m.integer("model.n_head", 1);
    s.C = m.integer("model.n_embd", 1);
    s.maxT = m.integer("model.seq_len", 1);
    s.V = m.integer("model.vocab_size", 1);
    s.Vp = m.integer("model.padded_vocab_size", s.V);
    if (s.C % s.NH != 0) m.bad("model.n_embd", "not a multiple of model.n_head " + std::to_string(s.NH));
    Arch& a = s.arch;
    a.pos = m.choice("model.pos_emb", {"learned", "rope"}) == "rope" ? PosEmb::rope : PosEmb::learned;
    a.rope_base = m.real("model.rope_base", 0, true);
    a.norm = m.choice("model.norm", {"layernorm", "rmsnorm"}) == "rmsnorm" ? NormKind::rmsnorm : NormKind::layernorm;
    a.norm_params = m.boolean("model.norm_params");
    a.qk_norm = m.boolean("model.qk_norm");
    a.act = m.choice("model.activation", {"gelu", "relu2"}) == "relu2" ? Activation::relu2 : Activation::gelu;
    a.bias = m.boolean("model.bias");
    a.tied_head = m.boolean("model.tied_head");
    a.softcap = m.real("model.logit_softcap", 0, false);
    if (a.pos == PosEmb::rope && (s.C / s.NH) % 2 != 0) m.bad("model.pos_emb", "rope needs an even head size");

    const Layout layout = param_layout(s);
    std::vector<float> out;
    for (const auto& t : layout.tensors) {
        if (!r.has(t.name)) bad_input("model file '" + path + "': no tensor '" + t.name + "', which this model (by its metadata) has");
        const std::vector<float> v = r.read_f32(t.name, t.shape);
        for (size_t i = 0; i < v.size(); i++)
            if (!std::isfinite(v[i]))
                bad_input("model file '" + path + "': parameter " + t.name + "[" + std::to_string(i) + "] is " +
                          (std::isnan(v[i]) ? "NaN" : "infinite") + ": the weights are ruined (a diverged run?)");
        out.insert(out.end(), v.begin(), v.end());
    }
    for (const auto& t : r.tensors())
        if (!layout.find(t.name)) bad_input("model file '" + path + "': tensor '" + t.name + "' is not part of the model its metadata describes");
    if (config_yaml) {
        auto c = meta.find("config");
        *config_yaml = c == meta.end() ? std::string() : c->second;
    }
    return out;
}

bool looks_like_safetensors(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);  // a FIFO never blocks the sniff
    if (fd < 0) return false;
    unsigned char head[9] = {};
    const ssize_t n = ::pread(fd, head, sizeof head, 0);
    ::close(fd);
    if (n != 9) return false;
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = (len << 8) | head[i];
    return len >= 2 && len < (uint64_t(1) << 32) && head[8] == '{';
}

}  // namespace gpt
