// Every CUDA op against its CPU reference, on fresh random inputs, at small odd shapes (edges:
// widths that are not multiples of 32, chunk and tile boundaries) and at the realistic shapes of
// the study. Prints one line per check,
//   PASS|FAIL <op> <shape> max_abs_err=… max_rel_err=… (rtol … atol …)
// and a summary; exits 0 iff every check passes, 77 (ctest: skipped) when no GPU answers.
//
// A check passes when every element satisfies |gpu − cpu| ≤ atol + rtol·|cpu|, with atol given as
// a fraction of max|cpu| (outputs differ in scale by orders of magnitude). max_rel_err is taken
// over elements with |cpu| > atol; below that only atol is meaningful. Tolerances and their
// reasons sit beside each check. The CPU reference runs single-threaded here (nvcc compiles this
// file without -fopenmp, so its OpenMP pragmas are ignored), in the order the CPU op documents.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"
#include "seqrec/core/random.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/ops/attention/attention_cpu.hpp"
#include "seqrec/ops/attention/attention_cuda.cuh"
#include "seqrec/ops/cross_entropy/cross_entropy_cpu.hpp"
#include "seqrec/ops/cross_entropy/cross_entropy_cuda.cuh"
#include "seqrec/ops/dropout/dropout_cuda.cuh"
#include "seqrec/ops/elementwise/rows_cuda.cuh"
#include "seqrec/ops/embedding/embedding_cpu.hpp"
#include "seqrec/ops/embedding/embedding_cuda.cuh"
#include "seqrec/ops/rmsnorm/rmsnorm_cpu.hpp"
#include "seqrec/ops/rmsnorm/rmsnorm_cuda.cuh"
#include "seqrec/ops/rope/rope_cuda.cuh"
#include "seqrec/train/adamw.hpp"
#include "seqrec/train/adamw_cuda.cuh"

namespace {

using namespace seqrec::cuda_check;

using seqrec::Rng;
using seqrec::cuda::Backend;
using seqrec::cuda::DeviceBuffer;

// ---- RMSNorm ------------------------------------------------------------------------------------
void test_rmsnorm(Backend& be, Rng& rng, std::int64_t n, std::int64_t d) {
  const std::string shape = shape_str({{"N", n}, {"D", d}});
  const float eps = 1e-6f;
  auto x = normal(rng, n * d), g = normal(rng, d, 0.1, 1.0), dy = normal(rng, n * d);
  auto dg0 = normal(rng, d);  // dg is accumulated: start from something non-zero
  std::vector<float> y(n * d), rstd(n), dx(n * d), dg = dg0;
  seqrec::ops::rmsnorm_forward(x.data(), g.data(), y.data(), rstd.data(), n, d, eps);
  seqrec::ops::rmsnorm_backward(x.data(), g.data(), rstd.data(), dy.data(), dx.data(), dg.data(), n,
                                d);

  auto dx_ = upload(be, x), dg_ = upload(be, g), ddy = upload(be, dy), ddg = upload(be, dg0);
  auto dy_out = be.buffer<float>(n * d), drstd = be.buffer<float>(n), ddx = be.buffer<float>(n * d);
  seqrec::cuda::rmsnorm_forward(be, dx_.data(), dg_.data(), dy_out.data(), drstd.data(), n, d, eps);
  seqrec::cuda::rmsnorm_backward(be, dx_.data(), dg_.data(), drstd.data(), ddy.data(), ddx.data(),
                                 ddg.data(), n, d);
  // y, rstd: a D-term sum of squares in another order, then one sqrt: ~sqrt(D)·eps relative.
  check("rmsnorm.y", shape, download(be, dy_out), y, 1e-4, 1e-5);
  check("rmsnorm.rstd", shape, download(be, drstd), rstd, 1e-4, 1e-5);
  // dx: D-term dot product, then a difference of two O(1) terms: judged against max|dx|.
  check("rmsnorm.dx", shape, download(be, ddx), dx, 1e-4, 1e-5);
  // dg: N-term float sums (CPU serial, GPU 256 strided partials): the rounding error grows like
  // eps·N·sd, about 1e-3 at N = 25600 against max|dg| ~ 600, hence atol 1e-4·max|dg|.
  const auto dg_gpu = download(be, ddg);
  check("rmsnorm.dgain", shape, dg_gpu, dg, 1e-4, 1e-4);
  SEQREC_CUDA_CHECK(
      cudaMemcpyAsync(ddg.data(), dg0.data(), ddg.bytes(), cudaMemcpyHostToDevice, be.stream()));
  seqrec::cuda::rmsnorm_backward(be, dx_.data(), dg_.data(), drstd.data(), ddy.data(), ddx.data(),
                                 ddg.data(), n, d);
  check_identical("rmsnorm.dgain", shape, download(be, ddg), dg_gpu);
}

// ---- Embedding ----------------------------------------------------------------------------------
void test_embedding(Backend& be, Rng& rng, std::int64_t n, std::int64_t d, std::int64_t vocab) {
  const std::string shape = shape_str({{"N", n}, {"D", d}, {"V", vocab}});
  const float scale = std::sqrt(float(d));
  // Many repeats: 25% padding (token 0), 25% from 8 hot tokens, the rest uniform over the vocab.
  std::vector<std::int32_t> tok(n);
  for (auto& t : tok) {
    const double u = rng.uniform();
    t = u < 0.25  ? 0
        : u < 0.5 ? std::int32_t(1 + rng.below(std::min<std::int64_t>(8, vocab - 1)))
                  : std::int32_t(rng.below(vocab));
  }
  auto table = normal(rng, vocab * d), dx = normal(rng, n * d), dt0 = normal(rng, vocab * d);
  std::vector<float> x(n * d), dt = dt0;
  seqrec::ops::embedding_forward(tok.data(), table.data(), x.data(), n, d, scale);
  seqrec::ops::embedding_backward(tok.data(), dx.data(), dt.data(), n, d, scale);

  auto dtok = upload(be, tok);
  auto dtable = upload(be, table), ddx = upload(be, dx), ddt = upload(be, dt0);
  auto dxo = be.buffer<float>(n * d);
  seqrec::cuda::embedding_forward(be, dtok.data(), dtable.data(), dxo.data(), n, d, scale);
  seqrec::cuda::embedding_backward(be, dtok.data(), ddx.data(), ddt.data(), n, d, vocab, scale);
  // Forward: one multiply per element, the same on both sides: exact up to 1e-6 for safety.
  check("embedding.x", shape, download(be, dxo), x, 1e-6, 0.0);
  // Backward: per token a sum of up to ~N/4 rows in another order (CPU row by row into the
  // table, GPU 32-row windows merged in order): error ~ eps·rows·|term|, ~3e-3 for the padding
  // row of magnitude ~2e3.
  const auto dt_gpu = download(be, ddt);
  check("embedding.dtable", shape, dt_gpu, dt, 1e-4, 1e-5);
  SEQREC_CUDA_CHECK(
      cudaMemcpyAsync(ddt.data(), dt0.data(), ddt.bytes(), cudaMemcpyHostToDevice, be.stream()));
  seqrec::cuda::embedding_backward(be, dtok.data(), ddx.data(), ddt.data(), n, d, vocab, scale);
  check_identical("embedding.dtable", shape, download(be, ddt), dt_gpu);
}

// ---- Cross-entropy ------------------------------------------------------------------------------
/// bf16: the backend's bf16 mode (operands of the three GEMMs rounded to bf16, fp32 accumulation)
/// against the fp32 CPU op, with tolerances for 8-bit mantissas.
/// The loss's precisions: fp32; bf16 GEMM operands with fp32 logits (bf16 GEMM outputs off); bf16
/// operands and bf16 logits (the backend's default in bf16 mode).
enum class Prec { Fp32, Bf16, Bf16Logits };
constexpr Prec kPrecs[] = {Prec::Fp32, Prec::Bf16, Prec::Bf16Logits};
const char* prec_suffix(Prec p) {
  return p == Prec::Fp32 ? "" : p == Prec::Bf16 ? " bf16" : " bf16 logits";
}
/// The backend in precision `p` for the scope; fp32 with bf16 GEMM outputs on (its defaults) after.
struct PrecScope {
  Backend& be;
  PrecScope(Backend& b, Prec p) : be(b) {
    be.set_bf16(p != Prec::Fp32);
    be.set_bf16_gemm_outputs(p == Prec::Bf16Logits);
  }
  PrecScope(const PrecScope&) = delete;
  PrecScope& operator=(const PrecScope&) = delete;
  ~PrecScope() {
    be.set_bf16(false);
    be.set_bf16_gemm_outputs(true);
  }
};

void test_cross_entropy(Backend& be, Rng& rng, std::int64_t n, std::int64_t d, std::int64_t items,
                        std::int64_t chunk, Prec prec, bool all_scored = false) {
  const bool bf16 = prec != Prec::Fp32;
  const std::string shape = shape_str({{"N", n}, {"D", d}, {"I", items}, {"chunk", chunk}}) +
                            prec_suffix(prec) + (all_scored ? ",all rows scored" : "");
  const std::int32_t first = 4;
  seqrec::ops::CrossEntropyShape s{n, d, items, first, chunk};
  // About 10% of rows have no target (tokens 0..3), as padding positions do; or none, as in a
  // packed training step (the dH GEMMs then write dh's rows in place, with no scatter).
  std::vector<std::int32_t> tgt(n);
  for (auto& t : tgt)
    t = !all_scored && rng.uniform() < 0.1 ? std::int32_t(rng.below(first))
                                           : std::int32_t(first + rng.below(items));
  // Item rows with sd 1/sqrt(D) make logits O(1), as in a trained model.
  auto h = normal(rng, n * d), w = normal(rng, items * d, 1.0 / std::sqrt(double(d)));
  auto dw0 = normal(rng, items * d, 1e-4);
  const float gs = 1.f / float(n);
  std::vector<float> dh(n * d), dw = dw0;
  seqrec::AlignedVector<float> ws;
  std::int64_t count_cpu = 0, count_gpu = -1;
  const double loss_cpu = seqrec::ops::cross_entropy_forward_backward(
      s, h.data(), tgt.data(), w.data(), dh.data(), dw.data(), gs, &count_cpu, ws);

  // On the device the items are the rows after the special tokens of a (first + I, D) table, as
  // in the model: the operand pointers are then offset by first·D floats (less than 256-byte
  // aligned when D is not a multiple of 16).
  auto with_specials = [&](const std::vector<float>& rows_) {
    std::vector<float> t(static_cast<std::size_t>(first * d), 0.5f);
    t.insert(t.end(), rows_.begin(), rows_.end());
    return t;
  };
  auto dh_in = upload(be, h), dtable = upload(be, with_specials(w)),
       ddtable = upload(be, with_specials(dw0));
  const float* dw_in = dtable.data() + first * d;
  float* ddw_ptr = ddtable.data() + first * d;
  // NaN where nothing writes: every row of dh must be written (zero for an unscored one).
  auto ddh = upload(be, std::vector<float>(static_cast<std::size_t>(n * d), std::nanf("")));
  const PrecScope in_prec(be, prec);
  const double loss_gpu = seqrec::cuda::cross_entropy_forward_backward(
      be, s, dh_in.data(), tgt.data(), dw_in, ddh.data(), ddw_ptr, gs, &count_gpu);
  record(count_gpu == count_cpu, "cross_entropy.count", shape,
         "gpu=" + std::to_string(count_gpu) + " cpu=" + std::to_string(count_cpu));
  // Loss: per row logsumexp over I in float (different summation order, expf vs std::exp within
  // 2 ulp), summed in double in the same row order: ~1e-6 relative per row at most.
  // bf16: each logit is a D-term sum of products whose operands carry a relative rounding error
  // of at most 2^-9 each; with |h·w| terms ~ 1/sqrt(D) the logit error is ~2^-8 ≈ 4e-3 absolute,
  // random in sign, so the per-row loss (~log I ≈ 8–10) moves by ~5e-4 relative and the mean by
  // less: rtol 2e-3. bf16 logits add one rounding of each logit, at most 2^-9 of |z| ≈ 1–3 here:
  // the same order as the operands' error, and as random in sign.
  check_scalar("cross_entropy.loss", shape, loss_gpu, loss_cpu, bf16 ? 2e-3 : 1e-5);
  // dh = G·W (K = I terms) and dW += Gᵀ·Hc (K = chunk rows), cuBLASLt fp32 vs Eigen: different
  // summation orders of the same fp32 products; judged against each output's max. bf16: G and W
  // (or Hc) rounded to 8-bit mantissas, errors ~2^-8 relative per term and partly cancelling in
  // the sums: rtol 3e-2 with atol 1e-2 of the output's max.
  const double g_rtol = bf16 ? 3e-2 : 1e-4, g_atol = bf16 ? 1e-2 : 1e-5;
  check("cross_entropy.dh", shape, download(be, ddh), dh, g_rtol, g_atol);
  const auto dtable_gpu = download(be, ddtable);
  const std::vector<float> specials(dtable_gpu.begin(), dtable_gpu.begin() + first * d);
  const std::vector<float> dw_gpu(dtable_gpu.begin() + first * d, dtable_gpu.end());
  check("cross_entropy.ditems", shape, dw_gpu, dw, g_rtol, g_atol);
  // The special-token rows of the table's gradient must be left alone.
  check("cross_entropy.dspecials_untouched", shape, specials,
        std::vector<float>(specials.size(), 0.5f), 0.0, 0.0);
  // Forward only (null gradients) must give the same loss bit for bit as the fused pass.
  std::int64_t c2 = 0;
  const double loss_fwd = seqrec::cuda::cross_entropy_forward_backward(
      be, s, dh_in.data(), tgt.data(), dw_in, nullptr, nullptr, gs, &c2);
  record(loss_fwd == loss_gpu && c2 == count_gpu, "cross_entropy.forward_only", shape,
         "loss " + std::to_string(loss_fwd) + " vs fused " + std::to_string(loss_gpu) +
             " (must be identical)");
}

// ---- Selected log-softmax (DPO's head) ----------------------------------------------------------
/// P of N rows of h, J distinct item columns per row: the device forward (log-probabilities) and
/// backward (from host weights [scale·Σg, scale·g_j], as the model forms them) against the CPU op
/// on the same rows, fp32 and bf16; then the cross-entropy's bits through the shared pass.
void test_selected(Backend& be, Rng& rng, std::int64_t n, std::int64_t p, std::int64_t d,
                   std::int64_t items, std::int64_t J, std::int64_t chunk, Prec prec) {
  const bool bf16 = prec != Prec::Fp32;
  const std::string shape =
      shape_str({{"N", n}, {"P", p}, {"D", d}, {"I", items}, {"J", J}, {"chunk", chunk}}) +
      prec_suffix(prec);
  const std::int32_t first = 4;
  // P increasing rows of N, each with J distinct item columns.
  std::vector<std::int32_t> rows;
  for (std::int64_t r = 0; r < n && std::int64_t(rows.size()) < p; ++r)
    if (std::int64_t(rng.below(std::uint64_t(n))) < p) rows.push_back(std::int32_t(r));
  p = std::int64_t(rows.size());
  std::vector<std::int32_t> cols(static_cast<std::size_t>(p * J));
  for (std::int64_t r = 0; r < p; ++r)
    for (std::int64_t j = 0; j < J; ++j) {
      std::int32_t c;
      bool fresh;
      do {
        c = std::int32_t(rng.below(std::uint64_t(items)));
        fresh = std::find(cols.begin() + r * J, cols.begin() + r * J + j, c) ==
                cols.begin() + r * J + j;
      } while (!fresh);
      cols[r * J + j] = c;
    }
  auto h = normal(rng, n * d), w = normal(rng, items * d, 1.0 / std::sqrt(double(d)));
  std::vector<float> hp(static_cast<std::size_t>(p * d));
  for (std::int64_t r = 0; r < p; ++r) std::copy_n(h.begin() + rows[r] * d, d, hp.begin() + r * d);
  std::vector<double> g(static_cast<std::size_t>(p * J));
  for (auto& v : g) v = rng.uniform() - 0.5;
  const double scale = 1.0 / double(p);
  // CPU reference.
  const seqrec::ops::SelectedShape s{p, d, items, J, chunk};
  std::vector<double> logp(g.size()), lse(static_cast<std::size_t>(p));
  std::vector<float> dhp(hp.size()), dw(static_cast<std::size_t>(items * d), 0.f);
  seqrec::AlignedVector<float> ws;
  seqrec::ops::selected_log_softmax<float>(s, hp.data(), cols.data(), w.data(), logp.data(),
                                           lse.data(), ws);
  seqrec::ops::selected_log_softmax_backward<float>(s, hp.data(), cols.data(), w.data(), lse.data(),
                                                    g.data(), scale, dhp.data(), dw.data(), ws);
  std::vector<float> dh_cpu(h.size(), 0.f);
  for (std::int64_t r = 0; r < p; ++r)
    std::copy_n(dhp.begin() + r * d, d, dh_cpu.begin() + rows[r] * d);
  // Device: the table with its special-token rows, as in the model.
  std::vector<float> table(static_cast<std::size_t>(first * d), 0.5f);
  table.insert(table.end(), w.begin(), w.end());
  std::vector<float> weights(static_cast<std::size_t>(p * (J + 1)));
  for (std::int64_t r = 0; r < p; ++r) {
    double total = 0;
    for (std::int64_t j = 0; j < J; ++j) {
      total += g[r * J + j];
      weights[r * (J + 1) + 1 + j] = float(scale * g[r * J + j]);
    }
    weights[r * (J + 1)] = float(scale * total);
  }
  auto d_rows = upload(be, rows), d_cols = upload(be, cols);
  auto d_h = upload(be, h), d_table = upload(be, table),
       d_dtable = upload(be, std::vector<float>(table.size(), 0.f)),
       d_weights = upload(be, weights);
  auto d_logp = be.buffer<float>(static_cast<std::size_t>(p * J));
  auto d_dh = upload(be, std::vector<float>(h.size(), 7.f));  // overwritten, zero off the rows
  const PrecScope in_prec(be, prec);
  const float* items_ptr = d_table.data() + first * d;
  seqrec::cuda::selected_log_softmax(be, n, d, items, chunk, d_h.data(), d_rows.data(), p,
                                     d_cols.data(), int(J), items_ptr, d_logp.data());
  seqrec::cuda::selected_log_softmax_backward(be, n, d, items, chunk, d_h.data(), d_rows.data(), p,
                                              d_cols.data(), int(J), items_ptr, d_weights.data(),
                                              d_dh.data(), d_dtable.data() + first * d);
  // log p: a logsumexp over I in fp32 (expf, another summation order than Eigen's vectorised
  // one): ~1e-6 of |log p| ≈ log I. bf16: logits off by ~2^-8 absolute (see cross_entropy), which
  // log p inherits: rtol 5e-3 of values ≈ 8–10.
  std::vector<float> logp_ref(logp.begin(), logp.end());
  check("selected.logp", shape, download(be, d_logp), logp_ref, bf16 ? 5e-3 : 1e-5,
        bf16 ? 1e-3 : 1e-6);
  // Gradients: the cross-entropy's GEMMs and tolerances (G has the same structure and scale).
  const double g_rtol = bf16 ? 3e-2 : 1e-4, g_atol = bf16 ? 1e-2 : 1e-5;
  check("selected.dh", shape, download(be, d_dh), dh_cpu, g_rtol, g_atol);
  const auto dtable = download(be, d_dtable);
  check("selected.ditems", shape, std::vector<float>(dtable.begin() + first * d, dtable.end()), dw,
        g_rtol, g_atol);
  check("selected.dspecials_untouched", shape,
        std::vector<float>(dtable.begin(), dtable.begin() + first * d),
        std::vector<float>(static_cast<std::size_t>(first * d), 0.f), 0.0, 0.0);
  // The forward repeats bit for bit (the backward recomputes the logits with the same GEMM).
  auto d_logp2 = be.buffer<float>(static_cast<std::size_t>(p * J));
  seqrec::cuda::selected_log_softmax(be, n, d, items, chunk, d_h.data(), d_rows.data(), p,
                                     d_cols.data(), int(J), items_ptr, d_logp2.data());
  check_identical("selected.logp", shape, download(be, d_logp2), download(be, d_logp));

  // Cross-entropy is the selected head with the first column and weight −1/P: through the shared
  // pass the two must agree bit for bit (loss = −Σ log p in row order, dh, d items).
  std::vector<std::int32_t> first_col(static_cast<std::size_t>(p)),
      targets(static_cast<std::size_t>(n), 0);
  for (std::int64_t r = 0; r < p; ++r) {
    first_col[r] = cols[r * J];
    targets[rows[r]] = first + first_col[r];
  }
  const float gs = 1.f / float(p);
  std::vector<float> ce_weights(static_cast<std::size_t>(2 * p), -gs);
  auto d_first = upload(be, first_col);
  auto d_ce_weights = upload(be, ce_weights);
  auto d_lp1 = be.buffer<float>(static_cast<std::size_t>(p));
  auto d_dh_sel = be.buffer<float>(h.size()), d_dh_ce = be.buffer<float>(h.size());
  auto d_dt_sel = upload(be, std::vector<float>(table.size(), 0.f));
  auto d_dt_ce = upload(be, std::vector<float>(table.size(), 0.f));
  const seqrec::ops::CrossEntropyShape ce{n, d, items, first, chunk};
  std::int64_t count = 0;
  const double ce_loss = seqrec::cuda::cross_entropy_forward_backward(
      be, ce, d_h.data(), targets.data(), items_ptr, d_dh_ce.data(), d_dt_ce.data() + first * d, gs,
      &count);
  seqrec::cuda::selected_log_softmax(be, n, d, items, chunk, d_h.data(), d_rows.data(), p,
                                     d_first.data(), 1, items_ptr, d_lp1.data());
  seqrec::cuda::selected_log_softmax_backward(be, n, d, items, chunk, d_h.data(), d_rows.data(), p,
                                              d_first.data(), 1, items_ptr, d_ce_weights.data(),
                                              d_dh_sel.data(), d_dt_sel.data() + first * d);
  double sel_loss = 0;
  for (float v : download(be, d_lp1)) sel_loss -= static_cast<double>(v);
  record(count == p && sel_loss == ce_loss, "selected.as_cross_entropy.loss", shape,
         "selected " + std::to_string(sel_loss) + " vs cross-entropy " + std::to_string(ce_loss) +
             " over " + std::to_string(count) + " rows (must be identical)");
  check_identical("selected.as_cross_entropy.dh", shape, download(be, d_dh_sel),
                  download(be, d_dh_ce), "the same pass");
  check_identical("selected.as_cross_entropy.ditems", shape, download(be, d_dt_sel),
                  download(be, d_dt_ce), "the same pass");
}

// ---- Packed rows --------------------------------------------------------------------------------
/// gather_rows / scatter_rows against the obvious loops, and the three dropout forms on packed rows
/// against the full-layout ops restricted to those rows: all exact (copies, and the same float
/// operations under the same masks).
void test_packed_rows(Backend& be, Rng& rng, std::int64_t n, std::int64_t w) {
  const std::string shape = shape_str({{"N", n}, {"W", w}});
  std::vector<std::int32_t> rows;
  for (std::int64_t r = 0; r < n; ++r)
    if (rng.uniform() < 0.55) rows.push_back(static_cast<std::int32_t>(r));
  const std::int64_t m = static_cast<std::int64_t>(rows.size());
  auto full = normal(rng, n * w), branch = normal(rng, n * w);
  std::vector<float> packed(m * w), packed_branch(m * w), scattered(n * w, 0.f);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < w; ++j) {
      packed[i * w + j] = full[rows[i] * w + j];
      packed_branch[i * w + j] = branch[rows[i] * w + j];
      scattered[rows[i] * w + j] = packed[i * w + j];
    }
  auto drows = upload(be, rows);
  auto dfull = upload(be, full), dbranch = upload(be, branch), dpb = upload(be, packed_branch);
  auto dpacked = be.buffer<float>(m * w), dsc = be.buffer<float>(n * w);
  seqrec::cuda::gather_rows(be, dfull.data(), drows.data(), dpacked.data(), m, w);
  check("gather_rows", shape, download(be, dpacked), packed, 0.0, 0.0);
  seqrec::cuda::scatter_rows(be, dpacked.data(), drows.data(), dsc.data(), m, n, w);
  check("scatter_rows", shape, download(be, dsc), scattered, 0.0, 0.0);

  const double p = 0.3;
  const std::uint64_t key = 0x1234567;
  // Full layout: out = full + drop(branch); packed: the same on the listed rows only.
  auto dout_full = be.buffer<float>(n * w), dout_packed = be.buffer<float>(m * w);
  seqrec::cuda::dropout_add(be, dout_full.data(), dfull.data(), dbranch.data(), n * w, p, key);
  seqrec::cuda::dropout_add(be, dout_packed.data(), dpacked.data(), dpb.data(), m * w, p, key,
                            drows.data(), w);
  const auto of = download(be, dout_full);
  std::vector<float> want(m * w);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < w; ++j) want[i * w + j] = of[rows[i] * w + j];
  check("dropout_add.packed", shape, download(be, dout_packed), want, 0.0, 0.0);
  seqrec::cuda::dropout_backward(be, dbranch.data(), dout_full.data(), n * w, p, key);
  seqrec::cuda::dropout_backward(be, dpb.data(), dout_packed.data(), m * w, p, key, drows.data(),
                                 w);
  const auto bf = download(be, dout_full);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < w; ++j) want[i * w + j] = bf[rows[i] * w + j];
  check("dropout_backward.packed", shape, download(be, dout_packed), want, 0.0, 0.0);
  // In place (the embeddings' dropout): the full layout, and the packed rows with the row map.
  seqrec::cuda::dropout_forward(be, dbranch.data(), n * w, p, key);
  seqrec::cuda::dropout_forward(be, dpb.data(), m * w, p, key, drows.data(), w);
  const auto ff = download(be, dbranch);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < w; ++j) want[i * w + j] = ff[rows[i] * w + j];
  check("dropout_forward.packed", shape, download(be, dpb), want, 0.0, 0.0);
}

// ---- GEMM with bias ----------------------------------------------------------------------------
/// gemm_rm's bias (fused into cuBLASLt's epilogue when 16-byte aligned, else added by a kernel)
/// against a double-precision loop, both transposes of B, fp32 and bf16. fp32: K-term sums in
/// another order, rtol 1e-4 / atol 1e-5 of max as elsewhere; bf16: operands rounded to 8-bit
/// mantissas, rtol 3e-2 / atol 1e-2 of max (as the cross-entropy's GEMMs).
void test_gemm_bias(Backend& be, Rng& rng, std::int64_t M, std::int64_t N, std::int64_t K,
                    bool bf16) {
  // Bias offsets in floats: 0 (256-byte aligned), 4 (16-byte aligned only: fused, as MoE biases
  // may be) and 1 (4-byte aligned: the fallback kernel).
  for (std::size_t off : {std::size_t{0}, std::size_t{4}, std::size_t{1}}) {
    const std::string shape = shape_str({{"M", M}, {"N", N}, {"K", K}}) + " bias-offset " +
                              std::to_string(off) + (bf16 ? " bf16" : "");
    auto a = normal(rng, M * K), w = normal(rng, N * K, 1.0 / std::sqrt(double(K)));
    auto bias = normal(rng, N + 4);
    std::vector<float> ref(M * N);
    for (std::int64_t i = 0; i < M; ++i)
      for (std::int64_t j = 0; j < N; ++j) {
        double acc = bias[off + j];
        for (std::int64_t k = 0; k < K; ++k) acc += double(a[i * K + k]) * double(w[j * K + k]);
        ref[i * N + j] = float(acc);
      }
    auto da = upload(be, a), dw = upload(be, w), db = upload(be, bias);
    auto dc = be.buffer<float>(M * N);
    be.set_bf16(bf16);
    struct Restore {
      Backend& be;
      ~Restore() { be.set_bf16(false); }
    } restore{be};
    // y = a · wᵀ + b, the linear layer's forward (w a weight operand).
    seqrec::cuda::gemm_rm(be, false, true, M, N, K, 1.f, da.data(), K, dw.data(), K, 0.f, dc.data(),
                          N, seqrec::cuda::WeightOperand::B, db.data() + off);
    check("gemm_rm.bias", shape, download(be, dc), ref, bf16 ? 3e-2 : 1e-4, bf16 ? 1e-2 : 1e-5);
  }
}

// ---- Attention ----------------------------------------------------------------------------------
/// Fused RoPE against the unfused path: attention rotating Q and K itself (qkv left unrotated)
/// must return the floats of rope_apply(+1), the plain attention, then rope_apply(−1) on dqkv:
/// the same float operations on the same values. qkv (rows, 3D) on the host; tok, seg and
/// row_map on the device as the attention and RoPE take them (seg, row_map null: full layout).
void check_fused_rope(Backend& be, const seqrec::ops::AttentionShape& s, const std::string& shape,
                      const std::vector<float>& qkv, const std::int32_t* tok, std::int32_t pad,
                      const std::int32_t* seg, const std::int32_t* row_map, std::int64_t rows,
                      const float* dout) {
  const std::int64_t B = s.batch, L = s.length, D = s.dim, H = s.heads;
  if ((D / H) % 2 != 0) return;
  seqrec::cuda::RopeTable table;
  table.ensure(be, L, D / H, 10000.0);
  auto rotated = upload(be, qkv), raw = upload(be, qkv);
  seqrec::cuda::rope_apply(be, table, rotated.data(), B, L, D, H, +1, row_map, rows);
  auto out_u = be.buffer<float>(rows * D), out_f = be.buffer<float>(rows * D);
  auto probs_u = be.buffer<float>(B * H * L * L), probs_f = be.buffer<float>(B * H * L * L);
  auto dqkv_u = be.buffer<float>(rows * 3 * D), dqkv_f = be.buffer<float>(rows * 3 * D);
  // Packed, the rows of P past a sequence's row count are not written: start both equal.
  SEQREC_CUDA_CHECK(cudaMemsetAsync(probs_u.data(), 0, probs_u.bytes(), be.stream()));
  SEQREC_CUDA_CHECK(cudaMemsetAsync(probs_f.data(), 0, probs_f.bytes(), be.stream()));
  seqrec::cuda::attention_forward(be, s, rotated.data(), tok, pad, out_u.data(), probs_u.data(), 0,
                                  seg);
  seqrec::cuda::attention_backward(be, s, rotated.data(), probs_u.data(), dout, dqkv_u.data(), seg);
  seqrec::cuda::rope_apply(be, table, dqkv_u.data(), B, L, D, H, -1, row_map, rows);
  seqrec::cuda::attention_forward(be, s, raw.data(), tok, pad, out_f.data(), probs_f.data(), 0, seg,
                                  &table, row_map);
  seqrec::cuda::attention_backward(be, s, raw.data(), probs_f.data(), dout, dqkv_f.data(), seg,
                                   &table, row_map);
  const char* why = "RoPE fused into the loads and stores: the separate op's floats";
  check_identical("attention.rope_fused.out", shape, download(be, out_f), download(be, out_u), why);
  check_identical("attention.rope_fused.probs", shape, download(be, probs_f), download(be, probs_u),
                  why);
  check_identical("attention.rope_fused.dqkv", shape, download(be, dqkv_f), download(be, dqkv_u),
                  why);
  check_identical("attention.rope_fused.qkv_untouched", shape, download(be, raw), qkv,
                  "the fused kernels only read qkv");
}

void test_attention(Backend& be, Rng& rng, std::int64_t B, std::int64_t L, std::int64_t D,
                    std::int64_t H) {
  const std::string shape = shape_str({{"B", B}, {"L", L}, {"D", D}, {"H", H}});
  seqrec::ops::AttentionShape s{B, L, D, H};
  const std::int32_t pad = 0;
  // Left padding as SASRec batches have it: sequence b has `k` leading pads, k uniform in
  // [0, L); a few rows fully padded but the last position, a few with none.
  std::vector<std::int32_t> tok(B * L);
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t k = std::int64_t(rng.below(std::uint64_t(L)));
    for (std::int64_t i = 0; i < L; ++i)
      tok[b * L + i] = i < k ? pad : std::int32_t(1 + rng.below(1000));
  }
  auto qkv = normal(rng, B * L * 3 * D), dout = normal(rng, B * L * D);
  std::vector<float> out(B * L * D), probs(B * H * L * L), dqkv(B * L * 3 * D);
  seqrec::ops::attention_forward(s, qkv.data(), tok.data(), pad, out.data(), probs.data());
  seqrec::ops::attention_backward(s, qkv.data(), tok.data(), pad, probs.data(), dout.data(),
                                  dqkv.data());

  auto dtok = upload(be, tok);
  auto dqkv_in = upload(be, qkv), ddout = upload(be, dout);
  auto dout_ = be.buffer<float>(B * L * D), dprobs = be.buffer<float>(B * H * L * L),
       ddqkv = be.buffer<float>(B * L * 3 * D);
  seqrec::cuda::attention_forward(be, s, dqkv_in.data(), dtok.data(), pad, dout_.data(),
                                  dprobs.data());
  seqrec::cuda::attention_backward(be, s, dqkv_in.data(), dprobs.data(), ddout.data(),
                                   ddqkv.data());
  // Scores are dh-term dot products (GPU sequential, CPU Eigen GEMM), then softmax: ~1e-6
  // relative; out, dqkv are ≤ L-term sums of those: judged against each output's max.
  check("attention.probs", shape, download(be, dprobs), probs, 1e-4, 1e-5);
  check("attention.out", shape, download(be, dout_), out, 1e-4, 1e-5);
  check("attention.dqkv", shape, download(be, ddqkv), dqkv, 1e-4, 1e-5);
  check_fused_rope(be, s, shape, qkv, dtok.data(), pad, nullptr, nullptr, B * L, ddout.data());
}

/// The packed layout the model trains with: attention over each sequence's packed rows (every
/// non-padding position, plus ~10% of the padding positions, as rows with a scored target but a
/// padding input would be), against the CPU op on the full layout at the same rows; dout is zero
/// on the rows the packed step does not compute, as in the model. Also RoPE on packed rows (slot
/// from the row map) against RoPE on the full layout: the same float operations, so identical.
void test_attention_packed(Backend& be, Rng& rng, std::int64_t B, std::int64_t L, std::int64_t D,
                           std::int64_t H) {
  const std::string shape = shape_str({{"B", B}, {"L", L}, {"D", D}, {"H", H}});
  seqrec::ops::AttentionShape s{B, L, D, H};
  const std::int32_t pad = 0;
  const std::int64_t N = B * L;
  std::vector<std::int32_t> tok(N), rows, seg(B + 1), ptok;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t k = std::int64_t(rng.below(std::uint64_t(L + 1)));  // k = L: all padding
    seg[b] = static_cast<std::int32_t>(rows.size());
    for (std::int64_t i = 0; i < L; ++i) {
      tok[b * L + i] = i < k ? pad : std::int32_t(1 + rng.below(1000));
      if (tok[b * L + i] != pad || rng.below(10) == 0) {
        rows.push_back(static_cast<std::int32_t>(b * L + i));
        ptok.push_back(tok[b * L + i]);
      }
    }
  }
  seg[B] = static_cast<std::int32_t>(rows.size());
  const auto M = static_cast<std::int64_t>(rows.size());
  auto qkv = normal(rng, N * 3 * D), dout = normal(rng, N * D);
  std::vector<char> packed(N, 0);
  for (std::int32_t r : rows) packed[r] = 1;
  for (std::int64_t r = 0; r < N; ++r)
    if (!packed[r]) std::fill(dout.begin() + r * D, dout.begin() + (r + 1) * D, 0.f);
  std::vector<float> out(N * D), probs(B * H * L * L), dqkv(N * 3 * D);
  seqrec::ops::attention_forward(s, qkv.data(), tok.data(), pad, out.data(), probs.data());
  seqrec::ops::attention_backward(s, qkv.data(), tok.data(), pad, probs.data(), dout.data(),
                                  dqkv.data());
  auto take = [&](const std::vector<float>& full, std::int64_t w) {
    std::vector<float> p(static_cast<std::size_t>(M * w));
    for (std::int64_t i = 0; i < M; ++i)
      std::copy_n(full.begin() + rows[i] * w, w, p.begin() + i * w);
    return p;
  };
  auto dseg = upload(be, seg);
  auto dptok = upload(be, ptok);
  auto dqkv_in = upload(be, take(qkv, 3 * D)), ddout = upload(be, take(dout, D));
  auto dout_ = be.buffer<float>(M * D), dprobs = be.buffer<float>(B * H * L * L),
       ddqkv = be.buffer<float>(M * 3 * D);
  seqrec::cuda::attention_forward(be, s, dqkv_in.data(), dptok.data(), pad, dout_.data(),
                                  dprobs.data(), 0, dseg.data());
  seqrec::cuda::attention_backward(be, s, dqkv_in.data(), dprobs.data(), ddout.data(), ddqkv.data(),
                                   dseg.data());
  const std::string ps = shape + ",packed=" + std::to_string(M);
  check("attention.packed.out", ps, download(be, dout_), take(out, D), 1e-4, 1e-5);
  check("attention.packed.dqkv", ps, download(be, ddqkv), take(dqkv, 3 * D), 1e-4, 1e-5);

  // RoPE: full layout vs packed rows with the row map.
  if ((D / H) % 2 != 0) return;
  seqrec::cuda::RopeTable table;
  table.ensure(be, L, D / H, 10000.0);
  auto full = upload(be, qkv), part = upload(be, take(qkv, 3 * D));
  auto drows = upload(be, rows);
  seqrec::cuda::rope_apply(be, table, full.data(), B, L, D, H, +1);
  seqrec::cuda::rope_apply(be, table, part.data(), B, L, D, H, +1, drows.data(), M);
  check_identical("rope.packed", ps, download(be, part), take(download(be, full), 3 * D),
                  "the same rotation of the same rows");
  check_fused_rope(be, s, ps, take(qkv, 3 * D), dptok.data(), pad, dseg.data(), drows.data(), M,
                   ddout.data());
}

// ---- AdamW
// ---------------------------------------------------------------------------------------
/// The caching allocator's books: a freed block is cached, and reusing it takes it out of the
/// cache again (cached_bytes() used to count every block ever returned); a big request reuses a
/// cached block a little larger than its bucket, as packed steps of varying row counts need.
void test_allocator() {
  seqrec::cuda::CachingAllocator a;
  const std::size_t small = 3000, big = (std::size_t{100} << 20) + 1;
  void* p = a.allocate(small);
  const std::size_t b = a.live_bytes();
  a.deallocate(p);
  record(a.cached_bytes() == b && a.live_bytes() == 0, "allocator.free_caches", "3000 B",
         "cached " + std::to_string(a.cached_bytes()) + " (expected " + std::to_string(b) +
             "), live " + std::to_string(a.live_bytes()));
  void* q = a.allocate(small);
  record(q == p && a.cached_bytes() == 0 && a.live_bytes() == b, "allocator.reuse_uncaches",
         "3000 B",
         "same block " + std::to_string(q == p) + ", cached " + std::to_string(a.cached_bytes()) +
             " (expected 0), live " + std::to_string(a.live_bytes()));
  a.deallocate(q);
  void* r = a.allocate(big + (std::size_t{4} << 20));
  const std::size_t rb = a.live_bytes();
  a.deallocate(r);
  void* s = a.allocate(big);           // a smaller bucket within 1/8: the cached block serves it
  const bool want_reuse = !kEmulated;  // the emulator sizes blocks exactly
  record((s == r) == want_reuse && a.cached_bytes() == (want_reuse ? b : b + rb),
         "allocator.best_fit", "100 MiB + 1 after 104 MiB + 1",
         "reused " + std::to_string(s == r) + " (expected " + std::to_string(want_reuse) +
             "), cached " + std::to_string(a.cached_bytes()));
  a.deallocate(s);
}

void test_adamw(Backend& be, Rng& rng) {
  seqrec::ParameterStore<float> st;
  st.add("item_emb", {20003, 64}, true, seqrec::Init::Zeros);
  auto norm = st.add("norm", {64}, false, seqrec::Init::Zeros);
  auto frozen = st.add("frozen_w", {256, 64}, true, seqrec::Init::Zeros);
  st.add("bias", {4099}, false, seqrec::Init::Zeros);
  st.add("w2", {4097, 3}, true, seqrec::Init::Zeros);
  st.set_frozen(frozen, true);
  (void)norm;
  const std::size_t n = st.size();
  const std::string shape = "params=" + std::to_string(n) + ",tensors=5(1 frozen)";
  auto fill = [](auto& dst, const std::vector<float>& src) {
    std::copy(src.begin(), src.end(), dst.begin());
  };
  fill(st.values(), normal(rng, n));
  fill(st.grads(), normal(rng, n, 0.01));
  fill(st.moment1(), normal(rng, n, 0.01));
  for (auto& v : st.moment2()) v = float(1e-4 * std::pow(rng.normal(), 2));
  // The model's fused form, below: unclipped gradients, the clip factor passed to adamw_step.
  auto fp = upload(be, st.values()), fg = upload(be, st.grads()), fm = upload(be, st.moment1()),
       fv = upload(be, st.moment2());
  seqrec::train::AdamWOptions o;
  o.weight_decay = 0.1;
  const double lr = 1e-3;
  const std::int64_t step = 7;

  auto dp = upload(be, st.values()), dg = upload(be, st.grads()), dm = upload(be, st.moment1()),
       dv = upload(be, st.moment2());
  seqrec::cuda::AdamWPlan plan(be, seqrec::cuda::adamw_segments(st));

  const double norm_cpu = seqrec::train::grad_norm(st);
  const double norm_gpu = seqrec::cuda::grad_norm(be, plan, dg.data());
  // Both sum squares in double, in different orders: ~n·1e-16 relative at worst.
  check_scalar("adamw.grad_norm", shape, norm_gpu, norm_cpu, 1e-10);
  const double max_norm = 0.5 * norm_cpu;  // forces clipping
  seqrec::train::clip_grad_norm(st, max_norm);
  const double pre = seqrec::cuda::clip_grad_norm(be, plan, dg.data(), max_norm);
  check_scalar("adamw.clip_norm_before", shape, pre, norm_cpu, 1e-10);
  // g·f with f from norms equal to 1e-15: at most 1 ulp apart.
  check("adamw.clipped_grads", shape, download(be, dg), st.grads(), 1e-6, 0.0);
  seqrec::train::adamw_step(st, o, lr, step);
  seqrec::cuda::adamw_step(be, plan, dp.data(), dg.data(), dm.data(), dv.data(), o, lr, step);
  // Same float formula; only FMA contraction and the clipped grads' last ulp may differ.
  check("adamw.params", shape, download(be, dp), st.values(), 1e-5, 1e-7);
  check("adamw.moment1", shape, download(be, dm), st.moment1(), 1e-5, 1e-7);
  check("adamw.moment2", shape, download(be, dv), st.moment2(), 1e-5, 1e-7);

  // Clip factor applied as AdamW reads each gradient: the floats of the scaling pass, so the
  // same parameters and moments bit for bit, and the gradients left unscaled.
  const auto g_before = download(be, fg);
  const double fnorm = seqrec::cuda::grad_norm(be, plan, fg.data());
  seqrec::cuda::adamw_step(be, plan, fp.data(), fg.data(), fm.data(), fv.data(), o, lr, step,
                           seqrec::cuda::clip_factor(fnorm, max_norm));
  const char* why = "clip factor applied on read vs the scaling pass";
  check_identical("adamw.fused_clip.params", shape, download(be, fp), download(be, dp), why);
  check_identical("adamw.fused_clip.moment1", shape, download(be, fm), download(be, dm), why);
  check_identical("adamw.fused_clip.moment2", shape, download(be, fv), download(be, dv), why);
  check_identical("adamw.fused_clip.grads_untouched", shape, download(be, fg), g_before,
                  "adamw_step only reads the gradients");

  // The bf16 mirror: the step also writes each updated parameter of a mirrored segment, rounded
  // — the bits cast_to_bf16 gives the updated values — and changes nothing else. item_emb and the
  // frozen tensor are mirrored (at offsets with gaps between); the frozen one's mirror, the gaps
  // and the unmirrored tensors' nothing must stay as they were.
  auto segs = seqrec::cuda::adamw_segments(st);
  const std::int64_t e0 = 20003 * 64, e2 = 256 * 64;
  segs[0].mirror = 8;
  segs[2].mirror = 8 + e0 + 16;
  const std::size_t mirror_n = static_cast<std::size_t>(segs[2].mirror + e2 + 8);
  seqrec::cuda::AdamWPlan mplan(be, segs);
  auto ap = upload(be, st.values()), ag = upload(be, st.grads()), am = upload(be, st.moment1()),
       av = upload(be, st.moment2());
  auto bp = upload(be, st.values()), bg = upload(be, st.grads()), bm = upload(be, st.moment1()),
       bv = upload(be, st.moment2());
  constexpr std::uint16_t kSentinel = 0x7fc1;  // a NaN no rounding produces
  auto mirror = upload(be, std::vector<std::uint16_t>(mirror_n, kSentinel));
  auto* mirror16 = reinterpret_cast<__nv_bfloat16*>(mirror.data());
  const float f = 0.75f;
  seqrec::cuda::adamw_step(be, plan, ap.data(), ag.data(), am.data(), av.data(), o, lr, step, f);
  seqrec::cuda::adamw_step(be, mplan, bp.data(), bg.data(), bm.data(), bv.data(), o, lr, step, f,
                           mirror16);
  const char* same = "the same update, with or without the mirror";
  check_identical("adamw.mirror.params", shape, download(be, bp), download(be, ap), same);
  check_identical("adamw.mirror.moment1", shape, download(be, bm), download(be, am), same);
  check_identical("adamw.mirror.moment2", shape, download(be, bv), download(be, av), same);
  // What the mirror must hold: item_emb's updated values cast, the rest untouched.
  auto want = upload(be, std::vector<std::uint16_t>(mirror_n, kSentinel));
  seqrec::cuda::cast_to_bf16(be, bp.data() + st.entries()[0].offset, 20003, 64, 64,
                             reinterpret_cast<__nv_bfloat16*>(want.data()) + segs[0].mirror, 64);
  check_identical("adamw.mirror.bf16", shape, download(be, mirror), download(be, want),
                  "rounded updates of the mirrored trainable tensor; frozen and gaps untouched");

  // Four floats at a time where a tile's addresses allow it, one at a time elsewhere, with the
  // same bits: the same step on the arrays above (item_emb's and norm's tiles take float4s, bias's
  // first tile too, but for its mirror at an odd offset) and on copies shifted by one element,
  // where every tile goes element by element. The norm's partial sums change order, not value.
  segs[3].mirror = segs[2].mirror + e2 + 3;  // bias: an odd bf16 offset, so scalar with a mirror
  const std::size_t mirror_m = static_cast<std::size_t>(segs[3].mirror + 4099 + 8);
  seqrec::cuda::AdamWPlan vplan(be, segs);
  auto shifted = [&](const auto& h) {
    std::vector<float> out(h.size() + 1, 123.f);  // element 0: outside every segment
    std::copy(h.begin(), h.end(), out.begin() + 1);
    return upload(be, out);
  };
  auto cp = upload(be, st.values()), cg = upload(be, st.grads()), cm = upload(be, st.moment1()),
       cv = upload(be, st.moment2());
  auto sp = shifted(st.values()), sg = shifted(st.grads()), sm = shifted(st.moment1()),
       sv = shifted(st.moment2());
  auto cmir = upload(be, std::vector<std::uint16_t>(mirror_m, kSentinel));
  auto smir = upload(be, std::vector<std::uint16_t>(mirror_m + 1, kSentinel));
  const bool aligned =
      (reinterpret_cast<std::uintptr_t>(cp.data()) | reinterpret_cast<std::uintptr_t>(cg.data()) |
       reinterpret_cast<std::uintptr_t>(cm.data()) | reinterpret_cast<std::uintptr_t>(cv.data()) |
       reinterpret_cast<std::uintptr_t>(cmir.data())) %
          16 ==
      0;
  record(aligned, "adamw.vector.aligned_buffers", shape,
         aligned ? "the unshifted arrays start 16-byte aligned: their tiles take float4s"
                 : "a device buffer is not 16-byte aligned: the float4 path would go untested");
  seqrec::cuda::adamw_step(be, vplan, cp.data(), cg.data(), cm.data(), cv.data(), o, lr, step, f,
                           reinterpret_cast<__nv_bfloat16*>(cmir.data()));
  seqrec::cuda::adamw_step(be, vplan, sp.data() + 1, sg.data() + 1, sm.data() + 1, sv.data() + 1, o,
                           lr, step, f, reinterpret_cast<__nv_bfloat16*>(smir.data()) + 1);
  auto tail = [](std::vector<float> h) {  // the shifted copy without its extra element 0
    record(h.front() == 123.f, "adamw.vector.outside_untouched", "", "element before the tiles");
    h.erase(h.begin());
    return h;
  };
  const char* vs = "float4 tiles vs element-by-element tiles";
  check_identical("adamw.vector.params", shape, download(be, cp), tail(download(be, sp)), vs);
  check_identical("adamw.vector.moment1", shape, download(be, cm), tail(download(be, sm)), vs);
  check_identical("adamw.vector.moment2", shape, download(be, cv), tail(download(be, sv)), vs);
  auto smir_h = download(be, smir);
  smir_h.erase(smir_h.begin());
  check_identical("adamw.vector.bf16_mirror", shape, download(be, cmir), smir_h, vs);
  check_scalar("adamw.vector.grad_norm", shape, seqrec::cuda::grad_norm(be, vplan, sg.data() + 1),
               seqrec::cuda::grad_norm(be, vplan, cg.data()), 1e-12);
  // Zeroing: every trainable element, nothing else (the frozen tensor, the element before).
  seqrec::cuda::zero_tiles(be, vplan, cg.data());
  seqrec::cuda::zero_tiles(be, vplan, sg.data() + 1);
  std::vector<float> zeroed(st.grads().begin(), st.grads().end());
  for (const auto& e : st.entries())
    if (!e.frozen) std::fill_n(zeroed.begin() + std::ptrdiff_t(e.offset), e.numel, 0.f);
  check_identical("adamw.vector.zero_tiles", shape, download(be, cg), zeroed,
                  "trainable gradients zeroed, the frozen one kept");
  check_identical("adamw.scalar.zero_tiles", shape, tail(download(be, sg)), zeroed,
                  "trainable gradients zeroed, the frozen one kept");
}

}  // namespace

int main() {
  return run_checks(20240611, [](Backend& be, Rng& rng) {
    for (auto [n, d] :
         {std::pair<std::int64_t, std::int64_t>{1000, 50}, {25600, 64}, {25600, 1024}})
      guarded("rmsnorm", shape_str({{"N", n}, {"D", d}}), [&] { test_rmsnorm(be, rng, n, d); });

    for (auto [n, d, v] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{1000, 37, 50},
                           {25600, 64, 3710},
                           {25600, 256, 16863}})
      guarded("embedding", shape_str({{"N", n}, {"D", d}, {"V", v}}),
              [&] { test_embedding(be, rng, n, d, v); });

    for (auto [n, d, i, c] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>{300, 40, 1001, 128},
          {4096, 64, 3706, 1024},
          {4096, 64, 16859, 1024},
          // Too many items for the softmax kernel to keep a row on chip: rows read from z.
          {128, 16, 60001, 50}})
      for (Prec prec : kPrecs)
        guarded("cross_entropy",
                shape_str({{"N", n}, {"D", d}, {"I", i}, {"chunk", c}}) + prec_suffix(prec),
                [&] { test_cross_entropy(be, rng, n, d, i, c, prec); });
    // Every row scored (identity rows: dh written by the dH GEMMs, chunk by chunk).
    for (Prec prec : kPrecs)
      guarded("cross_entropy", std::string("all rows scored") + prec_suffix(prec),
              [&] { test_cross_entropy(be, rng, 300, 40, 1001, 128, prec, true); });

    // (N, P, D, I, J, chunk): odd sizes with chunk edges, then the study's width and catalogue
    // (D 1024, Games' items, 4 negatives; 256 pairs, so that the CPU reference stays quick).
    for (auto [n, p, d, i, j, c] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                     std::int64_t>{300, 77, 40, 1001, 3, 16},
          {5120, 256, 1024, 16859, 5, 248}})
      for (Prec prec : kPrecs)
        guarded("selected",
                shape_str({{"N", n}, {"P", p}, {"D", d}, {"I", i}, {"J", j}}) + prec_suffix(prec),
                [&] { test_selected(be, rng, n, p, d, i, j, c, prec); });

    for (auto [m, n, k] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 29, 19}, {512, 3072, 1024}})
      for (bool bf16 : {false, true})
        guarded("gemm_rm.bias", shape_str({{"M", m}, {"N", n}, {"K", k}}),
                [&] { test_gemm_bias(be, rng, m, n, k, bf16); });

    for (auto [n, w] : {std::pair<std::int64_t, std::int64_t>{37, 5}, {20480, 1024}})
      guarded("packed_rows", shape_str({{"N", n}, {"W", w}}),
              [&] { test_packed_rows(be, rng, n, w); });

    for (auto [b, l, d, h] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>{3, 37, 48, 2},
          {64, 200, 64, 1},
          {256, 20, 256, 8}})
      guarded("attention", shape_str({{"B", b}, {"L", l}, {"D", d}, {"H", h}}),
              [&] { test_attention(be, rng, b, l, d, h); });

    for (auto [b, l, d, h] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>{7, 37, 48, 2},
          {512, 20, 1024, 8}})
      guarded("attention.packed", shape_str({{"B", b}, {"L", l}, {"D", d}, {"H", h}}),
              [&] { test_attention_packed(be, rng, b, l, d, h); });

    guarded("adamw", "store", [&] { test_adamw(be, rng); });
    guarded("allocator", "books", [] { test_allocator(); });
  });
}
