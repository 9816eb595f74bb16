// Inference top-k (eval::recommend) and the in-place paths of evaluation: the order (score, then
// lower token, NaN first), history exclusion, the device-style paths (top_k_last with over-fetch,
// rank_last) against the host paths on the same scores, and bad k.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <limits>

#include "seqrec/model.hpp"

using namespace seqrec;

namespace {

constexpr std::int32_t kFirst = data::Vocabulary::kNumSpecial;

/// Scores are a fixed function of the last history token and the item column, with many ties,
/// a NaN and both zeros: enough to pin down the order without a trained model.
struct FakeModel {
  using T = float;
  ModelShape s;
  explicit FakeModel(std::int32_t items) {
    s.vocab_size = items + kFirst;
    s.max_len = 6;
  }
  const ModelShape& shape() const { return s; }
  std::int32_t num_items() const { return s.vocab_size - kFirst; }
  static float score(std::int32_t last, std::int32_t c) {
    if (c == 7 && last % 3 == 0) return std::numeric_limits<float>::quiet_NaN();
    if (c == 4) return -0.0f;
    if (c == 5) return 0.0f;
    return float((c * 7 + last) % 5);  // values 0..4, many ties
  }
  void score_last(const std::int32_t* in, std::int32_t B, std::int32_t L, float* out) {
    const std::int32_t I = num_items();
    for (std::int32_t b = 0; b < B; ++b)
      for (std::int32_t c = 0; c < I; ++c) out[b * I + c] = score(in[b * L + L - 1], c);
  }
};

/// FakeModel with the device-style entry points, computed by brute force on the same scores.
struct FakeDeviceModel : FakeModel {
  using FakeModel::FakeModel;
  int top_k_calls = 0, rank_calls = 0;
  void top_k_last(const std::int32_t* in, std::int32_t B, std::int32_t L, int k,
                  std::int32_t* items, float* scores) {
    ++top_k_calls;
    const std::int32_t I = num_items();
    std::vector<float> s(static_cast<std::size_t>(B * I));
    score_last(in, B, L, s.data());
    for (std::int32_t b = 0; b < B; ++b) {
      std::vector<std::int32_t> c(static_cast<std::size_t>(I));
      for (std::int32_t j = 0; j < I; ++j) c[j] = j;
      const float* r = s.data() + b * I;
      std::sort(c.begin(), c.end(), [&](std::int32_t x, std::int32_t y) {
        return eval::ranks_before(r[x], x, r[y], y);
      });
      for (int j = 0; j < k; ++j) {
        items[b * k + j] = c[j];
        scores[b * k + j] = r[c[j]];
      }
    }
  }
  void rank_last(const std::int32_t* in, std::int32_t B, std::int32_t L, const std::int32_t* t,
                 const std::int32_t* off, const std::int32_t* ex, std::int64_t* ranks) {
    ++rank_calls;
    const std::int32_t I = num_items();
    std::vector<float> s(static_cast<std::size_t>(B * I));
    score_last(in, B, L, s.data());
    for (std::int32_t b = 0; b < B; ++b) {
      std::vector<std::int64_t> e;
      if (off)
        for (std::int32_t j = off[b]; j < off[b + 1]; ++j) e.push_back(ex[j]);
      ranks[b] =
          eval::pessimistic_rank<float>(std::span<const float>(s.data() + b * I, I), t[b], e);
    }
  }
};

static_assert(eval::SelectsInPlace<FakeDeviceModel> && !eval::SelectsInPlace<FakeModel>);
static_assert(eval::RanksInPlace<FakeDeviceModel> && !eval::RanksInPlace<FakeModel>);

std::vector<std::vector<std::int32_t>> histories() {
  return {{kFirst + 3},
          {kFirst + 1, kFirst + 2, kFirst + 9},
          {kFirst + 0, kFirst + 0, kFirst + 6, kFirst + 3, kFirst + 11, kFirst + 12, kFirst + 13},
          {kFirst + 7, kFirst + 4, kFirst + 5}};
}

/// Brute force: every admissible item sorted by the documented order.
std::vector<std::int32_t> expected(std::int32_t I, const std::vector<std::int32_t>& hist, int k,
                                   bool exclude) {
  const std::int32_t last = hist.back();
  std::vector<std::int32_t> c;
  for (std::int32_t j = 0; j < I; ++j)
    if (!exclude || std::find(hist.begin(), hist.end(), j + kFirst) == hist.end()) c.push_back(j);
  std::sort(c.begin(), c.end(), [&](std::int32_t x, std::int32_t y) {
    const float a = FakeModel::score(last, x), b = FakeModel::score(last, y);
    if (std::isnan(a) != std::isnan(b)) return std::isnan(a);
    if (!std::isnan(a) && a != b) return a > b;
    return x < y;
  });
  c.resize(std::min<std::size_t>(c.size(), static_cast<std::size_t>(k)));
  for (auto& x : c) x += kFirst;
  return c;
}

}  // namespace

TEST_CASE("recommend: the documented order and history exclusion, host and in-place paths",
          "[cpu]") {
  const std::int32_t I = 20;
  const auto hs = histories();
  for (bool exclude : {true, false}) {
    for (int k : {1, 5, 20}) {
      FakeModel host(I);
      FakeDeviceModel dev(I);
      eval::RecommendOptions o;
      o.exclude_history = exclude;
      o.batch = 3;  // two batches
      const auto a = eval::recommend(host, std::span(hs), k, o);
      const auto b = eval::recommend(dev, std::span(hs), k, o);
      CHECK(dev.top_k_calls == 2);
      for (std::size_t u = 0; u < hs.size(); ++u) {
        INFO("exclude " << exclude << " k " << k << " history " << u);
        const auto want = expected(I, hs[u], k, exclude);
        CHECK(a[u].items == want);
        CHECK(b[u].items == want);
        REQUIRE(a[u].scores.size() == a[u].items.size());
        for (std::size_t j = 0; j < a[u].items.size(); ++j) {
          const float s = FakeModel::score(hs[u].back(), a[u].items[j] - kFirst);
          CHECK((std::isnan(s) ? std::isnan(a[u].scores[j]) : a[u].scores[j] == s));
        }
      }
    }
  }
  // NaN ranks first (item 7 after a last token divisible by 3); -0 and +0 tie, so item 4 comes
  // before item 5 among the zeros.
  FakeModel host(I);
  const std::vector<std::vector<std::int32_t>> h3 = {{kFirst + 5}};  // token 9: 9 % 3 == 0
  eval::RecommendOptions keep;
  keep.exclude_history = false;
  const auto r = eval::recommend(host, std::span(h3), 20, keep);
  CHECK(r[0].items.front() == kFirst + 7);
  const auto p4 = std::find(r[0].items.begin(), r[0].items.end(), kFirst + 4);
  const auto p5 = std::find(r[0].items.begin(), r[0].items.end(), kFirst + 5);
  CHECK(p4 < p5);
}

TEST_CASE("recommend: k outside [1, items] is a clear error", "[cpu]") {
  FakeModel m(10);
  const auto hs = histories();
  CHECK_THROWS_WITH(eval::recommend(m, std::span(hs), 0),
                    Catch::Matchers::ContainsSubstring("k must be in [1, 10], got 0"));
  CHECK_THROWS_WITH(eval::recommend(m, std::span(hs), 11),
                    Catch::Matchers::ContainsSubstring("got 11"));
}

TEST_CASE("rank_cases: the in-place path (rank_last) gives the host path's ranks", "[cpu]") {
  const std::int32_t I = 20;
  std::vector<data::EvalCase> cases;
  const auto hs = histories();
  for (std::size_t u = 0; u < hs.size(); ++u)
    for (std::int32_t t : {0, 5, 7, 19}) cases.push_back({u, hs[u], t + kFirst});
  for (bool exclude : {false, true}) {
    FakeModel host(I);
    FakeDeviceModel dev(I);
    eval::EvalOptions o;
    o.exclude_history = exclude;
    o.batch = 5;
    const auto a = eval::rank_cases(host, cases, o);
    const auto b = eval::rank_cases(dev, cases, o);
    CHECK(dev.rank_calls == 4);
    CHECK(a == b);
  }
}

TEST_CASE("recommend on a real model: the host path equals sorting its own scores", "[cpu]") {
  data::SyntheticOptions so;
  so.users = 60;
  so.items = 40;
  const auto ds = data::build_dataset(data::make_synthetic(so).log);
  ModelShape s;
  s.vocab_size = ds.vocab.size();
  s.max_len = 8;
  s.dim = 16;
  s.heads = 2;
  s.ffn_dim = 32;
  cpu::Backend be(1);
  Model<OursRandomConfig, cpu::Backend> model(s, be, 3);
  std::vector<std::vector<std::int32_t>> hs;
  for (std::size_t u = 0; u < 5; ++u) hs.push_back(ds.sequences[u]);
  const auto recs = eval::recommend(model, std::span(hs), 10);
  const std::int32_t I = model.num_items();
  for (std::size_t u = 0; u < hs.size(); ++u) {
    std::vector<std::int32_t> in(static_cast<std::size_t>(s.max_len), data::Vocabulary::kPad);
    data::make_eval_row(hs[u], s.max_len, in.data());
    AlignedVector<float> sc(static_cast<std::size_t>(I));
    model.score_last(in.data(), 1, s.max_len, sc.data());
    std::vector<std::int32_t> c;
    for (std::int32_t j = 0; j < I; ++j)
      if (std::find(hs[u].begin(), hs[u].end(), j + kFirst) == hs[u].end()) c.push_back(j);
    std::stable_sort(c.begin(), c.end(),
                     [&](std::int32_t x, std::int32_t y) { return sc[x] > sc[y]; });
    REQUIRE(recs[u].items.size() == 10);
    for (std::size_t j = 0; j < 10; ++j) CHECK(recs[u].items[j] == c[j] + kFirst);
  }
}
