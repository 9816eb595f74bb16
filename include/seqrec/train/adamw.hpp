// AdamW (Loshchilov & Hutter) over a ParameterStore: decoupled weight decay, applied only to
// tensors flagged `decay` (matrices and embeddings, never norms or biases), and nothing at all
// for frozen tensors. Also the global gradient norm and clipping, over trainable tensors only.
#pragma once

#include <cmath>
#include <cstdint>

#include "seqrec/model/parameter_store.hpp"

namespace seqrec::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.98;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

/// One AdamW update at learning rate lr; step is 1-based (bias correction).
template <typename T>
void adamw_step(ParameterStore<T>& s, const AdamWOptions& o, double lr, std::int64_t step) {
  const double bc1 = 1.0 - std::pow(o.beta1, double(step));
  const double bc2 = 1.0 - std::pow(o.beta2, double(step));
  const T b1 = T(o.beta1), b2 = T(o.beta2), eps = T(o.eps);
  const T step_size = T(lr / bc1), inv_bc2 = T(1.0 / bc2);
  for (const auto& e : s.entries()) {
    if (e.frozen) continue;
    T* p = s.values().data() + e.offset;
    const T* g = s.grads().data() + e.offset;
    T* m = s.moment1().data() + e.offset;
    T* v = s.moment2().data() + e.offset;
    const T decay = e.decay ? T(1.0 - lr * o.weight_decay) : T(1);
    const std::int64_t n = static_cast<std::int64_t>(e.numel);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      m[i] = b1 * m[i] + (T(1) - b1) * g[i];
      v[i] = b2 * v[i] + (T(1) - b2) * g[i] * g[i];
      p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i] * inv_bc2) + eps);
    }
  }
}

/// L2 norm of the gradients of trainable tensors (summed in a fixed order, in double).
template <typename T>
double grad_norm(const ParameterStore<T>& s) {
  double total = 0;
  for (const auto& e : s.entries()) {
    if (e.frozen) continue;
    const T* g = s.grads().data() + e.offset;
    double part = 0;
    for (std::size_t i = 0; i < e.numel; ++i) part += double(g[i]) * double(g[i]);
    total += part;
  }
  return std::sqrt(total);
}

/// Scales gradients so that their norm is at most max_norm (no-op when max_norm <= 0). Returns
/// the norm before clipping.
template <typename T>
double clip_grad_norm(ParameterStore<T>& s, double max_norm) {
  const double norm = grad_norm(s);
  if (max_norm > 0 && norm > max_norm) {
    const T f = T(max_norm / (norm + 1e-12));
    for (const auto& e : s.entries()) {
      if (e.frozen) continue;
      T* g = s.grads().data() + e.offset;
      for (std::size_t i = 0; i < e.numel; ++i) g[i] *= f;
    }
  }
  return norm;
}

}  // namespace seqrec::train
