// The trainer's and the checkpoint functions' device path (DeviceResident models), on the CPU.
//
// SimDevice<Cfg> behaves like Model<Cfg, cuda::Backend> as far as host code can tell: its
// parameters, gradients and optimiser state live in a private "device" CPU model, and the
// ParameterStore it hands out is a host mirror that is only as fresh as the last download().
// Training through it must retrace training the CPU model directly, bit for bit — which holds
// only if train::train zeroes the device gradients, steps the device optimiser, resets the
// device moments at stage 2, honours the host's frozen flags, and if save/load_checkpoint
// download before writing and upload after reading. Each of those omissions makes a check below
// fail (the host mirror is stale until downloaded, so a checkpoint written without a download
// holds the initial weights).
#include <catch2/catch_test_macros.hpp>
#include <filesystem>

#include "seqrec/model.hpp"
#include "seqrec/model/device_model.hpp"

using namespace seqrec;
namespace fs = std::filesystem;

namespace {

template <typename Cfg>
class SimDevice {
 public:
  using T = float;
  using Config = Cfg;
  SimDevice(const ModelShape& shape, cpu::Backend& be, std::uint64_t seed)
      : dev_(shape, be, seed), host_(dev_.parameters()) {}

  static std::string describe() { return Cfg::describe(); }
  const ModelShape& shape() const { return dev_.shape(); }
  ParameterStore<T>& parameters() { return host_; }
  const ParameterStore<T>& parameters() const { return host_; }
  ParamId item_embedding() const { return dev_.item_embedding(); }
  std::int32_t num_items() const { return dev_.num_items(); }

  void upload() {
    ++uploads;
    auto& d = dev_.parameters();
    d.values() = host_.values();
    d.moment1() = host_.moment1();
    d.moment2() = host_.moment2();
  }
  void download() {
    ++downloads;
    const auto& d = dev_.parameters();
    host_.values() = d.values();
    host_.moment1() = d.moment1();
    host_.moment2() = d.moment2();
  }
  void zero_grads() { dev_.parameters().zero_grads(); }
  void reset_moments() {
    auto& d = dev_.parameters();
    std::fill(d.moment1().begin(), d.moment1().end(), 0.f);
    std::fill(d.moment2().begin(), d.moment2().end(), 0.f);
  }
  double optimizer_step(const train::AdamWOptions& o, double lr, std::int64_t step, double clip) {
    auto& d = dev_.parameters();
    sync_frozen();
    const double norm = train::clip_grad_norm(d, clip);
    train::adamw_step(d, o, lr, step);
    return norm;
  }
  double forward_backward(const std::int32_t* in, const std::int32_t* tg, std::int32_t b,
                          std::int32_t l, std::uint64_t key, std::int64_t* n) {
    sync_frozen();
    return dev_.forward_backward(in, tg, b, l, key, n);
  }
  void score_last(const std::int32_t* in, std::int32_t b, std::int32_t l, T* scores) {
    dev_.score_last(in, b, l, scores);
  }
  std::vector<std::vector<double>> take_expert_shares() { return dev_.take_expert_shares(); }
  double aux_loss() const { return dev_.aux_loss(); }

  // DPO's head, computed where the parameters are.
  void selected_log_probs(const std::int32_t* in, std::int32_t b, std::int32_t l, std::uint64_t key,
                          const std::int64_t* rows, std::int64_t count, const std::int32_t* tokens,
                          std::int32_t per_row, double* logp) {
    sync_frozen();
    dev_.selected_log_probs(in, b, l, key, rows, count, tokens, per_row, logp);
  }
  void selected_backward(const double* g, double scale) { dev_.selected_backward(g, scale); }

  int uploads = 0, downloads = 0;

 private:
  // The CUDA model reads the frozen flags of its host store whenever it needs them.
  void sync_frozen() {
    for (std::size_t i = 0; i < host_.entries().size(); ++i)
      dev_.parameters().set_frozen(ParamId{i}, host_.entries()[i].frozen);
  }

  Model<Cfg, cpu::Backend> dev_;
  ParameterStore<T> host_;
};

static_assert(DeviceResident<SimDevice<OursConfig>>);
static_assert(!DeviceResident<Model<OursConfig, cpu::Backend>>);
static_assert(kCudaImplements<SasRecConfig> && kCudaImplements<OursConfig>);
static_assert(kCudaImplements<SasRecLayerNormConfig> && kCudaImplements<GatedConfig>);
static_assert(kCudaImplements<MoeConfig>);
// MoE experts other than the SiLU MLP have no CUDA layer.
static_assert(!kCudaImplements<
              Config<pos::RoPE, norm::RMSNorm, ffn::MoE<4, 2, ffn::GatedMlp>, init::Normal>>);

struct Fixture {
  data::Dataset dataset;
  data::Split split;
};

Fixture fixture() {
  data::SyntheticOptions o;
  o.users = 120;
  o.items = 40;
  o.min_len = 5;
  o.max_len = 12;
  Fixture f;
  f.dataset = data::build_dataset(data::make_synthetic(o).log);
  f.split = data::split_loo(f.dataset);
  return f;
}

ModelShape shape_of(const data::Dataset& d) {
  ModelShape s;
  s.vocab_size = d.vocab.size();
  s.max_len = 10;
  s.dim = 8;
  s.layers = 1;
  s.heads = 2;
  s.ffn_dim = 16;
  s.dropout = 0.1;
  return s;
}

train::TrainOptions options(const Model<OursConfig, cpu::Backend>& m, const fs::path& ckpt) {
  train::TrainOptions o;
  o.epochs = 1;
  o.stage1_epochs = 1;  // two stages: frozen table, then a fresh optimiser
  o.stage1_frozen = {m.item_embedding()};
  o.batch = 32;
  o.lr = 3e-3;
  o.progress = false;
  o.log_epochs = false;
  o.checkpoint = ckpt.string();
  return o;
}

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("seqrec_devtest_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("device path: training a DeviceResident model retraces the CPU model exactly", "[cpu]") {
  const Fixture f = fixture();
  const ModelShape shape = shape_of(f.dataset);
  cpu::Backend be(1);
  const fs::path ck_cpu = temp_path("cpu.safetensors"), ck_dev = temp_path("dev.safetensors");

  Model<OursConfig, cpu::Backend> ref(shape, be, 7);
  const auto o = options(ref, ck_cpu);
  const auto r_ref = train::train(ref, f.split, o);

  SimDevice<OursConfig> dev(shape, be, 7);
  const auto initial = dev.parameters().values();
  auto o_dev = o;
  o_dev.checkpoint = ck_dev.string();
  const auto r_dev = train::train(dev, f.split, o_dev);

  REQUIRE(r_dev.step_losses.size() == r_ref.step_losses.size());
  for (std::size_t i = 0; i < r_ref.step_losses.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(r_dev.step_losses[i] == r_ref.step_losses[i]);
  }
  // One download per checkpoint (after each of the 2 epochs); nothing uploaded.
  CHECK(dev.downloads == 2);
  CHECK(dev.uploads == 0);
  CHECK(dev.parameters().values() != initial);
  CHECK(dev.parameters().values() == ref.parameters().values());
  CHECK(dev.parameters().moment1() == ref.parameters().moment1());

  // The device checkpoint holds the trained state: loading it into a CPU model gives the same
  // parameters as the reference's own checkpoint.
  Model<OursConfig, cpu::Backend> a(shape, be, 1), b(shape, be, 2);
  io::load_checkpoint(ck_cpu, a);
  io::load_checkpoint(ck_dev, b);
  CHECK(a.parameters().values() == b.parameters().values());
  CHECK(a.parameters().moment2() == b.parameters().moment2());

  // Validation ran through the device model's score_last.
  REQUIRE(r_dev.epochs.back().valid.has_value());
  CHECK(r_dev.epochs.back().valid->mrr == r_ref.epochs.back().valid->mrr);
  fs::remove(ck_cpu);
  fs::remove(ck_dev);
}

TEST_CASE("device path: loading a checkpoint uploads it; resume retraces the run", "[cpu]") {
  const Fixture f = fixture();
  const ModelShape shape = shape_of(f.dataset);
  cpu::Backend be(1);
  const fs::path ck = temp_path("resume.safetensors");

  Model<OursConfig, cpu::Backend> ref(shape, be, 11);
  auto o = options(ref, "");
  const auto full = train::train(ref, f.split, o);

  SimDevice<OursConfig> first(shape, be, 11);
  o.checkpoint = ck.string();
  const std::int64_t crash_after = 5;  // inside stage 1
  const auto part1 = train::train(first, f.split, o, {}, {}, crash_after);

  SimDevice<OursConfig> second(shape, be, 99);  // another init: everything must come from disk
  const auto info = io::load_checkpoint(ck, second);
  CHECK(second.uploads == 1);
  const auto part2 = train::train(second, f.split, o, info.state);
  std::vector<double> joined = part1.step_losses;
  joined.insert(joined.end(), part2.step_losses.begin(), part2.step_losses.end());
  REQUIRE(joined.size() == full.step_losses.size());
  for (std::size_t i = 0; i < joined.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(joined[i] == full.step_losses[i]);
  }
  second.download();
  CHECK(second.parameters().values() == ref.parameters().values());
  fs::remove(ck);
}

TEST_CASE("device path: DPO through a DeviceResident model retraces the CPU model exactly",
          "[cpu][dpo]") {
  const Fixture f = fixture();
  const ModelShape shape = shape_of(f.dataset);
  cpu::Backend be(1);
  train::PairOptions po;
  po.negatives = 2;
  po.hard_top = 3;
  po.easy_top = 12;
  train::DpoOptions o;
  o.ce_weight = 0.5;
  train::TrainOptions t;
  t.epochs = 2;
  t.batch = 32;
  t.lr = 1e-3;
  t.progress = false;
  t.log_epochs = false;

  Model<OursConfig, cpu::Backend> cpu_policy(shape, be, 5), cpu_ref(shape, be, 5);
  SimDevice<OursConfig> dev_policy(shape, be, 5), dev_ref(shape, be, 5);
  std::vector<std::vector<std::int32_t>> seqs;
  for (const auto& c : f.split.valid) seqs.push_back(c.history);
  const auto pairs = train::build_preference_pairs(
      seqs, cpu_policy.parameters().value(cpu_policy.item_embedding()), shape.vocab_size, shape.dim,
      shape.max_len, po);
  REQUIRE(pairs.pairs() > 0);

  const auto ref_cpu = train::reference_log_probs(cpu_ref, pairs, 16);
  const auto ref_dev = train::reference_log_probs(dev_ref, pairs, 16);
  CHECK(ref_cpu == ref_dev);

  const auto r_cpu = train::dpo_train(cpu_policy, pairs, ref_cpu, o, t, &f.split.valid);
  const auto r_dev = train::dpo_train(dev_policy, pairs, ref_dev, o, t, &f.split.valid);
  REQUIRE(r_dev.epochs.size() == r_cpu.epochs.size());
  for (std::size_t e = 0; e < r_cpu.epochs.size(); ++e) {
    INFO("epoch " << e + 1);
    CHECK(r_dev.epochs[e].loss == r_cpu.epochs[e].loss);
    CHECK(r_dev.epochs[e].margin == r_cpu.epochs[e].margin);
  }
  REQUIRE(r_dev.epochs.back().valid.has_value());
  CHECK(r_dev.epochs.back().valid->mrr == r_cpu.epochs.back().valid->mrr);
  dev_policy.download();
  CHECK(dev_policy.parameters().values() == cpu_policy.parameters().values());
}
