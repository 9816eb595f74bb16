// Ranking metrics over the full catalogue. A target's rank counts every other scored item whose
// score is >= the target's: ties are ranked pessimistically (the target comes last among equals),
// so a model that outputs constant scores gets the worst rank rather than the best. NaN scores
// also rank ahead of the target, and a NaN target score gets the worst rank.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace seqrec::eval {

/// 1-based pessimistic rank of items[target] among scores (I), skipping `excluded` items (indices
/// into scores, duplicates allowed; the target itself is never excluded).
template <typename T>
std::int64_t pessimistic_rank(std::span<const T> scores, std::int64_t target,
                              std::span<const std::int64_t> excluded = {}) {
  const T st = scores[static_cast<std::size_t>(target)];
  std::int64_t ahead = 0;
  for (std::size_t j = 0; j < scores.size(); ++j) {
    if (static_cast<std::int64_t>(j) == target) continue;
    ahead += !(scores[j] < st);  // true for >=, and for NaN on either side
  }
  std::vector<std::int64_t> ex(excluded.begin(), excluded.end());  // histories repeat items
  std::sort(ex.begin(), ex.end());
  ex.erase(std::unique(ex.begin(), ex.end()), ex.end());
  for (std::int64_t e : ex) {
    if (e == target || e < 0 || e >= static_cast<std::int64_t>(scores.size())) continue;
    ahead -= !(scores[static_cast<std::size_t>(e)] < st);
  }
  return ahead + 1;
}

/// Mean MRR@K, HR@K and NDCG@K over a set of ranks.
struct Metrics {
  double mrr = 0, hr = 0, ndcg = 0;
  std::size_t count = 0;
};

class MetricAccumulator {
 public:
  explicit MetricAccumulator(std::int64_t k) : k_(k) {}
  void add(std::int64_t rank) {
    ++count_;
    if (rank <= k_) {
      mrr_ += 1.0 / double(rank);
      hr_ += 1.0;
      ndcg_ += 1.0 / std::log2(double(rank) + 1.0);
    }
  }
  Metrics result() const {
    if (count_ == 0) return {};
    const double n = double(count_);
    return {mrr_ / n, hr_ / n, ndcg_ / n, count_};
  }
  std::int64_t k() const noexcept { return k_; }

 private:
  std::int64_t k_;
  double mrr_ = 0, hr_ = 0, ndcg_ = 0;
  std::size_t count_ = 0;
};

}  // namespace seqrec::eval
