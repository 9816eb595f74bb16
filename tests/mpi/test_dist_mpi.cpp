// Data-parallel training and DPO over MPI, run by ctest as `mpirun -np 2 test_dist_mpi`: every
// rank runs every test case, and each case's collectives pair up across the ranks.
//
// The central check: two ranks that each train on their share of every batch and sum their
// gradients must train the model one process trains on the whole batches, up to the order of
// floating-point sums (in double precision, so that order costs ~1e-13). Each rank trains both
// and compares. Summing the ranks' mean gradients without weighting them by their target counts
// (the mistake the weighting exists to avoid) moves the parameters by ~1e-3 and fails it.
#include <mpi.h>

#include <catch2/catch_test_macros.hpp>
#include <cmath>
#include <filesystem>
#include <vector>

#include "seqrec/dist/mpi.hpp"
#include "seqrec/model.hpp"
#include "support/mpi_main.hpp"
#include "support/rank_checks.hpp"
#include "support/small_fixture.hpp"

using namespace seqrec;
namespace fs = std::filesystem;

namespace {

using test::differs_from_rank0;
using test::Fixture;
using test::max_abs_diff;
using test::quiet_options;
using test::same_as_rank0;
using test::small_fixture;
using test::small_shape;

}  // namespace

TEST_CASE("mpi: allreduce and broadcast of float, double and int64", "[mpi]") {
  dist::Mpi comm;
  REQUIRE(comm.size() == 2);
  const int r = comm.rank();
  std::vector<float> f = {1.0f + r, -0.5f * r};
  std::vector<double> d = {0.25 * (r + 1)};
  std::vector<std::int64_t> i = {std::int64_t{1} << (40 + r), 3};
  comm.allreduce_sum(f.data(), f.size());
  comm.allreduce_sum(d.data(), d.size());
  comm.allreduce_sum(i.data(), i.size());
  CHECK(f == std::vector<float>{3.0f, -0.5f});
  CHECK(d == std::vector<double>{0.75});
  CHECK(i == std::vector<std::int64_t>{(std::int64_t{1} << 40) + (std::int64_t{1} << 41), 6});
  std::vector<double> b = {double(r), double(10 + r)};
  comm.broadcast(b.data(), b.size(), 1);
  CHECK(b == std::vector<double>{1.0, 11.0});
  comm.barrier();
}

TEST_CASE("mpi: two ranks train the one-process model (double, no dropout)", "[mpi]") {
  dist::Mpi comm;
  // 150 users, batch 32: a last batch of fewer rows, and rows of 3 to 12 targets to balance.
  const Fixture f = small_fixture(150, 40);
  cpu::BackendT<double> be(1);
  const ModelShape shape = small_shape(f.dataset, 0.0);
  train::TrainOptions o = quiet_options(3, 32);
  Model<SasRecConfig, cpu::BackendT<double>> one(shape, be, 7), two(shape, be, 7);
  const auto ref = train::train(one, f.split, o);
  const auto dp = train::train(two, f.split, o, comm);
  REQUIRE(dp.step_losses.size() == ref.step_losses.size());
  double worst_loss = 0;
  for (std::size_t s = 0; s < ref.step_losses.size(); ++s)
    worst_loss = std::max(worst_loss, std::abs(dp.step_losses[s] - ref.step_losses[s]));
  const double worst_param = max_abs_diff(two.parameters().values(), one.parameters().values());
  INFO("worst step-loss difference " << worst_loss << ", worst parameter difference "
                                     << worst_param);
  CHECK(worst_loss < 1e-10);
  CHECK(worst_param < 1e-10);
  CHECK(dp.train_tokens == ref.train_tokens);
  CHECK(differs_from_rank0(two.parameters().values(), comm) == 0);
}

TEST_CASE("mpi: evaluation shared by the ranks equals one process's, bit for bit", "[mpi]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(101, 40);  // an odd case count: shares of 50 and 51
  cpu::Backend be(1);
  Model<SasRecConfig, cpu::Backend> model(small_shape(f.dataset, 0.1), be, 3);
  train::train(model, f.split, quiet_options(2, 32));  // the same on both ranks: one process each
  const eval::Metrics alone = eval::evaluate(model, f.split.valid, {});
  const eval::Metrics shared = dist::evaluate(model, f.split.valid, {}, comm);
  CHECK(shared.count == alone.count);
  CHECK(shared.mrr == alone.mrr);
  CHECK(shared.ndcg == alone.ndcg);
  CHECK(shared.hr == alone.hr);
  CHECK(alone.hr > 0);
}

TEST_CASE("mpi: replicas stay identical through dropout, two stages and MoE", "[mpi]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(160, 40);
  cpu::Backend be(1);
  const ModelShape shape = small_shape(f.dataset, 0.2);
  train::TrainOptions o = quiet_options(2, 32);
  o.stage1_epochs = 1;
  o.eval_every = 1;
  SECTION("RoPE, SiLU, the item table frozen in stage 1") {
    Model<OursRandomConfig, cpu::Backend> m(shape, be, 11);
    o.stage1_frozen = {m.item_embedding()};
    const auto r = train::train(m, f.split, o, comm);
    REQUIRE(r.epochs.size() == 3);
    CHECK(r.epochs.back().loss < r.epochs.front().loss);
    REQUIRE(r.epochs.back().valid);
    CHECK(differs_from_rank0(m.parameters().values(), comm) == 0);
    CHECK(differs_from_rank0(m.parameters().moment1(), comm) == 0);
    CHECK(differs_from_rank0(m.parameters().moment2(), comm) == 0);
    // The metrics every rank reports are the group's.
    CHECK(same_as_rank0({r.epochs.back().valid->mrr}, comm));
    // Ranks draw different dropout masks, so their local losses differ; their reported losses
    // are the group's and agree.
    CHECK(same_as_rank0(r.step_losses, comm));
  }
  SECTION("MoE: four experts, top-2, auxiliary losses per rank") {
    Model<Config<pos::RoPE, norm::RMSNorm, ffn::MoE<4, 2, ffn::SiluMlp>, init::Normal>,
          cpu::Backend>
        m(shape, be, 13);
    o.stage1_epochs = 0;
    const auto r = train::train(m, f.split, o, comm);
    CHECK(differs_from_rank0(m.parameters().values(), comm) == 0);
    REQUIRE(r.epochs.back().expert_shares.size() == 2);
    double sum = 0;
    for (double s : r.epochs.back().expert_shares[0]) sum += s;
    CHECK(std::abs(sum - 1.0) < 1e-9);
    CHECK(same_as_rank0(r.epochs.back().expert_shares[0], comm));
  }
}

TEST_CASE("mpi: rank 0 checkpoints; resuming on both ranks retraces the run", "[mpi]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(150, 40);
  cpu::Backend be(1);
  const ModelShape shape = small_shape(f.dataset, 0.1);
  train::TrainOptions o = quiet_options(2, 32);
  // One path for the group: rank 0's pid.
  std::int64_t pid = ::getpid();
  comm.broadcast(&pid, 1, 0);
  const fs::path ckpt =
      fs::temp_directory_path() / ("seqrec_test_mpi_" + std::to_string(pid) + ".safetensors");

  Model<SasRecConfig, cpu::Backend> full(shape, be, 5);
  const auto ref = train::train(full, f.split, o, comm);

  o.checkpoint = ckpt.string();
  Model<SasRecConfig, cpu::Backend> first(shape, be, 5);
  const std::int64_t crash_after = 6;  // 5 batches per epoch: in the second epoch
  const auto part1 = train::train(first, f.split, o, comm, {}, {}, crash_after);
  comm.barrier();  // rank 0 has written it
  REQUIRE(fs::exists(ckpt));

  Model<SasRecConfig, cpu::Backend> resumed(shape, be, 77);  // different init: all must load
  const auto info = io::load_checkpoint(ckpt, resumed);
  CHECK(info.state.step == crash_after);
  const auto part2 = train::train(resumed, f.split, o, comm, info.state);
  std::vector<double> joined = part1.step_losses;
  joined.insert(joined.end(), part2.step_losses.begin(), part2.step_losses.end());
  REQUIRE(joined.size() == ref.step_losses.size());
  for (std::size_t i = 0; i < joined.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(joined[i] == ref.step_losses[i]);
  }
  CHECK(resumed.parameters().values() == full.parameters().values());
  comm.barrier();  // every rank has read it
  if (comm.rank() == 0) fs::remove(ckpt);
}

TEST_CASE("mpi: two ranks fine-tune with DPO as one process does (double, no dropout)",
          "[mpi][dpo]") {
  dist::Mpi comm;
  const Fixture f = small_fixture(150, 40);
  cpu::BackendT<double> be(1);
  const ModelShape shape = small_shape(f.dataset, 0.0);
  using M = Model<SasRecConfig, cpu::BackendT<double>>;
  M one(shape, be, 21), two(shape, be, 21);
  train::PairOptions po;
  po.negatives = 3;
  po.all_positions = true;  // examples of 1 to 12 pairs to balance
  po.easy_top = 20;
  const auto pairs =
      train::build_preference_pairs(f.split.train, one.parameters().value(one.item_embedding()),
                                    shape.vocab_size, shape.dim, shape.max_len, po);
  REQUIRE(pairs.pairs() > pairs.examples());
  // The reference pass shared by the ranks gives one process's values exactly.
  const auto ref = train::reference_log_probs(one, pairs, 32);
  CHECK(train::reference_log_probs(two, pairs, comm, 32) == ref);

  train::DpoOptions o;
  o.ce_weight = 0.2;
  train::TrainOptions t = quiet_options(2, 32);
  t.lr = 1e-3;
  const auto alone = train::dpo_train(one, pairs, ref, o, t);
  const auto shared = train::dpo_train(two, pairs, ref, o, t, comm, &f.split.valid);
  REQUIRE(shared.epochs.size() == alone.epochs.size());
  CHECK(shared.pairs_seen == alone.pairs_seen);
  const double worst_loss = std::abs(shared.epochs.back().loss - alone.epochs.back().loss);
  const double worst_param = max_abs_diff(two.parameters().values(), one.parameters().values());
  INFO("last epoch's loss differs by " << worst_loss << ", parameters by " << worst_param);
  CHECK(worst_loss < 1e-10);
  CHECK(worst_param < 1e-10);
  const M start(shape, be, 21);  // the fine-tuning moved the parameters well beyond that
  CHECK(max_abs_diff(one.parameters().values(), start.parameters().values()) > 1e-4);
  CHECK(differs_from_rank0(two.parameters().values(), comm) == 0);
  REQUIRE(shared.epochs.back().valid);
  CHECK(same_as_rank0({shared.epochs.back().valid->mrr}, comm));
}

int main(int argc, char** argv) { return test::run_catch_on_ranks(argc, argv, "test_dist_mpi", 2); }
