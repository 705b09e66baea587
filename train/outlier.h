// llm.c's outlier detector for skipping updates (its -sl / -sg options): the
// z-score of a new loss or gradient norm against the last 128 values. Until
// 128 values have been seen there is no z-score (NaN). Every finite value
// enters the window, skipped or not, as in llm.c. The window is part of the
// training state (state.bin), so a resumed run skips exactly the updates an
// uninterrupted one would.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace gpt {

struct ZScoreWindow {
    static constexpr uint32_t kSize = 128;
    std::array<double, kSize> values{};
    uint32_t count = 0;  // values seen, up to kSize
    uint32_t next = 0;   // slot the next value replaces once full

    // Adds x and returns its z-score against the window that now includes x
    // (llm.c's order), or NaN while the window is filling. The mean and deviation are recomputed from
    // the values (not running sums), so rounding never drifts.
    double add(double x) {
        if (count < kSize) {
            values[count++] = x;
            return NAN;
        }
        values[next] = x;
        next = (next + 1) % kSize;
        double mean = 0;
        for (double v : values) mean += v;
        mean /= kSize;
        double var = 0;
        for (double v : values) var += (v - mean) * (v - mean);
        const double sd = std::sqrt(var / kSize);
        return sd > 0 ? (x - mean) / sd : 0.0;
    }
};

}  // namespace gpt
