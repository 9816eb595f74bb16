// The shared body of dpo_finetune and of the ablation runner's "+ DPO" rows: load a trained
// checkpoint (the policy, and before it moves the frozen reference), build preference pairs from
// the training sequences by similarity in the trained item table, fine-tune with DPO / S-DPO (+ CE
// anchor), and evaluate before and after.
#pragma once

#include <boost/hana.hpp>

#include "common/trainer_main.hpp"

namespace seqrec::app {

/// Every variant a checkpoint can hold; dpo_finetune picks the one the checkpoint names.
inline constexpr auto kAllConfigs =
    boost::hana::tuple_t<SasRecConfig, OursConfig, OursRandomConfig, LearnedPeConfig, GatedConfig,
                         MoeConfig, SasRecSiluConfig, SasRecLayerNormConfig>;

struct DpoRunOptions {
  train::PairOptions pairs;
  train::DpoOptions dpo;
  std::int32_t epochs = 1;
  double lr = 1e-4;
};

/// The DPO flags. The ablation runner (own_schedule_flags) names its schedule --dpo-epochs and
/// --dpo-lr, next to the training flags, and fixes the loss per row; dpo_finetune uses the shared
/// --epochs/--lr and takes --loss.
inline void add_dpo_options(cxxopts::Options& o, bool own_schedule_flags) {
  // clang-format off
  o.add_options("dpo")
    ("beta", "DPO temperature beta", cxxopts::value<double>()->default_value("0.1"))
    ("ce-weight", "weight of the cross-entropy anchor on the chosen item (dpo_finetune; the "
                  "ablation's anchor row)", cxxopts::value<double>()->default_value(own_schedule_flags ? "1.0" : "0"))
    ("negatives", "rejected items per chosen item (the ablation's S-DPO row)",
     cxxopts::value<std::int32_t>()->default_value(own_schedule_flags ? "4" : "1"))
    ("hard-share", "share of negatives from the hard pool", cxxopts::value<double>()->default_value("0.3"))
    ("hard-top", "hard pool: the N most similar admissible items", cxxopts::value<std::int32_t>()->default_value("10"))
    ("easy-top", "easy pool: similarity ranks hard-top+1 .. N", cxxopts::value<std::int32_t>()->default_value("200"))
    ("all-positions", "a pair at every position of each training sequence, not only the last")
    ("policy-dropout", "keep the model's dropout on in the policy during DPO (default off: the "
                       "reference is scored without dropout)");
  if (!own_schedule_flags)
    o.add_options("dpo")
      ("loss", "dpo (pairwise, averaged over negatives) or sdpo (all negatives in one softmax)",
       cxxopts::value<std::string>()->default_value("dpo"));
  if (own_schedule_flags)
    o.add_options("dpo")
      ("dpo-epochs", "DPO fine-tuning epochs", cxxopts::value<std::int32_t>()->default_value("1"))
      ("dpo-lr", "DPO peak learning rate", cxxopts::value<double>()->default_value("0.0001"));
  // clang-format on
}

inline DpoRunOptions parse_dpo_options(const cxxopts::ParseResult& a, bool own_schedule_flags) {
  DpoRunOptions r;
  r.dpo.beta = a["beta"].as<double>();
  r.dpo.ce_weight = a["ce-weight"].as<double>();
  const std::string loss = own_schedule_flags ? "dpo" : a["loss"].as<std::string>();
  if (loss == "dpo")
    r.dpo.loss = train::PreferenceLoss::Dpo;
  else if (loss == "sdpo")
    r.dpo.loss = train::PreferenceLoss::SDpo;
  else
    throw InputError("--loss", 0, "expected dpo or sdpo", loss);
  r.pairs.negatives = a["negatives"].as<std::int32_t>();
  r.pairs.hard_share = a["hard-share"].as<double>();
  r.pairs.hard_top = a["hard-top"].as<std::int32_t>();
  r.pairs.easy_top = a["easy-top"].as<std::int32_t>();
  r.pairs.all_positions = a.count("all-positions") > 0;
  r.dpo.policy_dropout = a.count("policy-dropout") > 0;
  if (!(r.dpo.beta > 0)) throw InputError("--beta", 0, "must be > 0", std::to_string(r.dpo.beta));
  if (r.dpo.ce_weight < 0)
    throw InputError("--ce-weight", 0, "must be >= 0", std::to_string(r.dpo.ce_weight));
  if (r.pairs.negatives < 1)
    throw InputError("--negatives", 0, "must be >= 1", std::to_string(r.pairs.negatives));
  if (!(r.pairs.hard_share >= 0 && r.pairs.hard_share <= 1))
    throw InputError("--hard-share", 0, "must lie in [0, 1]", std::to_string(r.pairs.hard_share));
  if (r.pairs.hard_top < 1 || r.pairs.easy_top <= r.pairs.hard_top)
    throw InputError("--easy-top", 0, "need 1 <= --hard-top < --easy-top",
                     std::to_string(r.pairs.hard_top) + " / " + std::to_string(r.pairs.easy_top));
  if (own_schedule_flags) {
    r.epochs = a["dpo-epochs"].as<std::int32_t>();
    r.lr = a["dpo-lr"].as<double>();
  } else {  // dpo_finetune: the shared --epochs/--lr, with fine-tuning defaults when not given
    r.epochs = a.count("epochs") ? a["epochs"].as<std::int32_t>() : 1;
    r.lr = a.count("lr") ? a["lr"].as<double>() : 1e-4;
  }
  if (r.epochs < 1)
    throw InputError("--epochs", 0, "DPO needs >= 1 epoch", std::to_string(r.epochs));
  return r;
}

struct DpoRunResult {
  std::string variant;
  std::size_t params_total = 0, params_active = 0, pairs = 0;
  double hard_share = 0;  // measured share of negatives from the hard pool
  eval::Metrics valid_before, valid;
  std::optional<eval::Metrics> test_before, test;
  train::DpoResult dpo;
  double pairs_seconds = 0, reference_seconds = 0;
};

template <typename Cfg, typename ModelT>
DpoRunResult run_dpo_with(ModelT& policy, const RunOptions& ro, const LoadedData& d,
                          const io::CheckpointInfo& info, const std::string& checkpoint,
                          const DpoRunOptions& o, std::uint64_t seed);

/// Fine-tunes the Cfg model stored in `checkpoint` on d's training sequences, on the device the
/// options name.
template <typename Cfg>
DpoRunResult run_dpo(const RunOptions& ro, const LoadedData& d, const std::string& checkpoint,
                     const DpoRunOptions& o, std::uint64_t seed) {
  const io::CheckpointInfo info = io::read_checkpoint_info(checkpoint);
  const ModelShape shape = info.config.at("shape").get<ModelShape>();
  if (shape.vocab_size != d.dataset.vocab.size())
    throw InputError(checkpoint, 0,
                     "checkpoint was trained on a vocabulary of " +
                         std::to_string(shape.vocab_size) + " tokens, this data has " +
                         std::to_string(d.dataset.vocab.size()) +
                         " (pass the --data/--truncate flags it was trained with)",
                     std::to_string(shape.vocab_size));
  if (ro.device >= 0) {
    if constexpr (kCudaImplements<Cfg>) {
      DeviceModel<Cfg> policy = load_process_model<Cfg>(ro, shape, seed);
      if (leads(ro))
        std::fprintf(stderr, "dpo on %s\n", device_run_name(ro, policy.device_name()).c_str());
      return run_dpo_with<Cfg>(policy, ro, d, info, checkpoint, o, seed);
    } else {
      throw InputError(
          "--device", 0,
          "variant '" + Cfg::describe() + "' has no CUDA implementation; use --device cpu", "cuda");
    }
  }
  cpu::Backend backend(cpu_threads(ro));
  Model<Cfg, cpu::Backend> policy(shape, backend, seed);
  return run_dpo_with<Cfg>(policy, ro, d, info, checkpoint, o, seed);
}

/// run_dpo's body on a built model (CPU, or DeviceModel<Cfg> on a GPU: the pair head then runs on
/// the device too, see train::preference_step). The frozen reference is the checkpoint's model,
/// which the policy is until fine-tuning starts: its log-probabilities are taken from the policy
/// before the first step, so no second model is loaded or kept.
template <typename Cfg, typename ModelT>
DpoRunResult run_dpo_with(ModelT& policy, const RunOptions& ro, const LoadedData& d,
                          const io::CheckpointInfo& info, const std::string& checkpoint,
                          const DpoRunOptions& o, std::uint64_t seed) {
  using Clock = std::chrono::steady_clock;
  const ModelShape shape = policy.shape();
  io::load_checkpoint(checkpoint, policy, false);
  DpoRunResult res;
  res.variant = Cfg::describe();
  std::tie(res.params_total, res.params_active) = count_parameters(policy);
  eval::EvalOptions eo;
  eo.exclude_history = ro.exclude_history;
  // Evaluation, the reference pass and training are shared by the group's ranks, if any.
  auto evaluate = [&](const std::vector<data::EvalCase>& cases) {
    return in_group(ro, [&](auto& comm) { return dist::evaluate(policy, cases, eo, comm); });
  };
  res.valid_before = evaluate(d.split.valid);
  if (d.split.has_test) res.test_before = evaluate(d.split.test);

  auto t0 = Clock::now();
  train::PairOptions po = o.pairs;
  po.seed = seed;
  const auto pairs = train::build_preference_pairs(
      d.split.train, policy.parameters().value(policy.item_embedding()), shape.vocab_size,
      shape.dim, shape.max_len, po);
  res.pairs_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  res.pairs = pairs.pairs();
  std::size_t hard = 0, drawn = 0;
  for (std::size_t i = 0; i < pairs.rank.size(); ++i)
    if (pairs.rank[i] > 0) {
      hard += pairs.rank[i] <= po.hard_top;
      ++drawn;
    }
  res.hard_share = drawn ? double(hard) / double(drawn) : 0.0;
  t0 = Clock::now();
  const std::vector<double> ref =
      in_group(ro, [&](auto& comm) { return train::reference_log_probs(policy, pairs, comm); });
  res.reference_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (leads(ro))
    std::fprintf(stderr,
                 "dpo: %zu pairs x %d negatives (%.1f%% hard), built in %.1f s; reference "
                 "log-probs in %.1f s\n",
                 res.pairs, po.negatives, 100 * res.hard_share, res.pairs_seconds,
                 res.reference_seconds);

  train::TrainOptions t = ro.train;
  t.epochs = o.epochs;
  t.lr = o.lr;
  t.seed = seed;
  t.eval_every = 0;
  res.dpo = in_group(ro, [&](auto& comm) {
    return train::dpo_train(policy, pairs, ref, o.dpo, t, comm, nullptr);
  });
  res.valid = evaluate(d.split.valid);
  if (d.split.has_test) res.test = evaluate(d.split.test);
  if (!ro.train.checkpoint.empty() && leads(ro)) {
    nlohmann::json config = info.config;
    config["dpo"] = {{"init_checkpoint", checkpoint},
                     {"loss", o.dpo.loss == train::PreferenceLoss::Dpo ? "dpo" : "sdpo"},
                     {"beta", o.dpo.beta},
                     {"ce_weight", o.dpo.ce_weight},
                     {"negatives", po.negatives},
                     {"hard_share", po.hard_share},
                     {"epochs", o.epochs},
                     {"lr", o.lr},
                     {"seed", seed}};
    io::save_checkpoint(ro.train.checkpoint, policy, io::TrainState{}, config);
  }
  return res;
}

/// Calls f.template operator()<Cfg>() for the Cfg whose describe() is `variant`; false if none.
template <typename F>
bool with_config_named(const std::string& variant, F&& f) {
  bool found = false;
  boost::hana::for_each(kAllConfigs, [&](auto t) {
    using Cfg = typename decltype(t)::type;
    if (!found && Cfg::describe() == variant) {
      found = true;
      f.template operator()<Cfg>();
    }
  });
  return found;
}

}  // namespace seqrec::app
