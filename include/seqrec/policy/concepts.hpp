// What each family of components must provide, as C++20 concepts. A policy that misses a piece
// fails its static_assert next to its definition with the concept's name in the message, instead
// of deep inside the model template.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>

#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"

namespace seqrec::policy {

/// Normalisation over rows of width D: Layer<T>(store, prefix, D, eps), forward saving
/// `stats_per_row` values per row, backward overwriting dx and accumulating its parameters.
template <typename P, typename T>
concept NormPolicy = requires(typename P::template Layer<T> layer, ParameterStore<T>& store,
                              const T* cx, T* x, std::int64_t n) {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::stats_per_row } -> std::convertible_to<std::int64_t>;
  requires std::constructible_from < typename P::template Layer<T>, ParameterStore<T>
  &, const std::string&, std::int64_t, double > ;
  layer.forward(store, cx, x, x, n);
  layer.backward(store, cx, cx, cx, x, n);
};

/// Positional information, applied at two hook points: added to the input embeddings
/// (`add`, e.g. a learned table) and/or rotating Q and K inside attention (`rotate_qk`, RoPE).
/// Each hook has its backward; a policy makes the hooks it does not use no-ops.
template <typename P, typename T>
concept PositionPolicy = requires(typename P::template Layer<T> layer, ParameterStore<T>& store,
                                  const ModelShape& shape, const T* cx, T* x, std::int64_t n) {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::extrapolates } -> std::convertible_to<bool>;  // usable on windows longer than max_len
  requires std::constructible_from < typename P::template Layer<T>, ParameterStore<T>
  &, const ModelShape& > ;
  layer.add(store, x, n, n);            // x (B, L, D) += positions
  layer.add_backward(store, cx, n, n);  // gradient of that addition
  layer.rotate_qk(x, n, n);             // qkv (B·L, 3D), in place
  layer.rotate_qk_backward(x, n, n);    // dqkv (B·L, 3D), in place
};

/// Feed-forward block over rows of width D. `valid` (N, may be null) marks real tokens, for
/// components whose statistics must ignore padding (MoE routing). aux_loss() is the block's own
/// regulariser added to the training loss (0 for plain MLPs); its gradient is part of backward.
template <typename P, typename T>
concept FeedForwardPolicy = requires(typename P::template Layer<T> layer, ParameterStore<T>& store,
                                     typename P::template Layer<T>::Cache& cache, const T* cx, T* x,
                                     const std::uint8_t* valid, std::int64_t n) {
  { P::name } -> std::convertible_to<std::string_view>;
  // (store, prefix, shape, std of the residual-branch output projection)
  requires std::constructible_from < typename P::template Layer<T>, ParameterStore<T>
  &, const std::string&, const ModelShape&, double > ;
  layer.forward(store, cx, x, cache, n, valid);
  layer.backward(store, cx, cache, cx, x, n);
  { layer.aux_loss(cache) } -> std::convertible_to<double>;
};

}  // namespace seqrec::policy
