// RMSNorm on the CPU: y = x / rms(x) · g, rms(x) = sqrt(mean(x²) + eps), per row of width D.
// The forward saves 1/rms per row; the backward needs nothing else:
//   dx = (g·dy) / rms − x · Σ(g·dy·x) / (D · rms³).
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace seqrec::ops {

/// x, y: (N, D); g: (D); rstd: (N) receives 1/rms.
template <typename T>
void rmsnorm_forward(const T* x, const T* g, T* y, T* rstd, std::int64_t n, std::int64_t d, T eps) {
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (std::int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    T ss = 0;
    for (std::int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
    const T inv = T(1) / std::sqrt(ss / T(d) + eps);
    rstd[r] = inv;
    for (std::int64_t j = 0; j < d; ++j) yr[j] = xr[j] * inv * g[j];
  }
}

/// dx (N, D) overwritten; dg (D) accumulated (+=). Rows are reduced per thread, then summed in a
/// fixed order so results do not depend on scheduling.
template <typename T>
void rmsnorm_backward(const T* x, const T* g, const T* rstd, const T* dy, T* dx, T* dg,
                      std::int64_t n, std::int64_t d) {
  const int nt = (n * d > 32768) ? omp_get_max_threads() : 1;
  std::vector<T> partial(static_cast<std::size_t>(nt) * d, T(0));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    T* dgt = partial.data() + static_cast<std::size_t>(t) * d;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < n; ++r) {
      const T* xr = x + r * d;
      const T* dyr = dy + r * d;
      T* dxr = dx + r * d;
      const T inv = rstd[r];
      T dot = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        dot += g[j] * dyr[j] * xr[j];
        dgt[j] += dyr[j] * xr[j] * inv;
      }
      const T c = dot * inv * inv * inv / T(d);
      for (std::int64_t j = 0; j < d; ++j) dxr[j] = g[j] * dyr[j] * inv - xr[j] * c;
    }
  }
  for (int t = 0; t < nt; ++t)
    for (std::int64_t j = 0; j < d; ++j) dg[j] += partial[static_cast<std::size_t>(t) * d + j];
}

}  // namespace seqrec::ops
