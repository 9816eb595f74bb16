// AdamW, global gradient norm and clipping on the GPU, fp32, over one flat parameter array laid
// out as in ParameterStore: values, grads and both moments are four device arrays of the same
// length, and the tensors are (offset, numel, decay, frozen) segments of them. Same formula as
// train/adamw.hpp, float for float:
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;  p = p·decay − lr/bc1 · m / (sqrt(v/bc2) + eps),
// decay = 1 − lr·wd for decaying segments, 1 otherwise; frozen segments are skipped entirely.
//
// An AdamWPlan cuts the trainable segments into tiles of at most 4096 elements once and keeps the
// tile list on the device, so a step over every tensor is one kernel launch (one block per tile).
// The gradient norm is deterministic: pass one writes each tile's Σg² (double, fixed-order block
// reduction) to a partial array, pass two sums the partials in a fixed order in one block.
//
// bf16 mirror: a segment may name where in a bf16 array its copy lives (AdamWSegment::mirror);
// given that array, the step also writes each updated parameter there, rounded to nearest even —
// the bits cast_to_bf16 would give, without reading the parameters again in another pass. The
// CUDA model keeps its GEMM weights' bf16 operands so (Backend::add_bf16_mirror).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

/// One tensor of the flat arrays.
struct AdamWSegment {
  std::int64_t offset = 0;
  std::int64_t numel = 0;
  bool decay = true;
  bool frozen = false;
  std::int64_t mirror = -1;  // element offset of its bf16 copy in the mirror array; -1: none
};

/// The segments of a ParameterStore (model/parameter_store.hpp), in its order. A template over
/// the store so that this header does not pull Eigen into nvcc.
template <typename Store>
std::vector<AdamWSegment> adamw_segments(const Store& s) {
  std::vector<AdamWSegment> out;
  for (const auto& e : s.entries())
    out.push_back({static_cast<std::int64_t>(e.offset), static_cast<std::int64_t>(e.numel), e.decay,
                   e.frozen});
  return out;
}

namespace detail {
constexpr std::int64_t kAdamTile = 4096;
constexpr int kAdamThreads = 256;

struct AdamWTile {
  std::int64_t begin;   // element offset into the flat arrays
  std::int64_t mirror;  // element offset of begin's bf16 copy in the mirror array; -1: none
  std::int32_t count;   // ≤ kAdamTile
  std::int32_t decay;   // 1 when the segment decays
};

/// Sum over the block in a fixed order (warp shuffles, then warp 0 over the warps' sums).
__device__ inline double adamw_block_sum(double v, double* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double r = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) r += scratch[w];
  return r;  // meaningful in thread 0 only
}
}  // namespace detail

namespace detail {
/// The step's scalars, as adamw_step computes them.
struct AdamWScalars {
  float b1, b2, eps, step_size, inv_bc2, decay_factor, grad_scale;
};

/// One element's update in place: m, v and p from the gradient g read as g · grad_scale (the
/// float clip_grad_norm would store), the formula of train/adamw.hpp.
__device__ __forceinline__ void adamw_element(float g, float& m, float& v, float& p, float decay,
                                              const AdamWScalars& s) {
  const float gi = __fmul_rn(g, s.grad_scale);
  m = s.b1 * m + (1.f - s.b1) * gi;
  v = s.b2 * v + (1.f - s.b2) * gi * gi;
  p = p * decay - s.step_size * m / (sqrtf(v * s.inv_bc2) + s.eps);
}

/// Four bf16 values stored as one 8-byte word.
struct alignas(8) Bf16x4 {
  __nv_bfloat16 h[4];
};

/// One tile's update, VW consecutive elements per thread and access (VW = 4: float4 loads and
/// stores, which the caller has checked the alignment of); every element goes through the same
/// adamw_element, so the width changes the memory accesses, not the bits.
template <int VW>
__device__ __forceinline__ void adamw_tile(const AdamWTile& t, float* __restrict__ p,
                                           const float* __restrict__ g, float* __restrict__ m,
                                           float* __restrict__ v,
                                           __nv_bfloat16* __restrict__ mirror,
                                           const AdamWScalars& s) {
  const float decay = t.decay ? s.decay_factor : 1.f;
  for (int k = threadIdx.x * VW; k < t.count; k += static_cast<int>(blockDim.x) * VW) {
    const std::int64_t i = t.begin + k;
    const FVec<VW> gi = vec_load<VW>(g + i);
    FVec<VW> mi = vec_load<VW>(m + i), vi = vec_load<VW>(v + i), pi = vec_load<VW>(p + i);
#pragma unroll
    for (int e = 0; e < VW; ++e) adamw_element(gi.v[e], mi.v[e], vi.v[e], pi.v[e], decay, s);
    vec_store<VW>(m + i, mi);
    vec_store<VW>(v + i, vi);
    vec_store<VW>(p + i, pi);
    if (mirror != nullptr) {
      if constexpr (VW == 4) {
        Bf16x4 h;
#pragma unroll
        for (int e = 0; e < 4; ++e) h.h[e] = __float2bfloat16_rn(pi.v[e]);
        *reinterpret_cast<Bf16x4*>(mirror + k) = h;
      } else {
        mirror[k] = __float2bfloat16_rn(pi.v[0]);
      }
    }
  }
}

/// Whether every address of a tile's accesses allows VW = 4: the four arrays 16-byte aligned at
/// its first element, a whole number of float4s, and its mirror (if any) 8-byte aligned.
__device__ __forceinline__ bool adamw_tile_vectorizable(const AdamWTile& t, const float* p,
                                                        const float* g, const float* m,
                                                        const float* v,
                                                        const __nv_bfloat16* mirror) {
  const auto addr = [](const void* a) { return reinterpret_cast<std::uintptr_t>(a); };
  const std::uintptr_t a =
      addr(p + t.begin) | addr(g + t.begin) | addr(m + t.begin) | addr(v + t.begin);
  return t.count % 4 == 0 && a % 16 == 0 && (mirror == nullptr || addr(mirror) % 8 == 0);
}
}  // namespace detail

/// One block per tile: the AdamW update of that tile's elements, each gradient taken as
/// g · grad_scale (the clip factor; 1 leaves it exact); with p16 (may be null), also the bf16
/// copy of each updated parameter of a tile that has one. A tile whose addresses allow it is
/// read and written four floats at a time (every tile of the CUDA model's store: its tensors'
/// sizes are multiples of 4); the others element by element, with the same bits.
static __global__ void adamw_step_kernel(const detail::AdamWTile* __restrict__ tiles,
                                         float* __restrict__ p, const float* __restrict__ g,
                                         float* __restrict__ m, float* __restrict__ v,
                                         detail::AdamWScalars s, __nv_bfloat16* __restrict__ p16) {
  const detail::AdamWTile t = tiles[blockIdx.x];
  __nv_bfloat16* mirror = p16 != nullptr && t.mirror >= 0 ? p16 + t.mirror : nullptr;
  if (detail::adamw_tile_vectorizable(t, p, g, m, v, mirror))
    detail::adamw_tile<4>(t, p, g, m, v, mirror, s);
  else
    detail::adamw_tile<1>(t, p, g, m, v, mirror, s);
}

namespace detail {
/// Σ g² over this thread's elements of a tile, VW at a time, in double.
template <int VW>
__device__ __forceinline__ double tile_sum_squares(const AdamWTile& t,
                                                   const float* __restrict__ g) {
  double s = 0;
  for (int k = threadIdx.x * VW; k < t.count; k += static_cast<int>(blockDim.x) * VW) {
    const FVec<VW> x = vec_load<VW>(g + t.begin + k);
#pragma unroll
    for (int e = 0; e < VW; ++e) s += double(x.v[e]) * double(x.v[e]);
  }
  return s;
}

/// Whether a tile of one array allows float4 accesses: 16-byte aligned, a whole number of them.
__device__ __forceinline__ bool tile_vectorizable(const AdamWTile& t, const float* a) {
  return t.count % 4 == 0 && reinterpret_cast<std::uintptr_t>(a + t.begin) % 16 == 0;
}
}  // namespace detail

/// Pass one of the norm: partial[tile] = Σ g² over the tile, in double (a fixed order for a
/// given tile and alignment).
static __global__ void adamw_grad_norm_partial_kernel(const detail::AdamWTile* __restrict__ tiles,
                                                      const float* __restrict__ g,
                                                      double* __restrict__ partial) {
  __shared__ double scratch[32];
  const detail::AdamWTile t = tiles[blockIdx.x];
  double s = detail::tile_vectorizable(t, g) ? detail::tile_sum_squares<4>(t, g)
                                             : detail::tile_sum_squares<1>(t, g);
  s = detail::adamw_block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/// Pass two: out[0] = Σ partial, one block, fixed order.
static __global__ void adamw_grad_norm_reduce_kernel(const double* __restrict__ partial, int n,
                                                     double* __restrict__ out) {
  __shared__ double scratch[32];
  double s = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) s += partial[k];
  s = detail::adamw_block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = s;
}

/// g *= f over every tile.
static __global__ void adamw_scale_grads_kernel(const detail::AdamWTile* __restrict__ tiles,
                                                float* __restrict__ g, float f) {
  const detail::AdamWTile t = tiles[blockIdx.x];
  for (int k = threadIdx.x; k < t.count; k += blockDim.x) g[t.begin + k] *= f;
}

/// g = 0 over every tile (float4 stores where the tile allows them).
static __global__ void adamw_zero_tiles_kernel(const detail::AdamWTile* __restrict__ tiles,
                                               float* __restrict__ g) {
  const detail::AdamWTile t = tiles[blockIdx.x];
  if (detail::tile_vectorizable(t, g)) {
    for (int k = threadIdx.x * 4; k < t.count; k += static_cast<int>(blockDim.x) * 4)
      vec_store<4>(g + t.begin + k, FVec<4>{});
  } else {
    for (int k = threadIdx.x; k < t.count; k += blockDim.x) g[t.begin + k] = 0.f;
  }
}

/// The trainable segments cut into tiles, on the device. Rebuild it when a tensor is frozen or
/// thawed (stage change of two-stage training).
class AdamWPlan {
 public:
  AdamWPlan(Backend& be, const std::vector<AdamWSegment>& segments) {
    std::vector<detail::AdamWTile> tiles;
    for (const auto& s : segments) {
      SEQREC_CHECK(s.offset >= 0 && s.numel >= 0, "AdamWPlan: negative segment");
      if (s.frozen) continue;
      for (std::int64_t o = 0; o < s.numel; o += detail::kAdamTile) {
        const std::int64_t c = s.numel - o < detail::kAdamTile ? s.numel - o : detail::kAdamTile;
        SEQREC_CHECK(s.mirror >= -1, "AdamWPlan: negative mirror offset");
        tiles.push_back({s.offset + o, s.mirror >= 0 ? s.mirror + o : -1,
                         static_cast<std::int32_t>(c), s.decay ? 1 : 0});
      }
    }
    num_tiles_ = static_cast<int>(tiles.size());
    tiles_ = be.buffer<detail::AdamWTile>(tiles.size());
    partial_ = be.buffer<double>(tiles.size());
    result_ = be.buffer<double>(1);
    if (!tiles.empty()) {
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(tiles_.data(), tiles.data(), tiles_.bytes(),
                                        cudaMemcpyHostToDevice, be.stream()));
      be.synchronize();  // `tiles` is a local: the copy must finish before it goes
    }
  }

  int num_tiles() const noexcept { return num_tiles_; }
  const detail::AdamWTile* tiles() const noexcept { return tiles_.data(); }
  double* partial() noexcept { return partial_.data(); }
  double* result() noexcept { return result_.data(); }

 private:
  int num_tiles_ = 0;
  DeviceBuffer<detail::AdamWTile> tiles_;
  DeviceBuffer<double> partial_;
  DeviceBuffer<double> result_;
};

/// One AdamW update at learning rate lr; step is 1-based. p, g, m, v: device flat arrays.
/// Options: train::AdamWOptions (train/adamw.hpp) or any struct with beta1, beta2, eps,
/// weight_decay. grad_scale (clip_factor) multiplies each gradient as it is read, with the bits
/// of clip_grad_norm's scaling pass but without its read and write of every gradient; g itself
/// is left as it was. p16 (may be null): the bf16 mirror array of the plan's segments' mirror
/// offsets; each updated parameter of a mirrored segment is also written there, rounded.
template <typename Options>
void adamw_step(Backend& be, const AdamWPlan& plan, float* p, const float* g, float* m, float* v,
                const Options& o, double lr, std::int64_t step, float grad_scale = 1.f,
                __nv_bfloat16* p16 = nullptr) {
  if (plan.num_tiles() == 0) return;
  const double bc1 = 1.0 - std::pow(o.beta1, double(step));
  const double bc2 = 1.0 - std::pow(o.beta2, double(step));
  const detail::AdamWScalars s{float(o.beta1),  float(o.beta2),   float(o.eps),
                               float(lr / bc1), float(1.0 / bc2), float(1.0 - lr * o.weight_decay),
                               grad_scale};
  adamw_step_kernel<<<static_cast<unsigned>(plan.num_tiles()), detail::kAdamThreads, 0,
                      be.stream()>>>(plan.tiles(), p, g, m, v, s, p16);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// L2 norm of the trainable gradients (double, deterministic). Synchronises the stream.
inline double grad_norm(Backend& be, AdamWPlan& plan, const float* g) {
  if (plan.num_tiles() == 0) return 0.0;
  adamw_grad_norm_partial_kernel<<<static_cast<unsigned>(plan.num_tiles()), detail::kAdamThreads, 0,
                                   be.stream()>>>(plan.tiles(), g, plan.partial());
  SEQREC_CUDA_CHECK_LAUNCH();
  adamw_grad_norm_reduce_kernel<<<1, 1024, 0, be.stream()>>>(plan.partial(), plan.num_tiles(),
                                                             plan.result());
  SEQREC_CUDA_CHECK_LAUNCH();
  double sq = 0;
  SEQREC_CUDA_CHECK(
      cudaMemcpyAsync(&sq, plan.result(), sizeof(double), cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  return std::sqrt(sq);
}

/// g = 0 over the plan's tiles (its segments' elements; the gaps between them keep their values),
/// in one launch however many segments it has: the CUDA model's gradient zeroing when it leaves
/// the linear weights' gradients to their GEMMs (Model::set_lazy_zero_grads).
inline void zero_tiles(Backend& be, const AdamWPlan& plan, float* g) {
  if (plan.num_tiles() == 0) return;
  adamw_zero_tiles_kernel<<<static_cast<unsigned>(plan.num_tiles()), detail::kAdamThreads, 0,
                            be.stream()>>>(plan.tiles(), g);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// The factor train::clip_grad_norm scales gradients of norm `norm` by: max_norm / norm when
/// clipping (max_norm > 0 and norm > max_norm), else 1.
inline float clip_factor(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? float(max_norm / (norm + 1e-12)) : 1.f;
}

/// Scales the trainable gradients so that their norm is at most max_norm (no-op when
/// max_norm <= 0). Returns the norm before clipping. (A model's optimiser step instead passes
/// clip_factor to adamw_step: one pass over the gradients fewer.)
inline double clip_grad_norm(Backend& be, AdamWPlan& plan, float* g, double max_norm) {
  const double norm = grad_norm(be, plan, g);
  if (max_norm > 0 && norm > max_norm) {
    const float f = clip_factor(norm, max_norm);
    adamw_scale_grads_kernel<<<static_cast<unsigned>(plan.num_tiles()), detail::kAdamThreads, 0,
                               be.stream()>>>(plan.tiles(), g, f);
    SEQREC_CUDA_CHECK_LAUNCH();
  }
  return norm;
}

}  // namespace seqrec::cuda
