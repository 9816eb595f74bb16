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
// the padding rows' loads, scores and writes (at the study's padding n averages ~8 of 20). The
// packed and full layouts agree to rounding, not bit for bit: a row's position decides how its
// dot products and softmax sums are grouped (below), and packing moves rows. In the packed
// layout only rows i < n (columns j ≤ i) of each (b, h) slice of probs are written; the rest
// keep whatever the buffer held (the backward reads only the written part).
//
// RoPE can be fused (a RopeTable passed to both calls): the kernels then rotate Q and K as they
// load them and rotate dQ and dK back as they store them, with rope_apply's float operations, so
// the results are bit for bit those of rope_apply, the plain kernels and rope_apply(−1) on dqkv,
// while qkv stays unrotated and no separate pass over it runs (two fewer reads and writes of the
// Q and K thirds per layer and step).
//
// One thread block (8 warps) per (b, h); one warp per query row (forward, and the first half of
// the backward) or per key row (second half of the backward), rows dealt round-robin to warps.
// The head's K and V (forward) or V and K, then Q and dO (backward) sit in shared memory with rows
// padded to dh+1 floats, so lanes reading different rows at one column hit different banks. A
// row's dot products with the keys (scores; dP in the backward) go key by key for short rows —
// the lanes split each product's dh terms and a butterfly sums them — and lane by lane (a key per
// lane) for long ones, whichever costs fewer shared-memory wavefronts (attention_by_key_max). All
// sums run in a fixed order: results repeat bit for bit.
//
// The forward writes the probabilities (B, H, L, L) to global memory, the same buffer the CPU op
// saves. The backward reads them back; it keeps them and dS in shared memory where they fit
// cheaply (L 20: 3.2 KiB), else dS in a (B, H, L, L) scratch buffer from the backend's allocator:
// fine for L ≤ 256, not a flash-attention kernel. Shared memory is about
// (2·L·(dh+1) + 8·(dh + L)) floats per block, e.g. 110 KiB at L = 200, dh = 64; launchers check
// it against the device's opt-in limit and name the shape when it does not fit.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/ops/rope/rope_cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kAttnWarps = 8;

/// Dynamic shared memory (bytes) of both kernels for sequence length L and head size dh, without
/// the backward's optional copy of P and dS (attention_local_bytes).
inline std::size_t attention_smem_bytes(std::int64_t L, std::int64_t dh) {
  return sizeof(float) * static_cast<std::size_t>(2 * L * (dh + 1) + kAttnWarps * (dh + L));
}

/// The backward's (L, L) slices of P and dS in shared memory, when kept there.
inline std::size_t attention_local_bytes(std::int64_t L) {
  return sizeof(float) * static_cast<std::size_t>(2 * L * L);
}

/// Up to how many keys a row's dot products go key by key (the warp's lanes splitting each dot
/// product's dh terms, a butterfly summing them) rather than lane by lane (each lane a key, its dh
/// terms in sequence). A key-by-key product costs about 3·⌈dh/32⌉ + 5 warp instructions; the
/// lane-by-lane products cost 2·dh shared-memory wavefronts per 32 keys however few are active,
/// which for the study's rows (≤ 20 keys, ~9 on average, dh 128) wasted most of every wavefront.
/// Always below 32, so a key's product has one owning lane either way (lane j).
__host__ __device__ inline int attention_by_key_max(int dh) {
  const int m = 2 * dh / (3 * ((dh + 31) / 32) + 5);
  return m < 31 ? m : 31;
}

/// out[j] = a · B_j for j < count (a: dh floats, B: rows of sp floats, both in shared memory),
/// each written by lane j mod 32, the lane that reads it in the row loops that follow (so no
/// synchronisation is needed between them). Key by key up to by_key keys, else lane by lane (see
/// attention_by_key_max); both sum in a fixed order.
__device__ inline void attn_row_dots(const float* a, const float* B, int sp, int dh, int count,
                                     int by_key, float* out, int lane) {
  if (count <= by_key) {
    for (int j = 0; j < count; ++j) {
      float part = 0.f;
      for (int k = lane; k < dh; k += 32) part += a[k] * B[j * sp + k];
      part = warp_sum(part);
      if (lane == j) out[j] = part;
    }
  } else {
    for (int j = lane; j < count; j += 32) {
      float s = 0.f;
      for (int k = 0; k < dh; ++k) s += a[k] * B[j * sp + k];
      out[j] = s;
    }
  }
}

/// Copies rows 0..n−1, columns col0 … col0+dh−1 of a (rows, 3D) slab, fp32 or bf16 (widened;
/// base points at row first_row) into dst (n, dh+1). Rotate: each row's half-split pairs rotated
/// forward by RoPE at that row's slot (the slab's row i is row first_row + i of the layout
/// rope.row_map describes).
template <bool Rotate, typename QT>
__device__ inline void attn_load_head(const QT* __restrict__ base, std::int64_t ld,
                                      std::int64_t col0, int n, int dh, float* __restrict__ dst,
                                      const RopeView& rope, int first_row) {
  if constexpr (!Rotate) {
    for (int idx = threadIdx.x; idx < n * dh; idx += blockDim.x) {
      const int i = idx / dh, k = idx - i * dh;
      dst[i * (dh + 1) + k] = load_as(base + static_cast<std::int64_t>(i) * ld + col0 + k);
    }
  } else {
    const int half = dh / 2;
    for (int idx = threadIdx.x; idx < n * half; idx += blockDim.x) {
      const int i = idx / half, k = idx - i * half;
      const QT* src = base + static_cast<std::int64_t>(i) * ld + col0;
      const int t = rope.offset(first_row + i) + k;
      float* d = dst + i * (dh + 1);
      rope_rotate(load_as(src + k), load_as(src + k + half), rope.cos[t], rope.sin[t], d[k],
                  d[k + half]);
    }
  }
}

/// dst[k] for k < dh (a head's columns of one row in global memory, fp32 or bf16: store_as) =
/// src (shared memory) rotated back by RoPE at table offset t: a gradient with respect to the
/// rotated Q or K becomes one with respect to the unrotated values, as rope_apply's backward
/// (sign −1) makes it. The calling warp's lanes share the row.
template <typename GT>
__device__ inline void attn_store_unrotated(const float* src, GT* __restrict__ dst, int dh,
                                            const RopeView& rope, int t, int lane) {
  const int half = dh / 2;
  for (int k = lane; k < half; k += 32) {
    float x, y;
    rope_rotate(src[k], src[k + half], rope.cos[t + k], -rope.sin[t + k], x, y);
    store_as(dst + k, x);
    store_as(dst + k + half, y);
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

/// grid B·H, block 32·8. qkv (rows, 3D) with leading dimension ldq (float, or bf16 as the bf16
/// model's qkv GEMM writes it: widened on load), tokens (rows), out (rows, D) with leading
/// dimension ldo (float, or bf16 for a bf16 activation: store_as), probs (B, H, L, L); rows = B·L
/// (full layout, seg null) or the packed rows, sequence b owning rows seg[b] … seg[b+1]−1 (≤ L of
/// them).
template <typename OutT, bool Rotate, typename QT>
static __global__ void attention_forward_kernel(const QT* __restrict__ qkv, std::int64_t ldq,
                                                const std::int32_t* __restrict__ tokens,
                                                std::int32_t pad_token, OutT* __restrict__ out,
                                                std::int64_t ldo, float* __restrict__ probs,
                                                const std::int32_t* __restrict__ seg, int L, int D,
                                                int H, float scale, RopeView rope) {
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
  const std::int64_t ld = ldq;
  const QT* base = qkv + static_cast<std::int64_t>(start) * ld;
  const std::int32_t* tok = tokens + start;
  detail::attn_load_head<Rotate>(base, ld, D + h * dh, n, dh, Ks, rope, start);
  detail::attn_load_head<false>(base, ld, 2 * D + h * dh, n, dh, Vs, rope, start);
  __syncthreads();
  float* P = probs + static_cast<std::int64_t>(blockIdx.x) * L * L;  // (n ≤ L, L) of (b, h)
  const int by_key = detail::attention_by_key_max(dh);
  for (int i = warp; i < n; i += detail::kAttnWarps) {
    const QT* qrow = base + static_cast<std::int64_t>(i) * ld + h * dh;
    if constexpr (Rotate) {
      const int half = dh / 2, t = rope.offset(start + i);
      for (int k = lane; k < half; k += 32)
        detail::rope_rotate(load_as(qrow + k), load_as(qrow + k + half), rope.cos[t + k],
                            rope.sin[t + k], qw[k], qw[k + half]);
    } else {
      for (int k = lane; k < dh; k += 32) qw[k] = load_as(qrow + k);
    }
    __syncwarp();
    const bool pad_query = tok[i] == pad_token;
    detail::attn_row_dots(qw, Ks, sp, dh, i + 1, by_key, sw, lane);
    float mx = -INFINITY;
    for (int j = lane; j <= i; j += 32) {
      const bool ok = pad_query ? (j == i) : (tok[j] != pad_token);
      const float s = sw[j] * scale;
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

/// grid B·H, block 32·8. dout (rows, D) with leading dimension lddo → dqkv (rows, 3D) with
/// leading dimension lddq, overwritten, both of type GT (fp32, or bf16: dout widened as loaded,
/// dqkv rounded as stored); qkv (its type and ldq), rows, seg and Rotate as in the forward. local:
/// the (b, h) slices of P and dS live in shared memory past the rest (attention_local_bytes more of
/// it; P copied there from probs as phase 1 reads it), so phase 2 reads them from there; otherwise
/// P is read from probs and dS goes through ds, scratch (B, H, L, L) in global memory.
template <bool Rotate, typename QT, typename GT>
static __global__ void attention_backward_kernel(const QT* __restrict__ qkv, std::int64_t ldq,
                                                 const float* __restrict__ probs,
                                                 const GT* __restrict__ dout, std::int64_t lddo,
                                                 GT* __restrict__ dqkv, std::int64_t lddq,
                                                 float* __restrict__ ds,
                                                 const std::int32_t* __restrict__ seg, int L, int D,
                                                 int H, float scale, RopeView rope, int local) {
  extern __shared__ float smem[];
  const int dh = D / H, sp = dh + 1;
  const int b = blockIdx.x / H, h = blockIdx.x - b * H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int start = 0, n = 0;
  detail::attn_segment(seg, b, L, start, n);
  if (n <= 0) return;                   // the whole block: no rows
  float* As = smem;                     // phase 1: V; phase 2: Q        (L, dh+1)
  float* Bs = As + L * sp;              // phase 1: K; phase 2: dO       (L, dh+1)
  float* ow = Bs + L * sp + warp * dh;  // (dh) this warp's dO row, then its dQ or dK row
  float* sw = smem + 2 * L * sp + detail::kAttnWarps * dh + warp * L;  // (L) this warp's dS row
  const std::int64_t ld = lddq;                                        // dqkv's
  const QT* base = qkv + static_cast<std::int64_t>(start) * ldq;
  GT* dbase = dqkv + static_cast<std::int64_t>(start) * ld;
  const GT* dob = dout + static_cast<std::int64_t>(start) * lddo;
  const float* Pg = probs + static_cast<std::int64_t>(blockIdx.x) * L * L;
  float* Pl = smem + 2 * L * sp + detail::kAttnWarps * (dh + L);  // (L, L) when local
  const float* P = local ? Pl : Pg;                               // what phase 2 reads
  float* S = local ? Pl + L * L : ds + static_cast<std::int64_t>(blockIdx.x) * L * L;
  const int by_key = detail::attention_by_key_max(dh);

  // Phase 1, per query row i: dP_ij = dO_i · V_j, dS_ij = P_ij (dP_ij − Σ_j' P_ij' dP_ij') · scale,
  // dQ_i = Σ_j dS_ij K_j.
  detail::attn_load_head<false>(base, ldq, 2 * D + h * dh, n, dh, As, rope, start);
  detail::attn_load_head<Rotate>(base, ldq, D + h * dh, n, dh, Bs, rope, start);
  __syncthreads();
  for (int i = warp; i < n; i += detail::kAttnWarps) {
    for (int k = lane; k < dh; k += 32)
      ow[k] = load_as(dob + static_cast<std::int64_t>(i) * lddo + h * dh + k);
    __syncwarp();
    const float* Pi = Pg + static_cast<std::int64_t>(i) * L;
    detail::attn_row_dots(ow, As, sp, dh, i + 1, by_key, sw, lane);  // dP_ij
    float dot = 0.f;
    for (int j = lane; j <= i; j += 32) {
      const float p = Pi[j];
      if (local) Pl[i * L + j] = p;
      dot += p * sw[j];
    }
    dot = warp_sum(dot);
    float* Si = S + static_cast<std::int64_t>(i) * L;
    for (int j = lane; j <= i; j += 32) {
      const float v = Pi[j] * (sw[j] - dot) * scale;
      sw[j] = v;
      Si[j] = v;
    }
    __syncwarp();
    GT* dq = dbase + static_cast<std::int64_t>(i) * ld + h * dh;
    for (int k = lane; k < dh; k += 32) {
      float acc = 0.f;
      for (int j = 0; j <= i; ++j) acc += sw[j] * Bs[j * sp + k];
      if constexpr (Rotate)
        ow[k] = acc;  // ow (this row's dO) is no longer read
      else
        store_as(dq + k, acc);
    }
    if constexpr (Rotate) {
      __syncwarp();
      detail::attn_store_unrotated(ow, dq, dh, rope, rope.offset(start + i), lane);
    }
    __syncwarp();
  }
  __syncthreads();  // dS rows (global) complete and visible to the whole block; As, Bs free

  // Phase 2, per key row j: dK_j = Σ_{i≥j} dS_ij Q_i, dV_j = Σ_{i≥j} P_ij dO_i.
  detail::attn_load_head<Rotate>(base, ldq, h * dh, n, dh, As, rope, start);
  for (int idx = threadIdx.x; idx < n * dh; idx += blockDim.x) {
    const int i = idx / dh, k = idx - i * dh;
    Bs[i * sp + k] = load_as(dob + static_cast<std::int64_t>(i) * lddo + h * dh + k);
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
      if constexpr (Rotate)
        ow[k] = dk;
      else
        store_as(dbase + static_cast<std::int64_t>(j) * ld + D + h * dh + k, dk);
      store_as(dbase + static_cast<std::int64_t>(j) * ld + 2 * D + h * dh + k, dv);
    }
    if constexpr (Rotate) {
      __syncwarp();
      detail::attn_store_unrotated(ow, dbase + static_cast<std::int64_t>(j) * ld + D + h * dh, dh,
                                   rope, rope.offset(start + j), lane);
      __syncwarp();  // ow is rewritten by this warp's next row
    }
  }
}

namespace detail {
template <typename Shape>
std::size_t attention_prepare(Backend& be, const Shape& s, const void* kernel,
                              bool want_local = false) {
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
  // The backward keeps P and dS on chip where that at most adds half to its shared memory (so
  // occupancy stays about as it was) and the device allows it: at the study's L 20, 3.2 KiB.
  const std::size_t local = attention_local_bytes(L);
  const std::size_t total = want_local && 2 * local <= smem &&
                                    smem + local <= static_cast<std::size_t>(be.max_smem_optin())
                                ? smem + local
                                : smem;
  SEQREC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(total)));
  return total;
}
}  // namespace detail

namespace detail {
/// The fused RoPE's view of `rope` (null: no rotation), checked against the attention's shape.
template <typename Shape>
RopeView attention_rope(const Shape& s, const RopeTable* rope, const std::int32_t* row_map) {
  if (rope == nullptr) return {};
  SEQREC_CHECK(rope->length() == s.length && rope->head_dim() == s.dim / s.heads,
               "attention (CUDA): the RoPE table holds L = " + std::to_string(rope->length()) +
                   ", head size " + std::to_string(rope->head_dim()) + "; the attention has L = " +
                   std::to_string(s.length) + ", head size " + std::to_string(s.dim / s.heads));
  return rope->view(row_map);
}
}  // namespace detail

/// Shape: ops::AttentionShape (attention_cpu.hpp) or any struct with batch, length, dim, heads.
/// qkv (B·L, 3D), tokens (B·L), out (B·L, D), probs (B, H, L, L); device pointers. OutT is
/// float, or __nv_bfloat16 for a bf16 activation; ldo is out's leading dimension (0: D). QT is
/// float, or __nv_bfloat16 for the bf16 model's qkv (widened as loaded: the result is the fp32
/// call's on the widened values, bit for bit); ldq is its leading dimension (0: 3D).
/// Packed layout (seg non-null, B + 1 offsets): qkv, tokens and out hold only the packed rows,
/// sequence b owning rows seg[b] … seg[b+1]−1 in window order — every non-padding position of its
/// window must be among them (padding keys are masked, so the others change nothing); a block
/// then works on those rows alone, and P's row i, column j refer to the sequence's i-th and j-th
/// packed rows.
/// RoPE fused (rope non-null, holding (L, D/H)): the kernel rotates Q and K as it loads them, with
/// rope_apply's floats, so the result is bit for bit that of rope_apply(+1) on qkv followed by the
/// unfused call, while qkv itself stays unrotated (the backward takes it so). rope_rows is
/// rope_apply's row map: packed row r sits at slot rope_rows[r] mod L (null: r mod L).
template <typename Shape, typename QT, typename OutT>
void attention_forward(Backend& be, const Shape& s, const QT* qkv, const std::int32_t* tokens,
                       std::int32_t pad_token, OutT* out, float* probs, std::int64_t ldo = 0,
                       const std::int32_t* seg = nullptr, const RopeTable* rope = nullptr,
                       const std::int32_t* rope_rows = nullptr, std::int64_t ldq = 0) {
  if (s.batch == 0) return;
  const RopeView view = detail::attention_rope(s, rope, rope_rows);
  auto* kernel = rope != nullptr ? &attention_forward_kernel<OutT, true, QT>
                                 : &attention_forward_kernel<OutT, false, QT>;
  const std::size_t smem = detail::attention_prepare(be, s, reinterpret_cast<const void*>(kernel));
  const float scale = 1.f / std::sqrt(static_cast<float>(s.dim / s.heads));
  kernel<<<static_cast<unsigned>(s.batch * s.heads), 32 * detail::kAttnWarps, smem, be.stream()>>>(
      qkv, ldq > 0 ? ldq : 3 * s.dim, tokens, pad_token, out, ldo > 0 ? ldo : s.dim, probs, seg,
      static_cast<int>(s.length), static_cast<int>(s.dim), static_cast<int>(s.heads), scale, view);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// dout (B·L, D) → dqkv (B·L, 3D), overwritten; qkv and probs as saved by the forward. With seg
/// (the forward's packed layout), dout and dqkv hold the packed rows. With rope (as the forward
/// had it), qkv is the unrotated input and dqkv the gradient with respect to it: bit for bit the
/// unfused backward on the rotated qkv followed by rope_apply(−1) on dqkv. qkv's type and ldq as
/// the forward's. GT: dout and dqkv both fp32, or both bf16 (the bf16 model's: dout widened as
/// loaded, dqkv rounded once as stored, so the result is the rounding of the fp32 call's on the
/// widened dout, bit for bit); lddo and lddq are their leading dimensions (0: D and 3D).
template <typename Shape, typename QT, typename GT>
void attention_backward(Backend& be, const Shape& s, const QT* qkv, const float* probs,
                        const GT* dout, GT* dqkv, const std::int32_t* seg = nullptr,
                        const RopeTable* rope = nullptr, const std::int32_t* rope_rows = nullptr,
                        std::int64_t ldq = 0, std::int64_t lddo = 0, std::int64_t lddq = 0) {
  if (s.batch == 0) return;
  const RopeView view = detail::attention_rope(s, rope, rope_rows);
  auto* kernel = rope != nullptr ? &attention_backward_kernel<true, QT, GT>
                                 : &attention_backward_kernel<false, QT, GT>;
  const std::size_t smem =
      detail::attention_prepare(be, s, reinterpret_cast<const void*>(kernel), true);
  const bool local = smem > detail::attention_smem_bytes(s.length, s.dim / s.heads);
  const float scale = 1.f / std::sqrt(static_cast<float>(s.dim / s.heads));
  DeviceBuffer<float> ds;  // dS in global memory only where it does not stay on chip
  if (!local)
    ds = be.buffer<float>(static_cast<std::size_t>(s.batch * s.heads * s.length * s.length));
  kernel<<<static_cast<unsigned>(s.batch * s.heads), 32 * detail::kAttnWarps, smem, be.stream()>>>(
      qkv, ldq > 0 ? ldq : 3 * s.dim, probs, dout, lddo > 0 ? lddo : s.dim, dqkv,
      lddq > 0 ? lddq : 3 * s.dim, ds.data(), seg, static_cast<int>(s.length),
      static_cast<int>(s.dim), static_cast<int>(s.heads), scale, view, local ? 1 : 0);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
