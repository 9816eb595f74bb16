// The main() of a Catch2 test run by ctest as `mpirun -np N <test>`: every rank runs every test
// case in the same order, so each case's collectives pair up across the ranks; both ranks print
// their reports, and the job fails if any rank's run does.
#pragma once

#include <mpi.h>

#include <catch2/catch_session.hpp>
#include <cstdio>

#include "seqrec/dist/mpi.hpp"

namespace seqrec::test {

/// Initialises MPI, checks that the job has `ranks` ranks (exit 2 otherwise) and runs the Catch2
/// session; 0 iff every rank passed.
inline int run_catch_on_ranks(int argc, char** argv, const char* name, int ranks) {
  dist::MpiEnvironment env(&argc, &argv);
  dist::Mpi comm;
  if (comm.size() != ranks) {
    if (comm.rank() == 0)
      std::fprintf(stderr, "%s: run under mpirun -np %d (got %d ranks)\n", name, ranks,
                   comm.size());
    return 2;
  }
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  const int failed = session.run();
  int any = failed;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (comm.rank() == 0 && any && !failed)
    std::fprintf(stderr, "%s: another rank failed (its report is above)\n", name);
  return any ? 1 : 0;
}

}  // namespace seqrec::test
