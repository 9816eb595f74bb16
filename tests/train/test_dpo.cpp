// DPO: pair construction on a fixture (pools, ranks, exclusions, shares), the preference losses'
// values and gradients, and the whole model's gradient under each loss in double precision.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_floating_point.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <set>

#include "seqrec/model/model.hpp"
#include "seqrec/train/dpo.hpp"
#include "support/gradcheck.hpp"

using namespace seqrec;
using Catch::Matchers::WithinAbs;

namespace {

constexpr std::int32_t kItems = 300, kDim = 8;

struct Fixture {
  std::vector<double> table;  // (4 + kItems, kDim)
  std::vector<std::vector<std::int32_t>> sequences;
};

Fixture make_fixture(std::size_t users = 400) {
  Fixture f;
  f.table = test::random_vector(std::size_t(kItems + kNumSpecialTokens) * kDim, 5);
  Rng rng(17);
  for (std::size_t u = 0; u < users; ++u) {
    std::vector<std::int32_t> s(5 + rng.below(26));
    for (auto& t : s) t = kNumSpecialTokens + std::int32_t(rng.below(kItems));
    if (s.size() > 3) s[3] = s[1];  // repeats must be handled
    f.sequences.push_back(s);
  }
  return f;
}

/// Rank (1-based) of `item` among items that are neither `chosen` nor in `history`, by
/// decreasing cosine similarity to `chosen` (ties to the smaller token); 0 if not admissible.
std::int32_t brute_rank(const Fixture& f, std::int32_t chosen,
                        const std::set<std::int32_t>& history, std::int32_t item) {
  auto row = [&](std::int32_t t) { return f.table.data() + std::size_t(t) * kDim; };
  auto cosine = [&](std::int32_t a, std::int32_t b) {
    double ab = 0, aa = 0, bb = 0;
    for (int k = 0; k < kDim; ++k) {
      ab += row(a)[k] * row(b)[k];
      aa += row(a)[k] * row(a)[k];
      bb += row(b)[k] * row(b)[k];
    }
    return float(ab / std::sqrt(aa) / std::sqrt(bb));
  };
  if (item == chosen || history.count(item)) return 0;
  const float s = cosine(chosen, item);
  std::int32_t rank = 1;
  for (std::int32_t t = kNumSpecialTokens; t < kItems + kNumSpecialTokens; ++t) {
    if (t == chosen || t == item || history.count(t)) continue;
    const float st = cosine(chosen, t);
    if (st > s || (st == s && t < item)) ++rank;
  }
  return rank;
}

/// A one-block model over 16 items, small enough for central differences over every tensor.
ModelShape tiny_shape() {
  ModelShape s;
  s.vocab_size = kNumSpecialTokens + 16;
  s.max_len = 5;
  s.dim = 8;
  s.layers = 1;
  s.heads = 2;
  s.ffn_dim = 12;
  return s;
}

}  // namespace

TEST_CASE("dpo pairs: last item, pools, ranks, exclusions and the hard share", "[cpu][dpo]") {
  const Fixture f = make_fixture();
  train::PairOptions o;
  o.negatives = 5;
  o.seed = 3;
  const std::int32_t L = 12;
  const auto d = train::build_preference_pairs(f.sequences, f.table.data(),
                                               kItems + kNumSpecialTokens, kDim, L, o);
  REQUIRE(d.examples() == f.sequences.size());
  REQUIRE(d.pairs() == f.sequences.size());  // one pair per sequence
  std::size_t hard = 0, drawn = 0, checked = 0;
  for (std::size_t e = 0; e < d.examples(); ++e) {
    const auto& seq = f.sequences[e];
    for (std::int32_t p = 0; p < L - 1; ++p) CHECK(d.chosen[e * L + p] == data::Vocabulary::kPad);
    const std::int32_t c = d.chosen[e * L + L - 1];
    REQUIRE(c == seq.back());
    CHECK(d.inputs[e * L + L - 1] == seq[seq.size() - 2]);  // input is the item before it
    const std::set<std::int32_t> history(seq.begin(), seq.end() - 1);
    std::set<std::int32_t> seen;
    for (std::int32_t j = 0; j < o.negatives; ++j) {
      const std::size_t slot = (e * L + L - 1) * o.negatives + j;
      const std::int32_t r = d.rejected[slot], rank = d.rank[slot];
      CHECK(r != c);
      CHECK(history.count(r) == 0);
      CHECK(seen.insert(r).second);  // distinct within a pair
      CHECK(rank >= 1);
      CHECK(rank <= o.easy_top);
      hard += rank <= o.hard_top;
      ++drawn;
      if (e < 40) {  // the recorded rank is the brute-force rank among admissible items
        CHECK(brute_rank(f, c, history, r) == rank);
        ++checked;
      }
    }
  }
  CHECK(checked == 200);
  // 2,000 draws at p = 0.3: standard deviation 0.010; allow 4 of them.
  CHECK_THAT(double(hard) / double(drawn), WithinAbs(0.3, 0.041));

  SECTION("the same seed gives the same pairs, another seed others") {
    const auto again = train::build_preference_pairs(f.sequences, f.table.data(),
                                                     kItems + kNumSpecialTokens, kDim, L, o);
    CHECK(again.rejected == d.rejected);
    o.seed = 4;
    const auto other = train::build_preference_pairs(f.sequences, f.table.data(),
                                                     kItems + kNumSpecialTokens, kDim, L, o);
    CHECK(other.rejected != d.rejected);
  }
}

TEST_CASE("dpo pairs: all positions exclude each position's own history", "[cpu][dpo]") {
  const Fixture f = make_fixture(60);
  train::PairOptions o;
  o.negatives = 3;
  o.all_positions = true;
  o.hard_share = 1.0;  // every negative from the 10 most similar admissible items
  const std::int32_t L = 8;
  const auto d = train::build_preference_pairs(f.sequences, f.table.data(),
                                               kItems + kNumSpecialTokens, kDim, L, o);
  std::size_t expected = 0;
  for (const auto& s : f.sequences) expected += std::min<std::size_t>(s.size(), L);
  REQUIRE(d.pairs() == expected);
  for (std::size_t e = 0; e < d.examples(); ++e) {
    const auto& seq = f.sequences[e];
    const std::size_t keep = std::min<std::size_t>(seq.size(), L), pad = L - keep;
    for (std::size_t p = pad; p < std::size_t(L); ++p) {
      const std::size_t q = seq.size() - keep + (p - pad);  // target index in the sequence
      REQUIRE(d.chosen[e * L + p] == seq[q]);
      const std::set<std::int32_t> history(seq.begin(), seq.begin() + std::ptrdiff_t(q));
      for (std::int32_t j = 0; j < o.negatives; ++j) {
        const std::size_t slot = (e * L + p) * o.negatives + j;
        CHECK(d.rejected[slot] != seq[q]);
        CHECK(history.count(d.rejected[slot]) == 0);
        CHECK(d.rank[slot] >= 1);
        CHECK(d.rank[slot] <= o.hard_top);
      }
    }
  }
}

TEST_CASE("dpo pairs: options are validated", "[cpu][dpo]") {
  const Fixture f = make_fixture(4);
  train::PairOptions o;
  o.hard_top = 20;
  o.easy_top = 20;
  CHECK_THROWS(train::build_preference_pairs(f.sequences, f.table.data(),
                                             kItems + kNumSpecialTokens, kDim, 8, o));
  o = {};
  o.easy_top = kItems;  // the catalogue must be larger than the easy pool
  CHECK_THROWS(train::build_preference_pairs(f.sequences, f.table.data(),
                                             kItems + kNumSpecialTokens, kDim, 8, o));
}

TEST_CASE("dpo losses: values at the reference and gradients", "[cpu][dpo][gradcheck]") {
  const std::int32_t K = 4;
  std::vector<double> ref = test::random_vector(1 + K, 9), pol = ref, grad(1 + K);
  train::DpoOptions o;
  o.beta = 0.7;
  // Policy equal to the reference: every u is 0.
  CHECK_THAT(train::preference_loss(o, K, pol.data(), ref.data(), grad.data()),
             WithinAbs(std::log(2.0), 1e-12));
  o.loss = train::PreferenceLoss::SDpo;
  CHECK_THAT(train::preference_loss(o, K, pol.data(), ref.data(), grad.data()),
             WithinAbs(std::log(1.0 + K), 1e-12));
  pol = test::random_vector(1 + K, 10);
  for (auto loss : {train::PreferenceLoss::Dpo, train::PreferenceLoss::SDpo})
    for (double ce : {0.0, 0.5}) {
      o.loss = loss;
      o.ce_weight = ce;
      train::preference_loss(o, K, pol.data(), ref.data(), grad.data());
      std::vector<double> scratch(1 + K);
      auto f = [&] { return train::preference_loss(o, K, pol.data(), ref.data(), scratch.data()); };
      const auto r = test::check_gradient(f, pol.data(), grad.data(), pol.size());
      CHECK(r.max_rel_error < test::kGradRelTol);
    }
}

TEMPLATE_TEST_CASE("dpo: model gradient under each preference loss", "[cpu][dpo][gradcheck]",
                   SasRecConfig, OursConfig, MoeConfig) {
  ModelShape s = tiny_shape();
  s.dropout = 0.3;  // dropout active (the masks are a function of the key)
  s.init_std = 0.3;
  s.moe_balance_coef = 0.5;  // large, so the MoE auxiliary gradients are checked too
  s.moe_z_coef = 0.1;
  cpu::BackendF64 be(1);
  Model<TestType, cpu::BackendF64> policy(s, be, 7), reference(s, be, 8);
  const std::vector<std::vector<std::int32_t>> seqs = {
      {4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14}, {15, 16}, {17, 4, 19}};
  train::PairOptions po;
  po.negatives = 2;
  po.hard_top = 2;
  po.easy_top = 6;
  for (bool all : {false, true}) {
    po.all_positions = all;
    const auto d =
        train::build_preference_pairs(seqs, policy.parameters().value(policy.item_embedding()),
                                      s.vocab_size, s.dim, s.max_len, po);
    const auto ref = train::reference_log_probs(reference, d, 3);
    for (auto loss : {train::PreferenceLoss::Dpo, train::PreferenceLoss::SDpo}) {
      train::DpoOptions o;
      o.loss = loss;
      o.beta = 0.5;
      o.ce_weight = 0.3;
      INFO("all positions " << all << ", S-DPO " << (loss == train::PreferenceLoss::SDpo));
      const std::uint64_t key = 99;
      auto& store = policy.parameters();
      store.zero_grads();
      const auto st = train::preference_step(policy, d, 0, d.examples(), ref, o, key, true);
      REQUIRE(st.pairs == std::int64_t(d.pairs()));
      const auto grads = store.grads();
      auto f = [&] {
        const auto r = train::preference_step(policy, d, 0, d.examples(), ref, o, key, false);
        return r.loss / double(r.pairs);
      };
      for (const auto& e : store.entries()) {
        INFO("tensor " << e.name);
        const auto r = test::check_gradient(f, store.values().data() + e.offset,
                                            grads.data() + e.offset, e.numel, 12);
        CHECK(r.max_rel_error < test::kGradRelTol);
      }
    }
  }
}

TEST_CASE("dpo: reference log-probabilities are the model's log-softmax", "[cpu][dpo]") {
  const ModelShape s = tiny_shape();
  cpu::BackendF64 be(1);
  Model<SasRecConfig, cpu::BackendF64> m(s, be, 3);
  const std::vector<std::vector<std::int32_t>> seqs = {{4, 5, 6, 7}, {8, 9, 10}};
  train::PairOptions po;
  po.negatives = 3;
  po.hard_top = 2;
  po.easy_top = 6;
  const auto d = train::build_preference_pairs(seqs, m.parameters().value(m.item_embedding()),
                                               s.vocab_size, s.dim, s.max_len, po);
  const auto lp = train::reference_log_probs(m, d);
  std::vector<double> scores(2 * 16);
  m.score_last(d.inputs.data(), 2, s.max_len, scores.data());
  for (int e = 0; e < 2; ++e) {
    double mx = -1e300, z = 0;
    for (int i = 0; i < 16; ++i) mx = std::max(mx, scores[e * 16 + i]);
    for (int i = 0; i < 16; ++i) z += std::exp(scores[e * 16 + i] - mx);
    const double lse = mx + std::log(z);
    const std::int32_t c = d.chosen[e * s.max_len + s.max_len - 1];
    CHECK_THAT(lp[e * 4], WithinAbs(scores[e * 16 + c - 4] - lse, 1e-12));
    const std::int32_t r = d.rejected[(e * s.max_len + s.max_len - 1) * 3 + 1];
    CHECK_THAT(lp[e * 4 + 2], WithinAbs(scores[e * 16 + r - 4] - lse, 1e-12));
  }
}

TEST_CASE("dpo: the selected head rejects a bad selection, naming the entry", "[cpu][dpo]") {
  const ModelShape s = tiny_shape();
  cpu::BackendF64 be(1);
  Model<SasRecConfig, cpu::BackendF64> m(s, be, 3);
  const std::vector<std::int32_t> inputs = {0, 0, 5, 6, 7, 0, 8, 9, 10, 11};  // (B 2, L 5)
  std::vector<double> logp(4);
  auto select = [&](std::vector<std::int64_t> rows, std::vector<std::int32_t> tokens) {
    m.selected_log_probs(inputs.data(), 2, 5, 0, rows.data(), std::int64_t(rows.size()),
                         tokens.data(), 2, logp.data());
  };
  CHECK_NOTHROW(select({4, 9}, {8, 12, 12, 13}));
  auto message = [&](std::vector<std::int64_t> rows, std::vector<std::int32_t> tokens) {
    try {
      select(std::move(rows), std::move(tokens));
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Positions must increase within the batch's B·L = 10 positions.
  CHECK_THAT(message({9, 4}, {8, 12, 12, 13}), Catch::Matchers::ContainsSubstring("entry 1 is 4"));
  CHECK_THAT(message({4, 10}, {8, 12, 12, 13}),
             Catch::Matchers::ContainsSubstring("entry 1 is 10"));
  // Every token must be an item (special tokens 0..3 are not; the vocabulary has 20 tokens).
  CHECK_THAT(message({4, 9}, {8, 3, 12, 13}),
             Catch::Matchers::ContainsSubstring("token 3 (entry 0, column 1)"));
  CHECK_THAT(message({4, 9}, {8, 12, 20, 13}),
             Catch::Matchers::ContainsSubstring("token 20 (entry 1, column 0)"));
  // A backward needs its own forward.
  CHECK_NOTHROW(select({4, 9}, {8, 12, 12, 13}));
  std::vector<double> g(4, 0.1);
  CHECK_NOTHROW(m.selected_backward(g.data(), 1.0));
  CHECK_THROWS_WITH(m.selected_backward(g.data(), 1.0),
                    Catch::Matchers::ContainsSubstring("no selected_log_probs() before it"));
}
