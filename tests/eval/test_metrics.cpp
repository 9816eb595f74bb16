// Metrics against a brute-force reference: sort all items by score, place the target LAST among
// equal scores (pessimistic ties), drop excluded items, read its position. Scores are small
// integers so that ties are frequent.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "seqrec/core/random.hpp"
#include "seqrec/eval/baselines.hpp"
#include "seqrec/eval/metrics.hpp"

using namespace seqrec;

namespace {
std::int64_t brute_force_rank(const std::vector<float>& s, std::int64_t target,
                              const std::vector<std::int64_t>& excluded) {
  std::vector<std::int64_t> order;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(s.size()); ++i) {
    if (i != target && std::find(excluded.begin(), excluded.end(), i) != excluded.end()) continue;
    order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    if (s[a] != s[b]) return s[a] > s[b];
    return b == target;  // among equals, the target goes last
  });
  return std::find(order.begin(), order.end(), target) - order.begin() + 1;
}
}  // namespace

TEST_CASE("pessimistic rank matches brute force with ties and exclusions", "[cpu]") {
  Rng rng(99);
  for (int trial = 0; trial < 500; ++trial) {
    const std::int64_t n = 1 + static_cast<std::int64_t>(rng.below(40));
    std::vector<float> s(n);
    for (auto& v : s) v = static_cast<float>(rng.below(5));
    const std::int64_t target = static_cast<std::int64_t>(rng.below(n));
    std::vector<std::int64_t> excluded;
    const int ne = static_cast<int>(rng.below(6));
    for (int k = 0; k < ne; ++k) excluded.push_back(static_cast<std::int64_t>(rng.below(n)));
    if (trial % 3 == 0 && !excluded.empty()) excluded.push_back(excluded[0]);  // duplicates
    INFO("trial " << trial);
    CHECK(eval::pessimistic_rank<float>(s, target, excluded) ==
          brute_force_rank(s, target, excluded));
  }
}

TEST_CASE("constant scores rank the target last, not first", "[cpu]") {
  std::vector<float> s(100, 0.5f);
  CHECK(eval::pessimistic_rank<float>(s, 42) == 100);
}

TEST_CASE("NaN scores never help the target", "[cpu]") {
  std::vector<float> s = {1, 2, 3, 4};
  s[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK(eval::pessimistic_rank<float>(s, 3) == 2);  // the NaN counts as ahead
  CHECK(eval::pessimistic_rank<float>(s, 1) == 4);  // a NaN target is last
}

TEST_CASE("MRR, HR and NDCG at K from ranks", "[cpu]") {
  eval::MetricAccumulator acc(10);
  for (std::int64_t r : {1, 2, 10, 11, 500}) acc.add(r);
  const auto m = acc.result();
  CHECK(m.count == 5);
  CHECK(std::abs(m.hr - 3.0 / 5) < 1e-12);
  CHECK(std::abs(m.mrr - (1.0 + 0.5 + 0.1) / 5) < 1e-12);
  CHECK(std::abs(m.ndcg - (1.0 + 1 / std::log2(3.0) + 1 / std::log2(11.0)) / 5) < 1e-12);
  CHECK(eval::MetricAccumulator(10).result().count == 0);
}

TEST_CASE("popularity baseline ranks by training counts and can exclude the history", "[cpu]") {
  data::Split split;
  split.train = {{4, 5, 5, 6}};  // items 0, 1, 2 seen 1, 2, 1 times
  const std::vector<data::EvalCase> cases = {{0, {5}, 6}};
  // Target (count 1) ties with item 0 and trails item 1: pessimistic rank 3, or 2 without item 1.
  CHECK(std::abs(eval::popularity_baseline(split, 3, cases).mrr - 1.0 / 3) < 1e-12);
  CHECK(std::abs(eval::popularity_baseline(split, 3, cases, 10, true).mrr - 1.0 / 2) < 1e-12);
}
