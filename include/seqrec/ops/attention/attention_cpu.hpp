// Causal multi-head self-attention on the CPU, from a fused QKV buffer.
//
// Layout: qkv (B·L, 3D) holds [Q | K | V], head h owning columns h·dh … h·dh+dh−1 of each third;
// out (B·L, D) holds the heads side by side. Query i attends to key j iff j ≤ i and token j is not
// padding — except that a padding query attends to itself alone, which keeps every softmax row
// well defined; padding rows feed no loss, so what they compute never matters. The softmax
// probabilities (B, H, L, L) are saved for the backward. Each (b, h) pair is independent and runs
// on one thread with Eigen's serial GEMMs.
//
// Work is spent on the rows that can attend to something:
// - Windows are left-padded, so a row's positions before its first real token s are padding
//   queries attending to themselves (probability 1: out = V, dV = dO, dQ = dK = 0) and keys no
//   real query sees. Only the window [s, L) goes through the GEMMs: at ML-1M's L = 200 the real
//   tokens fill 54% of the positions, and the windows' squares 41% of the L × L scores.
// - Inside the window, queries are taken in blocks of kAttentionBlock rows, and block [r0, r1)
//   multiplies only keys [s, r1): the causal mask's upper triangle is skipped a block at a time.
// Every probability the saved P holds is still written (exact zeros outside the computed blocks),
// so P means what it always did. Padding inside a window (not produced by the batchers, allowed
// by the API) is masked as before.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqrec/core/eigen.hpp"

namespace seqrec::ops {

struct AttentionShape {
  std::int64_t batch, length, dim, heads;
  std::int64_t head_dim() const { return dim / heads; }
};

/// Query rows per causal block of the CPU attention (see the file comment).
inline constexpr std::int64_t kAttentionBlock = 32;

namespace detail {
/// The first position of a row of L tokens that is not padding; L when every one is.
inline std::int64_t first_real_token(const std::int32_t* tok, std::int64_t L,
                                     std::int32_t pad_token) {
  std::int64_t s = 0;
  while (s < L && tok[s] == pad_token) ++s;
  return s;
}
}  // namespace detail

/// qkv (B·L, 3D), tokens (B·L) for the padding mask (pad_token marks padding), out (B·L, D),
/// probs (B, H, L, L).
template <typename T>
void attention_forward(const AttentionShape& s, const T* qkv, const std::int32_t* tokens,
                       std::int32_t pad_token, T* out, T* probs) {
  const std::int64_t L = s.length, D = s.dim, dh = s.head_dim();
  const T scale = T(1) / std::sqrt(T(dh));
  // Windows differ in length, so (b, h) pairs differ in cost: hand them out one at a time. Each
  // pair's result depends on that pair alone, so the schedule cannot change a bit.
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const T* base = qkv + b * L * 3 * D;
      const std::int32_t* tok = tokens + b * L;
      const std::int64_t s0 = detail::first_real_token(tok, L, pad_token);
      MapRM<T> P(probs + (b * s.heads + h) * L * L, L, L);
      T* o = out + b * L * D + h * dh;
      // Leading padding queries: probability 1 on themselves, so out = V.
      for (std::int64_t i = 0; i < s0; ++i) {
        T* row = P.data() + i * L;
        std::fill(row, row + L, T(0));
        row[i] = T(1);
        std::copy_n(base + i * 3 * D + 2 * D + h * dh, dh, o + i * D);
      }
      for (std::int64_t r0 = s0; r0 < L; r0 += kAttentionBlock) {
        const std::int64_t r1 = std::min(L, r0 + kAttentionBlock), rows = r1 - r0, keys = r1 - s0;
        CStridedRM<T> Q(base + r0 * 3 * D + h * dh, rows, dh, Eigen::OuterStride<>(3 * D));
        CStridedRM<T> K(base + s0 * 3 * D + D + h * dh, keys, dh, Eigen::OuterStride<>(3 * D));
        CStridedRM<T> V(base + s0 * 3 * D + 2 * D + h * dh, keys, dh, Eigen::OuterStride<>(3 * D));
        auto S = P.block(r0, s0, rows, keys);
        S.noalias() = (Q * K.transpose()) * scale;
        for (std::int64_t i = r0; i < r1; ++i) {
          T* row = P.data() + i * L;
          const bool pad_query = tok[i] == pad_token;
          // Masked keys to −inf, then one vectorised exp over the row (Eigen's SIMD exp, as the
          // loss uses; a scalar std::exp per score cost ~4% of an ML-1M step). Eigen's exp clamps
          // its input, so exp(−inf) is a tiny positive number, not 0: masked keys are set to 0
          // again before the sum, and stay exactly 0.
          for (std::int64_t j = s0; j <= i; ++j) {
            const bool ok = pad_query ? (j == i) : (tok[j] != pad_token);
            if (!ok) row[j] = -std::numeric_limits<T>::infinity();
          }
          Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> r(row + s0, i + 1 - s0);
          const T mx = r.maxCoeff();  // finite: key i is always allowed to query i
          r = (r - mx).exp();
          for (std::int64_t j = s0; j <= i; ++j)
            if (!(pad_query ? (j == i) : (tok[j] != pad_token))) row[j] = T(0);
          r *= T(1) / r.sum();
          std::fill(row, row + s0, T(0));
          std::fill(row + i + 1, row + L, T(0));
        }
        StridedRM<T> O(o + r0 * D, rows, dh, Eigen::OuterStride<>(D));
        O.noalias() = S * V;
      }
    }
  }
}

/// dout (B·L, D) → dqkv (B·L, 3D), overwritten. tokens and pad_token as in the forward.
template <typename T>
void attention_backward(const AttentionShape& s, const T* qkv, const std::int32_t* tokens,
                        std::int32_t pad_token, const T* probs, const T* dout, T* dqkv) {
  const std::int64_t L = s.length, D = s.dim, dh = s.head_dim();
  const T scale = T(1) / std::sqrt(T(dh));
#pragma omp parallel
  {
    MatRM<T> dP(kAttentionBlock, L);
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (std::int64_t b = 0; b < s.batch; ++b) {
      for (std::int64_t h = 0; h < s.heads; ++h) {
        const T* base = qkv + b * L * 3 * D;
        T* dbase = dqkv + b * L * 3 * D;
        const std::int64_t s0 = detail::first_real_token(tokens + b * L, L, pad_token);
        const T* dout_h = dout + b * L * D + h * dh;
        CMapRM<T> P(probs + (b * s.heads + h) * L * L, L, L);
        // Leading padding queries: dV = dO (their probability on themselves is 1), dQ = dK = 0.
        for (std::int64_t i = 0; i < s0; ++i) {
          T* d = dbase + i * 3 * D + h * dh;
          std::fill_n(d, dh, T(0));
          std::fill_n(d + D, dh, T(0));
          std::copy_n(dout_h + i * D, dh, d + 2 * D);
        }
        const std::int64_t n = L - s0;
        if (n == 0) continue;
        // The window's dK and dV sum over the query blocks that see each key.
        StridedRM<T>(dbase + s0 * 3 * D + D + h * dh, n, dh, Eigen::OuterStride<>(3 * D)).setZero();
        StridedRM<T>(dbase + s0 * 3 * D + 2 * D + h * dh, n, dh, Eigen::OuterStride<>(3 * D))
            .setZero();
        for (std::int64_t r0 = s0; r0 < L; r0 += kAttentionBlock) {
          const std::int64_t r1 = std::min(L, r0 + kAttentionBlock), rows = r1 - r0, keys = r1 - s0;
          const auto Pb = P.block(r0, s0, rows, keys);
          CStridedRM<T> Q(base + r0 * 3 * D + h * dh, rows, dh, Eigen::OuterStride<>(3 * D));
          CStridedRM<T> K(base + s0 * 3 * D + D + h * dh, keys, dh, Eigen::OuterStride<>(3 * D));
          CStridedRM<T> V(base + s0 * 3 * D + 2 * D + h * dh, keys, dh,
                          Eigen::OuterStride<>(3 * D));
          StridedRM<T> dQ(dbase + r0 * 3 * D + h * dh, rows, dh, Eigen::OuterStride<>(3 * D));
          StridedRM<T> dK(dbase + s0 * 3 * D + D + h * dh, keys, dh, Eigen::OuterStride<>(3 * D));
          StridedRM<T> dV(dbase + s0 * 3 * D + 2 * D + h * dh, keys, dh,
                          Eigen::OuterStride<>(3 * D));
          CStridedRM<T> dO(dout_h + r0 * D, rows, dh, Eigen::OuterStride<>(D));
          auto dS = dP.block(0, 0, rows, keys);
          dV.noalias() += Pb.transpose() * dO;
          dS.noalias() = dO * V.transpose();
          // dS = P ∘ (dP − rowsum(P ∘ dP)), scaled by 1/sqrt(dh) once here.
          for (std::int64_t i = r0; i < r1; ++i) {
            T* r = dP.data() + (i - r0) * L;
            const T* p = P.data() + i * L + s0;
            const std::int64_t m = i + 1 - s0;
            T dot = 0;
            for (std::int64_t j = 0; j < m; ++j) dot += p[j] * r[j];
            for (std::int64_t j = 0; j < m; ++j) r[j] = p[j] * (r[j] - dot) * scale;
            for (std::int64_t j = m; j < keys; ++j) r[j] = T(0);
          }
          dQ.noalias() = dS * K;
          dK.noalias() += dS.transpose() * Q;
        }
      }
    }
  }
}

}  // namespace seqrec::ops
