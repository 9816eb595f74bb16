// The residual add of a pre-norm block fused into the norm that reads its result:
//
//   out = residual + dropout(branch)      (dropout_add: same mask, row map and float operations)
//   y   = norm(out), with its stats       (rmsnorm_forward / layernorm_forward)
//
// in one pass, one warp per row: each lane makes its columns of the row of `out`, stores them,
// and the norm then reads them back from the same lane (nothing another thread wrote, so no
// barrier), while they are still in cache. The unfused pair writes `out` and reads it back from
// memory; the model does this twice per block (x_mid into norm2, the block's output into the next
// block's norm1 or the final norm). Bits: those of dropout_add followed by the norm's forward.
//
// The branch may be bf16 (with a leading dimension of its own: the rows a bf16-output GEMM
// writes), widened as it is read: the bf16 model's out linear and fc2 write their outputs so, as
// PyTorch's autocast rounds a linear's output. The bits are then those of the fp32 call on the
// widened branch.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/ops/dropout/dropout_cuda.cuh"
#include "seqrec/ops/layernorm/layernorm_cuda.cuh"
#include "seqrec/ops/rmsnorm/rmsnorm_cuda.cuh"

namespace seqrec::cuda {

namespace detail {
/// A norm's input rows made as dropout_add makes them (see the norm kernels' Rows parameter), from
/// a branch of type BranchT (float, or bf16 widened as read) with leading dimension ldb.
template <typename BranchT>
struct ResidualRows {
  float* out;
  const float* res;
  const BranchT* branch;
  std::int64_t ldb = 0;
  std::uint64_t key = 0, threshold = 0;
  float scale = 1.f;
  int active = 0;
  const std::int32_t* rows = nullptr;  // packed rows: their full-layout index, for the mask
  __device__ const float* row(std::int64_t r, std::int64_t d, int lane) const {
    const std::int64_t at = r * d;
    const BranchT* br = branch + r * ldb;
    const std::int64_t full = (rows != nullptr ? static_cast<std::int64_t>(rows[r]) : r) * d;
    for (std::int64_t j = lane; j < d; j += 32) {
      float b = load_as(br + j);
      if (active) b = dropout_keep(key, full + j, threshold) ? __fmul_rn(b, scale) : 0.f;
      out[at + j] = __fadd_rn(res[at + j], b);
    }
    return out + at;
  }
};

template <typename BranchT>
ResidualRows<BranchT> residual_rows(float* out, const float* residual, const BranchT* branch,
                                    std::int64_t ldb, double p, std::uint64_t key,
                                    const std::int32_t* rows) {
  ResidualRows<BranchT> s{out, residual, branch, ldb};
  if (p > 0.0) {
    s.key = key;
    s.threshold = dropout_threshold(p);
    s.scale = static_cast<float>(1.0 / (1.0 - p));
    s.active = 1;
  }
  s.rows = rows;
  return s;
}
}  // namespace detail

/// out (n, d) = residual + dropout(branch) under (p, key) and the row map `rows` (device, n
/// entries, or null), as dropout_add computes it (out may be residual); then y (n, d) with leading
/// dimension ldy (0: d), fp32 or bf16, and rstd (n) as rmsnorm_forward computes them from out.
/// branch: fp32, or bf16 (widened as read), with leading dimension ldb (0: d).
template <typename OutT, typename BranchT>
void dropout_add_rmsnorm(Backend& be, float* out, const float* residual, const BranchT* branch,
                         double p, std::uint64_t key, const std::int32_t* rows, const float* g,
                         OutT* y, float* rstd, std::int64_t n, std::int64_t d, float eps,
                         std::int64_t ldy = 0, std::int64_t ldb = 0) {
  detail::rmsnorm_forward_from(
      be, detail::residual_rows(out, residual, branch, ldb > 0 ? ldb : d, p, key, rows), g, y, rstd,
      n, d, eps, ldy);
}

/// The same with LayerNorm: y and stats (n, 2) = (mean, rstd) as layernorm_forward computes them.
template <typename OutT, typename BranchT>
void dropout_add_layernorm(Backend& be, float* out, const float* residual, const BranchT* branch,
                           double p, std::uint64_t key, const std::int32_t* rows, const float* g,
                           const float* b, OutT* y, float* stats, std::int64_t n, std::int64_t d,
                           float eps, std::int64_t ldy = 0, std::int64_t ldb = 0) {
  detail::layernorm_forward_from(
      be, detail::residual_rows(out, residual, branch, ldb > 0 ? ldb : d, p, key, rows), g, b, y,
      stats, n, d, eps, ldy, "dropout_add_layernorm");
}

}  // namespace seqrec::cuda
