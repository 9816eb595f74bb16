// The CPU backend: Eigen for GEMMs, OpenMP for threads. It owns no maths; ops take it to know how
// many threads they may use. The scalar type is part of the backend so that the same model type
// runs in float for training and in double for gradient checks.
#pragma once

#include <omp.h>

#include <Eigen/Core>
#include <cstdint>
#include <string_view>

namespace seqrec::cpu {

template <typename T>
class BackendT {
 public:
  using Scalar = T;
  static constexpr std::string_view name = "cpu";

  /// threads <= 0 keeps OpenMP's default (all cores, or OMP_NUM_THREADS).
  explicit BackendT(int threads = 0) { set_threads(threads); }

  void set_threads(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    threads_ = omp_get_max_threads();
    Eigen::setNbThreads(threads_);
  }
  int threads() const noexcept { return threads_; }

 private:
  int threads_ = 1;
};

using Backend = BackendT<float>;
using BackendF64 = BackendT<double>;

}  // namespace seqrec::cpu
