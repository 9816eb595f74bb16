// The host emulator's own checks: what the CUDA tests rely on it to do. Built like every emulated
// test (rewritten by rewrite.py, the emulator header force-included). Exit status 0 iff all pass.
//   - indices over 3-D grids and blocks; __syncthreads between shared-memory phases; warp
//     shuffles (xor butterflies of float and double) and __syncwarp;
//   - the launch checks a GPU makes (block size, dynamic shared memory with and without
//     cudaFuncSetAttribute) surfacing through cudaGetLastError;
//   - fresh device and dynamic shared memory reading as 0xFF bytes;
//   - kernels a GPU would hang on or corrupt (a divergent barrier, a full-mask shuffle after
//     lanes exited, __trap) stopping the process with a message naming the problem (each run in
//     a child process).
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "seqrec/backend/cuda.cuh"

namespace {

int g_fail = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  if (!ok) ++g_fail;
}

__global__ void index_kernel(unsigned* out) {
  const unsigned bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  out[bx * threads + tx] = bx * 1000 + tx;
}

/// Block sum through shared memory in two phases, then every thread reads the total: wrong
/// unless __syncthreads orders the phases.
__global__ void block_sum_kernel(const float* x, float* out) {
  __shared__ float part[256];
  __shared__ float total;
  part[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned i = 0; i < blockDim.x; ++i) s += part[i];
    total = s;
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

/// Reads a neighbour's shared-memory write with no barrier between: a race.
__global__ void racy_kernel(unsigned* out) {
  __shared__ unsigned part[64];
  part[threadIdx.x] = threadIdx.x + 1;
  out[threadIdx.x] = part[(threadIdx.x + 1) % blockDim.x];
}

__global__ void warp_sum_kernel(const float* x, float* out, double* out_d) {
  const float v = x[threadIdx.x];
  const float s = seqrec::cuda::warp_sum(v);
  const double sd = seqrec::cuda::warp_sum(static_cast<double>(v));
  __syncwarp();
  out[threadIdx.x] = s;
  out_d[threadIdx.x] = sd;
}

__global__ void read_dynamic_kernel(unsigned* out) {
  extern __shared__ unsigned dyn[];
  out[threadIdx.x] = dyn[threadIdx.x];
}

/// Half of warp 0 at a (full-mask) __syncwarp, the other half at __syncthreads.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = seqrec::cuda::warp_sum(1.f);
}

__global__ void trap_kernel() { __trap(); }

/// Runs f in a child process and returns what it wrote to stderr; `aborted` says whether it died
/// of SIGABRT.
template <typename F>
std::string in_child(F&& f, bool* aborted) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    f();
    std::_Exit(0);
  }
  close(fds[1]);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;)
    err.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  *aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  return err;
}

template <typename T>
std::vector<T> download(const T* d, std::size_t n) {
  std::vector<T> h(n);
  SEQREC_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace

int main() {
  {
    const dim3 grid(3, 2, 2), block(4, 3, 2);
    const std::size_t n = 12 * 24;
    unsigned* d = nullptr;
    SEQREC_CUDA_CHECK(cudaMalloc(&d, n * sizeof(unsigned)));
    index_kernel<<<grid, block>>>(d);
    SEQREC_CUDA_CHECK(cudaGetLastError());
    const auto h = download(d, n);
    bool ok = true;
    for (unsigned b = 0; b < 12; ++b)
      for (unsigned t = 0; t < 24; ++t) ok = ok && h[b * 24 + t] == b * 1000 + t;
    expect(ok, "3-D grid and block indices");
    SEQREC_CUDA_CHECK(cudaFree(d));
  }
  {
    const int blocks = 3, threads = 256;
    std::vector<float> x(blocks * threads);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
    float *dx = nullptr, *dout = nullptr;
    SEQREC_CUDA_CHECK(cudaMalloc(&dx, x.size() * sizeof(float)));
    SEQREC_CUDA_CHECK(cudaMalloc(&dout, x.size() * sizeof(float)));
    SEQREC_CUDA_CHECK(cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    block_sum_kernel<<<blocks, threads>>>(dx, dout);
    SEQREC_CUDA_CHECK(cudaGetLastError());
    const auto h = download(dout, x.size());
    bool ok = true;
    for (int b = 0; b < blocks; ++b) {
      float s = 0;
      for (int t = 0; t < threads; ++t) s += x[static_cast<std::size_t>(b * threads + t)];
      for (int t = 0; t < threads; ++t)
        ok = ok && h[static_cast<std::size_t>(b * threads + t)] == s;
    }
    expect(ok, "__syncthreads orders shared-memory phases (block sums)");
    SEQREC_CUDA_CHECK(cudaFree(dx));
    SEQREC_CUDA_CHECK(cudaFree(dout));
  }
  {
    // Either schedule order runs some thread's read before its neighbour's write.
    unsigned* d = nullptr;
    SEQREC_CUDA_CHECK(cudaMalloc(&d, 64 * sizeof(unsigned)));
    racy_kernel<<<1, 64>>>(d);
    SEQREC_CUDA_CHECK(cudaGetLastError());
    const auto h = download(d, 64);
    bool all_right = true;
    for (unsigned t = 0; t < 64; ++t) all_right = all_right && h[t] == (t + 1) % 64 + 1;
    expect(!all_right, "a missing barrier changes the result (race made visible)");
    SEQREC_CUDA_CHECK(cudaFree(d));
  }
  {
    std::vector<float> x(64);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) * 0.5f;
    float *dx = nullptr, *dout = nullptr;
    double* dd = nullptr;
    SEQREC_CUDA_CHECK(cudaMalloc(&dx, 64 * sizeof(float)));
    SEQREC_CUDA_CHECK(cudaMalloc(&dout, 64 * sizeof(float)));
    SEQREC_CUDA_CHECK(cudaMalloc(&dd, 64 * sizeof(double)));
    SEQREC_CUDA_CHECK(cudaMemcpy(dx, x.data(), 64 * sizeof(float), cudaMemcpyHostToDevice));
    warp_sum_kernel<<<1, 64>>>(dx, dout, dd);
    SEQREC_CUDA_CHECK(cudaGetLastError());
    const auto h = download(dout, 64);
    const auto hd = download(dd, 64);
    bool ok = true;
    for (int w = 0; w < 2; ++w) {
      double s = 0;
      for (int l = 0; l < 32; ++l) s += x[static_cast<std::size_t>(w * 32 + l)];
      for (int l = 0; l < 32; ++l)
        ok = ok && h[static_cast<std::size_t>(w * 32 + l)] == static_cast<float>(s) &&
             hd[static_cast<std::size_t>(w * 32 + l)] == s;
    }
    expect(ok, "warp_sum by __shfl_xor_sync (float and double), per warp, every lane");
    SEQREC_CUDA_CHECK(cudaFree(dx));
    SEQREC_CUDA_CHECK(cudaFree(dout));
    SEQREC_CUDA_CHECK(cudaFree(dd));
  }
  {
    unsigned* d = nullptr;
    SEQREC_CUDA_CHECK(cudaMalloc(&d, 32 * sizeof(unsigned)));
    const auto fresh = download(d, 32);
    bool ok = true;
    for (unsigned v : fresh) ok = ok && v == 0xffffffffu;
    expect(ok, "fresh device memory reads as 0xFF bytes");
    read_dynamic_kernel<<<1, 32, 32 * sizeof(unsigned)>>>(d);
    SEQREC_CUDA_CHECK(cudaGetLastError());
    const auto dyn = download(d, 32);
    ok = true;
    for (unsigned v : dyn) ok = ok && v == 0xffffffffu;
    expect(ok, "fresh dynamic shared memory reads as 0xFF bytes");

    read_dynamic_kernel<<<1, 1025>>>(d);
    expect(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block refused");
    expect(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
    const std::size_t big = 64 << 10;
    read_dynamic_kernel<<<1, 32, big>>>(d);
    expect(cudaGetLastError() == cudaErrorInvalidValue,
           "64 KiB of dynamic shared memory refused without cudaFuncSetAttribute");
    const void* kernel = reinterpret_cast<const void*>(&read_dynamic_kernel);
    SEQREC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(big)));
    read_dynamic_kernel<<<1, 32, big>>>(d);
    expect(cudaGetLastError() == cudaSuccess, "64 KiB accepted after cudaFuncSetAttribute");
    expect(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 << 10) ==
               cudaErrorInvalidValue,
           "an opt-in above the device's limit refused");
    (void)cudaGetLastError();
    SEQREC_CUDA_CHECK(cudaFree(d));
  }
  {
    float* d = nullptr;
    SEQREC_CUDA_CHECK(cudaMalloc(&d, 64 * sizeof(float)));
    bool aborted = false;
    std::string err = in_child([&] { divergent_barrier_kernel<<<1, 64>>>(d); }, &aborted);
    expect(aborted && err.find("divergent barrier") != std::string::npos,
           "a divergent barrier stops the process: " + err.substr(0, err.find('\n')));
    err = in_child([&] { shuffle_after_exit_kernel<<<1, 32>>>(d); }, &aborted);
    expect(aborted && err.find("lane 5 of this warp has exited") != std::string::npos,
           "a full-mask shuffle after a lane exited stops the process: " +
               err.substr(0, err.find('\n')));
    err = in_child([&] { trap_kernel<<<2, 32>>>(); }, &aborted);
    expect(aborted && err.find("__trap()") != std::string::npos &&
               err.find("block (") != std::string::npos &&
               err.find("thread (") != std::string::npos,
           "__trap stops the process naming block and thread: " + err.substr(0, err.find('\n')));
    SEQREC_CUDA_CHECK(cudaFree(d));
  }
  std::printf("%s\n", g_fail == 0 ? "all passed" : "FAILED");
  return g_fail == 0 ? 0 : 1;
}
