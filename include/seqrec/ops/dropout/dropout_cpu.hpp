// Inverted dropout with a counter-based mask: element i of a site is kept iff
// hash(key, i) ≥ p, where key mixes the run seed, the optimiser step and the site. The mask needs
// no RNG state, so a resumed run draws exactly the masks of the uninterrupted one. The mask is
// kept (one byte per element) for the backward.
#pragma once

#include <cstdint>
#include <vector>

#include "seqrec/core/random.hpp"

namespace seqrec::ops {

/// In place: x ← x · keep / (1 − p). mask receives keep (0/1). p == 0 is the identity.
/// Packed rows: with a row map `rows` (n / d entries), element i of x is element
/// rows[i / d]·d + i mod d of the full (B·L, d) array, and that full index is what the mask
/// hashes — a model computing only some rows draws exactly the full computation's masks.
template <typename T>
void dropout_forward(T* x, std::uint8_t* mask, std::int64_t n, double p, std::uint64_t key,
                     const std::int32_t* rows = nullptr, std::int64_t d = 1) {
  if (p <= 0.0) return;
  const T scale = T(1.0 / (1.0 - p));
  // Compare the top 53 bits against p·2^53 as integers: no float conversion per element.
  const std::uint64_t threshold = static_cast<std::uint64_t>(p * 9007199254740992.0);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t full = i;
    if (rows != nullptr) {
      const std::int64_t r = i / d;
      full = static_cast<std::int64_t>(rows[r]) * d + (i - r * d);
    }
    const std::uint8_t keep = (mix64(key + static_cast<std::uint64_t>(full)) >> 11) >= threshold;
    mask[i] = keep;
    x[i] = keep ? x[i] * scale : T(0);
  }
}

/// In place: dx ← dx · keep / (1 − p).
template <typename T>
void dropout_backward(T* dx, const std::uint8_t* mask, std::int64_t n, double p) {
  if (p <= 0.0) return;
  const T scale = T(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) dx[i] = mask[i] ? dx[i] * scale : T(0);
}

/// The key of one dropout site at one step: distinct for every (seed, step, site).
inline std::uint64_t dropout_key(std::uint64_t seed, std::uint64_t step, std::uint64_t site) {
  return mix64(mix64(seed ^ 0xd1b54a32d192ed03ULL) ^ mix64(step * 1024 + site));
}

}  // namespace seqrec::ops
