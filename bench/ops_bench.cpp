// Google Benchmark microbenchmarks of the CPU backend: the forward and the backward of every op in
// include/seqrec/ops/*/*_cpu.hpp, the element-wise loops the policies run inline (activations,
// SwiGLU, residual add, learned positions), the feed-forward policies (ReluMlp, GatedMlp,
// MoE<4, 2, SiluMlp>), one whole training step (Model<SasRecConfig, cpu::Backend>) and one DPO step
// (BM_dpo_step: its own shapes and counting, see there).
//
// Shapes. Rows N = B·L with (B, L) in {(64, 200) ML-1M-like, (256, 20) and (128, 50)}, widths
// D in {64, 256}. GEMM-bound ops (linear, attention) run all six (B, L, D); the memory-bound row
// ops depend on N·D only, so they run (B, L) = (128, 50) (the trainer's defaults) at both widths.
// The catalogue I in {3706 (ML-1M), 16859 (Games), 200000} is swept for the fused cross-entropy
// (N = 128·50, rows per chunk as the model picks them: ModelShape::loss_chunk_elems / I) and the
// model step (D = 64, every (B, L)). Heads: D / 32 (head width 32: 2 heads
// at D = 64, the trainer's default, 8 at D = 256). Linear is the FFN's up-projection D → 4D with
// bias; activations run over the FFN's inner width F = 4D (SwiGLU over its parameter-matched
// width); the embedding table holds the Games vocabulary (16859 items + 4 special tokens). No
// padding anywhere, every token a real item and every row scored, except in
// BM_model_step_padded: the model step on left-padded windows about half full, as real batches
// are (the CPU model skips padding rows, and its attention each window's padding).
//
// FLOP counting (the "FLOP/s" counter). Counted, not measured: a multiply-add is 2 flops, every
// other add, multiply, divide, compare, sqrt or exp is 1. GEMMs: 2·m·n·k.
//   linear         fwd 2·N·K·M + N·M (bias)             bwd 4·N·K·M + N·M (bias gradient)
//   attention      fwd 2·B·L²·D + 5·B·H·L²/2            bwd 4·B·L²·D + 5·B·H·L²/2
//                  useful causal work: each L×L product counts L²/2 scores (as bench/gpu_bench.cu);
//                  the CPU op multiplies dense L×L blocks, so it executes about twice the GEMM
//                  flops reported. The softmax is 5 flops per causal score.
//   cross_entropy  fwd 2·N·D·I + 4·N·I (max, subtract, exp, sum)
//                  fwd+bwd 6·N·D·I + 5·N·I (logits, dH, dW; softmax scaling)
//   rmsnorm        fwd 4·N·D            bwd 10·N·D
//   layernorm      fwd 8·N·D            bwd 16·N·D
//   rope           6 flops per rotated pair: 6·N·D (Q and K), fwd and bwd alike
//   embedding      fwd N·D (scale)      bwd 2·N·D (scale, add)
//   dropout        N·D (scale; the integer hash of the mask is not counted), fwd and bwd alike
//   relu / silu    fwd 1 / 4, bwd 2 / 9 per element of N·F
//   swiglu         fwd 5, bwd 15 per element of N·F'
//   add / position N·D
//   ffn policies   GEMM flops only (fwd 2·N·params_used, bwd twice that); their element-wise
//                  work is in the activation benchmarks. MoE counts the router and K experts.
//   model step     per scored token 6·P + 12·layers·L·D + 6·D·I, P the non-embedding parameters
//                  — the convention of bench/gpu_train_bench.cu and docs/performance.md, which
//                  counts attention over the full L×L window (PaLM), unlike the op above.
// Byte counting (the "bytes/s" counter): the compulsory traffic of the op's interface — each input
// tensor read once, each output written once, accumulated gradients read and written once, fp32
// (4 B), int32 tokens (4 B), dropout masks (1 B); the embedding counts the distinct table rows the
// tokens touch. Workspaces, re-reads and intermediate results are not counted, so bytes/s is a
// lower bound on the traffic the op really causes. For the composite benchmarks (ffn, model) it is
// only their parameters, gradients and inputs, and means little.
// "items_per_second" is rows (tokens) per second: N per iteration.
//
// Reading the figures. GEMM-bound benchmarks (linear, attention, cross_entropy, ffn, model step)
// compare their FLOP/s with Eigen's fp32 GEMM rate on the machine, which BM_eigen_gemm measures in
// the same run (a large square product through Eigen, the GEMM every CPU op calls). That is
// Eigen's rate, not the hardware's: on an AMD EPYC host Eigen reached about 160 GFLOP/s with 2
// threads where OpenBLAS reached about 200, and an Intel Xeon host gave Eigen about 340
// (docs/performance.md). Memory-bound ones (norms, rope, embedding, dropout, activations, add)
// compare bytes/s with the memory bandwidth (see docs/performance.md); their working sets (a few
// MB) mostly fit in the caches, so bytes/s can exceed the DRAM figure. The ops are multi-threaded,
// so every benchmark is timed in real (wall) time, and its "CPU" column is the whole process's CPU
// time: CPU / Time ≈ busy threads.
//
// Threads: the default thread count — OpenMP's default (all cores, or OMP_NUM_THREADS), applied to
// Eigen through seqrec::cpu::Backend(0) before any benchmark runs; the count is printed in the
// context header ("omp_threads"). Figures quoted from this binary are with the default count
// unless stated. OMP_WAIT_POLICY=passive is fairer on a busy machine (spinning workers would
// steal cycles from other processes), active gives the best figures on an idle one. Measure on an
// idle machine: Eigen's multi-threaded GEMM synchronises its threads once per depth block, so when
// another process takes a core the GEMMs with a long depth — the weight gradients dW = dYᵀ·X,
// depth N — stall on the descheduled partner (seen: 2 ms with 1 thread, 155 ms with 2, for
// linear_bwd's dW at N = 6400, D = 64 while a training run held the cores). On a shared machine
// OMP_NUM_THREADS=1 gives figures that mean something.
//
// Inputs are allocated once per benchmark and filled with seeded random data; the in-place ops
// whose values would drift (dropout, the activation backwards) get their input restored before
// each timed call, outside the timing, so no run slides into denormals.
//
// Run the whole suite (minutes; the largest cross-entropy and model steps take seconds each):
//   mkdir -p cache/bench
//   ./build/bench/ops_bench --benchmark_out=cache/bench/ops.json --benchmark_out_format=json
// A quick smoke run of a subset (libbenchmark 1.7 takes plain seconds, no "s" suffix):
//   ./build/bench/ops_bench --benchmark_min_time=0.01 --benchmark_filter='rmsnorm|linear'
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqrec/backend/cpu.hpp"
#include "seqrec/core/eigen.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/model/config.hpp"
#include "seqrec/model/model.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/ops/activation/activation.hpp"
#include "seqrec/ops/attention/attention_cpu.hpp"
#include "seqrec/ops/cross_entropy/cross_entropy_cpu.hpp"
#include "seqrec/ops/dropout/dropout_cpu.hpp"
#include "seqrec/ops/embedding/embedding_cpu.hpp"
#include "seqrec/ops/layernorm/layernorm_cpu.hpp"
#include "seqrec/ops/linear/linear_cpu.hpp"
#include "seqrec/ops/rmsnorm/rmsnorm_cpu.hpp"
#include "seqrec/ops/rope/rope_cpu.hpp"
#include "seqrec/policy/feed_forward.hpp"
#include "seqrec/policy/position.hpp"
#include "seqrec/train/dpo.hpp"

namespace {

namespace ops = seqrec::ops;
namespace ffn = seqrec::policy::ffn;
using Vec = seqrec::AlignedVector<float>;
using Tokens = std::vector<std::int32_t>;
using Bench = benchmark::internal::Benchmark;

constexpr double kF32 = sizeof(float);
constexpr double kI32 = sizeof(std::int32_t);
constexpr std::int32_t kFirstItem = seqrec::kNumSpecialTokens;
constexpr std::int64_t kHeadDim = 32;
constexpr std::int64_t kTableItems = 16859;  // embedding benchmarks: the Games catalogue
constexpr double kDropout = 0.2;             // the trainer's default
constexpr float kEps = 1e-6f;
constexpr std::array<std::pair<std::int64_t, std::int64_t>, 3> kBatchLength = {
    {{64, 200}, {256, 20}, {128, 50}}};
constexpr std::array<std::int64_t, 2> kDims = {64, 256};
constexpr std::array<std::int64_t, 3> kCatalogues = {3706, 16859, 200000};

/// The one backend of the process: sets Eigen's thread count from OpenMP's default.
seqrec::cpu::Backend& backend() {
  static seqrec::cpu::Backend be(0);
  return be;
}

Vec normal(std::int64_t n, std::uint64_t seed, double stddev = 1.0) {
  seqrec::Rng rng(seed);
  Vec v(static_cast<std::size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal() * stddev);
  return v;
}

/// n tokens uniform in [lo, hi).
Tokens uniform_tokens(std::int64_t n, std::int32_t lo, std::int32_t hi, std::uint64_t seed) {
  seqrec::Rng rng(seed);
  Tokens t(static_cast<std::size_t>(n));
  for (std::int32_t& v : t) v = lo + static_cast<std::int32_t>(rng.below(std::uint64_t(hi - lo)));
  return t;
}

std::int64_t distinct(const Tokens& t, std::int32_t hi) {
  std::vector<std::uint8_t> seen(static_cast<std::size_t>(hi), 0);
  std::int64_t u = 0;
  for (std::int32_t v : t) u += seen[static_cast<std::size_t>(v)]++ == 0;
  return u;
}

/// FLOP/s and bytes/s from per-iteration amounts; items (rows) per second.
void report(benchmark::State& st, double flops, double bytes, std::int64_t rows) {
  const double it = static_cast<double>(st.iterations());
  st.counters["FLOP/s"] = benchmark::Counter(flops * it, benchmark::Counter::kIsRate);
  st.counters["bytes/s"] = benchmark::Counter(bytes * it, benchmark::Counter::kIsRate);
  st.SetItemsProcessed(rows * static_cast<std::int64_t>(st.iterations()));
}

/// Writes through `p` are observable: the op cannot be optimised away.
void keep(void* p) {
  benchmark::DoNotOptimize(p);
  benchmark::ClobberMemory();
}

struct Rows {
  std::int64_t B, L, D, N;
};
Rows rows(const benchmark::State& st) {
  const std::int64_t B = st.range(0), L = st.range(1), D = st.range(2);
  return {B, L, D, B * L};
}

// ---- argument sets ------------------------------------------------------------------------------

void timing(Bench* b, benchmark::TimeUnit unit) {
  b->UseRealTime()->MeasureProcessCPUTime()->Unit(unit);
}
/// All (B, L) × D: the GEMM-bound ops.
void gemm_shapes(Bench* b) {
  timing(b, benchmark::kMicrosecond);
  b->ArgNames({"B", "L", "D"});
  for (const auto& [B, L] : kBatchLength)
    for (std::int64_t D : kDims) b->Args({B, L, D});
}
/// (B, L) = (128, 50) × D: the memory-bound row ops (only N·D matters to them).
void row_shapes(Bench* b) {
  timing(b, benchmark::kMicrosecond);
  b->ArgNames({"B", "L", "D"});
  for (std::int64_t D : kDims) b->Args({128, 50, D});
}
/// (128, 50) × D × I: the fused cross-entropy.
void loss_shapes(Bench* b) {
  timing(b, benchmark::kMillisecond);
  b->ArgNames({"B", "L", "D", "I"});
  for (std::int64_t D : kDims)
    for (std::int64_t I : kCatalogues) b->Args({128, 50, D, I});
}
/// (B, L) × I at D = 64: the training step.
void model_shapes(Bench* b) {
  timing(b, benchmark::kMillisecond);
  b->ArgNames({"B", "L", "I"});
  for (const auto& [B, L] : kBatchLength)
    for (std::int64_t I : kCatalogues) b->Args({B, L, I});
}

// ---- Eigen's fp32 GEMM rate on this machine: the reference for the FLOP/s figures below -------

/// C += A · B, all (n, n) row-major, through Eigen's GEMM on the default thread count: the rate
/// the GEMM-bound ops are measured against (Eigen's, not the hardware's peak). Accumulating skips
/// the destination's zeroing, which is not part of the product's rate.
void BM_eigen_gemm(benchmark::State& st) {
  const std::int64_t n = st.range(0);
  const Vec a = normal(n * n, 60, 0.01), b = normal(n * n, 61, 0.01);
  Vec c(static_cast<std::size_t>(n * n), 0.f);
  seqrec::MapRM<float> C(c.data(), n, n);
  for (auto _ : st) {
    C.noalias() += seqrec::CMapRM<float>(a.data(), n, n) * seqrec::CMapRM<float>(b.data(), n, n);
    keep(c.data());
  }
  report(st, 2.0 * n * n * n, kF32 * 4.0 * n * n, n);
}
BENCHMARK(BM_eigen_gemm)->Apply([](Bench* b) {
  timing(b, benchmark::kMillisecond);
  b->ArgNames({"n"})->Arg(2048);
});

// ---- linear: y = x Wᵀ + b, D → 4D ---------------------------------------------------------------

void BM_linear_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t K = r.D, M = 4 * r.D;
  const Vec x = normal(r.N * K, 1), w = normal(M * K, 2, 0.02), b = normal(M, 3);
  Vec y(static_cast<std::size_t>(r.N * M));
  for (auto _ : st) {
    ops::linear_forward(x.data(), w.data(), b.data(), y.data(), r.N, K, M);
    keep(y.data());
  }
  report(st, 2.0 * r.N * K * M + double(r.N) * M, kF32 * (r.N * K + M * K + M + r.N * M), r.N);
}
BENCHMARK(BM_linear_fwd)->Apply(gemm_shapes);

void BM_linear_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t K = r.D, M = 4 * r.D;
  const Vec x = normal(r.N * K, 1), w = normal(M * K, 2, 0.02), dy = normal(r.N * M, 4);
  Vec dx(static_cast<std::size_t>(r.N * K)), dw(static_cast<std::size_t>(M * K), 0.f),
      db(static_cast<std::size_t>(M), 0.f);
  for (auto _ : st) {
    ops::linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), db.data(), r.N, K, M);
    keep(dx.data());
    keep(dw.data());
  }
  // reads x, W, dy; writes dx; dW and db read and written
  report(st, 4.0 * r.N * K * M + double(r.N) * M,
         kF32 * (r.N * K + M * K + r.N * M + r.N * K + 2.0 * M * K + 2.0 * M), r.N);
}
BENCHMARK(BM_linear_bwd)->Apply(gemm_shapes);

// ---- causal multi-head attention from the fused QKV buffer --------------------------------------

struct AttentionData {
  ops::AttentionShape s;
  Vec qkv, out, probs;
  Tokens tokens;
  explicit AttentionData(const Rows& r)
      : s{r.B, r.L, r.D, r.D / kHeadDim},
        qkv(normal(r.N * 3 * r.D, 5)),
        out(static_cast<std::size_t>(r.N * r.D)),
        probs(static_cast<std::size_t>(r.B * s.heads * r.L * r.L)),
        tokens(uniform_tokens(r.N, kFirstItem, kFirstItem + kTableItems, 6)) {}
  void forward() {
    ops::attention_forward(s, qkv.data(), tokens.data(), seqrec::kPadToken, out.data(),
                           probs.data());
  }
  double gemm_flops() const {  // one L×L GEMM's useful (causal) flops over all (b, h)
    return 2.0 * s.batch * s.heads * (double(s.length) * s.length / 2.0) * s.head_dim();
  }
  double softmax_flops() const { return 5.0 * s.batch * s.heads * double(s.length) * s.length / 2; }
  double probs_elems() const { return double(probs.size()); }
};

void BM_attention_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  AttentionData a(r);
  for (auto _ : st) {
    a.forward();
    keep(a.out.data());
    keep(a.probs.data());
  }
  st.counters["H"] = double(a.s.heads);
  // reads qkv, tokens; writes out, probs
  report(st, 2.0 * a.gemm_flops() + a.softmax_flops(),
         kF32 * (3.0 * r.N * r.D + double(r.N) * r.D + a.probs_elems()) + kI32 * r.N, r.N);
}
BENCHMARK(BM_attention_fwd)->Apply(gemm_shapes);

void BM_attention_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  AttentionData a(r);
  a.forward();
  const Vec dout = normal(r.N * r.D, 7);
  Vec dqkv(a.qkv.size());
  for (auto _ : st) {
    ops::attention_backward(a.s, a.qkv.data(), a.tokens.data(), seqrec::kPadToken, a.probs.data(),
                            dout.data(), dqkv.data());
    keep(dqkv.data());
  }
  st.counters["H"] = double(a.s.heads);
  // reads qkv, probs, dout; writes dqkv
  report(st, 4.0 * a.gemm_flops() + a.softmax_flops(),
         kF32 * (3.0 * r.N * r.D + a.probs_elems() + double(r.N) * r.D + 3.0 * r.N * r.D), r.N);
}
BENCHMARK(BM_attention_bwd)->Apply(gemm_shapes);

// ---- fused chunked cross-entropy over the catalogue ---------------------------------------------

struct LossData {
  ops::CrossEntropyShape s;
  Vec h, items, workspace;
  Tokens targets;
  /// N = B·L rows from the benchmark's (B, L, D, I), chunked as the model chunks them
  /// (ModelShape::loss_chunk_elems logits at once).
  explicit LossData(benchmark::State& st)
      : LossData(st, st.range(0) * st.range(1), st.range(2), st.range(3),
                 seqrec::ModelShape{}.loss_chunk_elems) {}
  /// N rows of width D over I items, at most chunk_elems logits at once; every row scored.
  LossData(benchmark::State& st, std::int64_t N, std::int64_t D, std::int64_t I,
           std::int64_t chunk_elems) {
    const std::int64_t chunk = std::max<std::int64_t>(1, chunk_elems / I);
    s = {N, D, I, kFirstItem, chunk};
    h = normal(N * D, 8);
    items = normal(I * D, 9, 1.0 / std::sqrt(double(D)));
    targets = uniform_tokens(N, kFirstItem, kFirstItem + static_cast<std::int32_t>(I), 10);
    st.counters["chunk_rows"] = double(chunk);
  }
  double run(float* dh, float* ditems) {
    std::int64_t count = 0;
    const double loss =
        ops::cross_entropy_forward_backward(s, h.data(), targets.data(), items.data(), dh, ditems,
                                            1.f / float(s.rows), &count, workspace);
    benchmark::DoNotOptimize(count);
    return loss;
  }
};

void BM_cross_entropy_fwd(benchmark::State& st) {
  LossData d(st);
  const double N = double(d.s.rows), D = double(d.s.dim), I = double(d.s.num_items);
  for (auto _ : st) {
    const double loss = d.run(nullptr, nullptr);
    benchmark::DoNotOptimize(loss);
  }
  // reads h, the item table, targets
  report(st, 2.0 * N * D * I + 4.0 * N * I, kF32 * (N * D + I * D) + kI32 * N, d.s.rows);
}
BENCHMARK(BM_cross_entropy_fwd)->Apply(loss_shapes);

/// Times the loss's forward and backward on d and reports its FLOPs and traffic.
void time_fwd_bwd(benchmark::State& st, LossData& d) {
  const double N = double(d.s.rows), D = double(d.s.dim), I = double(d.s.num_items);
  Vec dh(d.h.size()), ditems(d.items.size(), 0.f);
  for (auto _ : st) {
    const double loss = d.run(dh.data(), ditems.data());
    benchmark::DoNotOptimize(loss);
    keep(dh.data());
    keep(ditems.data());
  }
  // reads h, the table, targets; writes dh; the table's gradient read and written
  report(st, 6.0 * N * D * I + 5.0 * N * I, kF32 * (N * D + I * D + N * D + 2.0 * I * D) + kI32 * N,
         d.s.rows);
}

void BM_cross_entropy_fwd_bwd(benchmark::State& st) {
  LossData d(st);
  time_fwd_bwd(st, d);
}
BENCHMARK(BM_cross_entropy_fwd_bwd)->Apply(loss_shapes);

/// The loss's chunk size, swept: rows N, D, I as a real step has them (ML-1M: 64 windows of
/// 200, 6,848 scored rows, D 64, I 3706; Games: 256 windows of 20, 2,304 scored rows, D 256,
/// I 16859), at most 2^E logits alive at once (ModelShape::loss_chunk_elems; E 22 is the
/// default). Small chunks keep the logits in cache but repack the item table for every chunk.
void BM_cross_entropy_chunk(benchmark::State& st) {
  LossData d(st, st.range(0), st.range(1), st.range(2), std::int64_t{1} << st.range(3));
  time_fwd_bwd(st, d);
}
BENCHMARK(BM_cross_entropy_chunk)->Apply([](Bench* b) {
  timing(b, benchmark::kMillisecond);
  b->ArgNames({"N", "D", "I", "E"});
  for (std::int64_t e = 18; e <= 24; e += 2) {
    b->Args({6848, 64, 3706, e});
    b->Args({2304, 256, 16859, e});
  }
});

// ---- RMSNorm and LayerNorm ----------------------------------------------------------------------

void BM_rmsnorm_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  const Vec x = normal(r.N * r.D, 11), g = normal(r.D, 12);
  Vec y(x.size()), rstd(static_cast<std::size_t>(r.N));
  for (auto _ : st) {
    ops::rmsnorm_forward(x.data(), g.data(), y.data(), rstd.data(), r.N, r.D, kEps);
    keep(y.data());
  }
  report(st, 4.0 * r.N * r.D, kF32 * (2.0 * r.N * r.D + r.D + r.N), r.N);
}
BENCHMARK(BM_rmsnorm_fwd)->Apply(row_shapes);

void BM_rmsnorm_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  const Vec x = normal(r.N * r.D, 11), g = normal(r.D, 12), dy = normal(r.N * r.D, 13);
  Vec y(x.size()), rstd(static_cast<std::size_t>(r.N)), dx(x.size()),
      dg(static_cast<std::size_t>(r.D), 0.f);
  ops::rmsnorm_forward(x.data(), g.data(), y.data(), rstd.data(), r.N, r.D, kEps);
  for (auto _ : st) {
    ops::rmsnorm_backward(x.data(), g.data(), rstd.data(), dy.data(), dx.data(), dg.data(), r.N,
                          r.D);
    keep(dx.data());
  }
  // reads x, g, rstd, dy; writes dx; dg read and written
  report(st, 10.0 * r.N * r.D, kF32 * (3.0 * r.N * r.D + r.D + r.N + 2.0 * r.D), r.N);
}
BENCHMARK(BM_rmsnorm_bwd)->Apply(row_shapes);

void BM_layernorm_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  const Vec x = normal(r.N * r.D, 14), g = normal(r.D, 15), b = normal(r.D, 16);
  Vec y(x.size()), stats(static_cast<std::size_t>(2 * r.N));
  for (auto _ : st) {
    ops::layernorm_forward(x.data(), g.data(), b.data(), y.data(), stats.data(), r.N, r.D, kEps);
    keep(y.data());
  }
  report(st, 8.0 * r.N * r.D, kF32 * (2.0 * r.N * r.D + 2.0 * r.D + 2.0 * r.N), r.N);
}
BENCHMARK(BM_layernorm_fwd)->Apply(row_shapes);

void BM_layernorm_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  const Vec x = normal(r.N * r.D, 14), g = normal(r.D, 15), b = normal(r.D, 16),
            dy = normal(r.N * r.D, 17);
  Vec y(x.size()), stats(static_cast<std::size_t>(2 * r.N)), dx(x.size()),
      dg(static_cast<std::size_t>(r.D), 0.f), db(static_cast<std::size_t>(r.D), 0.f);
  ops::layernorm_forward(x.data(), g.data(), b.data(), y.data(), stats.data(), r.N, r.D, kEps);
  for (auto _ : st) {
    ops::layernorm_backward(x.data(), g.data(), stats.data(), dy.data(), dx.data(), dg.data(),
                            db.data(), r.N, r.D);
    keep(dx.data());
  }
  // reads x, g, stats, dy; writes dx; dg and db read and written
  report(st, 16.0 * r.N * r.D, kF32 * (3.0 * r.N * r.D + r.D + 2.0 * r.N + 4.0 * r.D), r.N);
}
BENCHMARK(BM_layernorm_bwd)->Apply(row_shapes);

// ---- RoPE on Q and K of the QKV buffer (in place; a rotation, so values never drift) -----------

void rope_bench(benchmark::State& st, int sign) {
  const Rows r = rows(st);
  const ops::RopeShape s{r.B, r.L, r.D, r.D / kHeadDim};
  Vec qkv = normal(r.N * 3 * r.D, 18);
  for (auto _ : st) {
    ops::rope_apply(s, qkv.data(), sign);
    keep(qkv.data());
  }
  // Q and K read and written (V untouched)
  report(st, 6.0 * r.N * r.D, kF32 * 4.0 * r.N * r.D, r.N);
}
void BM_rope_fwd(benchmark::State& st) { rope_bench(st, +1); }
void BM_rope_bwd(benchmark::State& st) { rope_bench(st, -1); }
BENCHMARK(BM_rope_fwd)->Apply(row_shapes);
BENCHMARK(BM_rope_bwd)->Apply(row_shapes);

// ---- embedding: gather forward, scatter-add backward
// ---------------------------------------------

struct EmbeddingData {
  std::int64_t vocab = kFirstItem + kTableItems, unique;
  Tokens tokens;
  Vec table;
  float scale;
  explicit EmbeddingData(const Rows& r)
      : tokens(uniform_tokens(r.N, kFirstItem, static_cast<std::int32_t>(vocab), 19)),
        table(normal(vocab * r.D, 20, 0.02)),
        scale(std::sqrt(float(r.D))) {
    unique = distinct(tokens, static_cast<std::int32_t>(vocab));
  }
};

void BM_embedding_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  EmbeddingData e(r);
  Vec x(static_cast<std::size_t>(r.N * r.D));
  for (auto _ : st) {
    ops::embedding_forward(e.tokens.data(), e.table.data(), x.data(), r.N, r.D, e.scale);
    keep(x.data());
  }
  st.counters["V"] = double(e.vocab);
  // reads tokens and the distinct rows they name; writes x
  report(st, double(r.N) * r.D, kI32 * r.N + kF32 * (double(e.unique) * r.D + r.N * r.D), r.N);
}
BENCHMARK(BM_embedding_fwd)->Apply(row_shapes);

void BM_embedding_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  EmbeddingData e(r);
  const Vec dx = normal(r.N * r.D, 21);
  Vec dtable(e.table.size(), 0.f);
  for (auto _ : st) {
    ops::embedding_backward(e.tokens.data(), dx.data(), dtable.data(), r.N, r.D, e.scale);
    keep(dtable.data());
  }
  st.counters["V"] = double(e.vocab);
  // reads tokens and dx; the distinct table rows read and written
  report(st, 2.0 * r.N * r.D, kI32 * r.N + kF32 * (double(r.N) * r.D + 2.0 * e.unique * r.D), r.N);
}
BENCHMARK(BM_embedding_bwd)->Apply(row_shapes);

// ---- dropout (in place; input restored outside the timing)
// ---------------------------------------

void BM_dropout_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t n = r.N * r.D;
  const Vec x0 = normal(n, 22);
  Vec x = x0;
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n));
  std::uint64_t step = 0;
  for (auto _ : st) {
    st.PauseTiming();
    std::copy(x0.begin(), x0.end(), x.begin());
    st.ResumeTiming();
    ops::dropout_forward(x.data(), mask.data(), n, kDropout, ops::dropout_key(42, ++step, 0));
    keep(x.data());
    keep(mask.data());
  }
  // x read and written, the mask written
  report(st, double(n), kF32 * 2.0 * n + double(n), r.N);
}
BENCHMARK(BM_dropout_fwd)->Apply(row_shapes);

void BM_dropout_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t n = r.N * r.D;
  Vec x = normal(n, 22);
  const Vec dx0 = normal(n, 23);
  Vec dx = dx0;
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n));
  ops::dropout_forward(x.data(), mask.data(), n, kDropout, ops::dropout_key(42, 1, 0));
  for (auto _ : st) {
    st.PauseTiming();
    std::copy(dx0.begin(), dx0.end(), dx.begin());
    st.ResumeTiming();
    ops::dropout_backward(dx.data(), mask.data(), n, kDropout);
    keep(dx.data());
  }
  // dx read and written, the mask read
  report(st, double(n), kF32 * 2.0 * n + double(n), r.N);
}
BENCHMARK(BM_dropout_bwd)->Apply(row_shapes);

// ---- activations: the FFN policies' element-wise loops over (N, F) ------------------------------
// These loops live inline in policy/feed_forward.hpp (there is no CPU activation op function);
// they are reproduced here verbatim, pragma included.

// The feed-forward policies' element-wise kernels themselves (vectorised exp for SiLU).
template <typename Act>
void act_forward(const float* pre, float* act, std::int64_t total) {
  ffn::detail::activate<Act>(pre, act, total);
}
template <typename Act>
void act_backward(const float* pre, float* d, std::int64_t total) {
  ffn::detail::activate_backward<Act>(pre, d, total);
}

template <typename Act>
constexpr double act_flops(bool backward) {
  if constexpr (std::is_same_v<Act, ops::Relu>) return backward ? 2 : 1;
  return backward ? 9 : 4;  // silu: neg, exp, add, div; derivative 8 more with the product
}

template <typename Act>
void BM_act_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t n = r.N * 4 * r.D;
  const Vec pre = normal(n, 24);
  Vec act(pre.size());
  for (auto _ : st) {
    act_forward<Act>(pre.data(), act.data(), n);
    keep(act.data());
  }
  st.counters["F"] = double(4 * r.D);
  report(st, act_flops<Act>(false) * n, kF32 * 2.0 * n, r.N);
}

template <typename Act>
void BM_act_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t n = r.N * 4 * r.D;
  const Vec pre = normal(n, 24), d0 = normal(n, 25);
  Vec d = d0;
  for (auto _ : st) {
    st.PauseTiming();
    std::copy(d0.begin(), d0.end(), d.begin());
    st.ResumeTiming();
    act_backward<Act>(pre.data(), d.data(), n);
    keep(d.data());
  }
  st.counters["F"] = double(4 * r.D);
  // reads pre; d read and written
  report(st, act_flops<Act>(true) * n, kF32 * 3.0 * n, r.N);
}
BENCHMARK(BM_act_fwd<ops::Relu>)->Name("BM_relu_fwd")->Apply(row_shapes);
BENCHMARK(BM_act_bwd<ops::Relu>)->Name("BM_relu_bwd")->Apply(row_shapes);
BENCHMARK(BM_act_fwd<ops::Silu>)->Name("BM_silu_fwd")->Apply(row_shapes);
BENCHMARK(BM_act_bwd<ops::Silu>)->Name("BM_silu_bwd")->Apply(row_shapes);

// SwiGLU's gate loops (GatedMlp): a = silu(g) ⊙ u; backward du = da ⊙ silu(g),
// da ← da ⊙ u ⊙ silu'(g). Width F' = gated_inner_width(D, 4D).
void BM_swiglu_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t F = ffn::gated_inner_width(r.D, 4 * r.D), n = r.N * F;
  const Vec g = normal(n, 26), u = normal(n, 27);
  Vec a(g.size());
  const float* gp = g.data();
  const float* up = u.data();
  float* ap = a.data();
  for (auto _ : st) {
    ffn::detail::swiglu(gp, up, ap, n);
    keep(ap);
  }
  st.counters["F"] = double(F);
  report(st, 5.0 * n, kF32 * 3.0 * n, r.N);
}
BENCHMARK(BM_swiglu_fwd)->Apply(row_shapes);

void BM_swiglu_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t F = ffn::gated_inner_width(r.D, 4 * r.D), n = r.N * F;
  const Vec g = normal(n, 26), u = normal(n, 27), da0 = normal(n, 28);
  Vec da = da0, du(g.size());
  const float* gp = g.data();
  const float* up = u.data();
  float* dap = da.data();
  float* dup = du.data();
  for (auto _ : st) {
    st.PauseTiming();
    std::copy(da0.begin(), da0.end(), da.begin());
    st.ResumeTiming();
    ffn::detail::swiglu_backward(gp, up, dap, dup, n);
    keep(dap);
    keep(dup);
  }
  st.counters["F"] = double(F);
  // reads g, u; da read and written; du written
  report(st, 15.0 * n, kF32 * 5.0 * n, r.N);
}
BENCHMARK(BM_swiglu_bwd)->Apply(row_shapes);

// ---- element-wise: residual add (Model::add_into), learned positions (pos::Learned) -------------

void BM_residual_add(benchmark::State& st) {
  const Rows r = rows(st);
  const std::int64_t n = r.N * r.D;
  const Vec x = normal(n, 29);
  Vec y = normal(n, 30);
  const float* xp = x.data();
  float* yp = y.data();
  for (auto _ : st) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) yp[i] += xp[i];
    keep(yp);
  }
  report(st, double(n), kF32 * 3.0 * n, r.N);
}
BENCHMARK(BM_residual_add)->Apply(row_shapes);

struct PositionData {
  seqrec::ParameterStore<float> store;
  seqrec::policy::pos::Learned::Layer<float> layer;
  static seqrec::ModelShape shape(const Rows& r) {
    seqrec::ModelShape s;
    s.max_len = static_cast<std::int32_t>(r.L);
    s.dim = static_cast<std::int32_t>(r.D);
    return s;
  }
  explicit PositionData(const Rows& r) : layer(store, shape(r)) { store.initialise(31); }
};

void BM_position_add_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  PositionData p(r);
  Vec x = normal(r.N * r.D, 32);
  for (auto _ : st) {
    p.layer.add(p.store, x.data(), r.B, r.L);
    keep(x.data());
  }
  // x read and written, the (L, D) table read
  report(st, double(r.N) * r.D, kF32 * (2.0 * r.N * r.D + double(r.L) * r.D), r.N);
}
BENCHMARK(BM_position_add_fwd)->Apply(row_shapes);

void BM_position_add_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  PositionData p(r);
  const Vec dx = normal(r.N * r.D, 33);
  for (auto _ : st) {
    p.layer.add_backward(p.store, dx.data(), r.B, r.L);
    keep(p.store.grads().data());
  }
  // dx read; the table's gradient read and written
  report(st, double(r.N) * r.D, kF32 * (double(r.N) * r.D + 2.0 * r.L * r.D), r.N);
}
BENCHMARK(BM_position_add_bwd)->Apply(row_shapes);

// ---- feed-forward policies over (N, D), inner width F = 4D --------------------------------------

template <typename P>
struct FfnData {
  using Layer = typename P::template Layer<float>;
  seqrec::ModelShape shape;
  seqrec::ParameterStore<float> store;
  Layer layer;
  typename Layer::Cache cache;
  Vec x, y, dy, dx;
  static seqrec::ModelShape make_shape(std::int64_t D) {
    seqrec::ModelShape s;
    s.dim = static_cast<std::int32_t>(D);
    s.ffn_dim = static_cast<std::int32_t>(4 * D);
    return s;
  }
  explicit FfnData(const Rows& r)
      : shape(make_shape(r.D)),
        layer(store, "ffn", shape, shape.init_std / 2.0),
        x(normal(r.N * r.D, 34)),
        y(x.size()),
        dy(normal(r.N * r.D, 35)),
        dx(x.size()) {
    store.initialise(36);
  }
  void forward(std::int64_t n) { layer.forward(store, x.data(), y.data(), cache, n, nullptr); }

  /// Multiply-adds per row in the forward GEMMs, and the cache floats saved per row.
  std::pair<double, double> per_row() const {
    const double D = shape.dim, F = shape.ffn_dim;
    if constexpr (requires { P::experts; }) {
      const double E = P::experts, K = P::top_k;  // router, then K SiLU experts per row
      return {D * E + K * 2.0 * D * F, 2.0 * E + K * (2.0 * F + 2.0 * D)};
    } else if constexpr (std::is_same_v<P, ffn::GatedMlp>) {
      const double Fg = double(ffn::gated_inner_width(shape.dim, shape.ffn_dim));
      return {3.0 * D * Fg, 3.0 * Fg};
    } else {
      return {2.0 * D * F, 2.0 * F};
    }
  }
  double params() const { return double(store.num_parameters()); }
};

template <typename P>
void BM_ffn_fwd(benchmark::State& st) {
  const Rows r = rows(st);
  FfnData<P> f(r);
  for (auto _ : st) {
    f.forward(r.N);
    keep(f.y.data());
  }
  const auto [macs, cache] = f.per_row();
  // reads x and the parameters; writes y and the cache
  report(st, 2.0 * macs * r.N, kF32 * (f.params() + r.N * (2.0 * r.D + cache)), r.N);
}

template <typename P>
void BM_ffn_bwd(benchmark::State& st) {
  const Rows r = rows(st);
  FfnData<P> f(r);
  f.forward(r.N);
  for (auto _ : st) {
    f.layer.backward(f.store, f.x.data(), f.cache, f.dy.data(), f.dx.data(), r.N);
    keep(f.dx.data());
  }
  const auto [macs, cache] = f.per_row();
  // reads x, dy, the cache and the parameters; writes dx; gradients read and written
  report(st, 4.0 * macs * r.N, kF32 * (3.0 * f.params() + r.N * (3.0 * r.D + cache)), r.N);
}

using Moe = ffn::MoE<4, 2, ffn::SiluMlp>;
BENCHMARK(BM_ffn_fwd<ffn::ReluMlp>)->Name("BM_ffn_relu_mlp_fwd")->Apply(row_shapes);
BENCHMARK(BM_ffn_bwd<ffn::ReluMlp>)->Name("BM_ffn_relu_mlp_bwd")->Apply(row_shapes);
BENCHMARK(BM_ffn_fwd<ffn::GatedMlp>)->Name("BM_ffn_swiglu_fwd")->Apply(row_shapes);
BENCHMARK(BM_ffn_bwd<ffn::GatedMlp>)->Name("BM_ffn_swiglu_bwd")->Apply(row_shapes);
BENCHMARK(BM_ffn_fwd<Moe>)->Name("BM_ffn_moe4x2_fwd")->Apply(row_shapes);
BENCHMARK(BM_ffn_bwd<Moe>)->Name("BM_ffn_moe4x2_bwd")->Apply(row_shapes);

// ---- one training step: Model<SasRecConfig, cpu::Backend>::forward_backward ---------------------
// D 64, 2 layers, 2 heads, FFN 256, dropout 0.2 (the trainer's defaults), max_len = L, vocabulary
// I + 4. Every position is a real item with a target; gradients accumulate across iterations (the
// optimiser and zero_grads are not part of the step timed here).

/// The trainer's default model at window L over a catalogue of I items.
seqrec::ModelShape default_model(std::int64_t L, std::int64_t I) {
  seqrec::ModelShape s;
  s.vocab_size = static_cast<std::int32_t>(I + kFirstItem);
  s.max_len = static_cast<std::int32_t>(L);
  s.dim = 64;
  s.layers = 2;
  s.heads = 2;
  s.ffn_dim = 4 * s.dim;
  s.dropout = kDropout;
  return s;
}

using StepModel = seqrec::Model<seqrec::SasRecConfig, seqrec::cpu::Backend>;

/// Times model.forward_backward on inputs/targets (B, L), one dropout key per step.
void time_steps(benchmark::State& st, StepModel& model, const Tokens& inputs, const Tokens& targets,
                std::int64_t B, std::int64_t L) {
  model.parameters().zero_grads();
  std::uint64_t step = 0;
  for (auto _ : st) {
    std::int64_t scored = 0;
    const double loss = model.forward_backward(
        inputs.data(), targets.data(), static_cast<std::int32_t>(B), static_cast<std::int32_t>(L),
        ops::dropout_key(42, ++step, 0) | 1, &scored);
    benchmark::DoNotOptimize(loss);
    benchmark::DoNotOptimize(scored);
    benchmark::ClobberMemory();
  }
}

/// The model's FLOPs per scored token (see the counting conventions at the top).
double step_flops_per_token(const StepModel& model, std::int64_t L, std::int64_t I) {
  const seqrec::ModelShape& s = model.shape();
  double non_embedding = 0;
  for (const auto& e : model.parameters().entries())
    if (e.name != "item_emb.weight" && e.name != "pos_emb.weight") non_embedding += double(e.numel);
  const double D = s.dim;
  return 6.0 * non_embedding + 12.0 * s.layers * double(L) * D + 6.0 * D * double(I);
}

void BM_model_step(benchmark::State& st) {
  const std::int64_t B = st.range(0), L = st.range(1), I = st.range(2), N = B * L;
  const seqrec::ModelShape s = default_model(L, I);
  StepModel model(s, backend(), 42);
  const Tokens inputs = uniform_tokens(N, kFirstItem, s.vocab_size, 37);
  const Tokens targets = uniform_tokens(N, kFirstItem, s.vocab_size, 38);
  time_steps(st, model, inputs, targets, B, L);
  double all = 0;
  for (const auto& e : model.parameters().entries()) all += double(e.numel);
  st.counters["params"] = all;
  // parameters read, gradients read and written, inputs and targets read
  report(st, step_flops_per_token(model, L, I) * double(N),
         kF32 * 3.0 * all + 2.0 * kI32 * double(N), N);
}
BENCHMARK(BM_model_step)->Apply(model_shapes);

/// BM_model_step on left-padded windows, as the trainers' batches are: row b keeps its last
/// L − k_b tokens, k_b uniform in [0, L), so about half the positions are padding (ML-1M's real
/// windows at L 200 fill 54%). Padding positions have no target. The FLOP/s counter counts the
/// scored rows only (the model's per-token FLOPs, attention over the full L as for
/// BM_model_step), items_per_second is scored rows per second.
void BM_model_step_padded(benchmark::State& st) {
  const std::int64_t B = st.range(0), L = st.range(1), I = st.range(2), N = B * L;
  const seqrec::ModelShape s = default_model(L, I);
  StepModel model(s, backend(), 42);
  Tokens inputs = uniform_tokens(N, kFirstItem, s.vocab_size, 37);
  Tokens targets = uniform_tokens(N, kFirstItem, s.vocab_size, 38);
  seqrec::Rng rng(39);
  std::int64_t scored = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t k = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(L)));
    std::fill_n(inputs.begin() + b * L, k, seqrec::kPadToken);
    std::fill_n(targets.begin() + b * L, k, seqrec::kPadToken);
    scored += L - k;
  }
  time_steps(st, model, inputs, targets, B, L);
  st.counters["fill"] = double(scored) / double(N);
  report(st, step_flops_per_token(model, L, I) * double(scored), 0.0, scored);
}
BENCHMARK(BM_model_step_padded)->Apply(model_shapes);

// ---- DPO step: the policy's forward, the pair head and the backward
// ------------------------------

/// One DPO training step (train::preference_step with the gradient) on B sequences of lengths
/// 3 … 2L drawn uniformly, left-padded to L (about a third of the Games-like window is padding),
/// one pair per sequence at its last position with K = 1 rejected item, catalogue I, D = 64. The
/// figures count the pair head's GEMMs only (forward, backward and the table gradient:
/// 6·P·D·I), so FLOP/s is a floor; items_per_second is pairs per second.
void BM_dpo_step(benchmark::State& st) {
  const std::int64_t B = st.range(0), L = st.range(1), I = st.range(2);
  const seqrec::ModelShape s = default_model(L, I);
  seqrec::Model<seqrec::SasRecConfig, seqrec::cpu::Backend> model(s, backend(), 42);
  seqrec::Rng rng(43);
  std::vector<std::vector<std::int32_t>> seqs(static_cast<std::size_t>(B));
  for (auto& q : seqs) {
    q.resize(3 + rng.below(static_cast<std::uint64_t>(2 * L - 2)));
    for (auto& t : q) t = static_cast<std::int32_t>(kFirstItem + rng.below(std::uint64_t(I)));
  }
  seqrec::train::PairOptions po;
  const auto pairs = seqrec::train::build_preference_pairs(
      seqs, model.parameters().value(model.item_embedding()), s.vocab_size, s.dim, s.max_len, po);
  const auto reference = seqrec::train::reference_log_probs(model, pairs);
  seqrec::train::DpoOptions o;
  o.ce_weight = 1.0;
  model.parameters().zero_grads();
  for (auto _ : st) {
    const auto r =
        seqrec::train::preference_step(model, pairs, 0, pairs.examples(), reference, o, 0, true);
    benchmark::DoNotOptimize(r.loss);
    benchmark::ClobberMemory();
  }
  const double P = static_cast<double>(pairs.pairs());
  report(st, 6.0 * P * double(s.dim) * double(I), 0.0, static_cast<std::int64_t>(P));
}
void dpo_shapes(Bench* b) {
  timing(b, benchmark::kMillisecond);
  b->ArgNames({"B", "L", "I"});
  b->Args({256, 20, 16859});
  b->Args({64, 200, 3706});
}
BENCHMARK(BM_dpo_step)->Apply(dpo_shapes);

}  // namespace

int main(int argc, char** argv) {
  const int threads = backend().threads();  // sets Eigen's thread count before any benchmark
  benchmark::AddCustomContext("omp_threads", std::to_string(threads));
  benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
