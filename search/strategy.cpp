#include "search/strategy.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "data/files.h"
#include "kernels/error.h"
#include "search/journal.h"
#include "search/trial.h"

namespace gpt::search {

namespace {

double uniform(Rng& rng, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

// The value a dimension has in a config: its override, else the config's own.
std::string current_value(const Dimension& d, const Overrides& ov, const std::map<std::string, Json>& flat) {
    auto it = ov.find(d.key);
    if (it != ov.end()) return it->second;
    auto f = flat.find(d.key);
    return f == flat.end() ? "" : f->second.scalar_text();
}

bool same_value(const Dimension& d, const std::string& a, const std::string& b) {
    if (d.kind == Dimension::Kind::Choice) return a == b;
    try {
        return std::fabs(std::stod(a) - std::stod(b)) <= 1e-12 * std::max(1.0, std::fabs(std::stod(b)));
    } catch (...) {
        return a == b;
    }
}

}  // namespace

Overrides mutate(const Space& space, const Overrides& from, const Config& from_cfg, int max_mutations, Rng& rng) {
    const auto flat = flat_config(from_cfg);
    Overrides out = from;
    std::vector<size_t> order(space.dims.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    const int n = std::min<int>(int(order.size()), 1 + int(rng() % uint64_t(std::max(1, max_mutations))));
    int changed = 0;
    for (size_t i : order) {
        if (changed == n) break;
        const Dimension& d = space.dims[i];
        const std::string old = current_value(d, from, flat);
        std::string v;
        for (int attempt = 0; attempt < 8; attempt++) {
            if (d.kind == Dimension::Kind::Choice) {
                v = d.choices[rng() % d.choices.size()];
            } else {
                const double step = uniform(rng, 0.1, 0.35) * ((rng() & 1) ? 1.0 : -1.0);
                double u = d.to_unit(old) + step;
                if (u < 0 || u > 1) u = d.to_unit(old) - step;  // bounce off the edge
                v = d.from_unit(u);
            }
            if (!same_value(d, v, old)) break;
        }
        if (same_value(d, v, old)) continue;
        out[d.key] = v;
        changed++;
    }
    return out;
}

Overrides sample_random(const Space& space, Rng& rng) {
    Overrides out;
    for (const auto& d : space.dims)
        out[d.key] = d.kind == Dimension::Kind::Choice ? d.choices[rng() % d.choices.size()] : d.from_unit(uniform(rng, 0, 1));
    return repair_draw(space, out, rng);
}

Overrides repair_draw(const Space& space, Overrides draw, Rng& rng) {
    // Whether a constraint's text names a key (whole names: model.rope_base is not model.rope_base2).
    auto names = [](const std::string& text, const std::string& key) {
        auto part = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; };
        for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1))
            if ((at == 0 || !part(text[at - 1])) && (at + key.size() == text.size() || !part(text[at + key.size()]))) return true;
        return false;
    };
    // Each pass drops one override: at most draw.size() passes.
    for (size_t pass = 0, n = draw.size(); pass <= n; pass++) {
        std::optional<std::string> broken;
        try {
            broken = violated_constraint(space, candidate_config(space, draw));
        } catch (const Error&) {
            return draw;
        }
        if (!broken) return draw;
        std::vector<std::string> keys;
        for (const auto& [k, v] : draw)
            if (names(*broken, k)) keys.push_back(k);
        if (keys.empty()) return draw;
        draw.erase(keys[rng() % keys.size()]);
    }
    return draw;
}

Overrides crossover(const Space& space, const Overrides& a, const Overrides& b, Rng& rng) {
    Overrides out = a;
    for (const auto& d : space.dims) {
        if (!(rng() & 1)) continue;
        auto it = b.find(d.key);
        if (it != b.end()) out[d.key] = it->second;
        else out.erase(d.key);
    }
    return out;
}

Json run_proposer(const std::string& command, const Json& request, const std::string& work_dir, const std::string& tag, double timeout_s) {
    const std::string in = work_dir + "/" + tag + ".request.json", out = work_dir + "/" + tag + ".answer.json",
                      err = work_dir + "/" + tag + ".stderr.txt";
    write_file_atomic(in, request.dump() + "\n");
    ChildSpec spec;
    spec.argv = {"/bin/sh", "-c", command + " < '" + in + "'"};
    spec.stdout_path = out;
    spec.stderr_path = err;
    spec.kill_after_s = timeout_s;
    const ChildResult r = run_child(spec);
    if (!r.ok())
        run_failed("the proposer command '" + command + "' failed (" + r.describe() + ")" + (r.stderr_tail.empty() ? "" : ": " + r.stderr_tail));
    const std::string text = read_input(out, "proposer answer", kTextFileLimit);
    Json answer;
    try {
        answer = parse_json(text);
    } catch (const std::exception& e) {
        run_failed("the proposer command '" + command + "' answered something that is not JSON (" + e.what() + "; its answer is in " + out + ")");
    }
    if (!answer.is_object()) run_failed("the proposer command '" + command + "' must answer a JSON object {\"candidates\": [...]} (see " + out + ")");
    return answer;
}

}  // namespace gpt::search
