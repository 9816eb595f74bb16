// SwiGLU's element-wise part on the GPU, fp32, matching policy::ffn::detail::swiglu and
// swiglu_backward (policy/feed_forward.hpp), for a CUDA GatedMlp that mirrors the CPU layer GEMM
// for GEMM: gate = x·Wgᵀ and up = x·Wuᵀ are two separate contiguous (N, F') arrays, then
//   forward   h = silu(gate) ⊙ up,            silu(g) = g / (1 + exp(−g))
//   backward  d_up   = dh ⊙ g ⊙ σ(g)                              (σ(g) = 1 / (1 + exp(−g)))
//             d_gate = dh ⊙ (u ⊙ σ(g) ⊙ (1 + g ⊙ (1 − σ(g))))   (= dh ⊙ u ⊙ silu'(g))
// with the CPU's operation order (a division for silu in the forward, the same association of the
// products), expf in fp32 (no fast-math intrinsics), so results differ from the CPU's only by
// expf against Eigen's vectorised exp (a few ulp) and FMA contraction.
//
// Both operate on flat arrays of n = N·F' elements. They read and write float4 when every pointer
// is 16-byte aligned and n % 4 == 0 (true for the model's buffers whenever F' % 4 == 0: the
// caching allocator returns 256-byte aligned blocks), and fall back to a scalar kernel otherwise.
// Purely element-wise, hence deterministic.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {

inline unsigned swiglu_blocks(std::int64_t items) {  // grid-stride loops cap the grid
  const std::int64_t want = (items + 255) / 256;
  return static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
}

inline bool swiglu_aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

/// silu(g) · u, as the CPU writes it: g / (1 + exp(−g)) * u.
__device__ inline float swiglu_fwd(float g, float u) { return g / (1.f + expf(-g)) * u; }

/// From da = d loss / d h: du = da·g·σ(g) and dg = da·(u·σ(g)·(1 + g·(1 − σ(g)))).
__device__ inline void swiglu_bwd(float g, float u, float da, float& dg, float& du) {
  const float s = 1.f / (1.f + expf(-g));
  du = da * g * s;
  dg = da * (u * s * (1.f + g * (1.f - s)));
}

}  // namespace detail

static __global__ void swiglu_forward_kernel(const float* __restrict__ gate,
                                             const float* __restrict__ up, float* __restrict__ h,
                                             std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    h[i] = detail::swiglu_fwd(gate[i], up[i]);
}

/// n4 = n / 4 float4 groups.
static __global__ void swiglu_forward_vec4_kernel(const float4* __restrict__ gate,
                                                  const float4* __restrict__ up,
                                                  float4* __restrict__ h, std::int64_t n4) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float4 g = gate[i], u = up[i];
    float4 o;
    o.x = detail::swiglu_fwd(g.x, u.x);
    o.y = detail::swiglu_fwd(g.y, u.y);
    o.z = detail::swiglu_fwd(g.z, u.z);
    o.w = detail::swiglu_fwd(g.w, u.w);
    h[i] = o;
  }
}

/// h (rows, cols) with leading dimension ldh, as OutT, = silu(gate) ⊙ up over contiguous (rows,
/// cols) inputs: the bf16-activation form (same formula, so h equals the rounding of the fp32
/// kernels' output). One block per row at a time.
template <typename OutT>
static __global__ void swiglu_forward_rows_kernel(const float* __restrict__ gate,
                                                  const float* __restrict__ up,
                                                  OutT* __restrict__ h, std::int64_t rows,
                                                  std::int64_t cols, std::int64_t ldh) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      store_as(h + r * ldh + c, detail::swiglu_fwd(gate[r * cols + c], up[r * cols + c]));
}

// The backward kernels take no __restrict__ on dh / dgate / dup: dgate may be dh itself (the CPU
// layer overwrites d(act) with d(gate) in place). Each element is read before it is written, by
// the same thread, so that aliasing is safe.
static __global__ void swiglu_backward_kernel(const float* gate, const float* up, const float* dh,
                                              float* dgate, float* dup, std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float dg, du;
    detail::swiglu_bwd(gate[i], up[i], dh[i], dg, du);
    dgate[i] = dg;
    dup[i] = du;
  }
}

static __global__ void swiglu_backward_vec4_kernel(const float4* gate, const float4* up,
                                                   const float4* dh, float4* dgate, float4* dup,
                                                   std::int64_t n4) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n4;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float4 g = gate[i], u = up[i], a = dh[i];
    float4 og, ou;
    detail::swiglu_bwd(g.x, u.x, a.x, og.x, ou.x);
    detail::swiglu_bwd(g.y, u.y, a.y, og.y, ou.y);
    detail::swiglu_bwd(g.z, u.z, a.z, og.z, ou.z);
    detail::swiglu_bwd(g.w, u.w, a.w, og.w, ou.w);
    dgate[i] = og;
    dup[i] = ou;
  }
}

/// h (n) = silu(gate) ⊙ up over n = N·F' elements; gate, up, h device pointers, h distinct from
/// both inputs. Runs on be.stream().
inline void swiglu_forward(Backend& be, const float* gate, const float* up, float* h,
                           std::int64_t n) {
  if (n <= 0) return;
  if (n % 4 == 0 && detail::swiglu_aligned16(gate) && detail::swiglu_aligned16(up) &&
      detail::swiglu_aligned16(h)) {
    const std::int64_t n4 = n / 4;
    swiglu_forward_vec4_kernel<<<detail::swiglu_blocks(n4), 256, 0, be.stream()>>>(
        reinterpret_cast<const float4*>(gate), reinterpret_cast<const float4*>(up),
        reinterpret_cast<float4*>(h), n4);
  } else {
    swiglu_forward_kernel<<<detail::swiglu_blocks(n), 256, 0, be.stream()>>>(gate, up, h, n);
  }
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// bf16 h (rows, cols) with leading dimension ldh = silu(gate) ⊙ up, gate and up contiguous
/// (rows, cols): swiglu_forward then cast_to_bf16 in one pass. Runs on be.stream().
inline void swiglu_forward(Backend& be, const float* gate, const float* up, __nv_bfloat16* h,
                           std::int64_t rows, std::int64_t cols, std::int64_t ldh) {
  if (rows <= 0 || cols <= 0) return;
  const auto blocks = static_cast<unsigned>(rows < 65535 * 8 ? rows : 65535 * 8);
  swiglu_forward_rows_kernel<__nv_bfloat16>
      <<<blocks, 256, 0, be.stream()>>>(gate, up, h, rows, cols, ldh);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// From dh (n) = d loss / d h: dgate (n) and dup (n), both overwritten. dgate may be the same
/// buffer as dh (the CPU layer's in-place use); dup must be a separate buffer. Runs on
/// be.stream().
inline void swiglu_backward(Backend& be, const float* gate, const float* up, const float* dh,
                            float* dgate, float* dup, std::int64_t n) {
  if (n <= 0) return;
  if (n % 4 == 0 && detail::swiglu_aligned16(gate) && detail::swiglu_aligned16(up) &&
      detail::swiglu_aligned16(dh) && detail::swiglu_aligned16(dgate) &&
      detail::swiglu_aligned16(dup)) {
    const std::int64_t n4 = n / 4;
    swiglu_backward_vec4_kernel<<<detail::swiglu_blocks(n4), 256, 0, be.stream()>>>(
        reinterpret_cast<const float4*>(gate), reinterpret_cast<const float4*>(up),
        reinterpret_cast<const float4*>(dh), reinterpret_cast<float4*>(dgate),
        reinterpret_cast<float4*>(dup), n4);
  } else {
    swiglu_backward_kernel<<<detail::swiglu_blocks(n), 256, 0, be.stream()>>>(gate, up, dh, dgate,
                                                                              dup, n);
  }
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
