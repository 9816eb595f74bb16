// The processes a binary runs in: one, or — built with MPI (SEQREC_WITH_MPI) and started by an
// MPI launcher with N > 1 ranks — the N ranks of a data-parallel run (include/seqrec/dist/).
// The binary's code receives the communicator through run(), so the trainer is instantiated for
// dist::Single and for dist::Mpi, and a one-process run never touches MPI.
#pragma once

#include <fmt/format.h>
#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <seqrec/core/error.hpp>
#include <seqrec/dist/communicator.hpp>
#include <seqrec/dist/launch.hpp>
#include <string>
#include <thread>
#if SEQREC_WITH_MPI
#include <seqrec/dist/mpi.hpp>
#endif

namespace seqrec::app {

class Group {
 public:
  /// One process unless a launcher started this one as a rank of a larger job; then joins that
  /// job, or throws when this binary was built without MPI (each rank would train alone).
  Group(int* argc, char*** argv) {
    const int n = dist::launched_ranks();
    if (n <= 1) return;
#if SEQREC_WITH_MPI
    env_.emplace(argc, argv);
    mpi_.emplace();
#else
    (void)argc;
    (void)argv;
    throw Error(fmt::format(
        "started as one of {} ranks, but this binary was built without MPI, so each rank would "
        "train a model of its own: rebuild where CMake finds MPI, or start one process",
        n));
#endif
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const noexcept {
#if SEQREC_WITH_MPI
    if (mpi_) return mpi_->rank();
#endif
    return 0;
  }
  int size() const noexcept {
#if SEQREC_WITH_MPI
    if (mpi_) return mpi_->size();
#endif
    return 1;
  }
  /// Rank 0: the one that prints and writes files.
  bool lead() const noexcept { return rank() == 0; }

  /// CPU threads for this rank when the user asked for `requested` (0: all cores): the machine's
  /// cores shared among the ranks on it, and no more than the cores the launcher bound this
  /// rank to (OpenMPI binds each of 2 ranks to one core unless told --bind-to none or
  /// --map-by slot:PE=N).
  int threads(int requested) const {
    if (requested > 0 || size() == 1) return requested;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int share = std::max(1, cores / dist::launched_local_ranks());
    cpu_set_t mask;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof(mask), &mask) == 0 && CPU_COUNT(&mask) > 0)
      return std::min(share, CPU_COUNT(&mask));
    return share;
  }

  /// f(communicator): dist::Mpi in a data-parallel run, dist::Single otherwise.
  template <typename F>
  decltype(auto) run(F&& f) {
#if SEQREC_WITH_MPI
    if (mpi_) return f(*mpi_);
#endif
    return f(single_);
  }

  /// After an error on this rank: returns `code` alone; in a group, ends every rank with it
  /// (the others may be waiting in a collective for this one).
  int fail(int code) {
#if SEQREC_WITH_MPI
    if (mpi_) {
      std::fflush(nullptr);
      mpi_->abort(code);
    }
#endif
    return code;
  }

 private:
#if SEQREC_WITH_MPI
  std::optional<dist::MpiEnvironment> env_;  // declared first: finalised last
  std::optional<dist::Mpi> mpi_;
#endif
  dist::Single single_;
};

/// A binary's group (see Group); on failure prints "<binary>: error: ..." and returns null.
inline std::unique_ptr<Group> join_group(int* argc, char*** argv, const std::string& binary) {
  try {
    return std::make_unique<Group>(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", binary.c_str(), e.what());
    return nullptr;
  }
}

}  // namespace seqrec::app
