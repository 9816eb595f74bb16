// Softmax cross-entropy over the item catalogue on the GPU, fp32, fused with the tied output
// projection and chunked over rows, matching ops/cross_entropy/cross_entropy_cpu.hpp.
//
// The scored rows (targets ≥ first_item) are listed on the host (one small copy of the targets,
// which also validates them as the CPU op does). Then for each chunk of at most C rows:
//   Hc (C, D)      = gather of the chunk's rows of h                      (kernel)
//   Z  (C, I)      = Hc · Wᵀ                                           (cuBLASLt, fp32 compute)
//   per row (one block): max, logsumexp, loss = lse − z_t, and in place
//   Z ← G = (softmax(z) − onehot(t)) · grad_scale                       (kernel, fixed order)
//   dHc (C, D)     = G · W, scattered back to dh's rows                   (cuBLASLt + kernel)
//   dW  (I, D)    += Gᵀ · Hc                                              (cuBLASLt, beta = 1)
// In the backend's bf16 mode, Hc, G and W enter the three GEMMs as bf16 (fp32 accumulation, fp32
// Z and dHc); the softmax and the loss are computed in fp32 from the fp32 Z.
// Per-row losses stay on the device and are summed on the host in double in row order, exactly as
// the CPU op sums them. Every reduction has a fixed order, so results repeat bit for bit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kCeThreads = 256;

/// Block-wide reduction in a fixed order; op is max or sum. All threads get the result.
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < warps; ++w) r = op(r, scratch[w]);
  return r;
}
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
}  // namespace detail

/// hc (c, D) = h[rows[i]] for i < c; rows (c).
static __global__ void cross_entropy_gather_kernel(const float* __restrict__ h,
                                                   const std::int32_t* __restrict__ rows,
                                                   float* __restrict__ hc, std::int64_t c,
                                                   std::int64_t d) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= c * d) return;
  const std::int64_t r = i / d, j = i - r * d;
  hc[i] = h[static_cast<std::int64_t>(rows[r]) * d + j];
}

/// dh[rows[i]] = dhc[i] for i < c.
static __global__ void cross_entropy_scatter_kernel(const float* __restrict__ dhc,
                                                    const std::int32_t* __restrict__ rows,
                                                    float* __restrict__ dh, std::int64_t c,
                                                    std::int64_t d) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= c * d) return;
  const std::int64_t r = i / d, j = i - r * d;
  dh[static_cast<std::int64_t>(rows[r]) * d + j] = dhc[i];
}

/// One block per row of z (c, I), row stride ldz: loss[i] = logsumexp(z_i) − z_i[t_i]; when
/// with_grad, G_i = (softmax(z_i) − onehot(t_i)) · grad_scale is written over z_i, or, when g16 is
/// not null, into g16 rounded to bf16 instead (same stride). target_items (c) in [0, I).
static __global__ void cross_entropy_forward_backward_kernel(
    float* __restrict__ z, const std::int32_t* __restrict__ target_items, float* __restrict__ loss,
    std::int64_t items, std::int64_t ldz, float grad_scale, int with_grad,
    __nv_bfloat16* __restrict__ g16) {
  __shared__ float scratch[32];
  float* zr = z + static_cast<std::int64_t>(blockIdx.x) * ldz;
  const std::int64_t t = target_items[blockIdx.x];
  float mx = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < items; j += blockDim.x) mx = fmaxf(mx, zr[j]);
  mx = detail::block_reduce(mx, scratch, detail::MaxOp{});
  float sum = 0.f;
  for (std::int64_t j = threadIdx.x; j < items; j += blockDim.x) sum += expf(zr[j] - mx);
  sum = detail::block_reduce(sum, scratch, detail::SumOp{});
  const float lse = mx + logf(sum);
  const float zt = zr[t];  // every thread reads it before any thread overwrites z below
  if (threadIdx.x == 0) loss[blockIdx.x] = lse - zt;
  if (!with_grad) return;
  __syncthreads();
  __nv_bfloat16* gr = g16 != nullptr ? g16 + static_cast<std::int64_t>(blockIdx.x) * ldz : nullptr;
  for (std::int64_t j = threadIdx.x; j < items; j += blockDim.x) {
    const float g = expf(zr[j] - lse) * grad_scale - (j == t ? grad_scale : 0.f);
    if (gr != nullptr)
      gr[j] = __float2bfloat16_rn(g);  // the GEMMs read only the bf16 copy
    else
      zr[j] = g;
  }
}

/// hc16 (c, D) with leading dimension ldh = bf16(h[rows[i]]) for i < c; rows (c).
static __global__ void cross_entropy_gather_bf16_kernel(const float* __restrict__ h,
                                                        const std::int32_t* __restrict__ rows,
                                                        __nv_bfloat16* __restrict__ hc,
                                                        std::int64_t c, std::int64_t d,
                                                        std::int64_t ldh) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= c * d) return;
  const std::int64_t r = i / d, j = i - r * d;
  hc[r * ldh + j] = __float2bfloat16_rn(h[static_cast<std::int64_t>(rows[r]) * d + j]);
}

/// Returns the summed loss (double) and writes the number of scored rows to *count. Device
/// pointers: h (N, D); targets (N), values < first_item mean "no target"; items (I, D), the item
/// block of the tied table. dh (N, D) is overwritten (zero for unscored rows) and ditems (I, D)
/// accumulated; both may be null for a forward-only pass. Synchronises the stream (the loss is
/// returned to the host). Shape is ops::CrossEntropyShape (cross_entropy_cpu.hpp) or any struct
/// with its fields (rows, dim, num_items, first_item, chunk_rows); a template so that this header
/// does not pull Eigen into nvcc.
template <typename Shape>
double cross_entropy_forward_backward(Backend& be, const Shape& s, const float* h,
                                      const std::int32_t* targets, const float* items, float* dh,
                                      float* ditems, float grad_scale, std::int64_t* count) {
  const std::int64_t D = s.dim, I = s.num_items;
  SEQREC_CHECK(s.rows < (std::int64_t{1} << 31), "cross_entropy (CUDA): N must be < 2^31");
  // List the scored rows on the host, validating targets exactly as the CPU op does.
  std::vector<std::int32_t> tgt(static_cast<std::size_t>(s.rows));
  if (s.rows > 0) {
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(tgt.data(), targets, sizeof(std::int32_t) * s.rows,
                                      cudaMemcpyDeviceToHost, be.stream()));
    be.synchronize();
  }
  std::vector<std::int32_t> rows, tItems;
  rows.reserve(tgt.size());
  tItems.reserve(tgt.size());
  for (std::int64_t r = 0; r < s.rows; ++r) {
    const std::int32_t t = tgt[static_cast<std::size_t>(r)];
    if (t >= s.first_item) {
      SEQREC_CHECK(t - s.first_item < I, "target token out of the item range (row " +
                                             std::to_string(r) + ", token " + std::to_string(t) +
                                             ")");
      rows.push_back(static_cast<std::int32_t>(r));
      tItems.push_back(t - s.first_item);
    }
  }
  const bool with_grad = dh != nullptr || ditems != nullptr;
  if (dh != nullptr && s.rows > 0)
    SEQREC_CUDA_CHECK(cudaMemsetAsync(dh, 0, sizeof(float) * s.rows * D, be.stream()));
  const std::int64_t n_scored = static_cast<std::int64_t>(rows.size());
  *count = n_scored;
  if (n_scored == 0) return 0.0;
  const std::int64_t C = std::max<std::int64_t>(1, std::min<std::int64_t>(s.chunk_rows, n_scored));

  auto d_rows = be.buffer<std::int32_t>(rows.size());
  auto d_titems = be.buffer<std::int32_t>(rows.size());
  auto d_loss = be.buffer<float>(rows.size());
  auto logits = be.buffer<float>(be.bf16() ? 0 : static_cast<std::size_t>(C * I));
  auto hc = be.buffer<float>(be.bf16() ? 0 : static_cast<std::size_t>(C * D));
  auto dhc = be.buffer<float>(dh != nullptr ? static_cast<std::size_t>(C * D) : 0);
  SEQREC_CUDA_CHECK(cudaMemcpyAsync(d_rows.data(), rows.data(), d_rows.bytes(),
                                    cudaMemcpyHostToDevice, be.stream()));
  SEQREC_CUDA_CHECK(cudaMemcpyAsync(d_titems.data(), tItems.data(), d_titems.bytes(),
                                    cudaMemcpyHostToDevice, be.stream()));

  if (be.bf16()) {
    // bf16 operands, fp32 accumulation: Hc and G are produced in bf16 by the gather and softmax
    // kernels; the item table's bf16 copy is cached by the backend until the weights change.
    // Rows of Z and G are padded to a multiple of 8 elements (16-byte aligned bf16 rows), which
    // the tensor-core GEMM kernels want.
    const std::int64_t ldz = (I + 7) / 8 * 8;
    auto logits16 = be.buffer<float>(static_cast<std::size_t>(C * ldz));
    auto hc16 = be.buffer<__nv_bfloat16>(static_cast<std::size_t>(C * bf16_ld(D)));
    auto g16 = be.buffer<__nv_bfloat16>(with_grad ? static_cast<std::size_t>(C * ldz) : 0);
    // Rows of the bf16 copies are padded to 16 bytes (bf16_ld; D = 64 or 1024 needs none).
    const std::int64_t ldd = bf16_ld(D);
    const __nv_bfloat16* items16 = be.cached_bf16(items, I, D, D, ldd, [&](__nv_bfloat16* dst) {
      cast_to_bf16(be, items, I, D, D, dst, ldd);
    });
    for (std::int64_t c0 = 0; c0 < n_scored; c0 += C) {
      const std::int64_t c = std::min<std::int64_t>(C, n_scored - c0);
      const unsigned ew_blocks = static_cast<unsigned>((c * D + 255) / 256);
      cross_entropy_gather_bf16_kernel<<<ew_blocks, 256, 0, be.stream()>>>(h, d_rows.data() + c0,
                                                                           hc16.data(), c, D, ldd);
      SEQREC_CUDA_CHECK_LAUNCH();
      // Z (c, I) = Hc (c, D) · Wᵀ, W (I, D).
      gemm_lt(be, CUDA_R_16BF, false, true, c, I, D, 1.f, hc16.data(), ldd, items16, ldd, 0.f,
              logits16.data(), ldz);
      cross_entropy_forward_backward_kernel<<<static_cast<unsigned>(c), detail::kCeThreads, 0,
                                              be.stream()>>>(
          logits16.data(), d_titems.data() + c0, d_loss.data() + c0, I, ldz, grad_scale,
          with_grad ? 1 : 0, with_grad ? g16.data() : nullptr);
      SEQREC_CUDA_CHECK_LAUNCH();
      if (dh != nullptr) {
        // dHc (c, D) = G (c, I) · W (I, D).
        gemm_lt(be, CUDA_R_16BF, false, false, c, D, I, 1.f, g16.data(), ldz, items16, ldd, 0.f,
                dhc.data(), D);
        cross_entropy_scatter_kernel<<<ew_blocks, 256, 0, be.stream()>>>(
            dhc.data(), d_rows.data() + c0, dh, c, D);
        SEQREC_CUDA_CHECK_LAUNCH();
      }
      // dW (I, D) += Gᵀ (I, c) · Hc (c, D).
      if (ditems != nullptr)
        gemm_lt(be, CUDA_R_16BF, true, false, I, D, c, 1.f, g16.data(), ldz, hc16.data(), ldd, 1.f,
                ditems, D);
    }
  } else {
    for (std::int64_t c0 = 0; c0 < n_scored; c0 += C) {
      const std::int64_t c = std::min<std::int64_t>(C, n_scored - c0);
      const unsigned ew_blocks = static_cast<unsigned>((c * D + 255) / 256);
      cross_entropy_gather_kernel<<<ew_blocks, 256, 0, be.stream()>>>(h, d_rows.data() + c0,
                                                                      hc.data(), c, D);
      SEQREC_CUDA_CHECK_LAUNCH();
      // Z (c, I) = Hc (c, D) · Wᵀ, W (I, D).
      gemm_rm(be, false, true, c, I, D, 1.f, hc.data(), D, items, D, 0.f, logits.data(), I);
      cross_entropy_forward_backward_kernel<<<static_cast<unsigned>(c), detail::kCeThreads, 0,
                                              be.stream()>>>(logits.data(), d_titems.data() + c0,
                                                             d_loss.data() + c0, I, I, grad_scale,
                                                             with_grad ? 1 : 0, nullptr);
      SEQREC_CUDA_CHECK_LAUNCH();
      if (dh != nullptr) {
        // dHc (c, D) = G (c, I) · W (I, D).
        gemm_rm(be, false, false, c, D, I, 1.f, logits.data(), I, items, D, 0.f, dhc.data(), D);
        cross_entropy_scatter_kernel<<<ew_blocks, 256, 0, be.stream()>>>(
            dhc.data(), d_rows.data() + c0, dh, c, D);
        SEQREC_CUDA_CHECK_LAUNCH();
      }
      // dW (I, D) += Gᵀ (I, c) · Hc (c, D).
      if (ditems != nullptr)
        gemm_rm(be, true, false, I, D, c, 1.f, logits.data(), I, hc.data(), D, 1.f, ditems, D);
    }
  }
  std::vector<float> row_loss(rows.size());
  SEQREC_CUDA_CHECK(cudaMemcpyAsync(row_loss.data(), d_loss.data(), d_loss.bytes(),
                                    cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  double loss = 0;
  for (float v : row_loss) loss += static_cast<double>(v);
  return loss;
}

}  // namespace seqrec::cuda
