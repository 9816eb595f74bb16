// DPO fine-tuning of a trained next-item model (the study's third stage).
//
// Preference pairs come from the training sequences: at the last position of each (or at every
// position), the chosen item is the true next item and the rejected items are drawn by cosine
// similarity to it in the trained model's item table, among items that are neither the chosen
// one nor in the history before it: a share `hard_share` from the `hard_top` most similar, the
// rest from ranks hard_top+1 .. easy_top (the study: 30% from the top 10, 70% from 11–200).
//
// The sequence-level log-probability of an item is its log-softmax over the whole catalogue at
// that position. With u = β (log π − log π_ref) for the policy π and the frozen reference:
//   DPO    (1/K) Σ_j −log σ(u_c − u_j)                 (K rejected items, averaged pairwise)
//   S-DPO  −log σ(−log Σ_j exp(u_j − u_c))              (all K rejected in one softmax)
// plus, optionally, λ · (−log π(c)), a cross-entropy anchor that keeps the chosen item's
// likelihood from falling (plain DPO lowers it while widening the margin).
//
// The reference's log-probabilities depend only on the fixed pairs, so they are computed once
// before training (reference_log_probs). The full-catalogue head runs inside the model
// (Model::selected_log_probs / selected_backward: chunked, so the (pairs, items) logits never
// exist at once, and on a device model on the device); only the per-pair log-probabilities and
// their gradients come back here, where the preference loss is scored.
//
// Data-parallel over a communicator (as train::train, dist/data_parallel.hpp): every rank builds
// the same pairs; the reference's log-probabilities are computed batch by batch, shared out and
// summed (the same values as one process, bit for bit); each step's examples are shared by pair
// count, each rank's gradient (a mean over its pairs) is weighted by its share of the pairs and
// summed; validation is shared out. A device model sums its gradients between the devices.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/core/progress.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/data/batcher.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/data/vocabulary.hpp"
#include "seqrec/dist/communicator.hpp"
#include "seqrec/dist/data_parallel.hpp"
#include "seqrec/eval/evaluator.hpp"
#include "seqrec/model/device_model.hpp"
#include "seqrec/ops/dropout/dropout_cpu.hpp"
#include "seqrec/train/adamw.hpp"
#include "seqrec/train/preference_loss.hpp"
#include "seqrec/train/schedule.hpp"
#include "seqrec/train/trainer.hpp"

namespace seqrec::train {

// ---- preference pairs ---------------------------------------------------------------------------

struct PairOptions {
  std::int32_t negatives = 1;   // rejected items per chosen item (K)
  double hard_share = 0.3;      // probability that a rejected item comes from the hard pool
  std::int32_t hard_top = 10;   // hard pool: similarity ranks 1 .. hard_top
  std::int32_t easy_top = 200;  // easy pool: ranks hard_top+1 .. easy_top
  bool all_positions = false;   // a pair at every position, not only the last
  std::uint64_t seed = 1;

  void validate() const {
    SEQREC_CHECK(negatives >= 1,
                 "negatives per positive must be >= 1, got " + std::to_string(negatives));
    SEQREC_CHECK(hard_share >= 0 && hard_share <= 1,
                 "hard share must lie in [0, 1], got " + std::to_string(hard_share));
    SEQREC_CHECK(hard_top >= 1 && easy_top > hard_top, "need 1 <= hard_top < easy_top, got " +
                                                           std::to_string(hard_top) + " and " +
                                                           std::to_string(easy_top));
  }
};

/// Preference examples laid out like training rows: windows of L tokens and, per position, the
/// chosen token (kPad where that position has no pair) and K rejected tokens.
struct PreferenceData {
  std::int32_t len = 0;                   // L
  std::int32_t negatives = 0;             // K
  std::vector<std::int32_t> inputs;       // (n, L)
  std::vector<std::int32_t> chosen;       // (n, L)
  std::vector<std::int32_t> rejected;     // (n, L, K)
  std::vector<std::int32_t> rank;         // (n, L, K) 1-based rank among admissible items
  std::vector<std::int64_t> pair_offset;  // (n + 1) index of each example's first pair

  std::size_t examples() const { return len > 0 ? inputs.size() / std::size_t(len) : 0; }
  std::size_t pairs() const { return pair_offset.empty() ? 0 : std::size_t(pair_offset.back()); }
};

namespace detail {

/// Item tokens of the table sorted by decreasing cosine similarity to `anchor` (anchor itself
/// left out; ties go to the smaller token), at most `depth` of them. `unit` holds the (I, D)
/// unit-normalised item rows.
template <typename T>
void rank_by_similarity(const AlignedVector<T>& unit, std::int32_t items, std::int32_t dim,
                        std::int32_t anchor, std::size_t depth, std::vector<float>& sims,
                        std::vector<std::int32_t>& out) {
  const std::int32_t a = anchor - kNumSpecialTokens;
  CMapRM<T> U(unit.data(), items, dim);
  sims.resize(static_cast<std::size_t>(items));
  for (std::int32_t i = 0; i < items; ++i) sims[i] = static_cast<float>(U.row(i).dot(U.row(a)));
  out.resize(static_cast<std::size_t>(items));
  std::iota(out.begin(), out.end(), 0);
  out.erase(out.begin() + a);
  depth = std::min(depth, out.size());
  auto better = [&](std::int32_t x, std::int32_t y) {
    return sims[x] != sims[y] ? sims[x] > sims[y] : x < y;
  };
  std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(depth), out.end(),
                    better);
  out.resize(depth);
  for (auto& t : out) t += kNumSpecialTokens;
}

}  // namespace detail

/// Builds preference pairs from training sequences and the trained item table (vocab, D) of a
/// model (special-token rows are ignored). Deterministic in o.seed, whatever the thread count.
template <typename T>
PreferenceData build_preference_pairs(const std::vector<std::vector<std::int32_t>>& sequences,
                                      const T* table, std::int32_t vocab, std::int32_t dim,
                                      std::int32_t L, const PairOptions& o) {
  o.validate();
  const std::int32_t items = vocab - kNumSpecialTokens;
  SEQREC_CHECK(items > o.easy_top, "the catalogue (" + std::to_string(items) +
                                       " items) must be larger than the easy pool's last rank (" +
                                       std::to_string(o.easy_top) + ")");
  const std::size_t K = static_cast<std::size_t>(o.negatives), Ls = static_cast<std::size_t>(L);
  PreferenceData d;
  d.len = L;
  d.negatives = o.negatives;
  const std::size_t n = sequences.size();
  d.inputs.resize(n * Ls);
  d.chosen.resize(n * Ls);
  d.rejected.assign(n * Ls * K, data::Vocabulary::kPad);
  d.rank.assign(n * Ls * K, 0);
  d.pair_offset.assign(n + 1, 0);
  for (std::size_t e = 0; e < n; ++e) {
    SEQREC_CHECK(!sequences[e].empty(), "training sequence " + std::to_string(e) + " is empty");
    std::int32_t* in = d.inputs.data() + e * Ls;
    std::int32_t* ch = d.chosen.data() + e * Ls;
    data::make_train_row(sequences[e], L, in, ch);
    if (!o.all_positions) std::fill(ch, ch + Ls - 1, data::Vocabulary::kPad);
    std::int64_t count = 0;
    for (std::size_t p = 0; p < Ls; ++p) {
      if (ch[p] == data::Vocabulary::kPad) continue;
      SEQREC_CHECK(ch[p] >= kNumSpecialTokens && ch[p] < vocab,
                   "training token outside the vocabulary: " + std::to_string(ch[p]));
      ++count;
    }
    d.pair_offset[e + 1] = d.pair_offset[e] + count;
  }

  // Unit rows of the item table, and for every chosen item a similarity ranking deep enough for
  // any pair: easy_top admissible items plus however many of the history it may have to skip.
  AlignedVector<T> unit(static_cast<std::size_t>(items) * dim);
  {
    CMapRM<T> W(table + std::int64_t{kNumSpecialTokens} * dim, items, dim);
    MapRM<T> U(unit.data(), items, dim);
    for (std::int32_t i = 0; i < items; ++i) {
      const T norm = W.row(i).norm();
      U.row(i) = norm > T(0) ? (W.row(i) / norm).eval() : W.row(i) * T(0);
    }
  }
  std::vector<std::int32_t> index_of(static_cast<std::size_t>(vocab), -1), anchors;
  std::size_t max_history = 0;
  for (std::size_t e = 0; e < n; ++e) {
    for (std::size_t p = 0; p < Ls; ++p) {
      const std::int32_t c = d.chosen[e * Ls + p];
      if (c == data::Vocabulary::kPad) continue;
      if (index_of[c] < 0) {
        index_of[c] = static_cast<std::int32_t>(anchors.size());
        anchors.push_back(c);
      }
    }
    max_history = std::max(max_history, sequences[e].size());
  }
  const std::size_t depth = std::min<std::size_t>(
      static_cast<std::size_t>(items) - 1, static_cast<std::size_t>(o.easy_top) + max_history);
  std::vector<std::vector<std::int32_t>> ranking(anchors.size());
#pragma omp parallel
  {
    std::vector<float> sims;
#pragma omp for schedule(dynamic, 16)
    for (std::int64_t k = 0; k < std::int64_t(anchors.size()); ++k)
      detail::rank_by_similarity(unit, items, dim, anchors[k], depth, sims, ranking[k]);
  }

  const std::int32_t hard = o.hard_top, easy = o.easy_top;
#pragma omp parallel
  {
    std::vector<std::pair<std::int32_t, std::int32_t>> first;  // (item, first position)
    std::vector<std::int32_t> admissible;
    std::vector<std::uint8_t> used;
#pragma omp for schedule(dynamic, 64)
    for (std::int64_t e = 0; e < std::int64_t(n); ++e) {
      const auto& seq = sequences[e];
      first.clear();
      for (std::size_t i = 0; i < seq.size(); ++i)
        first.emplace_back(seq[i], static_cast<std::int32_t>(i));
      std::stable_sort(first.begin(), first.end(),
                       [](const auto& x, const auto& y) { return x.first < y.first; });
      first.erase(std::unique(first.begin(), first.end(),
                              [](const auto& x, const auto& y) { return x.first == y.first; }),
                  first.end());
      const std::size_t keep = std::min(seq.size(), Ls), pad = Ls - keep;
      for (std::size_t p = pad; p < Ls; ++p) {
        const std::int32_t c = d.chosen[e * Ls + p];
        if (c == data::Vocabulary::kPad) continue;
        // The target at window slot p is seq[q]; its history is seq[0 .. q-1].
        const std::int32_t q = static_cast<std::int32_t>(seq.size() - keep + (p - pad));
        auto in_history = [&](std::int32_t item) {
          auto it = std::lower_bound(first.begin(), first.end(), std::make_pair(item, -1));
          return it != first.end() && it->first == item && it->second < q;
        };
        admissible.clear();
        for (std::int32_t t : ranking[index_of[c]]) {
          if (t == c || in_history(t)) continue;
          admissible.push_back(t);
          if (admissible.size() == std::size_t(easy)) break;
        }
        // The ranking was cut at `depth`, which leaves room for every history item to be
        // skipped; fewer admissible items than easy_top can only mean a tiny catalogue.
        SEQREC_CHECK(admissible.size() >= K, "only " + std::to_string(admissible.size()) +
                                                 " admissible negatives for item token " +
                                                 std::to_string(c) + "; fewer than --negatives");
        const std::size_t hard_n = std::min<std::size_t>(std::size_t(hard), admissible.size());
        const std::size_t easy_n = admissible.size() - hard_n;
        Rng rng(mix64(o.seed ^ mix64(static_cast<std::uint64_t>(e) * Ls + p + 1)));
        used.assign(admissible.size(), 0);
        std::size_t hard_left = hard_n, easy_left = easy_n;
        for (std::size_t j = 0; j < K; ++j) {
          bool from_hard = rng.uniform() < o.hard_share;
          if (from_hard && hard_left == 0) from_hard = false;
          if (!from_hard && easy_left == 0) from_hard = true;
          const std::size_t lo = from_hard ? 0 : hard_n;
          const std::size_t size = from_hard ? hard_n : easy_n;
          // Draw the r-th unused slot of the pool.
          std::size_t r = rng.below(from_hard ? hard_left : easy_left), slot = lo;
          for (;; ++slot) {
            if (used[slot]) continue;
            if (r == 0) break;
            --r;
          }
          SEQREC_CHECK(slot < lo + size, "negative sampling ran past its pool");
          used[slot] = 1;
          (from_hard ? hard_left : easy_left)--;
          d.rejected[(e * Ls + p) * K + j] = admissible[slot];
          d.rank[(e * Ls + p) * K + j] = static_cast<std::int32_t>(slot) + 1;
        }
      }
    }
  }
  return d;
}

namespace detail {
/// The pairs of examples [begin, end): their positions in the batch's (B·L) layout and their
/// tokens (P, 1+K) [chosen, rejected…], in pair order.
inline void batch_pairs(const PreferenceData& data, std::size_t begin, std::size_t end,
                        std::vector<std::int64_t>& rows, std::vector<std::int32_t>& tokens) {
  const std::size_t L = static_cast<std::size_t>(data.len), K = std::size_t(data.negatives);
  const std::int64_t P = data.pair_offset[end] - data.pair_offset[begin];
  rows.resize(static_cast<std::size_t>(P));
  tokens.resize(static_cast<std::size_t>(P) * (1 + K));
  std::size_t k = 0;
  for (std::size_t slot = begin * L; slot < end * L; ++slot) {
    if (data.chosen[slot] == data::Vocabulary::kPad) continue;
    SEQREC_CHECK(k < rows.size(), "preference data: pair offsets disagree with the chosen tokens");
    rows[k] = static_cast<std::int64_t>(slot - begin * L);
    tokens[k * (1 + K)] = data.chosen[slot];
    std::copy_n(data.rejected.data() + slot * K, K, tokens.data() + k * (1 + K) + 1);
    ++k;
  }
  SEQREC_CHECK(k == rows.size(), "preference data: pair offsets disagree with the chosen tokens");
}
}  // namespace detail

/// One preference batch through `model`: examples [begin, end) of `data`, with the reference
/// log-probabilities of all pairs (pairs × (1+K), in pair order). Returns the summed statistics;
/// with `grad`, also adds d(mean loss)/dθ into the model's gradients (mean over the batch's
/// pairs, MoE auxiliary losses included). Stats.loss includes the auxiliary loss times the pair
/// count. The head runs where the model lives (Model::selected_log_probs): on a device model
/// only the (pairs × (1+K)) log-probabilities and their gradients cross to the host.
template <typename Model>
PairStats preference_step(Model& model, const PreferenceData& data, std::size_t begin,
                          std::size_t end, const std::vector<double>& reference,
                          const DpoOptions& o, std::uint64_t dropout_key, bool grad) {
  const std::int32_t L = data.len, K = data.negatives, J = 1 + K;
  const std::int64_t first_pair = data.pair_offset[begin];
  const std::int64_t P = data.pair_offset[end] - first_pair;
  if (P == 0) return {};
  std::vector<std::int64_t> rows;
  std::vector<std::int32_t> tokens;
  detail::batch_pairs(data, begin, end, rows, tokens);
  std::vector<double> logp(static_cast<std::size_t>(P * J)), g(logp.size());
  model.selected_log_probs(data.inputs.data() + begin * L, static_cast<std::int32_t>(end - begin),
                           L, dropout_key, rows.data(), P, tokens.data(), J, logp.data());
  PairStats s = score_pairs(o, K, P, logp.data(), reference.data() + first_pair * J, g.data());
  s.loss += model.aux_loss() * double(P);
  if (grad) model.selected_backward(g.data(), 1.0 / double(P));
  return s;
}

/// Log-probabilities of every pair's [chosen, rejected…] under `model` with dropout off
/// (pairs × (1+K), pair order): the frozen reference's side of the loss. Over a group, rank r
/// computes a contiguous share of the batches and the group sums: every rank returns the
/// one-process values.
template <typename Model, dist::Communicator C>
std::vector<double> reference_log_probs(Model& model, const PreferenceData& data, C& comm,
                                        std::int32_t batch = 256) {
  const std::int32_t L = data.len, J = 1 + data.negatives;
  std::vector<double> out(data.pairs() * static_cast<std::size_t>(J), 0.0);
  std::vector<std::int64_t> rows;
  std::vector<std::int32_t> tokens;
  const std::size_t batches = (data.examples() + std::size_t(batch) - 1) / std::size_t(batch);
  const std::size_t first = batches * std::size_t(comm.rank()) / std::size_t(comm.size());
  const std::size_t last = batches * std::size_t(comm.rank() + 1) / std::size_t(comm.size());
  for (std::size_t bi = first; bi < last; ++bi) {
    const std::size_t b0 = bi * std::size_t(batch);
    const std::size_t b1 = std::min(data.examples(), b0 + std::size_t(batch));
    const std::int64_t pair0 = data.pair_offset[b0], P = data.pair_offset[b1] - pair0;
    if (P == 0) continue;
    detail::batch_pairs(data, b0, b1, rows, tokens);
    model.selected_log_probs(data.inputs.data() + b0 * L, static_cast<std::int32_t>(b1 - b0), L, 0,
                             rows.data(), P, tokens.data(), J, out.data() + pair0 * J);
  }
  comm.allreduce_sum(out.data(), out.size());
  return out;
}

/// reference_log_probs in one process.
template <typename Model>
std::vector<double> reference_log_probs(Model& model, const PreferenceData& data,
                                        std::int32_t batch = 256) {
  dist::Single one;
  return reference_log_probs(model, data, one, batch);
}

// ---- training -----------------------------------------------------------------------------------

struct DpoEpochReport {
  std::int64_t epoch = 0;
  double loss = 0, margin = 0, accuracy = 0, chosen_delta = 0, seconds = 0;
  std::optional<eval::Metrics> valid;
};

struct DpoResult {
  std::vector<DpoEpochReport> epochs;
  double train_seconds = 0;
  std::int64_t pairs_seen = 0;
};

namespace detail {

/// One data-parallel preference step: this rank's share of examples [begin, end), balanced by
/// pair count, its gradient weighted by its share of the pairs and summed over the group.
/// Returns the batch's statistics (the same on every rank).
template <typename Model, dist::Communicator C>
PairStats data_parallel_preference_step(Model& model, const PreferenceData& data, std::size_t begin,
                                        std::size_t end, const std::vector<double>& reference,
                                        const DpoOptions& o, std::uint64_t dropout_key, C& comm) {
  std::vector<std::int64_t> pairs(end - begin);
  for (std::size_t e = begin; e < end; ++e)
    pairs[e - begin] = data.pair_offset[e + 1] - data.pair_offset[e];
  const auto b = dist::balanced_bounds(pairs, comm.size());
  const std::size_t r = static_cast<std::size_t>(comm.rank());
  const PairStats mine =
      preference_step(model, data, begin + std::size_t(b[r]), begin + std::size_t(b[r + 1]),
                      reference, o, dropout_key, true);
  const std::int64_t total = data.pair_offset[end] - data.pair_offset[begin];
  const double weight = total > 0 ? double(mine.pairs) / double(total) : 0.0;
  dist::sum_gradients(model, comm, weight);
  double sums[4] = {mine.loss, mine.margin, mine.accuracy, mine.chosen_delta};
  comm.allreduce_sum(sums, 4);
  return {sums[0], sums[1], sums[2], sums[3], total};
}

}  // namespace detail

/// Fine-tunes `policy` on the pairs for opt.epochs epochs (AdamW from fresh moments, warmup +
/// cosine to opt.lr·min_lr_ratio, gradient clipping; dropout only with o.policy_dropout),
/// data-parallel over `comm` when it has more than one rank (a device model: one per device,
/// gradients summed between the devices). opt.stage1_* and
/// opt.checkpoint are not used here. Only rank 0 shows progress and logs epochs.
template <typename Model, dist::Communicator Comm>
DpoResult dpo_train(Model& policy, const PreferenceData& data, const std::vector<double>& reference,
                    const DpoOptions& o, const TrainOptions& opt, Comm& comm,
                    const std::vector<data::EvalCase>* valid = nullptr) {
  using Clock = std::chrono::steady_clock;
  const bool parallel = comm.size() > 1, lead = comm.rank() == 0;
  const std::uint64_t rank_seed =
      opt.seed ^ (static_cast<std::uint64_t>(comm.rank()) * 0x9e3779b97f4a7c15ULL);
  const std::size_t n = data.examples();
  SEQREC_CHECK(n > 0 && data.pairs() > 0, "no preference pairs to train on");
  SEQREC_CHECK(reference.size() == data.pairs() * std::size_t(1 + data.negatives),
               "reference log-probabilities do not match the pairs");
  const std::size_t per_epoch = (n + std::size_t(opt.batch) - 1) / std::size_t(opt.batch);
  const std::int64_t total = std::int64_t(per_epoch) * opt.epochs;
  const WarmupCosine schedule{opt.lr, opt.warmup >= 0 ? opt.warmup : total / 20, total,
                              opt.min_lr_ratio};
  auto& store = policy.parameters();
  if constexpr (DeviceResident<Model>) {
    policy.reset_moments();
  } else {
    std::fill(store.moment1().begin(), store.moment1().end(), 0);
    std::fill(store.moment2().begin(), store.moment2().end(), 0);
  }
  dist::start_replicas(policy, comm);
  DpoResult result;
  Progress progress("dpo", total, opt.progress && lead);
  std::int64_t step = 0;
  std::vector<std::size_t> order(per_epoch);
  for (std::int32_t epoch = 0; epoch < opt.epochs; ++epoch) {
    std::iota(order.begin(), order.end(), std::size_t{0});
    Rng rng(mix64(opt.seed ^ mix64(0xd0d0 + static_cast<std::uint64_t>(epoch))));
    rng.shuffle(order);  // batches of consecutive examples, visited in a seeded order
    const auto t0 = Clock::now();
    PairStats sum;
    for (std::size_t bi = 0; bi < per_epoch; ++bi) {
      const std::size_t begin = order[bi] * std::size_t(opt.batch);
      const std::size_t end = std::min(n, begin + std::size_t(opt.batch));
      if constexpr (DeviceResident<Model>)
        policy.zero_grads();
      else
        store.zero_grads();
      ++step;
      const std::uint64_t key =
          o.policy_dropout ? ops::dropout_key(rank_seed, static_cast<std::uint64_t>(step), 7) | 1
                           : 0;
      sum += parallel ? detail::data_parallel_preference_step(policy, data, begin, end, reference,
                                                              o, key, comm)
                      : preference_step(policy, data, begin, end, reference, o, key, true);
      if constexpr (DeviceResident<Model>) {
        policy.optimizer_step(opt.adam, schedule(step), step, opt.clip);
      } else {
        clip_grad_norm(store, opt.clip);
        adamw_step(store, opt.adam, schedule(step), step);
      }
      progress.update(step, fmt::format("epoch {}/{} loss {:.4f} margin {:.3f}", epoch + 1,
                                        opt.epochs, sum.pairs ? sum.loss / sum.pairs : 0.0,
                                        sum.pairs ? sum.margin / sum.pairs : 0.0));
    }
    DpoEpochReport rep;
    rep.epoch = epoch + 1;
    rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double np = double(std::max<std::int64_t>(1, sum.pairs));
    rep.loss = sum.loss / np;
    rep.margin = sum.margin / np;
    rep.accuracy = sum.accuracy / np;
    rep.chosen_delta = sum.chosen_delta / np;
    result.train_seconds += rep.seconds;
    result.pairs_seen += sum.pairs;
    policy.take_expert_shares();
    const bool last = epoch + 1 == opt.epochs;
    if (valid && !valid->empty() &&
        (last || (opt.eval_every > 0 && (epoch + 1) % opt.eval_every == 0)))
      rep.valid = dist::evaluate(policy, *valid, {}, comm);
    progress.finish();
    if (opt.log_epochs && lead) {
      std::string line = fmt::format(
          "dpo epoch {}/{}  loss {:.4f}  reward margin {:.4f}  accuracy {:.3f}  "
          "chosen log-prob change {:+.4f}  {:.1f}s",
          rep.epoch, opt.epochs, rep.loss, rep.margin, rep.accuracy, rep.chosen_delta, rep.seconds);
      if (rep.valid)
        line += fmt::format("  valid mrr@10 {:.4f} ndcg@10 {:.4f} hr@10 {:.4f}", rep.valid->mrr,
                            rep.valid->ndcg, rep.valid->hr);
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    result.epochs.push_back(rep);
  }
  return result;
}

/// dpo_train in one process.
template <typename Model>
DpoResult dpo_train(Model& policy, const PreferenceData& data, const std::vector<double>& reference,
                    const DpoOptions& o, const TrainOptions& opt,
                    const std::vector<data::EvalCase>* valid = nullptr) {
  dist::Single one;
  return dpo_train(policy, data, reference, o, opt, one, valid);
}

}  // namespace seqrec::train
