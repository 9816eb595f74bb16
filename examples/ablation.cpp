// ablation: trains every model variant on one dataset and protocol with the same budget over
// several seeds, and writes the table as markdown and JSON (variant, description, parameters
// total/active, MRR@10 mean ± std, HR@10, NDCG@10, train time). The variants are a compile-time
// list walked with Boost.Hana: adding a row is adding a type, and nothing switches at run time.
// Every row trains the same number of epochs: title-init rows spend --stage1-epochs with the
// item table frozen, random-init rows train normally for those epochs.
#include <boost/hana.hpp>
#include <cmath>
#include <sstream>

#include "common/trainer_main.hpp"

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

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options options("ablation",
                           "Train every variant with the same budget over several seeds and write "
                           "the ablation table (markdown + JSON).");
  app::add_common_options(options);
  // clang-format off
  options.add_options("ablation")
    ("seeds", "comma-separated seeds", cxxopts::value<std::string>()->default_value("1,2,3"))
    ("only", "comma-separated binary names to run (default: all)", cxxopts::value<std::string>()->default_value(""))
    ("out", "output prefix: writes PREFIX.md and PREFIX.json", cxxopts::value<std::string>()->default_value("cache/ablation"));
  // clang-format on
  try {
    const auto a = options.parse(argc, argv);
    if (a.count("help")) {
      std::cout << options.help() << std::endl;
      return 0;
    }
    app::RunOptions ro = app::parse_run_options(a);
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
    const app::LoadedData d = app::load_data(a, ro.shape.max_len, ro.shape.dim);
    ro.train.progress = false;

    std::vector<Row> rows;
    const auto t0 = std::chrono::steady_clock::now();
    hana::for_each(kVariants, [&](auto pair) {
      using Cfg = typename decltype(+hana::first(pair))::type;
      const Variant v = hana::second(pair);
      if (only != ",," && only.find("," + std::string(v.binary) + ",") == std::string::npos) return;
      Row row{v.binary, v.description, Cfg::describe()};
      for (std::uint64_t seed : seeds) {
        std::fprintf(stderr, "== %s seed %llu\n", v.binary, static_cast<unsigned long long>(seed));
        // Same budget for every row: random-init variants have no table to keep frozen, so they
        // spend the stage-1 epochs in ordinary training instead.
        app::RunOptions rv = ro;
        if constexpr (!Cfg::Initializer::pretrained) {
          const std::int32_t s1 = ro.stage1_epochs >= 0 ? ro.stage1_epochs : 4;
          rv.train.epochs += s1;
          rv.stage1_epochs = 0;
        }
        const app::RunResult r = app::run_variant<Cfg>(rv, d, seed, v.binary);
        row.params_total = r.params_total;
        row.params_active = r.params_active;
        const eval::Metrics& m = r.test ? *r.test : r.valid;
        row.mrr.push_back(m.mrr);
        row.hr.push_back(m.hr);
        row.ndcg.push_back(m.ndcg);
        row.seconds.push_back(r.train_seconds);
        std::fprintf(stderr, "   %s seed %llu: MRR@10 %.4f  HR@10 %.4f  NDCG@10 %.4f  %.0f s\n",
                     v.binary, static_cast<unsigned long long>(seed), m.mrr, m.hr, m.ndcg,
                     r.train_seconds);
      }
      rows.push_back(std::move(row));
    });
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const bool test = d.split.has_test;
    std::string md = fmt::format(
        "Data: {} ({} split, metrics on {}), {} seeds ({}), wall time {:.0f} s\n\n"
        "| variant | description | params (active) | MRR@10 | HR@10 | NDCG@10 | train s |\n"
        "|---|---|---|---|---|---|---|\n",
        d.name, a["protocol"].as<std::string>(), test ? "test" : "valid", seeds.size(),
        a["seeds"].as<std::string>(), wall);
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
                    {"mrr@10_std", stddev(r.mrr)}});
    }
    std::printf("%s", md.c_str());
    const std::filesystem::path prefix(out);
    if (prefix.has_parent_path()) std::filesystem::create_directories(prefix.parent_path());
    io::atomic_write(out + ".md", md);
    nlohmann::json doc = {{"data", d.name},
                          {"seeds", seeds},
                          {"wall_seconds", wall},
                          {"config", ro.config},
                          {"rows", js}};
    doc["config"]["shape"] = ro.shape;
    io::atomic_write(out + ".json", doc.dump(2) + "\n");
    return 0;
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "ablation: %s (see --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ablation: error: %s\n", e.what());
    return 1;
  }
}
