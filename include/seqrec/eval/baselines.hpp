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
/// With exclude_history, items already in a case's history are left out of its ranking, as for
/// the model (EvalOptions::exclude_history).
inline Metrics popularity_baseline(const data::Split& split, std::int32_t num_items,
                                   std::span<const data::EvalCase> cases, std::int64_t k = 10,
                                   bool exclude_history = false) {
  const std::int32_t first = data::Vocabulary::kNumSpecial;
  std::vector<double> counts(static_cast<std::size_t>(num_items), 0.0);
  for (const auto& seq : split.train)
    for (std::int32_t t : seq) counts[static_cast<std::size_t>(t - first)] += 1.0;
  MetricAccumulator acc(k);
  std::vector<std::int64_t> excluded;
  for (const auto& c : cases) {
    excluded.clear();
    if (exclude_history)
      for (std::int32_t t : c.history) excluded.push_back(t - first);
    acc.add(pessimistic_rank<double>(counts, c.target - first, excluded));
  }
  return acc.result();
}

}  // namespace seqrec::eval
