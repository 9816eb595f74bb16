// Token batches for training and inference: (B, L) row-major int32 matrices, LEFT-padded with
// Vocabulary::kPad so that position L-1 always holds the last real token of every row.
//
// A training row for x1..xn is the next-item task at every position, starting from BOS so that
// x1 is predicted too:
//     inputs  [BOS, x1, ..., x_{n-1}]
//     targets [x1,  x2, ..., x_n    ]
// keeping the LAST L positions. An inference row for a history h1..hm is [BOS, h1..hm], last L
// tokens; the model's output at position L-1 scores the next item.
//
// TrainBatcher walks a set of sequences in an order that depends only on (seed, epoch), so a
// resumed run sees exactly the batches the uninterrupted run would have seen; batch(i) is const
// and can be called from several threads at once.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/data/vocabulary.hpp"

namespace seqrec::data {

/// A (B, L) batch of token rows.
struct Batch {
  std::int32_t batch = 0, length = 0;
  std::vector<std::int32_t> inputs;   // (B, L)
  std::vector<std::int32_t> targets;  // (B, L), kPad where there is no target (empty for eval)
  std::size_t num_targets = 0;        // non-pad targets
};

/// Training row for seq x1..xn: inputs [BOS, x1..x_{n-1}], targets [x1..xn], keep the LAST L
/// positions, left-pad with kPad. `inputs` and `targets` each point to L writable tokens.
inline void make_train_row(std::span<const std::int32_t> seq, std::int32_t L, std::int32_t* inputs,
                           std::int32_t* targets) {
  SEQREC_CHECK(L > 0, "sequence length L must be positive, got " + std::to_string(L));
  const std::size_t len = static_cast<std::size_t>(L);
  const std::size_t n = seq.size();
  const std::size_t keep = std::min(n, len);  // positions kept: n-keep .. n-1 (0-based)
  const std::size_t pad = len - keep;
  std::fill(inputs, inputs + pad, Vocabulary::kPad);
  std::fill(targets, targets + pad, Vocabulary::kPad);
  for (std::size_t k = 0; k < keep; ++k) {
    const std::size_t p = n - keep + k;  // position in [BOS, x1..x_{n-1}] / [x1..xn]
    inputs[pad + k] = p == 0 ? Vocabulary::kBos : seq[p - 1];
    targets[pad + k] = seq[p];
  }
}

/// Inference row for history h1..hm: inputs [BOS, h1..hm], last L tokens, left-padded. `inputs`
/// points to L writable tokens.
inline void make_eval_row(std::span<const std::int32_t> history, std::int32_t L,
                          std::int32_t* inputs) {
  SEQREC_CHECK(L > 0, "sequence length L must be positive, got " + std::to_string(L));
  const std::size_t len = static_cast<std::size_t>(L);
  const std::size_t n = history.size() + 1;  // with BOS
  const std::size_t keep = std::min(n, len);
  const std::size_t pad = len - keep;
  std::fill(inputs, inputs + pad, Vocabulary::kPad);
  for (std::size_t k = 0; k < keep; ++k) {
    const std::size_t p = n - keep + k;  // position in [BOS, h1..hm]
    inputs[pad + k] = p == 0 ? Vocabulary::kBos : history[p - 1];
  }
}

/// Inference batch of histories: (B, L) inputs, no targets.
inline Batch make_eval_batch(std::span<const std::vector<std::int32_t>> histories, std::int32_t L) {
  SEQREC_CHECK(L > 0, "sequence length L must be positive, got " + std::to_string(L));
  Batch b;
  b.batch = static_cast<std::int32_t>(histories.size());
  b.length = L;
  b.inputs.resize(histories.size() * static_cast<std::size_t>(L));
  for (std::size_t r = 0; r < histories.size(); ++r) {
    make_eval_row(histories[r], L, b.inputs.data() + r * static_cast<std::size_t>(L));
  }
  return b;
}

/// Shuffled (B, L) training batches over a set of sequences (empty ones skipped).
class TrainBatcher {
 public:
  /// Keeps a reference to `seqs`, which must outlive the batcher and not change. Before the first
  /// start_epoch the order is the sequences' own order.
  TrainBatcher(const std::vector<std::vector<std::int32_t>>& seqs, std::int32_t L, std::int32_t B)
      : seqs_(&seqs), length_(L), batch_(B) {
    SEQREC_CHECK(L > 0, "sequence length L must be positive, got " + std::to_string(L));
    SEQREC_CHECK(B > 0, "batch size B must be positive, got " + std::to_string(B));
    for (std::size_t k = 0; k < seqs.size(); ++k) {
      if (!seqs[k].empty()) nonempty_.push_back(k);
    }
    order_ = nonempty_;
  }

  /// Sets the epoch's order: the sequences shuffled by an Rng seeded from (seed, epoch) only.
  void start_epoch(std::uint64_t seed, std::uint64_t epoch) {
    order_ = nonempty_;
    Rng rng(mix64(seed) ^ mix64(epoch ^ 0x65706f6368ULL));  // "epoch"
    rng.shuffle(order_);
  }

  /// ceil(num_sequences() / B); the last batch may be smaller.
  std::size_t num_batches() const {
    const auto b = static_cast<std::size_t>(batch_);
    return (order_.size() + b - 1) / b;
  }

  /// Batch i of the current epoch, i < num_batches(). Thread-safe.
  Batch batch(std::size_t i) const {
    SEQREC_CHECK(i < num_batches(), "batch index " + std::to_string(i) + " out of range [0, " +
                                        std::to_string(num_batches()) + ")");
    const auto b = static_cast<std::size_t>(batch_);
    const auto len = static_cast<std::size_t>(length_);
    const std::size_t first = i * b;
    const std::size_t rows = std::min(b, order_.size() - first);
    Batch out;
    out.batch = static_cast<std::int32_t>(rows);
    out.length = length_;
    out.inputs.resize(rows * len);
    out.targets.resize(rows * len);
    for (std::size_t r = 0; r < rows; ++r) {
      const auto& seq = (*seqs_)[order_[first + r]];
      make_train_row(seq, length_, out.inputs.data() + r * len, out.targets.data() + r * len);
    }
    for (std::int32_t t : out.targets) out.num_targets += t != Vocabulary::kPad;
    return out;
  }

  /// Indices (into the constructor's sequences) of the rows of batch i, in row order; valid until
  /// the next start_epoch.
  std::span<const std::size_t> batch_indices(std::size_t i) const {
    SEQREC_CHECK(i < num_batches(), "batch index " + std::to_string(i) + " out of range [0, " +
                                        std::to_string(num_batches()) + ")");
    const auto b = static_cast<std::size_t>(batch_);
    const std::size_t first = i * b;
    return std::span<const std::size_t>(order_).subspan(first, std::min(b, order_.size() - first));
  }

  /// Number of non-empty sequences (rows per epoch).
  std::size_t num_sequences() const { return nonempty_.size(); }
  std::int32_t length() const { return length_; }
  std::int32_t batch_size() const { return batch_; }

 private:
  const std::vector<std::vector<std::int32_t>>* seqs_;
  std::int32_t length_;
  std::int32_t batch_;
  std::vector<std::size_t> nonempty_;  // indices of non-empty sequences
  std::vector<std::size_t> order_;     // this epoch's order of nonempty_
};

}  // namespace seqrec::data
