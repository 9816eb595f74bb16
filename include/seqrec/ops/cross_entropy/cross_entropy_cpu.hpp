// Softmax cross-entropy over the whole item catalogue, fused with the tied output projection and
// computed in chunks of rows: logits for at most `chunk_rows` positions exist at once, so memory
// grows with the chunk, never with batch × length × items.
//
// For each non-padding row r with target t:  z = h_r · Wᵀ (W = the item rows of the embedding
// table), loss_r = logsumexp(z) − z_t, and with g = (softmax(z) − onehot(t)) · grad_scale:
// dh_r = g · W and dW += gᵀ · h_r. Padding rows get dh = 0.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/core/error.hpp"

namespace seqrec::ops {

struct CrossEntropyShape {
  std::int64_t rows;        // N = B·L positions
  std::int64_t dim;         // D
  std::int64_t num_items;   // I: logits are over items only
  std::int32_t first_item;  // token id of item 0 (the special tokens come before it)
  std::int64_t chunk_rows;  // rows whose logits exist at once
};

/// Returns the summed loss (in double) and writes the number of scored rows to *count.
/// h (N, D); targets (N), values < first_item mean "no target"; items (I, D) is the item block of
/// the tied table. dh (N, D) is overwritten and ditems (I, D) accumulated; both may be null for a
/// forward-only pass. workspace is resized as needed and may be reused across calls.
template <typename T>
double cross_entropy_forward_backward(const CrossEntropyShape& s, const T* h,
                                      const std::int32_t* targets, const T* items, T* dh, T* ditems,
                                      T grad_scale, std::int64_t* count,
                                      AlignedVector<T>& workspace) {
  const std::int64_t D = s.dim, I = s.num_items;
  std::vector<std::int64_t> rows;
  rows.reserve(static_cast<std::size_t>(s.rows));
  for (std::int64_t r = 0; r < s.rows; ++r) {
    const std::int32_t t = targets[r];
    if (t >= s.first_item) {
      SEQREC_CHECK(t - s.first_item < I, "target token out of the item range");
      rows.push_back(r);
    }
  }
  if (dh != nullptr) std::fill(dh, dh + s.rows * D, T(0));
  *count = static_cast<std::int64_t>(rows.size());
  const std::int64_t C =
      std::max<std::int64_t>(1, std::min<std::int64_t>(s.chunk_rows, rows.size()));
  workspace.resize(static_cast<std::size_t>(C * I + 2 * C * D));
  T* logits = workspace.data();
  T* hc = logits + C * I;
  T* dhc = hc + C * D;
  CMapRM<T> W(items, I, D);
  double loss = 0;
  std::vector<double> row_loss;
  for (std::size_t c0 = 0; c0 < rows.size(); c0 += static_cast<std::size_t>(C)) {
    const std::int64_t c = std::min<std::int64_t>(C, static_cast<std::int64_t>(rows.size() - c0));
    for (std::int64_t i = 0; i < c; ++i) std::copy_n(h + rows[c0 + i] * D, D, hc + i * D);
    MapRM<T> Z(logits, c, I);
    CMapRM<T> Hc(hc, c, D);
    assign_product(Z, Hc, W.transpose());  // the step's largest buffer: zeroed in parallel
    // Per-row losses summed serially afterwards: an OpenMP reduction's order is unspecified, and
    // a resumed run must print bit-identical losses.
    row_loss.resize(static_cast<std::size_t>(c));
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < c; ++i) {
      T* z = logits + i * I;
      const std::int64_t t = targets[rows[c0 + i]] - s.first_item;
      // One vectorised exp pass (Eigen's SIMD exp): the softmax over I items is the costliest
      // element-wise work of a training step.
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> zr(z, I);
      const T zt = z[t];
      const T mx = zr.maxCoeff();
      zr = (zr - mx).exp();
      const T sum = zr.sum();
      row_loss[i] = static_cast<double>(mx + std::log(sum) - zt);
      if (dh != nullptr || ditems != nullptr) {
        zr *= grad_scale / sum;
        z[t] -= grad_scale;
      }
    }
    for (double v : row_loss) loss += v;
    if (dh != nullptr) {
      MapRM<T> dHc(dhc, c, D);
      dHc.noalias() = Z * W;
      for (std::int64_t i = 0; i < c; ++i) std::copy_n(dhc + i * D, D, dh + rows[c0 + i] * D);
    }
    if (ditems != nullptr) MapRM<T>(ditems, I, D).noalias() += Z.transpose() * Hc;
  }
  return loss;
}

// ---- selected log-probabilities (DPO's head) ---------------------------------------------------
//
// For P rows h (P, D), z_r = h_r · Wᵀ over all I items, and for each of the row's J item columns
// cols (P, J) in [0, I): logp(r, j) = z_r[cols(r, j)] − logsumexp(z_r). The backward takes
// g (P, J) = d loss / d logp and, with G_r = Σ_j g(r, j),
//   dz_r,i = scale · (Σ_j g(r, j) [i = cols(r, j)] − G_r · softmax(z_r)_i)
//   dh_r   = dz_r · W,   dW += dz_rᵀ · h_r.
// Cross-entropy is the case J = 1, g = −1. Rows are processed in chunks of chunk_rows (the logits
// never exist whole); the backward recomputes each chunk's logits with the same product.

struct SelectedShape {
  std::int64_t rows;        // P
  std::int64_t dim;         // D
  std::int64_t num_items;   // I
  std::int64_t per_row;     // J
  std::int64_t chunk_rows;  // rows whose logits exist at once
};

namespace detail {
/// Calls body(r0, Hc, Z) for each chunk of at most chunk_rows rows r0 … r0 + c − 1, with
/// Hc (c, D) their rows of h and Z (c, I) = Hc · Wᵀ in the workspace (resized as needed).
template <typename T, typename Body>
void for_each_logit_chunk(const SelectedShape& s, const T* h, const T* items,
                          AlignedVector<T>& workspace, Body&& body) {
  const std::int64_t D = s.dim, I = s.num_items;
  const std::int64_t C = std::max<std::int64_t>(1, std::min(s.chunk_rows, s.rows));
  workspace.resize(static_cast<std::size_t>(C * I));
  CMapRM<T> W(items, I, D);
  for (std::int64_t r0 = 0; r0 < s.rows; r0 += C) {
    const std::int64_t c = std::min(C, s.rows - r0);
    MapRM<T> Z(workspace.data(), c, I);
    CMapRM<T> Hc(h + r0 * D, c, D);
    assign_product(Z, Hc, W.transpose());
    body(r0, Hc, Z, W);
  }
}
}  // namespace detail

/// logp (P, J) and lse (P) (each row's logsumexp, for the backward). The logsumexp is computed in
/// T (one vectorised pass), log p = z − lse in double. workspace is resized as needed.
template <typename T>
void selected_log_softmax(const SelectedShape& s, const T* h, const std::int32_t* cols,
                          const T* items, double* logp, double* lse, AlignedVector<T>& workspace) {
  const std::int64_t I = s.num_items, J = s.per_row;
  detail::for_each_logit_chunk(s, h, items, workspace,
                               [&](std::int64_t r0, const auto&, auto& Z, const auto&) {
#pragma omp parallel for schedule(static)
                                 for (std::int64_t i = 0; i < Z.rows(); ++i) {
                                   const T* z = Z.data() + i * I;
                                   // One vectorised exp pass over the row (Eigen's SIMD exp), as in
                                   // the cross-entropy.
                                   Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> zr(z, I);
                                   const T mx = zr.maxCoeff();
                                   const double l = double(mx + std::log((zr - mx).exp().sum()));
                                   lse[r0 + i] = l;
                                   for (std::int64_t j = 0; j < J; ++j)
                                     logp[(r0 + i) * J + j] = double(z[cols[(r0 + i) * J + j]]) - l;
                                 }
                               });
}

/// dh (P, D) is overwritten; ditems (I, D) accumulated unless null. lse from the forward.
template <typename T>
void selected_log_softmax_backward(const SelectedShape& s, const T* h, const std::int32_t* cols,
                                   const T* items, const double* lse, const double* g, double scale,
                                   T* dh, T* ditems, AlignedVector<T>& workspace) {
  const std::int64_t D = s.dim, I = s.num_items, J = s.per_row;
  detail::for_each_logit_chunk(
      s, h, items, workspace, [&](std::int64_t r0, const auto& Hc, auto& Z, const auto& W) {
        const std::int64_t c = Z.rows();
#pragma omp parallel for schedule(static)
        for (std::int64_t i = 0; i < c; ++i) {
          const std::int64_t r = r0 + i;
          double total = 0;
          for (std::int64_t j = 0; j < J; ++j) total += g[r * J + j];
          Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> zr(Z.data() + i * I, I);
          zr = (zr - T(lse[r])).exp() * T(-scale * total);
          for (std::int64_t j = 0; j < J; ++j) zr[cols[r * J + j]] += T(scale * g[r * J + j]);
        }
        MapRM<T>(dh + r0 * D, c, D).noalias() = Z * W;
        if (ditems != nullptr) MapRM<T>(ditems, I, D).noalias() += Z.transpose() * Hc;
      });
}

}  // namespace seqrec::ops
