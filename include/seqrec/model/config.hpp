// A model variant is a list of policy types. Model<Config, Backend> is compiled once per variant;
// nothing in a hot path asks at run time which component it has.
#pragma once

#include <string>

#include "seqrec/policy/feed_forward.hpp"
#include "seqrec/policy/init.hpp"
#include "seqrec/policy/norm.hpp"
#include "seqrec/policy/position.hpp"

namespace seqrec {

template <typename Pos, typename Norm, typename Ffn, typename Init = policy::init::Normal>
struct Config {
  using Position = Pos;
  using Normalization = Norm;
  using FeedForward = Ffn;
  using Initializer = Init;
  static_assert(policy::init::InitPolicy<Init>);
  /// e.g. "pos=learned norm=rmsnorm ffn=relu init=normal"
  static std::string describe() {
    return "pos=" + std::string(Pos::name) + " norm=" + std::string(Norm::name) +
           " ffn=" + std::string(Ffn::name) + " init=" + std::string(Init::name);
  }
};

namespace pos = policy::pos;
namespace norm = policy::norm;
namespace ffn = policy::ffn;
namespace init = policy::init;

/// The study's baseline: random init, learned positions, RMSNorm (pre-norm), ReLU MLP.
using SasRecConfig = Config<pos::Learned, norm::RMSNorm, ffn::ReluMlp, init::Normal>;
/// Baseline with a SiLU MLP.
using SasRecSiluConfig = Config<pos::Learned, norm::RMSNorm, ffn::SiluMlp, init::Normal>;
/// The study's best: title-embedding init, RoPE, SiLU MLP.
using OursConfig = Config<pos::RoPE, norm::RMSNorm, ffn::SiluMlp, init::Pretrained>;
/// Control the study lacked: the same without title init (isolates the init).
using OursRandomConfig = Config<pos::RoPE, norm::RMSNorm, ffn::SiluMlp, init::Normal>;
/// Title init with learned positions (isolates RoPE).
using LearnedPeConfig = Config<pos::Learned, norm::RMSNorm, ffn::SiluMlp, init::Pretrained>;
/// Title init, RoPE, SwiGLU with matched parameter count.
using GatedConfig = Config<pos::RoPE, norm::RMSNorm, ffn::GatedMlp, init::Pretrained>;
/// Title init, RoPE, mixture of 4 SiLU experts, top-2.
using MoeConfig = Config<pos::RoPE, norm::RMSNorm, ffn::MoE<4, 2, ffn::SiluMlp>, init::Pretrained>;
/// LayerNorm instead of RMSNorm on the baseline.
using SasRecLayerNormConfig = Config<pos::Learned, norm::LayerNorm, ffn::ReluMlp, init::Normal>;

}  // namespace seqrec
