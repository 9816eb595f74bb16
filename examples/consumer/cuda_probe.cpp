// Links seqrec::cuda (cudart, cuBLASLt, cuBLAS) from a host-only translation unit and opens the
// CUDA backend. Exits 0 with a note when no GPU answers (a build machine), non-zero when a GPU is
// present and the backend fails.
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <exception>

#include <seqrec/backend/cuda.cuh>

int main() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  int cublas_major = 0, cublas_minor = 0;
  (void)cublasGetProperty(MAJOR_VERSION, &cublas_major);
  (void)cublasGetProperty(MINOR_VERSION, &cublas_minor);
  std::printf("seqrec cuda probe: cuBLASLt %zu, cuBLAS %d.%d, ", cublasLtGetVersion(), cublas_major,
              cublas_minor);
  if (e != cudaSuccess || count == 0) {
    std::printf("no usable GPU (%s): link check only\n",
                e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
    return 0;
  }
  try {
    seqrec::cuda::Backend be(0);
    std::printf("backend open on device 0 with %d SMs\n", be.num_sms());
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "seqrec cuda probe: FAILED: %s\n", ex.what());
    return 1;
  }
}
