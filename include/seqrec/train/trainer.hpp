// The training loop: epochs of shuffled batches, forward/backward, gradient clipping, AdamW at
// the scheduled learning rate, a validation pass and a checkpoint after each epoch.
//
// Everything random is a function of (seed, epoch) for the batch order and of (seed, step) for
// dropout, so training resumed from a checkpoint retraces the uninterrupted run exactly, down to
// the printed losses (given the same thread count).
//
// Given a communicator of P > 1 ranks (dist/communicator.hpp), the run is data-parallel (see
// dist/data_parallel.hpp): every rank builds the same batches, trains on its share of each
// batch's rows, and the group sums the gradients before the optimiser step, so the replicas stay
// identical (a device model's gradients are summed between the devices, over NCCL). Rank r draws
// its dropout masks from a seed of its own (rank 0 from the one-process run's); validation is
// shared out the same way. Only rank 0 shows progress, logs epochs and writes checkpoints.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "seqrec/core/progress.hpp"
#include "seqrec/data/batcher.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/dist/communicator.hpp"
#include "seqrec/dist/data_parallel.hpp"
#include "seqrec/eval/evaluator.hpp"
#include "seqrec/io/checkpoint.hpp"
#include "seqrec/model/device_model.hpp"
#include "seqrec/ops/dropout/dropout_cpu.hpp"
#include "seqrec/train/adamw.hpp"
#include "seqrec/train/schedule.hpp"

namespace seqrec::train {

struct TrainOptions {
  std::int32_t epochs = 10;  // main (stage-2) epochs: everything trains
  // Two-stage training: first `stage1_epochs` epochs at the constant `stage1_lr` with the
  // `stage1_frozen` tensors frozen (the pretrained item table), then `epochs` epochs of
  // everything with warmup + cosine and a fresh optimiser state (as a new optimiser would).
  std::int32_t stage1_epochs = 0;
  double stage1_lr = 5e-4;
  std::vector<ParamId> stage1_frozen;
  std::int32_t batch = 128;
  double lr = 1e-3;
  std::int64_t warmup = -1;  // steps; -1: 5% of all steps
  double min_lr_ratio = 0.0;
  double clip = 1.0;  // max gradient norm; <= 0 disables
  std::uint64_t seed = 42;
  AdamWOptions adam;
  std::string checkpoint;       // written after every epoch when non-empty
  std::int32_t eval_every = 1;  // validate every N epochs (0: only at the end)
  bool progress = true;
  bool log_epochs = true;  // one line per epoch on stderr
};

struct EpochReport {
  std::int64_t epoch = 0;   // 1-based
  double loss = 0;          // mean over the epoch's steps
  double seconds = 0;       // training time only
  std::int64_t tokens = 0;  // scored positions
  std::optional<eval::Metrics> valid;
  std::vector<std::vector<double>> expert_shares;  // MoE: per block, per expert
};

struct TrainResult {
  std::vector<EpochReport> epochs;
  std::vector<double> step_losses;  // every step of this run, in order
  double train_seconds = 0;
  std::int64_t train_tokens = 0;
  double tokens_per_second() const {
    return train_seconds > 0 ? double(train_tokens) / train_seconds : 0.0;
  }
};

namespace detail {

/// One data-parallel step's forward and backward: this rank's share of the batch, its gradient
/// weighted by its share of the targets and summed over the group. Returns the batch's loss (the
/// same on every rank); *num_targets receives the batch's target count.
template <typename Model, dist::Communicator C>
double data_parallel_forward_backward(Model& model, const data::Batch& b, std::uint64_t key,
                                      C& comm, std::int64_t* num_targets) {
  std::int64_t total = 0;
  const dist::RowRange rows =
      dist::batch_shard(b.targets.data(), b.batch, b.length, comm.rank(), comm.size(), &total);
  std::int64_t mine = 0;
  double loss = 0;
  if (rows.end > rows.begin) {
    const std::size_t at = static_cast<std::size_t>(std::int64_t{rows.begin} * b.length);
    loss = model.forward_backward(b.inputs.data() + at, b.targets.data() + at,
                                  rows.end - rows.begin, b.length, key, &mine);
  }
  const double weight = total > 0 ? double(mine) / double(total) : 0.0;
  dist::sum_gradients(model, comm, weight);
  double weighted = loss * weight;
  comm.allreduce_sum(&weighted, 1);
  *num_targets = total;
  return weighted;
}

/// The group's mean of each block's expert shares (MoE; empty otherwise).
template <dist::Communicator C>
std::vector<std::vector<double>> mean_over_group(std::vector<std::vector<double>> v, C& comm) {
  for (auto& row : v) {
    comm.allreduce_sum(row.data(), row.size());
    for (double& x : row) x /= double(comm.size());
  }
  return v;
}

}  // namespace detail

/// Trains `model` on split.train from `start` (a fresh run starts at {0, 0, 0}), data-parallel
/// over `comm` when it has more than one rank. A DeviceResident model (model/device_model.hpp)
/// clips and steps its optimiser on the device; checkpoints download it first; data-parallel, one
/// process per device, its gradients are summed between the devices (dist::sum_gradients). `config`
/// is stored in checkpoints next to the model shape. `stop_after_steps` > 0 ends the run early
/// (tests use it to simulate a crash between checkpoints).
template <typename Model, dist::Communicator Comm>
TrainResult train(Model& model, const data::Split& split, const TrainOptions& opt, Comm& comm,
                  io::TrainState start = {}, const nlohmann::json& config = {},
                  std::int64_t stop_after_steps = 0) {
  using Clock = std::chrono::steady_clock;
  const bool parallel = comm.size() > 1, lead = comm.rank() == 0;
  // Rank r's dropout stream; rank 0's is the one-process run's.
  const std::uint64_t rank_seed =
      opt.seed ^ (static_cast<std::uint64_t>(comm.rank()) * 0x9e3779b97f4a7c15ULL);
  dist::start_replicas(model, comm);
  const std::int32_t L = model.shape().max_len;
  data::TrainBatcher batcher(split.train, L, opt.batch);
  const std::int64_t per_epoch = static_cast<std::int64_t>(batcher.num_batches());
  SEQREC_CHECK(per_epoch > 0, "no training sequences");
  const std::int64_t stage1_steps = per_epoch * opt.stage1_epochs;
  const std::int64_t main_steps = per_epoch * opt.epochs;
  const std::int64_t total = stage1_steps + main_steps;
  const std::int32_t total_epochs = opt.stage1_epochs + opt.epochs;
  const WarmupCosine schedule{opt.lr, opt.warmup >= 0 ? opt.warmup : main_steps / 20, main_steps,
                              opt.min_lr_ratio};
  auto& store = model.parameters();
  TrainResult result;
  io::TrainState st = start;
  Progress progress("train", total - st.step, opt.progress && lead);
  const std::int64_t first_step = st.step;
  for (; st.epoch < total_epochs; ++st.epoch, st.batch_in_epoch = 0) {
    const bool stage1 = st.epoch < opt.stage1_epochs;
    for (ParamId id : opt.stage1_frozen) store.set_frozen(id, stage1);
    batcher.start_epoch(opt.seed, static_cast<std::uint64_t>(st.epoch));
    EpochReport rep;
    rep.epoch = st.epoch + 1;
    double loss_sum = 0;
    std::int64_t steps = 0;
    const auto t0 = Clock::now();
    for (; st.batch_in_epoch < per_epoch; ++st.batch_in_epoch) {
      const data::Batch b = batcher.batch(static_cast<std::size_t>(st.batch_in_epoch));
      if constexpr (DeviceResident<Model>)
        model.zero_grads();
      else
        store.zero_grads();
      ++st.step;
      const std::uint64_t key =
          ops::dropout_key(rank_seed, static_cast<std::uint64_t>(st.step), 0) | 1;
      std::int64_t ntok = 0;
      double loss = 0;
      loss = parallel ? detail::data_parallel_forward_backward(model, b, key, comm, &ntok)
                      : model.forward_backward(b.inputs.data(), b.targets.data(), b.batch, b.length,
                                               key, &ntok);
      // Optimiser steps count from the start of each stage; stage 2 starts from zero moments,
      // as a freshly created optimiser would. Both follow from st.step, so resume is exact.
      const std::int64_t adam_step = stage1 ? st.step : st.step - stage1_steps;
      const bool fresh_moments = !stage1 && stage1_steps > 0 && adam_step == 1;
      const double lr = stage1 ? opt.stage1_lr : schedule(adam_step);
      if constexpr (DeviceResident<Model>) {
        // Clipping and AdamW run where the gradients are; frozen flags come from the host store.
        if (fresh_moments) model.reset_moments();
        model.optimizer_step(opt.adam, lr, adam_step, opt.clip);
      } else {
        clip_grad_norm(store, opt.clip);
        if (fresh_moments) {
          std::fill(store.moment1().begin(), store.moment1().end(), 0);
          std::fill(store.moment2().begin(), store.moment2().end(), 0);
        }
        adamw_step(store, opt.adam, lr, adam_step);
      }
      result.step_losses.push_back(loss);
      loss_sum += loss;
      ++steps;
      rep.tokens += ntok;
      const double secs = rep.seconds + std::chrono::duration<double>(Clock::now() - t0).count();
      progress.update(
          st.step - first_step,
          fmt::format("epoch {}/{}{} loss {:.4f} {:.0f} tok/s", st.epoch + 1, total_epochs,
                      stage1 ? " (stage 1)" : "", loss_sum / double(steps),
                      secs > 0 ? double(rep.tokens) / secs : 0.0));
      if (stop_after_steps > 0 && st.step - first_step >= stop_after_steps) {
        ++st.batch_in_epoch;
        rep.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
        result.train_seconds += rep.seconds;
        result.train_tokens += rep.tokens;
        progress.finish();
        if (!opt.checkpoint.empty() && lead) io::save_checkpoint(opt.checkpoint, model, st, config);
        return result;
      }
    }
    rep.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    rep.loss = steps ? loss_sum / double(steps) : 0.0;
    result.train_seconds += rep.seconds;
    result.train_tokens += rep.tokens;
    // Before validation routes more tokens.
    rep.expert_shares = detail::mean_over_group(model.take_expert_shares(), comm);
    const bool last = st.epoch + 1 == total_epochs;
    if (!split.valid.empty() &&
        (last || (opt.eval_every > 0 && (st.epoch + 1) % opt.eval_every == 0)))
      rep.valid = dist::evaluate(model, split.valid, {}, comm);
    model.take_expert_shares();
    progress.finish();
    if (opt.log_epochs && lead) {
      std::string line =
          fmt::format("epoch {}/{}{}  loss {:.4f}  {:.1f}s  {:.0f} tok/s", rep.epoch, total_epochs,
                      stage1 ? " (stage 1)" : "", rep.loss, rep.seconds,
                      rep.seconds > 0 ? double(rep.tokens) / rep.seconds : 0.0);
      if (rep.valid)
        line += fmt::format("  valid mrr@10 {:.4f} ndcg@10 {:.4f} hr@10 {:.4f}", rep.valid->mrr,
                            rep.valid->ndcg, rep.valid->hr);
      for (std::size_t l = 0; l < rep.expert_shares.size(); ++l) {
        line += fmt::format("\n  block {} expert shares:", l);
        for (double sh : rep.expert_shares[l]) line += fmt::format(" {:.3f}", sh);
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    result.epochs.push_back(rep);
    if (!opt.checkpoint.empty() && lead) {
      io::TrainState next{st.step, st.epoch + 1, 0};
      io::save_checkpoint(opt.checkpoint, model, next, config);
    }
  }
  return result;
}

/// One process: train(model, split, opt, dist::Single, ...).
template <typename Model>
TrainResult train(Model& model, const data::Split& split, const TrainOptions& opt,
                  io::TrainState start = {}, const nlohmann::json& config = {},
                  std::int64_t stop_after_steps = 0) {
  dist::Single one;
  return train(model, split, opt, one, start, config, stop_after_steps);
}

}  // namespace seqrec::train
