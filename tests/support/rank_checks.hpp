// What the data-parallel tests under mpirun share (tests/mpi and the emulated device's
// test_device_dp_emu): quiet training options, the largest element difference of two parameter
// arrays, and comparisons of every rank's values against rank 0's.
#pragma once

#include <algorithm>
#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "seqrec/dist/mpi.hpp"
#include "seqrec/train/trainer.hpp"

namespace seqrec::test {

/// `epochs` epochs of batch `batch` at lr 3e-3, no progress, logs or validation.
inline train::TrainOptions quiet_options(std::int32_t epochs, std::int32_t batch) {
  train::TrainOptions o;
  o.epochs = epochs;
  o.batch = batch;
  o.lr = 3e-3;
  o.progress = false;
  o.log_epochs = false;
  o.eval_every = 0;
  return o;
}

/// max_i |a_i − b_i| (the arrays must have one size).
template <typename V>
double max_abs_diff(const V& a, const V& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

/// Number of elements of `mine` that differ from rank 0's, on every rank.
template <typename V>
std::int64_t differs_from_rank0(const V& mine, dist::Mpi& comm) {
  V root = mine;
  comm.broadcast(root.data(), root.size(), 0);
  std::int64_t n = 0;
  for (std::size_t i = 0; i < mine.size(); ++i) n += !(mine[i] == root[i]);
  comm.allreduce_sum(&n, 1);
  return n;
}

/// Whether rank 0 holds the same values, on every rank.
inline bool same_as_rank0(const std::vector<double>& mine, dist::Mpi& comm) {
  return differs_from_rank0(mine, comm) == 0;
}

}  // namespace seqrec::test
