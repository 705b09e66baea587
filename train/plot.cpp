#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "data/json.h"
#include "kernels/error.h"
#include "train/cli_args.h"
#include "train/svg_chart.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

// Appends a record of `step`, first dropping the ones it replaces: a resumed
// run logs again the steps after its checkpoint, and those later records win.
void keep_latest(std::vector<double>& steps, double step, std::initializer_list<std::vector<double>*> columns) {
    size_t keep = steps.size();
    while (keep > 0 && steps[keep - 1] >= step) keep--;
    steps.resize(keep);
    for (auto* c : columns) c->resize(keep);
    steps.push_back(step);
}

std::string fmt(double v, const char* f = "%.4g") {
    char buf[32];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

const char* const kRunColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

}  // namespace

std::vector<double> ema_smooth(const std::vector<double>& v, int window) {
    std::vector<double> out(v.size());
    const double a = 2.0 / (std::max(1, window) + 1.0);
    double m = 0, norm = 0;
    for (size_t i = 0; i < v.size(); i++) {
        if (!std::isfinite(v[i])) {
            out[i] = NAN;
            continue;
        }
        m = (1 - a) * m + a * v[i];
        norm = (1 - a) * norm + a;  // debiasing: the weights so far sum to norm
        out[i] = m / norm;
    }
    return out;
}

RunCurves read_run_curves(const std::string& run) {
    std::error_code ec;
    const bool is_file = fs::is_regular_file(run, ec);
    const fs::path log = is_file ? fs::path(run) : fs::path(run) / "log.jsonl";
    RunCurves r;
    r.path = log.string();
    fs::path dir = is_file ? log.parent_path() : fs::path(run);
    if (dir.filename().empty()) dir = dir.parent_path();  // "runs/a/"
    r.name = dir.filename().string().empty() ? log.string() : dir.filename().string();
    std::ifstream f(log);
    if (!f) bad_input("gpt plot: '" + run + "': no " + (is_file ? "readable file" : "log.jsonl in it") + " (a run directory written by gpt train)");
    std::vector<std::string> lines;
    for (std::string line; std::getline(f, line);)
        if (!line.empty()) lines.push_back(line);
    std::vector<double> steps, vsteps, hsteps;
    for (size_t i = 0; i < lines.size(); i++) {
        Json j;
        try {
            j = parse_json(lines[i]);
        } catch (const std::runtime_error& e) {
            if (i + 1 == lines.size()) break;  // a run killed while writing its last line
            bad_input("gpt plot: '" + r.path + "', line " + std::to_string(i + 1) + ": " + e.what());
        }
        const std::string type = j.string("type");
        if (type == "step") {
            keep_latest(steps, j.number("step"), {&r.step_time, &r.step_tokens, &r.step_loss});
            r.step_time.push_back(j.number("train_time_s", NAN));
            r.step_tokens.push_back(j.number("tokens", NAN));
            r.step_loss.push_back(j.number("loss", NAN));
        } else if (type == "val") {
            keep_latest(vsteps, j.number("step"), {&r.val_time, &r.val_tokens, &r.val_loss});
            r.val_time.push_back(j.number("train_time_s", NAN));
            r.val_tokens.push_back(j.number("tokens", NAN));
            r.val_loss.push_back(j.number("val_loss", NAN));
        } else if (type == "hellaswag") {
            keep_latest(hsteps, j.number("step"), {&r.hs_tokens, &r.hs_acc_norm});
            r.hs_tokens.push_back(j.number("tokens", NAN));
            r.hs_acc_norm.push_back(j.number("acc_norm", NAN));
        } else if (type == "config") {
            if (j.find("loss_floor") && j.find("loss_floor")->is_number()) r.loss_floor = j.number("loss_floor");
            if (const Json* c = j.find("config"); c && c->find("run")) {
                const Json& run_cfg = *c->find("run");
                const double t = run_cfg.number("target_val_loss", 0);
                if (t > 0 && run_cfg.string("target_metric", "val_loss") == "val_loss") r.target = t;
            }
        } else if (type == "summary") {
            if (j.find("time_to_target_s") && j.find("time_to_target_s")->is_number()) r.time_to_target = j.number("time_to_target_s");
        }
    }
    if (r.step_loss.empty() && r.val_loss.empty()) bad_input("gpt plot: '" + r.path + "' has no step or val records (did the run start?)");
    return r;
}

std::string plot_runs_svg(const std::vector<RunCurves>& runs, const PlotOptions& opt) {
    // The time axis in the unit that keeps its numbers small.
    double max_time = 0;
    for (const auto& r : runs)
        for (const auto* v : {&r.step_time, &r.val_time})
            for (double t : *v)
                if (std::isfinite(t)) max_time = std::max(max_time, t);
    const double tunit = max_time > 7200 ? 3600 : max_time > 300 ? 60 : 1;
    const std::string tname = tunit == 3600 ? "h" : tunit == 60 ? "min" : "s";

    Chart by_time, by_tokens;
    by_time.title = "loss vs training time";
    by_time.x_label = "training time (" + tname + ", evaluation excluded)";
    by_tokens.title = "loss vs tokens";
    by_tokens.x_label = "training tokens";
    by_tokens.x_format = TickFormat::si;
    for (Chart* c : {&by_time, &by_tokens}) {
        c->y_label = "loss (nats/token)";
        c->width = 640;
        c->height = 430;
        c->x_min = 0.0;
    }
    Chart hs;
    hs.title = "HellaSwag (acc_norm) vs tokens";
    hs.x_label = "training tokens";
    hs.x_format = TickFormat::si;
    hs.y_label = "acc_norm";
    hs.width = 640;
    hs.height = 430;
    hs.x_min = 0.0;
    hs.hlines.push_back({0.25, "chance (4 endings)", "#888", true});
    bool any_hs = false;

    // The loss axis: the first 5% of each run (the initial ~ln(V) losses)
    // would squash the part worth reading, so it is left above the top.
    double top = -INFINITY, lo = INFINITY, all_top = -INFINITY;
    std::set<double> targets, floors;
    for (size_t k = 0; k < runs.size(); k++) {
        const RunCurves& r = runs[k];
        const std::string color = kRunColors[k % std::size(kRunColors)];
        int w = opt.smooth > 0 ? opt.smooth : std::clamp(int(r.step_loss.size() / 50), 1, 100);
        const std::vector<double> smooth = ema_smooth(r.step_loss, w);
        double tok_end = 0;
        for (double t : r.step_tokens) tok_end = std::max(tok_end, std::isfinite(t) ? t : 0.0);
        for (double t : r.val_tokens) tok_end = std::max(tok_end, std::isfinite(t) ? t : 0.0);
        auto consider = [&](const std::vector<double>& tok, const std::vector<double>& y) {
            for (size_t i = 0; i < y.size(); i++) {
                if (!std::isfinite(y[i])) continue;
                lo = std::min(lo, y[i]);
                all_top = std::max(all_top, y[i]);
                if (i < tok.size() && tok[i] >= 0.05 * tok_end) top = std::max(top, y[i]);
            }
        };
        consider(r.step_tokens, smooth);
        consider(r.val_tokens, r.val_loss);

        std::string label = r.name;
        if (r.target && r.time_to_target) label += ": target in " + fmt(*r.time_to_target / tunit, "%.3g") + " " + tname;
        else if (r.target) label += ": target not reached";
        const bool has_val = !r.val_loss.empty();
        for (Chart* c : {&by_time, &by_tokens}) {
            const bool t = c == &by_time;
            ChartSeries train;
            train.kind = ChartSeries::Kind::line;
            train.label = has_val ? "" : label + " (train, smoothed)";
            train.color = color;
            train.width = has_val ? 1.2 : 1.8;
            train.opacity = has_val ? 0.45 : 1.0;
            for (size_t i = 0; i < smooth.size(); i++) {
                train.x.push_back(t ? r.step_time[i] / tunit : r.step_tokens[i]);
                train.y.push_back(smooth[i]);
            }
            c->series.push_back(std::move(train));
            if (has_val) {
                ChartSeries val;
                val.kind = ChartSeries::Kind::line;
                val.label = label;
                val.color = color;
                val.width = 2.2;
                val.markers = r.val_loss.size() <= 60;
                for (size_t i = 0; i < r.val_loss.size(); i++) {
                    val.x.push_back(t ? r.val_time[i] / tunit : r.val_tokens[i]);
                    val.y.push_back(r.val_loss[i]);
                    val.titles.push_back(r.name + ": val loss " + fmt(r.val_loss[i], "%.5g") + " at " +
                                         (t ? fmt(r.val_time[i] / tunit, "%.4g") + " " + tname : fmt(r.val_tokens[i], "%.4g") + " tokens"));
                }
                c->series.push_back(std::move(val));
            }
        }
        if (!r.hs_acc_norm.empty()) {
            any_hs = true;
            ChartSeries s;
            s.label = r.name;
            s.color = color;
            s.markers = true;
            s.x = r.hs_tokens;
            s.y = r.hs_acc_norm;
            hs.series.push_back(std::move(s));
        }
        if (r.target) targets.insert(*r.target);
        if (r.loss_floor) floors.insert(*r.loss_floor);
    }
    for (double t : targets)
        for (Chart* c : {&by_time, &by_tokens}) c->hlines.push_back({t, "target " + fmt(t), "#c22", true});
    for (double f : floors)
        for (Chart* c : {&by_time, &by_tokens}) c->hlines.push_back({f, "loss floor " + fmt(f), "#555", true});
    for (double t : targets) lo = std::min(lo, t), top = std::max(top, t);
    for (double f : floors) lo = std::min(lo, f);
    if (!std::isfinite(top)) top = all_top;
    const double y_top = opt.y_max ? *opt.y_max : top + 0.06 * std::max(1e-6, top - lo);
    const double y_bottom = opt.y_min ? *opt.y_min : lo - 0.04 * std::max(1e-6, y_top - lo);
    for (Chart* c : {&by_time, &by_tokens}) {
        c->y_max = y_top;
        c->y_min = y_bottom;
        if (all_top > y_top) c->note = "losses above " + fmt(y_top) + " (the start of training, up to " + fmt(all_top) + ") run off the top; --ymax sets it";
    }
    std::vector<Chart> charts = {by_time, by_tokens};
    if (any_hs) charts.push_back(hs);
    return render_grid(charts, 2);
}

int plot_main(const std::vector<std::string>& args) {
    const CliOptions o = parse_cli_options("plot", args, {"--out", "--smooth", "--ymax", "--ymin"}, {}, 1000);
    if (o.has("--help") || o.positional.empty()) {
        std::printf(R"(usage: gpt plot RUN_DIR... [--out FILE.svg] [--smooth N] [--ymax Y] [--ymin Y]

Draws the loss curves of one or several runs (their log.jsonl) as SVG: validation
loss (a dot per evaluation) and the train loss smoothed (thin, same colour) against
training time and against tokens, each run's target and the loss floor when the log
records them, and HellaSwag acc_norm when the runs evaluated it. With rsvg-convert
installed (Debian: librsvg2-bin) a PNG is written next to the SVG.

  --out FILE.svg  where to write (default: RUN_DIR/plot.svg for one run, plot.svg for several)
  --smooth N      EMA window of the train loss in logged steps (default: 1/50 of the run)
  --ymax, --ymin  the loss axis range (default: from the data, leaving out the first 5%%
                  of training, whose losses near ln(vocab) would flatten the rest)
)");
        return o.has("--help") ? 0 : 2;
    }
    PlotOptions opt;
    if (o.has("--smooth")) opt.smooth = parse_int_option("--smooth", o.get("--smooth"), 1);
    auto number = [&](const std::string& flag) {
        const std::string v = o.get(flag);
        try {
            size_t pos = 0;
            const double d = std::stod(v, &pos);
            if (pos == v.size() && std::isfinite(d)) return d;
        } catch (...) {
        }
        bad_input("option '" + flag + "': expected a number, got '" + v + "'");
    };
    if (o.has("--ymax")) opt.y_max = number("--ymax");
    if (o.has("--ymin")) opt.y_min = number("--ymin");
    if (opt.y_max && opt.y_min && *opt.y_min >= *opt.y_max) bad_input("--ymin must be below --ymax");
    std::vector<RunCurves> runs;
    for (const auto& p : o.positional) runs.push_back(read_run_curves(p));
    // Two runs with the same directory name (a/run, b/run) get their paths as names.
    for (auto& r : runs)
        for (const auto& q : runs)
            if (&r != &q && r.name == q.name) r.name = fs::path(r.path).parent_path().string();
    std::string out = o.get("--out");
    if (out.empty()) {
        const bool one_dir = runs.size() == 1 && fs::is_directory(o.positional[0]);
        out = one_dir ? (fs::path(o.positional[0]) / "plot.svg").string() : "plot.svg";
    }
    if (fs::path(out).extension() != ".svg") bad_input("--out '" + out + "': the file name must end in .svg");
    write_file_atomic(out, plot_runs_svg(runs, opt));
    const std::string png = fs::path(out).replace_extension(".png").string();
    std::string why;
    if (svg_to_png(out, png, &why)) std::printf("gpt plot: wrote %s and %s\n", out.c_str(), png.c_str());
    else std::printf("gpt plot: wrote %s (no PNG: %s)\n", out.c_str(), why.c_str());
    return 0;
}

}  // namespace gpt
