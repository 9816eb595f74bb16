// dpo_finetune: DPO fine-tuning of a trained checkpoint (the study's third stage), with the
// cross-entropy anchor and S-DPO as options. The variant is the one the checkpoint names.
#include "common/dpo_main.hpp"

using namespace seqrec;

int main(int argc, char** argv) {
  cxxopts::Options options(
      "dpo_finetune",
      "Fine-tune a trained model with DPO: preference pairs from the training sequences (chosen: "
      "the true next item; rejected: similar items in the trained item table, 30% from the top "
      "10, 70% from ranks 11-200), a frozen copy of the checkpoint as the reference.\n"
      "Pass the --data/--protocol/--truncate flags the checkpoint was trained with. --epochs and "
      "--lr default to 1 and 0.0001 here; --checkpoint writes the tuned model.\n"
      "Started by mpirun -np N (a build with MPI), fine-tunes data-parallel over the N processes "
      "(CPU only).");
  app::add_common_options(options);
  app::add_dpo_options(options, false);
  // clang-format off
  options.add_options("dpo")
    ("init-checkpoint", "the trained model to fine-tune (train_* --checkpoint)", cxxopts::value<std::string>()->default_value(""));
  // clang-format on
  const auto group = app::join_group(&argc, &argv, "dpo_finetune");
  if (!group) return 2;
  try {
    const auto a = options.parse(argc, argv);
    if (a.count("help")) {
      if (group->lead()) std::cout << options.help() << std::endl;
      return 0;
    }
    const std::string init = a["init-checkpoint"].as<std::string>();
    if (init.empty()) throw InputError("--init-checkpoint", 0, "is required", "");
    app::RunOptions ro = app::parse_run_options(a);
    ro.group = group.get();
    const app::DpoRunOptions o = app::parse_dpo_options(a, false);
    const io::CheckpointInfo info = io::read_checkpoint_info(init);
    const ModelShape shape = info.config.at("shape").get<ModelShape>();
    const app::LoadedData d = app::load_data(a, shape.max_len, shape.dim, group->lead());
    app::DpoRunResult r;
    if (!app::with_config_named(info.variant, [&]<typename Cfg>() {
          r = app::run_dpo<Cfg>(ro, d, init, o, ro.train.seed);
        }))
      throw InputError(init, 0, "no trainer of this build makes this variant", info.variant);
    if (!group->lead()) return 0;
    std::printf("\n%s, %s, beta %.3g, CE weight %.3g, %d negatives, %zu pairs\n", r.variant.c_str(),
                o.dpo.loss == train::PreferenceLoss::Dpo ? "DPO" : "S-DPO", o.dpo.beta,
                o.dpo.ce_weight, o.pairs.negatives, r.pairs);
    std::printf("%-16s %8s %8s %8s\n", "split (model)", "MRR@10", "NDCG@10", "HR@10");
    auto row = [](const char* label, const eval::Metrics& m) {
      std::printf("%-16s %8.4f %8.4f %8.4f\n", label, m.mrr, m.ndcg, m.hr);
    };
    row("valid (before)", r.valid_before);
    row("valid (after)", r.valid);
    if (r.test) {
      row("test (before)", *r.test_before);
      row("test (after)", *r.test);
    }
    const auto& last = r.dpo.epochs.back();
    std::printf(
        "fine-tuned %zu epochs in %.1f s; last epoch: loss %.4f, reward accuracy %.3f, "
        "chosen log-prob change %+.4f\n",
        r.dpo.epochs.size(), r.dpo.train_seconds, last.loss, last.accuracy, last.chosen_delta);
    if (!ro.metrics_json.empty()) {
      nlohmann::json epochs = nlohmann::json::array();
      for (const auto& e : r.dpo.epochs)
        epochs.push_back({{"epoch", e.epoch},
                          {"loss", e.loss},
                          {"reward_margin", e.margin},
                          {"reward_accuracy", e.accuracy},
                          {"chosen_logp_change", e.chosen_delta},
                          {"seconds", e.seconds}});
      const nlohmann::json out = {{"variant", r.variant},
                                  {"init_checkpoint", init},
                                  {"pairs", r.pairs},
                                  {"hard_share_measured", r.hard_share},
                                  {"valid_before", app::metrics_json(r.valid_before)},
                                  {"valid", app::metrics_json(r.valid)},
                                  {"test_before", app::metrics_json(r.test_before)},
                                  {"test", app::metrics_json(r.test)},
                                  {"train_seconds", r.dpo.train_seconds},
                                  {"epochs", epochs},
                                  {"config", ro.config}};
      io::atomic_write(ro.metrics_json, out.dump(2) + "\n");
    }
    return 0;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "dpo_finetune: %s (see --help)\n", e.what());
    return group->fail(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dpo_finetune: error: %s\n", e.what());
    return group->fail(1);
  }
}
