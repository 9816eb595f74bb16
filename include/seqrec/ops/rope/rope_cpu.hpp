// Rotary position embedding (Su et al.) applied in place to the Q and K parts of a fused QKV
// buffer, every head, with the half-split pairing of GPT-NeoX / Qwen: within a head of width dh,
// element i pairs with i + dh/2 and the pair is rotated by angle pos · base^(−2i/dh). The
// backward is the same rotation by the opposite angle (a rotation's transpose is its inverse).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace seqrec::ops {

struct RopeShape {
  std::int64_t batch, length, dim, heads;
  double base = 10000.0;
};

/// qkv (B·L, 3D): Q and K of every head rotated by the angle of their slot l (0 … L−1);
/// sign = +1 forward, −1 for the backward on dqkv.
template <typename T>
void rope_apply(const RopeShape& s, T* qkv, int sign) {
  const std::int64_t L = s.length, D = s.dim, dh = D / s.heads, half = dh / 2;
  std::vector<T> cs(static_cast<std::size_t>(L * half)), sn(cs.size());
  for (std::int64_t l = 0; l < L; ++l)
    for (std::int64_t i = 0; i < half; ++i) {
      const double theta = double(l) * std::pow(s.base, -2.0 * double(i) / double(dh));
      cs[l * half + i] = static_cast<T>(std::cos(theta));
      sn[l * half + i] = static_cast<T>(sign * std::sin(theta));
    }
#pragma omp parallel for schedule(static) if (s.batch * L * D > 32768)
  for (std::int64_t r = 0; r < s.batch * L; ++r) {
    const std::int64_t l = r % L;
    for (std::int64_t part = 0; part < 2; ++part) {  // Q then K
      for (std::int64_t h = 0; h < s.heads; ++h) {
        T* v = qkv + r * 3 * D + part * D + h * dh;
        for (std::int64_t i = 0; i < half; ++i) {
          const T c = cs[l * half + i], n = sn[l * half + i];
          const T a = v[i], b = v[i + half];
          v[i] = a * c - b * n;
          v[i + half] = b * c + a * n;
        }
      }
    }
  }
}

}  // namespace seqrec::ops
