// The shared body of every trainer binary: parse the common flags, load and split the data,
// build Model<Config, cpu::Backend>, train, evaluate, print the metrics table and write the
// metrics JSON. A trainer binary is one line naming its Config.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cxxopts.hpp>
#include <exception>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <seqrec/model.hpp>
#include <string>

namespace seqrec::app {

struct LoadedData {
  data::Dataset dataset;
  data::Split split;
  std::string name;
  std::size_t interactions = 0;
};

inline LoadedData load_data(const cxxopts::ParseResult& a, std::int32_t max_len) {
  LoadedData out;
  data::InteractionLog log;
  const std::string path = a["data"].as<std::string>();
  if (path.empty()) {
    out.name = "synthetic (embedded default, generated in code)";
    log = data::make_synthetic().log;
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
  if (out.split.dropped_users > 0)
    std::fprintf(stderr, "warning: dropped %zu users too short for --protocol %s\n",
                 out.split.dropped_users, protocol.c_str());
  return out;
}

inline nlohmann::json metrics_json(const std::optional<eval::Metrics>& m) {
  if (!m) return nullptr;
  return {{"mrr@10", m->mrr}, {"hr@10", m->hr}, {"ndcg@10", m->ndcg}, {"users", m->count}};
}

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
    ("dropout", "dropout rate", cxxopts::value<double>()->default_value("0.2"));
  o.add_options("training")
    ("epochs", "training epochs", cxxopts::value<std::int32_t>()->default_value("30"))
    ("batch", "sequences per batch", cxxopts::value<std::int32_t>()->default_value("128"))
    ("lr", "peak learning rate", cxxopts::value<double>()->default_value("0.001"))
    ("weight-decay", "AdamW decoupled weight decay", cxxopts::value<double>()->default_value("0.0"))
    ("warmup", "warmup steps (-1: 5% of all steps)", cxxopts::value<std::int64_t>()->default_value("-1"))
    ("clip", "max gradient norm (0: off)", cxxopts::value<double>()->default_value("1.0"))
    ("seed", "seed of initialisation, batch order and dropout", cxxopts::value<std::uint64_t>()->default_value("42"))
    ("threads", "CPU threads (0: all cores)", cxxopts::value<int>()->default_value("0"))
    ("device", "cpu (cuda arrives with the CUDA backend)", cxxopts::value<std::string>()->default_value("cpu"))
    ("eval-every", "validate every N epochs (0: at the end only)", cxxopts::value<std::int32_t>()->default_value("1"))
    ("exclude-history", "do not rank items already in the user's history")
    ("checkpoint", "write a checkpoint here after every epoch", cxxopts::value<std::string>()->default_value(""))
    ("resume", "resume training from this checkpoint", cxxopts::value<std::string>()->default_value(""))
    ("metrics-json", "write final metrics and config here", cxxopts::value<std::string>()->default_value(""))
    ("no-progress", "no progress bar / progress lines")
    ("h,help", "print this help");
  // clang-format on
}

/// Runs a trainer for Config. Returns the process exit code.
template <typename Cfg>
int run_trainer(int argc, char** argv, const std::string& name, const std::string& summary) {
  cxxopts::Options options(name, summary + "\nModel: " + Cfg::describe());
  add_common_options(options);
  try {
    const auto a = options.parse(argc, argv);
    if (a.count("help")) {
      std::cout << options.help() << std::endl;
      return 0;
    }
    if (!a.unmatched().empty())
      throw InputError("command line", 0, "unexpected argument", a.unmatched()[0]);
    if (a["device"].as<std::string>() != "cpu")
      throw InputError("--device", 0, "only cpu is available in this build",
                       a["device"].as<std::string>());

    cpu::Backend backend(a["threads"].as<int>());
    ModelShape shape;
    shape.max_len = a["max-len"].as<std::int32_t>();
    shape.dim = a["dim"].as<std::int32_t>();
    shape.layers = a["layers"].as<std::int32_t>();
    shape.heads = a["heads"].as<std::int32_t>();
    const std::int32_t ffn = a["ffn-dim"].as<std::int32_t>();
    shape.ffn_dim = ffn > 0 ? ffn : 4 * shape.dim;
    shape.dropout = a["dropout"].as<double>();

    LoadedData d = load_data(a, shape.max_len);
    shape.vocab_size = d.dataset.vocab.size();
    std::fprintf(stderr,
                 "data: %s — %zu users, %d items, %zu interactions; %zu train sequences, "
                 "%zu valid, %zu test\n",
                 d.name.c_str(), d.dataset.users.size(), d.dataset.vocab.num_items(),
                 d.interactions, d.split.train.size(), d.split.valid.size(), d.split.test.size());

    train::TrainOptions to;
    to.epochs = a["epochs"].as<std::int32_t>();
    to.batch = a["batch"].as<std::int32_t>();
    to.lr = a["lr"].as<double>();
    to.adam.weight_decay = a["weight-decay"].as<double>();
    to.warmup = a["warmup"].as<std::int64_t>();
    to.clip = a["clip"].as<double>();
    to.seed = a["seed"].as<std::uint64_t>();
    to.checkpoint = a["checkpoint"].as<std::string>();
    to.eval_every = a["eval-every"].as<std::int32_t>();
    to.progress = !a.count("no-progress");
    if (to.epochs < 0) throw InputError("--epochs", 0, "must be >= 0", std::to_string(to.epochs));
    if (to.batch < 1) throw InputError("--batch", 0, "must be >= 1", std::to_string(to.batch));
    if (!(to.lr > 0)) throw InputError("--lr", 0, "must be > 0", std::to_string(to.lr));

    nlohmann::json config = {{"variant", Cfg::describe()},
                             {"binary", name},
                             {"data", d.name},
                             {"protocol", a["protocol"].as<std::string>()},
                             {"truncate", a["truncate"].as<std::string>()},
                             {"epochs", to.epochs},
                             {"batch", to.batch},
                             {"lr", to.lr},
                             {"weight_decay", to.adam.weight_decay},
                             {"warmup", to.warmup},
                             {"clip", to.clip},
                             {"seed", to.seed},
                             {"threads", backend.threads()},
                             {"shape", shape}};

    Model<Cfg, cpu::Backend> model(shape, backend, to.seed);
    io::TrainState start;
    const std::string resume = a["resume"].as<std::string>();
    if (!resume.empty()) {
      start = io::load_checkpoint(resume, model).state;
      std::fprintf(stderr, "resumed from %s at epoch %lld, step %lld\n", resume.c_str(),
                   static_cast<long long>(start.epoch), static_cast<long long>(start.step));
    }
    std::fprintf(stderr, "model: %s, %zu parameters, %d threads\n", Cfg::describe().c_str(),
                 model.parameters().num_parameters(), backend.threads());

    const train::TrainResult r = train::train(model, d.split, to, start, config);
    eval::EvalOptions eo;
    eo.exclude_history = a.count("exclude-history") > 0;
    const eval::Metrics valid = eval::evaluate(model, d.split.valid, eo);
    std::optional<eval::Metrics> test;
    if (d.split.has_test) test = eval::evaluate(model, d.split.test, eo);
    const eval::Metrics pop_valid =
        eval::popularity_baseline(d.split, d.dataset.vocab.num_items(), d.split.valid);

    std::printf("\n%-22s %8s %8s %8s %8s\n", "split (model)", "users", "MRR@10", "NDCG@10",
                "HR@10");
    auto row = [](const char* label, const eval::Metrics& m) {
      std::printf("%-22s %8zu %8.4f %8.4f %8.4f\n", label, m.count, m.mrr, m.ndcg, m.hr);
    };
    row("valid (popularity)", pop_valid);
    row("valid (seqrec)", valid);
    if (test) row("test (seqrec)", *test);
    std::printf("trained %d epochs in %.1f s, %.0f train tokens/s\n", to.epochs, r.train_seconds,
                r.tokens_per_second());

    const std::string mj = a["metrics-json"].as<std::string>();
    if (!mj.empty()) {
      nlohmann::json epochs = nlohmann::json::array();
      for (const auto& e : r.epochs)
        epochs.push_back({{"epoch", e.epoch},
                          {"loss", e.loss},
                          {"seconds", e.seconds},
                          {"valid", metrics_json(e.valid)}});
      nlohmann::json out = {{"valid", metrics_json(valid)},
                            {"test", metrics_json(test)},
                            {"popularity_valid", metrics_json(pop_valid)},
                            {"epochs", to.epochs},
                            {"train_seconds", r.train_seconds},
                            {"train_tokens_per_second", r.tokens_per_second()},
                            {"history", epochs},
                            {"config", config}};
      io::atomic_write(mj, out.dump(2) + "\n");
    }
    return 0;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "%s: %s (see --help)\n", name.c_str(), e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return 1;
  }
}

}  // namespace seqrec::app
