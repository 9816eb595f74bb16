// Row packing on the GPU: moving between the full (B·L, W) layout of a batch and the packed
// layout that holds only the listed rows (the non-padding positions), in list order.
//   gather_rows   dst (n, W)   = src[rows[i]]                 (full → packed)
//   scatter_rows  dst (N, W)   : dst[rows[i]] = src[i], every other row 0   (packed → full)
// Row lists come from the host (ascending, distinct). Pure copies: exact.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

/// dst row i (leading dimension ld, float or bf16 via store_as) = src row rows[i] (width w).
template <typename Dst>
static __global__ void gather_rows_kernel(const float* __restrict__ src,
                                          const std::int32_t* __restrict__ rows,
                                          Dst* __restrict__ dst, std::int64_t n, std::int64_t w,
                                          std::int64_t ld) {
  const std::int64_t total = n * w;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / w, c = i - r * w;
    store_as(dst + r * ld + c, src[static_cast<std::int64_t>(rows[r]) * w + c]);
  }
}

static __global__ void scatter_rows_kernel(const float* __restrict__ src,
                                           const std::int32_t* __restrict__ rows,
                                           float* __restrict__ dst, std::int64_t n,
                                           std::int64_t w) {
  const std::int64_t total = n * w;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / w;
    dst[static_cast<std::int64_t>(rows[r]) * w + (i - r * w)] = src[i];
  }
}

namespace detail {
inline unsigned rows_blocks(std::int64_t total) {
  const std::int64_t want = (total + 255) / 256;
  return static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
}
}  // namespace detail

/// dst (n, w) = src rows rows[0..n) of width w. Device pointers. Dst is float, or __nv_bfloat16
/// (a bf16 activation: rounded as cast_to_bf16 rounds); ld is dst's leading dimension (0: w).
template <typename Dst>
void gather_rows(Backend& be, const float* src, const std::int32_t* rows, Dst* dst, std::int64_t n,
                 std::int64_t w, std::int64_t ld = 0) {
  if (n * w == 0) return;
  gather_rows_kernel<Dst>
      <<<detail::rows_blocks(n * w), 256, 0, be.stream()>>>(src, rows, dst, n, w, ld > 0 ? ld : w);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dst (full_rows, w): zero, then row rows[i] = src row i for i < n. Device pointers.
inline void scatter_rows(Backend& be, const float* src, const std::int32_t* rows, float* dst,
                         std::int64_t n, std::int64_t full_rows, std::int64_t w) {
  if (full_rows * w == 0) return;
  SEQREC_CUDA_CHECK(cudaMemsetAsync(dst, 0, sizeof(float) * full_rows * w, be.stream()));
  if (n * w == 0) return;
  scatter_rows_kernel<<<detail::rows_blocks(n * w), 256, 0, be.stream()>>>(src, rows, dst, n, w);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
