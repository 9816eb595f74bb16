// Rotary position embedding on the GPU, fp32, matching ops::rope_apply (ops/rope/rope_cpu.hpp):
// in place on the Q and K thirds of a fused (B·L, 3D) QKV buffer, half-split pairing within each
// head of width dh (element i with i + dh/2), slot l rotated by θ = l · base^(−2i/dh); sign −1
// rotates back (the backward on dqkv).
//
// The cos / sin table is computed on the host with the CPU op's double-precision expression and
// rounded to float the same way, then uploaded once per window length: the GPU rotates by exactly
// the CPU's float angles. The rotation itself uses round-to-nearest intrinsics (no FMA
// contraction), so given equal inputs it returns the CPU op's floats.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
/// One half-split pair (a, b) = (v[i], v[i + dh/2]) rotated by (c, n) = (cos θ, ±sin θ):
/// x = a·c − b·n, y = b·c + a·n, with round-to-nearest products and sums (no FMA contraction),
/// the CPU op's floats. Every RoPE rotation on the GPU goes through here, fused or not.
__device__ inline void rope_rotate(float a, float b, float c, float n, float& x, float& y) {
  x = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, n));
  y = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, n));
}
}  // namespace detail

/// What a kernel needs to rotate rows itself (attention fuses RoPE into its loads and stores):
/// the (L, dh/2) cos and sin tables and the packed-row map (null: row r sits at slot r mod L).
struct RopeView {
  const float* cos = nullptr;
  const float* sin = nullptr;
  const std::int32_t* row_map = nullptr;
  int length = 0, half = 0;
  /// Offset of row r's angles in cos and sin.
  __device__ int offset(int r) const {
    return ((row_map != nullptr ? row_map[r] : r) % length) * half;
  }
};

/// cos and sin (L, dh/2) for one (L, dh, base) on the device; rebuilt by ensure() on a change.
class RopeTable {
 public:
  void ensure(Backend& be, std::int64_t length, std::int64_t head_dim, double base) {
    if (length == length_ && head_dim == head_dim_ && base == base_) return;
    SEQREC_CHECK(head_dim >= 2 && head_dim % 2 == 0,
                 "RoPE (CUDA) needs an even head width, got " + std::to_string(head_dim));
    const std::int64_t half = head_dim / 2;
    std::vector<float> cs(static_cast<std::size_t>(length * half)), sn(cs.size());
    for (std::int64_t l = 0; l < length; ++l)
      for (std::int64_t i = 0; i < half; ++i) {
        // The CPU op's expression, term for term.
        const double theta = double(l) * std::pow(base, -2.0 * double(i) / double(head_dim));
        cs[l * half + i] = static_cast<float>(std::cos(theta));
        sn[l * half + i] = static_cast<float>(std::sin(theta));
      }
    cos_ = be.buffer<float>(cs.size());
    sin_ = be.buffer<float>(sn.size());
    SEQREC_CUDA_CHECK(
        cudaMemcpyAsync(cos_.data(), cs.data(), cos_.bytes(), cudaMemcpyHostToDevice, be.stream()));
    SEQREC_CUDA_CHECK(
        cudaMemcpyAsync(sin_.data(), sn.data(), sin_.bytes(), cudaMemcpyHostToDevice, be.stream()));
    be.synchronize();  // cs and sn are locals
    length_ = length;
    head_dim_ = head_dim;
    base_ = base;
  }
  /// The table for kernels that rotate rows themselves; row_map as for rope_apply.
  RopeView view(const std::int32_t* row_map = nullptr) const noexcept {
    return {cos_.data(), sin_.data(), row_map, static_cast<int>(length_),
            static_cast<int>(head_dim_ / 2)};
  }
  std::int64_t length() const noexcept { return length_; }
  std::int64_t head_dim() const noexcept { return head_dim_; }
  const float* cos() const noexcept { return cos_.data(); }
  const float* sin() const noexcept { return sin_.data(); }

 private:
  std::int64_t length_ = -1, head_dim_ = -1;
  double base_ = 0;
  DeviceBuffer<float> cos_, sin_;
};

/// One thread per (row r, part ∈ {Q, K}, pair index k over heads·half): rotates one pair. Row r
/// sits at window slot (row_map ? row_map[r] : r) mod L.
static __global__ void rope_apply_kernel(float* __restrict__ qkv, const float* __restrict__ cs,
                                         const float* __restrict__ sn,
                                         const std::int32_t* __restrict__ row_map,
                                         std::int64_t rows, std::int64_t L, std::int64_t D,
                                         std::int64_t dh, float sign) {
  const std::int64_t half = dh / 2, pairs = D / 2;  // pairs per part: heads · half
  const std::int64_t total = rows * 2 * pairs;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / (2 * pairs);
    const std::int64_t rem = idx - r * 2 * pairs;
    const std::int64_t part = rem / pairs, k = rem - part * pairs;
    const std::int64_t h = k / half, i = k - h * half;
    const std::int64_t l = (row_map != nullptr ? static_cast<std::int64_t>(row_map[r]) : r) % L;
    float* v = qkv + r * 3 * D + part * D + h * dh;
    const float c = cs[l * half + i];
    const float n = sign > 0.f ? sn[l * half + i] : -sn[l * half + i];
    detail::rope_rotate(v[i], v[i + half], c, n, v[i], v[i + half]);
  }
}

/// qkv (B·L, 3D), device: Q and K of every head rotated by their slot's angle; sign = +1 forward,
/// −1 for the backward on dqkv. `table` must hold (L, dh, base) (RopeTable::ensure). Packed rows:
/// with row_map (device, n_rows entries: each row's index in the full (B·L) layout), qkv holds
/// those n_rows rows only and row r is rotated for slot row_map[r] mod L.
inline void rope_apply(Backend& be, const RopeTable& table, float* qkv, std::int64_t batch,
                       std::int64_t length, std::int64_t dim, std::int64_t heads, int sign,
                       const std::int32_t* row_map = nullptr, std::int64_t n_rows = 0) {
  const std::int64_t rows = row_map != nullptr ? n_rows : batch * length;
  const std::int64_t total = rows * dim;  // rows · 2 parts · D/2 pairs
  if (total == 0) return;
  const std::int64_t want = (total + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
  rope_apply_kernel<<<blocks, 256, 0, be.stream()>>>(qkv, table.cos(), table.sin(), row_map, rows,
                                                     length, dim, dim / heads,
                                                     sign > 0 ? 1.f : -1.f);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
