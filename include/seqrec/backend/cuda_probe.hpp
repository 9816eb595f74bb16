// Whether a CUDA device answers, for host-compiled code (g++) that links the CUDA runtime but
// includes no CUDA kernels: the runtime API header is plain C.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace seqrec::cuda_probe {

/// Number of CUDA devices, or 0 when cudaGetDeviceCount fails (no driver, driver too old:
/// cudaErrorInsufficientDriver = 35). When `why` is given it receives the reason for a 0.
inline int device_count(std::string* why = nullptr) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why != nullptr) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    (void)cudaGetLastError();
    return 0;
  }
  if (n == 0 && why != nullptr) *why = "0 devices";
  return n;
}

}  // namespace seqrec::cuda_probe
