// Full-catalogue ranking ops on the GPU (ops/topk/topk_cuda.cuh) against CPU references, and the
// embedding backward (ops/embedding/embedding_cuda.cuh) at the study's shape with a heavy padding
// run. Prints one line per check,
//   PASS|FAIL <op> <shape> <detail>
// and a summary; exits 0 iff every check passes, 77 (ctest: skipped) when no GPU answers. INFO
// lines report timings (not checked).
//
// topk_rows and target_rank produce integers and copied scores, so they must match EXACTLY:
//   * topk_rows: the reference is a std::partial_sort of every row by (score descending, index
//     ascending), with NaN above every number (NaNs tie among themselves) and −0 == +0, as the op
//     documents; indices must be equal and values bit-identical to scores[row, index].
//   * target_rank: the reference is the CPU evaluator's own eval::pessimistic_rank (1-based,
//     pessimistic ties, NaN ahead of the target, optional excluded items), called here directly.
// Scores are built with many ties (quantised values, few-level rows, constant rows, duplicated
// entries) so that the tie rules decide the answers, and some rows carry NaN, ±inf, ±0.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "seqrec/backend/cuda.cuh"
#include "seqrec/core/random.hpp"
#include "seqrec/eval/metrics.hpp"
#include "seqrec/ops/embedding/embedding_cpu.hpp"
#include "seqrec/ops/embedding/embedding_cuda.cuh"
#include "seqrec/ops/topk/topk_cuda.cuh"

namespace {

using namespace seqrec::cuda_check;

using seqrec::Rng;
using seqrec::cuda::Backend;
using seqrec::cuda::DeviceBuffer;

/// Median wall time in ms of `reps` runs of f on the backend's stream (after one warm-up run).
template <typename F>
double time_ms(Backend& be, int reps, F&& f) {
  f();
  be.synchronize();
  cudaEvent_t a, b;
  SEQREC_CUDA_CHECK(cudaEventCreate(&a));
  SEQREC_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    SEQREC_CUDA_CHECK(cudaEventRecord(a, be.stream()));
    f();
    SEQREC_CUDA_CHECK(cudaEventRecord(b, be.stream()));
    SEQREC_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    SEQREC_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void info(const std::string& what, const std::string& shape, double ms) {
  std::printf("INFO %s %s: %.4f ms (median)\n", what.c_str(), shape.c_str(), ms);
  std::fflush(stdout);
}

// ---- Scores with ties ---------------------------------------------------------------------------

/// (B, I) scores; the kind of row cycles with b: 0 quantised normal (steps of 1/4: long tie
/// groups), 1 continuous normal with ~5% of entries copied from other positions (isolated ties),
/// 2 three levels {0, 1, 2} (ties at every cut), 3 a constant row, 4 continuous normal. With
/// `specials`, every row also gets NaN (both signs), ±inf and ±0 at random positions.
std::vector<float> make_scores(Rng& rng, std::int64_t B, std::int64_t I, bool specials) {
  std::vector<float> s(static_cast<std::size_t>(B * I));
  for (std::int64_t b = 0; b < B; ++b) {
    float* r = s.data() + b * I;
    switch (b % 5) {
      case 0:
        for (std::int64_t i = 0; i < I; ++i) r[i] = float(std::round(rng.normal() * 8.0) / 4.0);
        break;
      case 1:
        for (std::int64_t i = 0; i < I; ++i) r[i] = float(rng.normal());
        for (std::int64_t i = 0; i < I; ++i)
          if (rng.uniform() < 0.05) r[i] = r[rng.below(static_cast<std::uint64_t>(I))];
        break;
      case 2:
        for (std::int64_t i = 0; i < I; ++i) r[i] = float(rng.below(3));
        break;
      case 3:
        for (std::int64_t i = 0; i < I; ++i) r[i] = 0.5f;
        break;
      default:
        for (std::int64_t i = 0; i < I; ++i) r[i] = float(rng.normal());
        break;
    }
    if (specials) {
      const float sp[] = {std::numeric_limits<float>::quiet_NaN(),
                          -std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          -0.0f,
                          0.0f,
                          std::numeric_limits<float>::infinity(),
                          -0.0f};
      for (float v : sp) r[rng.below(static_cast<std::uint64_t>(I))] = v;
    }
  }
  return s;
}

/// The order topk_rows documents: a before b when a's score is higher (NaN highest, NaNs tie,
/// −0 == +0), or the scores tie and a's index is lower.
bool ranks_before(float a, std::int32_t ia, float b, std::int32_t ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// ---- topk_rows ----------------------------------------------------------------------------------
void test_topk(Backend& be, Rng& rng, std::int64_t B, std::int64_t I, int k, bool specials) {
  const std::string shape =
      shape_str({{"B", B}, {"I", I}, {"k", k}}) + (specials ? ",specials" : "");
  const auto scores = make_scores(rng, B, I, specials);

  std::vector<std::int32_t> ref_idx(static_cast<std::size_t>(B * k));
  std::vector<float> ref_val(ref_idx.size());
  std::vector<std::int32_t> order(static_cast<std::size_t>(I));
  for (std::int64_t b = 0; b < B; ++b) {
    const float* r = scores.data() + b * I;
    for (std::int64_t i = 0; i < I; ++i) order[i] = static_cast<std::int32_t>(i);
    std::partial_sort(
        order.begin(), order.begin() + k, order.end(),
        [&](std::int32_t x, std::int32_t y) { return ranks_before(r[x], x, r[y], y); });
    for (int j = 0; j < k; ++j) {
      ref_idx[b * k + j] = order[j];
      ref_val[b * k + j] = r[order[j]];
    }
  }

  auto dscores = upload(be, scores);
  auto didx = be.buffer<std::int32_t>(ref_idx.size()),
       didx2 = be.buffer<std::int32_t>(ref_idx.size());
  auto dval = be.buffer<float>(ref_idx.size()), dval2 = be.buffer<float>(ref_idx.size());
  seqrec::cuda::topk_rows(be, dscores.data(), B, I, k, didx.data(), dval.data());
  const auto gidx = download(be, didx);
  const auto gval = download(be, dval);

  std::size_t bad_idx = 0, bad_val = 0, first = ref_idx.size();
  for (std::size_t x = 0; x < ref_idx.size(); ++x) {
    const bool bi = gidx[x] != ref_idx[x];
    const bool bv = std::memcmp(&gval[x], &ref_val[x], sizeof(float)) != 0;
    bad_idx += bi;
    bad_val += bv;
    if ((bi || bv) && first == ref_idx.size()) first = x;
  }
  std::string detail = std::to_string(bad_idx) + " indices and " + std::to_string(bad_val) +
                       " values (bitwise) of " + std::to_string(ref_idx.size()) +
                       " differ (must be 0)";
  if (first < ref_idx.size()) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "; first at row %lld rank %lld: gpu (%d, %.9g) cpu (%d, %.9g)",
                  static_cast<long long>(first / k), static_cast<long long>(first % k), gidx[first],
                  double(gval[first]), ref_idx[first], double(ref_val[first]));
    detail += buf;
  }
  record(bad_idx == 0 && bad_val == 0, "topk_rows", shape, detail);

  seqrec::cuda::topk_rows(be, dscores.data(), B, I, k, didx2.data(), dval2.data());
  check_identical("topk_rows.idx", shape, download(be, didx2), gidx);
  check_identical("topk_rows.val", shape, download(be, dval2), gval);
}

// ---- target_rank --------------------------------------------------------------------------------
void test_target_rank(Backend& be, Rng& rng, std::int64_t B, std::int64_t I, bool specials) {
  const std::string shape = shape_str({{"B", B}, {"I", I}}) + (specials ? ",specials" : "");
  const auto scores = make_scores(rng, B, I, specials);
  std::vector<std::int32_t> target(static_cast<std::size_t>(B));
  for (std::int64_t b = 0; b < B; ++b) {
    const float* r = scores.data() + b * I;
    target[b] = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(I)));
    if (specials && b % 3 == 0) {  // aim at a special value: NaN, inf or a zero, when present
      for (std::int64_t i = 0; i < I; ++i)
        if (std::isnan(r[i]) || std::isinf(r[i]) || r[i] == 0.f) {
          if (rng.uniform() < 0.5) {
            target[b] = static_cast<std::int32_t>(i);
            break;
          }
        }
    }
  }
  // Exclusion lists like a history: up to 40 entries, with repeats, the target itself sometimes,
  // and out-of-range indices (special tokens give negative columns in the evaluator).
  std::vector<std::int32_t> offsets{0}, items;
  for (std::int64_t b = 0; b < B; ++b) {
    const auto len = rng.below(41);
    for (std::uint64_t j = 0; j < len; ++j) {
      const double u = rng.uniform();
      std::int32_t e;
      if (u < 0.2 && offsets.back() < static_cast<std::int32_t>(items.size()))
        e = items[offsets.back() + rng.below(items.size() - offsets.back())];  // a repeat
      else if (u < 0.25)
        e = target[b];
      else if (u < 0.3)
        e = static_cast<std::int32_t>(rng.below(4)) - 4;  // -4 … -1
      else if (u < 0.32)
        e = static_cast<std::int32_t>(I + rng.below(3));  // I … I + 2
      else
        e = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(I)));
      items.push_back(e);
    }
    offsets.push_back(static_cast<std::int32_t>(items.size()));
  }

  std::vector<std::int32_t> ref_plain(B), ref_excl(B);
  for (std::int64_t b = 0; b < B; ++b) {
    const std::span<const float> row(scores.data() + b * I, static_cast<std::size_t>(I));
    ref_plain[b] = static_cast<std::int32_t>(seqrec::eval::pessimistic_rank<float>(row, target[b]));
    std::vector<std::int64_t> ex(items.begin() + offsets[b], items.begin() + offsets[b + 1]);
    ref_excl[b] =
        static_cast<std::int32_t>(seqrec::eval::pessimistic_rank<float>(row, target[b], ex));
  }

  auto dscores = upload(be, scores);
  auto dtarget = upload(be, target), doff = upload(be, offsets);
  // items may be empty; give the device a non-empty buffer anyway.
  std::vector<std::int32_t> items_nz = items.empty() ? std::vector<std::int32_t>{0} : items;
  auto ditems = upload(be, items_nz);
  auto drank = be.buffer<std::int32_t>(B), drank2 = be.buffer<std::int32_t>(B);

  auto compare = [&](const std::string& op, const std::vector<std::int32_t>& got,
                     const std::vector<std::int32_t>& ref) {
    std::size_t bad = 0, first = ref.size();
    for (std::size_t b = 0; b < ref.size(); ++b)
      if (got[b] != ref[b]) {
        ++bad;
        if (first == ref.size()) first = b;
      }
    std::string detail =
        std::to_string(bad) + " of " + std::to_string(ref.size()) + " ranks differ (must be 0)";
    if (first < ref.size())
      detail += "; first at row " + std::to_string(first) + ": gpu " + std::to_string(got[first]) +
                " cpu " + std::to_string(ref[first]) + " (target " + std::to_string(target[first]) +
                ", score " + std::to_string(scores[first * I + target[first]]) + ")";
    record(bad == 0, op, shape, detail);
  };

  seqrec::cuda::target_rank(be, dscores.data(), dtarget.data(), B, I, drank.data());
  compare("target_rank", download(be, drank), ref_plain);
  seqrec::cuda::target_rank(be, dscores.data(), dtarget.data(), B, I, drank.data(), doff.data(),
                            ditems.data());
  const auto got_excl = download(be, drank);
  compare("target_rank.excluded", got_excl, ref_excl);
  seqrec::cuda::target_rank(be, dscores.data(), dtarget.data(), B, I, drank2.data(), doff.data(),
                            ditems.data());
  check_identical("target_rank.excluded", shape, download(be, drank2), got_excl);
}

/// A target outside [0, I) gives rank 0.
void test_target_rank_invalid(Backend& be) {
  const std::int64_t B = 3, I = 5;
  std::vector<float> scores(B * I, 1.f);
  std::vector<std::int32_t> target{-1, 5, 2};
  auto ds = upload(be, scores);
  auto dt = upload(be, target);
  auto dr = be.buffer<std::int32_t>(B);
  seqrec::cuda::target_rank(be, ds.data(), dt.data(), B, I, dr.data());
  const auto r = download(be, dr);
  // Row 2: all five scores equal, so the target has 4 items tied ahead of it: rank 5.
  record(r[0] == 0 && r[1] == 0 && r[2] == 5, "target_rank.invalid_target", "B=3,I=5",
         "ranks " + std::to_string(r[0]) + " " + std::to_string(r[1]) + " " + std::to_string(r[2]) +
             " (want 0 0 5)");
}

// ---- Embedding backward -------------------------------------------------------------------------
enum class TokenPattern { half_padding, structured, single };

/// tokens (N): half_padding — 50% token 0, 10% from 8 hot tokens, the rest uniform over [0, V);
/// structured — runs whose sorted boundaries fall just before, on and after the 32-position
/// windows of the backward (counts 31, 1, 32, 33, 95, 1, 2, 64, 3, 32, … for tokens 0, 1, 2, …)
/// placed at shuffled rows; single — every row the same token.
std::vector<std::int32_t> make_tokens(Rng& rng, std::int64_t n, std::int64_t vocab,
                                      TokenPattern p) {
  std::vector<std::int32_t> tok(static_cast<std::size_t>(n));
  switch (p) {
    case TokenPattern::half_padding:
      for (auto& t : tok) {
        const double u = rng.uniform();
        t = u < 0.5   ? 0
            : u < 0.6 ? std::int32_t(1 + rng.below(std::min<std::int64_t>(8, vocab - 1)))
                      : std::int32_t(rng.below(static_cast<std::uint64_t>(vocab)));
      }
      break;
    case TokenPattern::structured: {
      const std::int64_t counts[] = {31, 1, 32, 33, 95, 1, 2, 64, 3, 32, 128, 7};
      std::int64_t pos = 0;
      std::int32_t t = 0;
      for (int c = 0; pos < n; c = (c + 1) % 12, ++t)
        for (std::int64_t j = 0; j < counts[c] && pos < n; ++j)
          tok[pos++] = static_cast<std::int32_t>(t % vocab);
      rng.shuffle(tok);
      break;
    }
    case TokenPattern::single:
      for (auto& t : tok) t = static_cast<std::int32_t>(vocab - 1);
      break;
  }
  return tok;
}

/// Forward and backward against the CPU op; `misalign` offsets the device dx and dtable (and
/// table and x) by one float, which forces the scalar (non-float4) kernels.
void test_embedding(Backend& be, Rng& rng, std::int64_t n, std::int64_t d, std::int64_t vocab,
                    TokenPattern p, bool misalign, bool time_it) {
  const char* pname = p == TokenPattern::half_padding ? "half_padding"
                      : p == TokenPattern::structured ? "structured"
                                                      : "single";
  const std::string shape =
      shape_str({{"N", n}, {"D", d}, {"V", vocab}}) + "," + pname + (misalign ? ",misaligned" : "");
  const float scale = std::sqrt(float(d));
  const auto tok = make_tokens(rng, n, vocab, p);
  auto table = normal(rng, vocab * d), dx = normal(rng, n * d), dt0 = normal(rng, vocab * d);
  std::vector<float> x(n * d), dt = dt0;
  seqrec::ops::embedding_forward(tok.data(), table.data(), x.data(), n, d, scale);
  seqrec::ops::embedding_backward(tok.data(), dx.data(), dt.data(), n, d, scale);

  const std::int64_t off = misalign ? 1 : 0;
  auto pad = [&](const std::vector<float>& v) {
    std::vector<float> r(v.size() + off, 0.f);
    std::copy(v.begin(), v.end(), r.begin() + off);
    return r;
  };
  auto dtok = upload(be, tok);
  auto dtable = upload(be, pad(table)), ddx = upload(be, pad(dx)), ddt = upload(be, pad(dt0));
  auto dxo = be.buffer<float>(n * d + off);
  seqrec::cuda::embedding_forward(be, dtok.data(), dtable.data() + off, dxo.data() + off, n, d,
                                  scale);
  seqrec::cuda::embedding_backward(be, dtok.data(), ddx.data() + off, ddt.data() + off, n, d, vocab,
                                   scale);
  // Forward: one fp32 multiply per element on both sides: bit-exact.
  check("embedding.x", shape, download_ptr(be, dxo.data() + off, n * d), x, 0.0, 0.0);
  // Backward: per token a sum of up to ~N/2 rows (the padding run) in another order: CPU adds row
  // by row into dtable, GPU sums 32-row windows then the windows in order, then adds to dtable.
  // Terms are N(0,1)·sqrt(D) = N(0, 32²) at D = 1024; the padding row's sum of 10240 terms has
  // sd ~3.2e3 and fp32 rounding of either order ~eps·sqrt(n)·|partial sums| ~ 1e-2; atol is
  // 1e-5·max|dtable| (~0.1 here) and rtol 1e-4, as in test_cuda_ops.cu.
  const auto dt_gpu = download_ptr(be, ddt.data() + off, vocab * d);
  check("embedding.dtable", shape, dt_gpu, dt, 1e-4, 1e-5);
  SEQREC_CUDA_CHECK(cudaMemcpyAsync(ddt.data() + off, dt0.data(), dt0.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, be.stream()));
  seqrec::cuda::embedding_backward(be, dtok.data(), ddx.data() + off, ddt.data() + off, n, d, vocab,
                                   scale);
  check_identical("embedding.dtable", shape, download_ptr(be, ddt.data() + off, vocab * d), dt_gpu);

  if (time_it) {
    info("embedding_backward", shape, time_ms(be, 20, [&] {
           seqrec::cuda::embedding_backward(be, dtok.data(), ddx.data() + off, ddt.data() + off, n,
                                            d, vocab, scale);
         }));
    info("embedding_forward", shape, time_ms(be, 20, [&] {
           seqrec::cuda::embedding_forward(be, dtok.data(), dtable.data() + off, dxo.data() + off,
                                           n, d, scale);
         }));
  }
}

/// Timings of the ranking ops at evaluation shapes (not checked).
void time_ranking(Backend& be, Rng& rng, std::int64_t B, std::int64_t I) {
  auto scores = upload(be, normal(rng, static_cast<std::size_t>(B * I)));
  std::vector<std::int32_t> target(B);
  for (auto& t : target) t = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(I)));
  auto dt = upload(be, target);
  auto rank = be.buffer<std::int32_t>(B);
  auto idx = be.buffer<std::int32_t>(B * 100);
  auto val = be.buffer<float>(B * 100);
  for (int k : {10, 100})
    info("topk_rows", shape_str({{"B", B}, {"I", I}, {"k", k}}), time_ms(be, 10, [&] {
           seqrec::cuda::topk_rows(be, scores.data(), B, I, k, idx.data(), val.data());
         }));
  info("target_rank", shape_str({{"B", B}, {"I", I}}), time_ms(be, 10, [&] {
         seqrec::cuda::target_rank(be, scores.data(), dt.data(), B, I, rank.data());
       }));
}

}  // namespace

int main() {
  return run_checks(20240917, [](Backend& be, Rng& rng) {
    // topk_rows: k <= 256 takes the block radix select, k > 256 the segmented sort.
    for (auto [b, i, k, sp] : {std::tuple<std::int64_t, std::int64_t, int, bool>{7, 1001, 10, true},
                               {7, 1001, 1, true},
                               {7, 1001, 1001, true},  // k = I: the sort path
                               {7, 1001, 256, true},   // the largest select k
                               {7, 1001, 257, false},  // the smallest sort k
                               {5, 200, 200, true},    // k = I on the select path
                               {3, 5, 5, false},       // I < one tile
                               {4, 1, 1, false},
                               {256, 17000, 10, false},
                               {256, 17000, 100, false},
                               {64, 17000, 100, true}})
      guarded("topk_rows", shape_str({{"B", b}, {"I", i}, {"k", k}}),
              [&] { test_topk(be, rng, b, i, k, sp); });

    for (auto [b, i, sp] : {std::tuple<std::int64_t, std::int64_t, bool>{7, 1001, true},
                            {7, 1001, false},
                            {3, 5, false},
                            {256, 17000, false},
                            {64, 17000, true}})
      guarded("target_rank", shape_str({{"B", b}, {"I", i}}),
              [&] { test_target_rank(be, rng, b, i, sp); });
    guarded("target_rank.invalid_target", "B=3,I=5", [&] { test_target_rank_invalid(be); });

    // Embedding: odd and boundary shapes, the scalar path (misaligned or D % 4 != 0), then the
    // study's shape N = 20480 (batch 1024 × length 20), D = 1024, V ≈ 17k with half padding.
    using TP = TokenPattern;
    for (auto [n, d, v, p, mis] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, TP, bool>{1000, 37, 50,
                                                                         TP::half_padding, false},
          {1000, 36, 50, TP::half_padding, false},
          {20, 36, 50, TP::half_padding, false},  // a single, partial window
          {429, 36, 12, TP::structured, false},   // 429 = one cycle of the counts: exact boundaries
          {429, 37, 12, TP::structured, false},
          {1500, 300, 64, TP::structured, true},
          {1024, 64, 40, TP::single, false},  // one run over every window, N % 32 == 0
          {1000, 64, 40, TP::single, true},   // one run, last window partial, scalar path
          {4096, 1024, 3000, TP::half_padding, true}})
      guarded("embedding", shape_str({{"N", n}, {"D", d}, {"V", v}}),
              [&] { test_embedding(be, rng, n, d, v, p, mis, false); });
    guarded("embedding", "N=20480,D=1024,V=17000,half_padding", [&] {
      test_embedding(be, rng, 20480, 1024, 17000, TokenPattern::half_padding, false, true);
    });

    if (kEmulated) {
      skip("timing ranking", "host emulator");
    } else {
      guarded("timing", "ranking", [&] {
        time_ranking(be, rng, 1024, 17000);
        time_ranking(be, rng, 256, 100000);
      });
    }
  });
}
