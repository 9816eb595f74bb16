// Learning-rate schedule: linear warmup from 0 to the peak, then cosine decay to
// min_ratio · peak at the last step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

namespace seqrec::train {

struct WarmupCosine {
  double peak = 1e-3;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  double min_ratio = 0.0;

  /// Learning rate for the 1-based optimiser step.
  double operator()(std::int64_t step) const {
    if (warmup_steps > 0 && step <= warmup_steps) return peak * double(step) / double(warmup_steps);
    const std::int64_t span = std::max<std::int64_t>(1, total_steps - warmup_steps);
    const double t = std::clamp(double(step - warmup_steps) / double(span), 0.0, 1.0);
    const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * t));
    return peak * (min_ratio + (1.0 - min_ratio) * cosine);
  }
};

}  // namespace seqrec::train
