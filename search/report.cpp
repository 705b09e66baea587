#include "search/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

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

std::string md_escape(std::string s) {
    std::string out;
    for (char c : s) {
        if (c == '|') out += "\\|";
        else if (c == '\n') out += ' ';
        else out += c;
    }
    return out;
}

struct Point {
    int id;
    double score;
    std::string status, role;
};

// The search's progress: every scored trial as a point (baseline, kept,
// discarded), the running best as a step line, and above the plot area the
// trials without a score on this axis (kernel-only changes, failures).
std::string progress_svg(const std::vector<Point>& pts, const std::vector<std::pair<int, double>>& best_line, const std::string& metric,
                         const std::string& title) {
    Chart c;
    c.title = title;
    c.x_label = "trial";
    c.y_label = metric + " (lower is better)";
    c.integer_x = true;
    c.legend_right = true;  // the points fill the whole area
    c.width = 1040;
    int max_id = 1;
    for (const auto& p : pts) max_id = std::max(max_id, p.id);
    c.x_min = -0.5;  // whole circles at the first and last trial
    c.x_max = max_id + 0.5;

    ChartSeries best, baseline, kept, discarded, kernel_kept, kernel_other, failed;
    best.kind = ChartSeries::Kind::step;
    best.label = "running best";
    best.color = "#2a7";
    best.width = 2;
    for (const auto& [id, v] : best_line) {
        best.x.push_back(id);
        best.y.push_back(v);
    }
    auto points = [](ChartSeries& s, const char* label, const char* fill, const char* outline, double r) {
        s.kind = ChartSeries::Kind::points;
        s.label = label;
        s.color = fill;
        s.outline = outline;
        s.radius = r;
    };
    points(baseline, "baseline", "#36c", "", 4);
    points(kept, "kept", "#2a7", "#064", 6);
    points(discarded, "discarded", "#bbb", "#888", 4);
    // Kernel-only changes are judged by step time, not on this axis: a triangle
    // above the plot area, filled when kept. Crashes, timeouts and invalid
    // configs: a red cross there.
    auto marks = [](ChartSeries& s, const char* label, const char* shape, const char* color) {
        s.kind = ChartSeries::Kind::top_mark;
        s.label = label;
        s.mark_shape = shape;
        s.color = color;
    };
    marks(kernel_kept, "kernel-only, kept (step time)", "triangle", "#2a7");
    marks(kernel_other, "kernel-only, not kept (step time)", "triangle", "#fff");
    marks(failed, "crash, timeout, invalid", "cross", "#c22");
    for (const auto& p : pts) {
        ChartSeries* s = nullptr;
        std::string title = "trial " + std::to_string(p.id) + " (" + p.role + "): " + p.status;
        if (!std::isfinite(p.score)) {
            const bool kernel = p.status.rfind("kernel ", 0) == 0;
            s = kernel ? (p.status == "kernel keep" ? &kernel_kept : &kernel_other) : &failed;
            if (kernel) title = "trial " + std::to_string(p.id) + ": " + p.status + " (judged by step time)";
        } else {
            const bool is_kept = p.status == "keep" && p.role != "baseline" && p.role != "rung";
            s = p.role == "baseline" ? &baseline : is_kept ? &kept : &discarded;
            title += " " + fmt(p.score);
        }
        s->x.push_back(p.id);
        s->y.push_back(p.score);
        s->titles.push_back(title);
    }
    for (ChartSeries* s : {&best, &discarded, &baseline, &kept, &kernel_kept, &kernel_other, &failed})
        if (!s->x.empty()) c.series.push_back(std::move(*s));
    return c.render();
}

}  // namespace

void write_report(const std::string& dir) {
    std::string warning;
    const std::vector<Json> records = read_journal(dir + "/journal.jsonl", &warning);
    if (records.empty() || records.front().string("type") != "search") bad_input(dir + "/journal.jsonl: not a search journal (no header record)");
    const Json& header = records.front();
    const Json settings = header.find("settings") ? *header.find("settings") : Json::object();
    const int k = int(settings.number("baseline_repeats", 3));
    const std::string objective = settings.string("objective", "time_to_target");
    const std::string metric = objective == "time_to_target" ? "time to target (s)" : "val loss at budget";

    // Replay trial by trial, to see the baseline change as the search went.
    SearchState st;
    st.header = header;
    std::vector<Point> pts;
    std::vector<std::pair<int, double>> best_line;
    struct Kept {
        int cand, confirm;
        double before, after, threshold, gain, sd;
        std::string diff, rule;
    };
    std::vector<Kept> kept;
    double initial_mean = NAN, initial_sd = 0;
    for (const auto& r : records) {
        if (r.string("type") == "batch") st.batches.push_back(r);
        if (r.string("type") != "trial") continue;
        const double before = mean_of(st.baseline_scores);
        const int before_id = st.baseline_id;
        st.apply_trial(r, k);
        const Json* m = r.find("metrics");
        const bool scored = m && r.string("rule") != "kernel" && r.string("status") != "crash" && r.string("status") != "timeout";
        pts.push_back({int(r.number("id")), scored ? m->number("score", NAN) : NAN, r.string("status"), r.string("role")});
        if (r.string("role") == "kernel" || r.string("rule") == "kernel") pts.back().score = NAN;
        if (r.string("rule") == "kernel" && r.string("status") != "crash") pts.back().status = "kernel " + r.string("status");
        if (st.baseline_ready && !std::isfinite(initial_mean)) {
            initial_mean = mean_of(st.baseline_scores);
            initial_sd = st.noise_sd;
        }
        if (st.baseline_ready && !st.baseline_scores.empty()) best_line.push_back({int(r.number("id")), mean_of(st.baseline_scores)});
        if (st.baseline_id != before_id && r.string("role") == "confirm") {
            const Json* cand = st.trial(int(r.number("parent")));
            Kept kc{int(r.number("parent")), int(r.number("id")), before, mean_of(st.baseline_scores), r.number("threshold", NAN),
                    before - mean_of(st.baseline_scores), r.number("baseline_sd", NAN),
                    cand ? overrides_text(overrides_from(*cand->find("diff"))) : "", r.string("rule")};
            kept.push_back(kc);
        }
    }

    std::string md;
    md += "# Search report: " + dir + "\n\n";
    md += "- space: `" + header.string("space_file") + "`, strategy **" + settings.string("strategy") + "**, objective **" + objective + "**";
    if (objective == "time_to_target") md += " (target val loss " + fmt(settings.number("target_val_loss")) + ")";
    md += ", budget " + fmt(settings.number("budget_s")) + " s per trial, min_gain " + fmt(settings.number("min_gain")) + "\n";
    md += "- device: " + header.string("device") + "\n- binary: " + header.string("version") + "\n- started: " + header.string("started_at") +
          ", trials: " + std::to_string(st.trials.size()) + "\n";
    if (!warning.empty()) md += "- warning: " + warning + "\n";
    int n_keep = 0, n_discard = 0, n_crash = 0, n_timeout = 0, n_invalid = 0;
    for (const auto& t : st.trials) {
        const std::string s = t.string("status");
        n_keep += s == "keep";
        n_discard += s == "discard";
        n_crash += s == "crash";
        n_timeout += s == "timeout";
        n_invalid += s == "invalid";
    }
    md += "- statuses: " + std::to_string(n_keep) + " keep, " + std::to_string(n_discard) + " discard, " + std::to_string(n_crash) + " crash, " +
          std::to_string(n_timeout) + " timeout, " + std::to_string(n_invalid) + " invalid\n\n";
    md += "Scores are " + metric +
          (objective == "time_to_target" ? "; a run that misses the target scores budget x final loss / target, above every hit" : "") + ".\n\n";

    md += "## Baseline\n\n";
    if (std::isfinite(initial_mean)) {
        md += "Mean score " + fmt(initial_mean) + " over " + std::to_string(k) + " runs with different seeds, standard deviation " + fmt(initial_sd) +
              " (" + fmt(100 * initial_sd / std::fabs(initial_mean), 3) +
              "% of the mean: a candidate must beat the current baseline's mean by 2 such relative standard deviations, and by min_gain x the mean).\n\n";
    } else {
        md += "The baseline has not finished.\n\n";
    }
    md += "## Best\n\n";
    const std::string best_diff = overrides_text(st.baseline);
    if (std::isfinite(initial_mean) && !st.baseline_scores.empty()) {
        const double best = mean_of(st.baseline_scores);
        md += "Trial " + std::to_string(st.baseline_id) + ": `" + best_diff + "` (changes from the base config), mean score " + fmt(best);
        if (best > 0) md += ", " + fmt(initial_mean / best, 3) + "x better than the baseline's " + fmt(initial_mean);
        md += ". `best.yaml` is this config: `gpt train -c " + dir + "/best.yaml`.\n\n";
    }
    md += "## Kept changes\n\n";
    if (kept.empty()) md += "None: no candidate beat the baseline by more than the noise and then passed its confirmation run.\n\n";
    else {
        md += "| candidate | confirmed by | change | rule | score before | after | gain | threshold | baseline sd |\n|---|---|---|---|---|---|---|---|---|\n";
        for (const auto& kc : kept)
            md += "| " + std::to_string(kc.cand) + " | " + std::to_string(kc.confirm) + " | `" + md_escape(kc.diff) + "` | " + kc.rule + " | " +
                  fmt(kc.before) + " | " + fmt(kc.after) + " | " + fmt(kc.gain) + " | " + fmt(kc.threshold) + " | " + fmt(kc.sd) + " |\n";
        md += "\n";
    }
    md += "![progress](progress.svg)\n\n## All trials\n\n";
    md += "| id | role | parent | change | seed | status | rule | score | time to target (s) | val loss | tokens/s | MFU | peak RSS (MiB) | wall (s) |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& t : st.trials) {
        const Json m = t.find("metrics") ? *t.find("metrics") : Json::object();
        md += "| " + std::to_string(int(t.number("id"))) + " | " + t.string("role") + " | " + fmt(t.number("parent", -1)) + " | `" +
              md_escape(overrides_text(overrides_from(t.find("diff") ? *t.find("diff") : Json::object()))) + "` | " + fmt(t.number("seed")) + " | " +
              t.string("status") + " | " + t.string("rule") + " | " +
              (t.string("rule") == "kernel" ? fmt(m.number("step_ms", NAN)) + " ms/step" : fmt(m.number("score", NAN))) + " | " +
              fmt(m.number("time_to_target_s", NAN)) + " | " + fmt(m.number("final_val_loss", NAN)) + " | " + fmt(m.number("tokens_per_s", NAN), 5) +
              " | " + fmt(m.number("mfu", NAN), 3) + " | " + fmt(m.number("peak_rss_mb", NAN)) + " | " + fmt(m.number("wall_s", NAN), 3) + " |\n";
    }
    md += "\n";
    bool any_fail = false;
    for (const auto& t : st.trials) {
        const std::string s = t.string("status");
        if (s != "crash" && s != "timeout" && s != "invalid") continue;
        if (!any_fail) md += "## Failures\n\n";
        any_fail = true;
        md += "- trial " + std::to_string(int(t.number("id"))) + " (" + s + "): " + md_escape(t.string("reason")) + "\n";
        const std::string tail = t.string("stderr_tail");
        if (!tail.empty()) {
            const size_t cut = tail.size() > 600 ? tail.size() - 600 : 0;
            md += "\n```\n" + tail.substr(cut) + "\n```\n";
        }
    }

    // best.yaml: the base with the best overrides, as a normal training run.
    std::vector<std::string> sets;
    for (const auto& [key, v] : st.baseline) sets.push_back(key + "=" + v);
    Config best = parse_config_text(header.string("base_yaml"), dir + "/journal.jsonl (base config)", sets);
    best.run.out_dir = "runs/search-best";
    if (objective == "time_to_target") best.run.target_val_loss = settings.number("target_val_loss");
    if (best.run.budget_s == 0 && best.run.max_steps == 0) best.run.budget_s = settings.number("budget_s");
    const std::string yaml = "# The best config of the search in " + dir + " (trial " + std::to_string(st.baseline_id) + ": " + best_diff +
                             ").\n# Run it with: gpt train -c " + dir + "/best.yaml\n" + config_to_yaml(best);

    write_file_atomic(dir + "/report.md", md);
    write_file_atomic(dir + "/progress.svg", progress_svg(pts, best_line, metric, "gpt search: " + dir));
    write_file_atomic(dir + "/best.yaml", yaml);
}

}  // namespace gpt::search
