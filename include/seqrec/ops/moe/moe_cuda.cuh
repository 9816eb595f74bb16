// The mixture-of-experts feed-forward layer on the GPU, fp32, matching policy::ffn::MoE<E, K,
// Mlp<Silu>> of policy/feed_forward.hpp (read that first: this file mirrors it step by step).
//
//   logits (N, E) = x · Wrᵀ                       router, no bias
//   p = softmax(logits), lse = logsumexp(logits)  in double, rounded to float like the CPU
//   top-K experts by p (ties to the lower id), weights w_k = p_k / Σ_top p (float)
//   y[r] = Σ_k w_k · expert_{e_k}(x[r]),  expert(x) = W2 · silu(W1 x + b1) + b2
//   aux = α·E·Σ_e f_e·P_e + β·mean(lse²)          over valid (non-padding) tokens only
//
// The layer is a device object that does not own its parameters: forward/backward take the device
// flat arrays of values and gradients laid out like the host ParameterStore (the tensor with id
// `id` starts at base + store.entry(id).offset), so the CUDA model registers its parameters through
// the CPU layer and then builds this one, which looks the names up:
//   "<prefix>.router.weight" (E, D), "<prefix>.experts.<e>.fc1.weight" (F, D), ".fc1.bias" (F),
//   ".fc2.weight" (D, F), ".fc2.bias" (D).
//
// Forward, all on the backend's stream:
//   1. router GEMM (cuBLASLt, weight operand B).
//   2. moe_route_kernel, one thread per token: softmax + lse in double (the CPU's exact formulas),
//      top-K by selection with the CPU's comparator, renormalised float weights; it also writes
//      the sort keys (expert id) and values (pair index q = r·K + k) of the (token, slot) pairs.
//   3. moe_stats_kernel, one block: per-expert pair counts (all tokens, and valid tokens only),
//      Σ_valid p_e, Σ_valid lse², the number of valid tokens; each thread strides over tokens, then
//      thread 0 adds the 256 partials in thread order (fixed order: bit-identical reruns).
//   4. cub::DeviceRadixSort::SortPairs by expert id. The sort is stable and the pairs go in by
//      ascending q, so each expert's pairs form one contiguous block in ascending token order,
//      which is the CPU's per-expert row order. pos[q] = sorted position of pair q (the inverse).
//   5. The stats are copied to the host and the stream is synchronised: ONE SMALL SYNC PER
//      FORWARD, needed anyway to size the per-expert GEMMs. The aux loss and the expert shares
//      are then formed on the host in double exactly as the CPU does.
//   6. The inputs are gathered in sorted order (xin), and each expert with m > 0 rows runs its two
//      GEMMs on its contiguous block; SiLU runs once over all N·K rows.
//   7. y[r] = Σ w_k · yout[pos[r, k]], one block per token, no atomics. The K terms are added in
//      ascending EXPERT order starting from 0, which is the CPU's order (it adds expert by expert),
//      without FMA (__fmul_rn/__fadd_rn); given equal yout and w it is the CPU's float for float
//      only where the host compiler does not contract the CPU's y += w·yout into an FMA (GCC does
//      under -march=native), so the tests compare y with a tolerance.
//
// Backward mirrors the CPU's:
//   1. moe_scale_dy_kernel, one warp per sorted pair: dyin = w·dy[r] (float, as the CPU) and
//      dw = Σ_j dy·yout in double (lane-strided partials, then a fixed xor-butterfly: lane 0's sum
//      has a fixed order; the CPU sums serially in double, so the two agree to ~1e-16 relative).
//   2. Per expert: dact = dyin·W2, dW2 += dyinᵀ·act, db2 += Σ dyin; silu' once over all rows;
//      dxin = dact·W1, dW1 += dactᵀ·xin, db1 += Σ dact (column_sum_add: fixed-order chunks).
//   3. dx[r] = Σ_k dxin[pos[r, k]] gathered per token in ascending expert order (the CPU's order),
//      no atomics.
//   4. moe_router_backward_kernel, one thread per token: the gradient through the renormalised
//      weights, the balance loss and the z-loss, in double with the CPU's formulas.
//   5. dx += dlogits·Wr (GEMM with beta = 1), dWr += dlogitsᵀ·x.
// Where the result differs from the CPU: the GEMMs and column sums (cuBLASLt and chunked sums
// against Eigen), device exp/log/expf, and the double reductions of the stats (thread-strided,
// then in thread order, against the CPU's serial loop). Every sum has a fixed order, so a rerun on
// the same GPU is bit-identical (cuBLASLt is deterministic for a fixed problem and algorithm).
//
// Memory kept from forward to backward (N rows, K slots): logits/probs (N·E), lse (N, double),
// choices, weights and the permutation (N·K each), xin and yout (N·K·D), pre-activation and
// activation (N·K·F): about 1.7 GB at N = 20480, K = 2, D = 1024, F = 4096; backward adds ~1 GB of
// temporaries (dyin, dxin, dact) from the allocator's cache. Device buffers come
// from the backend's allocator: a layer must be destroyed before its Backend.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cub/cub.cuh>
#include <limits>
#include <string>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"
#include "seqrec/core/error.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/ops/elementwise/elementwise_cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kMoeThreads = 256;  // threads of the per-token and per-row kernels
constexpr int kMoeWarps = 8;      // warps per block of moe_scale_dy_kernel

/// What the forward's stats kernel reduces, copied to the host once per forward.
template <int E>
struct MoeStats {
  long long count_all[E];    // routed (token, slot) pairs per expert, padding rows included
  long long count_valid[E];  // the same over valid rows (the CPU's share[e] before division)
  double psum[E];            // Σ_valid p_e (the CPU's mean_p[e] before division)
  double z2;                 // Σ_valid lse²
  long long n_valid;         // valid rows
};

/// Threads of the single stats block (this fixes its summation order): 256, fewer when E is so
/// large that 256 partials would not fit in 32 KiB of static shared memory.
template <int E>
__host__ __device__ constexpr int moe_stats_threads() {
  constexpr int fit = static_cast<int>(32768 / sizeof(MoeStats<E>)) / 32 * 32;
  // One warp's partials must fit too: with E above ~40 experts (24·E + 16 bytes per partial)
  // the block would need more shared memory than it is promised.
  static_assert(fit >= 32, "moe_stats_threads: too many experts for the single stats block");
  return fit > 256 ? 256 : fit;
}

/// What the router backward needs of the forward's host-side stats, passed by value.
template <int E>
struct MoeRouterCoefs {
  double share[E];  // f_e = count_valid[e] / (n_valid·K)
  double n_valid;
  double alpha, beta;
};

/// Grid size for a grid-stride loop over `items` with one item per block (or thread).
inline unsigned moe_grid(std::int64_t items, std::int64_t per_block) {
  const std::int64_t want = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(want < 65535 ? (want > 0 ? want : 1) : 65535);
}

/// Threads for a block walking `d` columns: a multiple of 32, at most 256.
inline int moe_row_threads(std::int64_t d) {
  const std::int64_t t = (d + 31) / 32 * 32;
  return static_cast<int>(t < kMoeThreads ? t : kMoeThreads);
}
}  // namespace detail

/// One thread per token r: probs (N, E), lse (N), choice (N, K), weight (N, K), eorder (N, K)
/// (the slots k in ascending order of their expert id), keys / pairs (N·K) for the sort.
/// Same formulas as the CPU (policy/feed_forward.hpp, MoE::Layer::forward), same comparator.
template <int E, int K>
static __global__ void moe_route_kernel(const float* __restrict__ logits, float* __restrict__ probs,
                                        double* __restrict__ lse, std::int32_t* __restrict__ choice,
                                        float* __restrict__ weight,
                                        std::int32_t* __restrict__ eorder,
                                        std::int32_t* __restrict__ keys,
                                        std::int32_t* __restrict__ pairs, std::int64_t n) {
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  float z[E];
#pragma unroll
  for (int e = 0; e < E; ++e) z[e] = logits[r * E + e];
  float mx = z[0];
#pragma unroll
  for (int e = 1; e < E; ++e) mx = mx < z[e] ? z[e] : mx;  // std::max(mx, z[e])
  double sum = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) sum += exp(static_cast<double>(__fsub_rn(z[e], mx)));
  const double l = static_cast<double>(mx) + log(sum);
  lse[r] = l;
  float p[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    p[e] = __double2float_rn(exp(static_cast<double>(z[e]) - l));
    probs[r * E + e] = p[e];
  }
  // Top-K by selection: the k-th pick is the largest remaining p, the lowest id among equals
  // (e ascends and only a strictly larger p replaces the pick) = the CPU's partial_sort order.
  int ch[K];
  bool taken[E];
#pragma unroll
  for (int e = 0; e < E; ++e) taken[e] = false;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    int best = -1;
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
    taken[best] = true;
    ch[k] = best;
  }
  float top = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) top = __fadd_rn(top, p[ch[k]]);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const std::int64_t q = r * K + k;
    choice[q] = ch[k];
    weight[q] = __fdiv_rn(p[ch[k]], top);
    keys[q] = ch[k];
    pairs[q] = static_cast<std::int32_t>(q);
  }
  // Slots in ascending expert order (insertion sort of K ids; the ids are distinct).
  int ord[K];
#pragma unroll
  for (int k = 0; k < K; ++k) ord[k] = k;
  for (int i = 1; i < K; ++i) {
    const int v = ord[i];
    int j = i;
    while (j > 0 && ch[ord[j - 1]] > ch[v]) {
      ord[j] = ord[j - 1];
      --j;
    }
    ord[j] = v;
  }
#pragma unroll
  for (int i = 0; i < K; ++i) eorder[r * K + i] = ord[i];
}

/// One block of moe_stats_threads<E>() threads: thread t reduces tokens t, t + 256, …, then
/// thread 0 adds the per-thread partials in thread order into *out.
template <int E, int K>
static __global__ void moe_stats_kernel(const float* __restrict__ probs,
                                        const double* __restrict__ lse,
                                        const std::int32_t* __restrict__ choice,
                                        const std::uint8_t* __restrict__ valid, std::int64_t n,
                                        detail::MoeStats<E>* __restrict__ out) {
  __shared__ detail::MoeStats<E> part[detail::moe_stats_threads<E>()];
  detail::MoeStats<E> s;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    s.count_all[e] = 0;
    s.count_valid[e] = 0;
    s.psum[e] = 0;
  }
  s.z2 = 0;
  s.n_valid = 0;
  for (std::int64_t r = threadIdx.x; r < n; r += blockDim.x) {
    const bool real = valid[r] != 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int e = choice[r * K + k];
      s.count_all[e] += 1;
      if (real) s.count_valid[e] += 1;
    }
    if (!real) continue;
    s.n_valid += 1;
#pragma unroll
    for (int e = 0; e < E; ++e) s.psum[e] += static_cast<double>(probs[r * E + e]);
    s.z2 = __dadd_rn(s.z2, __dmul_rn(lse[r], lse[r]));
  }
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x != 0) return;
  detail::MoeStats<E> t = part[0];
  for (int i = 1; i < static_cast<int>(blockDim.x); ++i) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      t.count_all[e] += part[i].count_all[e];
      t.count_valid[e] += part[i].count_valid[e];
      t.psum[e] += part[i].psum[e];
    }
    t.z2 += part[i].z2;
    t.n_valid += part[i].n_valid;
  }
  *out = t;
}

/// pos[sorted_pairs[i]] = i: where each (token, slot) pair sits in the expert-sorted order.
static __global__ void moe_inverse_kernel(const std::int32_t* __restrict__ sorted_pairs,
                                          std::int32_t* __restrict__ pos, std::int64_t total) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    pos[sorted_pairs[i]] = static_cast<std::int32_t>(i);
}

/// xin[p] = x[sorted_pairs[p] / K] for every sorted position p (rows of width d). One block per
/// row (grid-stride), threads over the columns.
static __global__ void moe_gather_rows_kernel(const float* __restrict__ x,
                                              const std::int32_t* __restrict__ sorted_pairs,
                                              float* __restrict__ xin, std::int64_t rows,
                                              std::int64_t d, int k) {
  for (std::int64_t p = blockIdx.x; p < rows; p += gridDim.x) {
    const float* src = x + static_cast<std::int64_t>(sorted_pairs[p] / k) * d;
    float* dst = xin + p * d;
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
  }
}

/// out[r] = Σ_i (w ·) src[pos[r, k_i]] over the K slots k_i in ascending expert order, starting
/// from 0 (the CPU's order). Weighted: y from the expert outputs; unweighted: dx from the expert
/// input gradients. One block per token (grid-stride), threads over the columns.
template <int K, bool Weighted>
static __global__ void moe_combine_kernel(const float* __restrict__ src,
                                          const std::int32_t* __restrict__ pos,
                                          const float* __restrict__ weight,
                                          const std::int32_t* __restrict__ eorder,
                                          float* __restrict__ out, std::int64_t n, std::int64_t d) {
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* rows[K];
    float w[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int k = eorder[r * K + i];
      rows[i] = src + static_cast<std::int64_t>(pos[r * K + k]) * d;
      w[i] = Weighted ? weight[r * K + k] : 1.f;
    }
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < K; ++i)
        acc = __fadd_rn(acc, Weighted ? __fmul_rn(w[i], rows[i][j]) : rows[i][j]);
      out[r * d + j] = acc;
    }
  }
}

/// One warp per sorted position p (pair q = sorted_pairs[p], token r = q / K): dyin[p] = w_q·dy[r]
/// and dw[q] = Σ_j dy[r, j]·yout[p, j] in double.
static __global__ void moe_scale_dy_kernel(const float* __restrict__ dy,
                                           const float* __restrict__ yout,
                                           const std::int32_t* __restrict__ sorted_pairs,
                                           const float* __restrict__ weight,
                                           float* __restrict__ dyin, double* __restrict__ dw,
                                           std::int64_t rows, std::int64_t d, int k) {
  const int lane = threadIdx.x & 31;
  const std::int64_t p =
      static_cast<std::int64_t>(blockIdx.x) * detail::kMoeWarps + (threadIdx.x >> 5);
  if (p >= rows) return;  // whole warps leave together: p is uniform across a warp
  const std::int32_t q = sorted_pairs[p];
  const float w = weight[q];
  const float* g = dy + static_cast<std::int64_t>(q / k) * d;
  const float* yo = yout + p * d;
  float* o = dyin + p * d;
  double acc = 0;
  for (std::int64_t j = lane; j < d; j += 32) {
    const float gj = g[j];
    o[j] = __fmul_rn(w, gj);
    acc = __dadd_rn(acc, __dmul_rn(static_cast<double>(gj), static_cast<double>(yo[j])));
  }
  acc = warp_sum(acc);
  if (lane == 0) dw[q] = acc;
}

/// One thread per token: dlogits (N, E) from the renormalised-weight path (dw), the balance loss
/// and the z-loss. The CPU's formulas (MoE::Layer::backward), in double, rounded to float.
template <int E, int K>
static __global__ void moe_router_backward_kernel(
    const float* __restrict__ probs, const double* __restrict__ lse,
    const std::int32_t* __restrict__ choice, const float* __restrict__ weight,
    const double* __restrict__ dw, const std::uint8_t* __restrict__ valid,
    detail::MoeRouterCoefs<E> c, float* __restrict__ dlogits, std::int64_t n) {
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  double p[E], dp[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    p[e] = static_cast<double>(probs[r * E + e]);
    dp[e] = 0;
  }
  double top = 0, wdw = 0;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    top = __dadd_rn(top, p[choice[r * K + k]]);
    wdw = __dadd_rn(wdw, __dmul_rn(static_cast<double>(weight[r * K + k]), dw[r * K + k]));
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int e = choice[r * K + k];
    dp[e] = __dadd_rn(dp[e], (dw[r * K + k] - wdw) / top);
  }
  const bool real = valid[r] != 0 && c.n_valid > 0;
  if (real) {
#pragma unroll
    for (int e = 0; e < E; ++e)
      dp[e] = __dadd_rn(dp[e], c.alpha * static_cast<double>(E) * c.share[e] / c.n_valid);
  }
  double pdp = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) pdp = __dadd_rn(pdp, __dmul_rn(p[e], dp[e]));
#pragma unroll
  for (int e = 0; e < E; ++e) {
    double g = __dmul_rn(p[e], dp[e] - pdp);
    if (real) g = __dadd_rn(g, c.beta * 2.0 * lse[r] * p[e] / c.n_valid);
    dlogits[r * E + e] = __double2float_rn(g);
  }
}

/// Routing of the last forward, downloaded for tests and diagnostics.
struct MoeRouting {
  std::vector<float> probs;          // (N, E)
  std::vector<double> lse;           // (N)
  std::vector<std::int32_t> choice;  // (N, K) expert ids, slot 0 the most probable
  std::vector<float> weight;         // (N, K) renormalised
};

/// policy::ffn::MoE<Experts, TopK, Mlp<Silu>> on device pointers (see the file comment).
template <int Experts, int TopK>
class MoeLayer {
  static_assert(Experts >= 1 && TopK >= 1 && TopK <= Experts, "MoE needs 1 <= TopK <= Experts");

 public:
  static constexpr int experts = Experts;
  static constexpr int top_k = TopK;

  /// Looks up the parameters the CPU layer registered under `prefix` in `store` and checks their
  /// shapes against `shape` (dim, ffn_dim); α, β are shape.moe_balance_coef, shape.moe_z_coef.
  MoeLayer(const ParameterStore<float>& store, const std::string& prefix, const ModelShape& shape)
      : dim_(shape.dim),
        inner_(shape.ffn_dim),
        alpha_(shape.moe_balance_coef),
        beta_(shape.moe_z_coef) {
    router_ = offset_of(store, prefix + ".router.weight", {Experts, dim_});
    for (int e = 0; e < Experts; ++e) {
      const std::string p = prefix + ".experts." + std::to_string(e);
      experts_[e].w1 = offset_of(store, p + ".fc1.weight", {inner_, dim_});
      experts_[e].b1 = offset_of(store, p + ".fc1.bias", {inner_});
      experts_[e].w2 = offset_of(store, p + ".fc2.weight", {dim_, inner_});
      experts_[e].b2 = offset_of(store, p + ".fc2.bias", {dim_});
    }
    counts_acc_.fill(0.0);
    count_.fill(0);
    offset_.fill(0);
    share_.fill(0.0);
  }

  /// y (N, D) from x (N, D); valid (N) marks real rows for the auxiliary losses (null: all real).
  /// Device pointers; params_base is the device copy of the store's values. Synchronises the
  /// stream once (per-expert row counts and the aux statistics come to the host).
  void forward(Backend& be, const float* params_base, const float* x, float* y, std::int64_t n,
               const std::uint8_t* valid) {
    constexpr int E = Experts, K = TopK;
    SEQREC_CHECK(n >= 0 && n * K < std::numeric_limits<std::int32_t>::max(),
                 "MoeLayer (CUDA): N·K must be < 2^31, got N = " + std::to_string(n));
    const std::int64_t D = dim_, F = inner_, NK = n * K;
    n_ = n;
    have_forward_ = true;
    count_.fill(0);
    offset_.fill(0);
    share_.fill(0.0);
    n_valid_ = 0;
    aux_ = 0;
    if (n == 0) return;
    cudaStream_t st = be.stream();

    ensure(be, valid_, n);
    if (valid != nullptr) {
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(valid_.data(), valid, static_cast<std::size_t>(n),
                                        cudaMemcpyDeviceToDevice, st));
    } else {
      SEQREC_CUDA_CHECK(cudaMemsetAsync(valid_.data(), 1, static_cast<std::size_t>(n), st));
    }
    ensure(be, logits_, n * E);
    ensure(be, probs_, n * E);
    ensure(be, lse_, n);
    ensure(be, choice_, NK);
    ensure(be, weight_, NK);
    ensure(be, eorder_, NK);
    ensure(be, sorted_pairs_, NK);
    ensure(be, pos_, NK);
    ensure(be, xin_, NK * D);
    ensure(be, yout_, NK * D);
    ensure(be, pre_, NK * F);
    ensure(be, act_, NK * F);
    ensure(be, stats_dev_, 1);

    // 1. Router logits (N, E) = x · Wrᵀ.
    const float* wr = params_base + router_;
    gemm_rm(be, false, true, n, E, D, 1.f, x, D, wr, D, 0.f, logits_.data(), E, WeightOperand::B);

    // 2. Softmax, lse, top-K, weights; sort keys and values.
    auto keys = be.buffer<std::int32_t>(static_cast<std::size_t>(NK));
    auto sorted_keys = be.buffer<std::int32_t>(static_cast<std::size_t>(NK));
    auto pairs = be.buffer<std::int32_t>(static_cast<std::size_t>(NK));
    moe_route_kernel<E, K>
        <<<static_cast<unsigned>((n + detail::kMoeThreads - 1) / detail::kMoeThreads),
           detail::kMoeThreads, 0, st>>>(logits_.data(), probs_.data(), lse_.data(), choice_.data(),
                                         weight_.data(), eorder_.data(), keys.data(), pairs.data(),
                                         n);
    SEQREC_CUDA_CHECK_LAUNCH();

    // 3. Counts and aux statistics (one block, fixed order).
    moe_stats_kernel<E, K><<<1, detail::moe_stats_threads<E>(), 0, st>>>(
        probs_.data(), lse_.data(), choice_.data(), valid_.data(), n, stats_dev_.data());
    SEQREC_CUDA_CHECK_LAUNCH();

    // 4. Stable sort of the pairs by expert id, and its inverse.
    int end_bit = 1;
    while ((1 << end_bit) < E) ++end_bit;
    const int num = static_cast<int>(NK);
    std::size_t temp_bytes = 0;
    SEQREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(),
                                                      sorted_keys.data(), pairs.data(),
                                                      sorted_pairs_.data(), num, 0, end_bit, st));
    auto temp = be.buffer<std::byte>(temp_bytes);
    SEQREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys.data(),
                                                      sorted_keys.data(), pairs.data(),
                                                      sorted_pairs_.data(), num, 0, end_bit, st));
    moe_inverse_kernel<<<detail::moe_grid(NK, detail::kMoeThreads), detail::kMoeThreads, 0, st>>>(
        sorted_pairs_.data(), pos_.data(), NK);
    SEQREC_CUDA_CHECK_LAUNCH();
    moe_gather_rows_kernel<<<detail::moe_grid(NK, 1), detail::moe_row_threads(D), 0, st>>>(
        x, sorted_pairs_.data(), xin_.data(), NK, D, K);
    SEQREC_CUDA_CHECK_LAUNCH();

    // 5. The one sync: per-expert counts size the GEMMs; the aux loss is formed on the host.
    detail::MoeStats<E> s{};
    SEQREC_CUDA_CHECK(
        cudaMemcpyAsync(&s, stats_dev_.data(), sizeof(s), cudaMemcpyDeviceToHost, st));
    be.synchronize();
    std::int64_t total = 0;
    for (int e = 0; e < E; ++e) {
      count_[e] = s.count_all[e];
      offset_[e] = total;
      total += s.count_all[e];
    }
    SEQREC_CHECK(total == NK, "MoeLayer (CUDA): routed pairs " + std::to_string(total) +
                                  " != N·K = " + std::to_string(NK) + " (routing kernel bug)");
    // As the CPU: share[e] = count / (n_valid·K), bal = Σ share·Σp / n_valid.
    n_valid_ = static_cast<double>(s.n_valid);
    for (int e = 0; e < E; ++e) share_[e] = static_cast<double>(s.count_valid[e]);
    if (n_valid_ > 0) {
      double bal = 0;
      for (int e = 0; e < E; ++e) {
        counts_acc_[e] += share_[e];
        share_[e] /= n_valid_ * double(K);
        bal += share_[e] * s.psum[e] / n_valid_;
      }
      aux_ = alpha_ * double(E) * bal + beta_ * s.z2 / n_valid_;
    }

    // 6. Experts on their contiguous blocks: pre = xin·W1ᵀ + b1, act = silu(pre),
    //    yout = act·W2ᵀ + b2.
    for (int e = 0; e < E; ++e) {
      const std::int64_t m = count_[e], o = offset_[e];
      if (m == 0) continue;
      const Ids& id = experts_[e];
      gemm_rm(be, false, true, m, F, D, 1.f, xin_.data() + o * D, D, params_base + id.w1, D, 0.f,
              pre_.data() + o * F, F, WeightOperand::B, params_base + id.b1);
    }
    activation_forward<Activation::Silu>(be, pre_.data(), act_.data(), NK * F);
    for (int e = 0; e < E; ++e) {
      const std::int64_t m = count_[e], o = offset_[e];
      if (m == 0) continue;
      const Ids& id = experts_[e];
      gemm_rm(be, false, true, m, D, F, 1.f, act_.data() + o * F, F, params_base + id.w2, F, 0.f,
              yout_.data() + o * D, D, WeightOperand::B, params_base + id.b2);
    }

    // 7. y[r] = Σ_k w_k · yout[pos[r, k]] in ascending expert order.
    moe_combine_kernel<K, true><<<detail::moe_grid(n, 1), detail::moe_row_threads(D), 0, st>>>(
        yout_.data(), pos_.data(), weight_.data(), eorder_.data(), y, n, D);
    SEQREC_CUDA_CHECK_LAUNCH();
  }

  /// dx (N, D) overwritten from dy (N, D), through the last forward (same x, same N); parameter
  /// gradients accumulated (+=) into grads_base (the device copy of the store's gradients), the
  /// aux losses' gradient included (with weight 1, as the CPU).
  void backward(Backend& be, const float* params_base, float* grads_base, const float* x,
                const float* dy, float* dx, std::int64_t n) {
    constexpr int E = Experts, K = TopK;
    SEQREC_CHECK(have_forward_ && n == n_,
                 "MoeLayer (CUDA): backward needs the forward of the same N (got N = " +
                     std::to_string(n) + ", forward N = " + std::to_string(n_) + ")");
    if (n == 0) return;
    const std::int64_t D = dim_, F = inner_, NK = n * K;
    cudaStream_t st = be.stream();
    auto dyin = be.buffer<float>(static_cast<std::size_t>(NK * D));
    auto dxin = be.buffer<float>(static_cast<std::size_t>(NK * D));
    auto dact = be.buffer<float>(static_cast<std::size_t>(NK * F));
    auto dw = be.buffer<double>(static_cast<std::size_t>(NK));
    auto dlogits = be.buffer<float>(static_cast<std::size_t>(n * E));

    // 1. dyin = w·dy per sorted pair; dw = dy·yout.
    moe_scale_dy_kernel<<<static_cast<unsigned>((NK + detail::kMoeWarps - 1) / detail::kMoeWarps),
                          32 * detail::kMoeWarps, 0, st>>>(
        dy, yout_.data(), sorted_pairs_.data(), weight_.data(), dyin.data(), dw.data(), NK, D, K);
    SEQREC_CUDA_CHECK_LAUNCH();

    // 2. Expert backward on each block: fc2, silu', fc1.
    for (int e = 0; e < E; ++e) {
      const std::int64_t m = count_[e], o = offset_[e];
      if (m == 0) continue;
      const Ids& id = experts_[e];
      gemm_rm(be, false, false, m, F, D, 1.f, dyin.data() + o * D, D, params_base + id.w2, F, 0.f,
              dact.data() + o * F, F, WeightOperand::B);
      gemm_rm(be, true, false, D, F, m, 1.f, dyin.data() + o * D, D, act_.data() + o * F, F, 1.f,
              grads_base + id.w2, F);
      column_sum_add(be, dyin.data() + o * D, grads_base + id.b2, m, D);
    }
    activation_backward<Activation::Silu>(be, pre_.data(), dact.data(), NK * F);
    for (int e = 0; e < E; ++e) {
      const std::int64_t m = count_[e], o = offset_[e];
      if (m == 0) continue;
      const Ids& id = experts_[e];
      gemm_rm(be, false, false, m, D, F, 1.f, dact.data() + o * F, F, params_base + id.w1, D, 0.f,
              dxin.data() + o * D, D, WeightOperand::B);
      gemm_rm(be, true, false, F, D, m, 1.f, dact.data() + o * F, F, xin_.data() + o * D, D, 1.f,
              grads_base + id.w1, D);
      column_sum_add(be, dact.data() + o * F, grads_base + id.b1, m, F);
    }

    // 3. dx[r] = Σ_k dxin[pos[r, k]] in ascending expert order.
    moe_combine_kernel<K, false><<<detail::moe_grid(n, 1), detail::moe_row_threads(D), 0, st>>>(
        dxin.data(), pos_.data(), nullptr, eorder_.data(), dx, n, D);
    SEQREC_CUDA_CHECK_LAUNCH();

    // 4. Router logits' gradient.
    detail::MoeRouterCoefs<E> c{};
    for (int e = 0; e < E; ++e) c.share[e] = share_[e];
    c.n_valid = n_valid_;
    c.alpha = alpha_;
    c.beta = beta_;
    moe_router_backward_kernel<E, K>
        <<<static_cast<unsigned>((n + detail::kMoeThreads - 1) / detail::kMoeThreads),
           detail::kMoeThreads, 0, st>>>(probs_.data(), lse_.data(), choice_.data(), weight_.data(),
                                         dw.data(), valid_.data(), c, dlogits.data(), n);
    SEQREC_CUDA_CHECK_LAUNCH();

    // 5. dx += dlogits · Wr; dWr += dlogitsᵀ · x.
    const float* wr = params_base + router_;
    gemm_rm(be, false, false, n, D, E, 1.f, dlogits.data(), E, wr, D, 1.f, dx, D, WeightOperand::B);
    gemm_rm(be, true, false, E, D, n, 1.f, dlogits.data(), E, x, D, 1.f, grads_base + router_, D);
  }

  /// The last forward's auxiliary loss (balance + z), formed on the host in forward.
  double aux_loss() const noexcept { return aux_; }

  /// Share of routed (valid token, slot) pairs each expert received since the last call; resets.
  std::vector<double> take_expert_shares() {
    double total = 0;
    for (double v : counts_acc_) total += v;
    std::vector<double> out(Experts, 0.0);
    for (int e = 0; e < Experts; ++e) out[e] = total > 0 ? counts_acc_[e] / total : 0.0;
    counts_acc_.fill(0.0);
    return out;
  }

  /// Rows each expert received in the last forward (padding rows included), i.e. the sizes of the
  /// expert GEMMs; the CPU layer's Cache::rows[e].size().
  const std::array<std::int64_t, Experts>& expert_rows() const noexcept { return count_; }

  /// The last forward's routing, downloaded (synchronises).
  MoeRouting routing(Backend& be) const {
    MoeRouting out;
    const std::size_t n = static_cast<std::size_t>(have_forward_ ? n_ : 0);
    out.probs.resize(n * Experts);
    out.lse.resize(n);
    out.choice.resize(n * TopK);
    out.weight.resize(n * TopK);
    if (n == 0) return out;
    cudaStream_t st = be.stream();
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(out.probs.data(), probs_.data(), out.probs.size() * 4,
                                      cudaMemcpyDeviceToHost, st));
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(out.lse.data(), lse_.data(), out.lse.size() * 8,
                                      cudaMemcpyDeviceToHost, st));
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(out.choice.data(), choice_.data(), out.choice.size() * 4,
                                      cudaMemcpyDeviceToHost, st));
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(out.weight.data(), weight_.data(), out.weight.size() * 4,
                                      cudaMemcpyDeviceToHost, st));
    be.synchronize();
    return out;
  }

  /// Expert e's outputs (before weighting) of the last forward, (expert_rows()[e], D), rows in
  /// ascending token order: the CPU layer's Cache::yout[e]. Synchronises.
  std::vector<float> expert_output(Backend& be, int e) const {
    SEQREC_CHECK(e >= 0 && e < Experts, "MoeLayer (CUDA): expert id out of range");
    std::vector<float> out(static_cast<std::size_t>(have_forward_ ? count_[e] * dim_ : 0));
    if (out.empty()) return out;
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(out.data(), yout_.data() + offset_[e] * dim_,
                                      out.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                      be.stream()));
    be.synchronize();
    return out;
  }

 private:
  struct Ids {
    std::size_t w1 = 0, b1 = 0, w2 = 0, b2 = 0;  // offsets in the flat arrays
  };

  static std::size_t offset_of(const ParameterStore<float>& store, const std::string& name,
                               const std::vector<std::int64_t>& shape) {
    const auto& entry = store.entry(store.find(name));
    SEQREC_CHECK(entry.shape == shape, "MoeLayer (CUDA): parameter '" + name +
                                           "' does not have the shape the layer expects");
    return entry.offset;
  }

  /// Grows b to at least `count` elements (contents are not kept).
  template <typename T>
  static void ensure(Backend& be, DeviceBuffer<T>& b, std::int64_t count) {
    if (b.size() < static_cast<std::size_t>(count))
      b = be.buffer<T>(static_cast<std::size_t>(count));
  }

  std::int64_t dim_, inner_;
  double alpha_, beta_;
  std::size_t router_ = 0;
  std::array<Ids, Experts> experts_{};

  // The last forward, kept for backward.
  std::int64_t n_ = 0;
  bool have_forward_ = false;
  std::array<std::int64_t, Experts> count_{}, offset_{};  // rows per expert, block starts
  std::array<double, Experts> share_{};                   // f_e
  double n_valid_ = 0, aux_ = 0;
  std::array<double, Experts> counts_acc_{};  // valid pairs per expert since take_expert_shares
  DeviceBuffer<std::uint8_t> valid_;
  DeviceBuffer<float> logits_, probs_, weight_, xin_, yout_, pre_, act_;
  DeviceBuffer<double> lse_;
  DeviceBuffer<std::int32_t> choice_, eorder_, sorted_pairs_, pos_;
  DeviceBuffer<detail::MoeStats<Experts>> stats_dev_;
};

}  // namespace seqrec::cuda
