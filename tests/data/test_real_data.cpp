// Tests on the real datasets in SEQREC_SHARED_DATA (skipped when the folder is absent): the
// readers must reproduce the published counts of ml-1m and amazon18_games, and split_loo on ml-1m
// must keep every user (each has at least 20 ratings).
#include <catch2/catch_test_macros.hpp>
#include <chrono>
#include <filesystem>

#include "seqrec/data/dataset.hpp"
#include "seqrec/data/interactions.hpp"

namespace fs = std::filesystem;
using namespace seqrec::data;

namespace {
const fs::path kShared = fs::path(SEQREC_SHARED_DATA);
}

TEST_CASE("real data: ml-1m counts and leave-one-out", "[cpu][slow]") {
  const fs::path dir = kShared / "ml-1m";
  if (!fs::exists(dir / "interactions.tsv")) SKIP("no ml-1m at " << dir.string());
  const auto t0 = std::chrono::steady_clock::now();
  const auto files = load_dataset_dir(dir);
  const auto t1 = std::chrono::steady_clock::now();
  const auto d = build_dataset(files.log);
  const auto t2 = std::chrono::steady_clock::now();
  const auto ms = [](auto a, auto b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  WARN("ml-1m: load_dataset_dir " << ms(t0, t1) << " ms, build_dataset " << ms(t1, t2) << " ms");
  CHECK(files.log.size() == 1'000'209);
  CHECK(d.users.size() == 6'040);
  CHECK(d.vocab.num_items() == 3'706);
  CHECK(d.num_interactions() == 1'000'209);
  REQUIRE(files.items.has_value());
  CHECK(files.items->item.size() == 3'706);
  for (auto id : files.items->item) CHECK(d.vocab.find(id).has_value());

  const auto s = split_loo(d);
  CHECK(s.dropped_users == 0);
  CHECK(s.valid.size() == 6'040);
  CHECK(s.test.size() == 6'040);
}

TEST_CASE("real data: amazon18_games counts", "[cpu][slow]") {
  const fs::path dir = kShared / "amazon18_games";
  if (!fs::exists(dir / "interactions.tsv")) SKIP("no amazon18_games at " << dir.string());
  const auto files = load_dataset_dir(dir);
  const auto d = build_dataset(files.log);
  CHECK(files.log.size() == 452'989);
  CHECK(d.users.size() == 50'546);
  CHECK(d.vocab.num_items() == 16'859);
  REQUIRE(files.items.has_value());
  CHECK(files.items->item.size() == 16'859);
}
