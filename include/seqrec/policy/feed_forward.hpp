// Feed-forward policies, all over rows of width D with inner width F = ModelShape::ffn_dim:
//   Mlp<Act>    y = W2 · act(W1 x + b1) + b2                          (ReLU: SASRec; SiLU)
//   GatedMlp    y = Wd · (silu(Wg x) ⊙ Wu x), no biases (SwiGLU as in Qwen3), inner width chosen
//               so the parameter count matches Mlp with width F
//   MoE<E,K,X>  softmax router over E experts of type X, top-K with renormalised weights,
//               Switch load-balancing loss and router z-loss (coefficients in ModelShape)
// Each Layer caches what its backward needs; parameter gradients are accumulated (+=).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/ops/activation/activation.hpp"
#include "seqrec/ops/linear/linear_cpu.hpp"
#include "seqrec/policy/concepts.hpp"

namespace seqrec::policy::ffn {

namespace detail {

/// Applies `f(x, y, m)` to blocks of 4096 elements, in parallel when the array is large. The
/// bodies below use Eigen arrays so that exp vectorises (scalar std::exp does not: SiLU was
/// 10x slower per element than ReLU).
template <typename T, typename F>
void for_blocks(std::int64_t n, F&& f) {
  constexpr std::int64_t kBlock = 4096;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t b = 0; b < blocks; ++b) f(b * kBlock, std::min(kBlock, n - b * kBlock));
}

template <typename T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <typename T>
using CArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

/// y = act(x) over n elements.
template <typename Act, typename T>
void activate(const T* x, T* y, std::int64_t n) {
  for_blocks<T>(n, [&](std::int64_t lo, std::int64_t m) {
    if constexpr (std::is_same_v<Act, ops::Silu>) {
      const CArrayMap<T> xs(x + lo, m);
      ArrayMap<T>(y + lo, m) = xs / (T(1) + (-xs).exp());
    } else {
      for (std::int64_t i = lo; i < lo + m; ++i) y[i] = Act::f(x[i]);
    }
  });
}

/// d *= act'(x) over n elements.
template <typename Act, typename T>
void activate_backward(const T* x, T* d, std::int64_t n) {
  for_blocks<T>(n, [&](std::int64_t lo, std::int64_t m) {
    if constexpr (std::is_same_v<Act, ops::Silu>) {
      const CArrayMap<T> xs(x + lo, m);
      const Eigen::Array<T, Eigen::Dynamic, 1> sg = T(1) / (T(1) + (-xs).exp());
      ArrayMap<T>(d + lo, m) *= sg * (T(1) + xs * (T(1) - sg));
    } else {
      for (std::int64_t i = lo; i < lo + m; ++i) d[i] *= Act::df(x[i]);
    }
  });
}

/// SwiGLU's gate: a = silu(g) ⊙ u.
template <typename T>
void swiglu(const T* g, const T* u, T* a, std::int64_t n) {
  for_blocks<T>(n, [&](std::int64_t lo, std::int64_t m) {
    const CArrayMap<T> gs(g + lo, m);
    ArrayMap<T>(a + lo, m) = gs / (T(1) + (-gs).exp()) * CArrayMap<T>(u + lo, m);
  });
}

/// Its backward from da = d loss / d a: du = da ⊙ silu(g), then da ← da ⊙ u ⊙ silu'(g) in place.
template <typename T>
void swiglu_backward(const T* g, const T* u, T* da, T* du, std::int64_t n) {
  for_blocks<T>(n, [&](std::int64_t lo, std::int64_t m) {
    const CArrayMap<T> gs(g + lo, m), us(u + lo, m);
    const Eigen::Array<T, Eigen::Dynamic, 1> sg = T(1) / (T(1) + (-gs).exp());
    ArrayMap<T> das(da + lo, m);
    ArrayMap<T>(du + lo, m) = das * gs * sg;
    das *= us * sg * (T(1) + gs * (T(1) - sg));
  });
}

}  // namespace detail

template <typename Act>
struct Mlp {
  static constexpr std::string_view name = Act::name;

  template <typename T>
  class Layer {
   public:
    struct Cache {
      AlignedVector<T> pre;  // (N, F)
      AlignedVector<T> act;  // (N, F)
    };

    Layer(ParameterStore<T>& s, const std::string& prefix, const ModelShape& shape, double out_std)
        : dim_(shape.dim), inner_(shape.ffn_dim) {
      w1_ = s.add(prefix + ".fc1.weight", {inner_, dim_}, true, Init::Normal, shape.init_std);
      b1_ = s.add(prefix + ".fc1.bias", {inner_}, false, Init::Zeros);
      w2_ = s.add(prefix + ".fc2.weight", {dim_, inner_}, true, Init::Normal, out_std);
      b2_ = s.add(prefix + ".fc2.bias", {dim_}, false, Init::Zeros);
    }

    /// x (N, D) → y (N, D)
    void forward(const ParameterStore<T>& s, const T* x, T* y, Cache& c, std::int64_t n,
                 const std::uint8_t* /*valid*/ = nullptr) const {
      c.pre.resize(static_cast<std::size_t>(n * inner_));
      c.act.resize(c.pre.size());
      ops::linear_forward(x, s.value(w1_), s.value(b1_), c.pre.data(), n, dim_, inner_);
      const std::int64_t total = n * inner_;
      const T* pre = c.pre.data();
      T* act = c.act.data();
      detail::activate<Act>(pre, act, total);
      ops::linear_forward(act, s.value(w2_), s.value(b2_), y, n, inner_, dim_);
    }

    /// dy (N, D) → dx (N, D) overwritten; parameter gradients accumulated.
    void backward(ParameterStore<T>& s, const T* x, const Cache& c, const T* dy, T* dx,
                  std::int64_t n) const {
      AlignedVector<T>& dact = scratch_;
      dact.resize(static_cast<std::size_t>(n * inner_));
      ops::linear_backward(c.act.data(), s.value(w2_), dy, dact.data(), s.grad(w2_), s.grad(b2_), n,
                           inner_, dim_);
      const std::int64_t total = n * inner_;
      const T* pre = c.pre.data();
      T* d = dact.data();
      detail::activate_backward<Act>(pre, d, total);
      ops::linear_backward(x, s.value(w1_), d, dx, s.grad(w1_), s.grad(b1_), n, dim_, inner_);
    }

    double aux_loss(const Cache&) const { return 0.0; }

   private:
    std::int64_t dim_, inner_;
    ParamId w1_, b1_, w2_, b2_;
    mutable AlignedVector<T> scratch_;
  };
};

using ReluMlp = Mlp<ops::Relu>;
using SiluMlp = Mlp<ops::Silu>;

/// Inner width of GatedMlp that matches the parameter count of Mlp with width F:
/// 3·D·F' ≈ 2·D·F + F + D.
inline std::int64_t gated_inner_width(std::int64_t dim, std::int64_t ffn) {
  return std::max<std::int64_t>(1, (2 * dim * ffn + ffn + dim + (3 * dim) / 2) / (3 * dim));
}

struct GatedMlp {
  static constexpr std::string_view name = "swiglu";

  template <typename T>
  class Layer {
   public:
    struct Cache {
      AlignedVector<T> gate, up, act;  // (N, F') each
    };

    Layer(ParameterStore<T>& s, const std::string& prefix, const ModelShape& shape, double out_std)
        : dim_(shape.dim), inner_(gated_inner_width(shape.dim, shape.ffn_dim)) {
      wg_ = s.add(prefix + ".gate.weight", {inner_, dim_}, true, Init::Normal, shape.init_std);
      wu_ = s.add(prefix + ".up.weight", {inner_, dim_}, true, Init::Normal, shape.init_std);
      wd_ = s.add(prefix + ".down.weight", {dim_, inner_}, true, Init::Normal, out_std);
    }

    void forward(const ParameterStore<T>& s, const T* x, T* y, Cache& c, std::int64_t n,
                 const std::uint8_t* /*valid*/ = nullptr) const {
      const std::size_t total = static_cast<std::size_t>(n * inner_);
      c.gate.resize(total);
      c.up.resize(total);
      c.act.resize(total);
      ops::linear_forward<T>(x, s.value(wg_), nullptr, c.gate.data(), n, dim_, inner_);
      ops::linear_forward<T>(x, s.value(wu_), nullptr, c.up.data(), n, dim_, inner_);
      const T *g = c.gate.data(), *u = c.up.data();
      T* a = c.act.data();
      detail::swiglu(g, u, a, static_cast<std::int64_t>(total));
      ops::linear_forward<T>(a, s.value(wd_), nullptr, y, n, inner_, dim_);
    }

    void backward(ParameterStore<T>& s, const T* x, const Cache& c, const T* dy, T* dx,
                  std::int64_t n) const {
      const std::size_t total = static_cast<std::size_t>(n * inner_);
      dg_.resize(total);
      du_.resize(total);
      tmp_.resize(static_cast<std::size_t>(n * dim_));
      ops::linear_backward<T>(c.act.data(), s.value(wd_), dy, dg_.data(), s.grad(wd_), nullptr, n,
                              inner_, dim_);  // dg_ holds d(act) for now
      const T *g = c.gate.data(), *u = c.up.data();
      T *da = dg_.data(), *du = du_.data();
      detail::swiglu_backward(g, u, da, du, static_cast<std::int64_t>(total));
      ops::linear_backward<T>(x, s.value(wg_), dg_.data(), dx, s.grad(wg_), nullptr, n, dim_,
                              inner_);
      ops::linear_backward<T>(x, s.value(wu_), du_.data(), tmp_.data(), s.grad(wu_), nullptr, n,
                              dim_, inner_);
      for (std::int64_t i = 0; i < n * dim_; ++i) dx[i] += tmp_[i];
    }

    double aux_loss(const Cache&) const { return 0.0; }
    std::int64_t inner() const noexcept { return inner_; }

   private:
    std::int64_t dim_, inner_;
    ParamId wg_, wu_, wd_;
    mutable AlignedVector<T> dg_, du_, tmp_;
  };
};

/// Mixture of experts: softmax router (E, D) without bias, each token sent to its top-K experts
/// with weights p_k / Σ_top p. Auxiliary losses, over real (non-padding) tokens only:
///   balance = α · E · Σ_e f_e · P_e   (Switch Transformer; f_e share of routed slots, P_e mean
///             router probability; the gradient flows through P_e)
///   z       = β · mean_n logsumexp(router logits_n)²   (ST-MoE router z-loss)
/// with α = ModelShape::moe_balance_coef and β = ModelShape::moe_z_coef.
template <int Experts, int TopK, typename Expert>
struct MoE {
  static_assert(Experts >= 1 && TopK >= 1 && TopK <= Experts, "MoE needs 1 <= TopK <= Experts");
  static constexpr std::string_view name = "moe";
  static constexpr int experts = Experts;
  static constexpr int top_k = TopK;

  template <typename T>
  class Layer {
    using ExpertLayer = typename Expert::template Layer<T>;

   public:
    struct Cache {
      AlignedVector<T> logits, probs;    // (N, E)
      std::vector<double> lse;           // (N)
      std::vector<std::int32_t> choice;  // (N, K) expert ids
      AlignedVector<T> weight;           // (N, K) renormalised
      std::vector<std::uint8_t> valid;   // (N)
      std::vector<double> share;         // (E) f_e
      double n_valid = 0;
      double aux = 0;
      std::vector<std::vector<std::int64_t>> rows;  // per expert: token rows
      std::vector<std::vector<std::int32_t>> slot;  // per expert: which of the K choices
      std::vector<AlignedVector<T>> xin, yout;      // per expert: gathered input and output
      std::vector<typename ExpertLayer::Cache> ecache;
    };

    Layer(ParameterStore<T>& s, const std::string& prefix, const ModelShape& shape, double out_std)
        : dim_(shape.dim), alpha_(shape.moe_balance_coef), beta_(shape.moe_z_coef) {
      router_ =
          s.add(prefix + ".router.weight", {Experts, dim_}, true, Init::Normal, shape.init_std);
      experts_.reserve(Experts);
      for (int e = 0; e < Experts; ++e)
        experts_.emplace_back(s, prefix + ".experts." + std::to_string(e), shape, out_std);
      counts_.assign(Experts, 0.0);
    }

    void forward(const ParameterStore<T>& s, const T* x, T* y, Cache& c, std::int64_t n,
                 const std::uint8_t* valid = nullptr) const {
      const std::int64_t E = Experts, K = TopK, D = dim_;
      c.logits.resize(static_cast<std::size_t>(n * E));
      c.probs.resize(c.logits.size());
      c.lse.resize(static_cast<std::size_t>(n));
      c.choice.resize(static_cast<std::size_t>(n * K));
      c.weight.resize(c.choice.size());
      c.valid.assign(static_cast<std::size_t>(n), 1);
      if (valid) std::copy_n(valid, n, c.valid.begin());
      ops::linear_forward<T>(x, s.value(router_), nullptr, c.logits.data(), n, D, E);
      c.rows.assign(E, {});
      c.slot.assign(E, {});
      for (std::int64_t r = 0; r < n; ++r) {
        const T* z = c.logits.data() + r * E;
        T* p = c.probs.data() + r * E;
        T mx = z[0];
        for (std::int64_t e = 1; e < E; ++e) mx = std::max(mx, z[e]);
        double sum = 0;
        for (std::int64_t e = 0; e < E; ++e) sum += std::exp(double(z[e] - mx));
        c.lse[r] = double(mx) + std::log(sum);
        for (std::int64_t e = 0; e < E; ++e)
          p[e] = static_cast<T>(std::exp(double(z[e]) - c.lse[r]));
        // Top-K by probability; ties go to the lower expert id (stable, deterministic).
        std::int32_t* ch = c.choice.data() + r * K;
        std::array<std::int32_t, Experts> order{};
        for (int e = 0; e < Experts; ++e) order[e] = e;
        std::partial_sort(
            order.begin(), order.begin() + K, order.end(),
            [&](std::int32_t a, std::int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
        T top = 0;
        for (std::int64_t k = 0; k < K; ++k) top += p[order[k]];
        for (std::int64_t k = 0; k < K; ++k) {
          ch[k] = order[k];
          c.weight[r * K + k] = p[order[k]] / top;
          c.rows[order[k]].push_back(r);
          c.slot[order[k]].push_back(static_cast<std::int32_t>(k));
        }
      }
      // Experts on their gathered rows.
      std::fill(y, y + n * D, T(0));
      c.xin.resize(E);
      c.yout.resize(E);
      c.ecache.resize(E);
      for (std::int64_t e = 0; e < E; ++e) {
        const std::int64_t m = static_cast<std::int64_t>(c.rows[e].size());
        c.xin[e].resize(static_cast<std::size_t>(m * D));
        c.yout[e].resize(c.xin[e].size());
        for (std::int64_t i = 0; i < m; ++i)
          std::copy_n(x + c.rows[e][i] * D, D, c.xin[e].data() + i * D);
        if (m == 0) continue;
        experts_[e].forward(s, c.xin[e].data(), c.yout[e].data(), c.ecache[e], m);
        for (std::int64_t i = 0; i < m; ++i) {
          const std::int64_t r = c.rows[e][i];
          const T w = c.weight[r * K + c.slot[e][i]];
          for (std::int64_t j = 0; j < D; ++j) y[r * D + j] += w * c.yout[e][i * D + j];
        }
      }
      // Auxiliary losses over real tokens.
      c.share.assign(E, 0.0);
      std::vector<double> mean_p(E, 0.0);
      double z2 = 0;
      c.n_valid = 0;
      for (std::int64_t r = 0; r < n; ++r) {
        if (!c.valid[r]) continue;
        c.n_valid += 1;
        for (std::int64_t k = 0; k < K; ++k) c.share[c.choice[r * K + k]] += 1.0;
        for (std::int64_t e = 0; e < E; ++e) mean_p[e] += double(c.probs[r * E + e]);
        z2 += c.lse[r] * c.lse[r];
      }
      c.aux = 0;
      if (c.n_valid > 0) {
        double bal = 0;
        for (std::int64_t e = 0; e < E; ++e) {
          counts_[e] += c.share[e];
          c.share[e] /= c.n_valid * double(K);
          bal += c.share[e] * mean_p[e] / c.n_valid;
        }
        c.aux = alpha_ * double(E) * bal + beta_ * z2 / c.n_valid;
      }
    }

    void backward(ParameterStore<T>& s, const T* x, const Cache& c, const T* dy, T* dx,
                  std::int64_t n) const {
      const std::int64_t E = Experts, K = TopK, D = dim_;
      std::fill(dx, dx + n * D, T(0));
      dw_.assign(static_cast<std::size_t>(n * K), 0.0);
      for (std::int64_t e = 0; e < E; ++e) {
        const std::int64_t m = static_cast<std::int64_t>(c.rows[e].size());
        if (m == 0) continue;
        dyin_.resize(static_cast<std::size_t>(m * D));
        dxin_.resize(dyin_.size());
        for (std::int64_t i = 0; i < m; ++i) {
          const std::int64_t r = c.rows[e][i];
          const std::int64_t k = c.slot[e][i];
          const T w = c.weight[r * K + k];
          double dot = 0;
          for (std::int64_t j = 0; j < D; ++j) {
            dyin_[i * D + j] = w * dy[r * D + j];
            dot += double(dy[r * D + j]) * double(c.yout[e][i * D + j]);
          }
          dw_[r * K + k] = dot;
        }
        experts_[e].backward(s, c.xin[e].data(), c.ecache[e], dyin_.data(), dxin_.data(), m);
        for (std::int64_t i = 0; i < m; ++i) {
          const std::int64_t r = c.rows[e][i];
          for (std::int64_t j = 0; j < D; ++j) dx[r * D + j] += dxin_[i * D + j];
        }
      }
      // Router: through the renormalised weights, the balance loss and the z-loss.
      dlogits_.resize(static_cast<std::size_t>(n * E));
      std::vector<double> dp(E);
      for (std::int64_t r = 0; r < n; ++r) {
        const T* p = c.probs.data() + r * E;
        std::fill(dp.begin(), dp.end(), 0.0);
        double top = 0, wdw = 0;
        for (std::int64_t k = 0; k < K; ++k) {
          top += double(p[c.choice[r * K + k]]);
          wdw += double(c.weight[r * K + k]) * dw_[r * K + k];
        }
        for (std::int64_t k = 0; k < K; ++k)
          dp[c.choice[r * K + k]] += (dw_[r * K + k] - wdw) / top;
        const bool real = c.valid[r] && c.n_valid > 0;
        if (real)
          for (std::int64_t e = 0; e < E; ++e) dp[e] += alpha_ * double(E) * c.share[e] / c.n_valid;
        double pdp = 0;
        for (std::int64_t e = 0; e < E; ++e) pdp += double(p[e]) * dp[e];
        for (std::int64_t e = 0; e < E; ++e) {
          double g = double(p[e]) * (dp[e] - pdp);
          if (real) g += beta_ * 2.0 * c.lse[r] * double(p[e]) / c.n_valid;
          dlogits_[r * E + e] = static_cast<T>(g);
        }
      }
      tmp_.resize(static_cast<std::size_t>(n * D));
      ops::linear_backward<T>(x, s.value(router_), dlogits_.data(), tmp_.data(), s.grad(router_),
                              nullptr, n, D, E);
      for (std::int64_t i = 0; i < n * D; ++i) dx[i] += tmp_[i];
    }

    double aux_loss(const Cache& c) const { return c.aux; }

    /// Share of routed (token, slot) pairs each expert received since the last call; resets.
    std::vector<double> take_expert_shares() const {
      double total = 0;
      for (double v : counts_) total += v;
      std::vector<double> out(Experts, 0.0);
      for (int e = 0; e < Experts; ++e) out[e] = total > 0 ? counts_[e] / total : 0.0;
      counts_.assign(Experts, 0.0);
      return out;
    }

   private:
    std::int64_t dim_;
    double alpha_, beta_;
    ParamId router_;
    std::vector<ExpertLayer> experts_;
    mutable std::vector<double> counts_, dw_;
    mutable AlignedVector<T> dyin_, dxin_, dlogits_, tmp_;
  };
};

static_assert(FeedForwardPolicy<ReluMlp, float> && FeedForwardPolicy<ReluMlp, double>);
static_assert(FeedForwardPolicy<SiluMlp, float> && FeedForwardPolicy<SiluMlp, double>);
static_assert(FeedForwardPolicy<GatedMlp, float> && FeedForwardPolicy<GatedMlp, double>);
static_assert(FeedForwardPolicy<MoE<4, 2, SiluMlp>, float> &&
              FeedForwardPolicy<MoE<4, 2, SiluMlp>, double>);

}  // namespace seqrec::policy::ffn
