// Data-parallel training of the CUDA model, one process per device, on the host emulator: ctest
// runs `mpirun -np 2 test_device_dp_emu` with the emulated CUDA plugin, two emulated devices
// (SEQREC_EMU_DEVICES=2, one per rank, as NCCL requires) and the emulated NCCL
// (tests/emu/nccl_emu.cpp: the NCCL calls over MPI). It checks the wiring no GPU machine lent to
// this project can: the device machine has one GPU, so a group of two never ran there.
//
// The central check, as in test_dist_mpi.cpp but in fp32 on the device model: two ranks that each
// train on their share of every batch, weight their gradients by their share of the targets and
// sum them between the devices must train the model one device trains on the whole batches, up
// to fp32 summation order. That order costs ~1e-7 per step; the bound below is 2e-5 after ten
// steps. Summing the ranks' gradients without the weights moves the parameters by ~1e-3.
#include <mpi.h>

#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "seqrec/dist/mpi.hpp"
#include "seqrec/model.hpp"
#include "seqrec/model/device_model.hpp"
#include "seqrec/model/device_plugin.hpp"
#include "support/mpi_main.hpp"
#include "support/rank_checks.hpp"
#include "support/small_fixture.hpp"

using namespace seqrec;

namespace {

using test::differs_from_rank0;
using test::Fixture;
using test::max_abs_diff;
using test::quiet_options;
using test::small_fixture;
using test::small_shape;

/// The device model of rank `rank` (device ordinal = rank, as the trainers choose it).
template <typename Cfg>
DeviceModel<Cfg> device_model(const ModelShape& s, std::uint64_t seed, int rank) {
  return load_device_model<Cfg>(s, seed, DeviceOptions{rank, false});
}

template <typename Cfg>
std::vector<float> values(DeviceModel<Cfg>& m) {
  m.download();
  const auto& v = m.parameters().values();
  return {v.begin(), v.end()};
}

}  // namespace

TEST_CASE("device dp: two devices train the one-device model (fp32, no dropout)", "[device]") {
  dist::Mpi comm;
  // 150 users, batch 32: a short last batch, rows of 3 to 12 targets to balance.
  const Fixture f = small_fixture(150, 40);
  const ModelShape shape = small_shape(f.dataset, 0.0);
  const train::TrainOptions o = quiet_options(2, 32);
  auto one = device_model<SasRecConfig>(shape, 7, comm.rank());
  auto two = device_model<SasRecConfig>(shape, 7, comm.rank());
  const auto ref = train::train(one, f.split, o);
  const auto dp = train::train(two, f.split, o, comm);
  REQUIRE(dp.step_losses.size() == ref.step_losses.size());
  REQUIRE(dp.step_losses.size() >= 10);
  double worst_loss = 0;
  for (std::size_t s = 0; s < ref.step_losses.size(); ++s)
    worst_loss = std::max(worst_loss, std::abs(dp.step_losses[s] - ref.step_losses[s]));
  const std::vector<float> a = values(two), b = values(one);
  const double worst_param = max_abs_diff(a, b);
  INFO("worst step-loss difference " << worst_loss << ", worst parameter difference "
                                     << worst_param);
  CHECK(worst_loss < 1e-5);
  CHECK(worst_param < 2e-5);
  CHECK(dp.train_tokens == ref.train_tokens);
  CHECK(differs_from_rank0(a, comm) == 0);
  auto start = device_model<SasRecConfig>(shape, 7, comm.rank());
  CHECK(max_abs_diff(b, values(start)) > 1e-3);  // training moved them well beyond the bound
}

TEST_CASE("device dp: two stages with the table frozen, dropout on: replicas stay identical",
          "[device]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(120, 40);
  const ModelShape shape = small_shape(f.dataset, 0.1);
  train::TrainOptions o = quiet_options(1, 32);
  o.stage1_epochs = 1;
  auto m = device_model<OursConfig>(shape, 11 + std::uint64_t(comm.rank()), comm.rank());
  o.stage1_frozen = {m.item_embedding()};
  // Different seeds per rank: start_replicas must give both rank 0's parameters.
  const auto res = train::train(m, f.split, o, comm);
  REQUIRE(res.epochs.size() == 2);
  const std::vector<float> v = values(m);
  CHECK(differs_from_rank0(v, comm) == 0);
  auto rank0_start = device_model<OursConfig>(shape, 11, comm.rank());
  CHECK(max_abs_diff(v, values(rank0_start)) > 1e-3);
}

TEST_CASE("device dp: the frozen table is left out of the sum and not trained in stage one",
          "[device]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(120, 40);
  const ModelShape shape = small_shape(f.dataset, 0.0);
  train::TrainOptions o = quiet_options(0, 32);
  o.stage1_epochs = 1;
  auto m = device_model<OursConfig>(shape, 13, comm.rank());
  o.stage1_frozen = {m.item_embedding()};
  const std::vector<float> before = values(m);
  train::train(m, f.split, o, comm);
  const std::vector<float> after = values(m);
  const auto& e = m.parameters().entry(m.item_embedding());
  double table_moved = 0, rest_moved = 0;
  for (std::size_t i = 0; i < after.size(); ++i) {
    double& moved = i >= e.offset && i < e.offset + e.numel ? table_moved : rest_moved;
    moved = std::max(moved, std::abs(double(after[i]) - double(before[i])));
  }
  CHECK(table_moved == 0.0);
  CHECK(rest_moved > 1e-4);
  CHECK(differs_from_rank0(after, comm) == 0);
}

TEST_CASE("device dp: evaluation shared by two devices equals one device's", "[device]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(101, 40);
  auto m = device_model<SasRecConfig>(small_shape(f.dataset, 0.0), 3, comm.rank());
  const eval::Metrics alone = eval::evaluate(m, f.split.valid, {});
  const eval::Metrics shared = dist::evaluate(m, f.split.valid, {}, comm);
  CHECK(shared.count == alone.count);
  CHECK(shared.mrr == alone.mrr);
  CHECK(shared.hr == alone.hr);
}

TEST_CASE("device dp: two devices fine-tune with DPO as one device does (fp32)", "[device][dpo]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(150, 40);
  const ModelShape shape = small_shape(f.dataset, 0.0);
  auto one = device_model<SasRecConfig>(shape, 21, comm.rank());
  auto two = device_model<SasRecConfig>(shape, 21, comm.rank());
  train::PairOptions po;
  po.negatives = 3;
  po.all_positions = true;
  po.easy_top = 20;
  const auto pairs =
      train::build_preference_pairs(f.split.train, one.parameters().value(one.item_embedding()),
                                    shape.vocab_size, shape.dim, shape.max_len, po);
  const auto ref = train::reference_log_probs(one, pairs, 32);
  const auto shared_ref = train::reference_log_probs(two, pairs, comm, 32);
  CHECK(shared_ref == ref);
  train::DpoOptions o;
  o.ce_weight = 0.2;
  train::TrainOptions t = quiet_options(2, 32);
  t.lr = 1e-3;
  const auto alone = train::dpo_train(one, pairs, ref, o, t);
  const auto shared = train::dpo_train(two, pairs, ref, o, t, comm);
  REQUIRE(shared.epochs.size() == alone.epochs.size());
  CHECK(shared.pairs_seen == alone.pairs_seen);
  const std::vector<float> a = values(two), b = values(one);
  const double worst_loss = std::abs(shared.epochs.back().loss - alone.epochs.back().loss);
  const double worst_param = max_abs_diff(a, b);
  INFO("last epoch's loss differs by " << worst_loss << ", parameters by " << worst_param);
  CHECK(worst_loss < 1e-5);
  CHECK(worst_param < 2e-5);
  CHECK(differs_from_rank0(a, comm) == 0);
}

TEST_CASE("device dp: two ranks on one device are refused, as NCCL refuses them", "[device]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(40, 20);
  auto m = device_model<SasRecConfig>(small_shape(f.dataset, 0.0), 1, 0);  // device 0 on both
  try {
    dist::start_replicas(m, comm);
    FAIL("joined a group with both ranks on device 0");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("ncclCommInitRank failed: invalid usage") !=
          std::string::npos);
  }
}

int main(int argc, char** argv) {
  return test::run_catch_on_ranks(argc, argv, "test_device_dp_emu", 2);
}
