// Gradient checks of every CPU op, in double: the loss is Σ w ⊙ y with fixed random weights w,
// so the upstream gradient is w, and every input and parameter gradient is compared with
// central differences (tolerance in support/gradcheck.hpp).
#include <algorithm>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>

#include "seqrec/ops/activation/activation.hpp"
#include "seqrec/ops/attention/attention_cpu.hpp"
#include "seqrec/ops/cross_entropy/cross_entropy_cpu.hpp"
#include "seqrec/ops/dropout/dropout_cpu.hpp"
#include "seqrec/ops/embedding/embedding_cpu.hpp"
#include "seqrec/ops/linear/linear_cpu.hpp"
#include "seqrec/ops/rmsnorm/rmsnorm_cpu.hpp"
#include "support/gradcheck.hpp"

using namespace seqrec;
using test::check_gradient;
using test::dot;
using test::kGradRelTol;
using test::random_vector;

TEST_CASE("linear: gradients wrt input, weight and bias", "[cpu][gradcheck]") {
  const std::int64_t n = 5, in = 4, out = 3;
  auto x = random_vector(n * in, 1), w = random_vector(out * in, 2), b = random_vector(out, 3);
  const auto wy = random_vector(n * out, 4);
  std::vector<double> y(n * out), dx(n * in), dw(out * in, 0.0), db(out, 0.0);
  auto f = [&] {
    ops::linear_forward(x.data(), w.data(), b.data(), y.data(), n, in, out);
    return dot(y, wy);
  };
  f();
  ops::linear_backward(x.data(), w.data(), wy.data(), dx.data(), dw.data(), db.data(), n, in, out);
  CHECK(check_gradient(f, x.data(), dx.data(), x.size()).max_rel_error < kGradRelTol);
  CHECK(check_gradient(f, w.data(), dw.data(), w.size()).max_rel_error < kGradRelTol);
  CHECK(check_gradient(f, b.data(), db.data(), b.size()).max_rel_error < kGradRelTol);
}

TEST_CASE("rmsnorm: gradients wrt input and gain", "[cpu][gradcheck]") {
  const std::int64_t n = 6, d = 8;
  auto x = random_vector(n * d, 5), g = random_vector(d, 6);
  const auto wy = random_vector(n * d, 7);
  std::vector<double> y(n * d), rstd(n), dx(n * d), dg(d, 0.0);
  auto f = [&] {
    ops::rmsnorm_forward(x.data(), g.data(), y.data(), rstd.data(), n, d, 1e-6);
    return dot(y, wy);
  };
  f();
  ops::rmsnorm_backward(x.data(), g.data(), rstd.data(), wy.data(), dx.data(), dg.data(), n, d);
  CHECK(check_gradient(f, x.data(), dx.data(), x.size()).max_rel_error < kGradRelTol);
  CHECK(check_gradient(f, g.data(), dg.data(), g.size()).max_rel_error < kGradRelTol);
}

TEST_CASE("rmsnorm: matches the naive formula", "[cpu]") {
  const std::int64_t n = 3, d = 5;
  auto x = random_vector(n * d, 8), g = random_vector(d, 9);
  std::vector<double> y(n * d), rstd(n);
  ops::rmsnorm_forward(x.data(), g.data(), y.data(), rstd.data(), n, d, 1e-6);
  for (std::int64_t r = 0; r < n; ++r) {
    double ss = 0;
    for (std::int64_t j = 0; j < d; ++j) ss += x[r * d + j] * x[r * d + j];
    const double rms = std::sqrt(ss / d + 1e-6);
    for (std::int64_t j = 0; j < d; ++j)
      CHECK(std::abs(y[r * d + j] - x[r * d + j] / rms * g[j]) < 1e-12);
  }
}

namespace {
/// The attention's largest relative gradient error wrt qkv (400 sampled elements), for the loss
/// Σ w ⊙ out with qkv and w drawn from seed and seed + 1; tokens (B·L), 0 is padding.
double attention_gradient_error(const ops::AttentionShape& s,
                                const std::vector<std::int32_t>& tokens, std::uint64_t seed) {
  const std::int64_t N = s.batch * s.length;
  auto qkv = random_vector(N * 3 * s.dim, seed);
  const auto wy = random_vector(N * s.dim, seed + 1);
  std::vector<double> out(N * s.dim), probs(s.batch * s.heads * s.length * s.length),
      dqkv(qkv.size());
  auto f = [&] {
    ops::attention_forward(s, qkv.data(), tokens.data(), 0, out.data(), probs.data());
    return dot(out, wy);
  };
  f();
  ops::attention_backward(s, qkv.data(), tokens.data(), 0, probs.data(), wy.data(), dqkv.data());
  return check_gradient(f, qkv.data(), dqkv.data(), qkv.size(), 400).max_rel_error;
}
}  // namespace

TEST_CASE("attention: gradients wrt q, k and v with causal and padding masks", "[cpu][gradcheck]") {
  // Row 0 has two padding positions at the front, row 1 none.
  CHECK(attention_gradient_error({2, 5, 6, 2}, {0, 0, 7, 8, 9, 5, 6, 7, 8, 9}, 10) < kGradRelTol);
}

TEST_CASE("attention: causal and padding masks hold", "[cpu]") {
  const ops::AttentionShape s{1, 4, 2, 1};
  auto qkv = random_vector(4 * 3 * 2, 12);
  const std::vector<std::int32_t> tokens = {0, 5, 6, 7};
  std::vector<double> out(8), probs(16);
  ops::attention_forward(s, qkv.data(), tokens.data(), 0, out.data(), probs.data());
  // Padding query 0 attends to itself only; real queries never to padding or to the future.
  CHECK(probs[0] == 1.0);
  for (int i = 1; i < 4; ++i) {
    CHECK(probs[i * 4 + 0] == 0.0);
    double sum = 0;
    for (int j = 0; j < 4; ++j) {
      if (j > i) CHECK(probs[i * 4 + j] == 0.0);
      sum += probs[i * 4 + j];
    }
    CHECK(std::abs(sum - 1.0) < 1e-12);
  }
  // Changing a future value must not change an earlier output.
  auto out_before = out;
  qkv[3 * 3 * 2 + 4] += 1.0;  // v of position 3
  ops::attention_forward(s, qkv.data(), tokens.data(), 0, out.data(), probs.data());
  for (int i = 0; i < 6; ++i) CHECK(out[i] == out_before[i]);
}

namespace {
/// The attention of attention_cpu.hpp's comment, written out with no windows and no blocks: every
/// query against every key of its row, masked, softmax, then out = P V and the backward
/// dV = Pᵀ dO, dS = P ∘ (dO Vᵀ − rowsum(P ∘ dO Vᵀ)) / sqrt(dh), dQ = dS K, dK = dSᵀ Q.
void reference_attention(const ops::AttentionShape& s, const std::vector<double>& qkv,
                         const std::vector<std::int32_t>& tok, const std::vector<double>& dout,
                         std::vector<double>& out, std::vector<double>& probs,
                         std::vector<double>& dqkv) {
  const std::int64_t L = s.length, D = s.dim, dh = s.head_dim();
  const double scale = 1.0 / std::sqrt(double(dh));
  auto at = [&](std::int64_t b, std::int64_t i, std::int64_t part, std::int64_t h, std::int64_t e) {
    return ((b * L + i) * 3 + part) * D + h * dh + e;
  };
  std::fill(dqkv.begin(), dqkv.end(), 0.0);
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t h = 0; h < s.heads; ++h) {
      double* P = probs.data() + (b * s.heads + h) * L * L;
      for (std::int64_t i = 0; i < L; ++i) {
        const bool pad_query = tok[b * L + i] == 0;
        double mx = -1e300;
        std::vector<double> z(L, 0.0);
        std::vector<bool> ok(L, false);
        for (std::int64_t j = 0; j <= i; ++j) {
          ok[j] = pad_query ? j == i : tok[b * L + j] != 0;
          if (!ok[j]) continue;
          for (std::int64_t e = 0; e < dh; ++e)
            z[j] += qkv[at(b, i, 0, h, e)] * qkv[at(b, j, 1, h, e)] * scale;
          mx = std::max(mx, z[j]);
        }
        double sum = 0;
        for (std::int64_t j = 0; j < L; ++j) sum += P[i * L + j] = ok[j] ? std::exp(z[j] - mx) : 0;
        for (std::int64_t j = 0; j < L; ++j) P[i * L + j] /= sum;
        for (std::int64_t e = 0; e < dh; ++e) {
          double o = 0;
          for (std::int64_t j = 0; j < L; ++j) o += P[i * L + j] * qkv[at(b, j, 2, h, e)];
          out[(b * L + i) * D + h * dh + e] = o;
        }
        // Backward of row i.
        std::vector<double> dp(L, 0.0);
        double rowsum = 0;
        for (std::int64_t j = 0; j < L; ++j) {
          for (std::int64_t e = 0; e < dh; ++e)
            dp[j] += dout[(b * L + i) * D + h * dh + e] * qkv[at(b, j, 2, h, e)];
          rowsum += P[i * L + j] * dp[j];
        }
        for (std::int64_t j = 0; j < L; ++j) {
          const double ds = P[i * L + j] * (dp[j] - rowsum) * scale;
          for (std::int64_t e = 0; e < dh; ++e) {
            dqkv[at(b, j, 2, h, e)] += P[i * L + j] * dout[(b * L + i) * D + h * dh + e];
            dqkv[at(b, i, 0, h, e)] += ds * qkv[at(b, j, 1, h, e)];
            dqkv[at(b, j, 1, h, e)] += ds * qkv[at(b, i, 0, h, e)];
          }
        }
      }
    }
}
}  // namespace

TEST_CASE("attention: windows and causal blocks give the full masked attention", "[cpu]") {
  // L spans three query blocks. Rows: 0 with no padding, 1 with one real token (L − 1 leading
  // pads), 2 all padding, 3 left-padded into its second block, 4 with a padding position inside
  // its window as well.
  const std::int64_t L = 2 * ops::kAttentionBlock + 22;
  const ops::AttentionShape s{5, L, 8, 2};
  const std::int64_t N = s.batch * L;
  const std::int64_t lead[5] = {0, L - 1, L, ops::kAttentionBlock + 5, 3};
  std::vector<std::int32_t> tokens(N);
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t i = 0; i < L; ++i)
      tokens[b * L + i] = i < lead[b] ? 0 : std::int32_t(4 + (b * L + i) % 97);
  tokens[4 * L + ops::kAttentionBlock + 7] = 0;  // inside row 4's window, second block
  const auto qkv = random_vector(N * 3 * s.dim, 21), dout = random_vector(N * s.dim, 22);
  std::vector<double> out(N * s.dim), probs(s.batch * s.heads * L * L), dqkv(qkv.size());
  std::vector<double> want_out(out.size()), want_probs(probs.size()), want_dqkv(dqkv.size());
  // Stale values in the outputs must be overwritten, not added to.
  std::fill(out.begin(), out.end(), 7.0);
  std::fill(probs.begin(), probs.end(), 7.0);
  std::fill(dqkv.begin(), dqkv.end(), 7.0);
  ops::attention_forward(s, qkv.data(), tokens.data(), 0, out.data(), probs.data());
  ops::attention_backward(s, qkv.data(), tokens.data(), 0, probs.data(), dout.data(), dqkv.data());
  reference_attention(s, qkv, tokens, dout, want_out, want_probs, want_dqkv);
  auto max_diff = [](const std::vector<double>& a, const std::vector<double>& b) {
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
  };
  // The same sums in double, in another order: equal to rounding (values are O(1)).
  CHECK(max_diff(probs, want_probs) < 1e-12);
  CHECK(max_diff(out, want_out) < 1e-12);
  CHECK(max_diff(dqkv, want_dqkv) < 1e-12);
  // Masked probabilities are exact zeros, the padding queries' exact ones.
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t h = 0; h < s.heads; ++h)
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t j = 0; j < L; ++j)
          if (want_probs[((b * s.heads + h) * L + i) * L + j] == 0.0 ||
              want_probs[((b * s.heads + h) * L + i) * L + j] == 1.0)
            REQUIRE(probs[((b * s.heads + h) * L + i) * L + j] ==
                    want_probs[((b * s.heads + h) * L + i) * L + j]);
}

TEST_CASE("attention: gradients across causal blocks and a long left padding", "[cpu][gradcheck]") {
  const std::int64_t L = ops::kAttentionBlock + 9;
  std::vector<std::int32_t> tokens(2 * L, 5);
  for (std::int64_t i = 0; i < 20; ++i) tokens[L + i] = 0;  // row 1: 20 leading pads
  CHECK(attention_gradient_error({2, L, 4, 1}, tokens, 23) < kGradRelTol);
}

TEST_CASE("embedding: gradient scatters into the rows used, repeated ids accumulate",
          "[cpu][gradcheck]") {
  const std::int64_t n = 6, d = 3, v = 5;
  auto table = random_vector(v * d, 13);
  const auto wy = random_vector(n * d, 14);
  const std::vector<std::int32_t> tokens = {1, 3, 3, 0, 4, 3};
  std::vector<double> x(n * d), dtable(v * d, 0.0);
  auto f = [&] {
    ops::embedding_forward(tokens.data(), table.data(), x.data(), n, d, 1.7);
    return dot(x, wy);
  };
  f();
  ops::embedding_backward(tokens.data(), wy.data(), dtable.data(), n, d, 1.7);
  CHECK(check_gradient(f, table.data(), dtable.data(), table.size()).max_rel_error < kGradRelTol);
  for (std::int64_t j = 0; j < d; ++j) CHECK(dtable[2 * d + j] == 0.0);  // row 2 unused
}

TEST_CASE("cross-entropy: chunking does not change loss or gradients", "[cpu][gradcheck]") {
  const std::int64_t n = 7, d = 4, items = 9;
  const std::int32_t first = 4;
  auto h = random_vector(n * d, 15), w = random_vector(items * d, 16);
  const std::vector<std::int32_t> targets = {0, 4, 12, 7, 0, 5, 9};  // 0 = no target
  AlignedVector<double> ws;
  double ref_loss = 0;
  std::vector<double> ref_dh, ref_dw;
  for (std::int64_t chunk : {1, 2, 3, 100}) {
    std::vector<double> dh(n * d), dw(items * d, 0.0);
    std::int64_t count = 0;
    const ops::CrossEntropyShape s{n, d, items, first, chunk};
    const double loss = ops::cross_entropy_forward_backward<double>(
        s, h.data(), targets.data(), w.data(), dh.data(), dw.data(), 1.0, &count, ws);
    CHECK(count == 5);
    if (chunk == 1) {
      ref_loss = loss;
      ref_dh = dh;
      ref_dw = dw;
      auto f = [&] {
        std::int64_t c = 0;
        return ops::cross_entropy_forward_backward<double>(s, h.data(), targets.data(), w.data(),
                                                           nullptr, nullptr, 1.0, &c, ws);
      };
      CHECK(check_gradient(f, h.data(), dh.data(), h.size()).max_rel_error < kGradRelTol);
      CHECK(check_gradient(f, w.data(), dw.data(), w.size()).max_rel_error < kGradRelTol);
      // Naive reference for the loss.
      double naive = 0;
      for (std::int64_t r = 0; r < n; ++r) {
        if (targets[r] < first) continue;
        std::vector<double> z(items);
        double mx = -1e300;
        for (std::int64_t i = 0; i < items; ++i) {
          z[i] = 0;
          for (std::int64_t j = 0; j < d; ++j) z[i] += h[r * d + j] * w[i * d + j];
          mx = std::max(mx, z[i]);
        }
        double se = 0;
        for (double zi : z) se += std::exp(zi - mx);
        naive += mx + std::log(se) - z[targets[r] - first];
      }
      CHECK(std::abs(loss - naive) < 1e-10);
    } else {
      CHECK(std::abs(loss - ref_loss) < 1e-10);
      for (std::size_t i = 0; i < dh.size(); ++i) CHECK(std::abs(dh[i] - ref_dh[i]) < 1e-12);
      for (std::size_t i = 0; i < dw.size(); ++i) CHECK(std::abs(dw[i] - ref_dw[i]) < 1e-12);
    }
  }
  // Workspace holds at most chunk × items logits (+ two (chunk, D) buffers), never N × items.
  std::vector<double> dh(n * d), dw(items * d, 0.0);
  std::int64_t count = 0;
  ops::cross_entropy_forward_backward<double>({n, d, items, first, 2}, h.data(), targets.data(),
                                              w.data(), dh.data(), dw.data(), 1.0, &count, ws);
  AlignedVector<double> fresh;
  ops::cross_entropy_forward_backward<double>({n, d, items, first, 2}, h.data(), targets.data(),
                                              w.data(), dh.data(), dw.data(), 1.0, &count, fresh);
  CHECK(fresh.size() == static_cast<std::size_t>(2 * items + 2 * 2 * d));
}

TEST_CASE("selected log-softmax: values, gradients, chunking, and cross-entropy as its J = 1 case",
          "[cpu][gradcheck]") {
  const std::int64_t P = 5, d = 4, items = 11, J = 3;
  auto h = random_vector(P * d, 31), w = random_vector(items * d, 32);
  const std::vector<std::int32_t> cols = {0, 5, 10, 3, 2, 1, 7, 8, 9, 10, 4, 6, 1, 0, 2};
  const auto g = random_vector(P * J, 33);  // d loss / d logp: the loss is Σ g ⊙ logp · scale
  const double scale = 0.7;
  AlignedVector<double> ws;
  std::vector<double> ref_logp, ref_dh, ref_dw;
  for (std::int64_t chunk : {100, 1, 2}) {
    INFO("chunk " << chunk);
    const ops::SelectedShape s{P, d, items, J, chunk};
    std::vector<double> logp(P * J), lse(P), dh(P * d), dw(items * d, 0.0);
    ops::selected_log_softmax<double>(s, h.data(), cols.data(), w.data(), logp.data(), lse.data(),
                                      ws);
    ops::selected_log_softmax_backward<double>(s, h.data(), cols.data(), w.data(), lse.data(),
                                               g.data(), scale, dh.data(), dw.data(), ws);
    if (chunk == 100) {
      // Naive log-softmax.
      for (std::int64_t r = 0; r < P; ++r) {
        std::vector<double> z(items);
        double mx = -1e300, se = 0;
        for (std::int64_t i = 0; i < items; ++i) {
          z[i] = 0;
          for (std::int64_t j = 0; j < d; ++j) z[i] += h[r * d + j] * w[i * d + j];
          mx = std::max(mx, z[i]);
        }
        for (double zi : z) se += std::exp(zi - mx);
        for (std::int64_t j = 0; j < J; ++j)
          CHECK(std::abs(logp[r * J + j] - (z[cols[r * J + j]] - mx - std::log(se))) < 1e-12);
      }
      auto f = [&] {
        std::vector<double> lp(P * J), l(P);
        ops::selected_log_softmax<double>(s, h.data(), cols.data(), w.data(), lp.data(), l.data(),
                                          ws);
        return scale * dot(g, lp);
      };
      CHECK(check_gradient(f, h.data(), dh.data(), h.size()).max_rel_error < kGradRelTol);
      CHECK(check_gradient(f, w.data(), dw.data(), w.size()).max_rel_error < kGradRelTol);
      ref_logp = logp;
      ref_dh = dh;
      ref_dw = dw;
    } else {
      for (std::size_t i = 0; i < logp.size(); ++i) CHECK(std::abs(logp[i] - ref_logp[i]) < 1e-12);
      for (std::size_t i = 0; i < dh.size(); ++i) CHECK(std::abs(dh[i] - ref_dh[i]) < 1e-12);
      for (std::size_t i = 0; i < dw.size(); ++i) CHECK(std::abs(dw[i] - ref_dw[i]) < 1e-12);
    }
  }
  // J = 1 with g = −1 is the cross-entropy of the first column: same loss and gradients.
  const std::int32_t first = 4;
  std::vector<std::int32_t> one(P), targets(P);
  for (std::int64_t r = 0; r < P; ++r) {
    one[r] = cols[r * J];
    targets[r] = one[r] + first;
  }
  const ops::SelectedShape s1{P, d, items, 1, 2};
  std::vector<double> lp(P), lse(P), dh(P * d), dw(items * d, 0.0), minus(P, -1.0);
  ops::selected_log_softmax<double>(s1, h.data(), one.data(), w.data(), lp.data(), lse.data(), ws);
  ops::selected_log_softmax_backward<double>(s1, h.data(), one.data(), w.data(), lse.data(),
                                             minus.data(), 0.5, dh.data(), dw.data(), ws);
  std::vector<double> ce_dh(P * d), ce_dw(items * d, 0.0);
  std::int64_t count = 0;
  const double ce = ops::cross_entropy_forward_backward<double>(
      {P, d, items, first, 2}, h.data(), targets.data(), w.data(), ce_dh.data(), ce_dw.data(), 0.5,
      &count, ws);
  double sum = 0;
  for (double v : lp) sum -= v;
  CHECK(std::abs(sum - ce) < 1e-12);
  for (std::size_t i = 0; i < dh.size(); ++i) CHECK(std::abs(dh[i] - ce_dh[i]) < 1e-12);
  for (std::size_t i = 0; i < dw.size(); ++i) CHECK(std::abs(dw[i] - ce_dw[i]) < 1e-12);
}

TEST_CASE("activations: derivatives match central differences", "[cpu][gradcheck]") {
  for (double x : {-3.0, -0.7, 0.3, 2.5}) {
    const double h = 1e-6;
    CHECK(std::abs((ops::Silu::f(x + h) - ops::Silu::f(x - h)) / (2 * h) - ops::Silu::df(x)) <
          1e-8);
    CHECK(std::abs((ops::Relu::f(x + h) - ops::Relu::f(x - h)) / (2 * h) - ops::Relu::df(x)) <
          1e-8);
  }
}

TEST_CASE("dropout: mask depends only on the key, keeps about 1-p, scales by 1/(1-p)", "[cpu]") {
  const std::int64_t n = 100000;
  std::vector<float> a(n, 1.0f), b(n, 1.0f);
  std::vector<std::uint8_t> ma(n), mb(n);
  ops::dropout_forward(a.data(), ma.data(), n, 0.25, 77);
  ops::dropout_forward(b.data(), mb.data(), n, 0.25, 77);
  CHECK(ma == mb);
  double kept = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    kept += ma[i];
    CHECK(a[i] == (ma[i] ? 1.0f / 0.75f : 0.0f));
  }
  CHECK(std::abs(kept / n - 0.75) < 0.01);
  std::vector<float> c(n, 1.0f);
  ops::dropout_forward(c.data(), mb.data(), n, 0.25, 78);
  CHECK(ma != mb);
}
