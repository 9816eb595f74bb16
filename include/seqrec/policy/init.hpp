// Embedding-initialiser policies: how the item table starts. Normal draws it like every other
// matrix; Pretrained additionally overwrites it from a text encoder's item embeddings (see
// data/pretrained.hpp), which the trainer loads because it needs files and the training split.
#pragma once

#include <string_view>

namespace seqrec::policy::init {

struct Normal {
  static constexpr std::string_view name = "normal";
  static constexpr bool pretrained = false;
};

struct Pretrained {
  static constexpr std::string_view name = "pretrained";
  static constexpr bool pretrained = true;
};

template <typename P>
concept InitPolicy = requires {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::pretrained } -> std::convertible_to<bool>;
};
static_assert(InitPolicy<Normal> && InitPolicy<Pretrained>);

}  // namespace seqrec::policy::init
