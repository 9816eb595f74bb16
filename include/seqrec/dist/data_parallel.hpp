// Data parallelism over a communicator (dist/communicator.hpp): how a batch is shared out, how
// the replicas' gradients become the one-process gradient, and evaluation shared by the group.
//
// The step, for a group of P ranks that all hold the same global batch (each builds it from the
// same seed) and the same parameters:
//   1. rank r takes a contiguous range of the batch's rows, balanced by scored targets (a packed
//      step's work grows with them), and runs forward and backward on it alone; its loss and
//      gradient are means over its n_r targets;
//   2. it scales its gradient by n_r / N (N = the batch's targets, which every rank counts);
//   3. the group sums the gradients (allreduce), so every rank holds Σ_r (n_r / N) · g_r: the
//      mean over all N targets, which is the one-process gradient up to the order of its sums.
// The MoE auxiliary losses are each rank's own, on its tokens, weighted the same way: the
// balance loss of a data-parallel run sees P shards instead of one batch (as in the usual
// implementations), so MoE runs match the one-process run only approximately.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <span>
#include <type_traits>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/data/vocabulary.hpp"
#include "seqrec/dist/communicator.hpp"
#include "seqrec/eval/evaluator.hpp"
#include "seqrec/eval/metrics.hpp"
#include "seqrec/model/device_model.hpp"
#include "seqrec/model/parameter_store.hpp"

namespace seqrec::dist {

/// Bounds of `parts` contiguous ranges of [0, weights.size()) with about equal total weight:
/// range p is [b[p], b[p + 1]), b[0] = 0, b[parts] = weights.size(). Bound p is the index
/// whose prefix weight is nearest p / parts of the total, so each range is within one row's
/// weight of an even share; with no weight at all, rows are split by count. Ranges may be empty
/// (fewer rows than parts, or heavy rows).
inline std::vector<std::int64_t> balanced_bounds(std::span<const std::int64_t> weights, int parts) {
  SEQREC_CHECK(parts >= 1, "balanced_bounds: parts must be >= 1");
  const auto n = static_cast<std::int64_t>(weights.size());
  std::int64_t total = 0;
  for (std::int64_t w : weights) {
    SEQREC_CHECK(w >= 0, "balanced_bounds: negative weight");
    total += w;
  }
  std::vector<std::int64_t> b(static_cast<std::size_t>(parts) + 1, n);
  b[0] = 0;
  if (total == 0) {
    for (int p = 1; p < parts; ++p) b[static_cast<std::size_t>(p)] = n * p / parts;
    return b;
  }
  // Bound p: the i whose prefix(i) (the weight of rows [0, i)) is nearest p / parts of the
  // total, the lower one on a tie. Compared times `parts`, in integers.
  std::int64_t i = 0, prefix = 0;
  auto w = [&](std::int64_t k) { return weights[static_cast<std::size_t>(k)]; };
  for (int p = 1; p < parts; ++p) {
    const std::int64_t target = std::int64_t{p} * total;
    while (i < n && (prefix + w(i)) * parts <= target) prefix += w(i++);
    if (i < n && (prefix + w(i)) * parts - target < target - prefix * parts) prefix += w(i++);
    b[static_cast<std::size_t>(p)] = i;
  }
  return b;
}

/// Rank `rank`'s rows of a batch (batch, len) of targets among `parts` ranks, balanced by
/// scored targets (item ids). *scored receives the whole batch's count, N.
struct RowRange {
  std::int32_t begin = 0, end = 0;
};
inline RowRange batch_shard(const std::int32_t* targets, std::int32_t batch, std::int32_t len,
                            int rank, int parts, std::int64_t* scored) {
  SEQREC_CHECK(rank >= 0 && rank < parts, "batch_shard: rank outside the group");
  std::vector<std::int64_t> w(static_cast<std::size_t>(batch), 0);
  std::int64_t total = 0;
  for (std::int32_t r = 0; r < batch; ++r) {
    for (std::int32_t t = 0; t < len; ++t)
      w[static_cast<std::size_t>(r)] +=
          data::Vocabulary::is_item(targets[std::int64_t{r} * len + t]);
    total += w[static_cast<std::size_t>(r)];
  }
  if (scored) *scored = total;
  const auto b = balanced_bounds(w, parts);
  return {static_cast<std::int32_t>(b[static_cast<std::size_t>(rank)]),
          static_cast<std::int32_t>(b[static_cast<std::size_t>(rank) + 1])};
}

/// Scales this rank's gradients of the trainable tensors by `scale` and sums them over the
/// group, one allreduce per run of adjacent trainable tensors (a frozen item table is skipped).
template <typename T, Communicator C>
void allreduce_grads(ParameterStore<T>& s, C& comm, T scale) {
  T* g = s.grads().data();
  const auto& es = s.entries();
  for (std::size_t i = 0; i < es.size();) {
    if (es[i].frozen) {
      ++i;
      continue;
    }
    const std::size_t begin = es[i].offset;
    std::size_t end = es[i].offset + es[i].numel;
    for (++i; i < es.size() && !es[i].frozen; ++i) end = es[i].offset + es[i].numel;
    if (scale != T(1))
      for (std::size_t k = begin; k < end; ++k) g[k] *= scale;
    comm.allreduce_sum(g + begin, end - begin);
  }
}

/// Copies rank `root`'s parameters to every rank (values only; a fresh run's replicas then start
/// identical even if their initialisations differed).
template <typename T, Communicator C>
void broadcast_parameters(ParameterStore<T>& s, C& comm, int root = 0) {
  comm.broadcast(s.values().data(), s.values().size(), root);
}

/// Makes the group's replicas of `model` identical and ready for sum_gradients: rank 0's
/// parameter values go to every rank. A device model (DeviceParallel) also joins its devices'
/// group: rank 0 makes the group's identifier and `comm` sends it to the others.
template <typename Model, Communicator C>
void start_replicas(Model& model, C& comm) {
  if (comm.size() == 1) return;
  if constexpr (DeviceParallel<Model>) {
    model.download();
    broadcast_parameters(model.parameters(), comm);
    model.upload();
    DeviceGroupId id{};
    if (comm.rank() == 0) id = model.new_group_id();
    std::int64_t words[sizeof(DeviceGroupId) / sizeof(std::int64_t)];
    static_assert(sizeof words == sizeof id);
    std::memcpy(words, id.data(), sizeof words);
    comm.broadcast(words, std::size(words), 0);
    std::memcpy(id.data(), words, sizeof words);
    model.join_group(id, comm.rank(), comm.size());
  } else if constexpr (DeviceResident<Model>) {
    throw Error("data-parallel training: this device model cannot sum gradients across devices");
  } else {
    broadcast_parameters(model.parameters(), comm);
  }
}

/// Step 2 and 3 of the step above: this rank's gradients times `weight`, summed over the group
/// (allreduce_grads through `comm` for a host model; between the devices for a device model,
/// which start_replicas joined to its group).
template <typename Model, Communicator C>
void sum_gradients(Model& model, C& comm, double weight) {
  if constexpr (DeviceParallel<Model>) {
    model.allreduce_grads(weight);
  } else if constexpr (DeviceResident<Model>) {
    throw Error("data-parallel training: this device model cannot sum gradients across devices");
  } else {
    using T = typename std::remove_cvref_t<decltype(model.parameters())>::value_type;
    allreduce_grads(model.parameters(), comm, static_cast<T>(weight));
  }
}

/// The ranks of `cases`, computed by the group: rank r ranks a contiguous share of the cases,
/// then the shares are summed across the group, so every rank returns the one-process ranks.
template <typename Model, Communicator C>
std::vector<std::int64_t> rank_cases(Model& model, std::span<const data::EvalCase> cases,
                                     const eval::EvalOptions& opt, C& comm) {
  if (comm.size() == 1) return eval::rank_cases(model, cases, opt);
  const auto n = static_cast<std::int64_t>(cases.size());
  const std::int64_t lo = n * comm.rank() / comm.size(), hi = n * (comm.rank() + 1) / comm.size();
  std::vector<std::int64_t> ranks(static_cast<std::size_t>(n), 0);
  if (hi > lo) {
    const auto mine = eval::rank_cases(
        model, cases.subspan(static_cast<std::size_t>(lo), static_cast<std::size_t>(hi - lo)), opt);
    std::copy(mine.begin(), mine.end(), ranks.begin() + lo);
  }
  comm.allreduce_sum(ranks.data(), ranks.size());
  return ranks;
}

/// MRR/HR/NDCG@k over all cases, ranked by the group; the same metrics on every rank, equal bit
/// for bit to eval::evaluate in one process.
template <typename Model, Communicator C>
eval::Metrics evaluate(Model& model, std::span<const data::EvalCase> cases,
                       const eval::EvalOptions& opt, C& comm) {
  eval::MetricAccumulator acc(opt.k);
  for (std::int64_t r : rank_cases(model, cases, opt, comm)) acc.add(r);
  return acc.result();
}

}  // namespace seqrec::dist
