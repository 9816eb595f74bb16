// How this process was started: alone, or as one of a job's ranks by an MPI launcher (mpirun,
// mpiexec). Read from the launcher's environment, so a binary can tell before (and
// without) initialising MPI, and one built without MPI can refuse to train N separate models.
#pragma once

#include <cstdlib>
#include <initializer_list>
#include <string>

namespace seqrec::dist {

namespace detail {

// The first of the variables that is set and holds a positive integer; 0 when none does.
inline int first_positive_env(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end == '\0' && n > 0 && n < (1L << 24)) return static_cast<int>(n);
  }
  return 0;
}

}  // namespace detail

/// Ranks in the job that started this process (OpenMPI's OMPI_COMM_WORLD_SIZE, MPICH/Hydra's
/// PMI_SIZE); 1 when it was started directly.
inline int launched_ranks() {
  const int n = detail::first_positive_env({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"});
  return n > 0 ? n : 1;
}

/// Ranks of that job on this machine (they share its cores); 1 when started directly.
inline int launched_local_ranks() {
  const int n = detail::first_positive_env({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"});
  return n > 0 ? n : 1;
}

/// This process's place among the job's ranks on this machine (OpenMPI's
/// OMPI_COMM_WORLD_LOCAL_RANK, MPICH/Hydra's MPI_LOCALRANKID); -1 when the launcher set neither.
/// One GPU per local rank is how a multi-GPU run picks its devices.
inline int launched_local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"}) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end == '\0' && n >= 0 && n < (1L << 24)) return static_cast<int>(n);
  }
  return -1;
}

}  // namespace seqrec::dist
