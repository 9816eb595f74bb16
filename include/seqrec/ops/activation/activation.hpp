// Element-wise activations as types with a static value and derivative, usable on host and, later,
// device. The derivative is taken with respect to the pre-activation input.
#pragma once

#include <cmath>
#include <string_view>

namespace seqrec::ops {

struct Relu {
  static constexpr std::string_view name = "relu";
  template <typename T>
  static T f(T x) noexcept {
    return x > T(0) ? x : T(0);
  }
  template <typename T>
  static T df(T x) noexcept {
    return x > T(0) ? T(1) : T(0);
  }
};

/// SiLU (swish): x · σ(x); derivative σ(x) · (1 + x · (1 − σ(x))).
struct Silu {
  static constexpr std::string_view name = "silu";
  template <typename T>
  static T f(T x) noexcept {
    return x / (T(1) + std::exp(-x));
  }
  template <typename T>
  static T df(T x) noexcept {
    const T s = T(1) / (T(1) + std::exp(-x));
    return s * (T(1) + x * (T(1) - s));
  }
};

}  // namespace seqrec::ops
