// What every CUDA test executable shares: PASS/FAIL lines and their counts, element-wise and
// scalar comparisons against a CPU reference, bit-identity of reruns, host <-> device copies,
// random inputs, and a guard that turns an exception into a FAIL line.
//
// A check passes when every element satisfies |gpu − cpu| ≤ atol + rtol·|cpu|, with atol given
// as a fraction of max|cpu| (outputs differ in scale by orders of magnitude). max_rel_err is
// taken over elements with |cpu| > atol; below that only atol is meaningful.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/core/random.hpp"

namespace seqrec::cuda_check {

using seqrec::Rng;
using seqrec::cuda::Backend;
using seqrec::cuda::DeviceBuffer;

inline int g_pass = 0, g_fail = 0;

/// Built for the host emulator (tests/emu): kernels run on the CPU, so timings mean nothing and
/// the sizes that only time or stress a GPU are left out (each test says which, in a SKIP line).
#if defined(SEQREC_CUDA_EMULATION)
inline constexpr bool kEmulated = true;
#else
inline constexpr bool kEmulated = false;
#endif

/// Prints why part of a test does not run here.
inline void skip(const std::string& what, const std::string& why) {
  std::printf("SKIP %s: %s\n", what.c_str(), why.c_str());
  std::fflush(stdout);
}

inline void record(bool ok, const std::string& op, const std::string& shape,
                   const std::string& detail) {
  (ok ? g_pass : g_fail)++;
  std::printf("%s %s %s %s\n", ok ? "PASS" : "FAIL", op.c_str(), shape.c_str(), detail.c_str());
  std::fflush(stdout);
}

/// Element-wise |got − ref| ≤ atol + rtol·|ref| with atol = atol_frac · max|ref|; names the
/// worst element on failure.
template <typename T, typename A1, typename A2>
void check(const std::string& op, const std::string& shape, const std::vector<T, A1>& got,
           const std::vector<T, A2>& ref, double rtol, double atol_frac) {
  if (got.size() != ref.size()) {
    record(
        false, op, shape,
        "size mismatch: gpu " + std::to_string(got.size()) + " cpu " + std::to_string(ref.size()));
    return;
  }
  double ref_max = 0;
  for (const T& r : ref) ref_max = std::max(ref_max, std::fabs(double(r)));
  const double atol = atol_frac * ref_max;
  double max_abs = 0, max_rel = 0, worst_excess = -1;
  std::size_t bad = 0, worst = 0, nonfinite = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double a = double(got[i]), b = double(ref[i]);
    if (!std::isfinite(a)) {
      ++nonfinite;
      ++bad;
      worst = i;
      worst_excess = INFINITY;
      continue;
    }
    const double e = std::fabs(a - b);
    max_abs = std::max(max_abs, e);
    if (std::fabs(b) > atol && std::fabs(b) > 0) max_rel = std::max(max_rel, e / std::fabs(b));
    const double limit = atol + rtol * std::fabs(b);
    if (e > limit) ++bad;
    if (e - limit > worst_excess) {
      worst_excess = e - limit;
      worst = i;
    }
  }
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "max_abs_err=%.3e max_rel_err=%.3e (rtol %.0e, atol %.0e*max|ref| = %.3e)", max_abs,
                max_rel, rtol, atol_frac, atol);
  std::string detail = buf;
  if (bad > 0) {
    std::snprintf(buf, sizeof buf,
                  " | %zu of %zu elements out of tolerance (%zu non-finite); worst at %zu: gpu "
                  "%.9g cpu %.9g; max|ref| %.3e",
                  bad, ref.size(), nonfinite, worst, double(got[worst]), double(ref[worst]),
                  ref_max);
    detail += buf;
  }
  record(bad == 0, op, shape, detail);
}

/// A scalar check: |got − ref| ≤ rtol·|ref| (+ 1e-300 so 0 = 0 passes).
inline void check_scalar(const std::string& op, const std::string& shape, double got, double ref,
                         double rtol) {
  const double e = std::fabs(got - ref), rel = e / std::max(std::fabs(ref), 1e-300);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "gpu=%.12g cpu=%.12g max_abs_err=%.3e max_rel_err=%.3e (rtol %.0e)", got, ref, e,
                rel, rtol);
  record(std::isfinite(got) && e <= rtol * std::fabs(ref) + 1e-300, op, shape, buf);
}

/// Bit-for-bit equality: `what` says why they must agree (default: two runs of a deterministic
/// op, recorded as op + ".deterministic").
template <typename T, typename A1, typename A2>
void check_identical(const std::string& op, const std::string& shape, const std::vector<T, A1>& a,
                     const std::vector<T, A2>& b, const std::string& why = "") {
  std::size_t diff = 0;
  const std::size_t m = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < m; ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) ++diff;
  const bool rerun = why.empty();
  record(diff == 0 && a.size() == b.size(), rerun ? op + ".deterministic" : op, shape,
         std::to_string(diff) + " of " + std::to_string(b.size()) + " elements differ " +
             (rerun ? std::string("between two runs (must be 0)") : "(" + why + ")") +
             (a.size() != b.size() ? "; SIZE MISMATCH" : ""));
}

template <typename T, typename A>
DeviceBuffer<T> upload(Backend& be, const std::vector<T, A>& h) {
  auto d = be.buffer<T>(h.size());
  if (!h.empty())
    SEQREC_CUDA_CHECK(
        cudaMemcpyAsync(d.data(), h.data(), d.bytes(), cudaMemcpyHostToDevice, be.stream()));
  be.synchronize();
  return d;
}

/// Copies h into d starting at element `at`.
template <typename T, typename A>
void upload_into(Backend& be, DeviceBuffer<T>& d, const std::vector<T, A>& h, std::size_t at = 0) {
  if (!h.empty())
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(d.data() + at, h.data(), h.size() * sizeof(T),
                                      cudaMemcpyHostToDevice, be.stream()));
  be.synchronize();
}

template <typename T>
std::vector<T> download(Backend& be, const DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  if (!h.empty())
    SEQREC_CUDA_CHECK(
        cudaMemcpyAsync(h.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  return h;
}

/// The first `count` elements at device address p.
template <typename T>
std::vector<T> download_ptr(Backend& be, const T* p, std::size_t count) {
  std::vector<T> h(count);
  if (count > 0)
    SEQREC_CUDA_CHECK(
        cudaMemcpyAsync(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  return h;
}

inline std::vector<float> normal(Rng& rng, std::size_t n, double sd = 1.0, double mean = 0.0) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(mean + sd * rng.normal());
  return v;
}

inline std::string shape_str(std::initializer_list<std::pair<const char*, std::int64_t>> dims) {
  std::string s;
  for (const auto& [k, v] : dims)
    s += (s.empty() ? "" : ",") + std::string(k) + "=" + std::to_string(v);
  return s;
}

/// Whether a CUDA device answers; prints the reason when not (the caller then exits 77, which
/// ctest reports as skipped).
inline bool device_answers() {
  std::string why;
  if (seqrec::cuda::cuda_device_available(&why) > 0) return true;
  std::printf("no CUDA device (cudaGetDeviceCount: %s), skipping\n", why.c_str());
  return false;
}

/// Prints the backend's device: name, architecture, SM count.
inline void print_device(int device = 0) {
  cudaDeviceProp prop{};
  SEQREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
}

/// Prints the summary line; the exit status: 0 iff every check passed (and some ran).
inline int summary() {
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 && g_pass > 0 ? 0 : 1;
}

/// The main of a CUDA test executable: exit 77 (ctest: skipped) when no device answers; else
/// prints the device, runs body(backend, rng) with an Rng seeded by `seed` (an exception escaping
/// it becomes a FAIL "setup" line) and returns the summary's exit status.
template <typename Body>
int run_checks(std::uint64_t seed, Body&& body) {
  if (!device_answers()) return 77;
  try {
    Backend be(0);
    print_device();
    Rng rng(seed);
    body(be, rng);
  } catch (const std::exception& e) {
    record(false, "setup", "-", std::string("exception: ") + e.what());
  }
  return summary();
}

/// Runs f; an exception becomes a FAIL line naming op and shape.
template <typename F>
void guarded(const std::string& op, const std::string& shape, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    record(false, op, shape, std::string("exception: ") + e.what());
  }
}

}  // namespace seqrec::cuda_check
