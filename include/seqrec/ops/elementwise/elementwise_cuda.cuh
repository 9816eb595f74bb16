// Small element-wise and reduction kernels of the CUDA model, fp32, all on the backend's stream:
//
//   column_sum_add          db (C) += Σ_rows dy (N, C), dy fp32 or bf16 (linear layers' bias
//   gradient) column_sum_add_cast     the same, and bf16(dy) in the same pass   (bf16 mode's GEMM
//   operand) add_into                y (n) += x (n)                           (residual gradients)
//   position_add            x (B, L, D) += P (L, D)                  (learned positions)
//   position_add_backward   dP (L, D) += Σ_b dx (B, L, D)
//   activation_forward      y = f(x);  activation_backward  d *= f'(x)     (ReLU, SiLU)
//   activation_backward_sum_cast   g = d·f'(x): db += Σ_rows g and bf16(g), one pass (bf16 MLP;
//                                  x and d fp32, or both bf16)
//   dropout_backward_sum_cast      the same for g = drop(d) (bf16 linears before a residual add)
//
// No atomics anywhere: every sum has a fixed order, so results repeat bit for bit. The column sum
// is two passes: a fixed grid of row chunks writes per-chunk column sums (each thread one column,
// rows in order, so reads are coalesced across a warp), then partial_sums_add adds the chunk sums
// in a fixed order. The position gradient is one thread per (l, j) summing over b in order.
// Element-wise arithmetic uses round-to-nearest intrinsics where the CPU computes the same single
// operation, so those outputs equal the CPU's floats given equal inputs.
#pragma once

#include <cstdint>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/ops/dropout/dropout_cuda.cuh"
#include "seqrec/ops/elementwise/partial_sums_cuda.cuh"

namespace seqrec::cuda {

/// Activations the CUDA model implements (ops::Relu and ops::Silu of ops/activation).
enum class Activation { Relu, Silu };

namespace detail {
constexpr int kColSumChunks = 64;  // row chunks of column_sum_add: fixes its summation order

inline unsigned ew_blocks(std::int64_t n) {
  const std::int64_t want = (n + 255) / 256;
  return static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
}

template <Activation A>
__device__ inline float act_f(float x) {
  if constexpr (A == Activation::Relu) {
    return x > 0.f ? x : 0.f;
  } else {
    return x / (1.f + expf(-x));
  }
}
template <Activation A>
__device__ inline float act_df(float x) {
  if constexpr (A == Activation::Relu) {
    return x > 0.f ? 1.f : 0.f;
  } else {
    const float s = 1.f / (1.f + expf(-x));
    return s * (1.f + x * (1.f - s));
  }
}

/// What column_sum_partial_kernel sums of the element v at row r, column j: v itself …
struct SumPlain {
  __device__ float operator()(float v, std::int64_t, std::int64_t) const { return v; }
};
/// … or the gradient through an activation, v · f'(pre[r, j]) with pre fp32 or bf16 (leading
/// dimension ld): activation_backward's float …
template <Activation A, typename PreT = float>
struct SumThroughActivation {
  const PreT* pre;
  std::int64_t ld;
  __device__ float operator()(float v, std::int64_t r, std::int64_t j) const {
    return __fmul_rn(v, act_df<A>(load_as(pre + r * ld + j)));
  }
};
/// … or the gradient through a dropout, keep ? x[i] · scale : 0 with the mask of (key, p) at the
/// full-layout index (rows ? rows[r] : r)·cols + j: dropout_backward's float, row map included.
struct SumThroughDropout {
  std::uint64_t key = 0, threshold = 0;
  float scale = 1.f;
  int active = 0;
  const std::int32_t* rows = nullptr;
  std::int64_t cols = 0;
  __device__ float operator()(float v, std::int64_t r, std::int64_t j) const {
    if (!active) return v;
    const std::int64_t full = (rows != nullptr ? static_cast<std::int64_t>(rows[r]) : r) * cols + j;
    return dropout_keep(key, full, threshold) ? __fmul_rn(v, scale) : 0.f;
  }
};
}  // namespace detail

/// partial (gridDim.y, C): chunk blockIdx.y's column sums of value(x), rows in ascending order;
/// x (rows, cols) fp32 or bf16 with leading dimension ldx. Cast: also x16 (rows, ld16) =
/// bf16(value(x)), in the same pass (the rows each thread reads, it rounds).
template <bool Cast, typename XT, typename Value>
static __global__ void column_sum_partial_kernel(const XT* __restrict__ x, std::int64_t ldx,
                                                 float* __restrict__ partial, std::int64_t rows,
                                                 std::int64_t cols, std::int64_t chunk,
                                                 __nv_bfloat16* __restrict__ x16, std::int64_t ld16,
                                                 Value value) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * chunk;
  const std::int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
  float s = 0.f;
  for (std::int64_t r = r0; r < r1; ++r) {
    const float v = value(load_as(x + r * ldx + j), r, j);
    s += v;
    if constexpr (Cast) x16[r * ld16 + j] = __float2bfloat16_rn(v);
  }
  partial[static_cast<std::int64_t>(blockIdx.y) * cols + j] = s;
}

static __global__ void add_into_kernel(float* __restrict__ y, const float* __restrict__ x,
                                       std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(y[i], x[i]);
}

static __global__ void position_add_kernel(float* __restrict__ x, const float* __restrict__ p,
                                           std::int64_t total, std::int64_t ld) {
  // x is (B, L·D) as rows of ld = L·D; p is (L·D).
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[i] = __fadd_rn(x[i], p[i % ld]);
}

/// One thread per (l, j) = k < L·D: dp[k] += Σ_b dx[b·L·D + k], b in order.
static __global__ void position_add_backward_kernel(const float* __restrict__ dx,
                                                    float* __restrict__ dp, std::int64_t batch,
                                                    std::int64_t ld) {
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= ld) return;
  float s = 0.f;
  for (std::int64_t b = 0; b < batch; ++b) s += dx[b * ld + k];
  dp[k] += s;
}

template <Activation A>
static __global__ void activation_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                 std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] = detail::act_f<A>(x[i]);
}

/// y (rows, cols) with leading dimension ldy, as OutT, = f(x) (rows, cols) with leading dimension
/// ldx, x fp32 or bf16: the bf16-activation form (same f, so y equals the rounding of the fp32
/// kernel's output on the same, widened, inputs). One block per row at a time, threads along the
/// row.
template <Activation A, typename InT, typename OutT>
static __global__ void activation_forward_rows_kernel(const InT* __restrict__ x, std::int64_t ldx,
                                                      OutT* __restrict__ y, std::int64_t rows,
                                                      std::int64_t cols, std::int64_t ldy) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      store_as(y + r * ldy + c, detail::act_f<A>(load_as(x + r * ldx + c)));
}

template <Activation A>
static __global__ void activation_backward_kernel(const float* __restrict__ x,
                                                  float* __restrict__ d, std::int64_t n) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    d[i] = __fmul_rn(d[i], detail::act_df<A>(x[i]));
}

namespace detail {
template <typename Value = SumPlain, typename XT = float>
void column_sum_add_impl(Backend& be, const XT* x, std::int64_t ldx, float* out, std::int64_t rows,
                         std::int64_t cols, __nv_bfloat16* x16, std::int64_t ld16,
                         Value value = {}) {
  if (rows == 0 || cols == 0) return;
  const std::int64_t want = rows < kColSumChunks ? rows : kColSumChunks;
  const std::int64_t chunk = (rows + want - 1) / want;
  const int chunks = static_cast<int>((rows + chunk - 1) / chunk);
  auto partial = be.buffer<float>(static_cast<std::size_t>(chunks) * cols);
  const dim3 grid(static_cast<unsigned>((cols + 255) / 256), static_cast<unsigned>(chunks));
  if (x16 != nullptr)
    column_sum_partial_kernel<true, XT, Value><<<grid, 256, 0, be.stream()>>>(
        x, ldx, partial.data(), rows, cols, chunk, x16, ld16, value);
  else
    column_sum_partial_kernel<false, XT, Value><<<grid, 256, 0, be.stream()>>>(
        x, ldx, partial.data(), rows, cols, chunk, nullptr, 0, value);
  SEQREC_CUDA_CHECK_LAUNCH();
  partial_sums_add(be, partial.data(), out, chunks, cols);
}
}  // namespace detail

/// out (cols) += Σ_rows x (rows, cols), deterministic.
inline void column_sum_add(Backend& be, const float* x, float* out, std::int64_t rows,
                           std::int64_t cols) {
  detail::column_sum_add_impl(be, x, cols, out, rows, cols, nullptr, 0);
}

/// out (cols) += Σ_rows x for a bf16 x (rows, cols) with leading dimension ld: the sums of the
/// widened values, in column_sum_add's order (a bias gradient whose output gradient a kernel wrote
/// in bf16 as its GEMM operand).
inline void column_sum_add(Backend& be, const __nv_bfloat16* x, std::int64_t ld, float* out,
                           std::int64_t rows, std::int64_t cols) {
  detail::column_sum_add_impl(be, x, ld, out, rows, cols, nullptr, 0);
}

/// column_sum_add, and x16 (rows, ld16) = bf16(x) in the same pass over x (a linear's output
/// gradient: its bias gradient, and the operand of both backward GEMMs in bf16 mode). The sums
/// have column_sum_add's bits, the copy cast_to_bf16's.
inline void column_sum_add_cast(Backend& be, const float* x, float* out, std::int64_t rows,
                                std::int64_t cols, __nv_bfloat16* x16, std::int64_t ld16) {
  detail::column_sum_add_impl(be, x, cols, out, rows, cols, x16, ld16);
}

/// activation_backward then column_sum_add_cast in one pass, without writing d back: with
/// g = d · f'(pre) (rows, cols), out (cols) += Σ_rows g and x16 (rows, ld16) = bf16(g). An MLP's
/// first linear in bf16 mode needs only these two of g (its bias gradient and its GEMM operand),
/// so the fp32 g is never stored. Bits: those of the two ops it replaces.
template <Activation A>
void activation_backward_sum_cast(Backend& be, const float* pre, const float* d, float* out,
                                  std::int64_t rows, std::int64_t cols, __nv_bfloat16* x16,
                                  std::int64_t ld16) {
  detail::column_sum_add_impl(be, d, cols, out, rows, cols, x16, ld16,
                              detail::SumThroughActivation<A>{pre, cols});
}

/// activation_backward_sum_cast with pre and d in bf16 (leading dimension ld, as bf16_ld(cols)
/// gives): the bf16 MLP whose first linear writes its output in bf16 (gemm_rm_bf16_out) and whose
/// second linear's input gradient is bf16 too. Bits: those of the fp32 form on the widened inputs.
template <Activation A>
void activation_backward_sum_cast(Backend& be, const __nv_bfloat16* pre, const __nv_bfloat16* d,
                                  std::int64_t ld, float* out, std::int64_t rows, std::int64_t cols,
                                  __nv_bfloat16* x16, std::int64_t ld16) {
  detail::column_sum_add_impl(be, d, ld, out, rows, cols, x16, ld16,
                              detail::SumThroughActivation<A, __nv_bfloat16>{pre, ld});
}

/// dropout_backward then column_sum_add_cast in one pass, without storing the dropped-out
/// gradient: with g = drop(d) (rows, cols) under the mask of (key, p) and the row map (as
/// dropout_backward takes them), out (cols) += Σ_rows g and x16 (rows, ld16) = bf16(g). A linear
/// layer whose output is dropped out into the residual stream needs only these two of its output
/// gradient in bf16 mode. Bits: those of the two ops it replaces.
inline void dropout_backward_sum_cast(Backend& be, const float* d, float* out, std::int64_t rows,
                                      std::int64_t cols, double p, std::uint64_t key,
                                      const std::int32_t* row_map, __nv_bfloat16* x16,
                                      std::int64_t ld16) {
  detail::SumThroughDropout value;
  if (p > 0.0) {
    value.key = key;
    value.threshold = detail::dropout_threshold(p);
    value.scale = static_cast<float>(1.0 / (1.0 - p));
    value.active = 1;
  }
  value.rows = row_map;
  value.cols = cols;
  detail::column_sum_add_impl(be, d, cols, out, rows, cols, x16, ld16, value);
}

/// y (n) += x (n).
inline void add_into(Backend& be, float* y, const float* x, std::int64_t n) {
  if (n == 0) return;
  add_into_kernel<<<detail::ew_blocks(n), 256, 0, be.stream()>>>(y, x, n);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// x (B, L, D) += p (L, D) for every b; p is the first L rows of the position table.
inline void position_add(Backend& be, float* x, const float* p, std::int64_t batch,
                         std::int64_t length, std::int64_t dim) {
  const std::int64_t total = batch * length * dim;
  if (total == 0) return;
  position_add_kernel<<<detail::ew_blocks(total), 256, 0, be.stream()>>>(x, p, total, length * dim);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dp (L, D) += Σ_b dx (B, L, D), deterministic (one thread per (l, j), b in order).
inline void position_add_backward(Backend& be, const float* dx, float* dp, std::int64_t batch,
                                  std::int64_t length, std::int64_t dim) {
  const std::int64_t ld = length * dim;
  if (ld == 0 || batch == 0) return;
  position_add_backward_kernel<<<static_cast<unsigned>((ld + 255) / 256), 256, 0, be.stream()>>>(
      dx, dp, batch, ld);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// y (n) = f(x) (n); y and x are distinct buffers.
template <Activation A>
void activation_forward(Backend& be, const float* x, float* y, std::int64_t n) {
  if (n == 0) return;
  activation_forward_kernel<A><<<detail::ew_blocks(n), 256, 0, be.stream()>>>(x, y, n);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// y (rows, cols) with leading dimension ldy, bf16, = f(x) (rows, cols) contiguous, rounded to
/// nearest even: what activation_forward then cast_to_bf16 would give, in one pass.
template <Activation A>
void activation_forward(Backend& be, const float* x, __nv_bfloat16* y, std::int64_t rows,
                        std::int64_t cols, std::int64_t ldy) {
  if (rows == 0 || cols == 0) return;
  const auto blocks = static_cast<unsigned>(rows < 65535 * 8 ? rows : 65535 * 8);
  activation_forward_rows_kernel<A, float, __nv_bfloat16>
      <<<blocks, 256, 0, be.stream()>>>(x, cols, y, rows, cols, ldy);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// The same from a bf16 x (rows, cols) with leading dimension ldx: f of the widened x, rounded.
template <Activation A>
void activation_forward(Backend& be, const __nv_bfloat16* x, std::int64_t ldx, __nv_bfloat16* y,
                        std::int64_t rows, std::int64_t cols, std::int64_t ldy) {
  if (rows == 0 || cols == 0) return;
  const auto blocks = static_cast<unsigned>(rows < 65535 * 8 ? rows : 65535 * 8);
  activation_forward_rows_kernel<A, __nv_bfloat16, __nv_bfloat16>
      <<<blocks, 256, 0, be.stream()>>>(x, ldx, y, rows, cols, ldy);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// d (n) *= f'(x) (n): the gradient through the activation, x the pre-activation.
template <Activation A>
void activation_backward(Backend& be, const float* x, float* d, std::int64_t n) {
  if (n == 0) return;
  activation_backward_kernel<A><<<detail::ew_blocks(n), 256, 0, be.stream()>>>(x, d, n);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
