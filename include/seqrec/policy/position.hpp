// Positional-encoding policies. Positions index the slots of the left-padded window (slot L−1 is
// always the most recent item), as in SASRec. Two hook points exist: `add` on the input
// embeddings (learned table) and `rotate_qk` on the attention queries and keys (RoPE); each
// policy makes the hook it does not use a no-op, which the compiler removes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/ops/rope/rope_cpu.hpp"
#include "seqrec/policy/concepts.hpp"

namespace seqrec::policy::pos {

/// Hooks a policy does not use.
template <typename T>
struct NoHooks {
  void add(const ParameterStore<T>&, T*, std::int64_t, std::int64_t) const {}
  void add_backward(ParameterStore<T>&, const T*, std::int64_t, std::int64_t) const {}
  void rotate_qk(T*, std::int64_t, std::int64_t) const {}
  void rotate_qk_backward(T*, std::int64_t, std::int64_t) const {}
};

/// A learned table P (max_len, D): x[b, l] += P[l]. Cannot go past max_len.
struct Learned {
  static constexpr std::string_view name = "learned";
  static constexpr bool extrapolates = false;

  template <typename T>
  class Layer : public NoHooks<T> {
   public:
    Layer(ParameterStore<T>& store, const ModelShape& s)
        : table_(store.add("pos_emb.weight", {s.max_len, s.dim}, true, Init::Normal, s.init_std)),
          max_len_(s.max_len),
          dim_(s.dim) {}

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
    using NoHooks<T>::rotate_qk;
    using NoHooks<T>::rotate_qk_backward;

   private:
    ParamId table_;
    std::int64_t max_len_, dim_;
  };
};

/// Rotary embeddings on Q and K of every head (base from ModelShape::rope_base). Relative by
/// construction, so windows longer than the training max_len are allowed.
struct RoPE {
  static constexpr std::string_view name = "rope";
  static constexpr bool extrapolates = true;

  template <typename T>
  class Layer : public NoHooks<T> {
   public:
    Layer(ParameterStore<T>&, const ModelShape& s)
        : dim_(s.dim), heads_(s.heads), base_(s.rope_base) {
      SEQREC_CHECK((s.dim / s.heads) % 2 == 0, "RoPE needs an even head width (dim / heads)");
    }
    void rotate_qk(T* qkv, std::int64_t batch, std::int64_t len) const {
      ops::rope_apply<T>({batch, len, dim_, heads_, base_}, qkv, +1);
    }
    void rotate_qk_backward(T* dqkv, std::int64_t batch, std::int64_t len) const {
      ops::rope_apply<T>({batch, len, dim_, heads_, base_}, dqkv, -1);
    }
    using NoHooks<T>::add;
    using NoHooks<T>::add_backward;

   private:
    std::int64_t dim_, heads_;
    double base_;
  };
};

/// No positional information at all (order reaches the model only through the causal mask).
struct None {
  static constexpr std::string_view name = "none";
  static constexpr bool extrapolates = true;
  template <typename T>
  class Layer : public NoHooks<T> {
   public:
    Layer(ParameterStore<T>&, const ModelShape&) {}
  };
};

static_assert(PositionPolicy<Learned, float> && PositionPolicy<Learned, double>);
static_assert(PositionPolicy<RoPE, float> && PositionPolicy<RoPE, double>);
static_assert(PositionPolicy<None, float> && PositionPolicy<None, double>);

}  // namespace seqrec::policy::pos
