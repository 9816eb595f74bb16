// The item vocabulary: a two-way map between raw item ids (any non-negative 64-bit numbers from a
// file) and contiguous int32 tokens, the row indices of the model's item embedding table.
//
// Tokens 0..3 are special (padding, start of sequence, cloze mask, unknown item); item tokens
// start at kNumSpecial and follow the order in which items were added, so raw_items()[i] is the
// raw id of token kNumSpecial + i and a vocabulary rebuilt from the same log is identical.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "seqrec/core/error.hpp"

namespace seqrec::data {

/// Raw item ids <-> contiguous tokens; tokens 0..kNumSpecial-1 are special.
class Vocabulary {
 public:
  static constexpr std::int32_t kPad = 0;   ///< padding (left padding of batches)
  static constexpr std::int32_t kBos = 1;   ///< start of sequence: the first input position
  static constexpr std::int32_t kMask = 2;  ///< reserved for cloze (BERT4Rec-style) objectives
  static constexpr std::int32_t kUnk = 3;   ///< an item unseen in training (lenient inference)
  static constexpr std::int32_t kNumSpecial = 4;

  /// The token of `raw`, adding it as kNumSpecial + num_items() if new.
  std::int32_t add(std::int64_t raw) {
    const auto next = static_cast<std::int32_t>(kNumSpecial + raw_.size());
    auto [it, inserted] = index_.try_emplace(raw, next);
    if (inserted) {
      if (raw_.size() >=
          static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max() - kNumSpecial)) {
        index_.erase(it);
        throw Error("vocabulary is full: more than 2^31 - 5 distinct items");
      }
      raw_.push_back(raw);
    }
    return it->second;
  }

  /// The token of `raw`, or nullopt when it was never added.
  std::optional<std::int32_t> find(std::int64_t raw) const {
    const auto it = index_.find(raw);
    if (it == index_.end()) return std::nullopt;
    return it->second;
  }

  /// The token of `raw`; throws seqrec::Error naming the raw id if it is unknown.
  std::int32_t token(std::int64_t raw) const {
    const auto it = index_.find(raw);
    if (it == index_.end()) {
      throw Error("unknown item id " + std::to_string(raw) + " (not in the vocabulary of " +
                  std::to_string(num_items()) + " items)");
    }
    return it->second;
  }

  /// The token of `raw`, or kUnk when it is unknown (lenient inference).
  std::int32_t token_or_unk(std::int64_t raw) const {
    const auto it = index_.find(raw);
    return it == index_.end() ? kUnk : it->second;
  }

  /// The raw id of an item token; throws seqrec::Error naming the token if it is special or out of
  /// range.
  std::int64_t raw(std::int32_t token) const {
    if (token >= 0 && token < kNumSpecial) {
      throw Error("token " + std::to_string(token) + " is a special token, not an item");
    }
    if (token < 0 || token >= size()) {
      throw Error("token " + std::to_string(token) + " is out of range [" +
                  std::to_string(kNumSpecial) + ", " + std::to_string(size()) + ")");
    }
    return raw_[static_cast<std::size_t>(token - kNumSpecial)];
  }

  /// kNumSpecial + num_items(): the number of rows of an embedding table over this vocabulary.
  std::int32_t size() const { return kNumSpecial + num_items(); }
  /// Number of item tokens.
  std::int32_t num_items() const { return static_cast<std::int32_t>(raw_.size()); }
  /// Raw ids by item index: index i <-> token kNumSpecial + i.
  const std::vector<std::int64_t>& raw_items() const { return raw_; }

  /// True for item tokens (not special). Does not check the upper bound.
  static constexpr bool is_item(std::int32_t token) { return token >= kNumSpecial; }

 private:
  std::unordered_map<std::int64_t, std::int32_t> index_;
  std::vector<std::int64_t> raw_;
};

}  // namespace seqrec::data
