// Causal multi-head self-attention on the CPU, from a fused QKV buffer.
//
// Layout: qkv (B·L, 3D) holds [Q | K | V], head h owning columns h·dh … h·dh+dh−1 of each third;
// out (B·L, D) holds the heads side by side. Query i attends to key j iff j ≤ i and token j is not
// padding — except that a padding query attends to itself alone, which keeps every softmax row
// well defined; padding rows feed no loss, so what they compute never matters. The softmax
// probabilities (B, H, L, L) are saved for the backward. Each (b, h) pair is independent and runs
// on one thread with Eigen's serial GEMMs.
#pragma once

#include <omp.h>

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

/// qkv (B·L, 3D), tokens (B·L) for the padding mask (pad_token marks padding), out (B·L, D),
/// probs (B, H, L, L).
template <typename T>
void attention_forward(const AttentionShape& s, const T* qkv, const std::int32_t* tokens,
                       std::int32_t pad_token, T* out, T* probs) {
  const std::int64_t L = s.length, D = s.dim, dh = s.head_dim();
  const T scale = T(1) / std::sqrt(T(dh));
#pragma omp parallel for schedule(static) collapse(2)
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const T* base = qkv + b * L * 3 * D;
      CStridedRM<T> Q(base + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
      CStridedRM<T> K(base + D + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
      CStridedRM<T> V(base + 2 * D + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
      MapRM<T> P(probs + (b * s.heads + h) * L * L, L, L);
      P.noalias() = (Q * K.transpose()) * scale;
      const std::int32_t* tok = tokens + b * L;
      for (std::int64_t i = 0; i < L; ++i) {
        T* row = P.data() + i * L;
        const bool pad_query = tok[i] == pad_token;
        // Masked keys to −inf, then one vectorised exp over the row (Eigen's SIMD exp, as the
        // loss uses; a scalar std::exp per score cost ~4% of an ML-1M step). Eigen's exp clamps
        // its input, so exp(−inf) is a tiny positive number, not 0: masked keys are set to 0
        // again before the sum, and stay exactly 0.
        for (std::int64_t j = 0; j <= i; ++j) {
          const bool ok = pad_query ? (j == i) : (tok[j] != pad_token);
          if (!ok) row[j] = -std::numeric_limits<T>::infinity();
        }
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> r(row, i + 1);
        const T mx = r.maxCoeff();  // finite: key i is always allowed to query i
        r = (r - mx).exp();
        for (std::int64_t j = 0; j <= i; ++j)
          if (!(pad_query ? (j == i) : (tok[j] != pad_token))) row[j] = T(0);
        r *= T(1) / r.sum();
        for (std::int64_t j = i + 1; j < L; ++j) row[j] = T(0);
      }
      StridedRM<T> O(out + b * L * D + h * dh, L, dh, Eigen::OuterStride<>(D));
      O.noalias() = P * V;
    }
  }
}

/// dout (B·L, D) → dqkv (B·L, 3D), overwritten.
template <typename T>
void attention_backward(const AttentionShape& s, const T* qkv, const T* probs, const T* dout,
                        T* dqkv) {
  const std::int64_t L = s.length, D = s.dim, dh = s.head_dim();
  const T scale = T(1) / std::sqrt(T(dh));
#pragma omp parallel
  {
    MatRM<T> dP(L, L);
#pragma omp for schedule(static) collapse(2)
    for (std::int64_t b = 0; b < s.batch; ++b) {
      for (std::int64_t h = 0; h < s.heads; ++h) {
        const T* base = qkv + b * L * 3 * D;
        T* dbase = dqkv + b * L * 3 * D;
        CStridedRM<T> Q(base + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
        CStridedRM<T> K(base + D + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
        CStridedRM<T> V(base + 2 * D + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
        StridedRM<T> dQ(dbase + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
        StridedRM<T> dK(dbase + D + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
        StridedRM<T> dV(dbase + 2 * D + h * dh, L, dh, Eigen::OuterStride<>(3 * D));
        CMapRM<T> P(probs + (b * s.heads + h) * L * L, L, L);
        CStridedRM<T> dO(dout + b * L * D + h * dh, L, dh, Eigen::OuterStride<>(D));
        dV.noalias() = P.transpose() * dO;
        dP.noalias() = dO * V.transpose();
        // dS = P ∘ (dP − rowsum(P ∘ dP)), scaled by 1/sqrt(dh) once here.
        for (std::int64_t i = 0; i < L; ++i) {
          T* r = dP.data() + i * L;
          const T* p = P.data() + i * L;
          T dot = 0;
          for (std::int64_t j = 0; j <= i; ++j) dot += p[j] * r[j];
          for (std::int64_t j = 0; j <= i; ++j) r[j] = p[j] * (r[j] - dot) * scale;
          for (std::int64_t j = i + 1; j < L; ++j) r[j] = T(0);
        }
        dQ.noalias() = dP * K;
        dK.noalias() = dP.transpose() * Q;
      }
    }
  }
}

}  // namespace seqrec::ops
