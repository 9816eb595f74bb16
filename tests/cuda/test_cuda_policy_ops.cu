// The CUDA kernels of two policies against their CPU references, on fresh random inputs, at small
// odd shapes and at the study's shapes (N = 20480 rows = batch 1024 × length 20, D = 1024,
// FFN 4096, whose GatedMlp inner width is 2732):
//   LayerNorm (policy::norm::LayerNorm): ops/layernorm/layernorm_cuda.cuh vs layernorm_cpu.hpp
//   SwiGLU (policy::ffn::GatedMlp):      ops/activation/swiglu_cuda.cuh vs ffn::detail::swiglu,
//                                        ffn::detail::swiglu_backward
// Prints one line per check,
//   PASS|FAIL <op> <shape> max_abs_err=… max_rel_err=… (rtol … atol …)
// and a summary; exits 0 iff every check passes, 77 (ctest: skipped) when no GPU answers.
//
// A check passes when every element satisfies |gpu − cpu| ≤ atol + rtol·|cpu|, with atol given as
// a fraction of max|cpu|. max_rel_err is taken over elements with |cpu| > atol. Tolerances and
// their reasons sit beside each check. The CPU reference runs in the order the CPU op documents
// (single-threaded when nvcc compiles without -fopenmp; its OpenMP pragmas are then ignored).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iterator>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "seqrec/backend/cuda.cuh"
#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/ops/activation/swiglu_cuda.cuh"
#include "seqrec/ops/layernorm/layernorm_cpu.hpp"
#include "seqrec/ops/layernorm/layernorm_cuda.cuh"
#include "seqrec/policy/feed_forward.hpp"

namespace {

using namespace seqrec::cuda_check;

using seqrec::Rng;
using seqrec::cuda::Backend;
using seqrec::cuda::DeviceBuffer;

/// Elements [lo, hi) of v.
std::vector<float> slice(const std::vector<float>& v, std::size_t lo, std::size_t hi) {
  return std::vector<float>(v.begin() + static_cast<std::ptrdiff_t>(lo),
                            v.begin() + static_cast<std::ptrdiff_t>(hi));
}

// ---- LayerNorm ----------------------------------------------------------------------------------
void test_layernorm(Backend& be, Rng& rng, std::int64_t n, std::int64_t d) {
  const std::string shape = shape_str({{"N", n}, {"D", d}});
  const float eps = 1e-5f;
  // Rows with a common offset (mean 0.5) so that the centring matters, as in a residual stream.
  auto x = normal(rng, n * d, 1.0, 0.5), g = normal(rng, d, 0.1, 1.0), b = normal(rng, d, 0.1),
       dy = normal(rng, n * d);
  // dg, db are accumulated (+=): start both from something non-zero, so that an overwrite fails.
  auto dg0 = normal(rng, d), db0 = normal(rng, d);
  std::vector<float> y(n * d), stats(2 * n), dx(n * d), dg = dg0, db = db0;
  seqrec::ops::layernorm_forward(x.data(), g.data(), b.data(), y.data(), stats.data(), n, d, eps);
  seqrec::ops::layernorm_backward(x.data(), g.data(), stats.data(), dy.data(), dx.data(), dg.data(),
                                  db.data(), n, d);
  std::vector<float> mean(n), rstd(n);
  for (std::int64_t r = 0; r < n; ++r) {
    mean[r] = stats[2 * r];
    rstd[r] = stats[2 * r + 1];
  }

  auto dx_in = upload(be, x), dgain = upload(be, g), dbias = upload(be, b), ddy = upload(be, dy);
  auto ddg = upload(be, dg0), ddb = upload(be, db0);
  auto dy_out = be.buffer<float>(n * d), dstats = be.buffer<float>(2 * n),
       ddx = be.buffer<float>(n * d);
  seqrec::cuda::layernorm_forward(be, dx_in.data(), dgain.data(), dbias.data(), dy_out.data(),
                                  dstats.data(), n, d, eps);
  const auto stats_gpu = download(be, dstats);
  std::vector<float> mean_gpu(n), rstd_gpu(n);
  for (std::int64_t r = 0; r < n; ++r) {
    mean_gpu[r] = stats_gpu[2 * r];
    rstd_gpu[r] = stats_gpu[2 * r + 1];
  }
  // mean, rstd: D-term fp32 sums in another order (CPU serial; GPU 32 lane sums + butterfly). The
  // CPU's serial sum dominates: with |partial sums| up to 0.5·D it errs by ~1e-6 relative (random
  // walk over D roundings), ~4e-6 at worst over 20480 rows. rtol 1e-5 plus atol 1e-5·max (both
  // O(1) here) gives a 5x margin. The stats are (mean, rstd) interleaved, checked apart.
  check("layernorm.mean", shape, mean_gpu, mean, 1e-5, 1e-5);
  check("layernorm.rstd", shape, rstd_gpu, rstd, 1e-5, 1e-5);
  // y = (x − mean)·rstd·g + b inherits those ~1e-6 relative errors; where x̂·g and b cancel only an
  // absolute error is meaningful: atol 1e-5·max|y|.
  check("layernorm.y", shape, download(be, dy_out), y, 1e-5, 1e-5);

  // The backward gets the CPU's stats, so that its check measures the backward alone (the stats
  // were checked above).
  auto dstats_cpu = upload(be, stats);
  seqrec::cuda::layernorm_backward(be, dx_in.data(), dgain.data(), dstats_cpu.data(), ddy.data(),
                                   ddx.data(), ddg.data(), ddb.data(), n, d);
  const auto dx_gpu = download(be, ddx), dg_gpu = download(be, ddg), db_gpu = download(be, ddb);
  // dx = rstd·(g·dy − mean(u) − x̂·mean(u·x̂)): two D-term means (~1e-7 absolute error) subtracted
  // from O(1) terms, then cancellation: rtol 1e-5, atol 1e-5·max|dx|.
  check("layernorm.dx", shape, dx_gpu, dx, 1e-5, 1e-5);
  // dg, db: N-term fp32 column sums, CPU serial (|partial sums| ~ sqrt(N) ≈ 143 at N = 20480:
  // ~4e-4 absolute error, ~1.5e-3 at worst over 1024 columns), GPU 4 warps × 512 blocks of short
  // sums (much smaller error). Against max|dg| ≈ 3.3·sqrt(N) ≈ 470 that is ~3e-6: rtol 1e-5 and
  // atol 2e-5·max (≈ 9e-3 at the study shape) leave a 6x margin. The starting dg0, db0 are O(1),
  // so a kernel that overwrote instead of accumulating would miss by ~1 and fail at small N.
  check("layernorm.dgain", shape, dg_gpu, dg, 1e-5, 2e-5);
  check("layernorm.dbias", shape, db_gpu, db, 1e-5, 2e-5);

  // Rerun from the same starting dg0, db0: every output bit-identical (fixed reduction order).
  upload_into(be, ddg, dg0);
  upload_into(be, ddb, db0);
  seqrec::cuda::layernorm_backward(be, dx_in.data(), dgain.data(), dstats_cpu.data(), ddy.data(),
                                   ddx.data(), ddg.data(), ddb.data(), n, d);
  check_identical("layernorm.dx.deterministic", shape, download(be, ddx), dx_gpu);
  check_identical("layernorm.dgain.deterministic", shape, download(be, ddg), dg_gpu);
  check_identical("layernorm.dbias.deterministic", shape, download(be, ddb), db_gpu);

  // In place: dx written over dy (documented as allowed) gives the same bits.
  upload_into(be, ddg, dg0);
  upload_into(be, ddb, db0);
  auto dinplace = upload(be, dy);
  seqrec::cuda::layernorm_backward(be, dx_in.data(), dgain.data(), dstats_cpu.data(),
                                   dinplace.data(), dinplace.data(), ddg.data(), ddb.data(), n, d);
  check_identical("layernorm.dx.in_place", shape, download(be, dinplace), dx_gpu);
  check_identical("layernorm.dgain.in_place", shape, download(be, ddg), dg_gpu);
}

/// D above the backward's limit must be refused on the host, naming the value, before any launch.
void test_layernorm_limit(Backend& be) {
  const std::int64_t d = seqrec::cuda::detail::kLnMaxDim + 1;
  const std::string shape = shape_str({{"N", 1}, {"D", d}});
  try {
    seqrec::cuda::layernorm_backward<float>(be, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, 1, d);
    record(false, "layernorm.dim_limit", shape, "no exception for D above the limit");
  } catch (const seqrec::Error& e) {
    const std::string msg = e.what();
    record(msg.find(std::to_string(d)) != std::string::npos, "layernorm.dim_limit", shape,
           "threw: " + msg);
  }
}

// ---- SwiGLU -------------------------------------------------------------------------------------
/// rows × f elements, placed `offset` floats into each device buffer (offset % 4 != 0 forces the
/// scalar path; so does rows·f % 4 != 0). Each buffer has kPad sentinel floats beyond the end,
/// and the `offset` floats before the start hold the sentinel too: both must stay untouched.
void test_swiglu(Backend& be, Rng& rng, std::int64_t rows, std::int64_t f, std::int64_t offset) {
  const std::string shape = shape_str({{"N", rows}, {"F", f}, {"offset", offset}});
  const std::int64_t n = rows * f;
  constexpr std::int64_t kPad = 8;
  constexpr float kSentinel = 12345.f;
  auto gate = normal(rng, n, 1.5), up = normal(rng, n), dh = normal(rng, n);
  // A few extreme gates: exp(−g) overflows to inf or underflows to 0 on one side or the other; no
  // NaN may come out, and silu'(g) ≈ 0 near g ≈ −1.2785 (cancellation in 1 + g·(1 − σ)).
  const float extremes[] = {-100.f, -88.f, -30.f, -10.f, -1.2785f, 0.f, 10.f, 30.f, 88.f, 100.f};
  for (std::size_t k = 0; k < std::size(extremes) && std::int64_t(k) < n; ++k)
    gate[(k * 7919) % static_cast<std::size_t>(n)] = extremes[k];

  std::vector<float> h(n), dgate = dh, dup(n);
  seqrec::policy::ffn::detail::swiglu(gate.data(), up.data(), h.data(), n);
  seqrec::policy::ffn::detail::swiglu_backward(gate.data(), up.data(), dgate.data(), dup.data(), n);

  const std::vector<float> sentinels(static_cast<std::size_t>(n + offset + kPad), kSentinel);
  auto placed = [&](const std::vector<float>& v) {  // sentinel-framed copy at `offset`
    auto d = upload(be, sentinels);
    upload_into(be, d, v, static_cast<std::size_t>(offset));
    return d;
  };
  auto framed_out = [&]() { return upload(be, sentinels); };
  // The part at [offset, offset + n), and a check that the frame around it kept its sentinels.
  auto unframe = [&](const std::string& op, const DeviceBuffer<float>& d) {
    const auto all = download(be, d);
    std::size_t touched = 0;
    for (std::size_t i = 0; i < all.size(); ++i) {
      const bool inside = i >= std::size_t(offset) && i < std::size_t(offset + n);
      if (!inside && all[i] != kSentinel) ++touched;
    }
    record(touched == 0, op + ".bounds", shape,
           std::to_string(touched) + " elements outside the array were written (must be 0)");
    return slice(all, std::size_t(offset), std::size_t(offset + n));
  };

  auto dgate_in = placed(gate), dup_in = placed(up), ddh = placed(dh);
  auto dh_out = framed_out(), ddgate = framed_out(), ddup = framed_out();
  const float* pg = dgate_in.data() + offset;
  const float* pu = dup_in.data() + offset;
  seqrec::cuda::swiglu_forward(be, pg, pu, dh_out.data() + offset, n);
  // Element-wise with the CPU's operation order: the only differences are expf vs Eigen's
  // vectorised exp (each within a few ulp) and FMA contraction, so ≲ 1e-6 relative. rtol 1e-5
  // (~100 ulp); h and d_up are products (no cancellation), atol 1e-6·max covers only the extreme
  // gates' underflowing tails (CPU ~1e-37 where the GPU gives −0).
  check("swiglu.h", shape, unframe("swiglu.h", dh_out), h, 1e-5, 1e-6);

  seqrec::cuda::swiglu_backward(be, pg, pu, ddh.data() + offset, ddgate.data() + offset,
                                ddup.data() + offset, n);
  const auto dgate_gpu = unframe("swiglu.dgate", ddgate), dup_gpu = unframe("swiglu.dup", ddup);
  // d_gate has the factor 1 + g·(1 − σ(g)), which cancels near g ≈ −1.28: there its absolute
  // error is ~2e-7·|dh·u·σ|, hence atol 1e-5·max|d_gate|; elsewhere rtol 1e-5 as above.
  check("swiglu.dgate", shape, dgate_gpu, dgate, 1e-5, 1e-5);
  check("swiglu.dup", shape, dup_gpu, dup, 1e-5, 1e-6);

  // Rerun: bit-identical (element-wise, so this guards against reading uninitialised memory).
  auto ddgate2 = framed_out(), ddup2 = framed_out();
  seqrec::cuda::swiglu_backward(be, pg, pu, ddh.data() + offset, ddgate2.data() + offset,
                                ddup2.data() + offset, n);
  check_identical("swiglu.dgate.deterministic", shape,
                  slice(download(be, ddgate2), std::size_t(offset), std::size_t(offset + n)),
                  dgate_gpu);
  check_identical("swiglu.dup.deterministic", shape,
                  slice(download(be, ddup2), std::size_t(offset), std::size_t(offset + n)),
                  dup_gpu);

  // In place, as the CPU layer does it: d_gate written over dh. Same bits.
  auto dinplace = placed(dh), ddup3 = framed_out();
  seqrec::cuda::swiglu_backward(be, pg, pu, dinplace.data() + offset, dinplace.data() + offset,
                                ddup3.data() + offset, n);
  check_identical("swiglu.dgate.in_place", shape, unframe("swiglu.dgate.in_place", dinplace),
                  dgate_gpu);
  check_identical("swiglu.dup.in_place", shape,
                  slice(download(be, ddup3), std::size_t(offset), std::size_t(offset + n)),
                  dup_gpu);
}

}  // namespace

int main() {
  return run_checks(20240612, [](Backend& be, Rng& rng) {
    // Small odd widths (not multiples of 32; fewer rows than the backward's 512-block grid), D = 1
    // (x̂ = 0), the largest supported D (48 KiB of shared memory), and the study's shape.
    for (auto [n, d] : {std::pair<std::int64_t, std::int64_t>{1000, 50},
                        {7, 33},
                        {3, 1},
                        {4099, seqrec::cuda::detail::kLnMaxDim},
                        {20480, 1024}})
      guarded("layernorm", shape_str({{"N", n}, {"D", d}}), [&] { test_layernorm(be, rng, n, d); });
    guarded("layernorm.dim_limit", "-", [&] { test_layernorm_limit(be); });

    // Scalar path (N·F odd; or misaligned by one float), float4 path (small, and the study's
    // FFN width 4096 and GatedMlp's actual inner width for D = 1024, FFN = 4096).
    const std::int64_t gated = seqrec::policy::ffn::gated_inner_width(1024, 4096);
    for (auto [n, f, off] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{999, 37, 0},
                             {1000, 37, 0},
                             {64, 128, 1},
                             {20480, 4096, 0},
                             {20480, gated, 0}})
      guarded("swiglu", shape_str({{"N", n}, {"F", f}, {"offset", off}}),
              [&] { test_swiglu(be, rng, n, f, off); });
  });
}
