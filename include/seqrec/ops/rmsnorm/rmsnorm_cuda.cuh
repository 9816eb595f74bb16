// RMSNorm on the GPU, fp32, matching ops/rmsnorm/rmsnorm_cpu.hpp:
//   y = x · rstd · g,  rstd = 1 / sqrt(mean(x²) + eps)                  (per row of width D)
//   dx = g·dy·rstd − x · Σ(g·dy·x) · rstd³ / D,  dg += Σ_rows dy·x·rstd.
// One warp per row: lane k handles columns k, k+32, …, and the row sums are warp shuffles. The
// backward writes dx directly and accumulates dg without atomics: a fixed grid of blocks walks the
// rows in a fixed pattern, each warp adds its rows' dy·x·rstd into its own shared-memory row, the
// block sums its warps in order into a (blocks, D) partial buffer, and partial_sums_add adds the
// partials into dg in a fixed order. The result is bit-identical from run to run.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/ops/elementwise/partial_sums_cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kRmsWarps = 8;  // warps (rows in flight) per block
// Fixed grid of the backward (fixes the summation order): 768 blocks of 32 KiB shared memory at
// D 1024 fit an H100 in one wave, ~46 warps per SM where 256 blocks left it at ~16 warps, too few
// loads in flight for a kernel bound by memory.
constexpr int kRmsPartialBlocks = 768;

/// Where a norm's forward kernel gets row r of its input: row(r, d, lane) returns it, after
/// making the lane's columns (lane, lane + 32, …) of it if it makes them (the residual add fused
/// into the norm: ops/dropout/residual_norm_cuda.cuh). Plain: the rows of x.
struct NormRows {
  const float* x;
  __device__ const float* row(std::int64_t r, std::int64_t d, int) const { return x + r * d; }
};
}  // namespace detail

/// x (N, D) given by its rows (detail::NormRows, or a source that makes them); y (N, D) with
/// leading dimension ldy, float or bf16 (store_as); g (D); rstd (N). Grid: ceil(N / 8) blocks of
/// 8 warps, one warp per row.
template <typename OutT, typename Rows>
static __global__ void rmsnorm_forward_kernel(Rows x, const float* __restrict__ g,
                                              OutT* __restrict__ y, float* __restrict__ rstd,
                                              std::int64_t n, std::int64_t d, std::int64_t ldy,
                                              float eps) {
  const int lane = threadIdx.x & 31;
  const std::int64_t r =
      static_cast<std::int64_t>(blockIdx.x) * detail::kRmsWarps + (threadIdx.x >> 5);
  if (r >= n) return;
  const float* xr = x.row(r, d, lane);
  float ss = 0.f;
  for (std::int64_t j = lane; j < d; j += 32) ss += xr[j] * xr[j];
  ss = warp_sum(ss);
  const float inv = 1.f / sqrtf(ss / static_cast<float>(d) + eps);
  if (lane == 0) rstd[r] = inv;
  OutT* yr = y + r * ldy;
  for (std::int64_t j = lane; j < d; j += 32) store_as(yr + j, xr[j] * inv * g[j]);
}

/// dx (N, D) overwritten (Accumulate: added to); partial (gridDim.x, D) receives this block's
/// Σ dy·x·rstd per column. dy (N, D) fp32 or bf16 (widened) with leading dimension lddy. Dynamic
/// shared memory: 8·D floats.
template <bool Accumulate, typename DyT>
static __global__ void rmsnorm_backward_kernel(const float* __restrict__ x,
                                               const float* __restrict__ g,
                                               const float* __restrict__ rstd,
                                               const DyT* __restrict__ dy, std::int64_t lddy,
                                               float* __restrict__ dx, float* __restrict__ partial,
                                               std::int64_t n, std::int64_t d) {
  extern __shared__ float smem[];  // (8, D): one row of column sums per warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* acc = smem + warp * d;
  for (std::int64_t j = lane; j < d; j += 32) acc[j] = 0.f;  // each lane owns its columns
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * detail::kRmsWarps;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * detail::kRmsWarps + warp; r < n;
       r += stride) {
    const float* xr = x + r * d;
    const DyT* dyr = dy + r * lddy;
    float* dxr = dx + r * d;
    const float inv = rstd[r];
    float dot = 0.f;
    for (std::int64_t j = lane; j < d; j += 32) {
      const float dyj = load_as(dyr + j);
      dot += g[j] * dyj * xr[j];
      acc[j] += dyj * xr[j] * inv;
    }
    dot = warp_sum(dot);
    const float c = dot * inv * inv * inv / static_cast<float>(d);
    for (std::int64_t j = lane; j < d; j += 32)
      write_or_add<Accumulate>(dxr + j, g[j] * load_as(dyr + j) * inv - xr[j] * c);
  }
  __syncthreads();
  for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float s = 0.f;
    for (int w = 0; w < detail::kRmsWarps; ++w) s += smem[w * d + j];
    partial[static_cast<std::int64_t>(blockIdx.x) * d + j] = s;
  }
}

namespace detail {
/// rmsnorm_forward's launch over any row source (NormRows: a plain matrix; ResidualRows: the
/// residual add made on the way in, residual_norm_cuda.cuh), so both share one launch geometry.
template <typename OutT, typename Rows>
void rmsnorm_forward_from(Backend& be, Rows x, const float* g, OutT* y, float* rstd, std::int64_t n,
                          std::int64_t d, float eps, std::int64_t ldy) {
  if (n == 0) return;
  const auto blocks = static_cast<unsigned>((n + kRmsWarps - 1) / kRmsWarps);
  rmsnorm_forward_kernel<OutT, Rows>
      <<<blocks, 32 * kRmsWarps, 0, be.stream()>>>(x, g, y, rstd, n, d, ldy > 0 ? ldy : d, eps);
  SEQREC_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

/// x, y (N, D); g (D); rstd (N) receives 1/rms. Device pointers; runs on be.stream(). OutT is
/// float, or __nv_bfloat16 for a bf16 activation (y rounded as cast_to_bf16 rounds); ldy is y's
/// leading dimension (0: D).
template <typename OutT>
void rmsnorm_forward(Backend& be, const float* x, const float* g, OutT* y, float* rstd,
                     std::int64_t n, std::int64_t d, float eps, std::int64_t ldy = 0) {
  detail::rmsnorm_forward_from(be, detail::NormRows{x}, g, y, rstd, n, d, eps, ldy);
}

/// dx (N, D) overwritten, or added to when `accumulate` (dx += the input gradient: the residual
/// stream's sum, with the bits of add_into after an overwrite); dg (D) accumulated (+=),
/// deterministically. dx must not alias dy or x (the kernel's pointers are __restrict__).
/// D ≤ 1536 (the backward keeps 8·D floats in shared memory, within the default 48 KiB).
/// DyT: dy fp32, or bf16 (a GEMM's bf16 output gradient, widened as read: the bits of the fp32
/// call on the widened dy) with leading dimension lddy (0: D).
template <typename DyT = float>
void rmsnorm_backward(Backend& be, const float* x, const float* g, const float* rstd, const DyT* dy,
                      float* dx, float* dg, std::int64_t n, std::int64_t d, bool accumulate = false,
                      std::int64_t lddy = 0) {
  SEQREC_CHECK(d >= 1 && d <= 1536,
               "rmsnorm_backward (CUDA) supports 1 <= D <= 1536, got D = " + std::to_string(d));
  SEQREC_CHECK(static_cast<const void*>(dx) != static_cast<const void*>(dy) && dx != x,
               "rmsnorm_backward (CUDA): dx must not alias dy or x");
  if (lddy == 0) lddy = d;
  if (n == 0) return;
  const std::int64_t needed = (n + detail::kRmsWarps - 1) / detail::kRmsWarps;
  const int blocks =
      static_cast<int>(needed < detail::kRmsPartialBlocks ? needed : detail::kRmsPartialBlocks);
  auto partial = be.buffer<float>(static_cast<std::size_t>(blocks) * d);
  const std::size_t smem = sizeof(float) * detail::kRmsWarps * static_cast<std::size_t>(d);
  if (accumulate)
    rmsnorm_backward_kernel<true, DyT><<<blocks, 32 * detail::kRmsWarps, smem, be.stream()>>>(
        x, g, rstd, dy, lddy, dx, partial.data(), n, d);
  else
    rmsnorm_backward_kernel<false, DyT><<<blocks, 32 * detail::kRmsWarps, smem, be.stream()>>>(
        x, g, rstd, dy, lddy, dx, partial.data(), n, d);
  SEQREC_CUDA_CHECK_LAUNCH();
  partial_sums_add(be, partial.data(), dg, blocks, d);
}

}  // namespace seqrec::cuda
