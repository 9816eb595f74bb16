// Communicators: the group of processes that trains one model data-parallel. Each process holds
// a whole replica; after each backward the group sums its gradients, so every replica takes the
// same optimiser step and the replicas never drift apart.
//
// A communicator is any type with rank(), size(), and in-place collectives over host arrays of
// float, double and int64: allreduce_sum, broadcast (from a root), barrier(). `Single` is the
// one-process group (every collective is the identity, so a one-process run is exactly the
// run without one); dist/mpi.hpp has `Mpi`, over an MPI communicator. The trainer takes the
// type as a template parameter: no collective is a virtual call.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

namespace seqrec::dist {

template <typename C>
concept Communicator = requires(C& c, float* f, double* d, std::int64_t* i, std::size_t n,
                                int root) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  c.allreduce_sum(f, n);
  c.allreduce_sum(d, n);
  c.allreduce_sum(i, n);
  c.broadcast(f, n, root);
  c.broadcast(d, n, root);
  c.broadcast(i, n, root);
  c.barrier();
};

/// The group of one process.
class Single {
 public:
  int rank() const noexcept { return 0; }
  int size() const noexcept { return 1; }
  template <typename T>
  void allreduce_sum(T*, std::size_t) noexcept {}
  template <typename T>
  void broadcast(T*, std::size_t, int) noexcept {}
  void barrier() noexcept {}
};

static_assert(Communicator<Single>);

}  // namespace seqrec::dist
