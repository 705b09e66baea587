// `gpt plot`: loss curves of training runs from their log.jsonl.
//
// One SVG with two panels: validation loss (lines with a dot per evaluation)
// and smoothed train loss (thin, lighter, same colour) against training time
// and against tokens, one colour per run, with each run's target and the loss
// floor (when the log records them) as dashed lines; a third panel shows
// HellaSwag acc_norm against tokens when a run evaluated it. A resumed run's
// log repeats the steps after its checkpoint: the later records win.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace gpt {

struct RunCurves {
    std::string name;   // the run directory's name, as the legend shows it
    std::string path;   // its log.jsonl
    std::vector<double> step_time, step_tokens, step_loss;  // train records
    std::vector<double> val_time, val_tokens, val_loss;     // evaluations
    std::vector<double> hs_tokens, hs_acc_norm;             // HellaSwag evaluations
    std::optional<double> target, loss_floor, time_to_target;
};

// Reads RUN_DIR/log.jsonl (or a log.jsonl path). Throws BadInput naming the
// file when it is missing or has no training records.
RunCurves read_run_curves(const std::string& run);

struct PlotOptions {
    int smooth = 0;                   // EMA window in train records; 0 = about 1/50 of the run
    std::optional<double> y_max;      // loss axis top; unset: leave out the first 5% of the run's high losses
    std::optional<double> y_min;
};

// The SVG document for the runs.
std::string plot_runs_svg(const std::vector<RunCurves>& runs, const PlotOptions& opt);

// Debiased exponential moving average with window w (alpha = 2 / (w + 1)).
std::vector<double> ema_smooth(const std::vector<double>& v, int window);

}  // namespace gpt

namespace gpt {
// `gpt plot RUN_DIR... [--out FILE.svg] [--smooth N] [--ymax Y] [--ymin Y]`; returns the exit code.
int plot_main(const std::vector<std::string>& args);
}  // namespace gpt
