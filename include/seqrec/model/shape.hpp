// The run-time sizes of a model (everything that is a number rather than a component choice).
// Component choices are types (see config.hpp); sizes stay values, validated here once with
// errors that name the offending setting.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "seqrec/core/error.hpp"

namespace seqrec {

struct ModelShape {
  std::int32_t vocab_size = 0;  // special tokens + items
  std::int32_t max_len = 50;    // L: positions per sequence window
  std::int32_t dim = 64;        // D
  std::int32_t layers = 2;
  std::int32_t heads = 1;     // H; D must be divisible by H
  std::int32_t ffn_dim = 64;  // inner width of the feed-forward block
  double dropout = 0.2;
  double init_std = 0.02;
  double norm_eps = 1e-6;
  bool scale_embeddings = true;    // multiply item embeddings by sqrt(D) (SASRec)
  double rope_base = 10000.0;      // RoPE frequency base (used by pos::RoPE only)
  double moe_balance_coef = 0.01;  // MoE Switch load-balancing loss weight (ffn::MoE only)
  double moe_z_coef = 0.001;       // MoE router z-loss weight
  // Max logits alive at once in the CPU model's loss (cache-sized); the CUDA model takes its
  // budget from its backend instead (cuda::Backend::set_loss_chunk_elems).
  std::int64_t loss_chunk_elems = std::int64_t{1} << 22;

  void validate() const {
    auto bad = [](const std::string& what, const std::string& v) {
      throw InputError("model shape", 0, what, v);
    };
    if (vocab_size <= 4) bad("vocabulary must hold at least one item", std::to_string(vocab_size));
    if (max_len < 1) bad("--max-len must be >= 1", std::to_string(max_len));
    if (dim < 1) bad("--dim must be >= 1", std::to_string(dim));
    if (layers < 0) bad("--layers must be >= 0", std::to_string(layers));
    if (heads < 1 || dim % heads != 0)
      bad("--heads must divide --dim (" + std::to_string(dim) + ")", std::to_string(heads));
    if (ffn_dim < 1) bad("--ffn-dim must be >= 1", std::to_string(ffn_dim));
    if (!(dropout >= 0.0 && dropout < 1.0))
      bad("--dropout must be in [0, 1)", std::to_string(dropout));
    if (!(init_std > 0.0)) bad("init std must be > 0", std::to_string(init_std));
    if (!(rope_base > 1.0)) bad("RoPE base must be > 1", std::to_string(rope_base));
    if (!(moe_balance_coef >= 0))
      bad("MoE balance coefficient must be >= 0", std::to_string(moe_balance_coef));
    if (!(moe_z_coef >= 0)) bad("MoE z-loss coefficient must be >= 0", std::to_string(moe_z_coef));
    if (loss_chunk_elems < 1) bad("loss chunk must be >= 1", std::to_string(loss_chunk_elems));
  }
};

inline void to_json(nlohmann::json& j, const ModelShape& s) {
  j = {{"vocab_size", s.vocab_size},
       {"max_len", s.max_len},
       {"dim", s.dim},
       {"layers", s.layers},
       {"heads", s.heads},
       {"ffn_dim", s.ffn_dim},
       {"dropout", s.dropout},
       {"init_std", s.init_std},
       {"norm_eps", s.norm_eps},
       {"scale_embeddings", s.scale_embeddings},
       {"loss_chunk_elems", s.loss_chunk_elems},
       {"rope_base", s.rope_base},
       {"moe_balance_coef", s.moe_balance_coef},
       {"moe_z_coef", s.moe_z_coef}};
}
inline void from_json(const nlohmann::json& j, ModelShape& s) {
  j.at("vocab_size").get_to(s.vocab_size);
  j.at("max_len").get_to(s.max_len);
  j.at("dim").get_to(s.dim);
  j.at("layers").get_to(s.layers);
  j.at("heads").get_to(s.heads);
  j.at("ffn_dim").get_to(s.ffn_dim);
  j.at("dropout").get_to(s.dropout);
  j.at("init_std").get_to(s.init_std);
  j.at("norm_eps").get_to(s.norm_eps);
  j.at("scale_embeddings").get_to(s.scale_embeddings);
  j.at("loss_chunk_elems").get_to(s.loss_chunk_elems);
  j.at("rope_base").get_to(s.rope_base);
  j.at("moe_balance_coef").get_to(s.moe_balance_coef);
  j.at("moe_z_coef").get_to(s.moe_z_coef);
}

}  // namespace seqrec
