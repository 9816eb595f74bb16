// A model variant is a list of policy types. Model<Config, Backend> is compiled once per variant;
// nothing in a hot path asks at run time which component it has.
#pragma once

#include <string>

#include "seqrec/policy/feed_forward.hpp"
#include "seqrec/policy/norm.hpp"
#include "seqrec/policy/position.hpp"

namespace seqrec {

template <typename Pos, typename Norm, typename Ffn>
struct Config {
  using Position = Pos;
  using Normalization = Norm;
  using FeedForward = Ffn;
  /// e.g. "pos=learned norm=rmsnorm ffn=relu"
  static std::string describe() {
    return "pos=" + std::string(Pos::name) + " norm=" + std::string(Norm::name) +
           " ffn=" + std::string(Ffn::name);
  }
};

/// SASRec as the study's baseline: learned positions, RMSNorm (pre-norm), ReLU MLP.
using SasRecConfig = Config<policy::pos::Learned, policy::norm::RMSNorm, policy::ffn::ReluMlp>;
/// The same with a SiLU MLP.
using SasRecSiluConfig = Config<policy::pos::Learned, policy::norm::RMSNorm, policy::ffn::SiluMlp>;

}  // namespace seqrec
