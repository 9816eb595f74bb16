// Data parallelism's arithmetic, in one process: how a batch's rows are shared out among ranks
// (dist/data_parallel.hpp). The group itself runs under mpirun in tests/mpi/.
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <vector>

#include "seqrec/dist/data_parallel.hpp"
#include "seqrec/train/trainer.hpp"

using namespace seqrec;

namespace {

std::vector<std::int64_t> bounds(std::vector<std::int64_t> w, int parts) {
  return dist::balanced_bounds(w, parts);
}

}  // namespace

TEST_CASE("balanced_bounds: contiguous ranges of about equal weight", "[cpu]") {
  using V = std::vector<std::int64_t>;
  CHECK(bounds({1, 1, 1, 1}, 2) == V{0, 2, 4});
  CHECK(bounds({1, 1, 1, 1}, 1) == V{0, 4});
  // Rows of 9 and 1 targets: the first row alone is over half the weight.
  CHECK(bounds({9, 1, 1, 1}, 2) == V{0, 1, 4});
  CHECK(bounds({1, 1, 1, 9}, 2) == V{0, 3, 4});
  CHECK(bounds({5, 5, 5, 5, 5, 5}, 3) == V{0, 2, 4, 6});
  // More ranks than rows: some ranges are empty, none is negative, all rows are covered.
  CHECK(bounds({3, 3}, 4) == V{0, 0, 1, 1, 2});
  // No weight at all: by row count.
  CHECK(bounds({0, 0, 0, 0, 0}, 2) == V{0, 2, 5});
  CHECK(bounds({}, 3) == V{0, 0, 0, 0});
  CHECK_THROWS(bounds({1, -1}, 2));
  CHECK_THROWS(bounds({1}, 0));
}

TEST_CASE("balanced_bounds: every split is within one row's weight of even", "[cpu]") {
  // Left-padded rows of 1 to 20 targets, as a batch of the study's length has.
  std::vector<std::int64_t> w;
  for (int i = 0; i < 97; ++i) w.push_back(1 + (i * 7919) % 20);
  std::int64_t total = 0;
  for (auto x : w) total += x;
  for (int parts : {2, 3, 4, 8}) {
    const auto b = dist::balanced_bounds(w, parts);
    REQUIRE(b.size() == static_cast<std::size_t>(parts) + 1);
    REQUIRE(b.front() == 0);
    REQUIRE(b.back() == static_cast<std::int64_t>(w.size()));
    for (int p = 0; p < parts; ++p) {
      std::int64_t mine = 0;
      for (auto i = b[p]; i < b[p + 1]; ++i) mine += w[static_cast<std::size_t>(i)];
      INFO("parts " << parts << " part " << p << " weight " << mine);
      CHECK(b[p] <= b[p + 1]);
      CHECK(std::abs(double(mine) - double(total) / parts) <= 20);
    }
  }
}

TEST_CASE("batch_shard: rows by scored targets, and the batch's target count", "[cpu]") {
  // Three rows of length 4, left-padded (0) targets: 1, 4 and 2 items; specials (< 4) unscored.
  const std::vector<std::int32_t> t = {0, 0, 0, 9,    //
                                       5, 6, 7, 8,    //
                                       0, 0, 3, 11};  // token 3 is special: 1 target
  std::int64_t total = -1;
  const auto r0 = dist::batch_shard(t.data(), 3, 4, 0, 2, &total);
  const auto r1 = dist::batch_shard(t.data(), 3, 4, 1, 2, nullptr);
  CHECK(total == 6);
  CHECK(r0.begin == 0);
  CHECK(r0.end == 1);  // weights 1 | 4, 1: as far from even as 1, 4 | 1; the lower bound wins
  CHECK(r1.begin == 1);
  CHECK(r1.end == 3);
  CHECK_THROWS(dist::batch_shard(t.data(), 3, 4, 2, 2, nullptr));
}

TEST_CASE("dist::Single: a one-rank group whose collectives change nothing", "[cpu]") {
  dist::Single one;
  std::vector<float> f = {1.5f, -2.f};
  std::vector<std::int64_t> i = {7};
  one.allreduce_sum(f.data(), f.size());
  one.broadcast(i.data(), i.size(), 0);
  CHECK(one.rank() == 0);
  CHECK(one.size() == 1);
  CHECK(f == std::vector<float>{1.5f, -2.f});
  CHECK(i == std::vector<std::int64_t>{7});
}
