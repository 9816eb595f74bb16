// Token embedding on the GPU, fp32, matching ops/embedding/embedding_cpu.hpp:
//   forward  x[n] = table[tokens[n]] · scale                    tokens (N), table (V, D), x (N, D)
//   backward dtable[tokens[n]] += dx[n] · scale
// The forward is a plain gather, one thread per output element. The backward uses no atomics and
// is deterministic: (token, row) pairs are sorted by token with cub::DeviceRadixSort (stable, so
// rows of one token stay in ascending order), cub::DeviceRunLengthEncode + cub::DeviceScan give
// the start and length of each token's run, and one block per run sums its rows and adds the sum
// into that token's table row. Inside a block, 8 row groups of 32 lanes split the run's rows
// (row k goes to group k mod 8) for memory parallelism on frequent tokens such as padding; the 8
// group sums are added in order, so the result is the same every run.
#pragma once

#include <cstdint>
#include <cub/cub.cuh>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kEmbGroups = 8;  // row groups per block in the backward
}

/// x[i] = table[tokens[i / D] · D + i mod D] · scale, i < N·D (grid-stride).
static __global__ void embedding_forward_kernel(const std::int32_t* __restrict__ tokens,
                                                const float* __restrict__ table,
                                                float* __restrict__ x, std::int64_t n,
                                                std::int64_t d, float scale) {
  const std::int64_t total = n * d;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / d, j = i - r * d;
    x[i] = table[static_cast<std::int64_t>(tokens[r]) * d + j] * scale;
  }
}

/// Fills rows[i] = i (the values sorted alongside the tokens).
static __global__ void embedding_iota_kernel(std::int32_t* __restrict__ rows, std::int64_t n) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) rows[i] = static_cast<std::int32_t>(i);
}

/// One block (32 × 8 threads) per run of equal tokens in sorted order. run_token (R), run_start
/// (R), run_length (R); *num_runs ≤ gridDim.x is read on the device. sorted_rows (N) are row
/// indices of dx (N, D) grouped by token; dtable (V, D) += Σ_run dx[row] · scale.
static __global__ void embedding_backward_kernel(
    const std::int32_t* __restrict__ run_token, const std::int32_t* __restrict__ run_start,
    const std::int32_t* __restrict__ run_length, const std::int32_t* __restrict__ num_runs,
    const std::int32_t* __restrict__ sorted_rows, const float* __restrict__ dx,
    float* __restrict__ dtable, std::int64_t d, float scale) {
  __shared__ float part[detail::kEmbGroups][32];
  const int run = blockIdx.x;
  if (run >= *num_runs) return;  // uniform over the block: no __syncthreads is skipped by some
  const int lane = threadIdx.x, group = threadIdx.y;
  const std::int64_t begin = run_start[run], end = begin + run_length[run];
  float* out = dtable + static_cast<std::int64_t>(run_token[run]) * d;
  for (std::int64_t c0 = 0; c0 < d; c0 += 32) {
    const std::int64_t j = c0 + lane;
    float acc = 0.f;
    if (j < d) {
      for (std::int64_t k = begin + group; k < end; k += detail::kEmbGroups)
        acc += dx[static_cast<std::int64_t>(sorted_rows[k]) * d + j] * scale;
    }
    part[group][lane] = acc;
    __syncthreads();
    if (group == 0 && j < d) {
      float s = 0.f;
      for (int gi = 0; gi < detail::kEmbGroups; ++gi) s += part[gi][lane];
      out[j] += s;
    }
    __syncthreads();
  }
}

/// tokens (N) → x (N, D) = table[tokens] · scale. Tokens must already be validated (< V).
inline void embedding_forward(Backend& be, const std::int32_t* tokens, const float* table, float* x,
                              std::int64_t n, std::int64_t d, float scale) {
  const std::int64_t total = n * d;
  if (total == 0) return;
  const std::int64_t want = (total + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
  embedding_forward_kernel<<<blocks, 256, 0, be.stream()>>>(tokens, table, x, n, d, scale);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dtable (V, D) += scatter of dx (N, D) · scale by tokens (N), deterministic. `vocab` = V bounds
/// the radix sort's key bits; tokens must lie in [0, V). N < 2³¹.
inline void embedding_backward(Backend& be, const std::int32_t* tokens, const float* dx,
                               float* dtable, std::int64_t n, std::int64_t d, std::int64_t vocab,
                               float scale) {
  SEQREC_CHECK(n < (std::int64_t{1} << 31), "embedding_backward (CUDA): N must be < 2^31");
  SEQREC_CHECK(vocab >= 1 && vocab <= (std::int64_t{1} << 31) - 1,
               "embedding_backward (CUDA): vocab out of range");
  if (n == 0 || d == 0) return;
  const int num = static_cast<int>(n);
  int end_bit = 1;
  while (end_bit < 31 && (std::int64_t{1} << end_bit) < vocab) ++end_bit;

  auto rows = be.buffer<std::int32_t>(n);
  auto sorted_tokens = be.buffer<std::int32_t>(n);
  auto sorted_rows = be.buffer<std::int32_t>(n);
  auto run_token = be.buffer<std::int32_t>(n);
  auto run_length = be.buffer<std::int32_t>(n);
  auto run_start = be.buffer<std::int32_t>(n);
  auto num_runs = be.buffer<std::int32_t>(1);

  std::size_t t_sort = 0, t_rle = 0, t_scan = 0;
  SEQREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, t_sort, tokens, sorted_tokens.data(),
                                                    rows.data(), sorted_rows.data(), num, 0,
                                                    end_bit, be.stream()));
  SEQREC_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, t_rle, sorted_tokens.data(),
                                                       run_token.data(), run_length.data(),
                                                       num_runs.data(), num, be.stream()));
  SEQREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, t_scan, run_length.data(),
                                                  run_start.data(), num, be.stream()));
  std::size_t t_max = t_sort > t_rle ? t_sort : t_rle;
  t_max = t_max > t_scan ? t_max : t_scan;
  auto temp = be.buffer<std::byte>(t_max);

  embedding_iota_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, be.stream()>>>(
      rows.data(), n);
  SEQREC_CUDA_CHECK_LAUNCH();
  std::size_t t = t_max;
  SEQREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), t, tokens, sorted_tokens.data(),
                                                    rows.data(), sorted_rows.data(), num, 0,
                                                    end_bit, be.stream()));
  // Encode writes only the first *num_runs lengths; the scan below runs over all N (the count
  // stays on the device), so the tail is cleared to keep it from reading uninitialised memory.
  SEQREC_CUDA_CHECK(cudaMemsetAsync(run_length.data(), 0, run_length.bytes(), be.stream()));
  t = t_max;
  SEQREC_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(temp.data(), t, sorted_tokens.data(),
                                                       run_token.data(), run_length.data(),
                                                       num_runs.data(), num, be.stream()));
  t = t_max;
  SEQREC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data(), t, run_length.data(),
                                                  run_start.data(), num, be.stream()));
  embedding_backward_kernel<<<static_cast<unsigned>(num), dim3(32, detail::kEmbGroups), 0,
                              be.stream()>>>(run_token.data(), run_start.data(), run_length.data(),
                                             num_runs.data(), sorted_rows.data(), dx, dtable, d,
                                             scale);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
