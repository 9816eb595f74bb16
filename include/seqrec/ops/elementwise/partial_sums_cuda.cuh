// The second pass of every deterministic column reduction of the CUDA backend (bias gradients,
// norm gains and biases): a first kernel leaves a (parts, cols) buffer of partial column sums,
// one row per block or row chunk, and partial_sums_add adds its rows into the output in a fixed
// order. No atomics: the result repeats bit for bit and does not depend on the device.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kPartialStrides = 16;  // threads per column: block = 32 columns × 16
}  // namespace detail

/// out[c] += Σ_p partial[p, c] for c < cols. Block (32, 16): thread (tx, ty) sums rows ty, ty + 16,
/// … in order for column c = 32·blockIdx.x + tx, then thread ty = 0 adds the 16 strided sums in
/// order. Each thread has parts / 16 independent loads, not parts dependent ones: with a few
/// hundred parts and a few hundred columns, one thread per column left most of the GPU idle.
static __global__ void partial_sums_add_kernel(const float* __restrict__ partial,
                                               float* __restrict__ out, int parts,
                                               std::int64_t cols) {
  __shared__ float strided[detail::kPartialStrides][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * 32 + tx;
  float s = 0.f;
  if (c < cols)
    for (int p = ty; p < parts; p += detail::kPartialStrides)
      s += partial[static_cast<std::int64_t>(p) * cols + c];
  strided[ty][tx] = s;
  __syncthreads();
  if (ty != 0 || c >= cols) return;
  float t = 0.f;
  for (int k = 0; k < detail::kPartialStrides; ++k) t += strided[k][tx];
  out[c] += t;
}

/// out (cols) += the column sums of partial (parts, cols), in a fixed order. Device pointers.
inline void partial_sums_add(Backend& be, const float* partial, float* out, int parts,
                             std::int64_t cols) {
  if (cols == 0) return;
  const dim3 block(32, detail::kPartialStrides);
  partial_sums_add_kernel<<<static_cast<unsigned>((cols + 31) / 32), block, 0, be.stream()>>>(
      partial, out, parts, cols);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
