// The host emulator of the CUDA execution model, for running seqrec's kernels where no GPU is.
//
// Every translation unit of an emulated build force-includes this header (-include) before
// anything else, and its sources have been rewritten by tests/emu/rewrite.py: a launch
// `k<<<grid, block, smem, stream>>>(args)` becomes `::seqrec::emu::launch(k, [&] { k(args); },
// grid, block, smem, stream)`, and `extern __shared__ T name[];` becomes a pointer to the launch's
// dynamic shared memory. The rest of the CUDA source compiles as it is:
//   - __global__, __device__, __host__ mean nothing; __shared__ is `static thread_local`, which
//     is one object per block, because a block runs on one OS thread (see below).
//   - Every CUDA thread of a block is a fiber with its own stack (the switch is in
//     cuda_runtime_emu.cpp), and threadIdx names the running fiber's index. Fibers switch only
//     at __syncthreads, __syncwarp and the warp shuffles: a fiber runs until it reaches one,
//     then the next fiber runs. A barrier opens once
//     every live thread of its scope (the block, or the warp) waits at it; a thread that waits at
//     a different barrier from the rest of its scope is reported as a divergent barrier, and a
//     full-mask shuffle in a warp some of whose lanes have exited is reported too (both are
//     undefined on a GPU and hang or give garbage there).
//   - Launch checks a GPU makes: block size ≤ 1024, grid limits, dynamic shared memory above
//     48 KiB without cudaFuncSetAttribute, and above the opt-in limit at all.
//   - Device memory (cudaMalloc, sized exactly) and dynamic shared memory start filled with 0xFF
//     bytes (NaN as floats, −1 as integers), so a kernel that reads what nobody wrote gives NaN
//     or −1 instead of the zeros a fresh host page would hold.
//   - Blocks run one after another, in the grid's linear order, and threads between barriers in
//     index order; SEQREC_EMU_SCHEDULE=reverse reverses both, so that a read of another
//     thread's write with no barrier between sees the old value in one of the two orders.
//   - Not emulated: timing, real concurrency (races that only interleaving shows), the tensor
//     cores' summation order (cuBLASLt is emulated by an fp32 GEMM, tests/emu/cublaslt_emu.cpp),
//     and fp contraction (nvcc fuses a·b + c into an FMA by default; g++ here does not), so
//     results match the GPU's up to rounding only.
#pragma once

#define SEQREC_CUDA_EMULATION 1

// Empty before the CUDA headers see them: crt/host_defines.h keeps definitions it finds.
#define __global__
#define __device__
#define __host__
#define __constant__

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static thread_local

namespace seqrec::emu {

/// One CUDA thread's state in the block being run.
struct EmuThread;

/// The block being run on this OS thread (fibers of one block share it).
struct BlockContext {
  dim3 grid, block;
  uint3 block_idx;
  int threads = 0;
  int current = 0;                     // index of the running fiber
  EmuThread* thread_states = nullptr;  // `threads` entries
  unsigned char* dynamic_smem = nullptr;
  std::uint64_t* warp_slots = nullptr;  // one 8-byte slot per thread, for shuffles
  const char* kernel = nullptr;         // for messages: the kernel's address as text
};

inline thread_local BlockContext* tl_block = nullptr;

/// threadIdx of the running fiber.
const uint3& thread_index() noexcept;
void syncthreads();
void syncwarp(unsigned mask);
/// The running fiber's lane reads slot src_lane of its warp after every lane has written its own.
std::uint64_t warp_exchange(unsigned mask, std::uint64_t mine, int src_lane);
[[noreturn]] void trap();

/// Runs `body` as the kernel `kernel` over grid × block. Synchronous: returns after the last
/// block. A configuration error sets the error cudaGetLastError returns, as a GPU does.
void launch_impl(const void* kernel, void (*run)(void*), void* body, dim3 grid, dim3 block,
                 std::size_t smem);

template <typename K, typename F>
void launch(K* kernel, F&& body, dim3 grid, dim3 block, std::size_t smem = 0,
            cudaStream_t = nullptr) {
  using Body = std::remove_reference_t<F>;
  launch_impl(
      reinterpret_cast<const void*>(kernel), [](void* b) { (*static_cast<Body*>(b))(); },
      static_cast<void*>(&body), grid, block, smem);
}

template <typename T>
T* dynamic_shared() noexcept {
  return reinterpret_cast<T*>(tl_block->dynamic_smem);
}

}  // namespace seqrec::emu

#define threadIdx (::seqrec::emu::thread_index())
#define blockIdx (::seqrec::emu::tl_block->block_idx)
#define blockDim (::seqrec::emu::tl_block->block)
#define gridDim (::seqrec::emu::tl_block->grid)

inline void __syncthreads() { ::seqrec::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::seqrec::emu::syncwarp(mask); }
inline void __trap() { ::seqrec::emu::trap(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const int lane = static_cast<int>(::seqrec::emu::tl_block->current & 31);
  const int src = ((lane ^ lane_mask) & (width - 1)) | (lane & ~(width - 1));
  bits = ::seqrec::emu::warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Device intrinsics with their host meaning (IEEE round-to-nearest, no contraction: this header
// is compiled with -ffp-contract=off in the emulated build).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __double2float_rn(double a) { return static_cast<float>(a); }
inline unsigned __float_as_uint(float a) { return std::bit_cast<unsigned>(a); }
inline float __uint_as_float(unsigned a) { return std::bit_cast<float>(a); }
inline float __expf(float a) { return std::exp(a); }

/// atomicAdd: blocks run one at a time on one OS thread, so a plain add is atomic.
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
