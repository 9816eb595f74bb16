// ablation: trains every model variant on one dataset and protocol with the same budget over
// several seeds, and writes the table as markdown and JSON (variant, description, parameters
// total/active, MRR@10 mean ± std, HR@10, NDCG@10, train time). The variants are a compile-time
// list walked with Boost.Hana: adding a row is adding a type, and nothing switches at run time.
// Every row trains the same number of epochs: title-init rows spend --stage1-epochs with the
// item table frozen, random-init rows train normally for those epochs.
#include <boost/hana.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <sstream>

#include "common/dpo_main.hpp"

namespace hana = boost::hana;
using namespace seqrec;

namespace {

struct Variant {
  const char* binary;
  const char* description;
};

// The study's table and the controls it lacked; each type is Config<Pos, Norm, Ffn, Init>.
constexpr auto kVariants = hana::make_tuple(
    hana::make_pair(
        hana::type_c<SasRecConfig>,
        Variant{"train_sasrec", "SASRec baseline: random init, learned positions, ReLU"}),
    hana::make_pair(hana::type_c<OursConfig>,
                    Variant{"train_ours", "title init + RoPE + SiLU (the study's best)"}),
    hana::make_pair(hana::type_c<OursRandomConfig>,
                    Variant{"train_ours_random", "random init + RoPE + SiLU (isolates the init)"}),
    hana::make_pair(hana::type_c<LearnedPeConfig>,
                    Variant{"train_learned_pe", "title init + learned positions + SiLU"}),
    hana::make_pair(hana::type_c<GatedConfig>,
                    Variant{"train_gated", "title init + RoPE + SwiGLU (matched parameters)"}),
    hana::make_pair(hana::type_c<MoeConfig>,
                    Variant{"train_moe", "title init + RoPE + MoE 4 experts top-2"}));

struct Row {
  std::string binary, description, variant;
  std::size_t params_total = 0, params_active = 0;
  std::vector<double> mrr, hr, ndcg, seconds;
  nlohmann::json runs = nlohmann::json::array();  // per seed: analyses, expert shares, history
};

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}
double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));  // sample standard deviation
}

/// Means over seeds of the per-run analyses: cold targets, and MRR@10 per history-length bucket
/// with the trained window L and with 2L (the latter only where the position encoding
/// extrapolates).
std::string analysis_tables(const std::vector<Row>& rows) {
  std::string md =
      "\nCold targets (<= 5 training interactions) and MRR@10 by history length, window L / 2L, "
      "means over seeds:\n\n";
  std::vector<std::string> labels;
  for (const Row& r : rows)
    if (!r.runs.empty() && r.runs[0].contains("length_buckets")) {
      for (const auto& b : r.runs[0]["length_buckets"])
        if (b["users"].get<std::size_t>() > 0) labels.push_back(b["history"]);  // skip empty
      break;
    }
  md += "| variant | cold users | cold MRR@10 | cold HR@100 |";
  for (const auto& l : labels) md += fmt::format(" len {} |", l);
  md += "\n|---|---|---|---|";
  for (std::size_t i = 0; i < labels.size(); ++i) md += "---|";
  md += "\n";
  for (const Row& r : rows) {
    std::vector<double> cold, cold_hr100;
    std::size_t cold_users = 0;
    std::vector<std::vector<double>> at_l(labels.size()), at_2l(labels.size());
    std::vector<std::size_t> users(labels.size(), 0);
    bool wide = false, analysed = false;
    for (const auto& run : r.runs) {
      if (!run.contains("cold_targets")) continue;  // DPO rows have no analyses
      analysed = true;
      const auto& c = run["cold_targets"]["metrics"];
      if (!c.is_null()) {
        cold.push_back(c["mrr@10"].get<double>());
        cold_hr100.push_back(run["cold_targets"].value("hr@100", 0.0));
        cold_users = c["users"].get<std::size_t>();
      }
      wide = run["window_2L_used"].get<bool>();
      const auto& b = run["length_buckets"];
      std::size_t i = 0;
      for (const auto& bucket : b) {
        if (bucket["users"].get<std::size_t>() == 0 || i >= labels.size()) continue;
        at_l[i].push_back(bucket["mrr@10_window_L"].get<double>());
        at_2l[i].push_back(bucket["mrr@10_window_2L"].get<double>());
        users[i++] = bucket["users"].get<std::size_t>();
      }
    }
    if (!analysed) continue;
    md += fmt::format("| {} | {} | {:.4f} ± {:.4f} | {:.4f} ± {:.4f} |", r.binary, cold_users,
                      mean(cold), stddev(cold), mean(cold_hr100), stddev(cold_hr100));
    for (std::size_t i = 0; i < labels.size(); ++i)
      md += wide ? fmt::format(" {:.4f} / {:.4f} (n {}) |", mean(at_l[i]), mean(at_2l[i]), users[i])
                 : fmt::format(" {:.4f} / – (n {}) |", mean(at_l[i]), users[i]);
    md += "\n";
  }
  return md;
}

/// One run of the table, as its row needs it: the JSON record kept per seed and the numbers the
/// row averages.
struct RunRecord {
  nlohmann::json run;
  std::size_t params_total = 0, params_active = 0;
  double mrr = 0, hr = 0, ndcg = 0, seconds = 0;
};

nlohmann::json to_json(const RunRecord& r) {
  return {{"run", r.run},
          {"params_total", r.params_total},
          {"params_active", r.params_active},
          {"mrr", r.mrr},
          {"hr", r.hr},
          {"ndcg", r.ndcg},
          {"seconds", r.seconds}};
}
RunRecord from_json(const nlohmann::json& j) {
  return {j.at("run"),
          j.at("params_total").get<std::size_t>(),
          j.at("params_active").get<std::size_t>(),
          j.at("mrr").get<double>(),
          j.at("hr").get<double>(),
          j.at("ndcg").get<double>(),
          j.at("seconds").get<double>()};
}

/// Rank `root`'s record, on every rank (its JSON text, as 8-byte words, through the group's
/// broadcast).
template <dist::Communicator C>
RunRecord share_record(const RunRecord& mine, int root, C& comm) {
  std::string text = comm.rank() == root ? to_json(mine).dump() : std::string();
  std::int64_t size = static_cast<std::int64_t>(text.size());
  comm.broadcast(&size, 1, root);
  std::vector<std::int64_t> words(static_cast<std::size_t>(size + 7) / 8, 0);
  if (comm.rank() == root) std::memcpy(words.data(), text.data(), text.size());
  comm.broadcast(words.data(), words.size(), root);
  text.assign(reinterpret_cast<const char*>(words.data()), static_cast<std::size_t>(size));
  return from_json(nlohmann::json::parse(text));
}

/// A run of the table: trains (or fine-tunes) with the options it is given and returns its
/// record. `row` is the row it belongs to.
struct Job {
  std::size_t row;
  std::function<RunRecord(const app::RunOptions&, bool prints)> run;
};

/// Runs `jobs` and returns their records, in order, on every rank. Spread (--parallel runs):
/// rank r trains jobs r, r + N, … alone, each with its share of the cores (or its own GPU), then
/// every record is sent to every rank. Otherwise every job trains data-parallel over the group.
std::vector<RunRecord> run_jobs(const std::vector<Job>& jobs, const app::RunOptions& ro,
                                app::Group& group, bool spread) {
  std::vector<RunRecord> out(jobs.size());
  if (!spread || group.size() == 1) {
    for (std::size_t j = 0; j < jobs.size(); ++j) out[j] = jobs[j].run(ro, group.lead());
    return out;
  }
  app::RunOptions solo = ro;
  solo.group = nullptr;
  solo.threads = group.threads(ro.threads);
  if (ro.device >= 0) solo.device = app::process_device(ro).device;
  const auto n = static_cast<std::size_t>(group.size());
  const auto me = static_cast<std::size_t>(group.rank());
  for (std::size_t j = me; j < jobs.size(); j += n) out[j] = jobs[j].run(solo, true);
  group.run([&](auto& comm) {
    for (std::size_t j = 0; j < jobs.size(); ++j)
      out[j] = share_record(out[j], static_cast<int>(j % n), comm);
    return 0;
  });
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options options(
      "ablation",
      "Train every variant with the same budget over several seeds and write "
      "the ablation table (markdown + JSON). Started by mpirun -np N (a build with MPI), "
      "each run trains data-parallel over the N processes, or (--parallel runs) each process "
      "trains runs of its own.");
  app::add_common_options(options);
  app::add_dpo_options(options, true);
  // clang-format off
  options.add_options("ablation")
    ("seeds", "comma-separated seeds", cxxopts::value<std::string>()->default_value("1,2,3"))
    ("only", "comma-separated binary names to run (default: all)", cxxopts::value<std::string>()->default_value(""))
    ("out", "output prefix: writes PREFIX.md and PREFIX.json", cxxopts::value<std::string>()->default_value("cache/ablation"))
    ("checkpoint-dir", "keep each run's final model as DIR/<binary>_s<seed>.safetensors (for dpo_finetune)", cxxopts::value<std::string>()->default_value(""))
    ("parallel", "under mpirun: 'steps' trains each run data-parallel over the ranks; 'runs' gives "
                 "each rank whole runs of its own (rank r: runs r, r + N, ...), with its share of "
                 "the cores or, with --device cuda, its own GPU, and no gradient traffic",
     cxxopts::value<std::string>()->default_value("steps"));
  // clang-format on
  // Started by mpirun, every run of the table trains data-parallel over the ranks, or each rank
  // trains whole runs (--parallel runs).
  const auto group = app::join_group(&argc, &argv, "ablation");
  if (!group) return 2;
  const bool lead = group->lead();
  try {
    const auto a = options.parse(argc, argv);
    if (a.count("help")) {
      if (lead) std::cout << options.help() << std::endl;
      return 0;
    }
    app::RunOptions ro = app::parse_run_options(a);
    ro.group = group.get();
    if (!ro.resume.empty() || !ro.train.checkpoint.empty())
      throw InputError("--resume/--checkpoint", 0, "not supported by the ablation runner", "");
    std::vector<std::uint64_t> seeds;
    {
      std::stringstream ss(a["seeds"].as<std::string>());
      std::string item;
      while (std::getline(ss, item, ',')) {
        try {
          seeds.push_back(std::stoull(item));
        } catch (const std::exception&) {
          throw InputError("--seeds", 0, "expected comma-separated integers", item);
        }
      }
      if (seeds.empty()) throw InputError("--seeds", 0, "no seed given", "");
    }
    const std::string only = "," + a["only"].as<std::string>() + ",";
    const std::string out = a["out"].as<std::string>();
    const std::string checkpoint_dir = a["checkpoint-dir"].as<std::string>();
    const std::string parallel = a["parallel"].as<std::string>();
    if (parallel != "steps" && parallel != "runs")
      throw InputError("--parallel", 0, "expected steps or runs", parallel);
    const bool spread = parallel == "runs";
    if (!checkpoint_dir.empty()) std::filesystem::create_directories(checkpoint_dir);
    const app::DpoRunOptions dpo = app::parse_dpo_options(a, true);
    const app::LoadedData d = app::load_data(a, ro.shape.max_len, ro.shape.dim, lead);
    ro.train.progress = false;

    std::vector<Row> rows;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Job> train_jobs;
    hana::for_each(kVariants, [&](auto pair) {
      using Cfg = typename decltype(+hana::first(pair))::type;
      const Variant v = hana::second(pair);
      if (only != ",," && only.find("," + std::string(v.binary) + ",") == std::string::npos) return;
      Row row;
      row.binary = v.binary;
      row.description = v.description;
      row.variant = Cfg::describe();
      rows.push_back(std::move(row));
      for (std::uint64_t seed : seeds) {
        train_jobs.push_back(
            {rows.size() - 1, [&, v, seed](const app::RunOptions& base, bool prints) {
               if (prints)
                 std::fprintf(stderr, "== %s seed %llu\n", v.binary,
                              static_cast<unsigned long long>(seed));
               // Same budget for every row: random-init variants have no table to keep frozen, so
               // they spend the stage-1 epochs in ordinary training instead.
               app::RunOptions rv = base;
               if constexpr (!Cfg::Initializer::pretrained) {
                 const std::int32_t s1 = base.stage1_epochs >= 0 ? base.stage1_epochs : 4;
                 rv.train.epochs += s1;
                 rv.stage1_epochs = 0;
               }
               if (!checkpoint_dir.empty())
                 rv.train.checkpoint = (std::filesystem::path(checkpoint_dir) /
                                        fmt::format("{}_s{}.safetensors", v.binary, seed))
                                           .string();
               const app::RunResult r = app::run_variant<Cfg>(rv, d, seed, v.binary);
               RunRecord rec;
               rec.run = r.extra;
               rec.run["seed"] = seed;
               rec.run["valid"] = app::metrics_json(r.valid);
               rec.run["test"] = app::metrics_json(r.test);
               rec.run["train_seconds"] = r.train_seconds;
               rec.run["train_tokens_per_second"] = r.tokens_per_second;
               if (!rv.train.checkpoint.empty()) rec.run["checkpoint"] = rv.train.checkpoint;
               rec.params_total = r.params_total;
               rec.params_active = r.params_active;
               const eval::Metrics& m = r.test ? *r.test : r.valid;
               rec.mrr = m.mrr;
               rec.hr = m.hr;
               rec.ndcg = m.ndcg;
               rec.seconds = r.train_seconds;
               if (prints)
                 std::fprintf(stderr,
                              "   %s seed %llu: MRR@10 %.4f  HR@10 %.4f  NDCG@10 %.4f  %.0f s\n",
                              v.binary, static_cast<unsigned long long>(seed), m.mrr, m.hr, m.ndcg,
                              r.train_seconds);
               return rec;
             }});
      }
    });
    // "+ DPO" rows: fine-tune each seed's train_ours model (needs --checkpoint-dir; the
    // checkpoints may come from this run or an earlier one with the same data flags). They run
    // after every training run: run_jobs returns on every rank only when all have finished, so
    // every checkpoint exists by then.
    struct DpoRow {
      const char* binary;
      const char* description;
      train::PreferenceLoss loss;
      bool anchor, several;
    };
    const DpoRow dpo_rows[] = {
        {"train_ours+dpo", "train_ours + DPO (1 negative)", train::PreferenceLoss::Dpo, false,
         false},
        {"train_ours+dpo+ce", "train_ours + DPO + CE anchor", train::PreferenceLoss::Dpo, true,
         false},
        {"train_ours+sdpo", "train_ours + S-DPO (--negatives in one softmax)",
         train::PreferenceLoss::SDpo, false, true}};
    std::vector<Job> dpo_jobs;
    for (const DpoRow& dr : dpo_rows) {
      const bool selected = only.find("," + std::string(dr.binary) + ",") != std::string::npos;
      if (!selected && !(only == ",," && !checkpoint_dir.empty())) continue;
      if (checkpoint_dir.empty())
        throw InputError("--checkpoint-dir", 0, "the DPO rows start from train_ours checkpoints",
                         dr.binary);
      app::DpoRunOptions o = dpo;
      o.dpo.loss = dr.loss;
      if (!dr.anchor) o.dpo.ce_weight = 0;
      if (!dr.several) o.pairs.negatives = 1;
      Row row;
      row.binary = dr.binary;
      row.description = dr.description;
      row.variant = OursConfig::describe();
      rows.push_back(std::move(row));
      for (std::uint64_t seed : seeds) {
        dpo_jobs.push_back(
            {rows.size() - 1, [&, dr, o, seed](const app::RunOptions& base, bool prints) {
               const std::string ck = (std::filesystem::path(checkpoint_dir) /
                                       fmt::format("train_ours_s{}.safetensors", seed))
                                          .string();
               if (!std::filesystem::exists(ck))
                 throw InputError(ck, 0,
                                  "missing: train train_ours with this --checkpoint-dir first",
                                  dr.binary);
               if (prints)
                 std::fprintf(stderr, "== %s seed %llu\n", dr.binary,
                              static_cast<unsigned long long>(seed));
               const app::DpoRunResult r = app::run_dpo<OursConfig>(base, d, ck, o, seed);
               const eval::Metrics& m = r.test ? *r.test : r.valid;
               const eval::Metrics& before = r.test ? *r.test_before : r.valid_before;
               const auto& last = r.dpo.epochs.back();
               RunRecord rec;
               rec.params_total = r.params_total;
               rec.params_active = r.params_active;
               rec.mrr = m.mrr;
               rec.hr = m.hr;
               rec.ndcg = m.ndcg;
               rec.seconds = r.dpo.train_seconds;
               rec.run = {{"seed", seed},
                          {"init_checkpoint", ck},
                          {"mrr@10_before", before.mrr},
                          {"pairs", r.pairs},
                          {"negatives", o.pairs.negatives},
                          {"hard_share_measured", r.hard_share},
                          {"loss", last.loss},
                          {"reward_accuracy", last.accuracy},
                          {"reward_margin", last.margin},
                          {"chosen_logp_change", last.chosen_delta}};
               if (prints)
                 std::fprintf(stderr,
                              "   %s seed %llu: MRR@10 %.4f (before %.4f)  chosen log-prob change "
                              "%+.4f  reward accuracy %.3f  %.0f s\n",
                              dr.binary, static_cast<unsigned long long>(seed), m.mrr, before.mrr,
                              last.chosen_delta, last.accuracy, r.dpo.train_seconds);
               return rec;
             }});
      }
    }
    for (const std::vector<Job>* jobs : {&train_jobs, &dpo_jobs}) {
      const std::vector<RunRecord> records = run_jobs(*jobs, ro, *group, spread);
      for (std::size_t j = 0; j < jobs->size(); ++j) {
        Row& row = rows[(*jobs)[j].row];
        const RunRecord& rec = records[j];
        row.runs.push_back(rec.run);
        row.params_total = rec.params_total;
        row.params_active = rec.params_active;
        row.mrr.push_back(rec.mrr);
        row.hr.push_back(rec.hr);
        row.ndcg.push_back(rec.ndcg);
        row.seconds.push_back(rec.seconds);
      }
    }
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!lead) return 0;

    const bool test = d.split.has_test;
    std::string md = fmt::format(
        "Data: {} ({} split, metrics on {}), {} seeds ({}), wall time {:.0f} s{}\n\n"
        "| variant | description | params (active) | MRR@10 | HR@10 | NDCG@10 | train s |\n"
        "|---|---|---|---|---|---|---|\n",
        d.name, a["protocol"].as<std::string>(), test ? "test" : "valid", seeds.size(),
        a["seeds"].as<std::string>(), wall,
        group->size() == 1 ? std::string()
                           : fmt::format(" on {} ranks ({})", group->size(),
                                         spread ? "each its own runs" : "each run data-parallel"));
    nlohmann::json js = nlohmann::json::array();
    for (const Row& r : rows) {
      md += fmt::format("| {} | {} | {} ({}) | {:.4f} ± {:.4f} | {:.4f} | {:.4f} | {:.0f} |\n",
                        r.binary, r.description, r.params_total, r.params_active, mean(r.mrr),
                        stddev(r.mrr), mean(r.hr), mean(r.ndcg), mean(r.seconds));
      js.push_back({{"binary", r.binary},
                    {"description", r.description},
                    {"variant", r.variant},
                    {"params_total", r.params_total},
                    {"params_active", r.params_active},
                    {"mrr@10", r.mrr},
                    {"hr@10", r.hr},
                    {"ndcg@10", r.ndcg},
                    {"train_seconds", r.seconds},
                    {"mrr@10_mean", mean(r.mrr)},
                    {"mrr@10_std", stddev(r.mrr)},
                    {"runs", r.runs}});
    }
    if (ro.analysis) md += analysis_tables(rows);
    std::printf("%s", md.c_str());
    const std::filesystem::path prefix(out);
    if (prefix.has_parent_path()) std::filesystem::create_directories(prefix.parent_path());
    io::atomic_write(out + ".md", md);
    nlohmann::json doc = {{"data", d.name},
                          {"seeds", seeds},
                          {"wall_seconds", wall},
                          {"ranks", group->size()},
                          {"parallel", group->size() > 1 ? parallel : "none"},
                          {"config", ro.config},
                          {"rows", js}};
    doc["config"]["shape"] = ro.shape;
    io::atomic_write(out + ".json", doc.dump(2) + "\n");
    return 0;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "ablation: %s (see --help)\n", e.what());
    return group->fail(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ablation: error: %s\n", e.what());
    return group->fail(1);
  }
}
