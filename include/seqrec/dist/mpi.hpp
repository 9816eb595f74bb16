// MPI for data-parallel training on CPU processes: `Mpi`, a communicator (dist/communicator.hpp)
// over an MPI communicator, and `MpiEnvironment`, which initialises MPI for a process's lifetime.
// Needs <mpi.h> and MPI::MPI_CXX linked (CMake: find_package(MPI COMPONENTS CXX)).
//
// Errors: MPI's default handler aborts the whole job on a failed collective, which is what a
// data-parallel run wants (a rank that stopped would leave the others waiting forever); a C++
// exception on one rank must likewise end in abort(), not in a return from main (see
// examples/common/trainer_main.hpp).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "seqrec/core/error.hpp"
#include "seqrec/dist/communicator.hpp"
#include "seqrec/dist/launch.hpp"

namespace seqrec::dist {

namespace detail {

template <typename T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>)
    return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return MPI_DOUBLE;
  else {
    static_assert(std::is_same_v<T, std::int64_t>, "collectives take float, double or int64");
    return MPI_INT64_T;
  }
}

inline void mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(len)));
}

// MPI counts are int: longer arrays go in pieces of at most 2^30 elements.
inline constexpr std::size_t kMaxCount = std::size_t{1} << 30;

}  // namespace detail

/// MPI_Init_thread (MPI_THREAD_FUNNELED: only the main thread calls MPI; OpenMP threads compute)
/// on construction, MPI_Finalize on destruction. One per process, before any Mpi.
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc, char*** argv) {
    int provided = 0;
    detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided),
                      "MPI_Init_thread");
    SEQREC_CHECK(provided >= MPI_THREAD_FUNNELED,
                 "the MPI library cannot run with OpenMP threads (MPI_THREAD_FUNNELED)");
  }
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  ~MpiEnvironment() { MPI_Finalize(); }
};

/// A communicator over an MPI communicator (MPI_COMM_WORLD unless given).
class Mpi {
 public:
  explicit Mpi(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    detail::mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  /// data[i] ← Σ over ranks of data[i], on every rank.
  template <typename T>
  void allreduce_sum(T* data, std::size_t n) {
    for (std::size_t at = 0; at < n; at += detail::kMaxCount) {
      const int count = static_cast<int>(std::min(n - at, detail::kMaxCount));
      detail::mpi_check(
          MPI_Allreduce(MPI_IN_PLACE, data + at, count, detail::mpi_type<T>(), MPI_SUM, comm_),
          "MPI_Allreduce");
    }
  }
  /// data ← root's data, on every rank.
  template <typename T>
  void broadcast(T* data, std::size_t n, int root) {
    for (std::size_t at = 0; at < n; at += detail::kMaxCount) {
      const int count = static_cast<int>(std::min(n - at, detail::kMaxCount));
      detail::mpi_check(MPI_Bcast(data + at, count, detail::mpi_type<T>(), root, comm_),
                        "MPI_Bcast");
    }
  }
  void barrier() { detail::mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }
  /// Ends every rank of the job (after an error on this one) with exit code `code`.
  [[noreturn]] void abort(int code) {
    MPI_Abort(comm_, code);
    std::abort();  // MPI_Abort does not return; this tells the compiler so
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

static_assert(Communicator<Mpi>);

}  // namespace seqrec::dist
