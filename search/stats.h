// The statistics of the paired rule: a sequential one-sided test on the log
// ratios of paired measurements (candidate / incumbent, run at the same time
// with the same seed), with a margin of min_gain and a stated false-keep rate.
//
// After each pair the rule looks at d_1..d_n (d_i = log(candidate_i / incumbent_i),
// lower is better):
//   keep      n >= min_pairs and the upper (1 - alpha/L) confidence bound of
//             mean(d) (Student t, n-1 degrees of freedom) is below log(1 - min_gain),
//             where L = max_pairs - min_pairs + 1 is the number of looks (Bonferroni):
//             a candidate whose true gain is at most min_gain is kept with
//             probability at most alpha, however many looks it gets;
//   discard   mean(d) >= log(1 - min_gain): not even the point estimate shows
//             the gain (from the first pair on; this never adds false keeps);
//   undecided n == max_pairs without either: given up, and the gain the noise
//             could have resolved is stated;
//   continue  otherwise: one more pair.

#pragma once

#include <string>
#include <vector>

namespace gpt::search {

// The p-quantile of Student's t distribution with df degrees of freedom (df > 0, 0 < p < 1).
double student_t_quantile(double p, double df);
// P(T <= t) for Student's t with df degrees of freedom.
double student_t_cdf(double t, double df);

struct PairedVerdict {
    std::string decision;     // keep | discard | undecided | continue
    int n = 0;                // pairs
    double mean = 0, sd = 0;  // of the log ratios
    double ucb = 0;           // the upper confidence bound the keep rule used (n >= 2)
    double ratio = 1;         // exp(mean): candidate / incumbent, < 1 is better
    double ratio_lo = 0, ratio_hi = 0;  // two-sided 1 - 2 alpha interval of the ratio (n >= 2)
    double resolvable = 0;    // the smallest gain (1 - ratio) this noise resolves at max_pairs
    std::string why;          // one sentence with the numbers
};

// `what` names the measured quantity in the verdict's sentence ("time", "step time", "loss").
PairedVerdict paired_rule(const std::vector<double>& log_ratios, double min_gain, double alpha, int min_pairs, int max_pairs,
                          const std::string& what = "time");

// The smallest gain that max_pairs pairs with this standard deviation of the
// log ratios can resolve at the rule's level: 1 - exp(log(1 - min_gain) - t sd / sqrt(max_pairs)).
double resolvable_gain(double sd, double min_gain, double alpha, int min_pairs, int max_pairs);

}  // namespace gpt::search
