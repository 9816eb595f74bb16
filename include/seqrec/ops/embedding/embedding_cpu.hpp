// Token embedding lookup on the CPU: x[n] = E[token[n]] · scale. The backward scatters into the
// table; threads split the columns, not the rows, so no two threads ever add into the same
// element and the sum order is fixed (deterministic, no atomics).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace seqrec::ops {

/// tokens (N) → x (N, D) = table[tokens] · scale. Tokens must already be validated.
template <typename T>
void embedding_forward(const std::int32_t* tokens, const T* table, T* x, std::int64_t n,
                       std::int64_t d, T scale) {
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (std::int64_t r = 0; r < n; ++r) {
    const T* e = table + static_cast<std::int64_t>(tokens[r]) * d;
    T* xr = x + r * d;
    for (std::int64_t j = 0; j < d; ++j) xr[j] = e[j] * scale;
  }
}

/// dtable[tokens[n]] += dx[n] · scale.
template <typename T>
void embedding_backward(const std::int32_t* tokens, const T* dx, T* dtable, std::int64_t n,
                        std::int64_t d, T scale) {
  const int nt = (n * d > 32768) ? std::max(1, omp_get_max_threads()) : 1;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int T_ = omp_get_num_threads();
    const std::int64_t c0 = d * t / T_, c1 = d * (t + 1) / T_;
    for (std::int64_t r = 0; r < n; ++r) {
      T* e = dtable + static_cast<std::int64_t>(tokens[r]) * d;
      const T* g = dx + r * d;
      for (std::int64_t j = c0; j < c1; ++j) e[j] += g[j] * scale;
    }
  }
}

}  // namespace seqrec::ops
