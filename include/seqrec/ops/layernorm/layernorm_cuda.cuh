// LayerNorm on the GPU, fp32, matching ops/layernorm/layernorm_cpu.hpp exactly in semantics:
//   y = (x − mean) · rstd · g + b,  mean = Σx / D,  rstd = 1 / sqrt(Σ(x − mean)² / D + eps)
//   stats (N, 2) = (mean, rstd) per row, interleaved, as the CPU op stores them
//   backward with x̂ = (x − mean)·rstd and u = g·dy:
//     dx = rstd · (u − mean(u) − x̂ · mean(u · x̂))   (overwritten)
//     dg += Σ_rows dy · x̂,   db += Σ_rows dy        (accumulated)
//
// One warp per row: lane k handles columns k, k+32, …, and the row sums are xor-shuffle
// butterflies (every lane ends with the same bits). The forward is two-pass like the CPU op (mean,
// then the centred sum of squares), so it is as robust to a large common offset as the CPU.
//
// The backward writes dx directly and accumulates dg and db without atomics: a fixed grid of
// kLnPartialBlocks blocks walks the rows in a fixed pattern, each warp adds its rows' dy·x̂ and dy
// into its own shared-memory rows, the block sums its warps in order into a (2, blocks, D) partial
// buffer, and partial_sums_add adds the partials over blocks in a fixed order into dg and db.
// The result is bit-identical from run to run (and does not depend on the device's SM count).
#pragma once

#include <cstdint>
#include <string>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/ops/elementwise/partial_sums_cuda.cuh"
#include "seqrec/ops/rmsnorm/rmsnorm_cuda.cuh"  // detail::NormRows

namespace seqrec::cuda {

namespace detail {
constexpr int kLnForwardWarps = 8;     // forward: warps (rows in flight) per block
constexpr int kLnBackwardWarps = 4;    // backward: warps per block (shared memory: 2·4·D floats)
constexpr int kLnPartialBlocks = 512;  // fixed grid of the backward: fixes the summation order
constexpr std::int64_t kLnMaxDim = 1536;  // 2·4·1536 floats = 48 KiB, the default dynamic limit
}  // namespace detail

/// x (N, D) given by its rows (detail::NormRows of rmsnorm_cuda.cuh, or a source that makes
/// them); y (N, D) with leading dimension ldy, float or bf16 (store_as); g, b (D); stats (N, 2) =
/// (mean, rstd). Grid: ceil(N / 8) blocks of 8 warps, one warp per row.
template <typename OutT, typename Rows>
static __global__ void layernorm_forward_kernel(Rows x, const float* __restrict__ g,
                                                const float* __restrict__ b, OutT* __restrict__ y,
                                                float* __restrict__ stats, std::int64_t n,
                                                std::int64_t d, std::int64_t ldy, float eps) {
  const int lane = threadIdx.x & 31;
  const std::int64_t r =
      static_cast<std::int64_t>(blockIdx.x) * detail::kLnForwardWarps + (threadIdx.x >> 5);
  if (r >= n) return;  // whole warps leave together: r is uniform within a warp
  const float* xr = x.row(r, d, lane);
  float s = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) s += xr[j];
  const float mean = warp_sum(s) / static_cast<float>(d);
  float v = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) {
    const float c = xr[j] - mean;
    v += c * c;
  }
  const float var = warp_sum(v) / static_cast<float>(d);
  const float rstd = 1.f / sqrtf(var + eps);
  if (lane == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
  OutT* yr = y + r * ldy;
  for (std::int64_t j = lane; j < d; j += 32) store_as(yr + j, (xr[j] - mean) * rstd * g[j] + b[j]);
}

/// dx (N, D) overwritten (dx may be the same buffer as dy: each element is read before it is
/// written, by the same lane), or added to when Accumulate (then dx must not be dy); partial
/// (2, gridDim.x, D) receives this block's Σ dy·x̂ (first half) and Σ dy (second half) per column.
/// dy fp32 or bf16 (widened as read), leading dimension lddy. Dynamic shared memory: 2·4·D floats.
template <bool Accumulate, typename DyT>
static __global__ void layernorm_backward_kernel(const float* __restrict__ x,
                                                 const float* __restrict__ g,
                                                 const float* __restrict__ stats, const DyT* dy,
                                                 std::int64_t lddy, float* dx,
                                                 float* __restrict__ partial, std::int64_t n,
                                                 std::int64_t d) {
  extern __shared__ float smem[];  // (2, 4, D): per warp one row of dg sums, then of db sums
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* acc_g = smem + warp * d;
  float* acc_b = smem + (detail::kLnBackwardWarps + warp) * d;
  for (std::int64_t j = lane; j < d; j += 32) {  // each lane owns its columns of its warp's rows
    acc_g[j] = 0.f;
    acc_b[j] = 0.f;
  }
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * detail::kLnBackwardWarps;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * detail::kLnBackwardWarps + warp;
       r < n; r += stride) {
    const float* xr = x + r * d;
    const DyT* dyr = dy + r * lddy;
    float* dxr = dx + r * d;
    const float mean = stats[2 * r], rstd = stats[2 * r + 1];
    float mu = 0.f, mux = 0.f;
    for (std::int64_t j = lane; j < d; j += 32) {
      const float xh = (xr[j] - mean) * rstd;
      const float dyj = load_as(dyr + j);
      // u rounded explicitly (no FMA contraction with the sums below): the second loop subtracts
      // mean(u) from this same rounded u, so a row whose x̂ is 0 (D = 1, constant rows) gets
      // dx = 0 exactly, as the CPU op does. Contracted, g·dy − mu kept the product's unrounded
      // bits and left rstd × (its rounding error) ≈ 2.5e-5 there (seen on the H100).
      const float u = __fmul_rn(g[j], dyj);
      mu += u;
      mux += u * xh;
      acc_g[j] += dyj * xh;
      acc_b[j] += dyj;
    }
    // The CPU divides the sums by D (mu /= d); a division here too, not a multiply by 1/D.
    mu = warp_sum(mu) / static_cast<float>(d);
    mux = warp_sum(mux) / static_cast<float>(d);
    for (std::int64_t j = lane; j < d; j += 32) {
      const float xh = (xr[j] - mean) * rstd;
      write_or_add<Accumulate>(dxr + j, rstd * (__fmul_rn(g[j], load_as(dyr + j)) - mu - xh * mux));
    }
  }
  __syncthreads();
  const std::int64_t half = static_cast<std::int64_t>(gridDim.x) * d;  // offset of the db half
  for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float sg = 0.f, sb = 0.f;
    for (int w = 0; w < detail::kLnBackwardWarps; ++w) {
      sg += smem[w * d + j];
      sb += smem[(detail::kLnBackwardWarps + w) * d + j];
    }
    partial[static_cast<std::int64_t>(blockIdx.x) * d + j] = sg;
    partial[half + static_cast<std::int64_t>(blockIdx.x) * d + j] = sb;
  }
}

namespace detail {
/// layernorm_forward's launch over any row source (NormRows: a plain matrix; ResidualRows: the
/// residual add made on the way in, residual_norm_cuda.cuh), so both share one launch geometry;
/// `op` names the caller in the error for D < 1.
template <typename OutT, typename Rows>
void layernorm_forward_from(Backend& be, Rows x, const float* g, const float* b, OutT* y,
                            float* stats, std::int64_t n, std::int64_t d, float eps,
                            std::int64_t ldy, const char* op) {
  SEQREC_CHECK(d >= 1, std::string(op) + " (CUDA) needs D >= 1, got D = " + std::to_string(d));
  if (n == 0) return;
  const auto blocks = static_cast<unsigned>((n + kLnForwardWarps - 1) / kLnForwardWarps);
  layernorm_forward_kernel<OutT, Rows><<<blocks, 32 * kLnForwardWarps, 0, be.stream()>>>(
      x, g, b, y, stats, n, d, ldy > 0 ? ldy : d, eps);
  SEQREC_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

/// x, y (N, D); g, b (D); stats (N, 2) receives (mean, rstd) per row, the CPU op's layout.
/// Device pointers; runs on be.stream(). Any D ≥ 1 (the forward keeps nothing in shared memory).
/// OutT is float, or __nv_bfloat16 for a bf16 activation; ldy is y's leading dimension (0: D).
template <typename OutT>
void layernorm_forward(Backend& be, const float* x, const float* g, const float* b, OutT* y,
                       float* stats, std::int64_t n, std::int64_t d, float eps,
                       std::int64_t ldy = 0) {
  detail::layernorm_forward_from(be, detail::NormRows{x}, g, b, y, stats, n, d, eps, ldy,
                                 "layernorm_forward");
}

/// dx (N, D) overwritten (may be the same buffer as dy), or added to when `accumulate` (dx += the
/// input gradient, with the bits of add_into after an overwrite; dx must not be dy then); dg, db
/// (D) accumulated (+=), deterministically. stats as written by layernorm_forward (or the CPU
/// op). 1 ≤ D ≤ 1536: the backward keeps 2·4·D floats in shared memory, within the default
/// 48 KiB. DyT: dy fp32, or bf16 (a GEMM's bf16 output gradient, widened as read: the bits of the
/// fp32 call on the widened dy) with leading dimension lddy (0: D).
template <typename DyT = float>
void layernorm_backward(Backend& be, const float* x, const float* g, const float* stats,
                        const DyT* dy, float* dx, float* dg, float* db, std::int64_t n,
                        std::int64_t d, bool accumulate = false, std::int64_t lddy = 0) {
  SEQREC_CHECK(!accumulate || static_cast<const void*>(dx) != static_cast<const void*>(dy),
               "layernorm_backward: accumulating into dy itself");
  if (lddy == 0) lddy = d;
  SEQREC_CHECK(d >= 1 && d <= detail::kLnMaxDim,
               "layernorm_backward (CUDA) supports 1 <= D <= " + std::to_string(detail::kLnMaxDim) +
                   ", got D = " + std::to_string(d));
  if (n == 0) return;
  const std::int64_t needed = (n + detail::kLnBackwardWarps - 1) / detail::kLnBackwardWarps;
  const int blocks =
      static_cast<int>(needed < detail::kLnPartialBlocks ? needed : detail::kLnPartialBlocks);
  auto partial = be.buffer<float>(2 * static_cast<std::size_t>(blocks) * d);
  const std::size_t smem =
      sizeof(float) * 2 * detail::kLnBackwardWarps * static_cast<std::size_t>(d);
  if (accumulate)
    layernorm_backward_kernel<true, DyT>
        <<<blocks, 32 * detail::kLnBackwardWarps, smem, be.stream()>>>(x, g, stats, dy, lddy, dx,
                                                                       partial.data(), n, d);
  else
    layernorm_backward_kernel<false, DyT>
        <<<blocks, 32 * detail::kLnBackwardWarps, smem, be.stream()>>>(x, g, stats, dy, lddy, dx,
                                                                       partial.data(), n, d);
  SEQREC_CUDA_CHECK_LAUNCH();
  partial_sums_add(be, partial.data(), dg, blocks, d);
  partial_sums_add(be, partial.data() + static_cast<std::int64_t>(blocks) * d, db, blocks, d);
}

}  // namespace seqrec::cuda
