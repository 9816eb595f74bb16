// Tests of the row builders (exact contents for short, exact-length and long sequences) and of
// TrainBatcher (each sequence exactly once per epoch, determinism in (seed, epoch)).
#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <cstdint>
#include <thread>
#include <vector>

#include "seqrec/data/batcher.hpp"

using namespace seqrec::data;
using Tokens = std::vector<std::int32_t>;

namespace {
constexpr std::int32_t P = Vocabulary::kPad;
constexpr std::int32_t S = Vocabulary::kBos;

struct Row {
  Tokens inputs, targets;
};
Row train_row(const Tokens& seq, std::int32_t L) {
  Row r{Tokens(static_cast<std::size_t>(L), -1), Tokens(static_cast<std::size_t>(L), -1)};
  make_train_row(seq, L, r.inputs.data(), r.targets.data());
  return r;
}
Tokens eval_row(const Tokens& history, std::int32_t L) {
  Tokens r(static_cast<std::size_t>(L), -1);
  make_eval_row(history, L, r.data());
  return r;
}
}  // namespace

TEST_CASE("make_train_row: short, exact and long sequences", "[cpu]") {
  const auto shorter = train_row({10, 11, 12}, 5);
  CHECK(shorter.inputs == Tokens{P, P, S, 10, 11});
  CHECK(shorter.targets == Tokens{P, P, 10, 11, 12});

  const auto exact = train_row({10, 11, 12}, 3);
  CHECK(exact.inputs == Tokens{S, 10, 11});
  CHECK(exact.targets == Tokens{10, 11, 12});

  const auto longer = train_row({10, 11, 12, 13, 14, 15}, 4);
  CHECK(longer.inputs == Tokens{11, 12, 13, 14});
  CHECK(longer.targets == Tokens{12, 13, 14, 15});

  const auto one = train_row({10}, 3);
  CHECK(one.inputs == Tokens{P, P, S});
  CHECK(one.targets == Tokens{P, P, 10});

  const auto empty = train_row({}, 2);
  CHECK(empty.inputs == Tokens{P, P});
  CHECK(empty.targets == Tokens{P, P});

  const auto len1 = train_row({10, 11, 12}, 1);
  CHECK(len1.inputs == Tokens{11});
  CHECK(len1.targets == Tokens{12});
}

TEST_CASE("make_eval_row: BOS then history, last L tokens", "[cpu]") {
  CHECK(eval_row({10, 11}, 5) == Tokens{P, P, S, 10, 11});
  CHECK(eval_row({10, 11, 12, 13}, 5) == Tokens{S, 10, 11, 12, 13});
  CHECK(eval_row({10, 11, 12, 13, 14, 15}, 4) == Tokens{12, 13, 14, 15});
  CHECK(eval_row({}, 3) == Tokens{P, P, S});
  // The eval row for a history equals the train row's inputs for history + target.
  const Tokens history = {21, 22, 23, 24, 25, 26, 27};
  Tokens seq = history;
  seq.push_back(28);
  for (std::int32_t L : {1, 3, 7, 8, 9, 12}) {
    CHECK(eval_row(history, L) == train_row(seq, L).inputs);
  }
  CHECK_THROWS_AS(eval_row({1}, 0), seqrec::Error);
  const std::vector<Tokens> hs = {{10}, {11, 12, 13}};
  const auto b = make_eval_batch(hs, 3);
  CHECK(b.batch == 2);
  CHECK(b.length == 3);
  CHECK(b.inputs == Tokens{P, S, 10, 11, 12, 13});
}

TEST_CASE("TrainBatcher: every sequence exactly once per epoch", "[cpu]") {
  std::vector<Tokens> seqs;
  for (std::int32_t k = 0; k < 103; ++k) {
    // Sequence k: k % 9 tokens, first token identifies the sequence; empty ones are skipped.
    Tokens s;
    for (std::int32_t j = 0; j < k % 9; ++j) s.push_back(1000 + k * 10 + j);
    seqs.push_back(s);
  }
  const std::size_t nonempty = static_cast<std::size_t>(
      std::count_if(seqs.begin(), seqs.end(), [](const Tokens& s) { return !s.empty(); }));
  const std::int32_t L = 5, B = 16;
  TrainBatcher batcher(seqs, L, B);
  CHECK(batcher.num_sequences() == nonempty);
  CHECK(batcher.num_batches() == (nonempty + 15) / 16);

  for (std::uint64_t epoch : {0u, 1u, 2u}) {
    batcher.start_epoch(99, epoch);
    std::vector<int> seen(seqs.size(), 0);
    std::size_t rows = 0;
    for (std::size_t i = 0; i < batcher.num_batches(); ++i) {
      const auto b = batcher.batch(i);
      const auto idx = batcher.batch_indices(i);
      REQUIRE(static_cast<std::size_t>(b.batch) == idx.size());
      CHECK(b.length == L);
      CHECK(b.inputs.size() == idx.size() * L);
      CHECK(b.targets.size() == idx.size() * L);
      if (i + 1 < batcher.num_batches()) CHECK(b.batch == B);
      std::size_t targets = 0;
      for (std::size_t r = 0; r < idx.size(); ++r) {
        ++seen[idx[r]];
        const auto expect = train_row(seqs[idx[r]], L);
        CHECK(Tokens(b.inputs.begin() + r * L, b.inputs.begin() + (r + 1) * L) == expect.inputs);
        CHECK(Tokens(b.targets.begin() + r * L, b.targets.begin() + (r + 1) * L) == expect.targets);
        targets += std::min<std::size_t>(seqs[idx[r]].size(), L);
      }
      CHECK(b.num_targets == targets);
      rows += idx.size();
    }
    CHECK(rows == nonempty);
    for (std::size_t k = 0; k < seqs.size(); ++k) CHECK(seen[k] == (seqs[k].empty() ? 0 : 1));
  }
  CHECK_THROWS_AS(batcher.batch(batcher.num_batches()), seqrec::Error);
}

TEST_CASE("TrainBatcher: order depends only on (seed, epoch)", "[cpu]") {
  std::vector<Tokens> seqs;
  for (std::int32_t k = 0; k < 50; ++k) seqs.push_back(Tokens{100 + k, 200 + k});
  TrainBatcher a(seqs, 4, 8), b(seqs, 4, 8);
  auto order = [](const TrainBatcher& t) {
    std::vector<std::size_t> o;
    for (std::size_t i = 0; i < t.num_batches(); ++i) {
      for (auto k : t.batch_indices(i)) o.push_back(k);
    }
    return o;
  };
  // Before any epoch: the sequences' own order.
  std::vector<std::size_t> identity(50);
  for (std::size_t k = 0; k < 50; ++k) identity[k] = k;
  CHECK(order(a) == identity);
  // a walks epochs 0..3, b jumps straight to 3: same order (no hidden state across epochs).
  for (std::uint64_t e = 0; e <= 3; ++e) a.start_epoch(5, e);
  b.start_epoch(5, 3);
  CHECK(order(a) == order(b));
  CHECK(a.batch(2).inputs == b.batch(2).inputs);
  const auto e3 = order(a);
  a.start_epoch(5, 4);
  CHECK(order(a) != e3);
  a.start_epoch(6, 3);
  CHECK(order(a) != e3);
  CHECK(e3 != identity);
}

TEST_CASE("TrainBatcher: batch() from several threads", "[cpu]") {
  std::vector<Tokens> seqs;
  for (std::int32_t k = 0; k < 200; ++k)
    seqs.push_back(Tokens(static_cast<std::size_t>(k % 13 + 1), 4 + k));
  TrainBatcher t(seqs, 8, 10);
  t.start_epoch(1, 1);
  std::vector<Batch> serial, parallel(t.num_batches());
  for (std::size_t i = 0; i < t.num_batches(); ++i) serial.push_back(t.batch(i));
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (std::size_t i = static_cast<std::size_t>(w); i < t.num_batches(); i += 4) {
        parallel[i] = t.batch(i);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (std::size_t i = 0; i < serial.size(); ++i) {
    CHECK(serial[i].inputs == parallel[i].inputs);
    CHECK(serial[i].targets == parallel[i].targets);
  }
}
