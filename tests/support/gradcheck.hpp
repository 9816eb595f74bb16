// Central-difference gradient checking for the tests, in double precision.
//
// check_gradient() perturbs elements of a parameter or input array by ±h, re-evaluates the
// scalar loss and compares (f(x+h) − f(x−h)) / 2h with the analytic gradient. With h = 1e-5 the
// truncation error is O(h²) ≈ 1e-10 relative and the rounding error ≈ 1e-16 / h ≈ 1e-11, so a
// correct backward agrees to far better than the tolerance used (1e-6 relative, with an absolute
// floor of 1e-8 for gradients that are zero).
#pragma once

#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "seqrec/core/random.hpp"

namespace seqrec::test {

inline constexpr double kGradStep = 1e-5;
inline constexpr double kGradRelTol = 1e-6;
inline constexpr double kGradAbsTol = 1e-8;

struct GradCheckResult {
  double max_rel_error = 0;
  std::size_t checked = 0;
  std::size_t worst_index = 0;
};

/// Compares analytic[i] with the numerical derivative of f wrt x[i] for up to max_checks indices
/// (all of them when n <= max_checks, otherwise a seeded sample).
inline GradCheckResult check_gradient(const std::function<double()>& f, double* x,
                                      const double* analytic, std::size_t n,
                                      std::size_t max_checks = 64, std::uint64_t seed = 1) {
  std::vector<std::size_t> idx;
  if (n <= max_checks) {
    for (std::size_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    Rng rng(seed);
    for (std::size_t k = 0; k < max_checks; ++k) idx.push_back(rng.below(n));
  }
  GradCheckResult r;
  for (std::size_t i : idx) {
    const double orig = x[i];
    x[i] = orig + kGradStep;
    const double fp = f();
    x[i] = orig - kGradStep;
    const double fm = f();
    x[i] = orig;
    const double numeric = (fp - fm) / (2 * kGradStep);
    const double err =
        std::abs(numeric - analytic[i]) /
        std::max({std::abs(numeric), std::abs(analytic[i]), kGradAbsTol / kGradRelTol});
    if (err > r.max_rel_error) {
      r.max_rel_error = err;
      r.worst_index = i;
    }
    ++r.checked;
  }
  return r;
}

inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = rng.normal() * scale;
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace seqrec::test
