// Inference: the top-k next items for each history over the full catalogue.
//
//   auto recs = seqrec::eval::recommend(model, histories, /*k=*/10);
//   recs[u].items  — item tokens, best first;  recs[u].scores — their scores
//
// Order: descending score, ties to the lower item token, NaN above everything (a NaN score is a
// bug worth seeing at the top), −0 tied with +0 — the order of cuda::topk_rows, so a CPU and a
// device model give the same lists for the same scores. Items already in the history are left
// out unless told otherwise; special tokens never appear.
//
// A model with top_k_last (a device model) selects on the device: it is asked for k plus the
// number of distinct excluded items in the batch, which always leaves k admissible items after
// the history's are removed, in the same order. Other models score the whole catalogue on the
// host and select with a partial sort.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/data/batcher.hpp"
#include "seqrec/data/vocabulary.hpp"

namespace seqrec::eval {

struct Recommendation {
  std::vector<std::int32_t> items;  // item tokens, best first
  std::vector<float> scores;        // their scores
};

struct RecommendOptions {
  bool exclude_history = true;
  std::int32_t batch = 256;
  std::int32_t window = 0;  // tokens of history fed to the model; 0: the model's max_len
};

/// Whether (score a, column ia) ranks before (score b, column ib): see the file comment.
inline bool ranks_before(float a, std::int64_t ia, float b, std::int64_t ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

/// A model that selects its top k where its scores are (a device model).
template <typename M>
concept SelectsInPlace = requires(M& m, const std::int32_t* p, std::int32_t* items, float* s) {
  m.top_k_last(p, std::int32_t{1}, std::int32_t{1}, 1, items, s);
};

/// The k best items for every history (each a list of item tokens, oldest first).
template <typename Model>
std::vector<Recommendation> recommend(Model& model,
                                      std::span<const std::vector<std::int32_t>> histories,
                                      std::int32_t k, const RecommendOptions& opt = {}) {
  const std::int64_t I = model.num_items();
  const std::int32_t first = data::Vocabulary::kNumSpecial;
  SEQREC_CHECK(k >= 1 && k <= I,
               "recommend: k must be in [1, " + std::to_string(I) + "], got " + std::to_string(k));
  const std::int32_t L = opt.window > 0 ? opt.window : model.shape().max_len;
  std::vector<Recommendation> out(histories.size());
  std::vector<std::int32_t> inputs, cols;
  std::vector<float> vals;
  AlignedVector<float> scores;
  std::vector<std::vector<std::int32_t>> excluded(static_cast<std::size_t>(opt.batch));
  for (std::size_t h0 = 0; h0 < histories.size(); h0 += static_cast<std::size_t>(opt.batch)) {
    const std::int32_t B =
        static_cast<std::int32_t>(std::min<std::size_t>(opt.batch, histories.size() - h0));
    inputs.assign(static_cast<std::size_t>(B) * L, data::Vocabulary::kPad);
    std::size_t most_excluded = 0;
    for (std::int32_t b = 0; b < B; ++b) {
      const auto& hist = histories[h0 + b];
      data::make_eval_row(hist, L, inputs.data() + std::int64_t{b} * L);
      auto& ex = excluded[static_cast<std::size_t>(b)];
      ex.clear();
      if (opt.exclude_history)
        for (std::int32_t t : hist)
          if (t >= first && t - first < I) ex.push_back(t - first);
      std::sort(ex.begin(), ex.end());
      ex.erase(std::unique(ex.begin(), ex.end()), ex.end());
      most_excluded = std::max(most_excluded, ex.size());
    }
    // Candidates per row, in rank order: the k + |excluded| best (device), or all items (host).
    std::int64_t per_row = 0;
    if constexpr (SelectsInPlace<Model>) {
      per_row = std::min<std::int64_t>(I, k + static_cast<std::int64_t>(most_excluded));
      cols.resize(static_cast<std::size_t>(B * per_row));
      vals.resize(cols.size());
      model.top_k_last(inputs.data(), B, L, static_cast<int>(per_row), cols.data(), vals.data());
    } else {
      scores.resize(static_cast<std::size_t>(B * I));
      model.score_last(inputs.data(), B, L, scores.data());
    }
    for (std::int32_t b = 0; b < B; ++b) {
      const auto& ex = excluded[static_cast<std::size_t>(b)];
      auto is_excluded = [&](std::int32_t c) {
        return std::binary_search(ex.begin(), ex.end(), c);
      };
      Recommendation& r = out[h0 + b];
      if constexpr (SelectsInPlace<Model>) {
        for (std::int64_t j = 0; j < per_row && std::ssize(r.items) < k; ++j) {
          const std::int32_t c = cols[static_cast<std::size_t>(b * per_row + j)];
          if (is_excluded(c)) continue;
          r.items.push_back(c + first);
          r.scores.push_back(vals[static_cast<std::size_t>(b * per_row + j)]);
        }
      } else {
        const float* s = scores.data() + std::int64_t{b} * I;
        std::vector<std::int32_t> cand;
        cand.reserve(static_cast<std::size_t>(I));
        for (std::int32_t c = 0; c < I; ++c)
          if (!is_excluded(c)) cand.push_back(c);
        const std::int64_t take = std::min<std::int64_t>(k, std::ssize(cand));
        std::partial_sort(
            cand.begin(), cand.begin() + take, cand.end(),
            [&](std::int32_t x, std::int32_t y) { return ranks_before(s[x], x, s[y], y); });
        for (std::int64_t j = 0; j < take; ++j) {
          r.items.push_back(cand[static_cast<std::size_t>(j)] + first);
          r.scores.push_back(s[cand[static_cast<std::size_t>(j)]]);
        }
      }
    }
  }
  return out;
}

}  // namespace seqrec::eval
