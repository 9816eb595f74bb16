// The NCCL calls seqrec makes (include/seqrec/dist/nccl.hpp), for the host emulator: a shared
// library that the tests load in place of libnccl.so.2 through $SEQREC_NCCL_LIBRARY.
//
// Emulated device memory is host memory and every stream's work runs when it is enqueued, so a
// collective here is an MPI collective on the same pointers, run at the call. A group of one
// rank needs no MPI; a larger one needs the ranks of an MPI job (MPI initialised by the program,
// one group rank per MPI rank, as the trainer binaries run under mpirun). What it checks as NCCL
// does, so that the code calling it cannot rely on leniency a GPU run would not give:
//   - every rank passes the same identifier, made by ncclGetUniqueId (ncclInvalidArgument);
//   - the group's ranks are the job's ranks, each once (ncclInvalidArgument);
//   - no two ranks of a group use the same device (NCCL refuses a duplicate GPU on one host:
//     ncclInvalidUsage); the emulator's devices are the SEQREC_EMU_DEVICES ordinals;
//   - float32 only, PreMulSum operators with a host-immediate scalar only, and an operator used
//     or destroyed with the communicator that made it (ncclInvalidArgument).
// Built without MPI (SEQREC_NCCL_EMU_MPI 0), only groups of one rank are possible.
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#if SEQREC_NCCL_EMU_MPI
#include <mpi.h>
#endif

struct ncclComm {
  int rank = 0, size = 1;
#if SEQREC_NCCL_EMU_MPI
  MPI_Comm mpi = MPI_COMM_NULL;
#endif
  std::vector<float> premul;  // the scalar of operator ncclNumOps + i
  std::vector<bool> live;     // whether operator ncclNumOps + i exists
};

namespace {

constexpr char kMagic[] = "seqrec-nccl-emu";

thread_local int tl_group_depth = 0;

bool valid_id(const ncclUniqueId& id) {
  return std::memcmp(id.internal, kMagic, sizeof kMagic) == 0;
}

/// The scalar of a PreMulSum operator of `comm`, or false if `op` is none of its live ones.
bool premul_scalar(const ncclComm* comm, ncclRedOp_t op, float* scalar) {
  const long i = long(op) - long(ncclNumOps);
  if (i < 0 || i >= long(comm->premul.size()) || !comm->live[std::size_t(i)]) return false;
  *scalar = comm->premul[std::size_t(i)];
  return true;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error";
    case ncclSystemError:
      return "unhandled system error";
    case ncclInternalError:
      return "internal error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    default:
      return "unknown result code";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, kMagic, sizeof kMagic);
  std::random_device rd;
  const std::uint64_t salt = (std::uint64_t{rd()} << 32) ^ rd() ^ std::uint64_t(getpid());
  std::memcpy(id->internal + sizeof kMagic, &salt, sizeof salt);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* out, int nranks, ncclUniqueId id, int rank) {
  if (out == nullptr || nranks < 1 || rank < 0 || rank >= nranks || !valid_id(id))
    return ncclInvalidArgument;
  auto* c = new ncclComm;
  c->rank = rank;
  c->size = nranks;
  if (nranks > 1) {
#if SEQREC_NCCL_EMU_MPI
    int inited = 0, world = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      std::fprintf(stderr, "nccl_emu: a group of %d ranks needs MPI initialised\n", nranks);
      delete c;
      return ncclInvalidUsage;
    }
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    // Collective from here on: every rank reaches the same checks.
    int device = -1;
    cudaGetDevice(&device);
    struct Member {
      int rank, device;
      ncclUniqueId id;
    };
    const Member mine{rank, device, id};
    std::vector<Member> all(static_cast<std::size_t>(world));
    MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, MPI_COMM_WORLD);
    ncclResult_t r = world == nranks ? ncclSuccess : ncclInvalidArgument;
    std::vector<int> seen(std::size_t(world), 0);
    for (const auto& a : all) {
      if (std::memcmp(&a.id, &id, sizeof id) != 0) r = ncclInvalidArgument;
      if (a.rank < 0 || a.rank >= world || seen[std::size_t(a.rank)]++) r = ncclInvalidArgument;
    }
    for (std::size_t i = 0; r == ncclSuccess && i < all.size(); ++i)
      for (std::size_t j = i + 1; j < all.size(); ++j)
        if (all[i].device == all[j].device) {
          std::fprintf(stderr,
                       "nccl_emu: ranks %d and %d both use device %d (NCCL: duplicate GPU)\n",
                       all[i].rank, all[j].rank, all[i].device);
          r = ncclInvalidUsage;
          break;
        }
    if (r != ncclSuccess) {
      delete c;
      return r;
    }
    // The group's rank order, as given, not the job's.
    MPI_Comm_split(MPI_COMM_WORLD, 0, rank, &c->mpi);
#else
    std::fprintf(stderr, "nccl_emu: built without MPI, so groups have one rank (asked %d)\n",
                 nranks);
    delete c;
    return ncclInvalidUsage;
#endif
  }
  *out = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
#if SEQREC_NCCL_EMU_MPI
  if (comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
#endif
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclRedOpCreatePreMulSum(ncclRedOp_t* op, void* scalar, ncclDataType_t datatype,
                                      ncclScalarResidence_t residence, ncclComm_t comm) {
  if (op == nullptr || scalar == nullptr || comm == nullptr || datatype != ncclFloat32 ||
      residence != ncclScalarHostImmediate)
    return ncclInvalidArgument;
  float v = 0;
  std::memcpy(&v, scalar, sizeof v);
  comm->premul.push_back(v);
  comm->live.push_back(true);
  *op = static_cast<ncclRedOp_t>(long(ncclNumOps) + long(comm->premul.size()) - 1);
  return ncclSuccess;
}

ncclResult_t ncclRedOpDestroy(ncclRedOp_t op, ncclComm_t comm) {
  float unused = 0;
  if (comm == nullptr || !premul_scalar(comm, op, &unused)) return ncclInvalidArgument;
  comm->live[std::size_t(long(op) - long(ncclNumOps))] = false;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++tl_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (tl_group_depth == 0) return ncclInvalidUsage;
  --tl_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr || datatype != ncclFloat32 || (count > 0 && (!sendbuff || !recvbuff)))
    return ncclInvalidArgument;
  float scale = 1.0f;
  if (op != ncclSum && !premul_scalar(comm, op, &scale)) return ncclInvalidArgument;
  const auto* in = static_cast<const float*>(sendbuff);
  auto* out = static_cast<float*>(recvbuff);
  // This rank's contribution: the input times the scalar (PreMulSum), as NCCL forms it.
  std::vector<float> mine(in, in + count);
  if (op != ncclSum)
    for (float& x : mine) x *= scale;
  if (comm->size == 1) {
    std::copy(mine.begin(), mine.end(), out);
    return ncclSuccess;
  }
#if SEQREC_NCCL_EMU_MPI
  for (size_t at = 0; at < count;) {
    const int n = static_cast<int>(std::min<size_t>(count - at, INT_MAX));
    if (MPI_Allreduce(mine.data() + at, out + at, n, MPI_FLOAT, MPI_SUM, comm->mpi) != MPI_SUCCESS)
      return ncclSystemError;
    at += size_t(n);
  }
  return ncclSuccess;
#else
  return ncclInvalidUsage;
#endif
}

}  // extern "C"
