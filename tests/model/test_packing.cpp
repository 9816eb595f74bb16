// Packed training steps against the full computation. forward_backward and loss compute only the
// rows whose input is not padding (or whose target is scored); forward_hidden / backward_hidden
// compute every row. Driving the same cross-entropy through the unpacked path must give the same
// loss and the same gradient of every parameter — with dropout on, so the packed path must also
// draw the full layout's masks — for each family of policies (learned / RoPE positions,
// RMSNorm / LayerNorm, MLP / SwiGLU / MoE with its padding-masked auxiliary losses).
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <cmath>

#include "seqrec/model/model.hpp"

using namespace seqrec;

namespace {

ModelShape shape() {
  ModelShape s;
  s.vocab_size = 4 + 13;
  s.max_len = 7;
  s.dim = 8;
  s.layers = 2;
  s.heads = 2;
  s.ffn_dim = 12;
  s.dropout = 0.3;
  s.init_std = 0.3;
  s.loss_chunk_elems = 3 * 13;
  s.moe_balance_coef = 0.5;
  s.moe_z_coef = 0.1;
  return s;
}

// (B=4, L=7), left-padded: 13 of 28 rows are padding, one row has none, one has a single item.
const std::vector<std::int32_t> kInputs = {0, 0, 0, 1,  5,  6,  7,   //
                                           1, 8, 9, 10, 11, 12, 4,   //
                                           0, 0, 0, 0,  0,  0,  14,  //
                                           0, 0, 0, 0,  9,  16, 15};
const std::vector<std::int32_t> kTargets = {0, 0, 0,  5,  6,  7,  8,   //
                                            8, 9, 10, 11, 12, 4,  13,  //
                                            0, 0, 0,  0,  0,  0,  4,   //
                                            0, 0, 0,  0,  16, 15, 6};

}  // namespace

TEMPLATE_TEST_CASE("packing: packed steps equal the full computation (loss and every gradient)",
                   "[cpu]", SasRecConfig, OursConfig, GatedConfig, MoeConfig,
                   SasRecLayerNormConfig) {
  const ModelShape s = shape();
  cpu::BackendF64 be(1);
  Model<TestType, cpu::BackendF64> model(s, be, 11);
  const std::int32_t B = 4, L = 7;
  const std::int64_t N = std::int64_t{B} * L, D = s.dim;
  const std::uint64_t key = 12345;
  auto& store = model.parameters();

  // Packed: the trainer's path.
  store.zero_grads();
  std::int64_t count = 0;
  const double loss_packed =
      model.forward_backward(kInputs.data(), kTargets.data(), B, L, key, &count);
  const auto grads_packed = store.grads();
  REQUIRE(count == 15);

  // Full: every row through the model, the same loss on top of it.
  store.zero_grads();
  const double* h = model.forward_hidden(kInputs.data(), B, L, key);
  std::vector<double> dh(static_cast<std::size_t>(N * D));
  AlignedVector<double> ws;
  std::int64_t seen = 0;
  const auto item = model.item_embedding();
  const double ce = ops::cross_entropy_forward_backward<double>(
      detail::loss_shape(s, N), h, kTargets.data(), store.value(item) + kNumSpecialTokens * D,
      dh.data(), store.grad(item) + kNumSpecialTokens * D, 1.0 / double(count), &seen, ws);
  const double loss_full = ce / double(count) + model.aux_loss();
  model.backward_hidden(dh.data(), B, L);
  const auto grads_full = store.grads();

  CHECK(seen == count);
  CHECK(std::fabs(loss_packed - loss_full) <= 1e-12 * std::fabs(loss_full));
  // Double precision, the same operations on the computed rows: only summation order (rows
  // skipped in sums of zeros, GEMM blocking) can differ.
  for (const auto& e : store.entries()) {
    INFO("tensor " << e.name);
    double mx = 0, err = 0;
    for (std::size_t i = e.offset; i < e.offset + e.numel; ++i) {
      mx = std::max(mx, std::fabs(grads_full[i]));
      err = std::max(err, std::fabs(grads_full[i] - grads_packed[i]));
    }
    CHECK(err <= 1e-12 * std::max(mx, 1e-30));
  }
}
