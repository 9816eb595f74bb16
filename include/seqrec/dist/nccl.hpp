// NCCL for the CUDA model's data parallelism: one process per GPU (started by an MPI launcher),
// each with its own Model<Cfg, cuda::Backend>, whose gradients are summed between the GPUs by
// NCCL instead of through the host (dist/data_parallel.hpp has the arithmetic).
//
// The library is loaded at run time (dlopen), on the first use: a one-GPU run, and every CPU run,
// never needs libnccl, and a machine without it fails only when a multi-GPU run starts, with an
// error that names the paths tried. Where it is looked for: $SEQREC_NCCL_LIBRARY, then
// "libnccl.so.2" on the loader's search path. The host emulator's tests point
// $SEQREC_NCCL_LIBRARY at tests/emu/nccl_emu.cpp, which implements the same calls over MPI.
//
// Host code only (no kernels): nccl.h is a C header.
#pragma once

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>

#include <array>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "seqrec/core/error.hpp"

namespace seqrec::nccl {

/// A group's identifier: made by one rank (Group::new_id), sent to the others by the host's
/// communicator, and passed to every rank's Group. Its size is NCCL's ncclUniqueId's.
using Id = std::array<char, NCCL_UNIQUE_ID_BYTES>;

/// The NCCL functions this process uses, from the library it loaded.
struct Library {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclRedOpCreatePreMulSum) red_op_create_pre_mul_sum = nullptr;
  decltype(&ncclRedOpDestroy) red_op_destroy = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  std::string path;  // as given to dlopen
  int version = 0;   // NCCL_VERSION code, e.g. 22805 for 2.28.5
};

namespace detail {
template <typename F>
void bind(void* handle, const std::string& path, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(handle, name));
  if (f == nullptr)
    throw Error("NCCL library " + path + " has no " + name +
                " (PreMulSum reductions need NCCL 2.11 or later)");
}
}  // namespace detail

/// The loaded library (loaded once per process; throws if it cannot be).
inline const Library& library() {
  static const Library lib = [] {
    Library l;
    const char* env = std::getenv("SEQREC_NCCL_LIBRARY");
    l.path = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
    void* h = dlopen(l.path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* why = dlerror();
      throw Error("multi-GPU training needs NCCL: cannot load " + l.path + " (" +
                  (why ? why : "dlopen failed") +
                  "); install NCCL or set SEQREC_NCCL_LIBRARY to its libnccl.so.2");
    }
    detail::bind(h, l.path, "ncclGetVersion", l.get_version);
    detail::bind(h, l.path, "ncclGetUniqueId", l.get_unique_id);
    detail::bind(h, l.path, "ncclCommInitRank", l.comm_init_rank);
    detail::bind(h, l.path, "ncclCommDestroy", l.comm_destroy);
    detail::bind(h, l.path, "ncclAllReduce", l.all_reduce);
    detail::bind(h, l.path, "ncclRedOpCreatePreMulSum", l.red_op_create_pre_mul_sum);
    detail::bind(h, l.path, "ncclRedOpDestroy", l.red_op_destroy);
    detail::bind(h, l.path, "ncclGroupStart", l.group_start);
    detail::bind(h, l.path, "ncclGroupEnd", l.group_end);
    detail::bind(h, l.path, "ncclGetErrorString", l.get_error_string);
    if (l.get_version(&l.version) != ncclSuccess) l.version = 0;
    return l;
  }();
  return lib;
}

/// Throws naming the call and NCCL's reason unless r is ncclSuccess.
inline void check(ncclResult_t r, const char* call) {
  if (r == ncclSuccess) return;
  const char* why = library().get_error_string ? library().get_error_string(r) : "?";
  throw Error(std::string("NCCL: ") + call + " failed: " + why + " (" + std::to_string(int(r)) +
              ")");
}

/// A contiguous range [begin, end) of floats in a buffer.
struct Range {
  std::size_t begin = 0, end = 0;
};

/// One rank of a group of GPUs (an NCCL communicator on this process's current device).
class Group {
 public:
  /// A fresh identifier, on one rank only (NCCL's bootstrap address lives in it).
  static Id new_id() {
    ncclUniqueId u{};
    check(library().get_unique_id(&u), "ncclGetUniqueId");
    Id id{};
    std::memcpy(id.data(), u.internal, id.size());
    return id;
  }

  /// Joins the group `id` as rank `rank` of `size` on CUDA device `device`; every rank must call
  /// it (the call waits for all of them).
  Group(const Id& id, int rank, int size, int device) : rank_(rank), size_(size) {
    SEQREC_CHECK(size >= 1 && rank >= 0 && rank < size, "nccl::Group: rank outside the group");
    const cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
      throw Error("nccl::Group: cudaSetDevice(" + std::to_string(device) +
                  "): " + cudaGetErrorString(e));
    ncclUniqueId u{};
    std::memcpy(u.internal, id.data(), id.size());
    check(library().comm_init_rank(&comm_, size, u, rank), "ncclCommInitRank");
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  ~Group() {
    if (comm_ != nullptr) library().comm_destroy(comm_);
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  /// For every range of `data` (device floats), in place: the sum over the group's ranks of
  /// weight_r · data_r, where weight_r is the `weight` each rank passes (NCCL's PreMulSum: the
  /// scaling happens inside the reduction, no pass of its own). Enqueued on `stream`, the
  /// ranges in one NCCL group (one launch).
  void weighted_sum(float* data, std::span<const Range> ranges, float weight, cudaStream_t stream) {
    const Library& lib = library();
    // The PreMulSum operator, destroyed however this returns (allowed as soon as the last call
    // that uses it has returned).
    struct Op {
      ncclRedOp_t op = ncclSum;
      ncclComm_t comm = nullptr;
      ~Op() {
        if (comm != nullptr) library().red_op_destroy(op, comm);
      }
    } op;
    if (weight != 1.0f) {
      check(lib.red_op_create_pre_mul_sum(&op.op, &weight, ncclFloat32, ncclScalarHostImmediate,
                                          comm_),
            "ncclRedOpCreatePreMulSum");
      op.comm = comm_;
    }
    check(lib.group_start(), "ncclGroupStart");
    for (const Range& g : ranges) {
      if (g.end <= g.begin) continue;
      const ncclResult_t r = lib.all_reduce(data + g.begin, data + g.begin, g.end - g.begin,
                                            ncclFloat32, op.op, comm_, stream);
      if (r != ncclSuccess) {
        lib.group_end();  // closes the group; the allreduce's error is the one to report
        check(r, "ncclAllReduce");
      }
    }
    check(lib.group_end(), "ncclGroupEnd");
  }

 private:
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
};

}  // namespace seqrec::nccl
