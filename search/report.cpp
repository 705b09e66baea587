#include "search/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "kernels/error.h"
#include "search/journal.h"

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

std::string xml_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '<') out += "&lt;";
        else if (c == '>') out += "&gt;";
        else if (c == '&') out += "&amp;";
        else if (c == '"') out += "&quot;";
        else out += c;
    }
    return out;
}

struct Point {
    int id;
    double score;
    std::string status, role;
};

std::string progress_svg(const std::vector<Point>& pts, const std::vector<std::pair<int, double>>& best_line, const std::string& metric,
                         const std::string& title) {
    const double W = 900, H = 460, L = 80, R = 20, T = 40, B = 60;
    double lo = INFINITY, hi = -INFINITY;
    int max_id = 1;
    for (const auto& p : pts) {
        max_id = std::max(max_id, p.id);
        if (std::isfinite(p.score)) {
            lo = std::min(lo, p.score);
            hi = std::max(hi, p.score);
        }
    }
    for (const auto& [id, v] : best_line) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
    }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo < 1e-12) hi = lo + 1;
    const double pad = 0.05 * (hi - lo);
    lo -= pad;
    hi += pad;
    auto X = [&](double id) { return L + (W - L - R) * id / double(max_id); };
    auto Y = [&](double v) { return T + (H - T - B) * (1 - (v - lo) / (hi - lo)); };
    std::string s;
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" "
                  "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                  W, H, W, H);
    s += buf;
    s += "<text x=\"" + fmt(W / 2) + "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" + xml_escape(title) + "</text>\n";
    // Axes with five ticks each.
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
    s += buf;
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", L, T, L, H - B);
    s += buf;
    for (int i = 0; i <= 5; i++) {
        const double v = lo + (hi - lo) * i / 5.0, y = Y(v);
        std::snprintf(buf, sizeof buf,
                      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                      L, y, W - R, y, L - 6, y + 4, fmt(v, 3).c_str());
        s += buf;
        const double id = max_id * i / 5.0;
        std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", X(id), H - B + 18, fmt(std::round(id)).c_str());
        s += buf;
    }
    s += "<text x=\"" + fmt(L + (W - L - R) / 2) + "\" y=\"" + fmt(H - 18) + "\" text-anchor=\"middle\">trial</text>\n";
    s += "<text transform=\"translate(18," + fmt(T + (H - T - B) / 2) + ") rotate(-90)\" text-anchor=\"middle\">" + xml_escape(metric) +
         " (lower is better)</text>\n";
    // The running best: a step line through the baseline's mean after each trial.
    if (!best_line.empty()) {
        std::string d;
        for (size_t i = 0; i < best_line.size(); i++) {
            const double x = X(best_line[i].first), y = Y(best_line[i].second);
            if (i == 0) d += "M" + fmt(x, 6) + "," + fmt(y, 6);
            else d += " H" + fmt(x, 6) + " V" + fmt(y, 6);
        }
        d += " H" + fmt(X(max_id), 6);
        s += "<path d=\"" + d + "\" fill=\"none\" stroke=\"#2a7\" stroke-width=\"2\"/>\n";
    }
    for (const auto& p : pts) {
        const double x = X(p.id);
        if (!std::isfinite(p.score)) {
            if (p.status.rfind("kernel ", 0) == 0) {
                // Kernel-only changes are judged by step time, not on this axis:
                // a triangle above the plot area, filled when kept.
                const bool kept = p.status == "kernel keep";
                std::snprintf(buf, sizeof buf,
                              "<path d=\"M%.1f,%.1f l5,-9 l5,9 z\" fill=\"%s\" stroke=\"#555\"><title>trial %d: %s (judged by step time)</title></path>\n",
                              x - 5, T + 4, kept ? "#2a7" : "#fff", p.id, p.status.c_str());
                s += buf;
                continue;
            }
            // Crashes, timeouts and invalid configs: a red cross above the plot area.
            std::snprintf(buf, sizeof buf, "<path d=\"M%.1f,%.1f l8,8 m-8,0 l8,-8\" stroke=\"#c22\" stroke-width=\"2\"><title>trial %d: %s</title></path>\n",
                          x - 4, T - 4, p.id, p.status.c_str());
            s += buf;
            continue;
        }
        const double y = Y(p.score);
        const bool kept = p.status == "keep" && p.role != "baseline" && p.role != "rung";
        const char* fill = p.role == "baseline" ? "#36c" : kept ? "#2a7" : "#bbb";
        std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%d\" fill=\"%s\" stroke=\"%s\"><title>trial %d (%s): %s %s</title></circle>\n", x,
                      y, kept ? 6 : 4, fill, kept ? "#064" : "#888", p.id, p.role.c_str(), p.status.c_str(), fmt(p.score).c_str());
        s += buf;
    }
    // Legend.
    const double lx = W - R - 260, ly = T + 8;
    std::snprintf(buf, sizeof buf,
                  "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#36c\"/><text x=\"%.1f\" y=\"%.1f\">baseline</text>"
                  "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"6\" fill=\"#2a7\" stroke=\"#064\"/><text x=\"%.1f\" y=\"%.1f\">kept</text>"
                  "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#bbb\"/><text x=\"%.1f\" y=\"%.1f\">discarded</text>"
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#2a7\" stroke-width=\"2\"/><text x=\"%.1f\" y=\"%.1f\">running best</text>\n",
                  lx, ly, lx + 8, ly + 4, lx + 80, ly, lx + 90, ly + 4, lx + 140, ly, lx + 150, ly + 4, lx, ly + 20, lx + 20, ly + 20, lx + 26,
                  ly + 24);
    s += buf;
    std::snprintf(buf, sizeof buf,
                  "<path d=\"M%.1f,%.1f l5,-9 l5,9 z\" fill=\"#fff\" stroke=\"#555\"/><text x=\"%.1f\" y=\"%.1f\">kernel-only (step time)</text>"
                  "<path d=\"M%.1f,%.1f l8,8 m-8,0 l8,-8\" stroke=\"#c22\" stroke-width=\"2\"/><text x=\"%.1f\" y=\"%.1f\">crash, timeout, invalid</text>\n",
                  lx - 5, ly + 45, lx + 10, ly + 44, lx - 4, ly + 56, lx + 10, ly + 64);
    s += buf;
    s += "</svg>\n";
    return s;
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
