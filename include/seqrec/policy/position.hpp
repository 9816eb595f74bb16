// Positional-encoding policies applied to the input embeddings. Positions index the slots of the
// left-padded window (slot L−1 is always the most recent item), as in SASRec.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "seqrec/model/parameter_store.hpp"
#include "seqrec/policy/concepts.hpp"

namespace seqrec::policy::pos {

/// A learned table P (max_len, D): x[b, l] += P[l].
struct Learned {
  static constexpr std::string_view name = "learned";

  template <typename T>
  class Layer {
   public:
    Layer(ParameterStore<T>& store, std::int64_t max_len, std::int64_t dim, double init_std)
        : table_(store.add("pos_emb.weight", {max_len, dim}, true, Init::Normal, init_std)),
          max_len_(max_len),
          dim_(dim) {}

    /// x (B, L, D), L <= max_len.
    void add(const ParameterStore<T>& s, T* x, std::int64_t batch, std::int64_t len) const {
      SEQREC_CHECK(len <= max_len_, "sequence window longer than the learned position table");
      const T* p = s.value(table_);
#pragma omp parallel for schedule(static) if (batch * len * dim_ > 32768)
      for (std::int64_t b = 0; b < batch; ++b)
        for (std::int64_t l = 0; l < len; ++l)
          for (std::int64_t j = 0; j < dim_; ++j) x[(b * len + l) * dim_ + j] += p[l * dim_ + j];
    }
    void add_backward(ParameterStore<T>& s, const T* dx, std::int64_t batch,
                      std::int64_t len) const {
      T* dp = s.grad(table_);
#pragma omp parallel for schedule(static) if (batch * len * dim_ > 32768)
      for (std::int64_t l = 0; l < len; ++l)
        for (std::int64_t b = 0; b < batch; ++b)
          for (std::int64_t j = 0; j < dim_; ++j) dp[l * dim_ + j] += dx[(b * len + l) * dim_ + j];
    }

   private:
    ParamId table_;
    std::int64_t max_len_, dim_;
  };
};

/// No positional information at all (order reaches the model only through the causal mask).
struct None {
  static constexpr std::string_view name = "none";
  template <typename T>
  class Layer {
   public:
    Layer(ParameterStore<T>&, std::int64_t, std::int64_t, double) {}
    void add(const ParameterStore<T>&, T*, std::int64_t, std::int64_t) const {}
    void add_backward(ParameterStore<T>&, const T*, std::int64_t, std::int64_t) const {}
  };
};

static_assert(PositionPolicy<Learned, float> && PositionPolicy<Learned, double>);
static_assert(PositionPolicy<None, float> && PositionPolicy<None, double>);

}  // namespace seqrec::policy::pos
