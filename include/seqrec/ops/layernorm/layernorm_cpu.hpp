// LayerNorm on the CPU: y = (x − mean) · rstd · g + b per row of width D, rstd = 1/sqrt(var + eps).
// Saves (mean, rstd) per row. Backward with x̂ = (x − mean)·rstd and u = g·dy:
//   dx = rstd · (u − mean(u) − x̂ · mean(u · x̂)),  dg += dy · x̂,  db += dy.
#pragma once

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace seqrec::ops {

/// x, y (N, D); stats (N, 2) = (mean, rstd).
template <typename T>
void layernorm_forward(const T* x, const T* g, const T* b, T* y, T* stats, std::int64_t n,
                       std::int64_t d, T eps) {
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (std::int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * d;
    T mean = 0;
    for (std::int64_t j = 0; j < d; ++j) mean += xr[j];
    mean /= T(d);
    T var = 0;
    for (std::int64_t j = 0; j < d; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= T(d);
    const T rstd = T(1) / std::sqrt(var + eps);
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
    for (std::int64_t j = 0; j < d; ++j) y[r * d + j] = (xr[j] - mean) * rstd * g[j] + b[j];
  }
}

/// dx (N, D) overwritten; dg, db (D) accumulated in a fixed order.
template <typename T>
void layernorm_backward(const T* x, const T* g, const T* stats, const T* dy, T* dx, T* dg, T* db,
                        std::int64_t n, std::int64_t d) {
  const int nt = (n * d > 32768) ? omp_get_max_threads() : 1;
  std::vector<T> partial(static_cast<std::size_t>(nt) * 2 * d, T(0));
#pragma omp parallel num_threads(nt)
  {
    T* pg = partial.data() + static_cast<std::size_t>(omp_get_thread_num()) * 2 * d;
    T* pb = pg + d;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < n; ++r) {
      const T* xr = x + r * d;
      const T* dyr = dy + r * d;
      const T mean = stats[2 * r], rstd = stats[2 * r + 1];
      T mu = 0, mux = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        const T xh = (xr[j] - mean) * rstd;
        const T u = g[j] * dyr[j];
        mu += u;
        mux += u * xh;
        pg[j] += dyr[j] * xh;
        pb[j] += dyr[j];
      }
      mu /= T(d);
      mux /= T(d);
      for (std::int64_t j = 0; j < d; ++j) {
        const T xh = (xr[j] - mean) * rstd;
        dx[r * d + j] = rstd * (g[j] * dyr[j] - mu - xh * mux);
      }
    }
  }
  for (int t = 0; t < nt; ++t)
    for (std::int64_t j = 0; j < d; ++j) {
      dg[j] += partial[static_cast<std::size_t>(t) * 2 * d + j];
      db[j] += partial[static_cast<std::size_t>(t) * 2 * d + d + j];
    }
}

}  // namespace seqrec::ops
