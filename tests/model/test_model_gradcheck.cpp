// Whole-model gradient check in double precision: the mean cross-entropy of a small model
// against every parameter tensor, with dropout active (the mask is a function of the key, so
// both sides of a central difference see the same mask) and padded rows in the batch.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "seqrec/model/model.hpp"
#include "support/gradcheck.hpp"

using namespace seqrec;

namespace {

ModelShape small_shape() {
  ModelShape s;
  s.vocab_size = 4 + 11;
  s.max_len = 6;
  s.dim = 8;
  s.layers = 2;
  s.heads = 2;
  s.ffn_dim = 12;
  s.dropout = 0.3;
  s.init_std = 0.3;
  s.loss_chunk_elems = 2 * 11;  // two rows of logits at a time
  s.moe_balance_coef = 0.5;     // large, so the auxiliary gradients are checked too
  s.moe_z_coef = 0.1;
  return s;
}

// (B=3, L=6), left-padded; targets use 0 where there is none.
const std::vector<std::int32_t> kInputs = {0, 0, 1, 5,  6,  7,   //
                                           1, 8, 9, 10, 11, 12,  //
                                           0, 0, 0, 0,  1,  14};
const std::vector<std::int32_t> kTargets = {0, 0, 5,  6,  7,  8,   //
                                            8, 9, 10, 11, 12, 13,  //
                                            0, 0, 0,  0,  14, 4};

}  // namespace

TEMPLATE_TEST_CASE("model: loss gradient wrt every parameter tensor", "[cpu][gradcheck]",
                   SasRecConfig, SasRecSiluConfig, OursConfig, GatedConfig, MoeConfig,
                   SasRecLayerNormConfig, (Config<pos::None, norm::RMSNorm, ffn::ReluMlp>)) {
  cpu::BackendF64 be(1);
  Model<TestType, cpu::BackendF64> model(small_shape(), be, 7);
  auto& store = model.parameters();
  const std::uint64_t key = 12345;
  store.zero_grads();
  std::int64_t count = 0;
  const double loss = model.forward_backward(kInputs.data(), kTargets.data(), 3, 6, key, &count);
  CHECK(count == 12);
  CHECK(std::abs(loss - model.loss(kInputs.data(), kTargets.data(), 3, 6, key)) < 1e-12);
  const auto grads = store.grads();
  if constexpr (requires { TestType::FeedForward::experts; }) CHECK(model.aux_loss() > 0);
  auto f = [&] { return model.loss(kInputs.data(), kTargets.data(), 3, 6, key); };
  for (const auto& e : store.entries()) {
    INFO("tensor " << e.name);
    const auto r = test::check_gradient(f, store.values().data() + e.offset,
                                        grads.data() + e.offset, e.numel, 24);
    CHECK(r.checked > 0);
    CHECK(r.max_rel_error < test::kGradRelTol);
  }
}

TEST_CASE("model: dropout off makes scoring deterministic and batch-independent", "[cpu]") {
  cpu::Backend be(1);
  ModelShape s = small_shape();
  Model<SasRecConfig, cpu::Backend> model(s, be, 3);
  std::vector<float> all(3 * 11), one(11);
  model.score_last(kInputs.data(), 3, 6, all.data());
  model.score_last(kInputs.data() + 6, 1, 6, one.data());
  for (int i = 0; i < 11; ++i) CHECK(std::abs(all[11 + i] - one[i]) < 1e-5f);
}

TEST_CASE("model: tokens outside the vocabulary are rejected with their position", "[cpu]") {
  cpu::Backend be(1);
  Model<SasRecConfig, cpu::Backend> model(small_shape(), be, 3);
  std::vector<std::int32_t> bad = kInputs;
  bad[9] = 99;
  std::vector<float> scores(3 * 11);
  try {
    model.score_last(bad.data(), 3, 6, scores.data());
    FAIL("no error");
  } catch (const InputError& e) {
    CHECK(e.value() == "99");
    CHECK(std::string(e.what()).find("row 1, position 3") != std::string::npos);
  }
}

TEST_CASE("model: shape validation names the setting", "[cpu]") {
  ModelShape s = small_shape();
  s.heads = 3;
  cpu::Backend be(1);
  CHECK_THROWS_WITH((Model<SasRecConfig, cpu::Backend>(s, be, 1)),
                    Catch::Matchers::ContainsSubstring("--heads"));
}
