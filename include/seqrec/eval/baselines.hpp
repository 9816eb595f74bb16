// Non-neural reference points scored under the same protocol as the model, so every metrics
// table shows what "learning something" has to beat: item popularity in the training sequences.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "seqrec/data/dataset.hpp"
#include "seqrec/eval/metrics.hpp"

namespace seqrec::eval {

/// Popularity: every item scored by its count in the training sequences.
inline Metrics popularity_baseline(const data::Split& split, std::int32_t num_items,
                                   std::span<const data::EvalCase> cases, std::int64_t k = 10) {
  const std::int32_t first = data::Vocabulary::kNumSpecial;
  std::vector<double> counts(static_cast<std::size_t>(num_items), 0.0);
  for (const auto& seq : split.train)
    for (std::int32_t t : seq) counts[static_cast<std::size_t>(t - first)] += 1.0;
  MetricAccumulator acc(k);
  for (const auto& c : cases) acc.add(pessimistic_rank<double>(counts, c.target - first));
  return acc.result();
}

}  // namespace seqrec::eval
