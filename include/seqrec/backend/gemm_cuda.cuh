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

/// A GEMM operand as stored, row-major with leading dimension ld: fp32 (gemm_rm rounds it to
/// bf16 in bf16 mode), or already bf16 — an activation a kernel wrote in bf16 (store_as), legal in
/// bf16 mode only, with ld = bf16_ld(cols) so that it meets the same cuBLASLt layout (and hence
/// the same algorithm and bits) as gemm_rm's own rounded copy of the fp32 tensor.
struct Operand {
  const float* f32 = nullptr;
  const __nv_bfloat16* b16 = nullptr;
  std::int64_t ld = 0;
  Operand(const float* p, std::int64_t leading) : f32(p), ld(leading) {}
  Operand(const __nv_bfloat16* p, std::int64_t leading) : b16(p), ld(leading) {}
};

namespace detail {
/// A gemm_rm operand in bf16: as given when it is bf16 already; else gemm_rm's rounded copy of the
/// fp32 tensor with 16-byte rows (leading dimension bf16_ld(cols)) — from the backend's cache for
/// a weight, into `tmp` for an activation. (rows, cols) is the operand's stored shape.
inline const __nv_bfloat16* bf16_operand(Backend& be, const Operand& x, std::int64_t rows,
                                         std::int64_t cols, bool is_weight,
                                         DeviceBuffer<__nv_bfloat16>& tmp, std::int64_t& ld16) {
  if (x.b16 != nullptr) {
    ld16 = x.ld;
    return x.b16;
  }
  ld16 = bf16_ld(cols);
  if (is_weight)
    return be.cached_bf16(x.f32, rows, cols, x.ld, ld16, [&](__nv_bfloat16* dst) {
      cast_to_bf16(be, x.f32, rows, cols, x.ld, dst, ld16);
    });
  tmp = be.buffer<__nv_bfloat16>(static_cast<std::size_t>(rows * ld16));
  cast_to_bf16(be, x.f32, rows, cols, x.ld, tmp.data(), ld16);
  return tmp.data();
}

/// gemm_rm's bf16 path: both operands in bf16 (bf16_operand), then gemm_lt with a C of c_type.
/// Returns gemm_lt's answer: whether the bias was fused.
inline bool gemm_rm_bf16(Backend& be, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                         std::int64_t K, float alpha, const Operand& A, const Operand& B,
                         float beta, void* C, std::int64_t ldc, cudaDataType_t c_type,
                         WeightOperand weight, const float* bias) {
  // Stored shapes: A is (M, K) or (K, M) when transposed; B is (K, N) or (N, K).
  const std::int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const std::int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  DeviceBuffer<__nv_bfloat16> a_tmp, b_tmp;
  std::int64_t lda16 = 0, ldb16 = 0;
  const __nv_bfloat16* a16 =
      bf16_operand(be, A, a_rows, a_cols, weight == WeightOperand::A, a_tmp, lda16);
  const __nv_bfloat16* b16 =
      bf16_operand(be, B, b_rows, b_cols, weight == WeightOperand::B, b_tmp, ldb16);
  return gemm_lt(be, CUDA_R_16BF, trans_a, trans_b, M, N, K, alpha, a16, lda16, b16, ldb16, beta, C,
                 ldc, bias, c_type);
}
}  // namespace detail

/// Row-major GEMM, C (M, N) = alpha · op(A) · op(B) + beta · C [+ bias (N) on every row] (see
/// gemm_lt for the layout), C fp32. fp32 mode: fp32 throughout (both operands must be fp32).
/// bf16 mode: fp32 operands are rounded to bf16 (weights once per version, from the backend's
/// cache; activations into scratch buffers), bf16 operands are used as they are, and the product
/// is accumulated in fp32 into the fp32 C. The bias is added in cuBLASLt's epilogue where it can
/// be (16-byte aligned, an algorithm exists), else by bias_add_strided.
inline void gemm_rm(Backend& be, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                    std::int64_t K, float alpha, const Operand& A, const Operand& B, float beta,
                    float* C, std::int64_t ldc, WeightOperand weight = WeightOperand::None,
                    const float* bias = nullptr) {
  if (M == 0 || N == 0) return;
  bool fused = false;
  if (!be.bf16()) {
    SEQREC_CHECK(A.b16 == nullptr && B.b16 == nullptr,
                 "gemm_rm: a bf16 operand needs the backend's bf16 mode");
    fused = gemm_lt(be, CUDA_R_32F, trans_a, trans_b, M, N, K, alpha, A.f32, A.ld, B.f32, B.ld,
                    beta, C, ldc, bias);
  } else {
    fused = detail::gemm_rm_bf16(be, trans_a, trans_b, M, N, K, alpha, A, B, beta, C, ldc,
                                 CUDA_R_32F, weight, bias);
  }
  if (bias != nullptr && !fused) {
    be.note_bias_pass();
    bias_add_strided(be, C, ldc, bias, M, N);
  }
}

/// gemm_rm with a bf16 C and beta 0, bf16 mode only: C (M, N) with leading dimension ldc (a
/// multiple of 8, as bf16_ld gives) = bf16(alpha · op(A) · op(B) [+ bias]), the fp32 result rounded
/// to nearest even once, in cuBLASLt's epilogue. For a tensor whose readers want it in bf16 (a GEMM
/// operand, or an activation's input): half the bytes of gemm_rm's fp32 C to write and to read
/// back, and no rounding pass. Where the bias cannot go into the epilogue, the product goes through
/// an fp32 scratch C (gemm_rm, bias added there) and cast_to_bf16: the same single rounding.
inline void gemm_rm_bf16_out(Backend& be, bool trans_a, bool trans_b, std::int64_t M,
                             std::int64_t N, std::int64_t K, float alpha, const Operand& A,
                             const Operand& B, __nv_bfloat16* C, std::int64_t ldc,
                             WeightOperand weight = WeightOperand::None,
                             const float* bias = nullptr) {
  SEQREC_CHECK(be.bf16(), "gemm_rm_bf16_out: a bf16 result needs the backend's bf16 mode");
  if (M == 0 || N == 0) return;
  if (detail::gemm_rm_bf16(be, trans_a, trans_b, M, N, K, alpha, A, B, 0.f, C, ldc, CUDA_R_16BF,
                           weight, bias) ||
      bias == nullptr)
    return;
  be.note_bias_pass();  // counted here, and again below if the fp32 GEMM cannot fuse it either
  auto c32 = be.buffer<float>(static_cast<std::size_t>(M * N));
  gemm_rm(be, trans_a, trans_b, M, N, K, alpha, A, B, 0.f, c32.data(), N, weight, bias);
  cast_to_bf16(be, c32.data(), M, N, N, C, ldc);
}

/// gemm_rm on fp32 arrays with their leading dimensions.
inline void gemm_rm(Backend& be, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
                    std::int64_t K, float alpha, const float* A, std::int64_t lda, const float* B,
                    std::int64_t ldb, float beta, float* C, std::int64_t ldc,
                    WeightOperand weight = WeightOperand::None, const float* bias = nullptr) {
  gemm_rm(be, trans_a, trans_b, M, N, K, alpha, Operand(A, lda), Operand(B, ldb), beta, C, ldc,
          weight, bias);
}

/// In bf16 mode, a bf16 copy (rows, bf16_ld(cols)) of the fp32 (rows, cols) matrix x, made once
/// for several GEMMs that read it (a gradient feeding both dX and dW); in fp32 mode, x itself.
/// `keep` holds the copy; the Operand is valid while it lives.
inline Operand gemm_operand(Backend& be, const float* x, std::int64_t rows, std::int64_t cols,
                            DeviceBuffer<__nv_bfloat16>& keep) {
  if (!be.bf16() || rows * cols == 0) return Operand(x, cols);
  const std::int64_t ld16 = bf16_ld(cols);
  keep = be.buffer<__nv_bfloat16>(static_cast<std::size_t>(rows * ld16));
  cast_to_bf16(be, x, rows, cols, cols, keep.data(), ld16);
  return Operand(keep.data(), ld16);
}

}  // namespace seqrec::cuda
