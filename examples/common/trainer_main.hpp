// The shared body of every trainer binary and of the ablation runner: the common flags, loading
// and splitting the data, building Model<Config, cpu::Backend> (or, with --device cuda, the same
// model on the GPU through model/device_model.hpp), pretrained initialisation,
// two-stage training, evaluation (plus the length-extrapolation and cold-item analyses) and the
// metrics JSON. A trainer binary is one line naming its Config.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <exception>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <seqrec/model.hpp>
#include <seqrec/model/device_model.hpp>
#include <seqrec/model/device_plugin.hpp>
#include <string>
#include <vector>

#include "group.hpp"

namespace seqrec::app {

// ---- data ---------------------------------------------------------------------------------------

struct LoadedData {
  data::Dataset dataset;
  data::Split split;
  std::string name;
  std::size_t interactions = 0;
  std::optional<data::ItemEmbeddings> builtin_text;  // the synthetic dataset's text vectors
};

/// Reads and splits the data the flags name; `verbose`: print what was loaded on stderr.
inline LoadedData load_data(const cxxopts::ParseResult& a, std::int32_t max_len, std::int32_t dim,
                            bool verbose = true) {
  LoadedData out;
  data::InteractionLog log;
  const std::string path = a["data"].as<std::string>();
  if (path.empty()) {
    out.name = "synthetic (embedded default, generated in code)";
    // Its text vectors are as wide as the model (the interactions do not depend on the width).
    data::SyntheticOptions so;
    so.text_dim = std::max(so.text_dim, dim);
    data::SyntheticData syn = data::make_synthetic(so);
    log = std::move(syn.log);
    out.builtin_text = data::ItemEmbeddings{std::move(syn.text_item_ids), syn.text_dim,
                                            std::move(syn.text), "synthetic text vectors"};
  } else if (std::filesystem::is_directory(path)) {
    out.name = path;
    log = data::load_dataset_dir(path).log;
  } else {
    out.name = path;
    log = data::read_interactions(path);
  }
  out.interactions = log.size();
  const std::string trunc = a["truncate"].as<std::string>();
  if (trunc != "recent" && trunc != "earliest")
    throw InputError("--truncate", 0, "expected recent or earliest", trunc);
  // Earliest keeps each user's first max_len items (the study); recent keeps every item and lets
  // the batcher take the most recent window.
  out.dataset = trunc == "earliest" ? data::build_dataset(log, static_cast<std::size_t>(max_len),
                                                          data::Truncation::Earliest)
                                    : data::build_dataset(log);
  const std::string protocol = a["protocol"].as<std::string>();
  if (protocol == "loo") {
    out.split = data::split_loo(out.dataset);
  } else if (protocol == "holdout") {
    data::HoldoutOptions ho;
    ho.holdout_share = a["holdout-share"].as<double>();
    ho.test_share = a["test-share"].as<double>();
    ho.seed = a["split-seed"].as<std::uint64_t>();
    out.split = data::split_holdout(out.dataset, ho);
  } else {
    throw InputError("--protocol", 0, "expected loo or holdout", protocol);
  }
  if (!verbose) return out;
  if (out.split.dropped_users > 0)
    std::fprintf(stderr, "warning: dropped %zu users too short for --protocol %s\n",
                 out.split.dropped_users, protocol.c_str());
  std::fprintf(stderr,
               "data: %s — %zu users, %d items, %zu interactions; %zu train sequences, %zu valid, "
               "%zu test\n",
               out.name.c_str(), out.dataset.users.size(), out.dataset.vocab.num_items(),
               out.interactions, out.split.train.size(), out.split.valid.size(),
               out.split.test.size());
  return out;
}

// ---- options ------------------------------------------------------------------------------------

inline void add_common_options(cxxopts::Options& o) {
  // clang-format off
  o.add_options("data")
    ("data", "dataset folder (interactions.tsv [+ items.tsv]) or an interactions file "
             "(.tsv, .csv, .txt SASRec, .dat MovieLens); empty: the embedded synthetic demo",
     cxxopts::value<std::string>()->default_value(""))
    ("protocol", "loo (leave-one-out) or holdout (seeded user split, the study's)",
     cxxopts::value<std::string>()->default_value("loo"))
    ("holdout-share", "holdout: share of users held out", cxxopts::value<double>()->default_value("0.2"))
    ("test-share", "holdout: share of held-out users moved to a test set (0: no test)",
     cxxopts::value<double>()->default_value("0"))
    ("split-seed", "holdout: seed of the user split", cxxopts::value<std::uint64_t>()->default_value("42"))
    ("truncate", "recent (train on each user's latest window) or earliest (keep each user's first "
                 "--max-len items, the study's choice)", cxxopts::value<std::string>()->default_value("recent"));
  o.add_options("model")
    ("max-len", "L: positions per sequence window", cxxopts::value<std::int32_t>()->default_value("50"))
    ("dim", "D: model width", cxxopts::value<std::int32_t>()->default_value("64"))
    ("layers", "transformer blocks", cxxopts::value<std::int32_t>()->default_value("2"))
    ("heads", "attention heads (must divide --dim)", cxxopts::value<std::int32_t>()->default_value("2"))
    ("ffn-dim", "feed-forward inner width (0: 4 x dim)", cxxopts::value<std::int32_t>()->default_value("0"))
    ("dropout", "dropout rate", cxxopts::value<double>()->default_value("0.2"))
    ("rope-base", "RoPE frequency base", cxxopts::value<double>()->default_value("10000"))
    ("moe-balance", "MoE load-balancing loss weight", cxxopts::value<double>()->default_value("0.01"))
    ("moe-z", "MoE router z-loss weight", cxxopts::value<double>()->default_value("0.001"));
  o.add_options("pretrained init (variants with title embeddings)")
    ("embeddings", "item embedding matrix (.npy float32/float16 or .safetensors); on the embedded "
                   "dataset its built-in text vectors are used when absent",
     cxxopts::value<std::string>()->default_value(""))
    ("embedding-ids", "raw item id of each row, one per line", cxxopts::value<std::string>()->default_value(""))
    ("embedding-adapter", "exact; truncate (Matryoshka encoders) or pca to narrow, lift to widen (random orthonormal map) when widths differ",
     cxxopts::value<std::string>()->default_value("pca"))
    ("embedding-norm", "mean row norm after rescaling (0: the random init's expected norm)",
     cxxopts::value<double>()->default_value("0"))
    ("neighbour-window", "co-occurrence window for items without an embedding",
     cxxopts::value<std::int32_t>()->default_value("3"))
    ("stage1-epochs", "epochs with the item table frozen before --epochs of full training "
                      "(-1: 4 for pretrained variants, 0 otherwise)",
     cxxopts::value<std::int32_t>()->default_value("-1"))
    ("stage1-lr", "constant learning rate of stage 1", cxxopts::value<double>()->default_value("0.0005"));
  o.add_options("training")
    ("epochs", "training epochs (stage 2 when two-stage)", cxxopts::value<std::int32_t>()->default_value("30"))
    ("batch", "sequences per batch", cxxopts::value<std::int32_t>()->default_value("128"))
    ("lr", "peak learning rate", cxxopts::value<double>()->default_value("0.001"))
    ("weight-decay", "AdamW decoupled weight decay", cxxopts::value<double>()->default_value("0.0"))
    ("warmup", "warmup steps (-1: 5% of all steps)", cxxopts::value<std::int64_t>()->default_value("-1"))
    ("clip", "max gradient norm (0: off)", cxxopts::value<double>()->default_value("1.0"))
    ("seed", "seed of initialisation, batch order and dropout", cxxopts::value<std::uint64_t>()->default_value("42"))
    ("threads", "CPU threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
    ("device", "cpu, cuda or cuda:N (needs a build with CUDA)",
     cxxopts::value<std::string>()->default_value("cpu"))
    ("bf16", "cuda: bf16 GEMM operands with fp32 accumulation (default fp32 throughout)")
    ("eval-every", "validate every N epochs (0: at the end only)", cxxopts::value<std::int32_t>()->default_value("1"))
    ("exclude-history", "do not rank items already in the user's history")
    ("analysis", "also report metrics per history length (window 2 x max-len where the position "
                 "encoding allows) and on cold targets (<= 5 training interactions)")
    ("checkpoint", "write a checkpoint here after every epoch", cxxopts::value<std::string>()->default_value(""))
    ("resume", "resume training from this checkpoint", cxxopts::value<std::string>()->default_value(""))
    ("metrics-json", "write final metrics and config here", cxxopts::value<std::string>()->default_value(""))
    ("no-progress", "no progress bar / progress lines")
    ("h,help", "print this help");
  // clang-format on
}

/// Everything a run needs besides the variant type, parsed and validated once.
struct RunOptions {
  ModelShape shape;
  train::TrainOptions train;
  std::int32_t stage1_epochs = -1;  // -1: variant's default
  int threads = 0;
  std::string embeddings, embedding_ids;
  data::DimAdapter adapter = data::DimAdapter::Pca;
  double embedding_norm = 0;
  std::int32_t neighbour_window = 3;
  bool exclude_history = false;
  bool analysis = false;
  std::string resume, metrics_json;
  int device = -1;         // -1: CPU; otherwise the CUDA device ordinal
  bool bf16 = false;       // CUDA: bf16 GEMM operands
  nlohmann::json config;   // the flags as given, for checkpoints and metrics
  Group* group = nullptr;  // the ranks of a data-parallel run; null: one process
};

/// f(communicator): the run's group's (dist::Mpi in a data-parallel run), else dist::Single.
template <typename F>
auto in_group(const RunOptions& ro, F&& f) {
  if (ro.group) return ro.group->run(f);
  dist::Single one;
  return f(one);
}

/// Whether this process prints and writes files: rank 0, or the only process.
inline bool leads(const RunOptions& ro) { return !ro.group || ro.group->lead(); }

/// CPU threads for this process (--threads shared among the group's ranks on the machine).
inline int cpu_threads(const RunOptions& ro) {
  return ro.group ? ro.group->threads(ro.threads) : ro.threads;
}

/// This process's CUDA device: the one --device names; in a data-parallel run, one GPU per rank
/// on each machine, counted from it (--device cuda:N: local rank k uses N + k), since NCCL
/// refuses two ranks on one GPU.
inline DeviceOptions process_device(const RunOptions& ro) {
  DeviceOptions d{ro.device, ro.bf16};
  if (ro.group && ro.group->size() > 1) {
    const int local = dist::launched_local_rank();
    d.device += local >= 0 ? local : ro.group->rank();
  }
  return d;
}

/// Model<Cfg, ·> on this process's device (process_device); in a data-parallel run an error
/// names the rank and how its GPU was chosen.
template <typename Cfg>
DeviceModel<Cfg> load_process_model(const RunOptions& ro, const ModelShape& shape,
                                    std::uint64_t seed) {
  const DeviceOptions d = process_device(ro);
  try {
    return load_device_model<Cfg>(shape, seed, d);
  } catch (const Error& e) {
    if (!ro.group || ro.group->size() == 1) throw;
    throw Error(
        fmt::format("rank {} of {}: GPU {} (one GPU per rank on each machine, from the "
                    "--device ordinal): {}",
                    ro.group->rank(), ro.group->size(), d.device, e.what()));
  }
}

/// How the log names a device run: the device, and the ranks of a data-parallel one.
inline std::string device_run_name(const RunOptions& ro, const std::string& device) {
  const int ranks = ro.group ? ro.group->size() : 1;
  if (ranks == 1) return device;
  return device + " on rank 0, " + std::to_string(ranks) +
         " ranks (MPI, data-parallel, one GPU each, gradients summed over NCCL)";
}

/// "cpu" → -1, "cuda" → 0, "cuda:N" → N.
inline int parse_device(const std::string& v) {
  if (v == "cpu") return -1;
  if (v == "cuda") return 0;
  if (v.rfind("cuda:", 0) == 0) {
    const std::string n = v.substr(5);
    if (!n.empty() && n.size() < 4 && std::all_of(n.begin(), n.end(), ::isdigit))
      return std::stoi(n);
  }
  throw InputError("--device", 0, "expected cpu, cuda or cuda:N", v);
}

inline RunOptions parse_run_options(const cxxopts::ParseResult& a) {
  RunOptions r;
  if (!a.unmatched().empty())
    throw InputError("command line", 0, "unexpected argument", a.unmatched()[0]);
  r.device = parse_device(a["device"].as<std::string>());
  r.bf16 = a.count("bf16") > 0;
  if (r.bf16 && r.device < 0)
    throw InputError("--bf16", 0, "bf16 applies to --device cuda only", "cpu");
  ModelShape& s = r.shape;
  s.max_len = a["max-len"].as<std::int32_t>();
  s.dim = a["dim"].as<std::int32_t>();
  s.layers = a["layers"].as<std::int32_t>();
  s.heads = a["heads"].as<std::int32_t>();
  const std::int32_t ffn = a["ffn-dim"].as<std::int32_t>();
  s.ffn_dim = ffn > 0 ? ffn : 4 * s.dim;
  s.dropout = a["dropout"].as<double>();
  s.rope_base = a["rope-base"].as<double>();
  s.moe_balance_coef = a["moe-balance"].as<double>();
  s.moe_z_coef = a["moe-z"].as<double>();
  train::TrainOptions& t = r.train;
  t.epochs = a["epochs"].as<std::int32_t>();
  t.batch = a["batch"].as<std::int32_t>();
  t.lr = a["lr"].as<double>();
  t.adam.weight_decay = a["weight-decay"].as<double>();
  t.warmup = a["warmup"].as<std::int64_t>();
  t.clip = a["clip"].as<double>();
  t.seed = a["seed"].as<std::uint64_t>();
  t.checkpoint = a["checkpoint"].as<std::string>();
  t.eval_every = a["eval-every"].as<std::int32_t>();
  t.progress = !a.count("no-progress");
  t.stage1_lr = a["stage1-lr"].as<double>();
  r.stage1_epochs = a["stage1-epochs"].as<std::int32_t>();
  if (t.epochs < 0) throw InputError("--epochs", 0, "must be >= 0", std::to_string(t.epochs));
  if (t.batch < 1) throw InputError("--batch", 0, "must be >= 1", std::to_string(t.batch));
  if (!(t.lr > 0)) throw InputError("--lr", 0, "must be > 0", std::to_string(t.lr));
  if (!(t.stage1_lr > 0))
    throw InputError("--stage1-lr", 0, "must be > 0", std::to_string(t.stage1_lr));
  r.threads = a["threads"].as<int>();
  r.embeddings = a["embeddings"].as<std::string>();
  r.embedding_ids = a["embedding-ids"].as<std::string>();
  if (r.embeddings.empty() != r.embedding_ids.empty())
    throw InputError("--embeddings", 0, "--embeddings and --embedding-ids go together",
                     r.embeddings.empty() ? r.embedding_ids : r.embeddings);
  r.adapter = data::parse_dim_adapter(a["embedding-adapter"].as<std::string>());
  r.embedding_norm = a["embedding-norm"].as<double>();
  r.neighbour_window = a["neighbour-window"].as<std::int32_t>();
  if (r.neighbour_window < 1)
    throw InputError("--neighbour-window", 0, "must be >= 1", std::to_string(r.neighbour_window));
  r.exclude_history = a.count("exclude-history") > 0;
  r.analysis = a.count("analysis") > 0;
  r.resume = a["resume"].as<std::string>();
  r.metrics_json = a["metrics-json"].as<std::string>();
  // Output folders are made here so that a long run cannot fail at its first save.
  for (const std::string& out : {t.checkpoint, r.metrics_json}) {
    const std::filesystem::path parent = std::filesystem::path(out).parent_path();
    if (!out.empty() && !parent.empty()) std::filesystem::create_directories(parent);
  }
  r.config = {{"data", a["data"].as<std::string>()},
              {"protocol", a["protocol"].as<std::string>()},
              {"truncate", a["truncate"].as<std::string>()},
              {"epochs", t.epochs},
              {"stage1_epochs", r.stage1_epochs},
              {"stage1_lr", t.stage1_lr},
              {"batch", t.batch},
              {"lr", t.lr},
              {"weight_decay", t.adam.weight_decay},
              {"warmup", t.warmup},
              {"clip", t.clip},
              {"embeddings", r.embeddings},
              {"embedding_adapter", std::string(data::dim_adapter_name(r.adapter))}};
  return r;
}

// ---- one run ------------------------------------------------------------------------------------

inline nlohmann::json metrics_json(const std::optional<eval::Metrics>& m) {
  if (!m) return nullptr;
  return {{"mrr@10", m->mrr}, {"hr@10", m->hr}, {"ndcg@10", m->ndcg}, {"users", m->count}};
}

struct RunResult {
  std::string variant;
  std::size_t params_total = 0, params_active = 0;
  eval::Metrics valid;
  std::optional<eval::Metrics> test;
  double train_seconds = 0, tokens_per_second = 0;
  std::int32_t epochs_run = 0;
  nlohmann::json extra = nlohmann::json::object();  // init report, analyses, expert shares
};

/// Parameters, and those a token actually uses (MoE: K of E experts).
template <typename Model>
std::pair<std::size_t, std::size_t> count_parameters(const Model& model) {
  std::size_t total = 0, active = 0;
  double expert_share = 1.0;
  using Ffn = typename Model::Config::FeedForward;
  if constexpr (requires { Ffn::experts; }) expert_share = double(Ffn::top_k) / Ffn::experts;
  for (const auto& e : model.parameters().entries()) {
    total += e.numel;
    const bool expert = e.name.find(".experts.") != std::string::npos;
    active += expert ? static_cast<std::size_t>(std::llround(e.numel * expert_share)) : e.numel;
  }
  return {total, active};
}

/// Trains and evaluates `model` (a Model<Cfg, cpu::Backend> or a DeviceModel<Cfg>); `where`
/// names the device for the log and the config.
template <typename Cfg, typename ModelT>
RunResult run_with_model(ModelT& model, const std::string& where, const RunOptions& ro,
                         const LoadedData& d, std::uint64_t seed, const std::string& binary) {
  const ModelShape shape = model.shape();
  train::TrainOptions to = ro.train;
  to.seed = seed;
  constexpr bool pretrained = Cfg::Initializer::pretrained;
  to.stage1_epochs = ro.stage1_epochs >= 0 ? ro.stage1_epochs : (pretrained ? 4 : 0);

  RunResult res;
  res.variant = Cfg::describe();
  std::tie(res.params_total, res.params_active) = count_parameters(model);
  const bool lead = leads(ro);
  if (lead)
    std::fprintf(stderr, "model: %s, %zu parameters (%zu active), %s\n", Cfg::describe().c_str(),
                 res.params_total, res.params_active, where.c_str());

  if constexpr (pretrained) {
    if (ro.resume.empty()) {
      std::optional<data::ItemEmbeddings> emb;
      if (!ro.embeddings.empty())
        emb = data::load_item_embeddings(ro.embeddings, ro.embedding_ids);
      else if (d.builtin_text)
        emb = *d.builtin_text;
      else
        throw InputError("--embeddings", 0,
                         "this variant starts from title embeddings: pass --embeddings and "
                         "--embedding-ids (tools/embed_titles.py makes them)",
                         "");
      const double norm =
          ro.embedding_norm > 0 ? ro.embedding_norm : shape.init_std * std::sqrt(double(shape.dim));
      const auto rep = data::init_item_table<float>(
          model.parameters().value(model.item_embedding()), shape.dim, d.dataset.vocab, *emb,
          ro.adapter, norm, d.split.train, ro.neighbour_window);
      if (lead) std::fprintf(stderr, "%s\n", data::to_string(rep).c_str());
      if constexpr (DeviceResident<ModelT>) model.upload();  // the table was written on the host
      res.extra["init_report"] = {{"matched", rep.matched},
                                  {"ignored", rep.ignored},
                                  {"missing_before_completion", rep.missing_before_completion},
                                  {"filled_per_round", rep.filled_per_round},
                                  {"left_random", rep.left_random},
                                  {"mean_norm_before", rep.mean_norm_before},
                                  {"mean_norm_after", rep.mean_norm_after}};
    }
  }
  if (to.stage1_epochs > 0) to.stage1_frozen = {model.item_embedding()};

  nlohmann::json config = ro.config;
  config["variant"] = Cfg::describe();
  config["binary"] = binary;
  config["seed"] = seed;
  config["stage1_epochs"] = to.stage1_epochs;
  config["device"] = where;
  if (ro.device < 0) config["threads"] = ro.threads;
  if (ro.group) config["ranks"] = ro.group->size();
  io::TrainState start;
  if (!ro.resume.empty()) {
    start = io::load_checkpoint(ro.resume, model).state;
    if (lead)
      std::fprintf(stderr, "resumed from %s at epoch %lld, step %lld\n", ro.resume.c_str(),
                   static_cast<long long>(start.epoch), static_cast<long long>(start.step));
  }
  // In one process or data-parallel over the group's ranks; evaluation is shared out likewise.
  const train::TrainResult r = in_group(
      ro, [&](auto& comm) { return train::train(model, d.split, to, comm, start, config); });
  res.train_seconds = r.train_seconds;
  res.tokens_per_second = r.tokens_per_second();
  res.epochs_run = to.stage1_epochs + to.epochs;

  eval::EvalOptions eo;
  eo.exclude_history = ro.exclude_history;
  auto evaluate = [&](const std::vector<data::EvalCase>& cases) {
    return in_group(ro, [&](auto& comm) { return dist::evaluate(model, cases, eo, comm); });
  };
  res.valid = evaluate(d.split.valid);
  if (d.split.has_test) res.test = evaluate(d.split.test);

  nlohmann::json history = nlohmann::json::array();
  for (const auto& e : r.epochs)
    history.push_back({{"epoch", e.epoch},
                       {"loss", e.loss},
                       {"seconds", e.seconds},
                       {"valid", metrics_json(e.valid)},
                       {"expert_shares", e.expert_shares}});
  res.extra["history"] = history;

  if (ro.analysis) {
    // Extrapolation: histories up to 2L where the encoding allows it, else the trained window.
    const auto& cases = d.split.has_test ? d.split.test : d.split.valid;
    eval::EvalOptions wide = eo;
    wide.window = Cfg::Position::extrapolates ? 2 * shape.max_len : shape.max_len;
    const auto ranks_wide = eval::rank_cases(model, cases, wide);
    const auto ranks = eval::rank_cases(model, cases, eo);
    const std::int64_t L = shape.max_len;
    const std::vector<std::int64_t> edges = {L / 4, L / 2, L - 1, 2 * L - 1, 1 << 30};
    nlohmann::json buckets = nlohmann::json::array();
    const auto b_wide = eval::metrics_by_history_length(cases, ranks_wide, edges);
    const auto b_std = eval::metrics_by_history_length(cases, ranks, edges);
    for (std::size_t i = 0; i < b_wide.size(); ++i)
      buckets.push_back({{"history", b_wide[i].hi >= (1 << 30)
                                         ? fmt::format("{}+", b_wide[i].lo)
                                         : fmt::format("{}-{}", b_wide[i].lo, b_wide[i].hi)},
                         {"users", b_wide[i].metrics.count},
                         {"mrr@10_window_L", b_std[i].metrics.mrr},
                         {"mrr@10_window_2L", b_wide[i].metrics.mrr}});
    res.extra["length_buckets"] = buckets;
    res.extra["window_2L_used"] = Cfg::Position::extrapolates;
    const auto counts = eval::item_counts(d.split, shape.vocab_size);
    const auto cold = eval::cold_target_metrics(cases, ranks, counts, 5);
    // At k = 10 cold targets are rare hits on a large catalogue; k = 100 separates the inits.
    const auto cold100 = eval::cold_target_metrics(cases, ranks, counts, 5, 100);
    res.extra["cold_targets"] = {{"max_train_interactions", 5},
                                 {"metrics", metrics_json(cold)},
                                 {"hr@100", cold100.hr},
                                 {"mrr@100", cold100.mrr}};
  }
  return res;
}

/// Builds Model<Cfg, ·> on the device the options name and runs it.
template <typename Cfg>
RunResult run_variant(const RunOptions& ro, const LoadedData& d, std::uint64_t seed,
                      const std::string& binary) {
  ModelShape shape = ro.shape;
  shape.vocab_size = d.dataset.vocab.size();
  if (ro.device >= 0) {
    if constexpr (kCudaImplements<Cfg>) {
      DeviceModel<Cfg> model = load_process_model<Cfg>(ro, shape, seed);
      return run_with_model<Cfg>(model, device_run_name(ro, model.device_name()), ro, d, seed,
                                 binary);
    } else {
      throw InputError("--device", 0,
                       "variant '" + Cfg::describe() +
                           "' has no CUDA implementation (kCudaImplements in "
                           "model/device_model.hpp lists the policies the CUDA model runs); use "
                           "--device cpu",
                       "cuda");
    }
  }
  const int ranks = ro.group ? ro.group->size() : 1;
  cpu::Backend backend(cpu_threads(ro));
  Model<Cfg, cpu::Backend> model(shape, backend, seed);
  std::string where = "cpu, " + std::to_string(backend.threads()) + " threads";
  if (ranks > 1) where += " per rank, " + std::to_string(ranks) + " ranks (MPI, data-parallel)";
  return run_with_model<Cfg>(model, where, ro, d, seed, binary);
}

inline void print_table(const RunResult& r, const eval::Metrics& pop, std::int32_t epochs) {
  std::printf("\n%-22s %8s %8s %8s %8s\n", "split (model)", "users", "MRR@10", "NDCG@10", "HR@10");
  auto row = [](const char* label, const eval::Metrics& m) {
    std::printf("%-22s %8zu %8.4f %8.4f %8.4f\n", label, m.count, m.mrr, m.ndcg, m.hr);
  };
  row("valid (popularity)", pop);
  row("valid (seqrec)", r.valid);
  if (r.test) row("test (seqrec)", *r.test);
  std::printf("trained %d epochs in %.1f s, %.0f train tokens/s\n", epochs, r.train_seconds,
              r.tokens_per_second);
}

/// Runs a trainer for Config. Returns the process exit code.
template <typename Cfg>
int run_trainer(int argc, char** argv, const std::string& name, const std::string& summary) {
  cxxopts::Options options(name, summary + "\nModel: " + Cfg::describe() +
                                     "\nStarted by mpirun -np N (a build with MPI), trains "
                                     "data-parallel over the N processes (CPU only).");
  add_common_options(options);
  const auto group = join_group(&argc, &argv, name);
  if (!group) return 2;
  try {
    const auto a = options.parse(argc, argv);
    if (a.count("help")) {
      if (group->lead()) std::cout << options.help() << std::endl;
      return 0;
    }
    RunOptions ro = parse_run_options(a);
    ro.group = group.get();
    const LoadedData d = load_data(a, ro.shape.max_len, ro.shape.dim, group->lead());
    const RunResult r = run_variant<Cfg>(ro, d, ro.train.seed, name);
    if (!group->lead()) return 0;
    const eval::Metrics pop = eval::popularity_baseline(d.split, d.dataset.vocab.num_items(),
                                                        d.split.valid, 10, ro.exclude_history);
    print_table(r, pop, r.epochs_run);
    if (r.extra.contains("length_buckets")) {
      std::printf("\nMRR@10 by history length (%s):\n", r.extra["window_2L_used"].get<bool>()
                                                            ? "window L vs 2L"
                                                            : "learned positions: window L only");
      for (const auto& b : r.extra["length_buckets"])
        std::printf("  %-14s users %6zu  L: %.4f  2L: %.4f\n",
                    b["history"].get<std::string>().c_str(), b["users"].get<std::size_t>(),
                    b["mrr@10_window_L"].get<double>(), b["mrr@10_window_2L"].get<double>());
      const auto& c = r.extra["cold_targets"]["metrics"];
      if (!c.is_null())
        std::printf(
            "cold targets (<= 5 train interactions): users %zu, MRR@10 %.4f, HR@10 %.4f, HR@100 "
            "%.4f\n",
            c["users"].get<std::size_t>(), c["mrr@10"].get<double>(), c["hr@10"].get<double>(),
            r.extra["cold_targets"]["hr@100"].get<double>());
    }
    if (!ro.metrics_json.empty()) {
      nlohmann::json out = {
          {"valid", metrics_json(r.valid)},
          {"test", metrics_json(r.test)},
          {"popularity_valid", metrics_json(pop)},
          {"epochs", r.epochs_run},
          {"train_seconds", r.train_seconds},
          {"train_tokens_per_second", r.tokens_per_second},
          {"parameters", {{"total", r.params_total}, {"active", r.params_active}}},
          {"config", ro.config}};
      out["config"]["variant"] = r.variant;
      out["config"]["shape"] = ro.shape;
      for (const auto& [k, v] : r.extra.items()) out[k] = v;
      io::atomic_write(ro.metrics_json, out.dump(2) + "\n");
    }
    return 0;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "%s: %s (see --help)\n", name.c_str(), e.what());
    return group->fail(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return group->fail(1);
  }
}

}  // namespace seqrec::app
