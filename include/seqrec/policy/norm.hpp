// Normalisation policies. A norm policy is a tag type whose nested Layer<T> registers its
// parameters and provides forward/backward over (N, D) rows, saving `stats_per_row` values per row.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "seqrec/model/parameter_store.hpp"
#include "seqrec/ops/layernorm/layernorm_cpu.hpp"
#include "seqrec/ops/rmsnorm/rmsnorm_cpu.hpp"
#include "seqrec/policy/concepts.hpp"

namespace seqrec::policy::norm {

/// RMSNorm (Zhang & Sennrich 2019): y = x / rms(x) · g.
struct RMSNorm {
  static constexpr std::string_view name = "rmsnorm";
  static constexpr std::int64_t stats_per_row = 1;

  template <typename T>
  class Layer {
   public:
    Layer(ParameterStore<T>& store, const std::string& prefix, std::int64_t dim, double eps)
        : gain_(store.add(prefix + ".weight", {dim}, /*decay=*/false, Init::Ones)),
          dim_(dim),
          eps_(static_cast<T>(eps)) {}

    /// x, y (N, D); stats (N)
    void forward(const ParameterStore<T>& s, const T* x, T* y, T* stats, std::int64_t n) const {
      ops::rmsnorm_forward(x, s.value(gain_), y, stats, n, dim_, eps_);
    }
    /// dx (N, D) overwritten; the gain's gradient accumulated.
    void backward(ParameterStore<T>& s, const T* x, const T* stats, const T* dy, T* dx,
                  std::int64_t n) const {
      ops::rmsnorm_backward(x, s.value(gain_), stats, dy, dx, s.grad(gain_), n, dim_);
    }

   private:
    ParamId gain_;
    std::int64_t dim_;
    T eps_;
  };
};

/// LayerNorm (Ba et al. 2016): y = (x − mean) / std · g + b.
struct LayerNorm {
  static constexpr std::string_view name = "layernorm";
  static constexpr std::int64_t stats_per_row = 2;

  template <typename T>
  class Layer {
   public:
    Layer(ParameterStore<T>& store, const std::string& prefix, std::int64_t dim, double eps)
        : gain_(store.add(prefix + ".weight", {dim}, false, Init::Ones)),
          bias_(store.add(prefix + ".bias", {dim}, false, Init::Zeros)),
          dim_(dim),
          eps_(static_cast<T>(eps)) {}
    /// x, y (N, D); stats (N, 2)
    void forward(const ParameterStore<T>& s, const T* x, T* y, T* stats, std::int64_t n) const {
      ops::layernorm_forward(x, s.value(gain_), s.value(bias_), y, stats, n, dim_, eps_);
    }
    void backward(ParameterStore<T>& s, const T* x, const T* stats, const T* dy, T* dx,
                  std::int64_t n) const {
      ops::layernorm_backward(x, s.value(gain_), stats, dy, dx, s.grad(gain_), s.grad(bias_), n,
                              dim_);
    }

   private:
    ParamId gain_, bias_;
    std::int64_t dim_;
    T eps_;
  };
};

static_assert(NormPolicy<RMSNorm, float> && NormPolicy<RMSNorm, double>);
static_assert(NormPolicy<LayerNorm, float> && NormPolicy<LayerNorm, double>);

}  // namespace seqrec::policy::norm
