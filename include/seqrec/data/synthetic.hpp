// The embedded default dataset: interaction sequences, item titles and item "text embeddings"
// generated in code, so examples and tests run with no download.
//
// The generator has structure a sequence model can learn and a popularity model cannot:
//   - each item i has integer latent factors f_i in {-2..2}^F and a popularity rank r_i (a random
//     permutation), giving a Zipf-like prior weight 1 / (r_i + 1);
//   - each user has an integer taste vector u in {-2..2}^F;
//   - a fixed transition map P (a signed permutation of the F factor axes) turns the last item's
//     factors into the direction the next item is drawn towards;
//   - the next item is drawn from a softmax (base 2) over the items the user has not seen yet, of
//         score_i = (kTransition * <f_i, P f_last> + kTaste * <f_i, u>) / 4 - log2(r_i + 1)
//     (the first item has no transition term).
// Text embeddings are unit vectors correlated with the factors: normalize(2 Q f_i + noise) for a
// random {-1, 0, 1} matrix Q (text_dim, F) and small integer noise; titles name the item's
// dominant factor ("genre") plus a random noun.
//
// Everything is integer arithmetic on seqrec::Rng draws (scores, softmax weights from a table of
// 2^(-j/4) constants, sampling) except the final normalisation of the text vectors, which uses
// only correctly rounded IEEE operations (sqrt, division) on exactly representable integers; so
// the output is bit-identical on every platform, compiler and optimisation level. Each user has
// its own random stream, so changing `users` keeps the sequences of the first users unchanged.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/data/interactions.hpp"

namespace seqrec::data {

/// Sizes and seed of the synthetic dataset.
struct SyntheticOptions {
  std::int32_t users = 3000;
  std::int32_t items = 500;
  std::int32_t factors = 8;    // latent dimensions F
  std::int32_t text_dim = 32;  // width of the text embeddings (0: none)
  std::int32_t min_len = 5;    // sequence length, uniform in [min_len, max_len]
  std::int32_t max_len = 30;   // at most `items` (items do not repeat within a user)
  std::uint64_t seed = 2024;
};

/// A generated dataset: the log, titles and text embeddings of every item.
struct SyntheticData {
  InteractionLog log;                       // raw item ids 1..items, raw users 1..users
  ItemTitles items;                         // a made-up title per item
  std::vector<std::int64_t> text_item_ids;  // raw ids of the rows of `text`
  std::vector<float> text;                  // (items, text_dim) row-major, unit rows, a "text
  std::int32_t text_dim = 0;                //   embedding" correlated with the item's factors
};

namespace detail {

inline constexpr std::int64_t kSynTransition = 3;  // weight of <f_i, P f_last>
inline constexpr std::int64_t kSynTaste = 2;       // weight of <f_i, u>
inline constexpr std::int32_t kSynUnit = 4;        // score units per bit (factor 2 of weight)
inline constexpr std::int32_t kSynMaxBits = 40;    // items 2^40 times less likely than the best: 0
// round(2^16 * 2^(-j/4)), j = 0..3.
inline constexpr std::array<std::int64_t, 4> kSynExp2Quarter = {65536, 55109, 46341, 38968};

/// Approximately 4 * log2(x) for x >= 1: the bit position and the next two mantissa bits.
inline std::int32_t log2_quarters(std::uint64_t x) {
  const int e = std::bit_width(x) - 1;
  const auto frac = static_cast<std::int32_t>(((x << 2) >> e) & 3u);
  return 4 * e + frac;
}

/// A random stream per (seed, purpose, index).
inline Rng synthetic_stream(std::uint64_t seed, std::uint64_t purpose, std::uint64_t index) {
  return Rng(mix64(mix64(seed) ^ mix64(purpose ^ mix64(index))));
}

inline std::int32_t draw_factor(Rng& rng) { return static_cast<std::int32_t>(rng.below(5)) - 2; }

inline void check_synthetic_options(const SyntheticOptions& o) {
  auto bad = [](const std::string& what, std::int64_t v) {
    throw Error("SyntheticOptions: " + what + ", got " + std::to_string(v));
  };
  if (o.users < 1) bad("users must be at least 1", o.users);
  if (o.items < 1) bad("items must be at least 1", o.items);
  if (o.factors < 1 || o.factors > 1024) bad("factors must be in [1, 1024]", o.factors);
  if (o.text_dim < 0) bad("text_dim must be non-negative", o.text_dim);
  if (o.min_len < 1) bad("min_len must be at least 1", o.min_len);
  if (o.max_len < o.min_len) bad("max_len must be at least min_len", o.max_len);
  if (o.max_len > o.items) bad("max_len must be at most items (no repeats)", o.max_len);
}

inline std::string synthetic_title(std::int64_t id, std::int32_t genre, Rng& rng) {
  static constexpr std::array<const char*, 16> kGenre = {
      "Crimson", "Silent", "Golden", "Frozen", "Electric", "Hidden", "Wild",   "Broken",
      "Ancient", "Neon",   "Velvet", "Iron",   "Lunar",    "Savage", "Gentle", "Cosmic"};
  static constexpr std::array<const char*, 24> kNoun = {
      "Harbor",  "Empire",  "Garden",   "Circuit", "Kingdom", "Voyage",  "Signal",  "Forest",
      "Machine", "Legacy",  "Frontier", "Echo",    "Paradox", "Horizon", "Citadel", "Orchard",
      "Engine",  "Lantern", "Meridian", "Atlas",   "Canyon",  "Serpent", "Tide",    "Chronicle"};
  std::string t = kGenre[static_cast<std::size_t>(genre) % kGenre.size()];
  t += ' ';
  t += kNoun[rng.below(kNoun.size())];
  t += " #";
  t += std::to_string(id);
  return t;
}

}  // namespace detail

/// Generates the synthetic dataset for `o`, bit-identical for equal options on every platform.
/// Throws seqrec::Error on inconsistent options.
inline SyntheticData make_synthetic(const SyntheticOptions& o = {}) {
  detail::check_synthetic_options(o);
  const auto I = static_cast<std::size_t>(o.items);
  const auto F = static_cast<std::size_t>(o.factors);
  enum : std::uint64_t { kFactors = 1, kPopularity, kTransition, kUsers, kTitles, kText };

  // Item factors, stored factor-major: fac[k * I + i]                       (F, I)
  std::vector<std::int32_t> fac(F * I);
  {
    Rng rng = detail::synthetic_stream(o.seed, kFactors, 0);
    for (std::size_t i = 0; i < I; ++i) {
      for (std::size_t k = 0; k < F; ++k) fac[k * I + i] = detail::draw_factor(rng);
    }
  }
  // Popularity penalty in score units: 4 * log2(rank + 1).                   (I,)
  std::vector<std::int32_t> pop_penalty(I);
  {
    std::vector<std::uint64_t> rank(I);
    for (std::size_t i = 0; i < I; ++i) rank[i] = i;
    Rng rng = detail::synthetic_stream(o.seed, kPopularity, 0);
    rng.shuffle(rank);
    for (std::size_t i = 0; i < I; ++i) pop_penalty[i] = detail::log2_quarters(rank[i] + 1);
  }
  // Transition map P: (P f)[k] = sign[k] * f[axis[k]].
  std::vector<std::size_t> axis(F);
  std::vector<std::int32_t> sign(F);
  {
    Rng rng = detail::synthetic_stream(o.seed, kTransition, 0);
    for (std::size_t k = 0; k < F; ++k) axis[k] = k;
    rng.shuffle(axis);
    for (std::size_t k = 0; k < F; ++k) sign[k] = rng.below(2) ? 1 : -1;
  }
  // Softmax weights by distance below the best score: W[d] = 2^40 * 2^(-d/4).
  constexpr std::int32_t kTable = detail::kSynUnit * (detail::kSynMaxBits + 1);
  std::array<std::int64_t, kTable> weight_of{};
  for (std::int32_t d = 0; d < kTable; ++d) {
    weight_of[static_cast<std::size_t>(d)] =
        (detail::kSynExp2Quarter[static_cast<std::size_t>(d % detail::kSynUnit)] << 24) >>
        (d / detail::kSynUnit);
  }

  SyntheticData out;
  out.log.source = "synthetic(users=" + std::to_string(o.users) +
                   ", items=" + std::to_string(o.items) + ", seed=" + std::to_string(o.seed) + ")";
  const std::size_t mean_len = static_cast<std::size_t>(o.min_len + o.max_len) / 2 + 1;
  out.log.user.reserve(static_cast<std::size_t>(o.users) * mean_len);
  out.log.item.reserve(static_cast<std::size_t>(o.users) * mean_len);

  std::vector<std::int64_t> score(I);  // (I,) in score units
  std::vector<char> seen(I, 0);
  std::vector<std::size_t> picked;
  std::vector<std::int64_t> taste(F), direction(F);
  for (std::int32_t u = 0; u < o.users; ++u) {
    Rng rng = detail::synthetic_stream(o.seed, kUsers, static_cast<std::uint64_t>(u));
    for (std::size_t k = 0; k < F; ++k) taste[k] = detail::draw_factor(rng);
    const auto len = static_cast<std::size_t>(
        o.min_len + static_cast<std::int32_t>(
                        rng.below(static_cast<std::uint64_t>(o.max_len - o.min_len + 1))));
    picked.clear();
    for (std::size_t step = 0; step < len; ++step) {
      // direction = kTaste * u + kTransition * P f_last                      (F,)
      for (std::size_t k = 0; k < F; ++k) {
        direction[k] = detail::kSynTaste * taste[k];
        if (step > 0) {
          direction[k] += detail::kSynTransition * sign[k] * fac[axis[k] * I + picked.back()];
        }
      }
      // score_i = <f_i, direction> - 4 log2(rank_i + 1), in quarter-bits       (I,)
      for (std::size_t i = 0; i < I; ++i) score[i] = -std::int64_t{pop_penalty[i]};
      for (std::size_t k = 0; k < F; ++k) {
        const std::int64_t c = direction[k];
        const std::int32_t* row = fac.data() + k * I;
        for (std::size_t i = 0; i < I; ++i) score[i] += c * row[i];
      }
      std::int64_t best = std::numeric_limits<std::int64_t>::min();
      for (std::size_t i = 0; i < I; ++i) {
        if (!seen[i] && score[i] > best) best = score[i];
      }
      std::int64_t total = 0;
      for (std::size_t i = 0; i < I; ++i) {
        const std::int64_t d = best - score[i];
        const std::int64_t w =
            (seen[i] || d >= kTable) ? 0 : weight_of[static_cast<std::size_t>(d)];
        score[i] = w;  // reuse as weight
        total += w;
      }
      std::int64_t r = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(total)));
      std::size_t chosen = 0;
      for (std::size_t i = 0; i < I; ++i) {
        if (r < score[i]) {
          chosen = i;
          break;
        }
        r -= score[i];
      }
      seen[chosen] = 1;
      picked.push_back(chosen);
      out.log.user.push_back(u + 1);
      out.log.item.push_back(static_cast<std::int64_t>(chosen) + 1);
    }
    for (std::size_t i : picked) seen[i] = 0;
  }

  // Titles: the dominant factor (axis and sign) names the genre.
  {
    Rng rng = detail::synthetic_stream(o.seed, kTitles, 0);
    out.items.item.reserve(I);
    out.items.title.reserve(I);
    for (std::size_t i = 0; i < I; ++i) {
      std::size_t best_k = 0;
      for (std::size_t k = 1; k < F; ++k) {
        if (std::abs(fac[k * I + i]) > std::abs(fac[best_k * I + i])) best_k = k;
      }
      const std::int32_t genre =
          static_cast<std::int32_t>(2 * (best_k % 8) + (fac[best_k * I + i] < 0 ? 1 : 0));
      const auto id = static_cast<std::int64_t>(i) + 1;
      out.items.item.push_back(id);
      out.items.title.push_back(detail::synthetic_title(id, genre, rng));
    }
  }

  // Text embeddings: normalize(2 Q f_i + noise), noise triangular in [-8, 8].   (I, text_dim)
  out.text_dim = o.text_dim;
  const auto T = static_cast<std::size_t>(o.text_dim);
  out.text_item_ids = out.items.item;
  out.text.assign(I * T, 0.0f);
  if (T > 0) {
    Rng rng = detail::synthetic_stream(o.seed, kText, 0);
    std::vector<std::int32_t> q(T * F);  // (T, F) in {-1, 0, 1}
    for (auto& v : q) v = static_cast<std::int32_t>(rng.below(3)) - 1;
    std::vector<std::int64_t> v(T);
    for (std::size_t i = 0; i < I; ++i) {
      std::int64_t sumsq = 0;
      for (std::size_t t = 0; t < T; ++t) {
        std::int64_t x = 0;
        for (std::size_t k = 0; k < F; ++k) x += q[t * F + k] * fac[k * I + i];
        x = 2 * x + static_cast<std::int64_t>(rng.below(9)) +
            static_cast<std::int64_t>(rng.below(9)) - 8;
        v[t] = x;
        sumsq += x * x;
      }
      if (sumsq == 0) continue;  // leave a zero row rather than divide by zero
      const double norm = std::sqrt(static_cast<double>(sumsq));
      for (std::size_t t = 0; t < T; ++t) {
        out.text[i * T + t] = static_cast<float>(static_cast<double>(v[t]) / norm);
      }
    }
  }
  return out;
}

}  // namespace seqrec::data
