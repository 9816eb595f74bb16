// Softmax over the item catalogue on the GPU, fused with the tied output projection and chunked
// over rows, matching ops/cross_entropy/cross_entropy_cpu.hpp: the cross-entropy of training, and
// the selected log-probabilities of DPO's head (cross-entropy is its case of one column per row
// with gradient −1).
//
// One routine (detail::softmax_head) serves both. For each chunk of at most C listed rows:
//   Hc (C, D)      = gather of the chunk's rows of h                      (kernel)
//   Z  (C, I)      = Hc · Wᵀ                                           (cuBLASLt, fp32 compute)
//   per row (one block): max, logsumexp, out(r, j) = z[col(r, j)] − lse for the row's J columns,
//   and, with gradient weights w (d loss / d out), in place
//   Z ← G = Σ_j w_j · onehot(col_j) − (Σ_j w_j) · softmax(z)              (kernel, fixed order)
//   dHc (C, D)     = G · W, scattered back to dh's rows                   (cuBLASLt + kernel)
//   dW  (I, D)    += Gᵀ · Hc                                              (cuBLASLt, beta = 1)
// Cross-entropy knows its weights before the pass (w = −grad_scale) and runs forward and
// backward in one pass. DPO's weights depend on the log-probabilities of the whole pair, so it
// runs a forward (selected_log_softmax), scores the pairs on the host, and a backward
// (selected_log_softmax_backward) that recomputes each chunk's Z with the same GEMM — the same
// bits — before forming G.
// In the backend's bf16 mode, Hc, G and W enter the three GEMMs as bf16 (fp32 accumulation, fp32
// dHc). Z is bf16 too when the backend has bf16 GEMM outputs (its default in bf16 mode): the
// logits GEMM rounds each fp32 sum once, as PyTorch's autocast does with a bf16 matmul, and G is
// written over Z in place; with them off Z stays fp32 and G gets a bf16 buffer of its own. The
// softmax and the log-probabilities are computed in fp32 from Z either way.
// Per-row losses stay on the device and are summed on the host in double in row order, exactly as
// the CPU op sums them. Every reduction has a fixed order, so results repeat bit for bit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"

namespace seqrec::cuda {

/// Whether the loss's logits are bf16 on this backend (bf16 mode with bf16 GEMM outputs), which
/// halves their bytes: the CUDA model then fits twice the rows in a chunk.
inline bool bf16_logits(const Backend& be) { return be.bf16() && be.bf16_gemm_outputs(); }

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

/// One block per row of z (c, I), row stride ldz, fp32 or bf16 (ZT; read widened); the row's J
/// item columns are cols (c, J) in [0, I). out (c, J) (unless null) = z[col] − logsumexp(z). When
/// with_grad, with the row's weights w_j = weights[r·(J+1) + 1 + j] and their sum
/// weights[r·(J+1)] (or, when weights is null, every w_j = weight and the sum J·weight),
/// G = Σ_j w_j onehot(col_j) − (Σ_j w_j)·softmax(z) is written over z (in z's type), or, when g16
/// is not null (z fp32 only), into g16 rounded to bf16 instead (same stride). A bf16 G's pad
/// columns [I, ldz) are set to zero: the dH GEMM reads them.
/// Dynamic shared memory: J ints (the row's columns), then, when cache, the row of z (I floats):
/// the first pass copies it there and the other two read it from there, so z crosses DRAM once,
/// not three times (at the study's 16,859 items a row is 66 KiB, and the rows of the blocks in
/// flight do not fit in L2). The same values in the same order either way: the same bits.
template <typename ZT>
__global__ void softmax_head_kernel(ZT* __restrict__ z, std::int64_t items, std::int64_t ldz,
                                    const std::int32_t* __restrict__ cols, int per_row,
                                    float* __restrict__ out, const float* __restrict__ weights,
                                    float weight, int with_grad, __nv_bfloat16* __restrict__ g16,
                                    int cache) {
  __shared__ float scratch[32];
  extern __shared__ std::int32_t row_cols[];
  const std::int64_t r = blockIdx.x;
  ZT* zr = z + r * ldz;
  float* zc = reinterpret_cast<float*>(row_cols + per_row);  // the cached row, when cache
  for (int j = threadIdx.x; j < per_row; j += blockDim.x) row_cols[j] = cols[r * per_row + j];
  float mx = -INFINITY;
  for (std::int64_t i = threadIdx.x; i < items; i += blockDim.x) {
    const float v = load_as(zr + i);
    if (cache) zc[i] = v;  // read back below by this same thread: no barrier needed
    mx = fmaxf(mx, v);
  }
  mx = detail::block_reduce(mx, scratch, detail::MaxOp{});  // its __syncthreads publish row_cols
  // The row, widened, for the passes below: from shared memory when cached.
  auto zs = [&](std::int64_t i) { return cache ? zc[i] : load_as(zr + i); };
  float sum = 0.f;
  for (std::int64_t i = threadIdx.x; i < items; i += blockDim.x) sum += expf(zs(i) - mx);
  sum = detail::block_reduce(sum, scratch, detail::SumOp{});
  const float lse = mx + logf(sum);
  if (out != nullptr)
    for (int j = threadIdx.x; j < per_row; j += blockDim.x)
      out[r * per_row + j] = zs(row_cols[j]) - lse;
  if (!with_grad) return;
  __syncthreads();  // every z[col] above is read before any thread overwrites z below
  const float* w = weights != nullptr ? weights + r * (per_row + 1) : nullptr;
  const float neg_total = -(w != nullptr ? w[0] : weight * static_cast<float>(per_row));
  __nv_bfloat16* gr = g16 != nullptr ? g16 + r * ldz : nullptr;
  for (std::int64_t i = threadIdx.x; i < items; i += blockDim.x) {
    float hit = 0.f;  // Σ w_j over the row's columns equal to i
    for (int j = 0; j < per_row; ++j)
      if (row_cols[j] == i) hit += w != nullptr ? w[1 + j] : weight;
    // One rounding, as nvcc contracted the cross-entropy's exp·gs − gs (fmaf(e, nt, 0) is the
    // plain product).
    const float g = fmaf(expf(zs(i) - lse), neg_total, hit);
    if (gr != nullptr)
      gr[i] = __float2bfloat16_rn(g);  // the GEMMs read only the bf16 copy
    else
      store_as(zr + i, g);  // each thread rewrites only what it alone read
  }
  // bf16: the dH GEMM runs over the padded width ldz (its K), so the pad columns must hold zeros
  // (the buffer is reused: stale bits could be NaN, and NaN · 0 is NaN).
  __nv_bfloat16* g_pad = gr;
  if constexpr (std::is_same_v<ZT, __nv_bfloat16>) g_pad = zr;
  if (g_pad != nullptr)
    for (std::int64_t i = items + threadIdx.x; i < ldz; i += blockDim.x)
      g_pad[i] = __float2bfloat16_rn(0.f);
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

namespace detail {

/// The rows softmax_head works on and how their gradient is formed. Device pointers.
struct HeadRows {
  const std::int32_t* rows = nullptr;  // (P) rows of h
  std::int64_t count = 0;              // P
  const std::int32_t* cols = nullptr;  // (P, J) item columns
  int per_row = 1;                     // J
  const float* weights = nullptr;  // (P, J + 1) [Σ_j w_j, w_1 … w_J]; null: every w_j = weight
  float weight = 0.f;
  // Every row of h is listed, in order (rows[k] == k, P == N): the dH GEMM then writes dh's rows
  // itself, with no clearing of dh and no scatter (a packed training step scores every row).
  bool identity = false;
};

/// The chunked pass described at the top of this file over the listed rows of h (N, D) against
/// items (I, D). out (P, J) (may be null) receives the log-probabilities; with_grad forms G from
/// the weights, then dh (N, D) — overwritten, zero for unlisted rows, may be null — and ditems
/// (I, D) (accumulated, may be null). C: rows whose logits exist at once.
inline void softmax_head(Backend& be, std::int64_t N, std::int64_t D, std::int64_t I,
                         std::int64_t C, const float* h, const HeadRows& r, const float* items,
                         float* out, bool with_grad, float* dh, float* ditems,
                         float ditems_beta = 1.f) {
  const std::int64_t P = r.count;
  SEQREC_CHECK(!r.identity || P == N, "softmax head (CUDA): identity rows need P == N");
  // Unlisted rows get zero; with identity rows the dH GEMMs write every row (when there is a
  // gradient to write).
  if (dh != nullptr && N > 0 && !(r.identity && with_grad && P > 0))
    SEQREC_CUDA_CHECK(cudaMemsetAsync(dh, 0, sizeof(float) * N * D, be.stream()));
  if (P == 0) return;
  // Balanced chunks: as few as C allows, of equal size (P = 9188, C = 7961: two of 4594, not 7961
  // and 1227), so no chunk's GEMMs run on a sliver of rows.
  C = std::max<std::int64_t>(1, std::min<std::int64_t>(C, P));
  const std::int64_t n_chunks = (P + C - 1) / C;
  C = (P + n_chunks - 1) / n_chunks;
  std::size_t smem = sizeof(std::int32_t) * static_cast<std::size_t>(r.per_row);
  SEQREC_CHECK(smem <= 48 * 1024, "softmax head (CUDA): at most 12288 columns per row, got " +
                                      std::to_string(r.per_row));
  // The softmax kernel keeps each row of the logits on chip where that leaves room for two
  // blocks per SM (up to ~28K items on an H100).
  const std::size_t row_bytes = sizeof(float) * static_cast<std::size_t>(I);
  const bool cache = 2 * (smem + row_bytes) <= static_cast<std::size_t>(be.max_smem_optin());
  const bool bf16 = be.bf16();
  // With bf16 GEMM outputs the logits GEMM writes Z in bf16 (its epilogue rounds the fp32 sums
  // once, as PyTorch's autocast does) and G goes over it in place: half Z's traffic, no G buffer.
  const bool z16 = bf16_logits(be);
  if (cache) {
    smem += row_bytes;
    const void* kernel = z16 ? reinterpret_cast<const void*>(&softmax_head_kernel<__nv_bfloat16>)
                             : reinterpret_cast<const void*>(&softmax_head_kernel<float>);
    SEQREC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
  }
  // bf16: operands rounded to bf16 (fp32 accumulation); Hc and G are produced in bf16 by the
  // gather and softmax kernels, the item table's bf16 copy is cached by the backend until the
  // weights change. Rows of Z and G are padded to a multiple of 8 elements (16-byte aligned bf16
  // rows, which the tensor-core GEMM kernels want); rows of the bf16 copies to bf16_ld(D).
  // The bf16 GEMMs also run over the padded item count Ig = ldz, with the table's bf16 copy
  // padded by zero rows: an item count that is not a multiple of 8 as the logits GEMM's N or the
  // dH GEMM's K cost tensor-core speed (H100, I = 16859, 3980 rows: logits 1.48 ms at 93 TFLOP/s
  // and dH 1.06 ms at 129, against 561 for the FFN's aligned GEMM; gpu_bench). The pad columns
  // of Z are never read; those of G are zero, and so are the pad rows they meet in dH.
  const std::int64_t ldz = bf16 ? (I + 7) / 8 * 8 : I;
  const std::int64_t Ig = bf16 ? ldz : I;
  const std::int64_t ldd = bf16 ? bf16_ld(D) : D;
  auto logits = be.buffer<float>(z16 ? 0 : static_cast<std::size_t>(C * ldz));
  auto logits16 = be.buffer<__nv_bfloat16>(z16 ? static_cast<std::size_t>(C * ldz) : 0);
  auto hc = be.buffer<float>(bf16 ? 0 : static_cast<std::size_t>(C * D));
  auto hc16 = be.buffer<__nv_bfloat16>(bf16 ? static_cast<std::size_t>(C * ldd) : 0);
  auto g16 =
      be.buffer<__nv_bfloat16>(bf16 && !z16 && with_grad ? static_cast<std::size_t>(C * ldz) : 0);
  // The bf16 G the two backward GEMMs read: in place over the bf16 Z, or its own buffer.
  const __nv_bfloat16* g_op = z16 ? logits16.data() : g16.data();
  auto dhc = be.buffer<float>(
      with_grad && dh != nullptr && !r.identity ? static_cast<std::size_t>(C * D) : 0);
  const __nv_bfloat16* items16 =
      bf16
          ? be.cached_bf16(items, Ig, D, D, ldd,
                           [&](__nv_bfloat16* dst) {
                             cast_to_bf16(be, items, I, D, D, dst, ldd);
                             if (Ig > I)
                               SEQREC_CUDA_CHECK(cudaMemsetAsync(
                                   dst + I * ldd, 0,
                                   sizeof(__nv_bfloat16) * static_cast<std::size_t>((Ig - I) * ldd),
                                   be.stream()));
                           })
          : nullptr;
  for (std::int64_t c0 = 0; c0 < P; c0 += C) {
    const std::int64_t c = std::min<std::int64_t>(C, P - c0);
    const unsigned ew_blocks = static_cast<unsigned>((c * D + 255) / 256);
    if (bf16) {
      cross_entropy_gather_bf16_kernel<<<ew_blocks, 256, 0, be.stream()>>>(h, r.rows + c0,
                                                                           hc16.data(), c, D, ldd);
      SEQREC_CUDA_CHECK_LAUNCH();
      // Z (c, Ig) = Hc (c, D) · Wᵀ, W (Ig, D) with zero pad rows; fp32 or bf16.
      if (z16)
        gemm_lt(be, CUDA_R_16BF, false, true, c, Ig, D, 1.f, hc16.data(), ldd, items16, ldd, 0.f,
                logits16.data(), ldz, nullptr, CUDA_R_16BF);
      else
        gemm_lt(be, CUDA_R_16BF, false, true, c, Ig, D, 1.f, hc16.data(), ldd, items16, ldd, 0.f,
                logits.data(), ldz);
    } else {
      cross_entropy_gather_kernel<<<ew_blocks, 256, 0, be.stream()>>>(h, r.rows + c0, hc.data(), c,
                                                                      D);
      SEQREC_CUDA_CHECK_LAUNCH();
      gemm_rm(be, false, true, c, I, D, 1.f, hc.data(), D, items, D, 0.f, logits.data(), I);
    }
    float* out_c = out != nullptr ? out + c0 * r.per_row : nullptr;
    const float* w_c = r.weights != nullptr ? r.weights + c0 * (r.per_row + 1) : nullptr;
    if (z16)
      softmax_head_kernel<__nv_bfloat16>
          <<<static_cast<unsigned>(c), detail::kCeThreads, smem, be.stream()>>>(
              logits16.data(), I, ldz, r.cols + c0 * r.per_row, r.per_row, out_c, w_c, r.weight,
              with_grad ? 1 : 0, nullptr, cache ? 1 : 0);
    else
      softmax_head_kernel<float>
          <<<static_cast<unsigned>(c), detail::kCeThreads, smem, be.stream()>>>(
              logits.data(), I, ldz, r.cols + c0 * r.per_row, r.per_row, out_c, w_c, r.weight,
              with_grad ? 1 : 0, bf16 && with_grad ? g16.data() : nullptr, cache ? 1 : 0);
    SEQREC_CUDA_CHECK_LAUNCH();
    if (!with_grad) continue;
    if (dh != nullptr) {
      // dHc (c, D) = G (c, I) · W (I, D), scattered to the rows of dh (identity rows: written
      // there directly, the same floats).
      float* dst = r.identity ? dh + c0 * D : dhc.data();
      if (bf16)
        gemm_lt(be, CUDA_R_16BF, false, false, c, D, Ig, 1.f, g_op, ldz, items16, ldd, 0.f, dst, D);
      else
        gemm_rm(be, false, false, c, D, I, 1.f, logits.data(), I, items, D, 0.f, dst, D);
      if (!r.identity) {
        cross_entropy_scatter_kernel<<<ew_blocks, 256, 0, be.stream()>>>(dhc.data(), r.rows + c0,
                                                                         dh, c, D);
        SEQREC_CUDA_CHECK_LAUNCH();
      }
    }
    // dW (I, D) += Gᵀ (I, c) · Hc (c, D); the first chunk's GEMM scales what was there by
    // ditems_beta (0: overwrites it, as the model's lazily zeroed table gradient wants).
    if (ditems != nullptr) {
      const float beta = c0 == 0 ? ditems_beta : 1.f;
      if (bf16)
        gemm_lt(be, CUDA_R_16BF, true, false, I, D, c, 1.f, g_op, ldz, hc16.data(), ldd, beta,
                ditems, D);
      else
        gemm_rm(be, true, false, I, D, c, 1.f, logits.data(), I, hc.data(), D, beta, ditems, D);
    }
  }
}

}  // namespace detail

/// Returns the summed loss (double) and writes the number of scored rows to *count. targets (N)
/// is a HOST array (the scored rows are listed on the host; the model has its targets there),
/// values < first_item mean "no target". Device pointers: h (N, D); items (I, D), the item block
/// of the tied table. dh (N, D) is overwritten (zero for unscored rows) and ditems (I, D)
/// accumulated (ditems = ditems_beta · ditems + the gradient, when a row is scored: beta 0 takes
/// no zeroing first); both may be null for a forward-only pass. Synchronises the stream once, at
/// the end (the loss is returned to the host). Shape is ops::CrossEntropyShape
/// (cross_entropy_cpu.hpp) or any struct with its fields (rows, dim, num_items, first_item,
/// chunk_rows); a template so that this header does not pull Eigen into nvcc.
template <typename Shape>
double cross_entropy_forward_backward(Backend& be, const Shape& s, const float* h,
                                      const std::int32_t* targets, const float* items, float* dh,
                                      float* ditems, float grad_scale, std::int64_t* count,
                                      float ditems_beta = 1.f) {
  const std::int64_t I = s.num_items;
  SEQREC_CHECK(s.rows < (std::int64_t{1} << 31), "cross_entropy (CUDA): N must be < 2^31");
  // List the scored rows, validating targets exactly as the CPU op does.
  std::vector<std::int32_t> list;  // the scored rows, then their item columns
  list.reserve(2 * static_cast<std::size_t>(s.rows));
  for (std::int64_t r = 0; r < s.rows; ++r) {
    const std::int32_t t = targets[r];
    if (t >= s.first_item) {
      SEQREC_CHECK(t - s.first_item < I, "target token out of the item range (row " +
                                             std::to_string(r) + ", token " + std::to_string(t) +
                                             ")");
      list.push_back(static_cast<std::int32_t>(r));
    }
  }
  const std::int64_t n_scored = static_cast<std::int64_t>(list.size());
  for (std::int64_t k = 0; k < n_scored; ++k)
    list.push_back(targets[list[static_cast<std::size_t>(k)]] - s.first_item);
  *count = n_scored;
  const bool with_grad = dh != nullptr || ditems != nullptr;
  if (n_scored == 0) {
    if (dh != nullptr && s.rows > 0)
      SEQREC_CUDA_CHECK(cudaMemsetAsync(dh, 0, sizeof(float) * s.rows * s.dim, be.stream()));
    return 0.0;
  }
  auto d_list = be.buffer<std::int32_t>(list.size());
  auto d_logp = be.buffer<float>(static_cast<std::size_t>(n_scored));
  SEQREC_CUDA_CHECK(cudaMemcpyAsync(d_list.data(), list.data(), d_list.bytes(),
                                    cudaMemcpyHostToDevice, be.stream()));
  detail::HeadRows rows;
  rows.rows = d_list.data();
  rows.count = n_scored;
  rows.cols = d_list.data() + n_scored;
  rows.weight = -grad_scale;  // loss = −log p: G = softmax·grad_scale − onehot·grad_scale
  rows.identity = n_scored == s.rows;  // the list is increasing: then it is 0, 1, …, N − 1
  detail::softmax_head(be, s.rows, s.dim, I, s.chunk_rows, h, rows, items, d_logp.data(), with_grad,
                       dh, ditems, ditems_beta);
  std::vector<float> logp(static_cast<std::size_t>(n_scored));
  SEQREC_CUDA_CHECK(cudaMemcpyAsync(logp.data(), d_logp.data(), d_logp.bytes(),
                                    cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  double loss = 0;
  for (float v : logp) loss -= static_cast<double>(v);
  return loss;
}

/// Selected log-probabilities (DPO's head; ops::selected_log_softmax on the CPU): for the P rows
/// `rows` of h (N, D) and their J item columns cols (P, J), logp (P, J) = z[col] − logsumexp(z)
/// with z = h_r · itemsᵀ. Device pointers; asynchronous. C: rows whose logits exist at once.
inline void selected_log_softmax(Backend& be, std::int64_t N, std::int64_t D, std::int64_t I,
                                 std::int64_t C, const float* h, const std::int32_t* rows,
                                 std::int64_t P, const std::int32_t* cols, int J,
                                 const float* items, float* logp) {
  detail::HeadRows r;
  r.rows = rows;
  r.count = P;
  r.cols = cols;
  r.per_row = J;
  detail::softmax_head(be, N, D, I, C, h, r, items, logp, false, nullptr, nullptr);
}

/// Its backward from weights (P, J + 1) = [Σ_j w_j, w_1 … w_J] per row, w = scale · d loss / d logp
/// (the sum formed on the host in double): dh (N, D) overwritten (zero outside the rows), ditems
/// (I, D) accumulated unless null (scaled by ditems_beta first when P > 0, as in the loss).
/// Recomputes each chunk's logits with the forward's GEMM.
inline void selected_log_softmax_backward(Backend& be, std::int64_t N, std::int64_t D,
                                          std::int64_t I, std::int64_t C, const float* h,
                                          const std::int32_t* rows, std::int64_t P,
                                          const std::int32_t* cols, int J, const float* items,
                                          const float* weights, float* dh, float* ditems,
                                          float ditems_beta = 1.f) {
  detail::HeadRows r;
  r.rows = rows;
  r.count = P;
  r.cols = cols;
  r.per_row = J;
  r.weights = weights;
  detail::softmax_head(be, N, D, I, C, h, r, items, nullptr, true, dh, ditems, ditems_beta);
}

}  // namespace seqrec::cuda
