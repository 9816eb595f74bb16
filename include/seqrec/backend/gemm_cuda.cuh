// gemm_rm: the row-major GEMM every CUDA op and model uses, in the backend's precision (fp32, or
// bf16 operands with fp32 accumulation; see backend/cuda.cuh), with the rounding kernel that
// makes bf16 operand copies. CUDA translation units only (it launches a kernel); host code that
// only opens a Backend includes backend/cuda.cuh.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

/// dst (rows, cols) with leading dimension dst_ld = bf16(src (rows, cols) with leading dimension
/// ld), round to nearest even; padding columns [cols, dst_ld) are left as they are. Grid-stride.
static __global__ void cast_to_bf16_kernel(const float* __restrict__ src,
                                           __nv_bfloat16* __restrict__ dst, std::int64_t rows,
                                           std::int64_t cols, std::int64_t ld,
                                           std::int64_t dst_ld) {
  const std::int64_t total = rows * cols;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / cols, c = i - r * cols;
    dst[r * dst_ld + c] = __float2bfloat16_rn(src[r * ld + c]);
  }
}

/// Leading dimension of a bf16 copy with `cols` columns: a multiple of 8 elements (16-byte rows),
/// which cuBLASLt's tensor-core kernels want (the study's GatedMlp width 2732 is not).
inline std::int64_t bf16_ld(std::int64_t cols) { return (cols + 7) / 8 * 8; }

/// Rounds a strided fp32 matrix to a bf16 one with leading dimension dst_ld (0: cols) on the
/// backend's stream.
inline void cast_to_bf16(Backend& be, const float* src, std::int64_t rows, std::int64_t cols,
                         std::int64_t ld, __nv_bfloat16* dst, std::int64_t dst_ld = 0) {
  const std::int64_t total = rows * cols;
  if (total == 0) return;
  const std::int64_t want = (total + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>(want, 65535));
  cast_to_bf16_kernel<<<blocks, 256, 0, be.stream()>>>(src, dst, rows, cols, ld,
                                                       dst_ld > 0 ? dst_ld : cols);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// c (rows, cols) with leading dimension ldc += b (cols) on every row; grid-stride, no division
/// per element beyond one row/column split.
static __global__ void gemm_bias_add_kernel(float* __restrict__ c, std::int64_t ldc,
                                            const float* __restrict__ b, std::int64_t rows,
                                            std::int64_t cols) {
  const std::int64_t total = rows * cols;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / cols, j = i - r * cols;
    c[r * ldc + j] += b[j];
  }
}

/// The fallback of gemm_rm's bias: c (rows, cols), leading dimension ldc, += b on every row.
inline void bias_add_strided(Backend& be, float* c, std::int64_t ldc, const float* b,
                             std::int64_t rows, std::int64_t cols) {
  const std::int64_t total = rows * cols;
  if (total == 0) return;
  const std::int64_t want = (total + 255) / 256;
  gemm_bias_add_kernel<<<static_cast<unsigned>(std::min<std::int64_t>(want, 65535)), 256, 0,
                         be.stream()>>>(c, ldc, b, rows, cols);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// Which operand of gemm_rm is a weight (stable between weights_changed() calls), whose bf16
/// copy the backend may cache in bf16 mode.
enum class WeightOperand { None, A, B };

/// Row-major GEMM on fp32 arrays, C (M, N) = alpha · op(A) · op(B) + beta · C [+ bias (N) on
/// every row] (see gemm_lt for the layout). fp32 mode: fp32 throughout. bf16 mode: the operands
/// are rounded to bf16 (weights once per version, from the backend's cache; activations into
/// scratch buffers) and multiplied with fp32 accumulation into the fp32 C. The bias is added in
/// cuBLASLt's epilogue where it can be (16-byte aligned, an algorithm exists), else by
/// bias_add_strided.
inline void gemm_rm(Backend& be, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                    std::int64_t K, float alpha, const float* A, std::int64_t lda, const float* B,
                    std::int64_t ldb, float beta, float* C, std::int64_t ldc,
                    WeightOperand weight = WeightOperand::None, const float* bias = nullptr) {
  if (M == 0 || N == 0) return;
  if (!be.bf16()) {
    const bool fused = gemm_lt(be, CUDA_R_32F, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
                               beta, C, ldc, bias);
    if (bias != nullptr && !fused) bias_add_strided(be, C, ldc, bias, M, N);
    return;
  }
  // Stored shapes: A is (M, K) or (K, M) when transposed; B is (K, N) or (N, K).
  const std::int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const std::int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  DeviceBuffer<__nv_bfloat16> a_tmp, b_tmp;
  // The bf16 copies have 16-byte rows (leading dimension bf16_ld(cols)).
  auto operand = [&](const float* x, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                     bool is_weight, DeviceBuffer<__nv_bfloat16>& tmp) -> const __nv_bfloat16* {
    const std::int64_t dst_ld = bf16_ld(cols);
    if (is_weight)
      return be.cached_bf16(x, rows, cols, ld, dst_ld, [&](__nv_bfloat16* dst) {
        cast_to_bf16(be, x, rows, cols, ld, dst, dst_ld);
      });
    tmp = be.buffer<__nv_bfloat16>(static_cast<std::size_t>(rows * dst_ld));
    cast_to_bf16(be, x, rows, cols, ld, tmp.data(), dst_ld);
    return tmp.data();
  };
  const __nv_bfloat16* a16 = operand(A, a_rows, a_cols, lda, weight == WeightOperand::A, a_tmp);
  const __nv_bfloat16* b16 = operand(B, b_rows, b_cols, ldb, weight == WeightOperand::B, b_tmp);
  const bool fused = gemm_lt(be, CUDA_R_16BF, trans_a, trans_b, M, N, K, alpha, a16,
                             bf16_ld(a_cols), b16, bf16_ld(b_cols), beta, C, ldc, bias);
  if (bias != nullptr && !fused) bias_add_strided(be, C, ldc, bias, M, N);
}

}  // namespace seqrec::cuda
