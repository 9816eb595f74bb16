// What each family of components must provide, as C++20 concepts. A policy that misses a piece
// fails its static_assert next to its definition with the concept's name in the message, instead
// of deep inside the model template.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>

#include "seqrec/model/parameter_store.hpp"

namespace seqrec::policy {

template <typename P, typename T>
concept NormPolicy = requires(typename P::template Layer<T> layer, ParameterStore<T>& store,
                              const T* cx, T* x, std::int64_t n) {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::stats_per_row } -> std::convertible_to<std::int64_t>;
  typename P::template Layer<T>;
  requires std::constructible_from < typename P::template Layer<T>, ParameterStore<T>
  &, const std::string&, std::int64_t, double > ;
  layer.forward(store, cx, x, x, n);
  layer.backward(store, cx, cx, cx, x, n);
};

template <typename P, typename T>
concept PositionPolicy = requires(typename P::template Layer<T> layer, ParameterStore<T>& store,
                                  const T* cx, T* x, std::int64_t n) {
  { P::name } -> std::convertible_to<std::string_view>;
  requires std::constructible_from < typename P::template Layer<T>, ParameterStore<T>
  &, std::int64_t, std::int64_t, double > ;
  layer.add(store, x, n, n);            // x (B, L, D) += positions
  layer.add_backward(store, cx, n, n);  // gradient of that addition
};

template <typename P, typename T>
concept FeedForwardPolicy = requires(typename P::template Layer<T> layer, ParameterStore<T>& store,
                                     typename P::template Layer<T>::Cache& cache, const T* cx, T* x,
                                     std::int64_t n) {
  { P::name } -> std::convertible_to<std::string_view>;
  requires std::constructible_from < typename P::template Layer<T>, ParameterStore<T>
  &, const std::string&, std::int64_t, std::int64_t, double, double > ;
  layer.forward(store, cx, x, cache, n);
  layer.backward(store, cx, cache, cx, x, n);
};

}  // namespace seqrec::policy
