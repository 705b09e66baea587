#include "search/stats.h"

#include <cmath>
#include <cstdio>

namespace gpt::search {

namespace {

// The continued fraction of the regularized incomplete beta function I_x(a, b)
// (modified Lentz), valid for x < (a + 1) / (a + b + 2).
double beta_cf(double a, double b, double x) {
    const double tiny = 1e-300;
    double c = 1, d = 1 - (a + b) * x / (a + 1);
    if (std::fabs(d) < tiny) d = tiny;
    d = 1 / d;
    double h = d;
    for (int m = 1; m <= 300; m++) {
        const double m2 = 2.0 * m;
        double aa = m * (b - m) * x / ((a + m2 - 1) * (a + m2));
        d = 1 + aa * d;
        if (std::fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (std::fabs(c) < tiny) c = tiny;
        d = 1 / d;
        h *= d * c;
        aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1));
        d = 1 + aa * d;
        if (std::fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (std::fabs(c) < tiny) c = tiny;
        d = 1 / d;
        const double del = d * c;
        h *= del;
        if (std::fabs(del - 1) < 1e-15) break;
    }
    return h;
}

double incomplete_beta(double a, double b, double x) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
    if (x < (a + 1) / (a + b + 2)) return front * beta_cf(a, b, x) / a;
    return 1 - front * beta_cf(b, a, 1 - x) / b;
}

std::string pct(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f%%", 100 * v);
    return buf;
}

std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    return buf;
}

double t_crit(double alpha, int min_pairs, int max_pairs, int n) {
    const int looks = max_pairs - min_pairs + 1;
    return student_t_quantile(1 - alpha / looks, n - 1);
}

}  // namespace

double student_t_cdf(double t, double df) {
    const double x = df / (df + t * t);
    const double tail = 0.5 * incomplete_beta(df / 2, 0.5, x);  // P(T > |t|)
    return t >= 0 ? 1 - tail : tail;
}

double student_t_quantile(double p, double df) {
    // Bisection on the CDF: monotone, and precise enough for a decision rule.
    double lo = -1e6, hi = 1e6;
    for (int i = 0; i < 200; i++) {
        const double mid = 0.5 * (lo + hi);
        if (student_t_cdf(mid, df) < p) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

double resolvable_gain(double sd, double min_gain, double alpha, int min_pairs, int max_pairs) {
    const double t = t_crit(alpha, min_pairs, max_pairs, max_pairs);
    return 1 - std::exp(std::log(1 - min_gain) - t * sd / std::sqrt(double(max_pairs)));
}

PairedVerdict paired_rule(const std::vector<double>& d, double min_gain, double alpha, int min_pairs, int max_pairs, const std::string& what) {
    PairedVerdict v;
    v.n = int(d.size());
    if (v.n == 0) {
        v.decision = "continue";
        return v;
    }
    double s = 0;
    for (double x : d) s += x;
    v.mean = s / v.n;
    double ss = 0;
    for (double x : d) ss += (x - v.mean) * (x - v.mean);
    v.sd = v.n > 1 ? std::sqrt(ss / (v.n - 1)) : 0;
    v.ratio = std::exp(v.mean);
    const double margin = std::log(1 - min_gain);
    const std::string ratio_text = what + " ratio " + num(v.ratio) + " (candidate / incumbent, geometric mean of " + std::to_string(v.n) + " pair" +
                                   (v.n == 1 ? "" : "s");
    if (v.n >= 2) {
        const double t = t_crit(alpha, min_pairs, max_pairs, v.n);
        const double se = v.sd / std::sqrt(double(v.n));
        v.ucb = v.mean + t * se;
        v.ratio_lo = std::exp(v.mean - t * se);
        v.ratio_hi = std::exp(v.ucb);
        v.resolvable = resolvable_gain(v.sd, min_gain, alpha, min_pairs, max_pairs);
    }
    const std::string bounds = v.n >= 2 ? ", bounds [" + num(v.ratio_lo) + ", " + num(v.ratio_hi) + "]" : "";
    const std::string need = "a keep needs the upper bound below " + num(1 - min_gain) + " (min_gain " + pct(min_gain) + ")";
    if (v.mean >= margin) {
        v.decision = "discard";
        v.why = ratio_text + bounds + "): not below " + num(1 - min_gain) + ", so not a gain of min_gain " + pct(min_gain);
    } else if (v.n >= min_pairs && v.ucb < margin) {
        v.decision = "keep";
        v.why = ratio_text + bounds + "): the upper bound is below " + num(1 - min_gain) + ": a gain of at least min_gain " + pct(min_gain) +
                " at a false-keep rate of at most " + pct(alpha);
    } else if (v.n >= max_pairs) {
        v.decision = "undecided";
        v.why = ratio_text + bounds + "): " + need + "; noise " + pct(v.sd) + " per pair: with " + std::to_string(max_pairs) +
                " pairs only gains above " + pct(v.resolvable) + " can be resolved";
    } else {
        v.decision = "continue";
        v.why = ratio_text + bounds + "): " + need + ", one more pair";
    }
    return v;
}

}  // namespace gpt::search
