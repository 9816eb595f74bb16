// Token embedding on the GPU, fp32, matching ops/embedding/embedding_cpu.hpp:
//   forward  x[n] = table[tokens[n]] · scale                    tokens (N), table (V, D), x (N, D)
//   backward dtable[tokens[n]] += dx[n] · scale
//
// Forward: a gather. One block row-strides over the output rows and its threads walk the columns
// of a row, four at a time (float4) when D % 4 == 0 and the pointers are 16-byte aligned.
//
// Backward: no float atomics, deterministic (bit-identical reruns), and memory-bound even when one
// token (padding) owns half the rows:
//   1. (token, row) pairs are sorted by token with cub::DeviceRadixSort. The sort is stable, so
//      the rows of one token stay in ascending order; sorted position p holds row sorted_rows[p].
//   2. The sorted positions are cut into fixed windows of kEmbWindow (32) positions. Kernel
//      `embedding_backward_window_kernel` runs on a 2-D grid (windows × column tiles); each thread
//      owns one column (or float4 of columns) and walks its window's 32 positions in order,
//      summing dx[row] · scale into a register and closing a "segment" wherever the token changes
//      or the window ends. A segment whose run (all positions of that token) lies entirely in the
//      window is added straight into dtable[token]: only this thread ever touches that element.
//      A segment of a run that crosses the window's start is stored in head[window], one that
//      crosses its end in tail[window] (a window lying wholly inside a run stores into head).
//   3. Kernel `embedding_backward_merge_kernel`, same grid: the window in which a crossing run
//      starts (its "owner") sums tail[owner] then head[w] for the following windows of the run,
//      in window order, and adds the total into dtable[token].
// Every token's sum is thus formed in a fixed order that depends only on the tokens (ascending
// rows within a window, windows in order), so reruns agree bit for bit. Work is spread over
// ⌈N/32⌉ × ⌈D/512⌉ blocks whatever the run lengths: the old design (one block per run, D walked
// 32 columns at a time) left the padding run, half of N, to a single SM (7.1 ms at N = 20480,
// D = 1024). Only the merge of a long run is serial, over ⌈run/32⌉ partial rows (~320 float4
// loads per thread for a 10k-row padding run, loads independent and unrolled).
//
// The result differs from the CPU op (which adds row by row into dtable) only by the summation
// order: dtable + (Σ in 32-row chunks) instead of ((dtable + t0) + t1) + …
#pragma once

#include <cstdint>
#include <cub/cub.cuh>
#include <initializer_list>
#include <string>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kEmbWindow = 32;       // sorted positions per window in the backward
constexpr int kEmbBatch = 8;         // rows loaded ahead per thread in the window kernel
constexpr int kEmbBwdThreads = 128;  // column threads per backward block (× 4 columns with float4)
constexpr int kEmbFwdThreads = 256;  // column threads per forward block

/// 4 when D % 4 == 0 and every pointer is 16-byte aligned (rows then stay aligned), else 1.
inline int emb_vector_width(std::int64_t d, std::initializer_list<const void*> ptrs) {
  if (d % 4 != 0) return 1;
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return 1;
  return 4;
}

/// Threads per block for `cols` vector columns: a multiple of 32, at most `max_threads`.
inline int emb_block_threads(std::int64_t cols, int max_threads) {
  const std::int64_t t = (cols + 31) / 32 * 32;
  return static_cast<int>(t < max_threads ? t : max_threads);
}
}  // namespace detail

/// x (N, D) = table[tokens] · scale. Block b handles rows b, b + gridDim.x, …; its threads walk
/// the D / VW vector columns of each row.
template <int VW>
static __global__ void embedding_forward_kernel(const std::int32_t* __restrict__ tokens,
                                                const float* __restrict__ table,
                                                float* __restrict__ x, std::int64_t n,
                                                std::int64_t d, float scale) {
  const std::int64_t dv = d / VW;
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* src = table + static_cast<std::int64_t>(tokens[r]) * d;
    float* dst = x + r * d;
    for (std::int64_t c = threadIdx.x; c < dv; c += blockDim.x) {
      FVec<VW> v = vec_load<VW>(src + c * VW);
#pragma unroll
      for (int e = 0; e < VW; ++e) v.v[e] *= scale;
      vec_store<VW>(dst + c * VW, v);
    }
  }
}

/// Fills rows[i] = i (the values sorted alongside the tokens).
static __global__ void embedding_iota_kernel(std::int32_t* __restrict__ rows, std::int64_t n) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) rows[i] = static_cast<std::int32_t>(i);
}

/// Step 2 of the backward (see the file comment). Grid: (⌈N / kEmbWindow⌉, column tiles); block:
/// column threads, thread → vector column blockIdx.y · blockDim.x + threadIdx.x. sorted_tokens,
/// sorted_rows (N); dx (N, D); dtable (V, D); head, tail (windows, D).
template <int VW>
static __global__ void embedding_backward_window_kernel(
    const std::int32_t* __restrict__ sorted_tokens, const std::int32_t* __restrict__ sorted_rows,
    const float* __restrict__ dx, float* __restrict__ dtable, float* __restrict__ head,
    float* __restrict__ tail, std::int64_t n, std::int64_t d, float scale) {
  // s_tok[1 + i] = token at window position i; s_tok[0] and s_tok[cnt + 1] are the tokens just
  // before and just after the window (-1 at the ends of the array: tokens are >= 0).
  __shared__ std::int32_t s_tok[detail::kEmbWindow + 2];
  __shared__ std::int32_t s_row[detail::kEmbWindow];
  const std::int64_t w = blockIdx.x;
  const std::int64_t begin = w * detail::kEmbWindow;
  const std::int64_t end = begin + detail::kEmbWindow < n ? begin + detail::kEmbWindow : n;
  const int cnt = static_cast<int>(end - begin);
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
    s_tok[1 + i] = sorted_tokens[begin + i];
    s_row[i] = sorted_rows[begin + i];
  }
  if (threadIdx.x == 0) {
    s_tok[0] = begin > 0 ? sorted_tokens[begin - 1] : -1;
    s_tok[cnt + 1] = end < n ? sorted_tokens[end] : -1;
  }
  __syncthreads();
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= d / VW) return;  // no barrier below
  const std::int64_t col = c * VW;

  FVec<VW> acc;
#pragma unroll
  for (int e = 0; e < VW; ++e) acc.v[e] = 0.f;
  int seg_start = 0;
  // Rows are loaded kEmbBatch at a time before any of them is added, so that several loads are in
  // flight per thread (the segment-closing branches would otherwise keep the compiler from
  // hoisting the next row's load); the additions still run in ascending position order.
  for (int i0 = 0; i0 < cnt; i0 += detail::kEmbBatch) {
    FVec<VW> g[detail::kEmbBatch];
#pragma unroll
    for (int u = 0; u < detail::kEmbBatch; ++u) {
      if (i0 + u < cnt) {
        g[u] = vec_load<VW>(dx + static_cast<std::int64_t>(s_row[i0 + u]) * d + col);
      } else {
#pragma unroll
        for (int e = 0; e < VW; ++e) g[u].v[e] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < detail::kEmbBatch; ++u) {
      const int i = i0 + u;
      if (i >= cnt) break;
#pragma unroll
      for (int e = 0; e < VW; ++e) acc.v[e] += g[u].v[e] * scale;
      const int tok = s_tok[1 + i];
      if (i + 1 == cnt || s_tok[2 + i] != tok) {  // the segment [seg_start, i] ends here
        const bool before =
            seg_start == 0 && s_tok[0] == tok;  // its run began in an earlier window
        const bool after = i + 1 == cnt && s_tok[cnt + 1] == tok;  // its run goes on after
        if (!before && !after) {
          float* out = dtable + static_cast<std::int64_t>(tok) * d + col;
          FVec<VW> o = vec_load<VW>(out);
#pragma unroll
          for (int e = 0; e < VW; ++e) o.v[e] += acc.v[e];
          vec_store<VW>(out, o);
        } else if (before) {
          vec_store<VW>(head + w * d + col, acc);
        } else {
          vec_store<VW>(tail + w * d + col, acc);
        }
#pragma unroll
        for (int e = 0; e < VW; ++e) acc.v[e] = 0.f;
        seg_start = i + 1;
      }
    }
  }
}

/// Step 3 of the backward (see the file comment); same grid as the window kernel. Window w acts
/// only if the run of its last token starts in w and goes on past w's end.
template <int VW>
static __global__ void embedding_backward_merge_kernel(
    const std::int32_t* __restrict__ sorted_tokens, const float* __restrict__ head,
    const float* __restrict__ tail, float* __restrict__ dtable, std::int64_t n, std::int64_t d) {
  const std::int64_t w = blockIdx.x;
  const std::int64_t begin = w * detail::kEmbWindow, end = begin + detail::kEmbWindow;
  if (end >= n) return;  // the last window: nothing goes on past it
  const std::int32_t tok = sorted_tokens[end - 1];
  if (sorted_tokens[end] != tok) return;                     // the run ends inside this window
  if (begin > 0 && sorted_tokens[begin - 1] == tok) return;  // the run began in an earlier window
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= d / VW) return;
  const std::int64_t col = c * VW;

  // The run's end: the first position >= end whose token differs (binary search in sorted order;
  // every thread of the block searches the same addresses, which broadcast).
  std::int64_t lo = end, hi = n;  // sorted_tokens[lo - 1] == tok; answer in (lo - 1, hi]
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (sorted_tokens[mid] == tok)
      lo = mid + 1;
    else
      hi = mid;
  }
  const std::int64_t last_w = (lo - 1) / detail::kEmbWindow;  // window holding the run's last row

  FVec<VW> s = vec_load<VW>(tail + w * d + col);
#pragma unroll 8
  for (std::int64_t w2 = w + 1; w2 <= last_w; ++w2) {
    const FVec<VW> h = vec_load<VW>(head + w2 * d + col);
#pragma unroll
    for (int e = 0; e < VW; ++e) s.v[e] += h.v[e];
  }
  float* out = dtable + static_cast<std::int64_t>(tok) * d + col;
  FVec<VW> o = vec_load<VW>(out);
#pragma unroll
  for (int e = 0; e < VW; ++e) o.v[e] += s.v[e];
  vec_store<VW>(out, o);
}

/// tokens (N) → x (N, D) = table[tokens] · scale. Tokens must already be validated (< V).
inline void embedding_forward(Backend& be, const std::int32_t* tokens, const float* table, float* x,
                              std::int64_t n, std::int64_t d, float scale) {
  if (n == 0 || d == 0) return;
  const int vw = detail::emb_vector_width(d, {table, x});
  const int threads = detail::emb_block_threads(d / vw, detail::kEmbFwdThreads);
  const unsigned blocks = static_cast<unsigned>(n < 65535 * 8 ? n : 65535 * 8);
  if (vw == 4)
    embedding_forward_kernel<4><<<blocks, threads, 0, be.stream()>>>(tokens, table, x, n, d, scale);
  else
    embedding_forward_kernel<1><<<blocks, threads, 0, be.stream()>>>(tokens, table, x, n, d, scale);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dtable (V, D) += scatter of dx (N, D) · scale by tokens (N), deterministic. `vocab` = V bounds
/// the radix sort's key bits; tokens must lie in [0, V). N < 2³¹.
inline void embedding_backward(Backend& be, const std::int32_t* tokens, const float* dx,
                               float* dtable, std::int64_t n, std::int64_t d, std::int64_t vocab,
                               float scale) {
  SEQREC_CHECK(n < (std::int64_t{1} << 31), "embedding_backward (CUDA): N must be < 2^31");
  SEQREC_CHECK(vocab >= 1 && vocab <= (std::int64_t{1} << 31) - 1,
               "embedding_backward (CUDA): vocab out of range");
  if (n == 0 || d == 0) return;
  const int num = static_cast<int>(n);
  int end_bit = 1;
  while (end_bit < 31 && (std::int64_t{1} << end_bit) < vocab) ++end_bit;

  const std::int64_t windows = (n + detail::kEmbWindow - 1) / detail::kEmbWindow;
  const int vw = detail::emb_vector_width(d, {dx, dtable});
  const std::int64_t dv = d / vw;
  const int threads = detail::emb_block_threads(dv, detail::kEmbBwdThreads);
  const std::int64_t tiles = (dv + threads - 1) / threads;
  SEQREC_CHECK(tiles <= 65535,
               "embedding_backward (CUDA): D too large, got D = " + std::to_string(d));

  auto rows = be.buffer<std::int32_t>(n);
  auto sorted_tokens = be.buffer<std::int32_t>(n);
  auto sorted_rows = be.buffer<std::int32_t>(n);
  // head/tail rows are written only for windows cut by a run boundary and read only for those:
  // no initialisation needed.
  auto head = be.buffer<float>(static_cast<std::size_t>(windows * d));
  auto tail = be.buffer<float>(static_cast<std::size_t>(windows * d));

  std::size_t t_sort = 0;
  SEQREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, t_sort, tokens, sorted_tokens.data(),
                                                    rows.data(), sorted_rows.data(), num, 0,
                                                    end_bit, be.stream()));
  auto temp = be.buffer<std::byte>(t_sort);
  embedding_iota_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, be.stream()>>>(
      rows.data(), n);
  SEQREC_CUDA_CHECK_LAUNCH();
  SEQREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.data(), t_sort, tokens, sorted_tokens.data(), rows.data(), sorted_rows.data(), num, 0,
      end_bit, be.stream()));

  const dim3 grid(static_cast<unsigned>(windows), static_cast<unsigned>(tiles));
  if (vw == 4) {
    embedding_backward_window_kernel<4>
        <<<grid, threads, 0, be.stream()>>>(sorted_tokens.data(), sorted_rows.data(), dx, dtable,
                                            head.data(), tail.data(), n, d, scale);
    SEQREC_CUDA_CHECK_LAUNCH();
    embedding_backward_merge_kernel<4><<<grid, threads, 0, be.stream()>>>(
        sorted_tokens.data(), head.data(), tail.data(), dtable, n, d);
  } else {
    embedding_backward_window_kernel<1>
        <<<grid, threads, 0, be.stream()>>>(sorted_tokens.data(), sorted_rows.data(), dx, dtable,
                                            head.data(), tail.data(), n, d, scale);
    SEQREC_CUDA_CHECK_LAUNCH();
    embedding_backward_merge_kernel<1><<<grid, threads, 0, be.stream()>>>(
        sorted_tokens.data(), head.data(), tail.data(), dtable, n, d);
  }
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
