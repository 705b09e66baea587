#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace gpt {

int schedule_horizon(const Config& cfg) { return cfg.schedule.steps > 0 ? cfg.schedule.steps : cfg.run.max_steps; }

double learning_rate(const Config& cfg, int step) {
    const auto& s = cfg.schedule;
    const double peak = cfg.optim.lr, floor = peak * s.final_lr_frac;
    // llm.c's warmup: step 0 already trains at lr/warmup, not at 0.
    if (step < s.warmup_steps) return peak * (step + 1) / s.warmup_steps;
    if (s.type == "constant") return peak;
    const int horizon = schedule_horizon(cfg);
    if (step >= horizon) return floor;
    if (s.type == "wsd") {
        const int decay_start = horizon - static_cast<int>(std::lround(s.decay_frac * horizon));
        if (step < std::max(decay_start, s.warmup_steps)) return peak;
        const int begin = std::max(decay_start, s.warmup_steps);
        const double frac = double(step - begin) / std::max(1, horizon - begin);
        return peak + (floor - peak) * frac;
    }
    const double frac = double(step - s.warmup_steps) / std::max(1, horizon - s.warmup_steps);  // 0 -> 1
    if (s.type == "linear") return peak + (floor - peak) * frac;
    return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * frac));  // cosine
}

}  // namespace gpt
