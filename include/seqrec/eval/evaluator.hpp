// Full-catalogue evaluation of a model on a list of (history, target) cases: every item is
// scored, special tokens never are, and optionally the items already in the history are removed
// from the ranking. Cases are scored in batches of rows; metrics use pessimistic tie ranking.
//
// rank_cases() returns one rank per case so that analyses (per history length, cold targets)
// aggregate subsets of the same ranks instead of scoring again.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/data/batcher.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/eval/metrics.hpp"

namespace seqrec::eval {

struct EvalOptions {
  std::int64_t k = 10;
  bool exclude_history = false;
  std::int32_t batch = 256;
  std::int32_t window = 0;  // tokens of history fed to the model; 0: the model's max_len
};

/// A model that ranks targets where its scores are (a device model): rank_cases then sends
/// targets and exclusions instead of fetching (B, I) scores.
template <typename M>
concept RanksInPlace = requires(M& m, const std::int32_t* p, std::int64_t* r) {
  m.rank_last(p, std::int32_t{1}, std::int32_t{1}, p, p, p, r);
};

/// The pessimistic rank of every case's target.
template <typename Model>
std::vector<std::int64_t> rank_cases(Model& model, std::span<const data::EvalCase> cases,
                                     const EvalOptions& opt) {
  using T = typename Model::T;
  const std::int32_t L = opt.window > 0 ? opt.window : model.shape().max_len;
  const std::int64_t I = model.num_items();
  const std::int32_t first_item = data::Vocabulary::kNumSpecial;
  std::vector<std::int64_t> ranks(cases.size());
  std::vector<std::int32_t> inputs;
  AlignedVector<T> scores;
  std::vector<std::int64_t> excluded;
  std::vector<std::int32_t> targets, offsets, items;  // RanksInPlace: per batch, CSR exclusions
  for (std::size_t c0 = 0; c0 < cases.size(); c0 += static_cast<std::size_t>(opt.batch)) {
    const std::int32_t B =
        static_cast<std::int32_t>(std::min<std::size_t>(opt.batch, cases.size() - c0));
    inputs.assign(static_cast<std::size_t>(B) * L, data::Vocabulary::kPad);
    for (std::int32_t b = 0; b < B; ++b)
      data::make_eval_row(cases[c0 + b].history, L, inputs.data() + std::int64_t{b} * L);
    if constexpr (RanksInPlace<Model>) {
      targets.clear();
      offsets.assign(1, 0);
      items.clear();
      for (std::int32_t b = 0; b < B; ++b) {
        const auto& ec = cases[c0 + b];
        targets.push_back(ec.target - first_item);
        if (opt.exclude_history)
          for (std::int32_t t : ec.history) items.push_back(t - first_item);
        offsets.push_back(static_cast<std::int32_t>(items.size()));
      }
      model.rank_last(inputs.data(), B, L, targets.data(),
                      opt.exclude_history ? offsets.data() : nullptr, items.data(),
                      ranks.data() + c0);
      continue;
    }
    scores.resize(static_cast<std::size_t>(B * I));
    model.score_last(inputs.data(), B, L, scores.data());
    for (std::int32_t b = 0; b < B; ++b) {
      const auto& ec = cases[c0 + b];
      excluded.clear();
      if (opt.exclude_history)
        for (std::int32_t t : ec.history) excluded.push_back(t - first_item);
      ranks[c0 + b] = pessimistic_rank<T>(std::span<const T>(scores.data() + b * I, I),
                                          ec.target - first_item, excluded);
    }
  }
  return ranks;
}

/// MRR/HR/NDCG@k over all cases.
template <typename Model>
Metrics evaluate(Model& model, std::span<const data::EvalCase> cases, const EvalOptions& opt) {
  MetricAccumulator acc(opt.k);
  for (std::int64_t r : rank_cases(model, cases, opt)) acc.add(r);
  return acc.result();
}

}  // namespace seqrec::eval
