// Training: AdamW and the schedule against hand computations, exact resume from a checkpoint
// (mid-epoch, as after a crash), checkpoint validation, and an end-to-end run on a small
// synthetic fixture that must lower the loss and beat popularity by a stated margin.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "seqrec/model.hpp"
#include "support/small_fixture.hpp"

using namespace seqrec;
namespace fs = std::filesystem;

namespace {

using test::Fixture;
using test::small_fixture;
using test::small_shape;

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("seqrec_test_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("adamw: one step matches the formula; no decay on biases; frozen untouched", "[cpu]") {
  ParameterStore<double> s;
  auto w = s.add("w", {2}, true, Init::Zeros);
  auto b = s.add("b", {1}, false, Init::Zeros);
  auto fz = s.add("frozen", {1}, true, Init::Zeros);
  s.value(w)[0] = 1.0;
  s.value(w)[1] = -2.0;
  s.value(b)[0] = 0.5;
  s.value(fz)[0] = 3.0;
  s.grad(w)[0] = 0.1;
  s.grad(w)[1] = -0.3;
  s.grad(b)[0] = 0.2;
  s.grad(fz)[0] = 1.0;
  s.set_frozen(fz, true);
  train::AdamWOptions o;
  o.weight_decay = 0.1;
  const double lr = 0.01;
  train::adamw_step(s, o, lr, 1);
  // Step 1: m̂ = g, v̂ = g², so the update is lr · g / (|g| + eps) = lr · sign(g).
  CHECK(std::abs(s.value(w)[0] - (1.0 * (1 - lr * 0.1) - lr * 0.1 / (0.1 + 1e-8))) < 1e-12);
  CHECK(std::abs(s.value(w)[1] - (-2.0 * (1 - lr * 0.1) + lr * 0.3 / (0.3 + 1e-8))) < 1e-12);
  CHECK(std::abs(s.value(b)[0] - (0.5 - lr * 0.2 / (0.2 + 1e-8))) < 1e-12);  // no decay
  CHECK(s.value(fz)[0] == 3.0);
  CHECK(s.moment1()[s.entry(fz).offset] == 0.0);
}

TEST_CASE("gradient clipping bounds the norm of trainable tensors", "[cpu]") {
  ParameterStore<double> s;
  auto a = s.add("a", {2}, true, Init::Zeros);
  auto f = s.add("f", {1}, true, Init::Zeros);
  s.grad(a)[0] = 3;
  s.grad(a)[1] = 4;
  s.grad(f)[0] = 100;
  s.set_frozen(f, true);
  CHECK(train::grad_norm(s) == 5.0);
  CHECK(train::clip_grad_norm(s, 1.0) == 5.0);
  CHECK(std::abs(train::grad_norm(s) - 1.0) < 1e-9);
  CHECK(s.grad(f)[0] == 100);
}

TEST_CASE("warmup then cosine", "[cpu]") {
  train::WarmupCosine sch{1.0, 10, 110, 0.1};
  CHECK(sch(1) == 0.1);
  CHECK(sch(10) == 1.0);
  CHECK(std::abs(sch(60) - (0.1 + 0.9 * 0.5)) < 1e-12);
  CHECK(std::abs(sch(110) - 0.1) < 1e-12);
}

TEST_CASE("training lowers the loss and beats popularity on a synthetic fixture", "[cpu][slow]") {
  Fixture f = small_fixture();
  cpu::Backend be(0);
  Model<SasRecConfig, cpu::Backend> model(small_shape(f.dataset), be, 5);
  train::TrainOptions o;
  o.epochs = 12;
  o.batch = 32;
  o.lr = 3e-3;
  o.progress = false;
  o.log_epochs = false;
  o.eval_every = 0;
  const auto r = train::train(model, f.split, o);
  REQUIRE(r.epochs.size() == 12);
  CHECK(r.epochs.back().loss < r.epochs.front().loss - 0.5);
  const auto m = eval::evaluate(model, f.split.valid, {});
  const auto pop = eval::popularity_baseline(f.split, f.dataset.vocab.num_items(), f.split.valid);
  INFO("model hr@10 " << m.hr << " popularity hr@10 " << pop.hr);
  CHECK(m.hr > 1.5 * pop.hr);
}

TEST_CASE("resume from a mid-epoch checkpoint retraces the uninterrupted run", "[cpu]") {
  Fixture f = small_fixture(200, 40);
  cpu::Backend be(0);
  const ModelShape shape = small_shape(f.dataset);
  train::TrainOptions o;
  o.epochs = 3;
  o.batch = 32;
  o.progress = false;
  o.log_epochs = false;
  o.eval_every = 0;

  Model<SasRecConfig, cpu::Backend> full(shape, be, 9);
  const auto ref = train::train(full, f.split, o);

  const fs::path ckpt = temp_path("resume.safetensors");
  o.checkpoint = ckpt.string();
  Model<SasRecConfig, cpu::Backend> first(shape, be, 9);
  const std::int64_t crash_after = 11;  // 7 batches per epoch: mid second epoch
  const auto part1 = train::train(first, f.split, o, {}, {}, crash_after);
  REQUIRE(part1.step_losses.size() == static_cast<std::size_t>(crash_after));

  Model<SasRecConfig, cpu::Backend> resumed(shape, be, 1234);  // different init: all must load
  const auto info = io::load_checkpoint(ckpt, resumed);
  CHECK(info.state.step == crash_after);
  const auto part2 = train::train(resumed, f.split, o, info.state);
  std::vector<double> joined = part1.step_losses;
  joined.insert(joined.end(), part2.step_losses.begin(), part2.step_losses.end());
  REQUIRE(joined.size() == ref.step_losses.size());
  for (std::size_t i = 0; i < joined.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(joined[i] == ref.step_losses[i]);
  }
  CHECK(resumed.parameters().values() == full.parameters().values());
  fs::remove(ckpt);
}

TEST_CASE("checkpoints: wrong variant, wrong shape and truncation are clear errors", "[cpu]") {
  Fixture f = small_fixture(50, 30);
  cpu::Backend be(1);
  const ModelShape shape = small_shape(f.dataset);
  Model<SasRecConfig, cpu::Backend> model(shape, be, 1);
  const fs::path ckpt = temp_path("ckpt.safetensors");
  io::save_checkpoint(ckpt, model, {5, 1, 0}, {{"note", "test"}});
  {
    Model<SasRecConfig, cpu::Backend> other(shape, be, 2);
    const auto info = io::load_checkpoint(ckpt, other);
    CHECK(info.state.step == 5);
    CHECK(info.config.at("note") == "test");
    CHECK(other.parameters().values() == model.parameters().values());
  }
  {
    Model<SasRecSiluConfig, cpu::Backend> silu(shape, be, 2);
    CHECK_THROWS_WITH(io::load_checkpoint(ckpt, silu),
                      Catch::Matchers::ContainsSubstring("another model variant"));
  }
  {
    ModelShape wider = shape;
    wider.dim = 32;
    Model<SasRecConfig, cpu::Backend> big(wider, be, 2);
    CHECK_THROWS_WITH(io::load_checkpoint(ckpt, big),
                      Catch::Matchers::ContainsSubstring("shape differs"));
  }
  {
    Model<SasRecConfig, cpu::Backend> m2(shape, be, 2);
    const fs::path missing = ckpt.string() + ".missing";
    CHECK_THROWS_AS(io::load_checkpoint(missing, m2), InputError);
    auto bytes = io::read_file(ckpt);
    for (std::size_t cut : {std::size_t{0}, std::size_t{7}, bytes.size() / 2, bytes.size() - 1}) {
      const fs::path t = temp_path("trunc.safetensors");
      io::atomic_write(t, std::span<const std::byte>(bytes.data(), cut));
      INFO("cut at " << cut);
      CHECK_THROWS_AS(io::load_checkpoint(t, m2), InputError);
      fs::remove(t);
    }
  }
  fs::remove(ckpt);
}

TEST_CASE(
    "two-stage training: the frozen table is untouched in stage 1, trains in stage 2, resume is "
    "exact",
    "[cpu]") {
  Fixture f = small_fixture(120, 30);
  cpu::Backend be(0);
  const ModelShape shape = small_shape(f.dataset);
  train::TrainOptions o;
  o.stage1_epochs = 2;
  o.stage1_lr = 1e-3;
  o.epochs = 2;
  o.batch = 32;
  o.progress = false;
  o.log_epochs = false;
  o.eval_every = 0;
  Model<OursRandomConfig, cpu::Backend> model(shape, be, 4);
  o.stage1_frozen = {model.item_embedding()};
  const auto& e = model.parameters().entry(model.item_embedding());
  auto table = [&] {
    const auto& v = model.parameters().values();
    return std::vector<float>(v.begin() + e.offset, v.begin() + e.offset + e.numel);
  };
  const auto before = table();
  o.epochs = 0;  // stage 1 only
  train::train(model, f.split, o);
  CHECK(table() == before);
  o.epochs = 2;
  const std::int64_t per_epoch = (f.split.train.size() + 31) / 32;
  const auto rest = train::train(model, f.split, o, {2 * per_epoch, 2, 0});
  CHECK(table() != before);
  CHECK_FALSE(model.parameters().entry(model.item_embedding()).frozen);

  // The same four epochs in one go, and interrupted inside stage 1, give the same losses.
  Model<OursRandomConfig, cpu::Backend> full(shape, be, 4);
  o.stage1_frozen = {full.item_embedding()};
  const auto ref = train::train(full, f.split, o);
  const fs::path ckpt = temp_path("two_stage.safetensors");
  o.checkpoint = ckpt.string();
  Model<OursRandomConfig, cpu::Backend> a(shape, be, 4);
  o.stage1_frozen = {a.item_embedding()};
  const auto p1 = train::train(a, f.split, o, {}, {}, per_epoch + 1);
  Model<OursRandomConfig, cpu::Backend> b(shape, be, 99);
  o.stage1_frozen = {b.item_embedding()};
  const auto info = io::load_checkpoint(ckpt, b);
  const auto p2 = train::train(b, f.split, o, info.state);
  std::vector<double> joined = p1.step_losses;
  joined.insert(joined.end(), p2.step_losses.begin(), p2.step_losses.end());
  CHECK(joined == ref.step_losses);
  CHECK(b.parameters().values() == full.parameters().values());
  // Splitting by hand at the stage boundary (above) also matches.
  std::vector<double> tail(ref.step_losses.end() - rest.step_losses.size(), ref.step_losses.end());
  CHECK(tail == rest.step_losses);
  fs::remove(ckpt);
}
