// Training throughput of Model<OursRandomConfig, cuda::Backend> at the study's best shape:
// dim 1024, 5 layers, 8 heads, ffn 4096, max_len 20, batch 1024, vocab 4+16859, dropout 0.1
// (RoPE, RMSNorm, SiLU MLP; random init — the title init of OursConfig costs nothing per step).
//
//   gpu_train_bench [--steps N] [--warmup N] [--profile N] [--data DIR] [--bf16]
//                   [--fp32-activations] [--fp32-gemm-outputs] [--no-bf16-mirrors] [--autotune]
//                   [--eager-zero-grads] [--overlap-dw] [--tiny]
//
// --tiny runs every part at dim 64, 2 layers, 2 heads, ffn 256, batch 32 (same catalogue): not a
// benchmark but a check that the bench itself works, for the host emulator (tests/emu), where a
// study-size step takes minutes.
//
// --bf16 switches the backend to bf16 GEMM operands with fp32 accumulation (Backend::set_bf16),
// with the GEMM-only activations stored in bf16 (--fp32-activations keeps them in fp32 and rounds
// them at each GEMM instead: same bits, for an A/B of the storage) and the qkv, fc1, d(act) and
// d(ctx) GEMMs, attention's d(qkv), the loss's logits GEMM and the out linear and fc2 (the
// branches) writing bf16 (--fp32-gemm-outputs keeps them fp32, as before the ninth session —
// the logits before the tenth, the branches before the eleventh: an A/B of those changes, which
// also move the numbers by a few bf16 roundings); MFU is then taken against the
// card's dense bf16 tensor peak instead of its fp32 peak. --no-bf16-mirrors casts every weight
// operand to bf16 again after each optimiser step instead of taking it from the model's bf16
// mirror, which the AdamW kernel writes (Backend::set_bf16_mirrors; the same bits: an A/B of the
// tenth session's mirror).
//
// --eager-zero-grads has zero_grads() clear every gradient itself, the linear weights' included,
// instead of leaving those zeros to the weights' dW GEMMs (Model::set_lazy_zero_grads; the same
// values: an A/B of the eleventh session's lazy zeroing).
//
// --overlap-dw runs each linear layer's weight-gradient GEMM on a second stream, at the same time
// as its input-gradient GEMM (Backend::set_overlap_dw, off by default; the same bits): an
// experiment on the GEMMs' partial last waves. The profile's GEMM table then sums the two
// streams' GEMM times, which overlap.
//
// --autotune turns on the backend's GEMM autotuning (Backend::set_gemm_autotune): each GEMM class
// times cuBLASLt's candidates once and keeps the fastest; the warm-up then covers every synthetic
// batch (at least 8 steps), so that the timed steps meet no new class. The real epoch's batches
// may still meet a few new row counts.
//
// --profile N (default 5, 0 = off): after the timed steps, N more steps with the backend's
// profiler on (CUDA events around each phase of the step: cuda::ProfileScope in model_cuda.cuh),
// printed as GPU ms per step and share per phase, plus the part of the step's wall time outside
// every range (host work, launch gaps, the loss's synchronisation). Then the GEMMs alone (the
// profiler also times every cuBLASLt call): per phase and problem class, calls, ms and TFLOP/s
// per step, and a "GEMMS |" line with their total, their share of the step, and the MFU the
// step would reach if everything but its GEMMs took no time — the ceiling that faster non-GEMM
// kernels alone can reach. The events perturb the step slightly, so the timed figures above
// come from unprofiled steps.
//
// Part 1, synthetic: 8 pre-built batches of random items with realistic left padding (sequence
// length 1 + ⌊Exp(mean 10)⌋, so a row holds min(n, 20) targets, about 9.1 of 20 on average),
// cycled; 3 warm-up steps, then 30 timed steps of zero_grads + forward_backward + clip 1.0 +
// AdamW on the device (wall clock around each step; every step synchronises when it returns the
// loss). Prints ms/step, train tokens/s (non-pad targets), model FLOPs per token, achieved
// TFLOP/s, MFU against the peak of the precision in use (H100/H200 SXM: 67 TFLOP/s fp32
// non-tensor — fp32 mode runs without TF32 — or 989 TFLOP/s dense bf16) and device memory.
//
// FLOPs per scored (non-pad) token, counted, not measured:
//   6·P  +  12·layers·L·D  +  6·D·I
// with P the non-embedding parameters (blocks and final norm: every GEMM weight is used in one
// forward GEMM and two backward GEMMs, 2 flops per multiply-add), 12·layers·L·D the attention
// score and value products over the full L×L window (forward 4·L·D per token and layer, backward
// twice that; PaLM's convention, causal masking not halved), and 6·D·I the tied output
// projection over all I items (logits, dH, dW). MFU counts only scored tokens. "Executed" FLOPs
// (HFU) count the rows the dense layers actually compute: the model packs a training step to
// the rows whose input is not padding (or whose target is scored), which for rows made by
// make_train_row are exactly the scored positions — and attention over each sequence's computed
// positions only (12·layers·n²·D per sequence of n computed positions, same convention). So HFU
// is now below MFU by the attention term MFU credits for the full window (the H100 table, before
// packing, had HFU 61% against MFU 31%).
//
// Then DPO steps on the same model and batches (dpo_part): the device pair head
// (selected_log_probs / selected_backward), the pairs scored on the host by train::score_pairs.
//
// Part 2 (--data DIR): reads DIR/interactions.tsv, builds the dataset and the study's holdout
// split (20 % of users held out, seed 42), and times one real epoch over split.train with the
// project's TrainBatcher (batch assembly on the host included): seconds per epoch.
//
// Exits 77 when no GPU answers, 1 on an error.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/core/random.hpp"
#include "seqrec/data/batcher.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/data/interactions.hpp"
#include "seqrec/model/config.hpp"
#include "seqrec/model/model_cuda.cuh"
#include "seqrec/ops/dropout/dropout_cpu.hpp"
#include "seqrec/train/adamw.hpp"
#include "seqrec/train/preference_loss.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Cfg = seqrec::OursRandomConfig;
using GpuModel = seqrec::Model<Cfg, seqrec::cuda::Backend>;

constexpr double kPeakFp32 = 67e12;   // H100/H200 SXM fp32 non-tensor, flop/s
constexpr double kPeakBf16 = 989e12;  // H100/H200 SXM dense bf16 tensor, flop/s
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

/// The figures of one run, printed last as one row of scripts/gpu_check.sh's results table
/// (the line starts with "RESULT ").
struct Summary {
  double ms_per_step = 0, tokens_per_s = 0, mfu = 0, hfu = 0, peak_gib = 0, dpo_ms = 0;
  double epoch_s = -1;             // -1: no --data
  std::size_t lazy_zero_hits = 0;  // the synthetic part's dW GEMMs that overwrote pending zeros
};

/// --tiny: the bench's code paths at a size the host emulator runs in seconds.
bool g_tiny = false;
bool g_eager_zero = false;  // --eager-zero-grads
std::int32_t batch_size() { return g_tiny ? 32 : 1024; }

seqrec::ModelShape study_shape(std::int32_t vocab) {
  seqrec::ModelShape s;
  s.vocab_size = vocab;
  s.max_len = 20;
  s.dim = g_tiny ? 64 : 1024;
  s.layers = g_tiny ? 2 : 5;
  s.heads = g_tiny ? 2 : 8;
  s.ffn_dim = g_tiny ? 256 : 4096;
  s.dropout = 0.1;
  // The loss's chunks come from the backend's logits budget (Backend::loss_chunk_elems, 2^27 fp32
  // logits' worth: one chunk per step here with bf16 logits, two of ~4600 rows with fp32 ones),
  // as in the trainers.
  return s;
}

struct Batch {
  std::int32_t B = 0, L = 0;
  std::vector<std::int32_t> inputs, targets;
  std::int64_t scored = 0;
  std::int64_t computed = 0;  // rows the packed step computes: input or target not padding
  double attn_sq = 0;         // Σ over rows of (computed positions of the row)²: packed attention
};

Batch synthetic_batch(seqrec::Rng& rng, std::int32_t B, std::int32_t L, std::int32_t vocab) {
  Batch b;
  b.B = B;
  b.L = L;
  b.inputs.resize(static_cast<std::size_t>(B) * L);
  b.targets.resize(b.inputs.size());
  for (std::int32_t r = 0; r < B; ++r) {
    double u = rng.uniform();
    if (u < 1e-300) u = 1e-300;
    const auto n = static_cast<std::size_t>(1 + std::floor(-10.0 * std::log(u)));
    std::vector<std::int32_t> seq(n);
    for (auto& t : seq)
      t = seqrec::kNumSpecialTokens +
          static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(vocab - 4)));
    seqrec::data::make_train_row(seq, L, b.inputs.data() + std::size_t(r) * L,
                                 b.targets.data() + std::size_t(r) * L);
  }
  for (std::int32_t t : b.targets) b.scored += t >= seqrec::kNumSpecialTokens;
  for (std::size_t i = 0; i < b.inputs.size(); ++i)
    b.computed += b.inputs[i] != seqrec::kPadToken || b.targets[i] >= seqrec::kNumSpecialTokens;
  for (std::int32_t r = 0; r < B; ++r) {
    double n = 0;
    for (std::int32_t i = 0; i < L; ++i) {
      const std::size_t k = std::size_t(r) * L + i;
      n += b.inputs[k] != seqrec::kPadToken || b.targets[k] >= seqrec::kNumSpecialTokens;
    }
    b.attn_sq += n * n;
  }
  return b;
}

std::size_t used_bytes() {
  std::size_t free_b = 0, total_b = 0;
  SEQREC_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return total_b - free_b;
}

/// Non-embedding parameters: everything but the item table (and a learned position table).
double non_embedding_params(const GpuModel& m) {
  double p = 0;
  for (const auto& e : m.parameters().entries())
    if (e.name != "item_emb.weight" && e.name != "pos_emb.weight") p += double(e.numel);
  return p;
}

/// N profiled steps over `batches`: GPU time per phase (the backend's profiler), per step; then
/// the GEMMs alone (the profiler times each cuBLASLt call), per phase and class, and what the
/// step's MFU would be if nothing but its GEMMs took time (per_token: model FLOPs per scored
/// token; peak: the precision's flop/s).
void profile_part(seqrec::cuda::Backend& be, GpuModel& model, const std::vector<Batch>& batches,
                  int steps, int first_step, double per_token, double peak) {
  if (steps <= 0) return;
  const seqrec::train::AdamWOptions opt;
  be.enable_profiling(true);
  be.profiler()->reset_totals();
  double wall_ms = 0, tokens = 0;
  for (int s = 0; s < steps; ++s) {
    const Batch& b = batches[static_cast<std::size_t>(s) % batches.size()];
    const std::uint64_t key = seqrec::ops::dropout_key(42, std::uint64_t(first_step + s), 0) | 1;
    be.synchronize();
    const auto t0 = Clock::now();
    model.zero_grads();
    std::int64_t nt = 0;
    model.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.L, key, &nt);
    model.optimizer_step(opt, 1e-3, first_step + s, 1.0);
    be.synchronize();
    wall_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    be.profiler()->collect();
    tokens += double(nt);
  }
  auto totals = be.profiler()->totals();
  auto gemms = be.profiler()->gemm_totals();
  be.enable_profiling(false);
  double gpu_ms = 0;
  for (const auto& t : totals) gpu_ms += t.second;
  std::sort(totals.begin(), totals.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  std::printf("\nstep profile, %d steps with CUDA events around each phase (ms per step):\n",
              steps);
  std::printf("  %-30s %9s %7s\n", "phase", "ms/step", "share");
  for (const auto& [name, ms] : totals)
    std::printf("  %-30s %9.3f %6.1f%%\n", name.c_str(), ms / steps, 100.0 * ms / gpu_ms);
  std::printf("  %-30s %9.3f\n", "sum of phases (GPU)", gpu_ms / steps);
  std::printf("  %-30s %9.3f  (%.1f%% of the wall time outside every phase)\n",
              "wall time per profiled step", wall_ms / steps,
              wall_ms > 0 ? 100.0 * (wall_ms - gpu_ms) / wall_ms : 0.0);

  // The GEMMs alone: each cuBLASLt call between its own pair of events.
  std::sort(gemms.begin(), gemms.end(), [](const auto& a, const auto& b) { return a.ms > b.ms; });
  double gemm_ms = 0, gemm_flops = 0, gemm_calls = 0;
  for (const auto& g : gemms) {
    gemm_ms += g.ms;
    gemm_flops += g.flops;
    gemm_calls += double(g.calls);
  }
  std::printf(
      "\nGEMMs of the profiled steps (CUDA events around each cuBLASLt call; per step; M x N x K "
      "the calls' mean; %% of the %.0f TFLOP/s peak):\n",
      peak / 1e12);
  std::printf("  %-26s %-44s %6s %8s %8s %6s\n", "phase", "GEMM", "calls", "ms", "TFLOP/s", "peak");
  for (const auto& g : gemms) {
    const double c = double(g.calls);
    // The label without its class sizes (the bucketed ones): the calls' mean sizes instead.
    const std::string what = g.label.substr(0, g.label.find(" [class"));
    char shape[96];
    std::snprintf(shape, sizeof shape, "%.0fx%.0fx%.0f %s", g.m / c, g.n / c, g.k / c,
                  what.c_str());
    const double rate = g.ms > 0 ? g.flops / (g.ms / 1e3) : 0.0;
    std::printf("  %-26s %-44s %6.1f %8.3f %8.1f %5.1f%%\n",
                g.phase.empty() ? "(no phase)" : g.phase.c_str(), shape, c / steps, g.ms / steps,
                rate / 1e12, 100.0 * rate / peak);
  }
  const double gemm_rate = gemm_ms > 0 ? gemm_flops / (gemm_ms / 1e3) : 0.0;
  const double model_flops = tokens * per_token;
  // One line for gpu_check.sh's results: the GEMMs' share of the step, their rate, and the MFU
  // the step would reach if everything but its GEMMs took no time.
  std::printf(
      "GEMMS | %.1f calls/step | %.3f ms/step of %.3f (%.1f%%) | %.4g TFLOP/s (%.1f%% of peak) | "
      "MFU with only the GEMMs %.1f%%\n",
      gemm_calls / steps, gemm_ms / steps, gpu_ms / steps,
      gpu_ms > 0 ? 100.0 * gemm_ms / gpu_ms : 0.0, gemm_rate / 1e12, 100.0 * gemm_rate / peak,
      gemm_ms > 0 ? 100.0 * model_flops / (gemm_ms / 1e3) / peak : 0.0);
  // Per phase, for bench/step_traffic.py --profile (which reads each phase's time against the
  // floor it counts for it): the shape and the mean scored rows of a profiled step, then per
  // phase its ms, the ms of the GEMMs in it and their executed GFLOP, per step.
  const seqrec::ModelShape& sh = model.shape();
  std::printf(
      "PROFILE SHAPE | rows %.1f | dim %d | ffn %d | heads %d | layers %d | length %d | batch %d | "
      "items %d\n",
      tokens / steps, sh.dim, sh.ffn_dim, sh.heads, sh.layers, batches.front().L, batches.front().B,
      sh.vocab_size - seqrec::kNumSpecialTokens);
  for (const auto& [name, ms] : totals) {
    double g_ms = 0, g_flops = 0;
    for (const auto& g : gemms)
      if (g.phase == name) {
        g_ms += g.ms;
        g_flops += g.flops;
      }
    std::printf("PHASE | %s | %.4f | %.4f | %.6f\n", name.c_str(), ms / steps, g_ms / steps,
                g_flops / steps / 1e9);
  }
}

/// DPO steps on the same model and batches: one pair per row at its last position (the chosen
/// item is the row's last target), K = 1 rejected item drawn uniformly among the others, the
/// reference's log-probabilities taken once from the model as it is (so the first steps start at
/// the reference, as fine-tuning does); then per step selected_log_probs (forward + pair head),
/// train::score_pairs on the host, selected_backward and clip + AdamW, timed like the training
/// steps. The pair head's FLOPs (logits, dH, dW and the backward's recomputed logits:
/// 8·P·D·I) are printed beside the model's for scale.
void dpo_part(seqrec::cuda::Backend& be, GpuModel& model, const std::vector<Batch>& batches,
              int steps, int warmup, Summary& out) {
  if (steps <= 0) return;
  const std::int32_t K = 1, J = 1 + K;
  const std::int32_t items = model.num_items();
  struct Pairs {
    std::vector<std::int64_t> rows;
    std::vector<std::int32_t> tokens;
    std::vector<double> reference;
  };
  seqrec::Rng rng(7);
  std::vector<Pairs> pairs(batches.size());
  for (std::size_t i = 0; i < batches.size(); ++i) {
    const Batch& b = batches[i];
    Pairs& p = pairs[i];
    for (std::int32_t r = 0; r < b.B; ++r) {
      const std::int64_t slot = std::int64_t{r} * b.L + b.L - 1;
      const std::int32_t chosen = b.targets[static_cast<std::size_t>(slot)];
      if (chosen < seqrec::kNumSpecialTokens) continue;
      std::int32_t rejected = chosen;
      while (rejected == chosen)
        rejected = seqrec::kNumSpecialTokens +
                   static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(items)));
      p.rows.push_back(slot);
      p.tokens.push_back(chosen);
      p.tokens.push_back(rejected);
    }
    p.reference.resize(p.tokens.size());
    model.selected_log_probs(b.inputs.data(), b.B, b.L, 0, p.rows.data(),
                             static_cast<std::int64_t>(p.rows.size()), p.tokens.data(), J,
                             p.reference.data());
  }
  const seqrec::train::AdamWOptions opt;
  seqrec::train::DpoOptions o;
  std::vector<double> logp, g, ms;
  double pairs_total = 0, last_loss = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    const std::size_t i = static_cast<std::size_t>(s) % batches.size();
    const Batch& b = batches[i];
    const Pairs& p = pairs[i];
    const auto P = static_cast<std::int64_t>(p.rows.size());
    logp.resize(p.tokens.size());
    g.resize(p.tokens.size());
    be.synchronize();
    const auto t0 = Clock::now();
    model.zero_grads();
    model.selected_log_probs(b.inputs.data(), b.B, b.L, 0, p.rows.data(), P, p.tokens.data(), J,
                             logp.data());
    const auto stats =
        seqrec::train::score_pairs(o, K, P, logp.data(), p.reference.data(), g.data());
    model.selected_backward(g.data(), 1.0 / double(P));
    model.optimizer_step(opt, 1e-5, s + 1, 1.0);
    be.synchronize();
    const double dt = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    last_loss = stats.loss / double(P);
    if (!std::isfinite(last_loss))
      throw seqrec::Error("non-finite DPO loss at step " + std::to_string(s));
    if (s < warmup) continue;
    ms.push_back(dt);
    pairs_total += double(P);
  }
  double total_ms = 0;
  for (double x : ms) total_ms += x;
  const double D = model.shape().dim, I = items;
  std::printf(
      "\nDPO (one pair per row, K = 1, policy dropout off): %d timed steps after %d warm-up: "
      "%.1f ms/step mean, %.0f pairs/s, pair-head GEMMs %.3f TFLOP per step (loss %.4f at the "
      "last step)\n",
      steps, warmup, total_ms / steps, pairs_total / (total_ms / 1e3),
      8.0 * pairs_total / steps * D * I / 1e12, last_loss);
  out.dpo_ms = total_ms / steps;
}

void synthetic_part(seqrec::cuda::Backend& be, int steps, int warmup, int profile_steps,
                    Summary& out) {
  const std::int32_t B = batch_size(), L = 20, vocab = 4 + 16859;
  const seqrec::ModelShape shape = study_shape(vocab);
  const std::size_t mem0 = used_bytes();
  GpuModel model(shape, be, 42);
  model.set_lazy_zero_grads(!g_eager_zero);
  const std::size_t mem_model = used_bytes();
  const auto& store = model.parameters();
  const double P = non_embedding_params(model);
  const double D = shape.dim, I = model.num_items(), layers = shape.layers;
  const double per_token_dense = 6.0 * P + 12.0 * layers * L * D;
  const double per_token_logits = 6.0 * D * I;
  const double per_token = per_token_dense + per_token_logits;
  std::printf(
      "config: %s; dim %d, layers %d, heads %d, ffn %d, max_len %d, batch %d, vocab %d, "
      "dropout %.2f, %s\n",
      GpuModel::describe().c_str(), shape.dim, shape.layers, shape.heads, shape.ffn_dim,
      shape.max_len, B, shape.vocab_size, shape.dropout,
      !be.bf16() ? "fp32 (no TF32)"
      : !be.bf16_activations()
          ? "bf16 GEMM operands (activations fp32, rounded per GEMM), fp32 accumulation"
      : be.bf16_gemm_outputs()
          ? "bf16 GEMM operands, GEMM-only activations and qkv/fc1/d(act)/logits outputs, fp32 "
            "accumulation"
          : "bf16 GEMM operands and GEMM-only activations (GEMM outputs fp32), fp32 accumulation");
  std::printf("parameters: %.1f M total, %.1f M non-embedding (P)\n",
              double(store.num_parameters()) / 1e6, P / 1e6);
  std::printf(
      "model FLOPs per scored token = 6*P + 12*layers*L*D + 6*D*I = %.3f + %.4f + %.3f "
      "= %.3f GFLOP\n",
      6.0 * P / 1e9, 12.0 * layers * L * D / 1e9, per_token_logits / 1e9, per_token / 1e9);

  seqrec::Rng rng(2024);
  std::vector<Batch> batches;
  double scored_total = 0;
  for (int i = 0; i < 8; ++i) {
    batches.push_back(synthetic_batch(rng, B, L, vocab));
    scored_total += double(batches.back().scored);
  }
  std::printf("synthetic batches: mean %.2f scored tokens per row of %d (%.1f%% padding)\n",
              scored_total / (8.0 * B), L, 100.0 * (1.0 - scored_total / (8.0 * B * L)));

  // Autotuning times each new GEMM class once, on first sight: every batch goes through the
  // warm-up, so that no timed step pays for it.
  if (be.gemm_autotune()) warmup = std::max(warmup, static_cast<int>(batches.size()));
  const seqrec::train::AdamWOptions opt;
  std::vector<double> ms;
  double tokens = 0, flops_model = 0, flops_exec = 0, last_loss = 0;
  std::size_t mem_peak = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    const Batch& b = batches[static_cast<std::size_t>(s) % batches.size()];
    const std::uint64_t key = seqrec::ops::dropout_key(42, std::uint64_t(s) + 1, 0) | 1;
    be.synchronize();
    const auto t0 = Clock::now();
    model.zero_grads();
    std::int64_t nt = 0;
    last_loss = model.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.L, key, &nt);
    model.optimizer_step(opt, 1e-3, s + 1, 1.0);
    be.synchronize();
    const double dt = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    mem_peak = std::max(mem_peak, used_bytes());
    if (!std::isfinite(last_loss))
      throw seqrec::Error("non-finite loss at step " + std::to_string(s));
    if (s < warmup) continue;
    ms.push_back(dt);
    tokens += double(nt);
    flops_model += double(nt) * per_token;
    // Executed: the dense layers on the computed rows, attention over each row's computed
    // positions (n² score/value products per layer and sequence, same convention), the loss.
    flops_exec += double(b.computed) * 6.0 * P + 12.0 * layers * D * b.attn_sq +
                  double(nt) * per_token_logits;
  }
  double total_ms = 0;
  for (double x : ms) total_ms += x;
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const double secs = total_ms / 1e3;
  const double tflops = flops_model / secs / 1e12, tflops_exec = flops_exec / secs / 1e12;
  std::printf(
      "\n%d timed steps after %d warm-up: %.1f ms/step mean, %.1f median, %.1f min, "
      "%.1f max (loss %.4f at the last step)\n",
      steps, warmup, total_ms / steps, median, sorted.front(), sorted.back(), last_loss);
  std::printf("train tokens/s (non-pad targets): %.0f\n", tokens / secs);
  const double peak = be.bf16() ? kPeakBf16 : kPeakFp32;
  std::printf(
      "achieved: %.2f TFLOP/s model (scored tokens) -> MFU %.1f%% of %.0f TFLOP/s %s; "
      "%.2f TFLOP/s executed (computed rows) -> HFU %.1f%%\n",
      tflops, 100.0 * tflops * 1e12 / peak, peak / 1e12, be.bf16() ? "bf16" : "fp32", tflops_exec,
      100.0 * tflops_exec * 1e12 / peak);
  std::printf(
      "device memory in use (cudaMemGetInfo): %.2f GiB before the model, %.2f GiB with "
      "parameters + grads + AdamW moments, %.2f GiB peak over the steps (the caching "
      "allocator keeps its blocks, so this is its high-water mark; allocator: %.2f GiB "
      "live, %.2f GiB cached)\n",
      mem0 / kGiB, mem_model / kGiB, mem_peak / kGiB, be.allocator().live_bytes() / kGiB,
      be.allocator().cached_bytes() / kGiB);
  out.ms_per_step = total_ms / steps;
  out.tokens_per_s = tokens / secs;
  out.mfu = 100.0 * tflops * 1e12 / peak;
  out.hfu = 100.0 * tflops_exec * 1e12 / peak;
  out.peak_gib = mem_peak / kGiB;
  profile_part(be, model, batches, profile_steps, warmup + steps + 1, per_token, peak);
  dpo_part(be, model, batches, std::min(steps, 10), std::min(warmup, 2), out);
  out.lazy_zero_hits = model.lazy_zero_hits();
}

void data_part(seqrec::cuda::Backend& be, const std::string& dir, Summary& out) {
  const auto t0 = Clock::now();
  const auto files = seqrec::data::load_dataset_dir(dir);
  const seqrec::data::Dataset d = seqrec::data::build_dataset(files.log);
  const seqrec::data::Split split = seqrec::data::split_holdout(d, seqrec::data::HoldoutOptions{});
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf(
      "\ndataset %s: %zu users, %d items, %zu interactions; holdout split: %zu train "
      "sequences, %zu valid cases (loaded in %.1f s)\n",
      dir.c_str(), d.users.size(), d.vocab.num_items(), d.num_interactions(), split.train.size(),
      split.valid.size(), load_s);
  const std::int32_t B = batch_size(), L = 20;
  const seqrec::ModelShape shape = study_shape(d.vocab.size());
  GpuModel model(shape, be, 42);
  model.set_lazy_zero_grads(!g_eager_zero);
  seqrec::data::TrainBatcher batcher(split.train, L, B);
  const seqrec::train::AdamWOptions opt;
  // One untimed forward/backward on the first batch (allocations), without an update.
  batcher.start_epoch(42, 0);
  {
    const auto b = batcher.batch(0);
    std::int64_t nt = 0;
    model.zero_grads();
    model.forward_backward(b.inputs.data(), b.targets.data(), b.batch, b.length, 1, &nt);
  }
  be.synchronize();
  const auto t1 = Clock::now();
  double loss_sum = 0;
  std::int64_t tokens = 0;
  const std::size_t nb = batcher.num_batches();
  for (std::size_t i = 0; i < nb; ++i) {
    const auto b = batcher.batch(i);
    const std::uint64_t key = seqrec::ops::dropout_key(42, std::uint64_t(i) + 1, 0) | 1;
    model.zero_grads();
    std::int64_t nt = 0;
    loss_sum +=
        model.forward_backward(b.inputs.data(), b.targets.data(), b.batch, b.length, key, &nt);
    model.optimizer_step(opt, 1e-3, std::int64_t(i) + 1, 1.0);
    tokens += nt;
  }
  be.synchronize();
  const double secs = std::chrono::duration<double>(Clock::now() - t1).count();
  std::printf(
      "one epoch: %zu batches of %d, %lld scored tokens, %.2f s/epoch, %.0f tokens/s, "
      "mean loss %.4f; 12 epochs ~ %.1f s\n",
      nb, B, static_cast<long long>(tokens), secs, double(tokens) / secs, loss_sum / double(nb),
      12.0 * secs);
  out.epoch_s = secs;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 30, warmup = 3, profile = 5;
  bool bf16 = false, fp32_activations = false, fp32_outputs = false, autotune = false;
  bool mirrors = true, overlap_dw = false;
  std::string data_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--bf16") {
      bf16 = true;
    } else if (a == "--fp32-activations") {
      fp32_activations = true;
    } else if (a == "--fp32-gemm-outputs") {
      fp32_outputs = true;
    } else if (a == "--no-bf16-mirrors") {
      mirrors = false;
    } else if (a == "--autotune") {
      autotune = true;
    } else if (a == "--eager-zero-grads") {
      g_eager_zero = true;
    } else if (a == "--overlap-dw") {
      overlap_dw = true;
    } else if (a == "--tiny") {
      g_tiny = true;
    } else if ((a == "--steps" || a == "--warmup" || a == "--profile" || a == "--data") &&
               i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--steps") steps = std::max(1, std::atoi(v.c_str()));
      if (a == "--warmup") warmup = std::max(0, std::atoi(v.c_str()));
      if (a == "--profile") profile = std::max(0, std::atoi(v.c_str()));
      if (a == "--data") data_dir = v;
    } else {
      const bool help = a == "--help" || a == "-h";
      std::fprintf(help ? stdout : stderr,
                   "usage: %s [--steps N] [--warmup N] [--profile N] [--data DIR] [--bf16] "
                   "[--fp32-activations] [--fp32-gemm-outputs] [--no-bf16-mirrors] [--autotune] "
                   "[--eager-zero-grads] [--overlap-dw] [--tiny]\n",
                   argv[0]);
      return help ? 0 : 1;
    }
  }
  std::string why;
  if (seqrec::cuda::cuda_device_available(&why) == 0) {
    std::printf("no CUDA device (cudaGetDeviceCount: %s), skipping\n", why.c_str());
    return 77;
  }
  try {
    seqrec::cuda::Backend be(0);
    be.set_bf16(bf16);
    be.set_bf16_activations(!fp32_activations);
    be.set_bf16_gemm_outputs(!fp32_outputs);
    be.set_gemm_autotune(autotune);
    be.set_bf16_mirrors(mirrors);
    be.set_overlap_dw(overlap_dw);
    cudaDeviceProp prop{};
    SEQREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s (sm_%d%d, %d SMs, %.1f GiB)\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, double(prop.totalGlobalMem) / kGiB);
    Summary sum;
    synthetic_part(be, steps, warmup, profile, sum);
    if (!data_dir.empty()) data_part(be, data_dir, sum);
    const std::string mode = std::string(!bf16              ? "fp32"
                                         : fp32_activations ? "bf16, fp32 activations"
                                         : fp32_outputs     ? "bf16, fp32 GEMM outputs"
                                                            : "bf16") +
                             (autotune ? ", autotuned GEMMs" : "") +
                             (bf16 && !mirrors ? ", weights cast per step" : "") +
                             (g_eager_zero ? ", eager zero_grads" : "") +
                             (overlap_dw ? ", dW overlapped" : "");
    std::printf("bias epilogue: %zu GEMM calls with a bias added it in a separate pass\n",
                be.bias_passes());
    if (bf16)
      std::printf("bf16 weight mirror: %zu weight operands taken from it%s\n",
                  be.bf16_mirror_hits(), mirrors ? "" : " (off: --no-bf16-mirrors)");
    std::printf("lazy zero_grads: %zu dW GEMMs overwrote a pending gradient%s\n",
                sum.lazy_zero_hits, g_eager_zero ? " (off: --eager-zero-grads)" : "");
    if (overlap_dw)
      std::printf("dW overlap: %zu weight-gradient GEMMs ran on the side stream\n", be.side_runs());
    if (autotune)
      std::printf(
          "GEMM autotuning: %zu classes timed, %zu of them won by another candidate than "
          "the heuristic's first\n",
          be.gemm_classes_tuned(), be.gemm_classes_retuned());
    std::string epoch = "-", twelve = "-";
    if (sum.epoch_s >= 0) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.2f", sum.epoch_s);
      epoch = buf;
      std::snprintf(buf, sizeof buf, "%.1f", 12.0 * sum.epoch_s);
      twelve = buf;
    }
    // One row of gpu_check.sh's results table (header there).
    std::printf("RESULT | %s | %s | %.2f | %.0f | %.1f%% | %.1f%% | %.2f | %.1f | %s | %s |\n",
                prop.name, mode.c_str(), sum.ms_per_step, sum.tokens_per_s, sum.mfu, sum.hfu,
                sum.peak_gib, sum.dpo_ms, epoch.c_str(), twelve.c_str());
  } catch (const std::exception& e) {
    std::printf("gpu_train_bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
