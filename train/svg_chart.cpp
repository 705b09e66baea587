#include "train/svg_chart.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

extern char** environ;

namespace gpt {

namespace {

// Colours that stay distinct for the common kinds of colour blindness (Tableau 10).
const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

std::string esc(const std::string& s) {
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

std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

std::string frac(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    return buf;
}

// Width of a label in px at font-size 12, roughly (sans-serif averages ~0.58 em).
double text_width(const std::string& s, double size = 12) { return 0.58 * size * double(s.size()); }

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
    std::vector<double> out;
    if (!std::isfinite(lo) || !std::isfinite(hi) || hi <= lo) return out;
    const double raw = (hi - lo) / std::max(1, target - 1);
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = mag;
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (m * mag >= raw) {
            step = m * mag;
            break;
        }
    const double first = std::ceil(lo / step - 1e-9) * step;
    for (double v = first; v <= hi + step * 1e-9; v += step) out.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
    return out;
}

std::string tick_label(double v, double step, TickFormat f) {
    if (v == 0) return "0";
    char buf[48];
    double scale = 1;
    const char* unit = "";
    if (f == TickFormat::si) {
        const double a = std::fabs(v) > 0 ? std::fabs(v) : std::fabs(step);
        if (a >= 1e12) scale = 1e12, unit = "T";
        else if (a >= 1e9) scale = 1e9, unit = "B";
        else if (a >= 1e6) scale = 1e6, unit = "M";
        else if (a >= 1e3) scale = 1e3, unit = "k";
    }
    const double s = step / scale;
    int decimals = s > 0 ? std::max(0, int(std::ceil(-std::log10(s) - 1e-9))) : 0;
    decimals = std::min(decimals, 8);
    // A step like 2.5 needs one more digit than its magnitude says.
    if (s > 0 && std::fabs(std::round(s * std::pow(10.0, decimals)) - s * std::pow(10.0, decimals)) > 1e-6) decimals++;
    std::snprintf(buf, sizeof buf, "%.*f%s", decimals, v / scale, unit);
    return buf;
}

std::string Chart::render_body(double ox, double oy) const {
    // The legend's entries: every labelled series and reference line.
    double legend_w = 0;
    for (const auto& s : series)
        if (!s.label.empty()) legend_w = std::max(legend_w, text_width(s.label) + 40);
    for (const auto& h : hlines)
        if (!h.label.empty()) legend_w = std::max(legend_w, text_width(h.label) + 40);
    const double ML = 72, MR = 20 + (legend_right && legend_w > 0 ? legend_w + 12 : 0), MT = 34, MB = note.empty() ? 52 : 66;
    const double px0 = ox + ML, px1 = ox + width - MR, py0 = oy + MT, py1 = oy + height - MB;

    // Ranges: x over every series, y over the plotted values and the reference lines.
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (const auto& s : series)
        for (size_t i = 0; i < s.x.size(); i++) {
            if (!std::isfinite(s.x[i])) continue;
            xlo = std::min(xlo, s.x[i]);
            xhi = std::max(xhi, s.x[i]);
            if (s.kind != ChartSeries::Kind::top_mark && i < s.y.size() && std::isfinite(s.y[i])) {
                ylo = std::min(ylo, s.y[i]);
                yhi = std::max(yhi, s.y[i]);
            }
        }
    for (const auto& h : hlines) {
        ylo = std::min(ylo, h.y);
        yhi = std::max(yhi, h.y);
    }
    if (!std::isfinite(xlo)) xlo = 0, xhi = 1;
    if (!std::isfinite(ylo)) ylo = 0, yhi = 1;
    if (x_min) xlo = *x_min;
    if (x_max) xhi = *x_max;
    if (xhi - xlo <= 0) xhi = xlo + 1;
    if (yhi - ylo < 1e-12) yhi = ylo + std::max(1e-6, std::fabs(ylo) * 0.1), ylo -= std::max(1e-6, std::fabs(ylo) * 0.1);
    const double pad = 0.05 * (yhi - ylo);
    ylo = y_min ? *y_min : ylo - pad;
    yhi = y_max ? *y_max : yhi + pad;
    if (yhi <= ylo) yhi = ylo + 1;
    auto X = [&](double v) { return px0 + (px1 - px0) * (v - xlo) / (xhi - xlo); };
    auto Y = [&](double v) { return py1 - (py1 - py0) * (v - ylo) / (yhi - ylo); };

    std::ostringstream o;
    const std::string clip = "clip" + std::to_string(long(ox)) + "_" + std::to_string(long(oy));
    o << "<clipPath id=\"" << clip << "\"><rect x=\"" << num(px0) << "\" y=\"" << num(py0) << "\" width=\"" << num(px1 - px0) << "\" height=\""
      << num(py1 - py0) << "\"/></clipPath>\n";
    if (!title.empty())
        o << "<text x=\"" << num(ox + width / 2) << "\" y=\"" << num(oy + 22) << "\" text-anchor=\"middle\" font-size=\"15\">" << esc(title)
          << "</text>\n";

    // Grid and ticks.
    std::vector<double> yt = nice_ticks(ylo, yhi, 6), xt = nice_ticks(xlo, xhi, 7);
    if (integer_x) {
        const double step = xt.size() > 1 ? std::max(1.0, std::round(xt[1] - xt[0])) : 1.0;
        xt.clear();
        for (double v = std::ceil(xlo / step) * step; v <= xhi + 1e-9; v += step) xt.push_back(v);
    }
    const double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1, xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
    for (double v : yt)
        o << "<line x1=\"" << num(px0) << "\" y1=\"" << num(Y(v)) << "\" x2=\"" << num(px1) << "\" y2=\"" << num(Y(v))
          << "\" stroke=\"#e4e4e4\"/><text x=\"" << num(px0 - 6) << "\" y=\"" << num(Y(v) + 4) << "\" text-anchor=\"end\">"
          << esc(tick_label(v, ystep, y_format)) << "</text>\n";
    for (double v : xt)
        o << "<line x1=\"" << num(X(v)) << "\" y1=\"" << num(py0) << "\" x2=\"" << num(X(v)) << "\" y2=\"" << num(py1)
          << "\" stroke=\"#eeeeee\"/><text x=\"" << num(X(v)) << "\" y=\"" << num(py1 + 17) << "\" text-anchor=\"middle\">"
          << esc(tick_label(v, xstep, x_format)) << "</text>\n";
    o << "<line x1=\"" << num(px0) << "\" y1=\"" << num(py1) << "\" x2=\"" << num(px1) << "\" y2=\"" << num(py1) << "\" stroke=\"black\"/>\n";
    o << "<line x1=\"" << num(px0) << "\" y1=\"" << num(py0) << "\" x2=\"" << num(px0) << "\" y2=\"" << num(py1) << "\" stroke=\"black\"/>\n";
    if (!x_label.empty())
        o << "<text x=\"" << num((px0 + px1) / 2) << "\" y=\"" << num(py1 + 38) << "\" text-anchor=\"middle\">" << esc(x_label) << "</text>\n";
    if (!note.empty())
        o << "<text x=\"" << num((px0 + px1) / 2) << "\" y=\"" << num(py1 + 54) << "\" text-anchor=\"middle\" font-size=\"10\" fill=\"#666\">"
          << esc(note) << "</text>\n";
    if (!y_label.empty())
        o << "<text transform=\"translate(" << num(ox + 16) << "," << num((py0 + py1) / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
          << esc(y_label) << "</text>\n";

    // Reference lines under the data.
    for (const auto& h : hlines) {
        if (h.y < ylo || h.y > yhi) continue;
        o << "<line x1=\"" << num(px0) << "\" y1=\"" << num(Y(h.y)) << "\" x2=\"" << num(px1) << "\" y2=\"" << num(Y(h.y)) << "\" stroke=\""
          << h.color << "\" stroke-width=\"1.3\"" << (h.dashed ? " stroke-dasharray=\"6,4\"" : "") << "/>\n";
        if (!h.label.empty())
            o << "<text x=\"" << num(px1 - 4) << "\" y=\"" << num(Y(h.y) - 4) << "\" text-anchor=\"end\" font-size=\"11\" fill=\"" << h.color
              << "\">" << esc(h.label) << "</text>\n";
    }

    // Series, in order (later ones on top).
    std::vector<std::string> colors;
    size_t next_color = 0;
    for (const auto& s : series) colors.push_back(!s.color.empty() ? s.color : kPalette[next_color++ % std::size(kPalette)]);
    for (size_t k = 0; k < series.size(); k++) {
        const ChartSeries& s = series[k];
        const std::string& c = colors[k];
        const std::string style = " stroke-width=\"" + num(s.width) + "\"" + (s.dashed ? " stroke-dasharray=\"5,4\"" : "") +
                                  (s.opacity < 1 ? " opacity=\"" + frac(s.opacity) + "\"" : "");
        auto title_of = [&](size_t i) { return i < s.titles.size() && !s.titles[i].empty() ? "<title>" + esc(s.titles[i]) + "</title>" : ""; };
        switch (s.kind) {
            case ChartSeries::Kind::line:
            case ChartSeries::Kind::step: {
                std::string d;
                bool pen = false;
                double last_y = NAN;
                for (size_t i = 0; i < s.x.size() && i < s.y.size(); i++) {
                    if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
                        pen = false;
                        continue;
                    }
                    if (!pen) d += (d.empty() ? "M" : " M") + num(X(s.x[i])) + "," + num(Y(s.y[i]));
                    else if (s.kind == ChartSeries::Kind::step) d += " H" + num(X(s.x[i])) + " V" + num(Y(s.y[i]));
                    else d += " L" + num(X(s.x[i])) + "," + num(Y(s.y[i]));
                    pen = true;
                    last_y = s.y[i];
                }
                if (s.kind == ChartSeries::Kind::step && std::isfinite(last_y)) d += " H" + num(px1);
                if (!d.empty())
                    o << "<path d=\"" << d << "\" fill=\"none\" stroke=\"" << c << "\"" << style << " stroke-linejoin=\"round\" clip-path=\"url(#"
                      << clip << ")\"/>\n";
                if (s.markers)
                    for (size_t i = 0; i < s.x.size() && i < s.y.size(); i++)
                        if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && s.y[i] >= ylo && s.y[i] <= yhi)
                            o << "<circle cx=\"" << num(X(s.x[i])) << "\" cy=\"" << num(Y(s.y[i])) << "\" r=\"2.6\" fill=\"" << c << "\">" << title_of(i)
                              << "</circle>\n";
                break;
            }
            case ChartSeries::Kind::points:
                for (size_t i = 0; i < s.x.size() && i < s.y.size(); i++) {
                    if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
                    o << "<circle cx=\"" << num(X(s.x[i])) << "\" cy=\"" << num(Y(s.y[i])) << "\" r=\"" << num(s.radius) << "\" fill=\"" << c << "\""
                      << (s.outline.empty() ? "" : " stroke=\"" + s.outline + "\"") << " clip-path=\"url(#" << clip << ")\">" << title_of(i)
                      << "</circle>\n";
                }
                break;
            case ChartSeries::Kind::top_mark:
                for (size_t i = 0; i < s.x.size(); i++) {
                    if (!std::isfinite(s.x[i])) continue;
                    const double x = X(s.x[i]);
                    if (s.mark_shape == "triangle")
                        o << "<path d=\"M" << num(x - 5) << "," << num(py0 - 3) << " l5,-9 l5,9 z\" fill=\"" << c << "\" stroke=\""
                          << (s.outline.empty() ? "#555" : s.outline) << "\">" << title_of(i) << "</path>\n";
                    else
                        o << "<path d=\"M" << num(x - 4) << "," << num(py0 - 12) << " l8,8 m-8,0 l8,-8\" stroke=\"" << c << "\" stroke-width=\"2\">"
                          << title_of(i) << "</path>\n";
                }
                break;
        }
    }

    // Legend: top right inside the plot area, or beside it.
    struct Entry {
        const ChartSeries* s;
        const ChartHLine* h;
        std::string color;
    };
    std::vector<Entry> entries;
    for (size_t k = 0; k < series.size(); k++)
        if (!series[k].label.empty()) entries.push_back({&series[k], nullptr, colors[k]});
    for (const auto& h : hlines)
        if (!h.label.empty() && h.y >= ylo && h.y <= yhi) entries.push_back({nullptr, &h, h.color});
    if (!entries.empty()) {
        const double w = legend_w;
        const double row = 17, bx = legend_right ? px1 + 12 : px1 - w - 8, by = legend_right ? py0 : py0 + 8, bh = row * double(entries.size()) + 8;
        o << "<rect x=\"" << num(bx) << "\" y=\"" << num(by) << "\" width=\"" << num(w) << "\" height=\"" << num(bh)
          << "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n";
        for (size_t i = 0; i < entries.size(); i++) {
            const Entry& e = entries[i];
            const double cy = by + 4 + row * (double(i) + 0.5), sx = bx + 8;
            if (e.h) {
                o << "<line x1=\"" << num(sx) << "\" y1=\"" << num(cy) << "\" x2=\"" << num(sx + 22) << "\" y2=\"" << num(cy) << "\" stroke=\"" << e.color
                  << "\" stroke-width=\"1.3\"" << (e.h->dashed ? " stroke-dasharray=\"6,4\"" : "") << "/>\n";
            } else if (e.s->kind == ChartSeries::Kind::points) {
                o << "<circle cx=\"" << num(sx + 11) << "\" cy=\"" << num(cy) << "\" r=\"" << num(std::min(5.0, e.s->radius)) << "\" fill=\"" << e.color
                  << "\"" << (e.s->outline.empty() ? "" : " stroke=\"" + e.s->outline + "\"") << "/>\n";
            } else if (e.s->kind == ChartSeries::Kind::top_mark) {
                if (e.s->mark_shape == "triangle")
                    o << "<path d=\"M" << num(sx + 6) << "," << num(cy + 4) << " l5,-9 l5,9 z\" fill=\"" << e.color << "\" stroke=\""
                      << (e.s->outline.empty() ? "#555" : e.s->outline) << "\"/>\n";
                else
                    o << "<path d=\"M" << num(sx + 7) << "," << num(cy - 4) << " l8,8 m-8,0 l8,-8\" stroke=\"" << e.color << "\" stroke-width=\"2\"/>\n";
            } else {
                o << "<line x1=\"" << num(sx) << "\" y1=\"" << num(cy) << "\" x2=\"" << num(sx + 22) << "\" y2=\"" << num(cy) << "\" stroke=\"" << e.color
                  << "\" stroke-width=\"" << num(std::max(2.0, e.s->width)) << "\"" << (e.s->dashed ? " stroke-dasharray=\"5,4\"" : "")
                  << (e.s->opacity < 1 ? " opacity=\"" + frac(e.s->opacity) + "\"" : "") << "/>\n";
            }
            o << "<text x=\"" << num(sx + 30) << "\" y=\"" << num(cy + 4) << "\">" << esc(e.s ? e.s->label : e.h->label) << "</text>\n";
        }
    }
    return o.str();
}

std::string Chart::render() const { return render_grid({*this}, 1); }

std::string render_grid(const std::vector<Chart>& charts, int columns) {
    columns = std::max(1, columns);
    double total_w = 0, total_h = 0;
    std::vector<double> col_x, row_y;
    const size_t rows = (charts.size() + size_t(columns) - 1) / size_t(columns);
    // Each column as wide as its widest chart, each row as tall as its tallest.
    std::vector<double> col_w(size_t(columns), 0), row_h(rows, 0);
    for (size_t i = 0; i < charts.size(); i++) {
        col_w[i % size_t(columns)] = std::max(col_w[i % size_t(columns)], charts[i].width);
        row_h[i / size_t(columns)] = std::max(row_h[i / size_t(columns)], charts[i].height);
    }
    for (double w : col_w) col_x.push_back(total_w), total_w += w;
    for (double h : row_h) row_y.push_back(total_h), total_h += h;
    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(total_w) << "\" height=\"" << num(total_h) << "\" viewBox=\"0 0 " << num(total_w)
      << " " << num(total_h) << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    for (size_t i = 0; i < charts.size(); i++) o << charts[i].render_body(col_x[i % size_t(columns)], row_y[i / size_t(columns)]);
    o << "</svg>\n";
    return o.str();
}

bool svg_to_png(const std::string& svg_path, const std::string& png_path, std::string* why) {
    const char* path = std::getenv("PATH");
    std::string exe;
    std::stringstream dirs(path ? path : "");
    for (std::string dir; std::getline(dirs, dir, ':');) {
        const std::string p = (dir.empty() ? "." : dir) + "/rsvg-convert";
        if (::access(p.c_str(), X_OK) == 0) {
            exe = p;
            break;
        }
    }
    if (exe.empty()) {
        if (why) *why = "rsvg-convert is not installed (Debian: apt-get install librsvg2-bin)";
        return false;
    }
    std::vector<std::string> args = {exe, "-f", "png", "-o", png_path, svg_path};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
        if (why) *why = "cannot run " + exe + ": " + std::strerror(errno);
        return false;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) break;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (why) *why = exe + " failed on " + svg_path;
        return false;
    }
    return true;
}

}  // namespace gpt
