// The host emulator's CUDA runtime: the subset of cudart seqrec calls, defined against the real
// cuda_runtime_api.h declarations (an emulated binary links this instead of libcudart), and the
// fiber scheduler that runs kernels (see seqrec_emu/cuda_emu.hpp for the model).
//
// One emulated device, "seqrec host emulator", with an H100's limits (132 SMs, 48 KiB of dynamic
// shared memory without opt-in, 227 KiB with). Memory is host memory; copies are memcpy; every
// call is synchronous, so streams and events only record host time.
//
// Fibers switch with a few instructions of our own (x86-64 System V: the callee-saved registers,
// the stack pointer, MXCSR and the x87 control word), not with swapcontext, which also saves
// the signal mask with a system call at every switch: the warp shuffles of a reduction switch
// fibers hundreds of times per row.
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "seqrec_emu/cuda_emu.hpp"

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// seqrec_emu_switch(void** save_sp, void* next_sp): saves the running context on its stack,
// stores the stack pointer in *save_sp, and resumes the context whose stack pointer is next_sp.
asm(R"(
  .text
  .p2align 4
  .type seqrec_emu_switch, @function
seqrec_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size seqrec_emu_switch, .-seqrec_emu_switch
)");
extern "C" void seqrec_emu_switch(void** save_sp, void* next_sp);

namespace seqrec::emu {

struct EmuThread {
  uint3 tid{};
  enum class Wait { kRun, kBlock, kWarp, kDone } wait = Wait::kRun;
  void* sp = nullptr;  // saved stack pointer while not running
};

namespace {

constexpr int kMaxThreads = 1024;
constexpr std::size_t kStackBytes = std::size_t{256} << 10;
constexpr std::size_t kDefaultSmem = 48 << 10;
constexpr std::size_t kOptinSmem = 227 << 10;

thread_local cudaError_t tl_last_error = cudaSuccess;

/// Fails the process with a message naming the kernel and the thread: an emulated kernel that
/// does something a GPU cannot do has no error code to return (a GPU would hang or trap).
[[noreturn]] void die(const std::string& what) {
  const BlockContext* b = tl_block;
  if (b != nullptr && b->thread_states != nullptr) {
    const uint3 t = b->thread_states[b->current].tid;
    std::fprintf(
        stderr, "seqrec CUDA emulator: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n",
        b->kernel, b->block_idx.x, b->block_idx.y, b->block_idx.z, t.x, t.y, t.z, what.c_str());
  } else {
    std::fprintf(stderr, "seqrec CUDA emulator: %s\n", what.c_str());
  }
  std::fflush(stderr);
  std::abort();
}

/// Fiber stacks, mapped once per OS thread and reused by every block (pages are committed only
/// when touched).
struct StackPool {
  unsigned char* base = nullptr;
  StackPool() {
    void* p = mmap(nullptr, kStackBytes * kMaxThreads, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die("cannot map fiber stacks");
    base = static_cast<unsigned char*>(p);
  }
  ~StackPool() { munmap(base, kStackBytes * kMaxThreads); }
  unsigned char* stack(int i) const { return base + kStackBytes * static_cast<std::size_t>(i); }
};

struct Runner {
  void* scheduler_sp = nullptr;
  void (*run)(void*) = nullptr;
  void* body = nullptr;
  // AddressSanitizer must be told of every stack switch (else it takes a fiber's frames for
  // overflows of the OS thread's stack): the scheduler's stack, learnt at the first switch.
  const void* scheduler_stack = nullptr;
  std::size_t scheduler_stack_size = 0;
};
thread_local Runner tl_runner;

/// Fiber side, just after a switch into it.
inline void arrived_in_fiber() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &tl_runner.scheduler_stack,
                                  &tl_runner.scheduler_stack_size);
#endif
}

/// Fiber side: back to the scheduler (and, unless finished, on from here when resumed).
void to_scheduler(EmuThread& t, bool finished) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, tl_runner.scheduler_stack,
                                 tl_runner.scheduler_stack_size);
#else
  (void)finished;
#endif
  seqrec_emu_switch(&t.sp, tl_runner.scheduler_sp);
  arrived_in_fiber();
}

[[noreturn]] void fiber_main() {
  arrived_in_fiber();
  tl_runner.run(tl_runner.body);
  BlockContext* b = tl_block;
  EmuThread& t = b->thread_states[b->current];
  t.wait = EmuThread::Wait::kDone;
  to_scheduler(t, true);
  die("a finished fiber was resumed");
}

/// A fresh fiber's stack: the frame seqrec_emu_switch pops (default MXCSR and x87 control word,
/// zeroed registers), returning into fiber_main with the alignment of a call.
void* fresh_stack(unsigned char* stack) {
#if defined(__SANITIZE_ADDRESS__)
  // The previous fiber on this stack left without returning from fiber_main and to_scheduler
  // (the kernel's own frames did return): their red zones are still marked at the top.
  constexpr std::size_t kTop = 16 << 10;
  __asan_unpoison_memory_region(stack + kStackBytes - kTop, kTop);
#endif
  auto* top = reinterpret_cast<std::uint64_t*>(
      (reinterpret_cast<std::uintptr_t>(stack + kStackBytes)) & ~std::uintptr_t{15});
  std::uint64_t* sp = top;
  *--sp = 0;  // fiber_main's (never used) return address
  *--sp = reinterpret_cast<std::uint64_t>(&fiber_main);
  for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp rbx r12 r13 r14 r15
  *--sp = 0x1F80ull | (0x037Full << 32);  // MXCSR, then the x87 control word
  return sp;
}

/// Back to the scheduler until this fiber's barrier opens.
void block_on(EmuThread::Wait w) {
  BlockContext* b = tl_block;
  EmuThread& t = b->thread_states[b->current];
  t.wait = w;
  to_scheduler(t, false);
}

std::string kernel_name(const void* k) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", k);
  return buf;
}

/// Dynamic shared memory limits set by cudaFuncSetAttribute, per kernel.
std::map<const void*, int>& smem_optin() {
  static std::map<const void*, int> m;
  return m;
}

/// The order threads run in between barriers, and blocks in a grid: SEQREC_EMU_SCHEDULE=forward
/// (default: index order) or reverse. A kernel whose result depends on it reads what another
/// thread wrote without a barrier between, or depends on the order of blocks: a race on a GPU.
bool reverse_schedule() {
  static const bool reverse = [] {
    const char* v = std::getenv("SEQREC_EMU_SCHEDULE");
    const std::string s = v == nullptr ? "" : v;
    if (s.empty() || s == "forward") return false;
    if (s == "reverse") return true;
    die("SEQREC_EMU_SCHEDULE must be 'forward' or 'reverse', got '" + s + "'");
  }();
  return reverse;
}

void run_block(BlockContext& b, std::vector<EmuThread>& threads, StackPool& stacks) {
  using W = EmuThread::Wait;
  b.thread_states = threads.data();
  const bool reverse = reverse_schedule();
  int i = 0;
  for (unsigned z = 0; z < b.block.z; ++z)
    for (unsigned y = 0; y < b.block.y; ++y)
      for (unsigned x = 0; x < b.block.x; ++x, ++i) {
        EmuThread& t = threads[static_cast<std::size_t>(i)];
        t.tid = uint3{x, y, z};
        t.wait = W::kRun;
        t.sp = fresh_stack(stacks.stack(i));
      }
  const int warps = (b.threads + 31) / 32;
  for (;;) {
    for (int k = 0; k < b.threads; ++k) {
      i = reverse ? b.threads - 1 - k : k;
      if (threads[static_cast<std::size_t>(i)].wait != W::kRun) continue;
      b.current = i;
#if defined(__SANITIZE_ADDRESS__)
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, stacks.stack(i), kStackBytes);
#endif
      seqrec_emu_switch(&tl_runner.scheduler_sp, threads[static_cast<std::size_t>(i)].sp);
#if defined(__SANITIZE_ADDRESS__)
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    }
    // Every thread now waits at a barrier or is done. Open each warp barrier all of whose live
    // lanes wait at it; failing that, the block barrier, if every live thread waits at it.
    bool opened = false, any_live = false, all_block = true;
    for (int w = 0; w < warps; ++w) {
      const int lo = w * 32, hi = std::min(b.threads, lo + 32);
      int live = 0, at_warp = 0;
      for (int l = lo; l < hi; ++l) {
        const W s = threads[static_cast<std::size_t>(l)].wait;
        if (s == W::kDone) continue;
        ++live;
        if (s == W::kWarp) ++at_warp;
        if (s != W::kBlock) all_block = false;
      }
      any_live = any_live || live > 0;
      if (live > 0 && at_warp == live) {
        for (int l = lo; l < hi; ++l)
          if (threads[static_cast<std::size_t>(l)].wait == W::kWarp)
            threads[static_cast<std::size_t>(l)].wait = W::kRun;
        opened = true;
      } else if (at_warp > 0) {
        b.current = lo;
        while (threads[static_cast<std::size_t>(b.current)].wait != W::kWarp) ++b.current;
        die("divergent barrier: warp " + std::to_string(w) + " has " + std::to_string(at_warp) +
            " of its " + std::to_string(live) +
            " live lanes at a warp barrier (__syncwarp or shuffle) and the rest at "
            "__syncthreads");
      }
    }
    if (!any_live) break;
    if (opened) continue;
    if (!all_block) die("scheduler: no barrier can open");
    for (auto& t : threads)
      if (t.wait == W::kBlock) t.wait = W::kRun;
  }
  b.thread_states = nullptr;
}

}  // namespace

const uint3& thread_index() noexcept { return tl_block->thread_states[tl_block->current].tid; }

void syncthreads() { block_on(EmuThread::Wait::kBlock); }

namespace {
/// A full-mask warp operation needs every lane of the warp alive and present.
void check_full_warp(unsigned mask, const char* what) {
  BlockContext* b = tl_block;
  const int lo = b->current & ~31;
  if (mask != 0xffffffffu)
    die(std::string(what) + " with a partial mask is not emulated (mask " + std::to_string(mask) +
        ")");
  if (lo + 32 > b->threads)
    die(std::string(what) + ": full mask, but the block has only " + std::to_string(b->threads) +
        " threads (the warp is partial)");
  for (int l = lo; l < lo + 32; ++l)
    if (b->thread_states[l].wait == EmuThread::Wait::kDone)
      die(std::string(what) + ": full mask, but lane " + std::to_string(l - lo) +
          " of this warp has exited");
}
}  // namespace

void syncwarp(unsigned mask) {
  check_full_warp(mask, "__syncwarp");
  block_on(EmuThread::Wait::kWarp);
}

std::uint64_t warp_exchange(unsigned mask, std::uint64_t mine, int src_lane) {
  check_full_warp(mask, "__shfl_xor_sync");
  BlockContext* b = tl_block;
  const int me = b->current;
  b->warp_slots[me] = mine;
  block_on(EmuThread::Wait::kWarp);  // every lane has written
  const std::uint64_t v = b->warp_slots[(me & ~31) + src_lane];
  block_on(EmuThread::Wait::kWarp);  // every lane has read
  return v;
}

void trap() { die("__trap()"); }

void launch_impl(const void* kernel, void (*run)(void*), void* body, dim3 grid, dim3 block,
                 std::size_t smem) {
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  const bool bad_config = grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu ||
                          grid.y > 65535 || grid.z > 65535 || threads == 0 ||
                          threads > kMaxThreads || block.z > 64;
  if (bad_config) {
    tl_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  std::size_t limit = kDefaultSmem;
  if (auto it = smem_optin().find(kernel); it != smem_optin().end())
    limit = static_cast<std::size_t>(it->second);
  if (smem > limit) {
    tl_last_error = cudaErrorInvalidValue;
    return;
  }
  const bool reverse = reverse_schedule();
  static thread_local StackPool stacks;
  const std::string name = kernel_name(kernel);
  std::vector<unsigned char> shared(smem);
  std::vector<std::uint64_t> slots(static_cast<std::size_t>(threads));
  BlockContext b;
  b.grid = grid;
  b.block = block;
  b.threads = static_cast<int>(threads);
  b.warp_slots = slots.data();
  b.kernel = name.c_str();
  b.dynamic_smem = shared.data();
  BlockContext* saved = tl_block;
  const Runner saved_runner = tl_runner;
  tl_block = &b;
  tl_runner.run = run;
  tl_runner.body = body;
  std::vector<EmuThread> states(static_cast<std::size_t>(threads));
  const std::uint64_t blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  for (std::uint64_t k = 0; k < blocks; ++k) {
    const std::uint64_t lin = reverse ? blocks - 1 - k : k;
    b.block_idx =
        uint3{static_cast<unsigned>(lin % grid.x), static_cast<unsigned>(lin / grid.x % grid.y),
              static_cast<unsigned>(lin / (std::uint64_t{grid.x} * grid.y))};
    if (smem > 0) std::memset(shared.data(), 0xff, smem);
    run_block(b, states, stacks);
  }
  tl_block = saved;
  tl_runner = saved_runner;
}

}  // namespace seqrec::emu

// ---- the runtime API -------------------------------------------------------------------------

namespace {
using seqrec::emu::tl_last_error;

cudaError_t fail(cudaError_t e) {
  tl_last_error = e;
  return e;
}

struct EmuEvent {
  std::chrono::steady_clock::time_point t{};
  bool recorded = false;
};

/// How many devices the emulator shows: SEQREC_EMU_DEVICES (1 to 16), default 1. They are all
/// this process's memory and CPU; more than one lets a data-parallel run under mpirun give each
/// local rank a device ordinal of its own, as on a multi-GPU machine.
int device_count() {
  static const int n = [] {
    const char* v = std::getenv("SEQREC_EMU_DEVICES");
    if (v == nullptr || *v == '\0') return 1;
    char* end = nullptr;
    const long k = std::strtol(v, &end, 10);
    if (*end != '\0' || k < 1 || k > 16)
      seqrec::emu::die(std::string("SEQREC_EMU_DEVICES must be 1 to 16, got '") + v + "'");
    return static_cast<int>(k);
  }();
  return n;
}
bool valid_device(int device) { return device >= 0 && device < device_count(); }
thread_local int tl_device = 0;

/// Live allocations, to refuse frees of pointers cudaMalloc did not return.
std::map<void*, std::size_t>& allocations() {
  static std::map<void*, std::size_t> m;
  return m;
}
}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count();
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  tl_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = tl_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "seqrec host emulator (not a GPU)");
  prop->totalGlobalMem = std::size_t{80} << 30;
  prop->sharedMemPerBlock = seqrec::emu::kDefaultSmem;
  prop->sharedMemPerBlockOptin = seqrec::emu::kOptinSmem;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = seqrec::emu::kMaxThreads;
  prop->multiProcessorCount = 132;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(seqrec::emu::kOptinSmem);
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = seqrec::emu::kMaxThreads;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    default:
      return fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return fail(cudaErrorInvalidValue);
  if (value < 0 || static_cast<std::size_t>(value) > seqrec::emu::kOptinSmem)
    return fail(cudaErrorInvalidValue);
  seqrec::emu::smem_optin()[func] = value;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = tl_last_error;
  tl_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return tl_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    default:
      return "cudaError (emulator: unnamed)";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    default:
      return "unknown error";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  const std::size_t n = size == 0 ? 1 : size;
  // Exactly n bytes (256-aligned, as cudaMalloc's): an overrun leaves the allocation.
  void* p = nullptr;
  if (posix_memalign(&p, 256, n) != 0) return fail(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, n);  // what nobody wrote reads as NaN / -1
  allocations().emplace(p, n);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  auto it = allocations().find(ptr);
  if (it == allocations().end()) return fail(cudaErrorInvalidDevicePointer);
  allocations().erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  std::size_t used = 0;
  for (const auto& [p, n] : allocations()) used += n;
  *total = std::size_t{80} << 30;
  *free_bytes = *total > used ? *total - used : 0;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind) {
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count > 0) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  return cudaMemset(ptr, value, count);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  // Any distinct non-null handle; nothing is ever queued on it.
  *stream = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// Every stream's work runs at its launch, in program order, so a wait has nothing to wait for:
// the emulator checks what overlapped work computes, not that events order it.
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned int) {
  return event == nullptr ? cudaErrorInvalidResourceHandle : cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new EmuEvent);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  return cudaEventCreate(event);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<EmuEvent*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  auto* e = reinterpret_cast<EmuEvent*>(event);
  e->t = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto* a = reinterpret_cast<EmuEvent*>(start);
  const auto* b = reinterpret_cast<EmuEvent*>(end);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

}  // extern "C"
