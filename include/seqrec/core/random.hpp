// Deterministic random numbers, identical on every platform and compiler. The standard library's
// distributions are implementation-defined, so seqrec draws its own: SplitMix64 for streams and a
// stateless counter hash for dropout masks, so a mask depends only on (seed, step, index) and a
// resumed run redraws exactly the masks the uninterrupted run would have drawn.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace seqrec {

/// Stateless 64-bit mix (SplitMix64 finaliser): a good hash of a counter.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// Uniform in [0, 1) from a (seed, stream, index) triple, with no state.
inline double counter_uniform(std::uint64_t seed, std::uint64_t stream,
                              std::uint64_t index) noexcept {
  std::uint64_t h = mix64(seed ^ mix64(stream ^ mix64(index)));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

/// A small, fast, reproducible generator with its own distributions.
class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) noexcept : state_(seed) {}

  std::uint64_t next_u64() noexcept {
    state_ += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1).
  double uniform() noexcept { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias below 2^-32 for n < 2^32).
  std::uint64_t below(std::uint64_t n) noexcept {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next_u64()) * n) >> 64);
  }
  /// Standard normal (Box-Muller, one value per call).
  double normal() noexcept {
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }
  /// Fisher-Yates shuffle of a random-access range.
  template <typename Range>
  void shuffle(Range& r) noexcept {
    const auto n = static_cast<std::uint64_t>(r.size());
    for (std::uint64_t i = n; i > 1; --i) {
      std::uint64_t j = below(i);
      using std::swap;
      swap(r[i - 1], r[j]);
    }
  }
  std::uint64_t state() const noexcept { return state_; }
  void set_state(std::uint64_t s) noexcept { state_ = s; }

 private:
  std::uint64_t state_;
};

}  // namespace seqrec
