// Tests of the item vocabulary: special tokens, round trips raw <-> token, and the errors that
// name the unknown id or the bad token.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstdint>
#include <vector>

#include "seqrec/data/vocabulary.hpp"

using Catch::Matchers::ContainsSubstring;
using seqrec::data::Vocabulary;

TEST_CASE("vocabulary: tokens start after the special ones, in insertion order", "[cpu]") {
  static_assert(Vocabulary::kPad == 0 && Vocabulary::kBos == 1 && Vocabulary::kMask == 2 &&
                Vocabulary::kUnk == 3 && Vocabulary::kNumSpecial == 4);
  Vocabulary v;
  CHECK(v.size() == Vocabulary::kNumSpecial);
  CHECK(v.num_items() == 0);
  CHECK(v.add(1000) == 4);
  CHECK(v.add(7) == 5);
  CHECK(v.add(1000) == 4);  // existing
  CHECK(v.add(0) == 6);
  CHECK(v.size() == 7);
  CHECK(v.num_items() == 3);
  CHECK(v.raw_items() == std::vector<std::int64_t>{1000, 7, 0});
  CHECK_FALSE(Vocabulary::is_item(Vocabulary::kUnk));
  CHECK(Vocabulary::is_item(4));
}

TEST_CASE("vocabulary: round trip raw -> token -> raw", "[cpu]") {
  Vocabulary v;
  const std::vector<std::int64_t> raws = {42, 9'000'000'000'000LL, 3, 17, 42, 0, 3};
  for (auto r : raws) v.add(r);
  CHECK(v.num_items() == 5);
  for (auto r : raws) {
    const auto t = v.token(r);
    CHECK(Vocabulary::is_item(t));
    CHECK(v.find(r) == t);
    CHECK(v.raw(t) == r);
  }
  for (std::int32_t t = Vocabulary::kNumSpecial; t < v.size(); ++t) {
    CHECK(v.token(v.raw(t)) == t);
  }
}

TEST_CASE("vocabulary: unknown ids and bad tokens", "[cpu]") {
  Vocabulary v;
  v.add(5);
  CHECK_FALSE(v.find(6).has_value());
  CHECK(v.token_or_unk(6) == Vocabulary::kUnk);
  CHECK(v.token_or_unk(5) == 4);
  CHECK_THROWS_WITH(v.token(123456), ContainsSubstring("123456"));
  CHECK_THROWS_WITH(v.raw(Vocabulary::kBos), ContainsSubstring("special"));
  CHECK_THROWS_WITH(v.raw(5), ContainsSubstring("5") && ContainsSubstring("out of range"));
  CHECK_THROWS_WITH(v.raw(-2), ContainsSubstring("-2"));
  CHECK_THROWS_AS(v.token(6), seqrec::Error);
}
