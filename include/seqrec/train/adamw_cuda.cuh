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

/// One block per tile: the AdamW update of that tile's elements, each gradient taken as
/// g · grad_scale (the clip factor; 1 leaves it exact); with p16 (may be null), also the bf16
/// copy of each updated parameter of a tile that has one.
static __global__ void adamw_step_kernel(const detail::AdamWTile* __restrict__ tiles,
                                         float* __restrict__ p, const float* __restrict__ g,
                                         float* __restrict__ m, float* __restrict__ v, float b1,
                                         float b2, float eps, float step_size, float inv_bc2,
                                         float decay_factor, float grad_scale,
                                         __nv_bfloat16* __restrict__ p16) {
  const detail::AdamWTile t = tiles[blockIdx.x];
  const float decay = t.decay ? decay_factor : 1.f;
  __nv_bfloat16* mirror = p16 != nullptr && t.mirror >= 0 ? p16 + t.mirror : nullptr;
  for (int k = threadIdx.x; k < t.count; k += blockDim.x) {
    const std::int64_t i = t.begin + k;
    const float gi = __fmul_rn(g[i], grad_scale);  // the float clip_grad_norm would store
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i] * decay - step_size * mi / (sqrtf(vi * inv_bc2) + eps);
    p[i] = pi;
    if (mirror != nullptr) mirror[k] = __float2bfloat16_rn(pi);
  }
}

/// Pass one of the norm: partial[tile] = Σ g² over the tile, in double.
static __global__ void adamw_grad_norm_partial_kernel(const detail::AdamWTile* __restrict__ tiles,
                                                      const float* __restrict__ g,
                                                      double* __restrict__ partial) {
  __shared__ double scratch[32];
  const detail::AdamWTile t = tiles[blockIdx.x];
  double s = 0;
  for (int k = threadIdx.x; k < t.count; k += blockDim.x) {
    const double x = g[t.begin + k];
    s += x * x;
  }
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

/// g = 0 over every tile.
static __global__ void adamw_zero_tiles_kernel(const detail::AdamWTile* __restrict__ tiles,
                                               float* __restrict__ g) {
  const detail::AdamWTile t = tiles[blockIdx.x];
  for (int k = threadIdx.x; k < t.count; k += blockDim.x) g[t.begin + k] = 0.f;
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
  adamw_step_kernel<<<static_cast<unsigned>(plan.num_tiles()), detail::kAdamThreads, 0,
                      be.stream()>>>(plan.tiles(), p, g, m, v, float(o.beta1), float(o.beta2),
                                     float(o.eps), float(lr / bc1), float(1.0 / bc2),
                                     float(1.0 - lr * o.weight_decay), grad_scale, p16);
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
