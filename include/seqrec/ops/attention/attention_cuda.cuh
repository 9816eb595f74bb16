// Causal multi-head self-attention on the GPU, fp32, for short sequences, matching
// ops/attention/attention_cpu.hpp: same fused layout, same masking, same saved probabilities.
//
// Layout: qkv (B·L, 3D) = [Q | K | V], head h owning columns h·dh … h·dh+dh−1 of each third;
// out (B·L, D); probs (B, H, L, L). Query i attends to key j iff j ≤ i and token j is not padding;
// a padding query attends to itself alone (so every softmax row is defined).
//
// Packed layout (the model's training steps): qkv, tokens and out hold only the packed rows (every
// non-padding position, and maybe some padding ones), sequence b owning rows seg[b] … seg[b+1]−1
// in window order. Since every key a query may see is among its sequence's packed rows and they
// keep the window order, a block attends over those n ≤ L rows as over the full window, without
// the padding rows' loads, scores and writes (at the study's padding n averages ~8 of 20). For
// left-padded windows whose packed rows are the real tokens, the rows are a shift of the window
// and the lanes' reduction grouping is unchanged: the same bits. Where padding rows sit among
// packed ones, the warp sums group differently and results agree to rounding. In the packed
// layout only rows i < n (columns j ≤ i) of each (b, h) slice of probs are written; the rest
// keep whatever the buffer held (the backward reads only the written part).
//
// One thread block (8 warps) per (b, h); one warp per query row (forward, and the first half of
// the backward) or per key row (second half of the backward), rows dealt round-robin to warps.
// The head's K and V (forward) or V and K, then Q and dO (backward) sit in shared memory with rows
// padded to dh+1 floats, so lanes reading different rows at one column hit different banks. All
// sums run in a fixed order: results repeat bit for bit.
//
// This first version writes the probabilities (B, H, L, L) to global memory, the same buffer the
// CPU op saves, and the backward reads them back and keeps dS (B, H, L, L) in a scratch buffer
// from the backend's allocator: fine for L ≤ 256, not a flash-attention kernel. Shared memory is
// about (2·L·(dh+1) + 8·(dh + L)) floats per block, e.g. 110 KiB at L = 200, dh = 64; launchers
// check it against the device's opt-in limit and name the shape when it does not fit.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kAttnWarps = 8;

/// Dynamic shared memory (bytes) of both kernels for sequence length L and head size dh.
inline std::size_t attention_smem_bytes(std::int64_t L, std::int64_t dh) {
  return sizeof(float) * static_cast<std::size_t>(2 * L * (dh + 1) + kAttnWarps * (dh + L));
}

/// Copies rows 0..L−1, columns col0 … col0+dh−1 of a (B·L, 3D) slab (base points at row b·L) into
/// dst (L, dh+1).
__device__ inline void attn_load_head(const float* __restrict__ base, std::int64_t ld,
                                      std::int64_t col0, int L, int dh, float* __restrict__ dst) {
  for (int idx = threadIdx.x; idx < L * dh; idx += blockDim.x) {
    const int i = idx / dh, k = idx - i * dh;
    dst[i * (dh + 1) + k] = base[static_cast<std::int64_t>(i) * ld + col0 + k];
  }
}
}  // namespace detail

namespace detail {
/// The rows of sequence b: full layout (seg null) rows b·L … b·L+L−1; packed layout rows
/// seg[b] … seg[b+1]−1 (the sequence's packed rows, in window order).
__device__ inline void attn_segment(const std::int32_t* seg, int b, int L, int& start, int& n) {
  if (seg == nullptr) {
    start = b * L;
    n = L;
  } else {
    start = seg[b];
    n = seg[b + 1] - start;
    // Shared memory and the (L, L) slices of P and dS hold at most L rows: a malformed seg would
    // overrun them silently, so it stops the kernel instead (a launch failure the caller sees).
    if (n < 0 || n > L) __trap();
  }
}
}  // namespace detail

/// grid B·H, block 32·8. qkv (rows, 3D), tokens (rows), out (rows, D) with leading dimension ldo
/// (float, or bf16 for a bf16 activation: store_as), probs (B, H, L, L); rows = B·L (full layout,
/// seg null) or the packed rows, sequence b owning rows seg[b] … seg[b+1]−1 (≤ L of them).
template <typename OutT>
static __global__ void attention_forward_kernel(const float* __restrict__ qkv,
                                                const std::int32_t* __restrict__ tokens,
                                                std::int32_t pad_token, OutT* __restrict__ out,
                                                std::int64_t ldo, float* __restrict__ probs,
                                                const std::int32_t* __restrict__ seg, int L, int D,
                                                int H, float scale) {
  extern __shared__ float smem[];
  const int dh = D / H, sp = dh + 1;
  const int b = blockIdx.x / H, h = blockIdx.x - b * H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int start = 0, n = 0;
  detail::attn_segment(seg, b, L, start, n);
  if (n <= 0) return;                   // the whole block: nothing to attend
  float* Ks = smem;                     // (L, dh+1)
  float* Vs = Ks + L * sp;              // (L, dh+1)
  float* qw = Vs + L * sp + warp * dh;  // (dh) this warp's query row
  float* sw = smem + 2 * L * sp + detail::kAttnWarps * dh + warp * L;  // (L) this warp's scores
  const std::int64_t ld = 3 * static_cast<std::int64_t>(D);
  const float* base = qkv + static_cast<std::int64_t>(start) * ld;
  const std::int32_t* tok = tokens + start;
  detail::attn_load_head(base, ld, D + h * dh, n, dh, Ks);
  detail::attn_load_head(base, ld, 2 * D + h * dh, n, dh, Vs);
  __syncthreads();
  float* P = probs + static_cast<std::int64_t>(blockIdx.x) * L * L;  // (n ≤ L, L) of (b, h)
  for (int i = warp; i < n; i += detail::kAttnWarps) {
    for (int k = lane; k < dh; k += 32)
      qw[k] = base[static_cast<std::int64_t>(i) * ld + h * dh + k];
    __syncwarp();
    const bool pad_query = tok[i] == pad_token;
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += 32) {
      const bool ok = pad_query ? (j == i) : (tok[j] != pad_token);
      float s = 0.f;
      for (int k = 0; k < dh; ++k) s += qw[k] * Ks[j * sp + k];
      s *= scale;
      sw[j] = s;
      if (ok) mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    float sum = 0.f;
    for (int j = lane; j <= i; j += 32) {
      const bool ok = pad_query ? (j == i) : (tok[j] != pad_token);
      const float e = ok ? expf(sw[j] - mx) : 0.f;
      sw[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    float* Pi = P + static_cast<std::int64_t>(i) * L;
    for (int j = lane; j < L; j += 32) {
      const float p = j <= i ? sw[j] * inv : 0.f;
      if (j <= i) sw[j] = p;
      Pi[j] = p;
    }
    __syncwarp();
    for (int k = lane; k < dh; k += 32) {
      float acc = 0.f;
      for (int j = 0; j <= i; ++j) acc += sw[j] * Vs[j * sp + k];
      store_as(out + (static_cast<std::int64_t>(start) + i) * ldo + h * dh + k, acc);
    }
    __syncwarp();  // qw and sw are rewritten by this warp's next row
  }
}

/// grid B·H, block 32·8. dout (rows, D) → dqkv (rows, 3D), overwritten; ds is scratch
/// (B, H, L, L); rows and seg as in the forward.
static __global__ void attention_backward_kernel(const float* __restrict__ qkv,
                                                 const float* __restrict__ probs,
                                                 const float* __restrict__ dout,
                                                 float* __restrict__ dqkv, float* __restrict__ ds,
                                                 const std::int32_t* __restrict__ seg, int L, int D,
                                                 int H, float scale) {
  extern __shared__ float smem[];
  const int dh = D / H, sp = dh + 1;
  const int b = blockIdx.x / H, h = blockIdx.x - b * H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int start = 0, n = 0;
  detail::attn_segment(seg, b, L, start, n);
  if (n <= 0) return;                   // the whole block: no rows
  float* As = smem;                     // phase 1: V; phase 2: Q        (L, dh+1)
  float* Bs = As + L * sp;              // phase 1: K; phase 2: dO       (L, dh+1)
  float* ow = Bs + L * sp + warp * dh;  // (dh) this warp's dO row
  float* sw = smem + 2 * L * sp + detail::kAttnWarps * dh + warp * L;  // (L) this warp's dS row
  const std::int64_t ld = 3 * static_cast<std::int64_t>(D);
  const float* base = qkv + static_cast<std::int64_t>(start) * ld;
  float* dbase = dqkv + static_cast<std::int64_t>(start) * ld;
  const float* dob = dout + static_cast<std::int64_t>(start) * D;
  const float* P = probs + static_cast<std::int64_t>(blockIdx.x) * L * L;
  float* S = ds + static_cast<std::int64_t>(blockIdx.x) * L * L;

  // Phase 1, per query row i: dP_ij = dO_i · V_j, dS_ij = P_ij (dP_ij − Σ_j' P_ij' dP_ij') · scale,
  // dQ_i = Σ_j dS_ij K_j.
  detail::attn_load_head(base, ld, 2 * D + h * dh, n, dh, As);
  detail::attn_load_head(base, ld, D + h * dh, n, dh, Bs);
  __syncthreads();
  for (int i = warp; i < n; i += detail::kAttnWarps) {
    for (int k = lane; k < dh; k += 32) ow[k] = dob[static_cast<std::int64_t>(i) * D + h * dh + k];
    __syncwarp();
    const float* Pi = P + static_cast<std::int64_t>(i) * L;
    float dot = 0.f;
    for (int j = lane; j <= i; j += 32) {
      float dp = 0.f;
      for (int k = 0; k < dh; ++k) dp += ow[k] * As[j * sp + k];
      sw[j] = dp;
      dot += Pi[j] * dp;
    }
    dot = warp_sum(dot);
    float* Si = S + static_cast<std::int64_t>(i) * L;
    for (int j = lane; j <= i; j += 32) {
      const float v = Pi[j] * (sw[j] - dot) * scale;
      sw[j] = v;
      Si[j] = v;
    }
    __syncwarp();
    for (int k = lane; k < dh; k += 32) {
      float acc = 0.f;
      for (int j = 0; j <= i; ++j) acc += sw[j] * Bs[j * sp + k];
      dbase[static_cast<std::int64_t>(i) * ld + h * dh + k] = acc;
    }
    __syncwarp();
  }
  __syncthreads();  // dS rows (global) complete and visible to the whole block; As, Bs free

  // Phase 2, per key row j: dK_j = Σ_{i≥j} dS_ij Q_i, dV_j = Σ_{i≥j} P_ij dO_i.
  detail::attn_load_head(base, ld, h * dh, n, dh, As);
  for (int idx = threadIdx.x; idx < n * dh; idx += blockDim.x) {
    const int i = idx / dh, k = idx - i * dh;
    Bs[i * sp + k] = dob[static_cast<std::int64_t>(i) * D + h * dh + k];
  }
  __syncthreads();
  for (int j = warp; j < n; j += detail::kAttnWarps) {
    for (int k = lane; k < dh; k += 32) {
      float dk = 0.f, dv = 0.f;
      for (int i = j; i < n; ++i) {
        const std::int64_t ij = static_cast<std::int64_t>(i) * L + j;
        dk += S[ij] * As[i * sp + k];
        dv += P[ij] * Bs[i * sp + k];
      }
      dbase[static_cast<std::int64_t>(j) * ld + D + h * dh + k] = dk;
      dbase[static_cast<std::int64_t>(j) * ld + 2 * D + h * dh + k] = dv;
    }
  }
}

namespace detail {
template <typename Shape>
std::size_t attention_prepare(Backend& be, const Shape& s, const void* kernel) {
  const std::int64_t L = s.length, D = s.dim, H = s.heads;
  SEQREC_CHECK(H >= 1 && D % H == 0, "attention (CUDA): D must be a multiple of H, got D = " +
                                         std::to_string(D) + ", H = " + std::to_string(H));
  SEQREC_CHECK(L >= 1 && L <= 1024 && D <= (1 << 20) && s.batch * H < (std::int64_t{1} << 31),
               "attention (CUDA): shape out of range");
  const std::size_t smem = attention_smem_bytes(L, D / H);
  if (smem > static_cast<std::size_t>(be.max_smem_optin())) {
    throw ::seqrec::Error("attention (CUDA): L = " + std::to_string(L) + ", head size " +
                          std::to_string(D / H) + " needs " + std::to_string(smem) +
                          " bytes of shared memory per block, the device allows " +
                          std::to_string(be.max_smem_optin()));
  }
  SEQREC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  return smem;
}
}  // namespace detail

/// Shape: ops::AttentionShape (attention_cpu.hpp) or any struct with batch, length, dim, heads.
/// qkv (B·L, 3D), tokens (B·L), out (B·L, D), probs (B, H, L, L); device pointers. OutT is
/// float, or __nv_bfloat16 for a bf16 activation; ldo is out's leading dimension (0: D).
/// Packed layout (seg non-null, B + 1 offsets): qkv, tokens and out hold only the packed rows,
/// sequence b owning rows seg[b] … seg[b+1]−1 in window order — every non-padding position of its
/// window must be among them (padding keys are masked, so the others change nothing); a block
/// then works on those rows alone, and P's row i, column j refer to the sequence's i-th and j-th
/// packed rows.
template <typename Shape, typename OutT>
void attention_forward(Backend& be, const Shape& s, const float* qkv, const std::int32_t* tokens,
                       std::int32_t pad_token, OutT* out, float* probs, std::int64_t ldo = 0,
                       const std::int32_t* seg = nullptr) {
  if (s.batch == 0) return;
  const std::size_t smem = detail::attention_prepare(
      be, s, reinterpret_cast<const void*>(&attention_forward_kernel<OutT>));
  const float scale = 1.f / std::sqrt(static_cast<float>(s.dim / s.heads));
  attention_forward_kernel<OutT>
      <<<static_cast<unsigned>(s.batch * s.heads), 32 * detail::kAttnWarps, smem, be.stream()>>>(
          qkv, tokens, pad_token, out, ldo > 0 ? ldo : s.dim, probs, seg,
          static_cast<int>(s.length), static_cast<int>(s.dim), static_cast<int>(s.heads), scale);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dout (B·L, D) → dqkv (B·L, 3D), overwritten; qkv and probs as saved by the forward. With seg
/// (the forward's packed layout), dout and dqkv hold the packed rows.
template <typename Shape>
void attention_backward(Backend& be, const Shape& s, const float* qkv, const float* probs,
                        const float* dout, float* dqkv, const std::int32_t* seg = nullptr) {
  if (s.batch == 0) return;
  const std::size_t smem =
      detail::attention_prepare(be, s, reinterpret_cast<const void*>(&attention_backward_kernel));
  const float scale = 1.f / std::sqrt(static_cast<float>(s.dim / s.heads));
  auto ds = be.buffer<float>(static_cast<std::size_t>(s.batch * s.heads * s.length * s.length));
  attention_backward_kernel<<<static_cast<unsigned>(s.batch * s.heads), 32 * detail::kAttnWarps,
                              smem, be.stream()>>>(
      qkv, probs, dout, dqkv, ds.data(), seg, static_cast<int>(s.length), static_cast<int>(s.dim),
      static_cast<int>(s.heads), scale);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
