#include "search/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "kernels/error.h"
#include "search/journal.h"
#include "train/svg_chart.h"

namespace gpt::search {

namespace {

std::string fmt(double v, int prec = 4) {
    if (!std::isfinite(v)) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    return buf;
}

std::string pct(double v) {
    if (!std::isfinite(v)) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f%%", 100 * v);
    return buf;
}

std::string md_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '|') out += "\\|";
        else if (c == '\n') out += ' ';
        else out += c;
    }
    return out;
}

// ---------------------------------------------------------------------------
// What the report reads from the journal.

struct Run {
    int id = 0, trial = 0;
    std::string role, status;
    std::vector<double> time, metric;  // the curve on the median clock
    double tt = NAN;
};

Run run_of(const Json& r) {
    Run x;
    x.id = record_int(r, "id");
    x.trial = record_int(r, "trial");
    x.role = r.string("role");
    x.status = r.string("status");
    if (const Json* m = r.find("metrics")) {
        const double spt = m->number("s_per_token", NAN);
        if (const Json* c = m->find("curve"))
            for (const auto& p : c->arr) {
                x.time.push_back(p.arr[0].num * spt);
                x.metric.push_back(p.arr[1].num);
            }
        x.tt = m->number("time_to_target_s", NAN);
    }
    return x;
}

struct TrialRow {
    int id = 0;
    std::string role, status, rule, diff, reason;
    bool hit = false;
    double score = NAN, loss = NAN, ratio = NAN, lo = NAN, hi = NAN, tokens_ratio = NAN, spt_ratio = NAN;
    int pairs = 0;
    double peak = NAN, wall = NAN, saved = NAN;
    bool unresolved = false;
    Overrides config, diffs;
};

TrialRow row_of(const Json& d) {
    TrialRow t;
    t.id = record_int(d, "id");
    t.role = d.string("role");
    t.status = d.string("status");
    t.rule = d.string("rule");
    t.reason = d.string("reason");
    if (const Json* x = d.find("diff")) t.diffs = overrides_from(*x);
    if (const Json* x = d.find("config")) t.config = overrides_from(*x);
    t.diff = overrides_text(t.diffs);
    if (const Json* m = d.find("metrics")) {
        t.hit = m->boolean("hit");
        t.score = m->number("score", NAN);
        t.loss = m->number("final_val_loss", NAN);
        t.peak = m->number("peak_rss_mb", NAN);
        t.wall = m->number("wall_s", NAN);
        t.saved = m->number("saved_s", NAN);
    }
    if (const Json* s = d.find("stats")) {
        t.ratio = s->number("ratio", NAN);
        t.lo = s->number("ratio_lo", NAN);
        t.hi = s->number("ratio_hi", NAN);
        t.tokens_ratio = s->number("tokens_ratio", NAN);
        t.spt_ratio = s->number("s_per_token_ratio", NAN);
        t.pairs = record_int(*s, "pairs");
        t.unresolved = s->boolean("unresolved");
    }
    return t;
}

std::string clock_label(const std::string& clock) {
    if (clock == "cpu") return "training time, s (each step at the median CPU time of its steps; evaluation not counted)";
    return "training time, s (each step at the median wall time of its steps; evaluation not counted)";
}

// Loss against training time (the step clock): the baseline's and the
// incumbents' runs, the kept trials' candidate runs and the best discarded
// trial's; the target as a horizontal line, the budget as a vertical one.
std::string curves_svg(const std::vector<Run>& runs, const std::vector<int>& kept, int best_discarded, double target, double budget,
                       const std::string& metric, const std::string& clock, const std::string& title) {
    Chart c;
    c.title = title;
    c.x_label = clock_label(clock);
    c.y_label = metric;
    c.legend_right = true;
    c.x_min = 0.0;
    double lo = INFINITY, hi = -INFINITY, tmax = budget > 0 ? budget : 0;
    auto in_kept = [&](int trial) { return std::find(kept.begin(), kept.end(), trial) != kept.end(); };
    auto shown = [&](const Run& r) {
        return r.role == "baseline" || r.role == "incumbent" || (r.role == "candidate" && (in_kept(r.trial) || r.trial == best_discarded));
    };
    for (const auto& r : runs)
        if (shown(r))
            for (size_t k = 0; k < r.time.size(); k++)
                if (std::isfinite(r.time[k]) && std::isfinite(r.metric[k])) {
                    lo = std::min(lo, r.metric[k]);
                    hi = std::max(hi, r.metric[k]);
                    tmax = std::max(tmax, r.time[k]);
                }
    if (target > 0) lo = std::min(lo, target);
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    const double pad = 0.04 * std::max(hi - lo, 1e-6);
    c.y_min = lo - pad;
    c.y_max = hi + pad;
    c.x_max = tmax * 1.02;
    // One series per group of runs, its runs joined by NaN (a break in the line); the first of a group carries the legend label.
    auto group = [&](const std::string& label, const char* color, double width, double opacity, auto&& pick) {
        ChartSeries s;
        s.kind = ChartSeries::Kind::line;
        s.label = label;
        s.color = color;
        s.width = width;
        s.opacity = opacity;
        for (const auto& r : runs) {
            if (!pick(r)) continue;
            for (size_t k = 0; k < r.time.size(); k++) {
                if (!std::isfinite(r.time[k])) continue;
                s.x.push_back(r.time[k]);
                s.y.push_back(r.metric[k]);
            }
            s.x.push_back(NAN);
            s.y.push_back(NAN);
        }
        if (s.x.size() > 1) c.series.push_back(s);
    };
    group("baseline runs", "#36c", 1.2, 0.8, [](const Run& r) { return r.role == "baseline"; });
    group("incumbent runs (paired)", "#9ab", 1.0, 0.7, [](const Run& r) { return r.role == "incumbent"; });
    group("best discarded trial", "#d80", 1.5, 1.0, [&](const Run& r) { return r.role == "candidate" && r.trial == best_discarded; });
    group("kept trials", "#2a7", 2.0, 1.0, [&](const Run& r) { return r.role == "candidate" && in_kept(r.trial); });
    if (target > 0) c.hlines.push_back({target, "target " + fmt(target), "#c22", true});
    if (budget > 0) {
        ChartSeries b;
        b.kind = ChartSeries::Kind::line;
        b.label = "budget " + fmt(budget) + " s";
        b.color = "#555";
        b.dashed = true;
        b.width = 1.5;
        b.x = {budget, budget};
        b.y = {*c.y_min, *c.y_max};
        c.series.push_back(b);
    }
    return c.render();
}

// The timeline: each decided trial, in the order decided, at its ratio against
// the incumbent of its time (below 1 is faster) with the rule's bounds,
// coloured by status; trials without a ratio (pruned, crashed, invalid,
// duplicate, a rung) as marks above the plot area. The 1 - min_gain line is
// what a keep's upper bound must beat.
std::string progress_svg(const std::vector<TrialRow>& rows, double min_gain, const std::string& what, const std::string& title) {
    Chart c;
    c.title = title;
    c.x_label = "trial, in the order decided (a point's tooltip gives its id and change)";
    c.y_label = what + " ratio, candidate / incumbent";
    c.integer_x = true;
    c.legend_right = true;
    c.x_min = 0.5;
    c.x_max = double(rows.size()) + 0.5;
    double lo = 1 - min_gain, hi = 1;
    for (const auto& r : rows)
        if (std::isfinite(r.ratio)) {
            lo = std::min(lo, std::isfinite(r.lo) ? r.lo : r.ratio);
            hi = std::max(hi, std::isfinite(r.hi) ? std::min(r.hi, 3.0) : r.ratio);
        }
    c.y_min = std::max(0.0, lo - 0.05);
    c.y_max = hi + 0.05;
    if (hi >= 3.0) c.note = "bounds above 3 are cut";
    ChartSeries bounds;
    bounds.kind = ChartSeries::Kind::line;
    bounds.label = "the rule's bounds";
    bounds.color = "#888";
    bounds.width = 1.2;
    auto points = [](const char* label, const char* fill, const char* outline, double r) {
        ChartSeries s;
        s.kind = ChartSeries::Kind::points;
        s.label = label;
        s.color = fill;
        s.outline = outline;
        s.radius = r;
        return s;
    };
    auto marks = [](const char* label, const char* shape, const char* color) {
        ChartSeries s;
        s.kind = ChartSeries::Kind::top_mark;
        s.label = label;
        s.mark_shape = shape;
        s.color = color;
        return s;
    };
    ChartSeries keep = points("keep", "#2a7", "#064", 6), discard = points("discard", "#bbb", "#777", 4),
                unresolved = points("discard, unresolved (noise)", "#fff", "#777", 4), kernel = marks("kernel-only (step time)", "triangle", "#2a7"),
                pruned = marks("pruned", "triangle", "#d80"), failed = marks("crash, timeout, invalid, duplicate", "cross", "#c22");
    for (size_t i = 0; i < rows.size(); i++) {
        const TrialRow& r = rows[i];
        const double x = double(i) + 1;
        const std::string tip = "trial " + std::to_string(r.id) + " " + r.diff + ": " + r.status + (r.unresolved ? " (unresolved)" : "") +
                                (std::isfinite(r.ratio) ? ", ratio " + fmt(r.ratio, 3) : "") + (r.rule == "kernel" ? " (kernel rule: step time)" : r.rule == "tokens" ? " (tokens rule: tokens to target)" : "");
        if (!std::isfinite(r.ratio)) {
            ChartSeries& m = r.status == "pruned" ? pruned : failed;
            m.x.push_back(x);
            m.y.push_back(0);
            m.titles.push_back(tip);
            continue;
        }
        if (std::isfinite(r.lo) && std::isfinite(r.hi)) {
            bounds.x.insert(bounds.x.end(), {x, x, NAN});
            bounds.y.insert(bounds.y.end(), {r.lo, std::min(r.hi, *c.y_max), NAN});
        }
        ChartSeries& s = r.status == "keep" ? keep : r.unresolved ? unresolved : discard;
        s.x.push_back(x);
        s.y.push_back(r.ratio);
        s.titles.push_back(tip);
        if (r.rule == "kernel") {
            kernel.x.push_back(x);
            kernel.y.push_back(0);
            kernel.titles.push_back(tip);
        }
    }
    for (ChartSeries* s : {&bounds, &discard, &unresolved, &keep, &kernel, &pruned, &failed})
        if (!s->x.empty()) c.series.push_back(*s);
    c.hlines.push_back({1.0, "incumbent", "#555", false});
    c.hlines.push_back({1 - min_gain, "1 - min_gain", "#2a7", true});
    return c.render();
}

}  // namespace

void write_report(const std::string& dir) {
    std::string warning;
    const std::vector<Json> records = read_journal(dir + "/journal.jsonl", &warning);
    if (records.empty() || records.front().string("type") != "search") bad_input(dir + "/journal.jsonl: not a search journal (no header record)");
    const SearchState st = replay(records);
    const Json& header = st.header;
    const Json settings = header.find("settings") ? *header.find("settings") : Json::object();
    const std::string objective = settings.string("objective", "time_to_target");
    const bool ttt = objective == "time_to_target";
    const double target = settings.number("target_val_loss"), budget = settings.number("budget_s"), min_gain = settings.number("min_gain");
    const std::string metric = ttt ? "time to target (s)" : "val loss at the budget";

    std::vector<TrialRow> rows;  // decided trials but the baseline, in decision order
    std::vector<int> kept;
    for (int id : st.decision_order) {
        const Json& d = st.decisions.at(id);
        if (d.string("role") == "baseline") continue;
        rows.push_back(row_of(d));
        if (d.string("status") == "keep" && d.string("role") == "candidate") kept.push_back(id);
    }
    std::vector<Run> runs;
    for (const auto& [id, r] : st.runs)
        if (r.string("kind") == "train" || r.string("kind").empty()) runs.push_back(run_of(r));

    std::string md;
    md += "# Search report: " + dir + "\n\n";
    md += "- space: `" + header.string("space_file") + "`, strategy **" + settings.string("strategy") + "**, objective **" + objective + "**";
    if (ttt) md += " (target " + settings.string("target_metric", "val loss") + " " + fmt(target) + ")";
    md += ", budget " + fmt(budget) + " s per run, min_gain " + pct(min_gain) + ", false-keep rate at most " + pct(settings.number("false_keep", 0.05)) +
          ", " + fmt(settings.number("min_pairs", 2)) + " to " + fmt(settings.number("max_pairs", 6)) + " pairs per candidate\n";
    md += "- evaluation: " + fmt(settings.number("val_tokens")) + " validation tokens in windows of " + fmt(settings.number("val_seq_len")) +
          ", every " + fmt(settings.number("eval_every_tokens")) + " training tokens; training time on the " +
          (settings.string("step_clock") == "cpu" ? "CPU step clock (the median CPU time of a step, one thread: other processes barely move it)"
                                                    : "median step clock (the median wall time of a step: pauses do not move it)") +
          "\n";
    md += "- device: " + header.string("device") + "\n";
    if (const Json* m = header.find("machine"))
        md += "- machine: " + m->string("host") + ", " + fmt(m->number("cores")) + " cores, " + fmt(m->number("memory_gib"), 3) + " GiB, load average " +
              fmt(m->number("load_average"), 3) + " at the start\n";
    md += "- binary: " + header.string("version") + " (" + header.string("binary") + "), source commit " + header.string("source_commit", "unknown") + "\n";
    md += "- started: " + header.string("started_at") + ", runs: " + std::to_string(st.runs.size()) + ", trials decided: " + std::to_string(rows.size()) + "\n";
    if (!warning.empty()) md += "- warning: " + warning + "\n";
    std::map<std::string, int> count;
    int unresolved = 0;
    double saved = 0, pruned_cost = 0;
    for (const auto& r : rows) {
        count[r.status]++;
        unresolved += r.unresolved;
        if (r.status == "pruned") {
            if (std::isfinite(r.saved)) saved += r.saved;
        }
    }
    for (const auto& [id, r] : st.runs)
        if (r.string("status") == "pruned")
            if (const Json* m = r.find("metrics")) pruned_cost += m->number("pruned_at_s");
    md += "- statuses:";
    for (const char* s : {"keep", "discard", "pruned", "crash", "timeout", "invalid", "duplicate"}) md += " " + std::to_string(count[s]) + " " + s + ",";
    md.back() = '\n';
    md += "\n";

    const Json* base = st.decision(0);
    md += "## Baseline\n\n";
    if (!base) md += "The baseline has not finished.\n\n";
    else if (base->string("status") == "miss") md += "**The baseline missed the target.** " + md_escape(base->string("reason")) + "\n\n";
    else md += md_escape(base->string("reason")) + ".\n\n";

    md += "## Best\n\n";
    double cum_log = 0, cum_var = 0;
    bool cum_ok = true;
    for (int id : kept) {
        const Json* s = st.decision(id)->find("stats");
        if (!s || !std::isfinite(s->number("ratio", NAN)) || !std::isfinite(s->number("ratio_hi", NAN))) {
            cum_ok = false;
            continue;
        }
        cum_log += std::log(s->number("ratio"));
        // The rule's bounds are mean +- t se: take (log hi - log mean) as the margin of each keep.
        const double half = std::log(s->number("ratio_hi")) - std::log(s->number("ratio"));
        cum_var += half * half;
    }
    if (kept.empty()) {
        md += "No candidate was kept: none beat the incumbent by min_gain " + pct(min_gain) + " with confidence. `best.yaml` is the base config.\n\n";
    } else {
        const double r = std::exp(cum_log), half = std::sqrt(cum_var);
        md += "Trial " + std::to_string(st.incumbent_id) + ": `" + md_escape(overrides_text(st.incumbent)) + "` (changes from the base config). ";
        md += "Its " + std::string(ttt ? "time to target" : "val loss") + " is " + fmt(r, 3) + "x the base config's";
        if (cum_ok) md += " (" + fmt(1 / r, 3) + "x faster; bounds " + fmt(std::exp(cum_log - half), 3) + " to " + fmt(std::exp(cum_log + half), 3) +
                          ", the product of the kept steps' paired ratios, each measured against the incumbent of its time)";
        md += ". `gpt train -c " + dir + "/best.yaml` trains it.\n\n";
    }
    if (unresolved > 0)
        md += "**Noise:** " + std::to_string(unresolved) + " trial(s) stayed undecided at search.max_pairs: their noise could not resolve gains of min_gain (see their reasons below); a longer budget or more pairs resolves smaller gains.\n\n";
    if (count["pruned"] > 0)
        md += "**Pruning:** " + std::to_string(count["pruned"]) + " trial(s) were stopped early, after " + fmt(pruned_cost, 3) +
              " s of training in all; running them on would have cost about " + fmt(saved, 3) + " s more (to the target at the rate they were behind, at most the budget).\n\n";

    md += "## Kept changes\n\n";
    if (kept.empty()) md += "None.\n\n";
    else {
        md += "| trial | change | rule | pairs | ratio | bounds | tokens to target | seconds per token |\n|---|---|---|---|---|---|---|---|\n";
        for (int id : kept) {
            const TrialRow r = row_of(*st.decision(id));
            md += "| " + std::to_string(r.id) + " | `" + md_escape(r.diff) + "` | " + r.rule + " | " + std::to_string(r.pairs) + " | " + fmt(r.ratio, 3) + " | " +
                  fmt(r.lo, 3) + " - " + fmt(r.hi, 3) + " | x" + fmt(r.tokens_ratio, 3) + " | x" + fmt(r.spt_ratio, 3) + " |\n";
        }
        md += "\nRules: `paired` compares times to target; `tokens` compares tokens to target, for keys that cannot change the cost of a step "
              "(learning rates, betas, eps, the schedule, the init), so its seconds-per-token column is the machine's noise and is not counted; "
              "`kernel` compares step times.\n\n";
    }
    md += "![loss curves](curves.svg)\n\n![timeline](progress.svg)\n\n";

    // Which dimensions mattered: for each key, the trials that changed it and
    // the size of their paired effects (median |log ratio|), single-key
    // changes counted apart. A marginal measure, not a model of interactions.
    std::map<std::string, std::vector<double>> effect, single;
    std::map<std::string, int> changed, kept_by;
    for (const auto& r : rows) {
        for (const auto& [k, v] : r.diffs) {
            changed[k]++;
            kept_by[k] += r.status == "keep";
            if (std::isfinite(r.ratio)) {
                effect[k].push_back(std::fabs(std::log(r.ratio)));
                if (r.diffs.size() == 1) single[k].push_back(std::log(r.ratio));
            }
        }
    }
    if (!changed.empty()) {
        auto median = [](std::vector<double> v) -> double {
            if (v.empty()) return NAN;
            std::sort(v.begin(), v.end());
            return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
        };
        std::vector<std::pair<double, std::string>> order;
        for (const auto& [k, n] : changed) order.push_back({-(std::isfinite(median(effect[k])) ? median(effect[k]) : -1), k});
        std::sort(order.begin(), order.end());
        md += "## Which dimensions mattered\n\nFor each dimension: the trials that changed it, how many were kept, and the median size of their paired effect "
              "(|log ratio|, all trials that changed it; then the median ratio of the trials that changed only it). Trials that changed several keys count for each.\n\n";
        md += "| dimension | trials | kept | median effect | alone: trials | alone: median ratio |\n|---|---|---|---|---|---|\n";
        for (const auto& [neg, k] : order) {
            const double e = median(effect[k]);
            md += "| `" + k + "` | " + std::to_string(changed[k]) + " | " + std::to_string(kept_by[k]) + " | " + (std::isfinite(e) ? pct(std::exp(e) - 1) : "-") +
                  " | " + std::to_string(single[k].size()) + " | " + fmt(std::exp(median(single[k])), 3) + " |\n";
        }
        md += "\n";
    }

    // Every trial: hits ranked by time to target first, then misses by their loss at the budget.
    md += "## All trials, ranked\n\n";
    md += ttt ? "Trials whose runs all reached the target rank first, by their time to target (geometric mean of their runs on the median clock); "
                "then the others, by their validation loss at the budget (labelled: missed). Each was judged against the incumbent of its time by the paired ratio, "
                "not by this ranking, which compares measurements made at different times.\n\n"
              : "Ranked by validation loss at the budget.\n\n";
    std::vector<TrialRow> ranked = rows;
    std::stable_sort(ranked.begin(), ranked.end(), [&](const TrialRow& a, const TrialRow& b) {
        auto key = [&](const TrialRow& r) {
            const bool measured = std::isfinite(r.score) || std::isfinite(r.loss);
            const int cls = !measured ? 2 : (ttt && !(r.hit && std::isfinite(r.score))) ? 1 : 0;
            const double v = cls == 0 ? r.score : cls == 1 ? r.loss : 0;
            return std::make_pair(cls, v);
        };
        return key(a) < key(b);
    });
    md += "| rank | trial | change | status | rule | " + metric + " | ratio to incumbent | pairs | peak RSS (MiB) | runs wall (s) |\n|---|---|---|---|---|---|---|---|---|---|\n";
    int rank = 0;
    for (const auto& r : ranked) {
        std::string score;
        if (ttt) score = r.hit && std::isfinite(r.score) ? fmt(r.score, 4) : std::isfinite(r.loss) ? "missed: val loss " + fmt(r.loss, 4) + " at budget" : "-";
        else score = fmt(r.score, 4);
        md += "| " + std::to_string(++rank) + " | " + std::to_string(r.id) + " | `" + md_escape(r.diff) + "` | " + r.status + (r.unresolved ? " (unresolved)" : "") +
              " | " + r.rule + " | " + score + " | " + fmt(r.ratio, 3) + " | " + std::to_string(r.pairs) + " | " + fmt(r.peak, 4) + " | " + fmt(r.wall, 4) + " |\n";
    }
    md += "\n## Decisions\n\n";
    for (const auto& r : rows) md += "- trial " + std::to_string(r.id) + " `" + md_escape(r.diff) + "`: **" + r.status + "** (" + r.rule + ") " + md_escape(r.reason) + "\n";
    md += "\n";
    bool any_fail = false;
    for (const auto& [id, r] : st.runs) {
        const std::string s = r.string("status");
        if (s != "crash" && s != "timeout") continue;
        if (!any_fail) md += "## Failed runs\n\n";
        any_fail = true;
        md += "- run " + std::to_string(id) + " (trial " + fmt(r.number("trial")) + ", " + r.string("role") + ", " + s + "): " + md_escape(r.string("reason")) + "\n";
        const std::string tail = r.string("stderr_tail");
        if (!tail.empty()) md += "\n```\n" + tail.substr(tail.size() > 600 ? tail.size() - 600 : 0) + "\n```\n";
    }

    // best.yaml: the base with the incumbent's overrides, as a normal training run.
    std::vector<std::string> sets;
    for (const auto& [key, v] : st.incumbent) sets.push_back(key + "=" + v);
    Config best = parse_config_text(header.string("base_yaml"), dir + "/journal.jsonl (base config)", sets);
    best.run.out_dir = "runs/search-best";
    if (ttt) best.run.target_val_loss = target;
    best.run.budget_s = budget;
    const std::string yaml = "# The best config of the search in " + dir + " (trial " + std::to_string(st.incumbent_id) + ": " + overrides_text(st.incumbent) +
                             ").\n# Run it with: gpt train -c " + dir + "/best.yaml\n" + config_to_yaml(best);

    // The best discarded trial: the lowest ratio (or score) among the discarded.
    int best_discarded = -1;
    double best_ratio = INFINITY;
    for (const auto& r : rows)
        if (r.status == "discard" && std::isfinite(r.ratio) && r.ratio < best_ratio) {
            best_ratio = r.ratio;
            best_discarded = r.id;
        }
    write_file_atomic(dir + "/report.md", md);
    write_file_atomic(dir + "/progress.svg", progress_svg(rows, min_gain, ttt ? "time-to-target" : "loss", "gpt search: " + dir + ": each trial against the incumbent"));
    write_file_atomic(dir + "/curves.svg", curves_svg(runs, kept, best_discarded, ttt ? target : 0, budget,
                                                      settings.string("target_metric", "val_loss") == "val_bpb" ? "val bpb" : "val loss",
                                                      settings.string("step_clock", "median"), "gpt search: " + dir + ": learning curves"));
    write_file_atomic(dir + "/best.yaml", yaml);
}

}  // namespace gpt::search
