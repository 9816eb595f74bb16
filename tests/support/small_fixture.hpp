// The small synthetic training fixture several test areas train on: a generated dataset split
// leave-one-out, and a model shape small enough to train in a fraction of a second.
#pragma once

#include <cstdint>

#include "seqrec/model.hpp"

namespace seqrec::test {

struct Fixture {
  data::Dataset dataset;
  data::Split split;
};

/// `users` users over `items` items, 5 to 15 interactions each, split leave-one-out.
inline Fixture small_fixture(std::int32_t users = 400, std::int32_t items = 60) {
  data::SyntheticOptions o;
  o.users = users;
  o.items = items;
  o.min_len = 5;
  o.max_len = 15;
  Fixture f;
  f.dataset = data::build_dataset(data::make_synthetic(o).log);
  f.split = data::split_loo(f.dataset);
  return f;
}

/// d 16, 2 blocks of 2 heads, FFN 32, L 12, over the dataset's vocabulary.
inline ModelShape small_shape(const data::Dataset& d, double dropout = 0.1) {
  ModelShape s;
  s.vocab_size = d.vocab.size();
  s.max_len = 12;
  s.dim = 16;
  s.layers = 2;
  s.heads = 2;
  s.ffn_dim = 32;
  s.dropout = dropout;
  return s;
}

}  // namespace seqrec::test
