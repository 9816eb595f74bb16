// The CUDA backend: one stream (and a side stream for a Fork), one cuBLASLt handle with a 32 MiB
// workspace per stream, and a small caching device allocator, so that ops never call cudaMalloc
// in a training step. Like cpu::Backend it
// owns no maths beyond a thin row-major GEMM wrapper around its cuBLASLt handle.
//
// This header is host-compilable (runtime and cuBLASLt API only), so host code may open a Backend;
// the fp32/bf16 GEMM entry point gemm_rm, which launches a rounding kernel, is in gemm_cuda.cuh.
//
// Precision. In the default fp32 mode every GEMM is fp32 in, fp32 out, fp32 compute (no TF32), so
// results stay within fp32 rounding of the CPU ops. In bf16 mode (set_bf16(true)) GEMMs take bf16
// operands and multiply on the tensor cores with fp32 accumulation and an fp32 result. Operands
// marked as weights are rounded once per weight version and cached: the model calls
// weights_changed() after every optimiser step or upload, which drops the cache. Activations that
// only GEMMs read are written in bf16 by the kernels that produce them (set_bf16_activations),
// and so are the GEMM outputs that only widening kernels read (set_bf16_gemm_outputs: qkv, the
// MLP's pre-activation and d(act), d(ctx), the branches; attention's d(qkv); the loss's logits);
// the rest — the residual stream, the other GEMM outputs, gradients, master weights, optimiser
// state — stays fp32.
//
// Everything runs on the backend's single stream, which is what makes the allocator simple: a
// buffer freed after a kernel was queued on the stream may be handed to the next request at once,
// because every later use is queued behind that kernel on the same stream. The one exception is a
// Fork (fork to join, two streams at once): the allocator then holds back every freed block
// until the join. Blocks are cached in
// free lists keyed by size bucket (powers of two up to 64 MiB, 2 MiB multiples above) and given
// back to the driver when the backend is destroyed or when cudaMalloc runs out of memory.
//
// Kernels in the op headers are `static __global__`: this is a header-only library compiled
// without -rdc, and a non-static kernel defined in a header is multiply defined at link time as
// soon as two .cu files include it; static gives each translation unit its own copy.
//
// Every CUDA and cuBLAS call is checked: SEQREC_CUDA_CHECK / SEQREC_CUBLAS_CHECK throw
// seqrec::Error naming the expression, file:line and the library's error string.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "seqrec/backend/cuda_probe.hpp"
#include "seqrec/core/error.hpp"

namespace seqrec::cuda::detail {

[[noreturn]] inline void cuda_failed(const char* expr, const char* file, int line, cudaError_t e) {
  throw ::seqrec::Error(std::string(file) + ":" + std::to_string(line) + ": CUDA call '" + expr +
                        "' failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

[[noreturn]] inline void cublas_failed(const char* expr, const char* file, int line,
                                       cublasStatus_t s) {
  throw ::seqrec::Error(std::string(file) + ":" + std::to_string(line) + ": cuBLAS call '" + expr +
                        "' failed: status " + std::to_string(static_cast<int>(s)) + " (" +
                        cublasLtGetStatusString(s) + ")");
}

}  // namespace seqrec::cuda::detail

/// Throws seqrec::Error when a CUDA runtime call does not return cudaSuccess.
#define SEQREC_CUDA_CHECK(expr)                                                  \
  do {                                                                           \
    const cudaError_t seqrec_e_ = (expr);                                        \
    if (seqrec_e_ != cudaSuccess)                                                \
      ::seqrec::cuda::detail::cuda_failed(#expr, __FILE__, __LINE__, seqrec_e_); \
  } while (0)

/// Throws seqrec::Error when a cuBLAS / cuBLASLt call does not return CUBLAS_STATUS_SUCCESS.
#define SEQREC_CUBLAS_CHECK(expr)                                                  \
  do {                                                                             \
    const cublasStatus_t seqrec_s_ = (expr);                                       \
    if (seqrec_s_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::seqrec::cuda::detail::cublas_failed(#expr, __FILE__, __LINE__, seqrec_s_); \
  } while (0)

/// Checks the last kernel launch (configuration errors surface here, not at the <<<>>>).
#define SEQREC_CUDA_CHECK_LAUNCH() SEQREC_CUDA_CHECK(cudaGetLastError())

namespace seqrec::cuda {

/// Stores an fp32 value in an activation buffer of element type float or bf16 (round to nearest
/// even, exactly as cast_to_bf16 rounds): kernels that write a tensor whose only readers are
/// GEMMs write it in the GEMM's operand type directly (bf16 activations).
__host__ __device__ inline void store_as(float* p, float v) { *p = v; }
__host__ __device__ inline void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
/// Reads an element of such a buffer as fp32 (a bf16 value widens exactly).
__host__ __device__ inline float load_as(const float* p) { return *p; }
__host__ __device__ inline float load_as(const __nv_bfloat16* p) { return __bfloat162float(*p); }

/// Writes v to *p, or adds it (*p = *p + v, rounded to nearest, never contracted) when Accumulate:
/// a backward kernel that adds its result into a gradient buffer gives the bits of writing it and
/// then add_into.
/// (This and the warp reductions below are nvcc only: device intrinsics, and this header is also
/// compiled by host compilers.)
#if defined(__CUDACC__) || defined(SEQREC_CUDA_EMULATION)
template <bool Accumulate>
__device__ inline void write_or_add(float* p, float v) {
  if constexpr (Accumulate)
    *p = __fadd_rn(*p, v);
  else
    *p = v;
}

/// Sum over the 32 lanes of a full warp by xor butterfly: a fixed order, and every lane ends with
/// the same bits. T is float or double.
template <typename T>
__device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
/// Maximum over the 32 lanes of a full warp (xor butterfly; every lane gets it).
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// VW consecutive floats held in registers; VW = 4 loads and stores them as one float4 (the
/// address must then be 16-byte aligned).
template <int VW>
struct FVec {
  float v[VW];
};

template <int VW>
__device__ __forceinline__ FVec<VW> vec_load(const float* p) {
  FVec<VW> r;
  if constexpr (VW == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    r.v[0] = t.x;
    r.v[1] = t.y;
    r.v[2] = t.z;
    r.v[3] = t.w;
  } else {
#pragma unroll
    for (int e = 0; e < VW; ++e) r.v[e] = p[e];
  }
  return r;
}

template <int VW>
__device__ __forceinline__ void vec_store(float* p, const FVec<VW>& x) {
  if constexpr (VW == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
  } else {
#pragma unroll
    for (int e = 0; e < VW; ++e) p[e] = x.v[e];
  }
}
#endif

/// Number of CUDA devices, or 0 when none answers (cuda_probe::device_count, which host-only code
/// uses directly); `why` receives the reason for a 0.
inline int cuda_device_available(std::string* why = nullptr) {
  return cuda_probe::device_count(why);
}

/// Size-bucketed cache of device blocks. Not thread-safe; single stream but for hold() (see the
/// file comment).
class CachingAllocator {
 public:
  CachingAllocator() = default;
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  ~CachingAllocator() { release_cached(); }

  /// A block of at least `bytes` bytes (256-byte aligned, as cudaMalloc's are).
  void* allocate(std::size_t bytes) {
    const std::size_t b = bucket(bytes);
    // The smallest cached block that fits and wastes little (fits()): packed training steps
    // change their row counts every batch, so big requests rarely meet their exact bucket again.
    for (auto it = free_.lower_bound(b); it != free_.end() && fits(it->first, b); ++it) {
      if (it->second.empty()) continue;
      void* p = it->second.back();
      it->second.pop_back();
      cached_bytes_ -= it->first;
      live_.emplace(p, it->first);
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, b);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached();
      e = cudaMalloc(&p, b);
    }
    if (e != cudaSuccess) {
      throw ::seqrec::Error("cudaMalloc of " + std::to_string(b) + " bytes failed: " +
                            cudaGetErrorString(e) + " (" + std::to_string(cached_bytes_) +
                            " bytes cached, " + std::to_string(live_bytes()) + " live)");
    }
    live_.emplace(p, b);
    return p;
  }

  /// Returns a block to its free list; the memory stays with the process. While held (hold()),
  /// the block is kept back from reuse until unhold() instead.
  void deallocate(void* p) noexcept {
    if (p == nullptr) return;
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours: nothing sensible to do in a noexcept path
    if (held_on_) {
      try {
        held_.push_back(p);
      } catch (...) {  // no memory for the list: the block stays live, never reused (safe)
      }
      return;
    }
    free_[it->second].push_back(p);
    cached_bytes_ += it->second;
    live_.erase(it);
  }

  /// Frees every cached (not live) block. Synchronises the device first so that no queued kernel
  /// still uses a block being freed.
  void release_cached() noexcept {
    if (cached_bytes_ == 0) return;
    (void)cudaDeviceSynchronize();
    for (auto& [b, list] : free_) {
      for (void* p : list) (void)cudaFree(p);
      list.clear();
    }
    cached_bytes_ = 0;
  }

  /// Between hold() and unhold() no freed block is handed out again: two streams run at once then
  /// (cuda::Fork), and a block one of them freed may still be read by work the other queued.
  /// unhold(), once the streams have joined, returns the held blocks to the cache.
  void hold() noexcept { held_on_ = true; }
  void unhold() noexcept {
    held_on_ = false;
    for (void* p : held_) deallocate(p);
    held_.clear();
  }
  bool holding() const noexcept { return held_on_; }

  std::size_t cached_bytes() const noexcept { return cached_bytes_; }
  std::size_t live_bytes() const noexcept {
    std::size_t s = 0;
    for (const auto& [p, b] : live_) s += b;
    return s;
  }

  /// Whether a cached block of `block` bytes may serve a request whose bucket is b (block >= b):
  /// its own bucket, or above 64 MiB a block at most 1/8 larger (multiples of 2 MiB there).
  /// Exact under the host emulator, like bucket().
  static bool fits(std::size_t block, std::size_t b) noexcept {
#if defined(SEQREC_CUDA_EMULATION)
    return block == b;
#endif
    return block == b || (b > (std::size_t{64} << 20) && block - b <= b / 8);
  }

  /// The bucket a request of `bytes` falls in: powers of two (at least 512 B) up to 64 MiB, then
  /// multiples of 2 MiB. Under the host emulator (tests/emu), the exact size: a kernel that
  /// overruns its buffer then overruns the host allocation, where AddressSanitizer sees it.
  static std::size_t bucket(std::size_t bytes) noexcept {
#if defined(SEQREC_CUDA_EMULATION)
    return bytes == 0 ? 1 : bytes;
#endif
    constexpr std::size_t kBig = std::size_t{64} << 20, kStep = std::size_t{2} << 20;
    if (bytes <= 512) return 512;
    if (bytes > kBig) return (bytes + kStep - 1) / kStep * kStep;
    std::size_t b = 512;
    while (b < bytes) b <<= 1;
    return b;
  }

 private:
  std::map<std::size_t, std::vector<void*>> free_;
  std::map<void*, std::size_t> live_;
  std::size_t cached_bytes_ = 0;
  bool held_on_ = false;
  std::vector<void*> held_;
};

/// Owning handle to `count` elements of T in device memory from a CachingAllocator. Move-only;
/// returns its block to the cache when destroyed. Contents are uninitialised.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(CachingAllocator& a, std::size_t count) : alloc_(&a), count_(count) {
    if (count > 0) ptr_ = static_cast<T*>(a.allocate(count * sizeof(T)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : alloc_(std::exchange(o.alloc_, nullptr)),
        ptr_(std::exchange(o.ptr_, nullptr)),
        count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      alloc_ = std::exchange(o.alloc_, nullptr);
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  void reset() noexcept {
    if (alloc_ != nullptr && ptr_ != nullptr) alloc_->deallocate(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* data() noexcept { return ptr_; }
  const T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }

 private:
  CachingAllocator* alloc_ = nullptr;
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

/// Per-phase GPU time on one stream, for benchmarks (gpu_train_bench --profile): each range
/// between begin(name) and end() records a pair of events on the stream; collect() waits for
/// them and adds each range's elapsed time to its name's total. Ranges must not nest (the totals
/// are then disjoint and sum to the stream's busy time inside ranges). Event pairs are pooled.
///
/// GEMMs are timed on their own as well: gemm_lt brackets each cuBLASLt call with gemm_begin() /
/// gemm_end() while profiling is on (inside a range or not), and collect() adds each call to the
/// total of its (phase, class): the range open around it and the GEMM's problem class. So a
/// report can say how much of a phase, and of the step, is GEMM time, and at what rate.
class Profiler {
 public:
  explicit Profiler(cudaStream_t stream) : stream_(stream) {}
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;
  ~Profiler() {
    for (cudaEvent_t e : pool_) (void)cudaEventDestroy(e);
  }

  void begin(const char* name) {
    SEQREC_CHECK(open_ < 0, std::string("Profiler: range '") + name + "' opened inside '" +
                                ranges_[static_cast<std::size_t>(open_)].name + "'");
    ranges_.push_back(Range{name, event(), event()});
    open_ = static_cast<int>(ranges_.size()) - 1;
    SEQREC_CUDA_CHECK(cudaEventRecord(ranges_.back().start, stream_));
  }
  /// Closes the open range (no-op without one). noexcept for scope guards: a failed record is
  /// reported by the next collect().
  void end() noexcept {
    if (open_ < 0) return;
    const cudaError_t e = cudaEventRecord(ranges_[static_cast<std::size_t>(open_)].stop, stream_);
    if (e != cudaSuccess && record_error_ == cudaSuccess) record_error_ = e;
    open_ = -1;
  }
  /// Synchronises the stream, adds the recorded ranges to the totals and recycles their events.
  void collect() {
    SEQREC_CHECK(open_ < 0 && !gemm_open_, "Profiler: collect() inside an open range");
    SEQREC_CUDA_CHECK(std::exchange(record_error_, cudaSuccess));
    SEQREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (const Range& r : ranges_) {
      float ms = 0.f;
      SEQREC_CUDA_CHECK(cudaEventElapsedTime(&ms, r.start, r.stop));
      auto it = std::find_if(totals_.begin(), totals_.end(),
                             [&](const auto& t) { return t.first == r.name; });
      if (it == totals_.end())
        totals_.emplace_back(r.name, double(ms));
      else
        it->second += double(ms);
      free_.push_back(r.start);
      free_.push_back(r.stop);
    }
    ranges_.clear();
    for (const GemmRange& g : gemms_) {
      float ms = 0.f;
      SEQREC_CUDA_CHECK(cudaEventSynchronize(g.stop));  // a side stream's, too
      SEQREC_CUDA_CHECK(cudaEventElapsedTime(&ms, g.start, g.stop));
      auto it = std::find_if(gemm_totals_.begin(), gemm_totals_.end(), [&](const GemmTotal& t) {
        return t.phase == g.phase && t.label == g.label;
      });
      if (it == gemm_totals_.end()) {
        gemm_totals_.push_back(GemmTotal{g.phase, g.label});
        it = gemm_totals_.end() - 1;
      }
      it->calls += 1;
      it->ms += double(ms);
      it->flops += 2.0 * double(g.m) * double(g.n) * double(g.k);
      it->m += double(g.m);
      it->n += double(g.n);
      it->k += double(g.k);
      free_.push_back(g.start);
      free_.push_back(g.stop);
    }
    gemms_.clear();
  }
  /// (name, total ms) in order of first appearance.
  const std::vector<std::pair<std::string, double>>& totals() const noexcept { return totals_; }
  /// Whether a range is open (begin() without its end()).
  bool in_range() const noexcept { return open_ >= 0; }
  /// Clears the phase and GEMM totals.
  void reset_totals() {
    totals_.clear();
    gemm_totals_.clear();
  }

  /// One GEMM class's total within one phase: `phase` is the range open around the calls (empty:
  /// none), `label` the class as gemm_lt names it (operand and result types, transposes, bias
  /// epilogue, the class's rounded sizes); m, n, k sum the calls' exact sizes (divide by calls
  /// for their mean) and flops their 2·M·N·K.
  struct GemmTotal {
    std::string phase, label;
    std::int64_t calls = 0;
    double ms = 0, flops = 0, m = 0, n = 0, k = 0;
  };
  /// Starts timing one GEMM of class `label` and exact size (M, N, K): records its start event.
  /// gemm_end() must follow (gemm_lt's guard calls it on every path).
  /// `on`: the stream the GEMM runs on (the backend's side stream for an overlapped one; null:
  /// the profiler's).
  void gemm_begin(std::string label, std::int64_t M, std::int64_t N, std::int64_t K,
                  cudaStream_t on = nullptr) {
    SEQREC_CHECK(!gemm_open_, "Profiler: gemm_begin() while a GEMM is being timed");
    std::string phase = open_ >= 0 ? ranges_[static_cast<std::size_t>(open_)].name : "";
    gemms_.push_back(GemmRange{std::move(phase), std::move(label), M, N, K, event(), event(),
                               on != nullptr ? on : stream_});
    gemm_open_ = true;
    SEQREC_CUDA_CHECK(cudaEventRecord(gemms_.back().start, gemms_.back().stream));
  }
  /// Records the stop event of the GEMM gemm_begin() started (no-op without one); a failed record
  /// is reported by the next collect().
  void gemm_end() noexcept {
    if (!gemm_open_) return;
    const cudaError_t e = cudaEventRecord(gemms_.back().stop, gemms_.back().stream);
    if (e != cudaSuccess && record_error_ == cudaSuccess) record_error_ = e;
    gemm_open_ = false;
  }
  /// The GEMM totals, in order of first appearance.
  const std::vector<GemmTotal>& gemm_totals() const noexcept { return gemm_totals_; }

 private:
  struct Range {
    std::string name;
    cudaEvent_t start, stop;
  };
  cudaEvent_t event() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    SEQREC_CUDA_CHECK(cudaEventCreate(&e));
    pool_.push_back(e);
    return e;
  }
  struct GemmRange {
    std::string phase, label;
    std::int64_t m, n, k;
    cudaEvent_t start, stop;
    cudaStream_t stream;  // where its events are recorded
  };
  cudaStream_t stream_;
  std::vector<cudaEvent_t> pool_, free_;
  std::vector<Range> ranges_;
  std::vector<GemmRange> gemms_;
  int open_ = -1;
  bool gemm_open_ = false;
  cudaError_t record_error_ = cudaSuccess;
  std::vector<std::pair<std::string, double>> totals_;
  std::vector<GemmTotal> gemm_totals_;
};

/// The CUDA backend: device, stream, cuBLASLt handle + workspace, caching allocator.
class Backend {
 public:
  using Scalar = float;
  static constexpr const char* name = "cuda";
  static constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

  explicit Backend(int device = 0) : device_(device) {
    SEQREC_CUDA_CHECK(cudaSetDevice(device_));
    SEQREC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    SEQREC_CUBLAS_CHECK(cublasLtCreate(&lt_));
    workspace_ = DeviceBuffer<std::byte>(alloc_, kWorkspaceBytes);
    SEQREC_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
    SEQREC_CUDA_CHECK(
        cudaDeviceGetAttribute(&max_smem_optin_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
  }
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
  ~Backend() {
    (void)cudaStreamSynchronize(stream_);
    if (side_ != nullptr) (void)cudaStreamSynchronize(side_);
    alloc_.unhold();
    workspace_.reset();
    side_workspace_.reset();
    alloc_.release_cached();
    if (fork_event_ != nullptr) (void)cudaEventDestroy(fork_event_);
    if (join_event_ != nullptr) (void)cudaEventDestroy(join_event_);
    if (lt_ != nullptr) (void)cublasLtDestroy(lt_);
    if (side_ != nullptr) (void)cudaStreamDestroy(side_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  /// The stream work is queued on: the backend's own, or its side stream inside Fork::on_side
  /// (below).
  cudaStream_t stream() const noexcept { return on_side_ ? side_ : stream_; }
  cublasLtHandle_t lt() const noexcept { return lt_; }
  /// cuBLASLt's workspace for the current stream (each stream has its own: two GEMMs may run at
  /// once).
  void* workspace() noexcept { return on_side_ ? side_workspace_.data() : workspace_.data(); }
  CachingAllocator& allocator() noexcept { return alloc_; }
  int device() const noexcept { return device_; }
  int num_sms() const noexcept { return num_sms_; }
  /// Largest dynamic shared memory a block may opt in to (227 KiB on H100).
  int max_smem_optin() const noexcept { return max_smem_optin_; }

  template <typename T>
  DeviceBuffer<T> buffer(std::size_t count) {
    return DeviceBuffer<T>(alloc_, count);
  }
  void synchronize() {
    SEQREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (side_ != nullptr) SEQREC_CUDA_CHECK(cudaStreamSynchronize(side_));
  }

  /// Whether models run each linear layer's weight-gradient GEMM on the side stream, at the same
  /// time as its input-gradient GEMM on the main stream (off by default; an experiment: the two
  /// GEMMs fill each other's last partial wave of thread blocks, which a step of ~9k rows has
  /// many of). The same bits either way: each GEMM computes what it computed alone.
  void set_overlap_dw(bool on) noexcept { overlap_dw_ = on; }
  bool overlap_dw() const noexcept { return overlap_dw_; }
  /// How many Fork::on_side calls have run (tests: the overlap took place).
  std::size_t side_runs() const noexcept { return side_runs_; }
  /// bf16 GEMM operands (fp32 accumulation and results) instead of fp32 throughout.
  void set_bf16(bool on) {
    bf16_ = on;
    weights_changed();
  }
  bool bf16() const noexcept { return bf16_; }
  /// In bf16 mode, whether models keep the activations only GEMMs read (norm outputs, attention
  /// context, MLP activations) in bf16, written so by the kernels that make them (default), or in
  /// fp32 rounded by gemm_rm at every use. Both give the same bits (the rounding is the same);
  /// the bf16 form skips the rounding passes and halves those buffers. Tests compare the two.
  void set_bf16_activations(bool on) noexcept { bf16_activations_ = on; }
  bool bf16_activations() const noexcept { return bf16_activations_; }
  /// With bf16 activations, whether models also have the GEMMs whose outputs only kernels that
  /// widen them read write those outputs in bf16 (default): the attention's qkv, the MLP's
  /// pre-activation and d(act), d(ctx), the input gradients that norms' backward reads (qkv
  /// linear, MLP), and the branch outputs that the residual adds read (out linear, the MLP's
  /// fc2), rounded once in cuBLASLt's epilogue (gemm_rm_bf16_out); attention then writes
  /// d(qkv) in bf16 too. In bf16 mode the loss's logits GEMM (cross_entropy_cuda.cuh) follows
  /// this switch alone, with or without bf16 activations: bf16 logits, the softmax's gradient over
  /// them in place. Unlike the storage switch above this changes the numbers (nine more bf16
  /// roundings per block and one per logit, as PyTorch's autocast rounds every linear's output
  /// and gradient); off keeps them fp32, which is what tests compare the activation storage
  /// against bit for bit, and what benchmarks A/B against.
  void set_bf16_gemm_outputs(bool on) noexcept { bf16_gemm_outputs_ = on; }
  bool bf16_gemm_outputs() const noexcept { return bf16_gemm_outputs_; }
  /// GEMM autotuning (off by default): the first time gemm_lt meets a problem class it times up to
  /// kGemmTuneCandidates of cuBLASLt's heuristic answers on that problem (real operands, a scratch
  /// C) and keeps the fastest for the class, instead of the heuristic's first answer. Costs a few
  /// milliseconds per class, once. The price is run-to-run reproducibility: which algorithm wins
  /// can change with timing noise, and another algorithm may sum in another order, so two runs
  /// may differ in the last bits (each run is still deterministic once its plans are made).
  /// Plans made before the switch are kept; set it before the first GEMM.
  void set_gemm_autotune(bool on) noexcept { gemm_autotune_ = on; }
  bool gemm_autotune() const noexcept { return gemm_autotune_; }
  static constexpr int kGemmTuneCandidates = 8;

  /// The memory the CUDA model's loss gives its logits at once, counted in fp32 logits (its rows
  /// per chunk are this over the item count); default 2^27, 512 MiB. bf16 logits (bf16 mode with
  /// bf16 GEMM outputs) take half the bytes, so twice the rows fit: the study's step (9188 scored
  /// rows, 16859 items) runs in one chunk of bf16 logits (310 MB), or two of fp32 ones. A GPU's
  /// memory, not a cache, is what bounds it, so it is the backend's setting:
  /// ModelShape::loss_chunk_elems is the CPU model's (default 2^22, sized for caches), which on
  /// the GPU cut the study's loss into 37 chunks of small GEMMs.
  void set_loss_chunk_elems(std::int64_t n) {
    SEQREC_CHECK(n >= 1, "loss chunk must be >= 1 logits, got " + std::to_string(n));
    loss_chunk_elems_ = n;
  }
  std::int64_t loss_chunk_elems() const noexcept { return loss_chunk_elems_; }
  /// How many problem classes autotuning has timed (those with two or more candidates), and in
  /// how many of them a candidate other than the heuristic's first won.
  std::size_t gemm_classes_tuned() const noexcept { return gemm_tuned_; }
  std::size_t gemm_classes_retuned() const noexcept { return gemm_retuned_; }
  void note_gemm_tuned(bool changed) noexcept {
    ++gemm_tuned_;
    if (changed) ++gemm_retuned_;
  }
  /// How many gemm_rm / gemm_rm_bf16_out calls with a bias could not add it in cuBLASLt's
  /// epilogue (unaligned, no algorithm with it, or — for a bf16 C — no bf16-output algorithm
  /// with an fp32 bias): each cost a separate pass over C. Benchmarks print it.
  std::size_t bias_passes() const noexcept { return bias_passes_; }
  void note_bias_pass() noexcept { ++bias_passes_; }

  /// Per-phase timing of the model's steps (see Profiler); off (null) by default, and then a
  /// ProfileScope costs one pointer test.
  /// Turning it off drops the profiler and its totals; refused while a range is open (a live
  /// ProfileScope holds the profiler).
  void enable_profiling(bool on) {
    if (on && !profiler_) profiler_ = std::make_unique<Profiler>(stream_);
    if (!on && profiler_) {
      SEQREC_CHECK(!profiler_->in_range(),
                   "enable_profiling(false) inside an open profiling range");
      profiler_.reset();
    }
  }
  Profiler* profiler() noexcept { return profiler_.get(); }

  /// cuBLASLt's chosen algorithm for one GEMM problem (gemm_lt's key), so the heuristic query
  /// runs once per shape instead of once per call.
  struct GemmPlan {
    cublasLtMatmulAlgo_t algo;
    bool fused_bias;
  };
  using GemmKey = std::array<std::int64_t, 14>;
  const GemmPlan* find_gemm_plan(const GemmKey& k) const {
    auto it = gemm_plans_.find(k);
    return it == gemm_plans_.end() ? nullptr : &it->second;
  }
  void add_gemm_plan(const GemmKey& k, const GemmPlan& p) { gemm_plans_.emplace(k, p); }

  /// Drops the bf16 copies of weight operands (call after the weights change).
  void weights_changed() noexcept { weight_cache_.clear(); }

  /// A bf16 mirror: the bf16 copy, row-major with the same row length, of a (rows, cols) fp32
  /// tensor at `base`, which its owner keeps equal to cast_to_bf16 of the tensor at every moment
  /// a GEMM could read it (the CUDA model writes its mirror in the optimiser step, from the same
  /// floats, and on upload). The mirror may hold more rows than the tensor (bf16_rows >= rows);
  /// those must be zero. cached_bf16 answers a request inside a mirror with the mirror itself.
  struct Bf16Mirror {
    const void* owner = nullptr;  // remove_bf16_mirrors(owner) drops it
    const float* base = nullptr;
    std::int64_t rows = 0, cols = 0;
    const __nv_bfloat16* bf16 = nullptr;
    std::int64_t bf16_rows = 0;
  };
  void add_bf16_mirror(const Bf16Mirror& m) {
    SEQREC_CHECK(m.base != nullptr && m.bf16 != nullptr && m.rows >= 0 && m.cols > 0 &&
                     m.bf16_rows >= m.rows,
                 "add_bf16_mirror: a mirror needs both arrays and at least the tensor's rows");
    mirrors_.push_back(m);
  }
  /// Drops every mirror `owner` added (its owner must call this before the arrays go away).
  void remove_bf16_mirrors(const void* owner) noexcept {
    std::erase_if(mirrors_, [owner](const Bf16Mirror& m) { return m.owner == owner; });
  }
  /// Whether cached_bf16 uses the mirrors (default on). Off, every weight operand is cast into
  /// the cache as before the tenth session: the same bits, for tests and A/B benchmarks.
  void set_bf16_mirrors(bool on) noexcept { use_mirrors_ = on; }
  bool bf16_mirrors() const noexcept { return use_mirrors_; }
  /// How many weight operands came from a mirror instead of a cast.
  std::size_t bf16_mirror_hits() const noexcept { return mirror_hits_; }

  /// The bf16 copy of the (rows, cols) fp32 matrix at `src` with leading dimension `ld`, made by
  /// `make` (which fills a (rows, dst_ld) bf16 buffer) on first use after the last
  /// weights_changed() — or, when whole rows of a mirror hold it with the same layout (ld and
  /// dst_ld equal to cols), that mirror's rows, made by nobody.
  template <typename Make>
  const __nv_bfloat16* cached_bf16(const float* src, std::int64_t rows, std::int64_t cols,
                                   std::int64_t ld, std::int64_t dst_ld, Make&& make) {
    if (use_mirrors_ && ld == cols && dst_ld == cols) {
      const auto at = reinterpret_cast<std::uintptr_t>(src);
      for (const Bf16Mirror& m : mirrors_) {
        const auto lo = reinterpret_cast<std::uintptr_t>(m.base);
        if (m.cols != cols || at < lo || at >= lo + sizeof(float) * std::size_t(m.rows * m.cols))
          continue;
        const std::int64_t off = static_cast<std::int64_t>((at - lo) / sizeof(float));
        if ((at - lo) % sizeof(float) != 0 || off % cols != 0 || off / cols + rows > m.bf16_rows)
          continue;
        ++mirror_hits_;
        return m.bf16 + off;
      }
    }
    const WeightKey key{src, rows, cols, ld};
    auto it = weight_cache_.find(key);
    if (it != weight_cache_.end()) return it->second.data();
    DeviceBuffer<__nv_bfloat16> b(alloc_, static_cast<std::size_t>(rows * dst_ld));
    make(b.data());
    return weight_cache_.emplace(key, std::move(b)).first->second.data();
  }

 private:
  friend class Fork;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  CachingAllocator alloc_;  // declared before workspace_: destroyed after it
  DeviceBuffer<std::byte> workspace_;
  // The side stream (Fork): made on first use, with its own workspace.
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_event_ = nullptr, join_event_ = nullptr;
  DeviceBuffer<std::byte> side_workspace_;
  bool overlap_dw_ = false, forked_ = false, on_side_ = false;
  std::size_t side_runs_ = 0;
  int num_sms_ = 0;
  int max_smem_optin_ = 0;
  bool bf16_ = false;
  bool bf16_activations_ = true;
  bool bf16_gemm_outputs_ = true;
  bool gemm_autotune_ = false;
  std::int64_t loss_chunk_elems_ = std::int64_t{1} << 27;
  std::size_t gemm_tuned_ = 0, gemm_retuned_ = 0, bias_passes_ = 0;
  using WeightKey = std::tuple<const float*, std::int64_t, std::int64_t, std::int64_t>;
  std::map<WeightKey, DeviceBuffer<__nv_bfloat16>> weight_cache_;  // after alloc_: freed first
  std::vector<Bf16Mirror> mirrors_;
  bool use_mirrors_ = true;
  std::size_t mirror_hits_ = 0;
  std::map<GemmKey, GemmPlan> gemm_plans_;
  std::unique_ptr<Profiler> profiler_;
};

/// Two streams at once, fork to join, as a scope. Construction marks the main stream's current
/// point (what the side work reads must be queued by then); on_side(f) queues f's work on the
/// backend's side stream, to start at that point, while the caller goes on queueing on the main
/// stream; destruction joins: the main stream waits for the side stream's work. Between the two
/// the allocator hands out no block freed meanwhile (CachingAllocator::hold: either stream may
/// still read it); after the join every later use of one is queued behind both streams' work.
/// The side stream, its events and its cuBLASLt workspace are made on first use. One Fork at a
/// time per backend, one on_side per Fork.
class Fork {
 public:
  explicit Fork(Backend& be) : be_(be) {
    SEQREC_CHECK(!be.forked_, "Fork: the backend is already forked");
    if (be.side_ == nullptr) {
      SEQREC_CUDA_CHECK(cudaStreamCreateWithFlags(&be.side_, cudaStreamNonBlocking));
      SEQREC_CUDA_CHECK(cudaEventCreateWithFlags(&be.fork_event_, cudaEventDisableTiming));
      SEQREC_CUDA_CHECK(cudaEventCreateWithFlags(&be.join_event_, cudaEventDisableTiming));
      be.side_workspace_ = DeviceBuffer<std::byte>(be.alloc_, Backend::kWorkspaceBytes);
    }
    SEQREC_CUDA_CHECK(cudaEventRecord(be.fork_event_, be.stream_));
    be.alloc_.hold();
    be.forked_ = true;
  }
  Fork(const Fork&) = delete;
  Fork& operator=(const Fork&) = delete;
  /// Queues f's work (every launch, copy and GEMM in it: they take be.stream() and
  /// be.workspace(), which now answer the side stream's) on the side stream.
  template <typename F>
  void on_side(F&& f) {
    SEQREC_CHECK(!used_, "Fork::on_side: once per fork");
    used_ = true;
    SEQREC_CUDA_CHECK(cudaStreamWaitEvent(be_.side_, be_.fork_event_, 0));
    struct Back {
      Backend& be;
      ~Back() { be.on_side_ = false; }
    } back{be_};
    be_.on_side_ = true;
    f();
    ++be_.side_runs_;
  }
  /// The join. noexcept: should recording or waiting fail, the host synchronises the side stream
  /// instead, so the main stream's later work still follows the side's.
  ~Fork() {
    if (used_ && (cudaEventRecord(be_.join_event_, be_.side_) != cudaSuccess ||
                  cudaStreamWaitEvent(be_.stream_, be_.join_event_, 0) != cudaSuccess))
      (void)cudaStreamSynchronize(be_.side_);
    be_.forked_ = false;
    be_.alloc_.unhold();
  }

 private:
  Backend& be_;
  bool used_ = false;
};

/// Times the enclosing scope as one range of the backend's profiler, when profiling is on.
class ProfileScope {
 public:
  ProfileScope(Backend& be, const char* name) : p_(be.profiler()) {
    if (p_ != nullptr) p_->begin(name);
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;
  ~ProfileScope() {
    if (p_ != nullptr) p_->end();
  }

 private:
  Profiler* p_;
};

/// Row-major GEMM on the backend's stream with operands of type `ab_type` (CUDA_R_32F or
/// CUDA_R_16BF, both operands alike) and an fp32 result, fp32 compute (no TF32):
///   C (M, N) = alpha · op(A) (M, K) · op(B) (K, N) + beta · C,
/// with op(X) = Xᵀ when trans_x. A is stored (M, K) row-major with leading dimension lda, or
/// (K, M) when trans_a; likewise B is (K, N) or (N, K). cuBLASLt is column-major, so this computes
/// Cᵀ = op(B)ᵀ · op(A)ᵀ, which reads the same memory.
///
/// bias (N floats, device; may be null): when given and 16-byte aligned, cuBLASLt adds it to every
/// row of C in the GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS: in the column-major view the bias runs
/// along the m = N dimension). Returns true iff it did; the caller adds a bias that was not fused
/// (unaligned, or no algorithm with that epilogue).
///
/// c_type CUDA_R_16BF (bf16 operands only): C is bf16, and the epilogue rounds the fp32 result
/// (bias included) to it once. A bias added after that rounding would round twice, so with a bf16
/// C a bias that cannot be fused is not left to the caller: nothing is computed and it returns
/// false (the caller then takes an fp32 C and rounds it; gemm_rm_bf16_out).
inline bool gemm_lt(Backend& be, cudaDataType_t ab_type, bool trans_a, bool trans_b, std::int64_t M,
                    std::int64_t N, std::int64_t K, float alpha, const void* A, std::int64_t lda,
                    const void* B, std::int64_t ldb, float beta, void* C, std::int64_t ldc,
                    const float* bias = nullptr, cudaDataType_t c_type = CUDA_R_32F) {
  SEQREC_CHECK(c_type == CUDA_R_32F || (c_type == CUDA_R_16BF && ab_type == CUDA_R_16BF),
               "gemm_lt: a bf16 result needs bf16 operands");
  if (M == 0 || N == 0) return bias != nullptr;
  // Column-major problem: m = N, n = M, k = K; first operand is B, second is A.
  const cublasOperation_t opa = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const std::uint64_t a_rows = trans_b ? K : N, a_cols = trans_b ? N : K;
  const std::uint64_t b_rows = trans_a ? M : K, b_cols = trans_a ? K : M;

  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  // Release the descriptors on every path, including a throw.
  struct Guard {
    cublasLtMatmulDesc_t& op;
    cublasLtMatrixLayout_t &la, &lb, &lc;
    cublasLtMatmulPreference_t& pref;
    ~Guard() {
      if (pref) cublasLtMatmulPreferenceDestroy(pref);
      if (lc) cublasLtMatrixLayoutDestroy(lc);
      if (lb) cublasLtMatrixLayoutDestroy(lb);
      if (la) cublasLtMatrixLayoutDestroy(la);
      if (op) cublasLtMatmulDescDestroy(op);
    }
  } guard{op, la, lb, lc, pref};

  SEQREC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  SEQREC_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  SEQREC_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  SEQREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, ab_type, a_rows, a_cols, ldb));
  SEQREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, ab_type, b_rows, b_cols, lda));
  SEQREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, c_type, N, M, ldc));
  SEQREC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::size_t ws = Backend::kWorkspaceBytes;
  SEQREC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // cuBLASLt assumes 256-byte aligned operands unless told otherwise; views such as the item
  // block of an embedding table (table + first_item·D) are less aligned, so state the truth.
  auto alignment = [](const void* ptr) {
    const auto a = reinterpret_cast<std::uintptr_t>(ptr);
    std::uint32_t al = 256;
    while (al > 1 && a % al != 0) al >>= 1;
    return al;
  };
  const std::uint32_t al_first = alignment(B), al_second = alignment(A), al_c = alignment(C);
  SEQREC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_first, sizeof(al_first)));
  SEQREC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_second, sizeof(al_second)));
  SEQREC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  SEQREC_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c)));
  bool fused = bias != nullptr && reinterpret_cast<std::uintptr_t>(bias) % 16 == 0;
  auto set_bias_epilogue = [&](bool on) {
    const cublasLtEpilogue_t epi = on ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    SEQREC_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    if (!on) return;
    const cudaDataType_t bias_type = CUDA_R_32F;
    SEQREC_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    SEQREC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                       &bias_type, sizeof(bias_type)));
  };
  // The heuristic query costs far more host time than the GEMM launch, so its answer is kept per
  // problem class: types, transposes, leading dimensions, alignments, bias epilogue wanted, and the
  // sizes rounded up to a multiple of 256 above 1024 (packed training steps change the row count
  // every batch). The class's algorithm is what the heuristic picks for the rounded sizes — a
  // function of the class alone, so a step's algorithms do not depend on which batches came first
  // — and each exact problem is checked with cublasLtMatmulAlgoCheck before it is used; one that
  // fails the check gets the heuristic's answer for its exact sizes (not cached).
  auto bucket = [](std::int64_t v) { return v <= 1024 ? v : (v + 255) / 256 * 256; };
  std::int64_t Mq = bucket(M), Nq = bucket(N), Kq = bucket(K);
  {
    // Column-major query layouts (rows ≤ ld): the rounded sizes must still fit the leading
    // dimensions; otherwise the class is the exact problem.
    const std::int64_t qa_rows = trans_b ? Kq : Nq, qb_rows = trans_a ? Mq : Kq;
    if (qa_rows > ldb || qb_rows > lda || Nq > ldc) {
      Mq = M;
      Nq = N;
      Kq = K;
    }
  }
  const bool exact = Mq == M && Nq == N && Kq == K;
  const Backend::GemmKey key{static_cast<std::int64_t>(ab_type),
                             static_cast<std::int64_t>(c_type),
                             trans_a,
                             trans_b,
                             Mq,
                             Nq,
                             Kq,
                             lda,
                             ldb,
                             ldc,
                             al_first,
                             al_second,
                             al_c,
                             fused};
  // The heuristic for layouts (a, b, c) with the bias epilogue when wanted and available: its
  // first answer; with autotuning on, its usable answers also go to `candidates`.
  // (A fixed array: nvcc 13's front end fails on a std::vector of this type here.)
  constexpr int kMaxCandidates = Backend::kGemmTuneCandidates;
  cublasLtMatmulAlgo_t candidates[kMaxCandidates];
  int n_candidates = 0;
  auto ask = [&](cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                 std::int64_t m, std::int64_t n, std::int64_t k) {
    const int want = be.gemm_autotune() ? kMaxCandidates : 1;
    cublasLtMatmulHeuristicResult_t heur[kMaxCandidates]{};
    int found = 0;
    bool with_bias = bias != nullptr && reinterpret_cast<std::uintptr_t>(bias) % 16 == 0;
    if (with_bias) {
      set_bias_epilogue(true);
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(be.lt(), op, a, b, c, c, pref, want, heur, &found);
      if (st != CUBLAS_STATUS_SUCCESS || found == 0) {  // no algorithm with it: plain GEMM
        with_bias = false;
        found = 0;
      }
    }
    if (!with_bias) {
      set_bias_epilogue(false);
      SEQREC_CUBLAS_CHECK(
          cublasLtMatmulAlgoGetHeuristic(be.lt(), op, a, b, c, c, pref, want, heur, &found));
    }
    if (found == 0) {
      throw ::seqrec::Error(std::string("cuBLASLt found no ") +
                            (ab_type == CUDA_R_16BF ? "bf16" : "fp32") +
                            " algorithm for M=" + std::to_string(m) + " N=" + std::to_string(n) +
                            " K=" + std::to_string(k));
    }
    n_candidates = 0;
    for (int i = 0; i < found && want > 1; ++i)
      if (heur[i].state == CUBLAS_STATUS_SUCCESS && heur[i].workspaceSize <= ws)
        candidates[n_candidates++] = heur[i].algo;
    return Backend::GemmPlan{heur[0].algo, with_bias};
  };
  // Autotuning: times each candidate on this exact problem — the real A and B, a scratch C that
  // is also D, so nothing the caller sees is written — and keeps the fastest in p. A candidate that
  // fails cublasLtMatmulAlgoCheck for the exact sizes, or fails to run, is passed over.
  auto tune = [&](Backend::GemmPlan& p) {
    if (n_candidates < 2) return;
    set_bias_epilogue(p.fused_bias);
    const std::size_t elem = c_type == CUDA_R_16BF ? 2 : 4;
    auto scratch =
        be.buffer<std::byte>(static_cast<std::size_t>(ldc) * static_cast<std::size_t>(M) * elem);
    cudaEvent_t t0 = nullptr, t1 = nullptr;
    struct Events {
      cudaEvent_t &a, &b;
      ~Events() {
        if (a) cudaEventDestroy(a);
        if (b) cudaEventDestroy(b);
      }
    } events{t0, t1};
    SEQREC_CUDA_CHECK(cudaEventCreate(&t0));
    SEQREC_CUDA_CHECK(cudaEventCreate(&t1));
    constexpr int kRuns = 3;
    float best = 0.f;
    bool have = false;
    int winner = 0;
    for (int ci = 0; ci < n_candidates; ++ci) {
      const cublasLtMatmulAlgo_t& algo = candidates[ci];
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoCheck(be.lt(), op, la, lb, lc, lc, &algo, &check) !=
              CUBLAS_STATUS_SUCCESS ||
          check.workspaceSize > ws)
        continue;
      auto run = [&] {
        return cublasLtMatmul(be.lt(), op, &alpha, B, la, A, lb, &beta, scratch.data(), lc,
                              scratch.data(), lc, &algo, be.workspace(), ws, be.stream());
      };
      if (run() != CUBLAS_STATUS_SUCCESS) continue;  // warm-up, and a check that it runs
      SEQREC_CUDA_CHECK(cudaEventRecord(t0, be.stream()));
      bool ok = true;
      for (int r = 0; r < kRuns && ok; ++r) ok = run() == CUBLAS_STATUS_SUCCESS;
      SEQREC_CUDA_CHECK(cudaEventRecord(t1, be.stream()));
      SEQREC_CUDA_CHECK(cudaEventSynchronize(t1));
      float ms = 0.f;
      SEQREC_CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
      if (ok && (!have || ms < best)) {
        best = ms;
        p.algo = algo;
        have = true;
        winner = ci;
      }
    }
    if (have) be.note_gemm_tuned(winner != 0);
  };
  Backend::GemmPlan plan{};
  if (const Backend::GemmPlan* known = be.find_gemm_plan(key)) {
    plan = *known;
  } else if (exact) {
    plan = ask(la, lb, lc, M, N, K);
    tune(plan);
    be.add_gemm_plan(key, plan);
  } else {
    cublasLtMatrixLayout_t qa = nullptr, qb = nullptr, qc = nullptr;
    struct QueryGuard {
      cublasLtMatrixLayout_t &a, &b, &c;
      ~QueryGuard() {
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
      }
    } qguard{qa, qb, qc};
    SEQREC_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&qa, ab_type, trans_b ? Kq : Nq, trans_b ? Nq : Kq, ldb));
    SEQREC_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&qb, ab_type, trans_a ? Mq : Kq, trans_a ? Kq : Mq, lda));
    SEQREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&qc, c_type, Nq, Mq, ldc));
    plan = ask(qa, qb, qc, Mq, Nq, Kq);
    tune(plan);  // on the exact problem: the class's sizes are only for the heuristic
    be.add_gemm_plan(key, plan);
  }
  set_bias_epilogue(plan.fused_bias);
  if (!exact) {
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t st =
        cublasLtMatmulAlgoCheck(be.lt(), op, la, lb, lc, lc, &plan.algo, &check);
    if (st != CUBLAS_STATUS_SUCCESS || check.workspaceSize > ws) {
      plan = ask(la, lb, lc, M, N, K);
      set_bias_epilogue(plan.fused_bias);
    }
  }
  fused = plan.fused_bias;
  if (bias != nullptr && !fused && c_type != CUDA_R_32F) return false;  // see above: not run
  // While profiling, the call is timed as one GEMM of its class (Profiler::gemm_begin).
  struct GemmTiming {
    Profiler* p;
    ~GemmTiming() {
      if (p != nullptr) p->gemm_end();
    }
  } timing{be.profiler()};
  if (timing.p != nullptr) {
    auto type = [](cudaDataType_t t) { return t == CUDA_R_16BF ? "bf16" : "fp32"; };
    char label[160];
    std::snprintf(label, sizeof label, "%s A%s*B%s -> %s%s [class %lldx%lldx%lld]", type(ab_type),
                  trans_a ? "^T" : "", trans_b ? "^T" : "", type(c_type), fused ? " +bias" : "",
                  static_cast<long long>(Mq), static_cast<long long>(Nq),
                  static_cast<long long>(Kq));
    timing.p->gemm_begin(label, M, N, K, be.stream());
  }
  SEQREC_CUBLAS_CHECK(cublasLtMatmul(be.lt(), op, &alpha, B, la, A, lb, &beta, C, lc, C, lc,
                                     &plan.algo, be.workspace(), ws, be.stream()));
  return fused;
}

}  // namespace seqrec::cuda
