// The config schema and everything that goes through it.
//
// schema() declares every key once: its full name, the Config field it fills,
// its valid range or choices and a one-line help. The YAML walk, `--set`
// overrides, the per-key checks, config_to_yaml / config_to_json and
// config_reference() all iterate that table, so a new key is one line there
// (plus the field in config.h). Checks between keys live in validate_cross().
//
// Every error is Error(BadInput) whose message starts with where the value came
// from ("configs/x.yaml:4:7", "--set optim.lr=abc") and names the key.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <sstream>
#include <variant>

#include "data/files.h"
#include "kernels/error.h"
#include "kernels/registry.h"
#include "train/yaml_input.h"

namespace gpt {
// A JSON string literal of s (bytes >= 0x80 pass through: UTF-8 stays UTF-8).
std::string json_quote(const std::string& s) {
    std::string out = "\"";
    for (unsigned char ch : s) {
        switch (ch) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (ch < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", ch);
                    out += buf;
                } else {
                    out += char(ch);
                }
        }
    }
    return out + "\"";
}

namespace {

// ---------------------------------------------------------------------------
// Model presets: a preset fills the shape keys the user did not set.

struct Preset {
    const char* name;
    int n_layer, n_head, n_embd, seq_len, vocab_size;
};

constexpr Preset kPresets[] = {
    {"d12", 12, 12, 768, 1024, 50257},
    {"d24", 24, 16, 1024, 1024, 50257},
    {"d36", 36, 20, 1280, 1024, 50257},
    {"d48", 48, 25, 1600, 1024, 50257},
    {"tiny", 2, 4, 128, 64, 256},
    {"nano", 1, 2, 16, 8, 64},
};

std::vector<std::string> preset_choices() {
    std::vector<std::string> v{""};
    for (const auto& p : kPresets) v.push_back(p.name);
    return v;
}

// ---------------------------------------------------------------------------
// The schema.

using Field = std::variant<int*, long*, double*, std::string*, bool*>;

struct Range {
    double lo = -std::numeric_limits<double>::infinity();
    double hi = std::numeric_limits<double>::infinity();
    bool lo_open = false;
    bool hi_open = false;
};

Range any() { return {}; }
Range at_least(double v) { return {v, Range{}.hi, false, false}; }
Range above(double v) { return {v, Range{}.hi, true, false}; }
Range closed(double lo, double hi) { return {lo, hi, false, false}; }
Range half_open(double lo, double hi) { return {lo, hi, false, true}; }

struct KeySpec {
    const char* key;                   // full dotted name, "optim.lr"
    Field (*field)(Config&);           // the Config member it fills
    Range range;                       // numeric keys only
    std::vector<std::string> choices;  // string keys: allowed values (empty = any string)
    const char* help;
};

#define GPT_FIELD(path) [](Config& c) -> Field { return &c.path; }

const std::vector<KeySpec>& schema() {
    static const std::vector<KeySpec> keys = {
        {"model.preset", GPT_FIELD(model.preset), any(), preset_choices(), "fills the shape keys not set explicitly (an explicit key, in the file or by --set, wins)"},
        {"model.n_layer", GPT_FIELD(model.n_layer), closed(1, 4096), {}, "transformer blocks"},
        {"model.n_head", GPT_FIELD(model.n_head), closed(1, 1 << 20), {}, "attention heads (must divide n_embd)"},
        {"model.n_embd", GPT_FIELD(model.n_embd), closed(1, 1 << 20), {}, "embedding width C"},
        {"model.seq_len", GPT_FIELD(model.seq_len), closed(1, 1 << 20), {}, "maximum context length (rows of wpe)"},
        {"model.vocab_size", GPT_FIELD(model.vocab_size), closed(1, 1 << 24), {}, "vocabulary size (padded to a multiple of 128 internally)"},
        {"model.init", GPT_FIELD(model.init), any(), {},
         "starting weights instead of a random init: an llm.c model file (e.g. gpt2_124M.bin), a checkpoint or run directory, or hf:DIR "
         "(a Hugging Face GPT-2 folder); the optimizer starts fresh, the model keys must match the weights' shape"},
        {"model.pos_emb", GPT_FIELD(model.pos_emb), any(), {"learned", "rope"}, "positions: learned wpe rows (GPT-2), or rotary embedding of q and k (no wpe)"},
        {"model.rope_base", GPT_FIELD(model.rope_base), above(0), {}, "RoPE base: pair i of a head turns by pos * base^(-2i/head_size)"},
        {"model.norm", GPT_FIELD(model.norm), any(), {"layernorm", "rmsnorm"}, "the blocks' and the final norm"},
        {"model.norm_params", GPT_FIELD(model.norm_params), any(), {}, "learnable norm gains (and LayerNorm biases); false = parameter-free norms"},
        {"model.qk_norm", GPT_FIELD(model.qk_norm), any(), {}, "RMS-normalise each head's q and k before attention (parameter-free)"},
        {"model.activation", GPT_FIELD(model.activation), any(), {"gelu", "relu2"}, "MLP activation: tanh GELU (GPT-2) or ReLU^2"},
        {"model.bias", GPT_FIELD(model.bias), any(), {}, "biases in the linear layers and LayerNorm; false = none"},
        {"model.tied_head", GPT_FIELD(model.tied_head), any(), {}, "logits through wte^T (GPT-2); false = a separate lm_head with its own init and lr"},
        {"model.head_init_std", GPT_FIELD(model.head_init_std), at_least(0), {}, "untied lm_head init: N(0, std), 0 = zeros"},
        {"model.logit_softcap", GPT_FIELD(model.logit_softcap), at_least(0), {}, "cap the logits to c * tanh(z / c), 0 = off"},
        {"model.zero_init_proj", GPT_FIELD(model.zero_init_proj), any(), {}, "start the attention and MLP output projections at zero"},
        {"data.source", GPT_FIELD(data.source), any(), {"synthetic", "shards"}, "where tokens come from"},
        {"data.train", GPT_FIELD(data.train), any(), {}, "glob of train shards (source: shards)"},
        {"data.val", GPT_FIELD(data.val), any(), {}, "glob of val shards (source: shards)"},
        {"data.tokenizer", GPT_FIELD(data.tokenizer), any(), {}, "GPT-2 tokenizer dir (encoder.json, vocab.bpe) for val_bpb and samples; empty = $GPT_TOKENIZER_DIR, else built in"},
        {"data.synthetic.order", GPT_FIELD(data.synthetic.order), closed(1, 23), {}, "Markov order: next token depends on the previous k"},
        {"data.synthetic.vocab", GPT_FIELD(data.synthetic.vocab), closed(2, 1 << 24), {}, "tokens used by the chain (<= model.vocab_size)"},
        {"data.synthetic.sharpness", GPT_FIELD(data.synthetic.sharpness), at_least(0), {}, "scale of the transition logits: higher = lower entropy"},
        {"data.synthetic.seed", GPT_FIELD(data.synthetic.seed), any(), {}, "seed of the chain's transition table"},
        {"optim.type", GPT_FIELD(optim.type), any(), {"adamw", "muon"}, "optimizer: AdamW for everything, or Muon for the hidden matrices (per layer q, k, v, attproj, fc, fcproj) and AdamW for embeddings, head, gains and biases"},
        {"optim.lr", GPT_FIELD(optim.lr), above(0), {}, "peak learning rate of AdamW (the matrices under adamw; gains and biases always)"},
        {"optim.embed_lr", GPT_FIELD(optim.embed_lr), at_least(0), {}, "peak AdamW lr of wte and wpe, 0 = optim.lr"},
        {"optim.head_lr", GPT_FIELD(optim.head_lr), at_least(0), {}, "peak AdamW lr of an untied lm_head, 0 = optim.lr"},
        {"optim.beta1", GPT_FIELD(optim.beta1), half_open(0, 1), {}, "AdamW first-moment decay"},
        {"optim.beta2", GPT_FIELD(optim.beta2), half_open(0, 1), {}, "AdamW second-moment decay"},
        {"optim.eps", GPT_FIELD(optim.eps), above(0), {}, "AdamW epsilon"},
        {"optim.weight_decay", GPT_FIELD(optim.weight_decay), at_least(0), {}, "AdamW decoupled weight decay, on the 2-D tensors AdamW updates (embeddings, head, and the matrices under adamw)"},
        {"optim.grad_clip", GPT_FIELD(optim.grad_clip), at_least(0), {}, "global gradient-norm clip, 0 = off"},
        {"optim.muon_lr", GPT_FIELD(optim.muon_lr), above(0), {}, "peak learning rate of Muon (optim.type: muon)"},
        {"optim.muon_momentum", GPT_FIELD(optim.muon_momentum), half_open(0, 1), {}, "Muon momentum"},
        {"optim.muon_nesterov", GPT_FIELD(optim.muon_nesterov), any(), {}, "Nesterov momentum for Muon"},
        {"optim.muon_ns_steps", GPT_FIELD(optim.muon_ns_steps), closed(1, 20), {}, "Newton-Schulz iterations per Muon update"},
        {"optim.muon_weight_decay", GPT_FIELD(optim.muon_weight_decay), at_least(0), {}, "decoupled weight decay of the Muon matrices"},
        {"schedule.type", GPT_FIELD(schedule.type), any(), {"cosine", "linear", "wsd", "constant"}, "learning-rate schedule after warm-up"},
        {"schedule.warmup_steps", GPT_FIELD(schedule.warmup_steps), at_least(0), {}, "linear warm-up steps"},
        {"schedule.steps", GPT_FIELD(schedule.steps), at_least(0), {}, "decay horizon, 0 = run.max_steps"},
        {"schedule.final_lr_frac", GPT_FIELD(schedule.final_lr_frac), closed(0, 1), {}, "lr at the end of the decay, as a fraction of optim.lr"},
        {"schedule.decay_frac", GPT_FIELD(schedule.decay_frac), closed(0, 1), {}, "wsd: fraction of the horizon spent decaying"},
        {"run.backend", GPT_FIELD(run.backend), any(), {"auto", "cpu", "cuda"}, "compute backend"},
        {"run.zero", GPT_FIELD(run.zero), closed(0, 1), {}, "data-parallel optimizer state: 0 = replicated, 1 = sharded across ranks (ZeRO-1)"},
        {"run.dist_timeout_s", GPT_FIELD(run.dist_timeout_s), at_least(0), {}, "data parallel: a collective waiting longer ends the job (a rank died or hung), 0 = never"},
        {"run.overlap_reduce", GPT_FIELD(run.overlap_reduce), any(), {}, "data parallel without ZeRO: all-reduce each layer's gradients as soon as the backward pass has them, overlapping the rest of the pass"},
        {"run.warmup_pass", GPT_FIELD(run.warmup_pass), any(), {}, "one untimed forward/backward pass before step 1, gradients discarded and no update: plans and buffers built on first use stay out of the training time"},
        {"run.grad_accum_f32", GPT_FIELD(run.grad_accum_f32), any(), {}, "sum each micro-batch's gradients into an f32 buffer (one more pass per micro-batch, 4 bytes per parameter) that the reduction over ranks, the norm and the update read, instead of accumulating them in the gradient buffer (bf16 on CUDA: each micro-batch's sum rounded to bf16); with several ranks the reduction moves the f32 sum, each layer's part as soon as the last micro-batch's backward has finished it (run.overlap_reduce)"},
        {"run.cuda_graph", GPT_FIELD(run.cuda_graph), any(), {}, "record the whole optimizer step as a CUDA graph at step 2 and replay it from then on (one launch per step); falls back to direct launches, saying why, where a step cannot be recorded"},
        {"run.threads", GPT_FIELD(run.threads), closed(0, kMaxThreads), {}, "CPU threads, 0 = all cores"},
        {"run.seed", GPT_FIELD(run.seed), any(), {}, "weight init seed"},
        {"run.batch_size", GPT_FIELD(run.batch_size), closed(1, 1 << 20), {}, "micro-batch B"},
        {"run.seq_len", GPT_FIELD(run.seq_len), closed(0, 1 << 20), {}, "training sequence length T, 0 = model.seq_len"},
        {"run.total_batch_tokens", GPT_FIELD(run.total_batch_tokens), at_least(0), {}, "tokens per optimizer step, 0 = B*T (no accumulation)"},
        {"run.max_steps", GPT_FIELD(run.max_steps), at_least(0), {}, "stop after this many steps, 0 = no limit"},
        {"run.budget_s", GPT_FIELD(run.budget_s), at_least(0), {}, "training wall-clock budget in seconds, 0 = none"},
        {"run.target_val_loss", GPT_FIELD(run.target_val_loss), at_least(0), {}, "stop when run.target_metric <= this, 0 = none"},
        {"run.target_metric", GPT_FIELD(run.target_metric), any(), {"val_loss", "val_bpb"}, "metric compared with run.target_val_loss (val_bpb needs a tokenizer)"},
        {"run.val_every", GPT_FIELD(run.val_every), at_least(0), {}, "evaluate every N steps, 0 = only at the end"},
        {"run.val_every_tokens", GPT_FIELD(run.val_every_tokens), at_least(0), {}, "evaluate whenever the tokens trained cross a multiple of this (a grid that does not move with the batch size), 0 = run.val_every"},
        {"run.val_batches", GPT_FIELD(run.val_batches), at_least(1), {}, "batches per evaluation (when run.val_tokens is 0)"},
        {"run.val_tokens", GPT_FIELD(run.val_tokens), at_least(0), {}, "a fixed validation set: the first val_tokens / T_val windows of the val stream, the same whatever the batch size; 0 = run.val_batches x B x T"},
        {"run.val_seq_len", GPT_FIELD(run.val_seq_len), at_least(0), {}, "validation window T_val (with run.val_tokens), <= the training T; 0 = the training T"},
        {"run.step_clock", GPT_FIELD(run.step_clock), any(), {"wall", "median", "cpu"}, "what a step charges to the budget and time-to-target clock: wall = its measured time; median = the run's median step time so far (a paused spell does not count, a change that slows every step does); cpu = the median of the steps' CPU time (all threads; the cpu backend, for run.threads 1 on a shared machine)"},
        {"run.log_every", GPT_FIELD(run.log_every), at_least(1), {}, "JSONL step record every N steps"},
        {"run.checkpoint_every", GPT_FIELD(run.checkpoint_every), at_least(-1), {}, "checkpoint every N steps, 0 = only at the end, -1 = never (except when interrupted)"},
        {"run.sample_every", GPT_FIELD(run.sample_every), at_least(0), {}, "print a generated sample every N steps, 0 = never"},
        {"run.sample_tokens", GPT_FIELD(run.sample_tokens), at_least(1), {}, "tokens per sample"},
        {"run.out_dir", GPT_FIELD(run.out_dir), any(), {}, "run directory (log, config, checkpoints)"},
        {"run.on_nonfinite", GPT_FIELD(run.on_nonfinite), any(), {"stop", "skip_step"}, "a NaN/inf loss or gradient norm: end the run, or skip that step's update (weights that become non-finite always end it)"},
        {"run.skip_update_lossz", GPT_FIELD(run.skip_update_lossz), at_least(0), {}, "llm.c's outlier skip: skip an update whose loss z-score over the last 128 steps exceeds this, 0 = off"},
        {"run.skip_update_gradz", GPT_FIELD(run.skip_update_gradz), at_least(0), {}, "the same for the gradient norm, 0 = off"},
        {"run.hellaswag", GPT_FIELD(run.hellaswag), any(), {}, "HellaSwag validation jsonl (ctx, endings, label) for run.hellaswag_every"},
        {"run.hellaswag_every", GPT_FIELD(run.hellaswag_every), at_least(0), {},
         "evaluate HellaSwag acc/acc_norm every N steps and at the end, off the training clock (0 = never)"},
        {"run.hellaswag_examples", GPT_FIELD(run.hellaswag_examples), at_least(0), {}, "examples per HellaSwag evaluation (0 = the whole file)"},
    };
    return keys;
}

#undef GPT_FIELD

const KeySpec* find_key(const std::string& key) {
    for (const auto& k : schema())
        if (key == k.key) return &k;
    return nullptr;
}

// "data" and "data.synthetic" are sections: some key lies below them.
bool is_section(const std::string& name) {
    if (name == "kernels") return true;
    const std::string prefix = name + ".";
    for (const auto& k : schema())
        if (std::string(k.key).rfind(prefix, 0) == 0) return true;
    return false;
}

// Printing reads fields through the same accessors; they never write.
Field field_of(const KeySpec& k, const Config& c) { return k.field(const_cast<Config&>(c)); }

// ---------------------------------------------------------------------------
// Small text helpers.

std::string join(const std::vector<std::string>& v, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < v.size(); i++) out += (i ? sep : "") + (v[i].empty() ? std::string("\"\"") : v[i]);
    return out;
}

// Shortest text that parses back to exactly v: fixed notation for ordinary
// magnitudes (0.0006 reads better than 6e-04), scientific otherwise.
std::string format_double(double v) {
    char buf[64];
    const double a = std::fabs(v);
    const bool fixed = a == 0 || (a >= 1e-5 && a < 1e16);
    auto r = std::to_chars(buf, buf + sizeof buf, v, fixed ? std::chars_format::fixed : std::chars_format::scientific);
    std::string s(buf, r.ptr);
    const auto e = s.find('e');
    if (e != std::string::npos) {
        // 1e-08 -> 1e-8
        std::string mant = s.substr(0, e), exp = s.substr(e + 1);
        std::string sign;
        if (!exp.empty() && (exp[0] == '-' || exp[0] == '+')) {
            if (exp[0] == '-') sign = "-";
            exp = exp.substr(1);
        }
        while (exp.size() > 1 && exp[0] == '0') exp = exp.substr(1);
        return mant + "e" + sign + exp;
    }
    if (s.find('.') == std::string::npos) s += ".0";
    return s;
}

// Plain when it is an unambiguous name or path; otherwise a double-quoted
// scalar (its escapes are a superset of JSON's).
std::string yaml_quote(const std::string& s) {
    static const std::set<std::string> special = {"null", "Null", "NULL", "~", "true", "false", "yes", "no", "on", "off"};
    bool plain = !s.empty() && !special.count(s) && s[0] != '-';
    for (char ch : s)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '/' || ch == '-' || ch == '+')) plain = false;
    return plain ? s : json_quote(s);
}

std::string field_text(const Field& f, bool json) {
    return std::visit(
        [&](auto* p) -> std::string {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, std::string>) return json ? json_quote(*p) : yaml_quote(*p);
            else if constexpr (std::is_same_v<T, bool>) return *p ? "true" : "false";
            else if constexpr (std::is_same_v<T, double>) return format_double(*p);
            else return std::to_string(*p);
        },
        f);
}

const char* type_name(const KeySpec& k) {
    if (!k.choices.empty()) return "choice";
    Config scratch;
    return std::visit(
        [](auto* p) -> const char* {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, std::string>) return "string";
            else if constexpr (std::is_same_v<T, bool>) return "bool";
            else if constexpr (std::is_same_v<T, double>) return "float";
            else return "int";
        },
        k.field(scratch));
}

std::string range_text(const Range& r) {
    const bool has_lo = std::isfinite(r.lo), has_hi = std::isfinite(r.hi);
    auto num = [](double v) { return v == std::floor(v) ? std::to_string(long(v)) : format_double(v); };
    if (has_lo && has_hi) return std::string("in ") + (r.lo_open ? "(" : "[") + num(r.lo) + ", " + num(r.hi) + (r.hi_open ? ")" : "]");
    if (has_lo) return std::string(r.lo_open ? "> " : ">= ") + num(r.lo);
    if (has_hi) return std::string(r.hi_open ? "< " : "<= ") + num(r.hi);
    return "";
}

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); j++) prev[j] = j;
    for (size_t i = 1; i <= a.size(); i++) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); j++)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string leaf_of(const std::string& key) {
    const auto dot = key.rfind('.');
    return dot == std::string::npos ? key : key.substr(dot + 1);
}

std::string section_of(const std::string& key) {
    const auto dot = key.rfind('.');
    return dot == std::string::npos ? "" : key.substr(0, dot);
}

std::vector<std::string> words_of(const std::string& leaf) {
    std::vector<std::string> w;
    std::stringstream ss(leaf);
    std::string part;
    while (std::getline(ss, part, '_'))
        if (!part.empty()) w.push_back(part);
    return w;
}

std::string initials_of(const std::string& leaf) {
    std::string s;
    for (const auto& w : words_of(leaf)) s += w[0];
    return s;
}

// How far an unknown key is from a valid one: the edit distance over leaf
// names, or over full keys of the same depth (a typo in the section name), and
// 1 when one leaf abbreviates the other (learning_rate ~ lr) or is one of its
// words (lr_rate ~ lr, warmup ~ warmup_steps).
size_t key_distance(const std::string& unknown, const std::string& valid) {
    const std::string lu = leaf_of(unknown), lv = leaf_of(valid);
    size_t d = edit_distance(lu, lv);
    if (std::count(unknown.begin(), unknown.end(), '.') == std::count(valid.begin(), valid.end(), '.'))
        d = std::min(d, edit_distance(unknown, valid));
    if (lv.size() >= 2 && (initials_of(lu) == lv || initials_of(lv) == lu)) d = std::min<size_t>(d, 1);
    for (const auto& w : words_of(lu))
        if (w == lv && lv.size() >= 2) d = std::min<size_t>(d, 1);
    for (const auto& w : words_of(lv))
        if (w == lu && lu.size() >= 3) d = std::min<size_t>(d, 1);
    return d;
}

// The closest valid key or section for an unknown one, "" when none is close.
std::string closest_key(const std::string& unknown) {
    std::vector<std::string> candidates;
    std::set<std::string> sections;
    for (const auto& k : schema()) {
        candidates.push_back(k.key);
        for (std::string s = section_of(k.key); !s.empty(); s = section_of(s)) sections.insert(s);
    }
    sections.insert("kernels");
    candidates.insert(candidates.end(), sections.begin(), sections.end());

    const std::string sec = section_of(unknown);
    std::string best;
    std::tuple<size_t, int, size_t> best_score{std::numeric_limits<size_t>::max(), 0, 0};
    for (const auto& c : candidates) {
        const size_t d = key_distance(unknown, c);
        const std::tuple<size_t, int, size_t> score{d, section_of(c) == sec ? 0 : 1, edit_distance(unknown, c)};
        if (score < best_score) { best_score = score; best = c; }
    }
    const size_t limit = std::max<size_t>(2, leaf_of(unknown).size() / 2);
    return std::get<0>(best_score) <= limit ? best : "";
}

// ---------------------------------------------------------------------------
// Loading.

struct Loader {
    Config cfg;
    ConfigUse use = ConfigUse::train;
    std::string origin;                        // file name or text origin
    std::map<std::string, std::string> where;  // key -> where it was set explicitly
    std::vector<std::string> notes;            // adjustments made while loading (Config::notes)

    std::string origin_name() const { return origin.empty() ? "config" : origin; }

    std::string at(const YAML::Mark& m) const {
        if (m.is_null()) return origin_name();
        return origin_name() + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
    }

    // Where a key-value pair is: the value's mark, else the key's.
    std::string at(const YAML::Node& key, const YAML::Node& value) const {
        if (value.IsDefined() && !value.Mark().is_null()) return at(value.Mark());
        return at(key.Mark());
    }

    [[noreturn]] static void fail(const std::string& loc, const std::string& msg) { bad_input(loc + ": " + msg); }

    static const char* kind_of(const YAML::Node& n) {
        if (n.IsSequence()) return "a list";
        if (n.IsMap()) return "a map";
        if (n.IsNull()) return "nothing";
        return "a scalar";
    }

    [[noreturn]] void unknown_key(const std::string& loc, const std::string& key) const {
        const std::string guess = closest_key(key);
        fail(loc, "unknown key '" + key + "'" + (guess.empty() ? "" : " (did you mean '" + guess + "'?)"));
    }

    // Parses one scalar into the key's field and checks its range or choices.
    void assign(const KeySpec& k, const YAML::Node& value, const std::string& loc) {
        const std::string key = k.key;
        const Field f = k.field(cfg);
        const bool is_string = std::holds_alternative<std::string*>(f);
        const char* expected = std::visit(
            [](auto* p) -> const char* {
                using T = std::remove_pointer_t<decltype(p)>;
                if constexpr (std::is_same_v<T, std::string>) return "a string";
                else if constexpr (std::is_same_v<T, bool>) return "true or false";
                else if constexpr (std::is_same_v<T, double>) return "a number";
                else return "an integer";
            },
            f);
        if (value.IsSequence() || value.IsMap()) fail(loc, key + ": expected " + std::string(expected) + ", got " + kind_of(value));
        if (value.IsNull() && !is_string) fail(loc, key + ": expected " + std::string(expected) + ", got nothing");
        const std::string text = value.IsNull() ? "" : value.Scalar();
        const std::string got = "got '" + text + "'";

        double numeric = 0;
        bool ok = true;
        std::visit(
            [&](auto* p) {
                using T = std::remove_pointer_t<decltype(p)>;
                const char* b = text.data() + (text.size() > 1 && text[0] == '+' ? 1 : 0);
                const char* e = text.data() + text.size();
                if constexpr (std::is_same_v<T, std::string>) {
                    *p = text;
                } else if constexpr (std::is_same_v<T, bool>) {
                    std::string low = text;
                    for (auto& ch : low) ch = char(std::tolower(static_cast<unsigned char>(ch)));
                    if (low == "true" || low == "yes" || low == "on") *p = true;
                    else if (low == "false" || low == "no" || low == "off") *p = false;
                    else ok = false;
                } else if constexpr (std::is_same_v<T, double>) {
                    double v = 0;
                    auto r = std::from_chars(b, e, v);
                    ok = r.ec == std::errc() && r.ptr == e && std::isfinite(v) && !text.empty();
                    if (ok) *p = numeric = v;
                } else {
                    long long v = 0;
                    auto r = std::from_chars(b, e, v);
                    ok = r.ec == std::errc() && r.ptr == e && !text.empty();
                    if (ok && (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()))
                        fail(loc, key + ": " + got + " is out of range for an integer");
                    if (ok) {
                        *p = static_cast<T>(v);
                        numeric = double(v);
                    }
                }
            },
            f);
        if (!ok) fail(loc, key + ": expected " + std::string(expected) + ", " + got);

        if (!k.choices.empty() && std::find(k.choices.begin(), k.choices.end(), text) == k.choices.end()) {
            std::vector<std::string> named;
            for (const auto& ch : k.choices)
                if (!ch.empty()) named.push_back(ch);
            const std::string what = key == "model.preset" ? "unknown preset" : "unknown value";
            fail(loc, key + ": " + what + " '" + text + "' (valid: " + join(named, ", ") + ")");
        }
        if (!is_string && !std::holds_alternative<bool*>(f)) {
            const Range& r = k.range;
            const bool below = r.lo_open ? !(numeric > r.lo) : !(numeric >= r.lo);
            const bool over = r.hi_open ? !(numeric < r.hi) : !(numeric <= r.hi);
            if (below || over) fail(loc, key + ": must be " + range_text(r) + ", " + got);
        }
        where[key] = loc;
    }

    // kernels.<family>: <variant> or kernels.<family>.<param>: <value>, checked
    // against the registry (kernels/registry.cpp).
    void assign_kernel(const std::string& key, const YAML::Node& value, const std::string& loc) {
        const std::string rest = key.substr(std::string("kernels.").size());
        const auto dot = rest.find('.');
        const std::string family = rest.substr(0, dot);
        const KernelFamily* f = find_kernel_family(family);
        if (!f) {
            std::vector<std::string> names;
            for (const auto& fam : kernel_families()) names.push_back(fam.name);
            fail(loc, key + ": unknown kernel family '" + family + "' (valid: " + join(names, ", ") + ")");
        }
        if (!value.IsScalar()) fail(loc, key + ": expected a scalar, got " + kind_of(value));
        const std::string v = value.Scalar();
        if (dot == std::string::npos) {
            if (std::find(f->variants.begin(), f->variants.end(), v) == f->variants.end())
                fail(loc, key + ": unknown variant '" + v + "' (valid: " + join(f->variants, ", ") + ")");
            cfg.kernels[family] = v;
        } else {
            const std::string pname = rest.substr(dot + 1);
            auto p = std::find_if(f->params.begin(), f->params.end(), [&](const KernelParam& kp) { return kp.name == pname; });
            if (p == f->params.end()) {
                std::vector<std::string> names;
                for (const auto& kp : f->params) names.push_back(family + "." + kp.name);
                fail(loc, key + ": kernel family '" + family + "' has no parameter '" + pname + "'" +
                              (names.empty() ? std::string(" (it has none)") : " (valid: " + join(names, ", ") + ")"));
            }
            std::vector<std::string> vals;
            for (int x : p->values) vals.push_back(std::to_string(x));
            if (std::find(vals.begin(), vals.end(), v) == vals.end())
                fail(loc, key + ": invalid value '" + v + "' (valid: " + join(vals, ", ") + ")");
            cfg.kernels[rest] = v;
        }
        where[key] = loc;
    }

    // Walks one mapping of the YAML file; prefix is the section it belongs to.
    void walk(const YAML::Node& map, const std::string& prefix, std::map<std::string, std::string>& seen) {
        for (auto it = map.begin(); it != map.end(); ++it) {
            const YAML::Node kn = it->first;
            const YAML::Node vn = it->second;
            const std::string kloc = at(kn.Mark());
            if (!kn.IsScalar()) fail(kloc, "keys must be plain names, got " + std::string(kind_of(kn)));
            const std::string full = prefix.empty() ? kn.Scalar() : prefix + "." + kn.Scalar();
            if (auto s = seen.find(full); s != seen.end()) fail(kloc, "duplicate key '" + full + "' (first set at " + s->second + ")");
            seen[full] = kloc;

            if (prefix == "kernels") {
                assign_kernel(full, vn, at(kn, vn));
            } else if (const KeySpec* k = find_key(full)) {
                assign(*k, vn, at(kn, vn));
            } else if (is_section(full)) {
                if (vn.IsNull()) continue;  // an empty section
                if (!vn.IsMap())
                    fail(at(kn, vn), full + ": expected a section (a map of keys), got " + kind_of(vn) +
                                         (vn.IsScalar() ? " '" + vn.Scalar() + "'" : ""));
                walk(vn, full, seen);
            } else {
                unknown_key(kloc, full);
            }
        }
    }

    void load_text(const std::string& text) {
        YAML::Node root;
        try {
            // A second document ('---') is an error instead of silently unread.
            const YamlDocument doc = load_yaml_document(text, origin_name());
            if (doc.has_second)
                fail(at(doc.second), "a second YAML document (after '---', or content the first one cannot hold): a config "
                                     "file is one document; merge them or use --set for overrides");
            root = doc.root;
        } catch (const YAML::Exception& e) {
            fail(at(e.mark), "YAML syntax error: " + e.msg);
        }
        if (root.IsNull()) return;
        if (!root.IsMap())
            fail(at(root.Mark()), "expected a map of sections (model, data, optim, schedule, run, kernels), got " + std::string(kind_of(root)));
        std::map<std::string, std::string> seen;
        walk(root, "", seen);
    }

    void apply_override(const std::string& ov) {
        const std::string loc = "--set " + ov;
        const auto eq = ov.find('=');
        if (eq == std::string::npos || eq == 0) fail(loc, "expected key=value");
        const std::string key = ov.substr(0, eq), text = ov.substr(eq + 1);
        const KeySpec* k = find_key(key);
        const bool kernel = key.rfind("kernels.", 0) == 0 && key.size() > 8;
        if (!k && !kernel) {
            if (is_section(key)) fail(loc, "'" + key + "' is a section; set one of its keys (see gpt config --reference)");
            unknown_key(loc, key);
        }
        YAML::Node value;
        try {
            const YamlDocument doc = load_yaml_document(text, loc + ": " + key + " value");
            if (doc.has_second) fail(loc, key + ": the value is more than one YAML document");
            value = doc.root;
        } catch (const YAML::Exception& e) {
            fail(loc, key + ": cannot parse value: " + e.msg);
        }
        if (kernel) assign_kernel(key, value, loc);
        else assign(*k, value, loc);
    }

    // Whether key was set by a --set override (the last assignment wins).
    bool set_by_flag(const char* key) const {
        auto it = where.find(key);
        return it != where.end() && it->second.rfind("--set ", 0) == 0;
    }

    // Presets: the file's keys and then the --set overrides are applied in
    // order (a later assignment of a key wins), and then the preset, the last
    // one assigned wherever it came from, fills only the shape keys that no
    // source set: an explicit shape key always wins over a preset.
    void apply_preset() {
        if (cfg.model.preset.empty()) return;
        const Preset* p = nullptr;
        for (const auto& q : kPresets)
            if (cfg.model.preset == q.name) p = &q;
        if (!p) return;  // assign() already rejected unknown presets
        auto fill = [&](const char* key, int& field, int v) {
            if (!where.count(key)) field = v;
        };
        fill("model.n_layer", cfg.model.n_layer, p->n_layer);
        fill("model.n_head", cfg.model.n_head, p->n_head);
        fill("model.n_embd", cfg.model.n_embd, p->n_embd);
        fill("model.seq_len", cfg.model.seq_len, p->seq_len);
        fill("model.vocab_size", cfg.model.vocab_size, p->vocab_size);
    }

    // Where the first of the keys that was set explicitly came from.
    std::string at_keys(std::initializer_list<const char*> keys) const {
        for (const char* k : keys)
            if (auto it = where.find(k); it != where.end()) return it->second;
        return origin_name();
    }

    void validate_cross() const {
        const Config& c = cfg;
        auto s = [](auto v) { return std::to_string(v); };
        if (c.model.n_embd % c.model.n_head != 0)
            fail(at_keys({"model.n_embd", "model.n_head", "model.preset"}),
                 "model.n_embd (" + s(c.model.n_embd) + ") must be divisible by model.n_head (" + s(c.model.n_head) + ")");
        if (c.model.pos_emb == "rope" && (c.model.n_embd / c.model.n_head) % 2 != 0)
            fail(at_keys({"model.pos_emb", "model.n_embd", "model.n_head", "model.preset"}),
                 "model.pos_emb rope needs an even head size, but n_embd / n_head = " + s(c.model.n_embd) + " / " + s(c.model.n_head) + " = " +
                     s(c.model.n_embd / c.model.n_head));
        if (c.run.seq_len > c.model.seq_len)
            fail(at_keys({"run.seq_len", "model.seq_len"}),
                 "run.seq_len (" + s(c.run.seq_len) + ") must be <= model.seq_len (" + s(c.model.seq_len) + ")");
        const long T = train_seq_len(c);
        const long micro = long(c.run.batch_size) * T;
        if (c.run.total_batch_tokens != 0 && c.run.total_batch_tokens % micro != 0)
            fail(at_keys({"run.total_batch_tokens", "run.batch_size", "run.seq_len"}),
                 "run.total_batch_tokens (" + s(c.run.total_batch_tokens) + ") must be 0 or a multiple of run.batch_size * T = " +
                     s(c.run.batch_size) + " * " + s(T) + " = " + s(micro));
        if (c.run.val_seq_len > T)
            fail(at_keys({"run.val_seq_len", "run.seq_len", "model.seq_len"}),
                 "run.val_seq_len (" + s(c.run.val_seq_len) + ") must be <= the training T (" + s(T) + "): validation windows are evaluated in the training rows");
        if (c.run.val_tokens > 0 && c.run.val_tokens % (c.run.val_seq_len > 0 ? c.run.val_seq_len : T) != 0)
            fail(at_keys({"run.val_tokens", "run.val_seq_len"}),
                 "run.val_tokens (" + s(c.run.val_tokens) + ") must be a multiple of the validation window T_val (" +
                     s(c.run.val_seq_len > 0 ? c.run.val_seq_len : T) + ")");
        if (c.run.val_every > 0 && c.run.val_every_tokens > 0)
            fail(at_keys({"run.val_every", "run.val_every_tokens"}),
                 "run.val_every and run.val_every_tokens are both set: evaluations follow one grid, in steps or in tokens");
        if (use == ConfigUse::train && c.run.max_steps <= 0 && c.run.budget_s <= 0)
            fail(at_keys({"run.max_steps", "run.budget_s"}), "run.max_steps and run.budget_s are both 0: the run would never stop (set one of them)");
        const int horizon = c.schedule.steps > 0 ? c.schedule.steps : c.run.max_steps;
        const std::string horizon_from = c.schedule.steps > 0 ? "schedule.steps" : "run.max_steps";
        if (use == ConfigUse::train && c.schedule.type != "constant" && horizon <= 0)
            fail(at_keys({"schedule.type", "schedule.steps", "run.max_steps"}),
                 "schedule.type " + c.schedule.type + " needs a decay horizon: set schedule.steps or run.max_steps");
        if (horizon > 0 && c.schedule.warmup_steps > horizon)
            fail(at_keys({"schedule.warmup_steps"}), "schedule.warmup_steps (" + s(c.schedule.warmup_steps) + ") must be <= the decay horizon (" +
                                                         s(horizon) + ", " + horizon_from + "): set a shorter warm-up, e.g. --set schedule.warmup_steps=" +
                                                         s(horizon / 10));
        if (c.data.source == "shards") {
            if (c.data.train.empty()) fail(at_keys({"data.source"}), "data.source is shards but data.train is empty (a glob of train shards)");
            if (c.data.val.empty()) fail(at_keys({"data.source"}), "data.source is shards but data.val is empty (a glob of val shards)");
        }
        if (c.data.source == "synthetic") {
            const auto& sy = c.data.synthetic;
            if (sy.vocab > c.model.vocab_size)
                fail(at_keys({"data.synthetic.vocab", "model.vocab_size", "model.preset"}),
                     "data.synthetic.vocab (" + s(sy.vocab) + ") must be <= model.vocab_size (" + s(c.model.vocab_size) + ")");
            // Same cap as the chain's table (data/markov.cpp): vocab^(order+1) <= 2^24.
            const double entries = std::pow(double(sy.vocab), double(sy.order) + 1);
            if (entries > double(1 << 24))
                fail(at_keys({"data.synthetic.order", "data.synthetic.vocab"}),
                     "data.synthetic.vocab^(order+1) = " + s(sy.vocab) + "^" + s(int64_t(sy.order) + 1) +
                         " is more than 2^24 transition probabilities: lower data.synthetic.vocab or data.synthetic.order");
        }
        if (c.run.out_dir.empty()) fail(at_keys({"run.out_dir"}), "run.out_dir must not be empty");
        if (c.run.hellaswag_every > 0 && c.run.hellaswag.empty())
            fail(at_keys({"run.hellaswag_every"}), "run.hellaswag_every is set but run.hellaswag (the HellaSwag jsonl) is empty");
    }

    // A run shortened on the command line (--set run.max_steps=5 on a config
    // written for 400 steps) keeps the shape of the file's schedule: a warm-up
    // that no longer fits the new horizon is scaled with it, and a note says
    // so. A warm-up set by --set, or one that does not fit the file's own
    // horizon, is left to validate_cross() to report.
    void fit_warmup(int file_horizon) {
        ScheduleConfig& s = cfg.schedule;
        const int horizon = s.steps > 0 ? s.steps : cfg.run.max_steps;
        const char* horizon_key = s.steps > 0 ? "schedule.steps" : "run.max_steps";
        if (horizon <= 0 || s.warmup_steps <= horizon || file_horizon <= horizon || !set_by_flag(horizon_key) ||
            set_by_flag("schedule.warmup_steps"))
            return;
        const int scaled = static_cast<int>(int64_t(s.warmup_steps) * horizon / file_horizon);
        const auto w = where.find("schedule.warmup_steps");
        notes.push_back("schedule.warmup_steps " + std::to_string(s.warmup_steps) +
                        (w != where.end() ? " (" + w->second + ")" : std::string()) + " does not fit the " + std::to_string(horizon) +
                        "-step horizon of " + where.at(horizon_key) + ": scaled with the horizon to " + std::to_string(scaled) + " (" +
                        std::to_string(s.warmup_steps) + " x " + std::to_string(horizon) + " / " + std::to_string(file_horizon) +
                        "); --set schedule.warmup_steps=N chooses another");
        s.warmup_steps = scaled;
    }

    Config finish(const std::vector<std::string>& overrides) {
        const int file_horizon = cfg.schedule.steps > 0 ? cfg.schedule.steps : cfg.run.max_steps;
        for (const auto& ov : overrides) apply_override(ov);
        apply_preset();
        fit_warmup(file_horizon);
        validate_cross();
        cfg.notes = notes;
        cfg.source = origin;
        return cfg;
    }
};

// ---------------------------------------------------------------------------
// Printing: the schema as a tree of sections, emitted as YAML or JSON.

struct Item {
    std::string name;
    std::string yaml, json;    // the value (leaves)
    std::vector<Item> children;
    bool section = false;
};

Item config_tree(const Config& c) {
    Item root{"", "", "", {}, true};
    for (const auto& k : schema()) {
        Item* node = &root;
        std::string rest = k.key;
        for (auto dot = rest.find('.'); dot != std::string::npos; dot = rest.find('.')) {
            const std::string part = rest.substr(0, dot);
            rest = rest.substr(dot + 1);
            auto it = std::find_if(node->children.begin(), node->children.end(), [&](const Item& i) { return i.name == part; });
            if (it == node->children.end()) {
                node->children.push_back(Item{part, "", "", {}, true});
                it = node->children.end() - 1;
            }
            node = &*it;
        }
        const Field f = field_of(k, c);
        node->children.push_back(Item{rest, field_text(f, false), field_text(f, true), {}, false});
    }
    Item kernels{"kernels", "", "", {}, true};
    for (const auto& [family, variant] : c.kernels) kernels.children.push_back(Item{family, yaml_quote(variant), json_quote(variant), {}, false});
    root.children.push_back(kernels);
    return root;
}

void emit_yaml(const Item& node, int depth, std::string& out) {
    for (const auto& ch : node.children) {
        const std::string indent(size_t(depth) * 2, ' ');
        if (!ch.section) {
            out += indent + ch.name + ": " + ch.yaml + "\n";
        } else {
            if (depth == 0 && !out.empty()) out += "\n";
            if (ch.children.empty()) {
                out += indent + ch.name + ": {}\n";
                continue;
            }
            out += indent + ch.name + ":\n";
            emit_yaml(ch, depth + 1, out);
        }
    }
}

void emit_json(const Item& node, std::string& out) {
    out += "{";
    for (size_t i = 0; i < node.children.size(); i++) {
        const Item& ch = node.children[i];
        if (i) out += ",";
        out += json_quote(ch.name) + ":";
        if (ch.section) emit_json(ch, out);
        else out += ch.json;
    }
    out += "}";
}

}  // namespace

Arch model_arch(const ModelConfig& m) {
    Arch a;
    a.pos = m.pos_emb == "rope" ? PosEmb::rope : PosEmb::learned;
    a.rope_base = m.rope_base;
    a.norm = m.norm == "rmsnorm" ? NormKind::rmsnorm : NormKind::layernorm;
    a.norm_params = m.norm_params;
    a.qk_norm = m.qk_norm;
    a.act = m.activation == "relu2" ? Activation::relu2 : Activation::gelu;
    a.bias = m.bias;
    a.tied_head = m.tied_head;
    a.softcap = m.logit_softcap;
    return a;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides, ConfigUse use) {
    Loader l;
    l.origin = path;
    l.use = use;
    // Without a file or overrides the struct defaults are returned as they are:
    // they are the base every config starts from, not a runnable config (no
    // stop condition), so the checks between keys apply only once something is loaded.
    if (path.empty() && overrides.empty()) return l.cfg;
    if (!path.empty()) l.load_text(read_input(path, "config file", kTextFileLimit));
    return l.finish(overrides);
}

Config parse_config_text(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides, ConfigUse use) {
    Loader l;
    l.origin = origin;
    l.use = use;
    l.load_text(yaml);
    return l.finish(overrides);
}

std::string training_problem(const Config& c) {
    try {
        parse_config_text(config_to_yaml(c), "config");
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

std::string config_to_yaml(const Config& c) {
    std::string out;
    emit_yaml(config_tree(c), 0, out);
    return out;
}

std::string config_to_json(const Config& c) {
    std::string out;
    emit_json(config_tree(c), out);
    return out;
}

std::string config_reference() {
    struct Row {
        std::string key, type, def, help;
    };
    std::vector<Row> rows;
    const Config defaults;
    for (const auto& k : schema()) {
        std::string help = k.help;
        std::vector<std::string> named;
        for (const auto& ch : k.choices)
            if (!ch.empty()) named.push_back(ch);
        if (!named.empty()) help += " (" + join(named, ", ") + ")";
        const std::string range = range_text(k.range);
        if (!range.empty() && k.choices.empty()) help += " (" + range + ")";
        rows.push_back({k.key, type_name(k), field_text(field_of(k, defaults), false), help});
    }
    std::vector<std::string> fams;
    for (const auto& f : kernel_families()) fams.push_back(f.name);
    rows.push_back({"kernels.<family>", "choice", "-", "kernel variant per family (" + join(fams, ", ") + "; see gpt kernels list)"});
    rows.push_back({"kernels.<family>.<param>", "int", "-", "a family's launch parameter (see gpt kernels list)"});

    size_t wk = 0, wt = 0, wd = 0;
    for (const auto& r : rows) wk = std::max(wk, r.key.size()), wt = std::max(wt, r.type.size()), wd = std::max(wd, r.def.size());
    std::string out;
    for (const auto& r : rows) {
        auto pad = [](const std::string& s, size_t w) { return s + std::string(w - s.size() + 2, ' '); };
        out += pad(r.key, wk) + pad(r.type, wt) + pad(r.def, wd) + r.help + "\n";
    }
    return out;
}

}  // namespace gpt
