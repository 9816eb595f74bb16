// Tests of build_dataset (vocabulary order, grouping, both truncation modes) and of the two split
// protocols: sizes, contents, dropped users, determinism in the seed and the test_share path.
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstdint>
#include <set>
#include <vector>

#include "seqrec/data/dataset.hpp"

using namespace seqrec::data;
using Tokens = std::vector<std::int32_t>;

namespace {

/// A log from (user, item) pairs, in the given order.
InteractionLog make_log(const std::vector<std::pair<std::int64_t, std::int64_t>>& rows) {
  InteractionLog log;
  log.source = "test";
  for (auto [u, i] : rows) {
    log.user.push_back(u);
    log.item.push_back(i);
  }
  return log;
}

/// A dataset of `n_users` users, user u having (u % 7) + 1 items.
Dataset ladder(std::size_t n_users) {
  std::vector<std::pair<std::int64_t, std::int64_t>> rows;
  for (std::size_t u = 0; u < n_users; ++u) {
    for (std::size_t k = 0; k < u % 7 + 1; ++k) {
      rows.emplace_back(static_cast<std::int64_t>(100 + u), static_cast<std::int64_t>(u * 3 + k));
    }
  }
  return build_dataset(make_log(rows));
}

bool same_cases(const std::vector<EvalCase>& a, const std::vector<EvalCase>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t k = 0; k < a.size(); ++k) {
    if (a[k].user != b[k].user || a[k].history != b[k].history || a[k].target != b[k].target) {
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("build_dataset: tokens in first-appearance order, users grouped", "[cpu]") {
  // Interleaved users: the dataset groups them, keeping each user's row order.
  const auto log = make_log({{5, 50}, {9, 90}, {5, 51}, {9, 50}, {5, 52}});
  const auto d = build_dataset(log);
  CHECK(d.users == std::vector<std::int64_t>{5, 9});
  CHECK(d.vocab.raw_items() == std::vector<std::int64_t>{50, 90, 51, 52});
  REQUIRE(d.sequences.size() == 2);
  CHECK(d.sequences[0] == Tokens{4, 6, 7});
  CHECK(d.sequences[1] == Tokens{5, 4});
  CHECK(d.num_interactions() == 5);
  CHECK(d.source == "test");
}

TEST_CASE("build_dataset: truncation keeps the recent or the earliest items", "[cpu]") {
  const auto log = make_log({{1, 10}, {1, 11}, {1, 12}, {1, 13}, {1, 14}, {2, 20}, {2, 21}});
  const auto full = build_dataset(log);
  CHECK(full.sequences[0] == Tokens{4, 5, 6, 7, 8});

  const auto recent = build_dataset(log, 3, Truncation::Recent);
  CHECK(recent.sequences[0] == Tokens{6, 7, 8});
  CHECK(recent.sequences[1] == Tokens{9, 10});  // shorter than N: untouched
  const auto earliest = build_dataset(log, 3, Truncation::Earliest);
  CHECK(earliest.sequences[0] == Tokens{4, 5, 6});
  CHECK(earliest.sequences[1] == Tokens{9, 10});
  // The vocabulary keeps every item of the log, even those truncated away.
  CHECK(recent.vocab.num_items() == 7);
  CHECK(earliest.vocab.num_items() == 7);
  CHECK(build_dataset(log, 5).sequences[0].size() == 5);
  CHECK(build_dataset(log, 1).sequences[0] == Tokens{8});
}

TEST_CASE("build_dataset: inconsistent log is an error", "[cpu]") {
  auto log = make_log({{1, 2}});
  log.item.push_back(3);
  CHECK_THROWS_AS(build_dataset(log), seqrec::Error);
}

TEST_CASE("split_loo: valid second-last, test last, train all but two", "[cpu]") {
  const auto log = make_log({{1, 10},
                             {1, 11},
                             {1, 12},
                             {1, 13},  // 4 items
                             {2, 20},
                             {2, 21},  // 2 items: dropped
                             {3, 30},
                             {3, 31},
                             {3, 32},    // 3 items
                             {4, 40}});  // 1 item: dropped
  const auto d = build_dataset(log);
  const auto s = split_loo(d);
  CHECK(s.has_test);
  CHECK(s.dropped_users == 2);
  REQUIRE(s.train.size() == 2);
  REQUIRE(s.valid.size() == 2);
  REQUIRE(s.test.size() == 2);
  const auto t = [&](std::int64_t raw) { return d.vocab.token(raw); };
  CHECK(s.train[0] == Tokens{t(10), t(11)});
  CHECK(s.valid[0].user == 0);
  CHECK(s.valid[0].history == Tokens{t(10), t(11)});
  CHECK(s.valid[0].target == t(12));
  CHECK(s.test[0].user == 0);
  CHECK(s.test[0].history == Tokens{t(10), t(11), t(12)});
  CHECK(s.test[0].target == t(13));
  CHECK(s.train[1] == Tokens{t(30)});
  CHECK(s.valid[1].user == 2);
  CHECK(s.valid[1].history == Tokens{t(30)});
  CHECK(s.valid[1].target == t(31));
  CHECK(s.test[1].target == t(32));
}

TEST_CASE("split_holdout: sizes, held-out history trains, dropped users", "[cpu]") {
  const auto d = ladder(700);  // lengths 1..7, 100 users each
  HoldoutOptions o;
  o.holdout_share = 0.3;
  o.seed = 7;
  const auto s = split_holdout(d, o);
  CHECK_FALSE(s.has_test);
  CHECK(s.test.empty());
  // 210 held-out users; those with one item are dropped, the rest give one case each.
  CHECK(s.valid.size() + s.dropped_users == 210);
  CHECK(s.dropped_users > 0);
  CHECK(s.dropped_users < 60);  // about 30 expected (1/7 of 210)
  // Every non-dropped user trains exactly once.
  CHECK(s.train.size() == 700 - s.dropped_users);

  std::set<Tokens> train(s.train.begin(), s.train.end());
  std::set<std::size_t> held;
  for (const auto& c : s.valid) {
    const auto& seq = d.sequences[c.user];
    REQUIRE(seq.size() >= 2);
    CHECK(c.target == seq.back());
    CHECK(c.history == Tokens(seq.begin(), seq.end() - 1));
    CHECK(train.count(c.history) == 1);  // the history also trains
    CHECK(train.count(seq) == 0);        // the full sequence (with the target) does not
    held.insert(c.user);
  }
  CHECK(held.size() == s.valid.size());
  // Cases follow the user order.
  CHECK(std::is_sorted(s.valid.begin(), s.valid.end(),
                       [](const EvalCase& a, const EvalCase& b) { return a.user < b.user; }));
  // Users not held out train on their full sequence.
  std::size_t full = 0;
  for (std::size_t u = 0; u < d.sequences.size(); ++u) {
    if (!held.count(u) && train.count(d.sequences[u])) ++full;
  }
  CHECK(full == 700 - 210);
}

TEST_CASE("split_holdout: deterministic in the seed", "[cpu]") {
  const auto d = ladder(300);
  HoldoutOptions o;
  o.seed = 123;
  const auto a = split_holdout(d, o);
  const auto b = split_holdout(d, o);
  CHECK(same_cases(a.valid, b.valid));
  CHECK(a.train == b.train);
  CHECK(a.dropped_users == b.dropped_users);
  o.seed = 124;
  const auto c = split_holdout(d, o);
  CHECK_FALSE(same_cases(a.valid, c.valid));
  // Same number held out whatever the seed: round(0.2 * 300) = 60.
  CHECK(c.valid.size() + c.dropped_users == 60);
  CHECK(a.valid.size() + a.dropped_users == 60);
}

TEST_CASE("split_holdout: test_share moves a seeded share of the cases to test", "[cpu]") {
  const auto d = ladder(1000);
  HoldoutOptions o;
  o.holdout_share = 0.5;
  o.seed = 3;
  const auto base = split_holdout(d, o);
  o.test_share = 0.25;
  const auto s = split_holdout(d, o);
  CHECK(s.has_test);
  CHECK(s.dropped_users == base.dropped_users);
  CHECK(s.train == base.train);  // moving cases does not change training
  const std::size_t n = base.valid.size();
  CHECK(s.test.size() == static_cast<std::size_t>(0.25 * static_cast<double>(n) + 0.5));
  CHECK(s.valid.size() + s.test.size() == n);
  // valid and test partition the held-out cases.
  std::set<std::size_t> users;
  for (const auto& c : s.valid) users.insert(c.user);
  for (const auto& c : s.test) CHECK(users.insert(c.user).second);
  std::set<std::size_t> base_users;
  for (const auto& c : base.valid) base_users.insert(c.user);
  CHECK(users == base_users);
  // Deterministic.
  CHECK(same_cases(split_holdout(d, o).test, s.test));
  o.seed = 4;
  CHECK_FALSE(same_cases(split_holdout(d, o).test, s.test));
}

TEST_CASE("split_holdout: edge shares and bad options", "[cpu]") {
  const auto d = ladder(70);
  HoldoutOptions o;
  o.holdout_share = 0.0;
  auto none = split_holdout(d, o);
  CHECK(none.valid.empty());
  CHECK(none.train.size() == 70);
  CHECK(none.dropped_users == 0);
  o.holdout_share = 1.0;
  auto all = split_holdout(d, o);
  CHECK(all.dropped_users == 10);  // the users with one item
  CHECK(all.valid.size() == 60);
  o.holdout_share = 1.5;
  CHECK_THROWS_WITH(split_holdout(d, o), Catch::Matchers::ContainsSubstring("holdout_share"));
  o.holdout_share = 0.2;
  o.test_share = -0.1;
  CHECK_THROWS_WITH(split_holdout(d, o), Catch::Matchers::ContainsSubstring("test_share"));
}
