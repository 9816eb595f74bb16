// One flat store for every parameter tensor of a model, with its gradient and both AdamW moments
// alongside. A checkpoint, an optimiser step, a gradient norm and (later) a gradient all-reduce
// are each one walk over four contiguous arrays. Freezing a tensor (stage one of two-stage
// training) is a flag here, read by the optimiser: layers never branch on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"

namespace seqrec {

/// Index of a tensor in a ParameterStore.
struct ParamId {
  std::size_t index = static_cast<std::size_t>(-1);
};

/// How a tensor is initialised.
enum class Init { Zeros, Ones, Normal };

template <typename T>
class ParameterStore {
 public:
  using value_type = T;
  struct Entry {
    std::string name;
    std::vector<std::int64_t> shape;
    std::size_t offset = 0;
    std::size_t numel = 0;
    bool decay = true;  // AdamW weight decay applies (not to norms and biases)
    bool frozen = false;
    Init init = Init::Zeros;
    double init_std = 0.0;
  };

  /// Registers a tensor; call only while building a model (pointers are stable afterwards).
  ParamId add(std::string name, std::vector<std::int64_t> shape, bool decay, Init init,
              double init_std = 0.0) {
    for (const auto& e : entries_) SEQREC_CHECK(e.name != name, "duplicate parameter name " + name);
    // Each tensor starts on a 64-byte boundary, so its alignment is the same in every store.
    constexpr std::size_t kAlign = 64 / sizeof(T) > 0 ? 64 / sizeof(T) : 1;
    const std::size_t offset = (values_.size() + kAlign - 1) / kAlign * kAlign;
    Entry e{std::move(name), std::move(shape), offset, 0, decay, false, init, init_std};
    e.numel = static_cast<std::size_t>(
        std::accumulate(e.shape.begin(), e.shape.end(), std::int64_t{1}, std::multiplies<>()));
    values_.resize(offset + e.numel, T(0));
    grads_.resize(values_.size(), T(0));
    m_.resize(values_.size(), T(0));
    v_.resize(values_.size(), T(0));
    entries_.push_back(std::move(e));
    return ParamId{entries_.size() - 1};
  }

  T* value(ParamId id) { return values_.data() + entries_.at(id.index).offset; }
  const T* value(ParamId id) const { return values_.data() + entries_.at(id.index).offset; }
  T* grad(ParamId id) { return grads_.data() + entries_.at(id.index).offset; }
  const T* grad(ParamId id) const { return grads_.data() + entries_.at(id.index).offset; }
  const Entry& entry(ParamId id) const { return entries_.at(id.index); }
  const std::vector<Entry>& entries() const noexcept { return entries_; }

  /// The entry called `name`; throws naming it when absent.
  ParamId find(const std::string& name) const {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].name == name) return ParamId{i};
    throw Error("no parameter named '" + name + "'");
  }
  /// Draws every tensor from its init spec, in registration order, from one stream seeded with
  /// `seed`: every backend's model registers the same tensors, so they start identical.
  void initialise(std::uint64_t seed) {
    Rng rng(seed);
    for (const auto& e : entries_) {
      T* v = values_.data() + e.offset;
      for (std::size_t i = 0; i < e.numel; ++i) {
        switch (e.init) {
          case Init::Zeros:
            v[i] = T(0);
            break;
          case Init::Ones:
            v[i] = T(1);
            break;
          case Init::Normal:
            v[i] = static_cast<T>(rng.normal() * e.init_std);
            break;
        }
      }
    }
  }
  void set_frozen(ParamId id, bool frozen) { entries_.at(id.index).frozen = frozen; }

  AlignedVector<T>& values() noexcept { return values_; }
  const AlignedVector<T>& values() const noexcept { return values_; }
  AlignedVector<T>& grads() noexcept { return grads_; }
  const AlignedVector<T>& grads() const noexcept { return grads_; }
  AlignedVector<T>& moment1() noexcept { return m_; }
  const AlignedVector<T>& moment1() const noexcept { return m_; }
  AlignedVector<T>& moment2() noexcept { return v_; }
  const AlignedVector<T>& moment2() const noexcept { return v_; }

  /// Elements in the flat arrays (tensor sizes plus alignment padding).
  std::size_t size() const noexcept { return values_.size(); }
  /// Number of parameters (padding excluded).
  std::size_t num_parameters() const noexcept {
    std::size_t n = 0;
    for (const auto& e : entries_) n += e.numel;
    return n;
  }
  void zero_grads() { std::fill(grads_.begin(), grads_.end(), T(0)); }

 private:
  std::vector<Entry> entries_;
  AlignedVector<T> values_, grads_, m_, v_;
};

}  // namespace seqrec
