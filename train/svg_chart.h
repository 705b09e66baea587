// Line and scatter charts as standalone SVG: `gpt plot`'s loss curves and the
// search report's progress chart are drawn with this one module.
//
// A Chart is data, not drawing calls: series (lines, points, step lines,
// marks above the plot area), horizontal reference lines (a target, a loss
// floor), axis labels and ranges. render() picks "nice" ticks (1, 2, 5 x 10^k),
// clips the data to the plot area, and draws a legend of every labelled
// series and reference line. Several charts can share one SVG side by side
// (render_grid). svg_to_png converts with rsvg-convert when it is installed
// (Debian: librsvg2-bin); it is optional at run time, not a build dependency.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace gpt {

enum class TickFormat {
    plain,  // 0.25, 3.5, 1200
    si,     // 1.5k, 20M, 3B (token counts)
};

struct ChartSeries {
    enum class Kind {
        line,      // a polyline through the points (NaN breaks it)
        points,    // one circle per point
        step,      // a staircase: horizontal to the next x, then vertical
        top_mark,  // a mark above the plot area at each x (y ignored): outcomes without a value
    };
    Kind kind = Kind::line;
    std::string label;                // legend entry; "" = not in the legend
    std::vector<double> x, y;
    std::vector<std::string> titles;  // per-point tooltips (optional, same length as x)
    std::string color = "";           // stroke (lines) or fill (points); "" = next palette colour
    std::string outline = "";         // points: stroke around the circle ("" = none)
    double width = 1.8;               // line width
    double radius = 3.5;              // points
    double opacity = 1.0;
    bool dashed = false;
    bool markers = false;             // line: also a small dot at each point
    std::string mark_shape = "cross";  // top_mark: "cross" or "triangle"
};

struct ChartHLine {
    double y = 0;
    std::string label;  // drawn at the line's right end and in the legend
    std::string color = "#c22";
    bool dashed = true;
};

struct Chart {
    std::string title, x_label, y_label;
    double width = 900, height = 460;
    TickFormat x_format = TickFormat::plain, y_format = TickFormat::plain;
    bool integer_x = false;  // x ticks at whole numbers only (trial ids, steps)
    std::optional<double> x_min, x_max, y_min, y_max;  // unset: from the data
    std::vector<ChartSeries> series;
    std::vector<ChartHLine> hlines;
    std::string note;  // one line of small text under the x axis label (e.g. what was clipped)
    bool legend_right = false;  // the legend beside the plot area instead of inside its top right corner

    // A complete <svg> document.
    std::string render() const;
    // The chart's elements placed at (x, y) in a larger SVG (no <svg> wrapper).
    std::string render_body(double x, double y) const;
};

// Charts in a grid (row-major, `columns` per row) in one <svg> document.
std::string render_grid(const std::vector<Chart>& charts, int columns);

// "Nice" tick values covering [lo, hi]: about `target` of them, steps of 1, 2 or 5 x 10^k.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);
std::string tick_label(double v, double step, TickFormat f);

// Renders svg_path to png_path with rsvg-convert. Returns false (and says why
// in *why) when rsvg-convert is not on PATH or fails.
bool svg_to_png(const std::string& svg_path, const std::string& png_path, std::string* why);

}  // namespace gpt
