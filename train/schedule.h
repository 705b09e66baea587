// Learning-rate schedules, each with a linear warmup:
//   cosine    warmup, then cosine decay to final_lr_frac * lr at the horizon
//   linear    warmup, then linear decay to final_lr_frac * lr at the horizon
//   wsd       warmup, stable at lr, then linear decay over the last decay_frac of the horizon
//   constant  warmup, then lr
// Steps past the horizon stay at the final value. The horizon is
// schedule.steps, or run.max_steps when that is 0.
#pragma once

#include "train/config.h"

namespace gpt {

// Learning rate for 0-based optimizer step `step`.
double learning_rate(const Config& cfg, int step);

// The decay horizon in steps.
int schedule_horizon(const Config& cfg);

}  // namespace gpt
