// Feed-forward policies. Mlp<Act>: y = W2 · act(W1 x + b1) + b2, with W1 (F, D) and W2 (D, F).
// The pre-activation and the activation are cached for the backward.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "seqrec/model/parameter_store.hpp"
#include "seqrec/ops/activation/activation.hpp"
#include "seqrec/ops/linear/linear_cpu.hpp"
#include "seqrec/policy/concepts.hpp"

namespace seqrec::policy::ffn {

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

    /// out_std initialises W2 (the residual-branch output; GPT-2 scales it by 1/sqrt(2·layers)).
    Layer(ParameterStore<T>& s, const std::string& prefix, std::int64_t dim, std::int64_t inner,
          double init_std, double out_std)
        : w1_(s.add(prefix + ".fc1.weight", {inner, dim}, true, Init::Normal, init_std)),
          b1_(s.add(prefix + ".fc1.bias", {inner}, false, Init::Zeros)),
          w2_(s.add(prefix + ".fc2.weight", {dim, inner}, true, Init::Normal, out_std)),
          b2_(s.add(prefix + ".fc2.bias", {dim}, false, Init::Zeros)),
          dim_(dim),
          inner_(inner) {}

    /// x (N, D) → y (N, D)
    void forward(const ParameterStore<T>& s, const T* x, T* y, Cache& c, std::int64_t n) const {
      c.pre.resize(static_cast<std::size_t>(n * inner_));
      c.act.resize(c.pre.size());
      ops::linear_forward(x, s.value(w1_), s.value(b1_), c.pre.data(), n, dim_, inner_);
      const std::int64_t total = n * inner_;
      const T* pre = c.pre.data();
      T* act = c.act.data();
#pragma omp parallel for schedule(static) if (total > 65536)
      for (std::int64_t i = 0; i < total; ++i) act[i] = Act::f(pre[i]);
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
#pragma omp parallel for schedule(static) if (total > 65536)
      for (std::int64_t i = 0; i < total; ++i) d[i] *= Act::df(pre[i]);
      ops::linear_backward(x, s.value(w1_), d, dx, s.grad(w1_), s.grad(b1_), n, dim_, inner_);
    }

   private:
    ParamId w1_, b1_, w2_, b2_;
    std::int64_t dim_, inner_;
    mutable AlignedVector<T> scratch_;
  };
};

using ReluMlp = Mlp<ops::Relu>;
using SiluMlp = Mlp<ops::Silu>;

static_assert(FeedForwardPolicy<ReluMlp, float> && FeedForwardPolicy<ReluMlp, double>);
static_assert(FeedForwardPolicy<SiluMlp, float> && FeedForwardPolicy<SiluMlp, double>);

}  // namespace seqrec::policy::ffn
