// The space file parser, its checks, and the constraint expressions.
#include "search/space.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "data/files.h"
#include "data/source.h"
#include "kernels/error.h"
#include "kernels/registry.h"
#include "search/runner.h"
#include "train/yaml_input.h"

namespace fs = std::filesystem;

namespace gpt::search {

// ---------------------------------------------------------------------------
// Constraint expressions: a recursive-descent parser to a small tree.

struct Expr {
    enum class Op { Num, Str, Key, Neg, Not, Add, Sub, Mul, Div, Mod, Eq, Ne, Lt, Le, Gt, Ge, And, Or };
    Op op = Op::Num;
    double num = 0;
    std::string text;  // Str: the literal; Key: the config key
    std::shared_ptr<Expr> a, b;
};

namespace {

struct Value {
    bool is_str = false;
    double num = 0;
    std::string str;
};

class ExprParser {
public:
    ExprParser(const std::string& s, const std::string& where) : s_(s), where_(where) {}

    std::shared_ptr<Expr> parse() {
        auto e = parse_or();
        ws();
        if (i_ != s_.size()) fail("unexpected '" + s_.substr(i_) + "'");
        return e;
    }
    std::vector<std::string> keys;  // every key the expression reads

private:
    const std::string& s_;
    std::string where_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) { bad_input(where_ + ": " + what + " in '" + s_ + "'"); }
    void ws() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) i_++;
    }
    bool eat(const std::string& tok) {
        ws();
        if (s_.compare(i_, tok.size(), tok) == 0) {
            i_ += tok.size();
            return true;
        }
        return false;
    }
    static std::shared_ptr<Expr> node(Expr::Op op, std::shared_ptr<Expr> a, std::shared_ptr<Expr> b = nullptr) {
        auto e = std::make_shared<Expr>();
        e->op = op;
        e->a = std::move(a);
        e->b = std::move(b);
        return e;
    }
    std::shared_ptr<Expr> parse_or() {
        auto e = parse_and();
        while (eat("||")) e = node(Expr::Op::Or, e, parse_and());
        return e;
    }
    std::shared_ptr<Expr> parse_and() {
        auto e = parse_cmp();
        while (eat("&&")) e = node(Expr::Op::And, e, parse_cmp());
        return e;
    }
    std::shared_ptr<Expr> parse_cmp() {
        auto e = parse_add();
        static const std::pair<const char*, Expr::Op> ops[] = {{"==", Expr::Op::Eq}, {"!=", Expr::Op::Ne}, {"<=", Expr::Op::Le},
                                                               {">=", Expr::Op::Ge}, {"<", Expr::Op::Lt},  {">", Expr::Op::Gt}};
        for (const auto& [tok, op] : ops)
            if (eat(tok)) return node(op, e, parse_add());
        return e;
    }
    std::shared_ptr<Expr> parse_add() {
        auto e = parse_mul();
        for (;;) {
            if (eat("+")) e = node(Expr::Op::Add, e, parse_mul());
            else if (eat("-")) e = node(Expr::Op::Sub, e, parse_mul());
            else return e;
        }
    }
    std::shared_ptr<Expr> parse_mul() {
        auto e = parse_unary();
        for (;;) {
            if (eat("*")) e = node(Expr::Op::Mul, e, parse_unary());
            else if (eat("/")) e = node(Expr::Op::Div, e, parse_unary());
            else if (eat("%")) e = node(Expr::Op::Mod, e, parse_unary());
            else return e;
        }
    }
    std::shared_ptr<Expr> parse_unary() {
        if (eat("-")) return node(Expr::Op::Neg, parse_unary());
        ws();
        if (i_ < s_.size() && s_[i_] == '!' && s_.compare(i_, 2, "!=") != 0) {
            i_++;
            return node(Expr::Op::Not, parse_unary());
        }
        return parse_primary();
    }
    std::shared_ptr<Expr> parse_primary() {
        ws();
        if (i_ >= s_.size()) fail("unexpected end");
        auto e = std::make_shared<Expr>();
        const char c = s_[i_];
        if (c == '(') {
            i_++;
            e = parse_or();
            if (!eat(")")) fail("missing ')'");
            return e;
        }
        if (c == '"' || c == '\'') {
            const size_t end = s_.find(c, i_ + 1);
            if (end == std::string::npos) fail("unterminated string");
            e->op = Expr::Op::Str;
            e->text = s_.substr(i_ + 1, end - i_ - 1);
            i_ = end + 1;
            return e;
        }
        if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
            size_t used = 0;
            try {
                e->num = std::stod(s_.substr(i_), &used);
            } catch (...) {
                fail("bad number");
            }
            e->op = Expr::Op::Num;
            i_ += used;
            return e;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t j = i_;
            while (j < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[j])) || s_[j] == '_' || s_[j] == '.')) j++;
            e->op = Expr::Op::Key;
            e->text = s_.substr(i_, j - i_);
            keys.push_back(e->text);
            i_ = j;
            return e;
        }
        fail(std::string("unexpected '") + c + "'");
    }
};

Value eval(const Expr& e, const std::map<std::string, Json>& vars) {
    auto num = [&](const std::shared_ptr<Expr>& x) {
        Value v = eval(*x, vars);
        if (v.is_str) bad_input("constraint: '" + v.str + "' is a string where a number is needed");
        return v.num;
    };
    Value r;
    switch (e.op) {
        case Expr::Op::Num: r.num = e.num; return r;
        case Expr::Op::Str: r.is_str = true; r.str = e.text; return r;
        case Expr::Op::Key: {
            auto it = vars.find(e.text);
            if (it == vars.end()) bad_input("constraint: unknown key '" + e.text + "'");
            if (it->second.is_string()) { r.is_str = true; r.str = it->second.str; }
            else if (it->second.type == Json::Type::Bool) r.num = it->second.b;
            else r.num = it->second.num;
            return r;
        }
        case Expr::Op::Neg: r.num = -num(e.a); return r;
        case Expr::Op::Not: r.num = num(e.a) == 0; return r;
        case Expr::Op::Add: r.num = num(e.a) + num(e.b); return r;
        case Expr::Op::Sub: r.num = num(e.a) - num(e.b); return r;
        case Expr::Op::Mul: r.num = num(e.a) * num(e.b); return r;
        case Expr::Op::Div: r.num = num(e.a) / num(e.b); return r;
        case Expr::Op::Mod: r.num = std::fmod(num(e.a), num(e.b)); return r;
        case Expr::Op::And: r.num = num(e.a) != 0 && num(e.b) != 0; return r;
        case Expr::Op::Or: r.num = num(e.a) != 0 || num(e.b) != 0; return r;
        default: break;
    }
    const Value a = eval(*e.a, vars), b = eval(*e.b, vars);
    int cmp;
    if (a.is_str || b.is_str) {
        const std::string as = a.is_str ? a.str : number_text(a.num), bs = b.is_str ? b.str : number_text(b.num);
        cmp = as < bs ? -1 : as > bs ? 1 : 0;
    } else {
        cmp = a.num < b.num ? -1 : a.num > b.num ? 1 : 0;
    }
    switch (e.op) {
        case Expr::Op::Eq: r.num = cmp == 0; break;
        case Expr::Op::Ne: r.num = cmp != 0; break;
        case Expr::Op::Lt: r.num = cmp < 0; break;
        case Expr::Op::Le: r.num = cmp <= 0; break;
        case Expr::Op::Gt: r.num = cmp > 0; break;
        default: r.num = cmp >= 0; break;
    }
    return r;
}

// ---------------------------------------------------------------------------
// YAML helpers: every error names the file, line and key.

std::string at(const std::string& origin, const YAML::Node& n) {
    const auto m = n.Mark();
    return m.line >= 0 ? origin + ":" + std::to_string(m.line + 1) : origin;
}

std::string scalar(const std::string& origin, const std::string& key, const YAML::Node& n) {
    if (!n.IsScalar()) bad_input(at(origin, n) + ": " + key + ": expected a single value");
    return n.Scalar();
}

double to_double(const std::string& origin, const std::string& key, const YAML::Node& n) {
    const std::string s = scalar(origin, key, n);
    try {
        size_t used;
        const double v = std::stod(s, &used);
        if (used == s.size() && std::isfinite(v)) return v;
    } catch (...) {
    }
    bad_input(at(origin, n) + ": " + key + ": expected a number, got '" + s + "'");
}

int to_int(const std::string& origin, const std::string& key, const YAML::Node& n) {
    const double v = to_double(origin, key, n);
    if (v != std::floor(v) || std::fabs(v) > 2e9) bad_input(at(origin, n) + ": " + key + ": expected an integer, got '" + n.Scalar() + "'");
    return static_cast<int>(v);
}

bool to_bool(const std::string& origin, const std::string& key, const YAML::Node& n) {
    const std::string s = scalar(origin, key, n);
    if (s == "true" || s == "yes" || s == "1") return true;
    if (s == "false" || s == "no" || s == "0") return false;
    bad_input(at(origin, n) + ": " + key + ": expected true or false, got '" + s + "'");
}

std::string valid_list(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

void check_keys(const std::string& origin, const YAML::Node& map, const std::string& section, const std::vector<std::string>& valid) {
    if (!map.IsMap()) bad_input(at(origin, map) + ": " + section + ": expected a map");
    for (const auto& kv : map) {
        const std::string k = kv.first.Scalar();
        if (std::find(valid.begin(), valid.end(), k) == valid.end())
            bad_input(at(origin, kv.first) + ": unknown key '" + (section.empty() ? k : section + "." + k) + "' (valid: " + valid_list(valid) + ")");
    }
}

std::string text_of_number(double v, bool integer) {
    if (integer) return number_text(std::round(v));
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

}  // namespace

// ---------------------------------------------------------------------------

bool cost_neutral_key(const std::string& key) {
    // Each changes only numbers a step computes with, never which work a step
    // does: the same kernels run on the same shapes. Kept short on purpose; a
    // key missing here is judged by time, which is always fair, only noisier.
    static const std::set<std::string> keys = {
        "optim.lr",          "optim.embed_lr",      "optim.head_lr",         "optim.beta1",          "optim.beta2",
        "optim.eps",         "optim.muon_lr",       "optim.muon_momentum",   "schedule.type",        "schedule.warmup_steps",
        "schedule.steps",    "schedule.final_lr_frac", "schedule.decay_frac", "model.init",          "model.head_init_std",
        "model.zero_init_proj", "model.rope_base"};
    return keys.count(key) > 0;
}

std::string judging_rule(const Settings& s, const Overrides& diff) {
    if (diff.empty()) return "paired";
    bool kernel_only = true, neutral = true;
    for (const auto& [k, v] : diff) {
        const bool kernel = k.rfind("kernels.", 0) == 0;
        const size_t dot = k.find('.', 8);
        const KernelFamily* f = kernel ? find_kernel_family(k.substr(8, dot == std::string::npos ? std::string::npos : dot - 8)) : nullptr;
        if (!f || !f->same_arithmetic) kernel_only = false;
        if (!cost_neutral_key(k)) neutral = false;
    }
    if (kernel_only) return "kernel";
    if (neutral && s.tokens_rule && s.objective == "time_to_target") return "tokens";
    return "paired";
}

std::string protected_reason(const std::string& key) {
    for (const char* section : {"model.", "optim.", "schedule.", "kernels."})
        if (key.rfind(section, 0) == 0) return "";
    if (key == "run.batch_size" || key == "run.total_batch_tokens" || key == "run.seq_len") return "";
    const std::string only =
        " (only model.*, optim.*, schedule.*, kernels.* and the batch keys run.batch_size, run.total_batch_tokens, run.seq_len may be dimensions)";
    if (key.rfind("data.", 0) == 0) return "the data (train, val, tokenizer, synthetic source) define the task, which the search owns: set it in base" + only;
    if (key == "run.budget_s") return "the budget is the search's: search.budget_s" + only;
    if (key == "run.target_val_loss" || key == "run.target_metric") return "the target is the search's: search.target_val_loss, and run.target_metric in base" + only;
    if (key == "run.val_every" || key == "run.val_every_tokens" || key == "run.val_batches" || key == "run.val_tokens" || key == "run.val_seq_len")
        return "the evaluation protocol is the search's, the same for every trial: search.val_tokens, search.val_seq_len, search.eval_every_tokens" + only;
    if (key == "run.step_clock") return "the clock is part of the measurement, the same for every trial" + only;
    if (key == "run.seed") return "seeds are the search's: each pair of runs gets a fresh one" + only;
    if (key == "run.warmup_pass") return "the warm-up is part of the measurement protocol, the same for every trial" + only;
    if (key == "run.max_steps") return "a step limit would end trials before the budget; the search stops trials by search.budget_s" + only;
    if (key == "run.out_dir" || key == "run.checkpoint_every") return "output paths and checkpoints are the search's" + only;
    if (key == "run.log_every" || key == "run.sample_every" || key == "run.sample_tokens") return "logging and samples are the search's" + only;
    if (key.rfind("run.", 0) == 0) return "the machine setup (backend, threads, data-parallel options) is the same for every trial" + only;
    return "not a config key the search may change" + only;
}

namespace {

// The search's evaluation protocol, folded into the base config so that every
// trial (base + overrides) and best.yaml evaluate the same way: a fixed
// validation set (val_tokens tokens in windows of val_seq_len), evaluations on
// a grid of tokens, the median step clock. Unset settings come from the base.
void apply_protocol(Config& cfg, Settings& s, const std::string& origin, const std::map<std::string, std::string>& where) {
    auto loc = [&](const std::string& key) { return where.count(key) ? where.at(key) : origin; };
    const int T = train_seq_len(cfg);
    const int T_val = s.val_seq_len > 0 ? s.val_seq_len : cfg.run.val_seq_len > 0 ? cfg.run.val_seq_len : T;
    if (T_val > T)
        bad_input(loc("search.val_seq_len") + ": search.val_seq_len (" + std::to_string(T_val) + ") must be <= the base's training T (" +
                  std::to_string(T) + ")");
    long val_tokens = s.val_tokens > 0 ? s.val_tokens : cfg.run.val_tokens;
    if (val_tokens <= 0) val_tokens = std::max<long>(T_val, long(cfg.run.val_batches) * cfg.run.batch_size * T / T_val * T_val);
    if (val_tokens % T_val != 0)
        bad_input(loc("search.val_tokens") + ": search.val_tokens (" + std::to_string(val_tokens) + ") must be a multiple of the validation window (" +
                  std::to_string(T_val) + ", search.val_seq_len)");
    long every = s.eval_every_tokens > 0 ? s.eval_every_tokens : cfg.run.val_every_tokens;
    if (every <= 0 && cfg.run.val_every > 0) {
        const long per_step = cfg.run.total_batch_tokens > 0 ? cfg.run.total_batch_tokens : long(cfg.run.batch_size) * T * s.ranks_per_trial;
        every = long(cfg.run.val_every) * per_step;
    }
    cfg.run.val_seq_len = T_val;
    cfg.run.val_tokens = val_tokens;
    cfg.run.val_every = 0;
    cfg.run.val_every_tokens = std::max<long>(0, every);
    // The clock: on a CPU with one thread per trial, the CPU time of each step,
    // which other processes on a shared machine barely move; else the median
    // wall time of a step, which pauses do not move.
    cfg.run.step_clock = resolved_backend(cfg) == "cpu" && cfg.run.threads == 1 ? "cpu" : "median";
}

}  // namespace

double Dimension::to_unit(const std::string& value) const {
    if (kind == Kind::Choice) {
        auto it = std::find(choices.begin(), choices.end(), value);
        if (it == choices.end() || choices.size() < 2) return 0;
        return double(it - choices.begin()) / double(choices.size() - 1);
    }
    double v = lo;
    try {
        v = std::stod(value);
    } catch (...) {
    }
    const double u = log ? (std::log(std::max(v, 1e-300)) - std::log(lo)) / (std::log(hi) - std::log(lo)) : (v - lo) / (hi - lo);
    return std::clamp(u, 0.0, 1.0);
}

std::string Dimension::from_unit(double u) const {
    u = std::clamp(u, 0.0, 1.0);
    if (kind == Kind::Choice) return choices[static_cast<size_t>(std::lround(u * double(choices.size() - 1)))];
    const double v = log ? std::exp(std::log(lo) + u * (std::log(hi) - std::log(lo))) : lo + u * (hi - lo);
    return text_of_number(std::clamp(v, lo, hi), kind == Kind::Int);
}

namespace {
std::optional<double> strict_number(const std::string& s) {
    try {
        size_t used = 0;
        const double v = std::stod(s, &used);
        if (used == s.size() && std::isfinite(v)) return v;
    } catch (...) {
    }
    return std::nullopt;
}
}  // namespace

std::optional<std::string> Dimension::canonical(const std::string& value) const {
    if (kind == Kind::Choice) {
        for (const auto& c : choices)
            if (c == value) return c;
        if (const auto v = strict_number(value))
            for (const auto& c : choices)
                if (const auto cv = strict_number(c); cv && *cv == *v) return c;
        return std::nullopt;
    }
    const auto v = strict_number(value);
    if (!v) return std::nullopt;
    return kind == Kind::Int ? text_of_number(*v, true) : value;
}

const Dimension* Space::dim(const std::string& key) const {
    for (const auto& d : dims)
        if (d.key == key) return &d;
    return nullptr;
}

Json Space::to_json() const {
    Json dj = Json::object();
    for (const auto& d : dims) {
        Json j = Json::object();
        if (d.kind == Dimension::Kind::Choice) {
            Json c = Json::array();
            for (const auto& v : d.choices) c.push(v);
            j.set("type", "choice");
            j.set("choices", c);
        } else {
            j.set("type", d.kind == Dimension::Kind::Int ? "int" : "float");
            j.set("min", d.lo);
            j.set("max", d.hi);
            j.set("scale", d.log ? "log" : "linear");
        }
        dj.set(d.key, j);
    }
    Json cj = Json::array();
    for (const auto& c : constraints) cj.push(c.text);
    const Settings& s = settings;
    Json sj = Json::object();
    sj.set("objective", s.objective);
    sj.set("target_val_loss", s.target_val_loss);
    sj.set("target_metric", s.target_metric);
    sj.set("step_clock", s.step_clock);
    sj.set("budget_s", s.budget_s);
    sj.set("grace_s", s.grace_s);
    sj.set("strategy", s.strategy);
    sj.set("max_trials", s.max_trials);
    sj.set("baseline_repeats", s.baseline_repeats);
    sj.set("min_gain", s.min_gain);
    sj.set("mutations", s.mutations);
    sj.set("seed", s.seed);
    sj.set("time_limit_s", s.time_limit_s);
    sj.set("parallel", s.parallel);
    sj.set("ranks_per_trial", s.ranks_per_trial);
    if (!s.proposer.empty()) sj.set("proposer", s.proposer);
    Json h = Json::object();
    h.set("eta", s.halving_eta);
    h.set("candidates", s.halving_candidates);
    h.set("rungs", s.halving_rungs);
    sj.set("halving", h);
    sj.set("autotune", s.autotune);
    sj.set("kernel_steps", s.kernel_steps);
    sj.set("kernel_timed_steps", s.kernel_timed_steps);
    sj.set("kernel_tolerance", s.kernel_tolerance);
    sj.set("val_tokens", double(s.val_tokens));
    sj.set("val_seq_len", s.val_seq_len);
    sj.set("eval_every_tokens", double(s.eval_every_tokens));
    sj.set("false_keep", s.false_keep);
    sj.set("min_pairs", s.min_pairs);
    sj.set("max_pairs", s.max_pairs);
    sj.set("prune", s.prune);
    sj.set("tokens_rule", s.tokens_rule);
    Json j = Json::object();
    j.set("dimensions", dj);
    j.set("constraints", cj);
    j.set("settings", sj);
    return j;
}

std::map<std::string, Json> flat_config(const Config& cfg) {
    std::map<std::string, Json> out;
    const Json root = parse_json(config_to_json(cfg));
    auto walk = [&](auto&& self, const Json& node, const std::string& prefix) -> void {
        for (const auto& [k, v] : node.obj) {
            const std::string key = prefix.empty() ? k : prefix + "." + k;
            if (v.is_object()) self(self, v, key);
            else out[key] = v;
        }
    };
    walk(walk, root, "");
    // Kernel choices the config leaves unset are the registry's defaults.
    for (const auto& f : kernel_families()) {
        if (!out.count("kernels." + f.name)) out["kernels." + f.name] = Json(f.variants.front());
        for (const auto& p : f.params)
            if (!out.count("kernels." + f.name + "." + p.name)) out["kernels." + f.name + "." + p.name] = Json(p.values.front());
    }
    return out;
}

std::string overrides_text(const Overrides& ov) {
    std::string s;
    for (const auto& [k, v] : ov) s += (s.empty() ? "" : ", ") + k + "=" + v;
    return s.empty() ? "(base)" : s;
}

Config candidate_config(const Space& space, const Overrides& ov) {
    std::vector<std::string> sets;
    for (const auto& [k, v] : ov) sets.push_back(k + "=" + v);
    return parse_config_text(space.base_yaml, space.origin + " (base)", sets);
}

std::optional<std::string> violated_constraint(const Space& space, const Config& cfg) {
    const auto vars = flat_config(cfg);
    for (const auto& c : space.constraints)
        if (eval(*c.expr, vars).num == 0) return c.text;
    return std::nullopt;
}

Space load_space(const std::string& path, const std::string& base_yaml_override) {
    const std::string text = read_input(path, "search space file", kTextFileLimit);
    const std::string dir = fs::path(path).parent_path().string();
    return parse_space(text, path, dir.empty() ? "." : dir, base_yaml_override);
}

Space parse_space(const std::string& text, const std::string& origin, const std::string& base_dir, const std::string& base_yaml_override) {
    Space sp;
    sp.origin = origin;
    sp.text = text;
    YAML::Node root;
    try {
        const YamlDocument doc = load_yaml_document(text, origin);
        if (doc.has_second)
            bad_input(origin + (doc.second.is_null() ? "" : ":" + std::to_string(doc.second.line + 1)) +
                      ": content after the first YAML document: a search space file is one document");
        root = doc.root;
    } catch (const YAML::Exception& e) {
        bad_input(origin + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
    }
    if (!root.IsMap()) bad_input(origin + ": expected a map with sections base, search, space, constraints");
    check_keys(origin, root, "", {"base", "search", "space", "constraints"});

    // search
    Settings& s = sp.settings;
    std::map<std::string, std::string> where;  // setting -> "file:line", for the checks below
    if (const YAML::Node sn = root["search"]) {
        check_keys(origin, sn, "search",
                   {"objective", "target_val_loss", "budget_s", "grace_s", "strategy", "max_trials", "time_limit_s", "baseline_repeats",
                    "min_gain", "mutations", "seed", "parallel", "ranks_per_trial", "proposer", "halving", "autotune", "kernel_steps", "kernel_timed_steps",
                    "kernel_tolerance", "val_tokens", "val_seq_len", "eval_every_tokens", "false_keep", "min_pairs", "max_pairs", "prune", "tokens_rule"});
        for (const auto& kv : sn) {
            const std::string k = kv.first.Scalar(), key = "search." + k;
            const YAML::Node& v = kv.second;
            where[key] = at(origin, v);
            if (k == "objective") s.objective = scalar(origin, key, v);
            else if (k == "target_val_loss") s.target_val_loss = to_double(origin, key, v);
            else if (k == "budget_s") s.budget_s = to_double(origin, key, v);
            else if (k == "grace_s") s.grace_s = to_double(origin, key, v);
            else if (k == "strategy") s.strategy = scalar(origin, key, v);
            else if (k == "max_trials") s.max_trials = to_int(origin, key, v);
            else if (k == "time_limit_s") s.time_limit_s = to_double(origin, key, v);
            else if (k == "baseline_repeats") s.baseline_repeats = to_int(origin, key, v);
            else if (k == "min_gain") s.min_gain = to_double(origin, key, v);
            else if (k == "mutations") s.mutations = to_int(origin, key, v);
            else if (k == "seed") s.seed = to_int(origin, key, v);
            else if (k == "parallel") s.parallel = to_int(origin, key, v);
            else if (k == "ranks_per_trial") s.ranks_per_trial = to_int(origin, key, v);
            else if (k == "proposer") s.proposer = scalar(origin, key, v);
            else if (k == "autotune") s.autotune = to_bool(origin, key, v);
            else if (k == "kernel_steps") s.kernel_steps = to_int(origin, key, v);
            else if (k == "kernel_tolerance") s.kernel_tolerance = to_double(origin, key, v);
            else if (k == "kernel_timed_steps") s.kernel_timed_steps = to_int(origin, key, v);
            else if (k == "val_tokens") s.val_tokens = to_int(origin, key, v);
            else if (k == "val_seq_len") s.val_seq_len = to_int(origin, key, v);
            else if (k == "eval_every_tokens") s.eval_every_tokens = to_int(origin, key, v);
            else if (k == "false_keep") s.false_keep = to_double(origin, key, v);
            else if (k == "min_pairs") s.min_pairs = to_int(origin, key, v);
            else if (k == "max_pairs") s.max_pairs = to_int(origin, key, v);
            else if (k == "prune") s.prune = to_bool(origin, key, v);
            else if (k == "tokens_rule") s.tokens_rule = to_bool(origin, key, v);
            else if (k == "halving") {
                check_keys(origin, v, "search.halving", {"eta", "candidates", "rungs"});
                for (const auto& h : v) {
                    const std::string hk = h.first.Scalar(), hkey = "search.halving." + hk;
                    const int n = to_int(origin, hkey, h.second);
                    if (hk == "eta") s.halving_eta = n;
                    else if (hk == "candidates") s.halving_candidates = n;
                    else s.halving_rungs = n;
                    if (n < (hk == "eta" ? 2 : 1)) bad_input(at(origin, h.second) + ": " + hkey + " must be >= " + (hk == "eta" ? "2" : "1"));
                }
            }
        }
    }
    // base
    if (!base_yaml_override.empty()) {
        sp.base_yaml = base_yaml_override;
    } else {
        const YAML::Node base = root["base"];
        if (!base) bad_input(origin + ": missing section 'base' (base.file: a config file, or base.config: inline sections)");
        check_keys(origin, base, "base", {"file", "config", "set"});
        // Every trial runs with the search's budget: the base is checked with it.
        std::vector<std::string> sets = {"run.budget_s=" + number_text(s.budget_s)};
        if (const YAML::Node set = base["set"]) {
            if (set.IsMap()) {
                for (const auto& kv : set) sets.push_back(kv.first.Scalar() + "=" + scalar(origin, "base.set." + kv.first.Scalar(), kv.second));
            } else if (set.IsSequence()) {
                for (const auto& s : set) sets.push_back(scalar(origin, "base.set", s));
            } else {
                bad_input(at(origin, set) + ": base.set: expected a map of key: value");
            }
        }
        Config cfg;
        try {
            if (base["file"] && base["config"]) bad_input(at(origin, base) + ": base: give file or config, not both");
            if (base["file"]) {
                // Relative to the current directory, like every path gpt train reads.
                const std::string file = scalar(origin, "base.file", base["file"]);
                if (!fs::exists(file)) {
                    const fs::path beside = fs::path(base_dir) / file;
                    bad_input(at(origin, base["file"]) + ": base.file: no such file '" + file + "' (relative paths are relative to the current directory" +
                              (fs::path(file).is_relative() && fs::exists(beside) ? ", not to the space file: did you mean '" + beside.string() + "'?)" : ")"));
                }
                cfg = load_config(file, sets);
            } else if (base["config"]) {
                YAML::Emitter em;
                em << base["config"];
                cfg = parse_config_text(em.c_str(), origin + " (base.config)", sets);
            } else {
                bad_input(at(origin, base) + ": base: needs file (a config file) or config (inline sections)");
            }
        } catch (const Error& e) {
            bad_input(origin + ": base: " + e.what());
        }
        // Data paths are relative to the current directory (as for gpt train);
        // the journal keeps them absolute so that --resume works from anywhere.
        for (std::string* path : {&cfg.data.train, &cfg.data.val, &cfg.data.tokenizer})
            if (!path->empty() && fs::path(*path).is_relative()) *path = (fs::current_path() / *path).lexically_normal().string();
        apply_protocol(cfg, s, origin, where);
        sp.base_yaml = config_to_yaml(cfg);
    }
    Config base_cfg;
    try {
        base_cfg = parse_config_text(sp.base_yaml, origin + " (base)");
    } catch (const Error& e) {
        bad_input(origin + ": base: " + e.what());
    }

    // The protocol as the base config holds it (also for a resumed search).
    s.val_tokens = base_cfg.run.val_tokens;
    s.val_seq_len = base_cfg.run.val_seq_len;
    s.eval_every_tokens = base_cfg.run.val_every_tokens;
    s.target_metric = base_cfg.run.target_metric;
    s.step_clock = base_cfg.run.step_clock;

    auto need = [&](bool ok, const std::string& key, const std::string& what) {
        if (!ok) bad_input((where.count(key) ? where[key] : origin) + ": " + key + " " + what);
    };
    need(s.objective == "time_to_target" || s.objective == "loss_at_budget", "search.objective",
         "must be time_to_target or loss_at_budget, got '" + s.objective + "'");
    need(s.strategy == "hill_climb" || s.strategy == "halving" || s.strategy == "random" || s.strategy == "evolution" ||
             s.strategy == "external",
         "search.strategy", "must be one of hill_climb, halving, random, evolution, external, got '" + s.strategy + "'");
    need(s.budget_s > 0, "search.budget_s", "must be > 0");
    need(s.grace_s >= 0, "search.grace_s", "must be >= 0");
    need(s.max_trials >= 1, "search.max_trials", "must be >= 1");
    need(s.time_limit_s >= 0, "search.time_limit_s", "must be >= 0");
    need(s.baseline_repeats >= 1, "search.baseline_repeats", "must be >= 1");
    need(s.min_gain >= 0 && s.min_gain < 1, "search.min_gain", "must be in [0, 1)");
    need(s.mutations >= 1, "search.mutations", "must be >= 1");
    need(s.parallel >= 0, "search.parallel", "must be >= 0 (0 = one per CUDA device)");
    need(s.ranks_per_trial >= 1, "search.ranks_per_trial", "must be >= 1");
    need(s.kernel_steps >= 1, "search.kernel_steps", "must be >= 1");
    need(s.kernel_timed_steps >= 3, "search.kernel_timed_steps", "must be >= 3");
    need(s.kernel_tolerance > 0, "search.kernel_tolerance", "must be > 0");
    need(s.strategy != "external" || !s.proposer.empty(), "search.proposer", "is needed by strategy external (the command to run)");
    need(s.false_keep > 0 && s.false_keep < 0.5, "search.false_keep", "must be in (0, 0.5)");
    need(s.min_pairs >= 2, "search.min_pairs", "must be >= 2 (one pair cannot measure its own noise)");
    need(s.max_pairs >= s.min_pairs, "search.max_pairs", "must be >= search.min_pairs (" + std::to_string(s.min_pairs) + ")");
    if (s.objective == "time_to_target") {
        need(s.target_val_loss > 0, "search.target_val_loss", "must be > 0 for objective time_to_target");
        need(s.eval_every_tokens > 0, "search.eval_every_tokens",
             "must be > 0 for objective time_to_target (time to target is interpolated between evaluations; or give the base run.val_every)");
        // A target below what any model can reach would make every trial a miss.
        if (base_cfg.run.target_metric == "val_loss") {
            std::optional<double> floor;
            try {
                floor = make_data_source(base_cfg, Split::val, 1, s.val_seq_len)->loss_floor();
            } catch (const Error&) {
                // An unreadable data set is reported by the first trial, with the trainer's message.
            }
            need(!floor || s.target_val_loss > *floor, "search.target_val_loss",
                 "(" + number_text(s.target_val_loss) + ") is not above the loss floor of the validation data (" + number_text(floor.value_or(0)) +
                     " nats/token at T=" + std::to_string(s.val_seq_len) + ", the exact entropy of the source): no model can reach it");
        }
    }

    // space
    const YAML::Node spn = root["space"];
    if (!spn || !spn.IsMap() || spn.size() == 0) bad_input(origin + ": section 'space' needs at least one dimension (key: {choices: [...]} or {float: [lo, hi]})");
    for (const auto& kv : spn) {
        Dimension d;
        d.key = kv.first.Scalar();
        const std::string key = "space." + d.key;
        const YAML::Node& v = kv.second;
        if (const std::string why = protected_reason(d.key); !why.empty())
            bad_input(at(origin, kv.first) + ": " + key + ": '" + d.key + "' may not be a dimension: " + why);
        check_keys(origin, v, key, {"choices", "int", "float", "scale"});
        const int kinds = int(bool(v["choices"])) + int(bool(v["int"])) + int(bool(v["float"]));
        if (kinds != 1) bad_input(at(origin, v) + ": " + key + ": give exactly one of choices: [...], int: [lo, hi], float: [lo, hi]");
        // Kernel keys are checked against the registry here, for a message that lists the variants.
        const bool kernel = d.key.rfind("kernels.", 0) == 0;
        const KernelFamily* fam = nullptr;
        const KernelParam* par = nullptr;
        if (kernel) {
            const std::string rest = d.key.substr(8);
            const std::string fname = rest.substr(0, rest.find('.'));
            fam = find_kernel_family(fname);
            if (!fam) {
                std::vector<std::string> names;
                for (const auto& f : kernel_families()) names.push_back(f.name);
                bad_input(at(origin, kv.first) + ": " + key + ": no kernel family '" + fname + "' (valid: " + valid_list(names) + ")");
            }
            if (rest.find('.') != std::string::npos) {
                const std::string pname = rest.substr(rest.find('.') + 1);
                for (const auto& p : fam->params)
                    if (p.name == pname) par = &p;
                if (!par) bad_input(at(origin, kv.first) + ": " + key + ": kernel family '" + fname + "' has no parameter '" + pname + "'");
            }
        }
        if (v["choices"]) {
            d.kind = Dimension::Kind::Choice;
            const YAML::Node c = v["choices"];
            if (c.IsScalar() && c.Scalar() == "registry") {
                if (!fam) bad_input(at(origin, c) + ": " + key + ": choices: registry is only for kernels.* keys");
                if (par)
                    for (int pv : par->values) d.choices.push_back(std::to_string(pv));
                else
                    d.choices = fam->variants;
            } else {
                if (!c.IsSequence() || c.size() == 0) bad_input(at(origin, c) + ": " + key + ".choices: expected a non-empty list (or 'registry' for kernels.*)");
                for (const auto& x : c) d.choices.push_back(scalar(origin, key + ".choices", x));
            }
            if (fam && !par)
                for (const auto& ch : d.choices)
                    if (std::find(fam->variants.begin(), fam->variants.end(), ch) == fam->variants.end())
                        bad_input(at(origin, c) + ": " + key + ": '" + ch + "' is not a variant of kernel family '" + fam->name +
                                  "' (valid: " + valid_list(fam->variants) + ")");
            if (v["scale"]) bad_input(at(origin, v["scale"]) + ": " + key + ".scale: only for int and float ranges");
        } else {
            d.kind = v["int"] ? Dimension::Kind::Int : Dimension::Kind::Float;
            const YAML::Node r = v["int"] ? v["int"] : v["float"];
            const std::string rkey = key + (v["int"] ? ".int" : ".float");
            if (!r.IsSequence() || r.size() != 2) bad_input(at(origin, r) + ": " + rkey + ": expected [lo, hi]");
            d.lo = to_double(origin, rkey, r[0]);
            d.hi = to_double(origin, rkey, r[1]);
            if (d.kind == Dimension::Kind::Int && (d.lo != std::floor(d.lo) || d.hi != std::floor(d.hi)))
                bad_input(at(origin, r) + ": " + rkey + ": bad range: bounds must be integers");
            if (!(d.lo < d.hi)) bad_input(at(origin, r) + ": " + rkey + ": bad range [" + r[0].Scalar() + ", " + r[1].Scalar() + "]: lo must be < hi");
            if (v["scale"]) {
                const std::string sc = scalar(origin, key + ".scale", v["scale"]);
                if (sc != "log" && sc != "linear") bad_input(at(origin, v["scale"]) + ": " + key + ".scale: must be log or linear, got '" + sc + "'");
                d.log = sc == "log";
            }
            if (d.log && d.lo <= 0) bad_input(at(origin, r) + ": " + rkey + ": bad range: a log scale needs lo > 0");
        }
        if (sp.dim(d.key)) bad_input(at(origin, kv.first) + ": " + key + ": given twice");
        // Every value the dimension can take must be one the config accepts for the key.
        std::vector<std::string> probes = d.kind == Dimension::Kind::Choice ? d.choices
                                                                            : std::vector<std::string>{d.from_unit(0), d.from_unit(0.5), d.from_unit(1)};
        for (const auto& p : probes) {
            try {
                parse_config_text(sp.base_yaml, origin + " (base)", {d.key + "=" + p});
            } catch (const Error& e) {
                bad_input(at(origin, kv.first) + ": " + key + ": value '" + p + "' is not valid for the config: " + e.what());
            }
        }
        sp.dims.push_back(std::move(d));
    }

    // constraints
    if (const YAML::Node cn = root["constraints"]) {
        if (!cn.IsSequence()) bad_input(at(origin, cn) + ": constraints: expected a list of expressions");
        const auto vars = flat_config(base_cfg);
        for (size_t i = 0; i < cn.size(); i++) {
            const std::string where = at(origin, cn[i]) + ": constraints[" + std::to_string(i) + "]";
            Constraint c;
            c.text = scalar(origin, "constraints[" + std::to_string(i) + "]", cn[i]);
            ExprParser p(c.text, where);
            c.expr = p.parse();
            for (const auto& k : p.keys)
                if (!vars.count(k)) bad_input(where + ": unknown key '" + k + "' in '" + c.text + "'");
            if (eval(*c.expr, vars).num == 0) bad_input(where + ": the base config violates '" + c.text + "'");
            sp.constraints.push_back(std::move(c));
        }
    }
    return sp;
}

}  // namespace gpt::search
