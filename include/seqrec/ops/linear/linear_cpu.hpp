// Linear layer on the CPU: y = x Wᵀ + b with W stored (out, in) as in PyTorch, so checkpoints
// read the same in both. The backward overwrites the input gradient and adds (+=) into the
// parameter gradients, which is what lets a tied or shared weight collect from several uses.
#pragma once

#include <cstdint>

#include "seqrec/core/eigen.hpp"

namespace seqrec::ops {

/// y (N, Out) = x (N, In) · Wᵀ (W: (Out, In)) + b (Out); b may be null.
template <typename T>
void linear_forward(const T* x, const T* w, const T* b, T* y, std::int64_t n, std::int64_t in,
                    std::int64_t out) {
  CMapRM<T> X(x, n, in);
  CMapRM<T> W(w, out, in);
  MapRM<T> Y(y, n, out);
  assign_product(Y, X, W.transpose());
  if (b == nullptr) return;
  const CVecMap<T> B(b, out);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) Y.row(i) += B.transpose();
}

/// dx (N, In) = dy · W (overwritten; skipped when dx is null); dW += dyᵀ · x; db += Σ_rows dy.
template <typename T>
void linear_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, std::int64_t n,
                     std::int64_t in, std::int64_t out) {
  CMapRM<T> X(x, n, in);
  CMapRM<T> W(w, out, in);
  CMapRM<T> dY(dy, n, out);
  if (dx != nullptr) assign_product(MapRM<T>(dx, n, in), dY, W);
  if (dw != nullptr) MapRM<T>(dw, out, in).noalias() += dY.transpose() * X;
  if (db != nullptr) VecMap<T>(db, out) += dY.colwise().sum().transpose();
}

}  // namespace seqrec::ops
