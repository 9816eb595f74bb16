// Inverted dropout on the GPU, fp32, with the counter hash of ops/dropout/dropout_cpu.hpp: element
// i of a site with key k is kept iff (mix64(k + i) >> 11) ≥ ⌊p · 2^53⌋, so the GPU draws exactly
// the CPU's masks, bit for bit. Nothing is stored for the backward: it recomputes the mask from
// the same (key, i), which costs one hash per element instead of one byte of memory traffic.
//
//   dropout_forward   x ← keep ? x · s : 0                   (in place; s = 1 / (1 − p))
//   dropout_add       out ← residual + (keep ? branch · s : 0)   (the residual connection)
//   dropout_backward  dst ← keep ? src · s : 0               (dst may be src)
//
// Packed rows: every form takes an optional row map `rows` (n / d entries):
// element i of the packed array is element rows[i / d]·d + i mod d of the full (B·L, d) array,
// and that full index is what the mask hashes. A model that computes only the non-padding rows
// thus draws exactly the masks of the full computation.
//
// p == 0 is the identity (dropout_backward then copies when dst ≠ src). Products and sums use
// round-to-nearest intrinsics, so nvcc cannot contract them into an FMA: the results are the CPU
// op's float for float.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
/// seqrec::mix64 (core/random.hpp), callable on the device: the SplitMix64 finaliser.
__host__ __device__ inline std::uint64_t dropout_mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// The CPU op's threshold: p · 2^53 truncated to an integer.
inline std::uint64_t dropout_threshold(double p) {
  return static_cast<std::uint64_t>(p * 9007199254740992.0);
}

__device__ inline bool dropout_keep(std::uint64_t key, std::int64_t i, std::uint64_t threshold) {
  return (dropout_mix64(key + static_cast<std::uint64_t>(i)) >> 11) >= threshold;
}

/// Calls f(i, full) for every element i < n of a packed array of rows of width d, full being its
/// index in the full (B·L, d) array (rows[i / d]·d + i mod d); without a row map the array is
/// flat and full = i. Mapped, the grid strides over rows and each block's threads over one row's
/// columns, so the row map is read once per row and no element pays a 64-bit division (a
/// division per element made these kernels compute-bound at the study's shape).
template <typename F>
__device__ inline void dropout_for_each(std::int64_t n, const std::int32_t* rows, std::int64_t d,
                                        F&& f) {
  if (rows == nullptr) {
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
      f(i, i);
    return;
  }
  const std::int64_t n_rows = n / d;
  for (std::int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
    const std::int64_t at = r * d, full = static_cast<std::int64_t>(rows[r]) * d;
    for (std::int64_t c = threadIdx.x; c < d; c += blockDim.x) f(at + c, full + c);
  }
}

/// Blocks for dropout_for_each: a row per block when mapped, an element per thread otherwise.
inline unsigned dropout_grid(std::int64_t n, const std::int32_t* rows, std::int64_t d) {
  const std::int64_t want = rows != nullptr ? n / d : (n + 255) / 256;
  return static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
}

}  // namespace detail

static __global__ void dropout_forward_kernel(float* __restrict__ x, std::int64_t n,
                                              std::uint64_t key, std::uint64_t threshold,
                                              float scale, const std::int32_t* __restrict__ rows,
                                              std::int64_t d) {
  detail::dropout_for_each(n, rows, d, [&](std::int64_t i, std::int64_t full) {
    x[i] = detail::dropout_keep(key, full, threshold) ? __fmul_rn(x[i], scale) : 0.f;
  });
}

static __global__ void dropout_add_kernel(float* out, const float* res,
                                          const float* __restrict__ branch, std::int64_t n,
                                          std::uint64_t key, std::uint64_t threshold, float scale,
                                          int active, const std::int32_t* __restrict__ rows,
                                          std::int64_t d) {
  detail::dropout_for_each(n, rows, d, [&](std::int64_t i, std::int64_t full) {
    float b = branch[i];
    if (active) b = detail::dropout_keep(key, full, threshold) ? __fmul_rn(b, scale) : 0.f;
    out[i] = __fadd_rn(res[i], b);
  });
}

static __global__ void dropout_backward_kernel(const float* src, float* dst, std::int64_t n,
                                               std::uint64_t key, std::uint64_t threshold,
                                               float scale, int active,
                                               const std::int32_t* __restrict__ rows,
                                               std::int64_t d) {
  detail::dropout_for_each(n, rows, d, [&](std::int64_t i, std::int64_t full) {
    const float g = src[i];
    dst[i] = !active ? g : (detail::dropout_keep(key, full, threshold) ? __fmul_rn(g, scale) : 0.f);
  });
}

/// In place: x (n) ← x · keep / (1 − p). p <= 0 is the identity. Row map as for dropout_add.
inline void dropout_forward(Backend& be, float* x, std::int64_t n, double p, std::uint64_t key,
                            const std::int32_t* rows = nullptr, std::int64_t d = 1) {
  if (p <= 0.0 || n == 0) return;
  dropout_forward_kernel<<<detail::dropout_grid(n, rows, d), 256, 0, be.stream()>>>(
      x, n, key, detail::dropout_threshold(p), static_cast<float>(1.0 / (1.0 - p)), rows, d);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// out (n) = residual + dropout(branch) with the mask of (key, p). out may alias residual. With a
/// row map (device, n / d entries) the arrays are packed rows of width d (see the file comment).
inline void dropout_add(Backend& be, float* out, const float* residual, const float* branch,
                        std::int64_t n, double p, std::uint64_t key,
                        const std::int32_t* rows = nullptr, std::int64_t d = 1) {
  if (n == 0) return;
  const bool active = p > 0.0;
  dropout_add_kernel<<<detail::dropout_grid(n, rows, d), 256, 0, be.stream()>>>(
      out, residual, branch, n, key, active ? detail::dropout_threshold(p) : 0,
      active ? static_cast<float>(1.0 / (1.0 - p)) : 1.f, active ? 1 : 0, rows, d);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dst (n) = src · keep / (1 − p), the mask recomputed from (key, p); dst may be src. p <= 0
/// copies (nothing to do when dst == src). Row map as for dropout_add.
inline void dropout_backward(Backend& be, const float* src, float* dst, std::int64_t n, double p,
                             std::uint64_t key, const std::int32_t* rows = nullptr,
                             std::int64_t d = 1) {
  if (n == 0) return;
  const bool active = p > 0.0;
  if (!active && src == dst) return;
  dropout_backward_kernel<<<detail::dropout_grid(n, rows, d), 256, 0, be.stream()>>>(
      src, dst, n, key, active ? detail::dropout_threshold(p) : 0,
      active ? static_cast<float>(1.0 / (1.0 - p)) : 1.f, active ? 1 : 0, rows, d);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
