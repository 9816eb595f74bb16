// Two analyses the study claimed but never measured, computed from per-case ranks:
//  - length extrapolation: metrics per bucket of history length (a model trained with window L
//    evaluated with a window of 2L, where its position encoding allows it);
//  - cold items: metrics restricted to targets with at most `max_count` training interactions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "seqrec/data/dataset.hpp"
#include "seqrec/eval/metrics.hpp"

namespace seqrec::eval {

struct BucketMetrics {
  std::int64_t lo = 0, hi = 0;  // history lengths lo..hi inclusive
  Metrics metrics;
};

/// Metrics per history-length bucket; `edges` are the inclusive upper bounds, ascending.
inline std::vector<BucketMetrics> metrics_by_history_length(std::span<const data::EvalCase> cases,
                                                            std::span<const std::int64_t> ranks,
                                                            std::span<const std::int64_t> edges,
                                                            std::int64_t k = 10) {
  std::vector<BucketMetrics> out;
  std::int64_t lo = 1;
  for (std::int64_t hi : edges) {
    MetricAccumulator acc(k);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      const auto n = static_cast<std::int64_t>(cases[i].history.size());
      if (n >= lo && n <= hi) acc.add(ranks[i]);
    }
    out.push_back({lo, hi, acc.result()});
    lo = hi + 1;
  }
  return out;
}

/// Training interactions per item token (index = token).
inline std::vector<std::int64_t> item_counts(const data::Split& split, std::int32_t vocab_size) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(vocab_size), 0);
  for (const auto& seq : split.train)
    for (std::int32_t t : seq) ++counts[static_cast<std::size_t>(t)];
  return counts;
}

/// Metrics over the cases whose target has at most max_count training interactions.
inline Metrics cold_target_metrics(std::span<const data::EvalCase> cases,
                                   std::span<const std::int64_t> ranks,
                                   std::span<const std::int64_t> counts, std::int64_t max_count,
                                   std::int64_t k = 10) {
  MetricAccumulator acc(k);
  for (std::size_t i = 0; i < cases.size(); ++i)
    if (counts[static_cast<std::size_t>(cases[i].target)] <= max_count) acc.add(ranks[i]);
  return acc.result();
}

}  // namespace seqrec::eval
