// The NCCL path of the CUDA model's data parallelism (dist/nccl.hpp), in a group of one GPU: the
// one group the device machine (one GPU) can form. A group of one still runs every call a larger
// group makes — the library loaded at run time, the unique id, the communicator, the PreMulSum
// operator, grouped in-place allreduces on the model's stream — and its sum is this rank's
// gradient times its weight, which the test knows exactly:
//   weighted_sum      ranges of a device buffer times 0.25 (a power of two: exact), the gaps
//                     between the ranges and the elements past them untouched; weight 1 (a plain
//                     sum, no operator) leaves the buffer as it is
//   model.allreduce   Model<Cfg, cuda::Backend>::allreduce_grads(0.5) after a training step: every
//                     gradient halved, exactly; with the item table frozen, the table's gradient
//                     is not touched (the frozen tensor splits the runs) and the others are
//                     halved; and a rank whose shard had no rows (no backward this step, lazily
//                     zeroed gradients still pending) contributes zeros
// Multi-rank groups run on the host emulator under mpirun (tests/mpi/test_device_dp_emu.cpp), not
// here. When the NCCL library cannot be loaded the test prints a SKIP line saying why and exits
// 77 (skipped).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_check.cuh"
#include "seqrec/data/batcher.hpp"
#include "seqrec/dist/nccl.hpp"
#include "seqrec/model/config.hpp"
#include "seqrec/model/model_cuda.cuh"

using namespace seqrec;
using namespace seqrec::cuda_check;

namespace {

/// Whether the NCCL library loads; prints a SKIP line when it does not.
bool nccl_loads() {
  try {
    const nccl::Library& lib = nccl::library();
    std::printf("NCCL %s, version code %d\n", lib.path.c_str(), lib.version);
    return true;
  } catch (const std::exception& e) {
    skip("nccl", e.what());
    return false;
  }
}

void test_weighted_sum(Backend& be, Rng& rng) {
  const std::size_t n = 1000;
  const std::vector<float> x = normal(rng, n);
  DeviceBuffer<float> d = be.buffer<float>(n);
  upload_into(be, d, x);
  nccl::Group group(nccl::Group::new_id(), 0, 1, be.device());
  const std::vector<nccl::Range> ranges = {{0, 100}, {130, 600}, {600, 997}};
  group.weighted_sum(d.data(), ranges, 0.25f, be.stream());
  std::vector<float> want = x;
  for (const auto& r : ranges)
    for (std::size_t i = r.begin; i < r.end; ++i) want[i] = x[i] * 0.25f;
  check_identical("nccl.weighted_sum", "1 rank, w=0.25, 3 ranges of 1000", download(be, d), want,
                  "x times its weight inside the ranges, unchanged outside");
  upload_into(be, d, x);
  group.weighted_sum(d.data(), ranges, 1.0f, be.stream());
  check_identical("nccl.weighted_sum", "1 rank, w=1", download(be, d), x,
                  "a plain sum over one rank is the input");
}

template <typename Cfg>
void test_model_allreduce(Backend& be, Rng& rng) {
  ModelShape s;
  s.vocab_size = 61;
  s.max_len = 8;
  s.dim = 32;
  s.layers = 2;
  s.heads = 2;
  s.ffn_dim = 64;
  s.dropout = 0.0;
  Model<Cfg, Backend> m(s, be, 5);
  const std::int32_t B = 6;
  std::vector<std::int32_t> in(std::size_t(B) * s.max_len), tg(in.size());
  for (std::int32_t r = 0; r < B; ++r) {
    std::vector<std::int32_t> seq(2 + rng.below(10));
    for (auto& t : seq) t = kNumSpecialTokens + std::int32_t(rng.below(s.vocab_size - 4));
    data::make_train_row(seq, s.max_len, in.data() + std::size_t(r) * s.max_len,
                         tg.data() + std::size_t(r) * s.max_len);
  }
  const std::string shape = Cfg::describe() + " d32 L8 B6";
  m.join_group(Model<Cfg, Backend>::new_group_id(), 0, 1);
  auto step = [&] {
    m.zero_grads();
    std::int64_t nt = 0;
    m.forward_backward(in.data(), tg.data(), B, s.max_len, 0, &nt);
  };
  auto grads = [&] {
    m.download_grads();
    const auto& g = m.parameters().grads();
    return std::vector<float>(g.begin(), g.end());
  };
  step();
  const std::vector<float> g = grads();
  step();
  m.allreduce_grads(0.5);
  std::vector<float> half = g;
  for (float& v : half) v *= 0.5f;
  check_identical("model.allreduce_grads", shape + ", w=0.5", grads(), half,
                  "every gradient times 0.5 (exact)");

  // Frozen table: its gradient is left as the backward wrote it (the loss's dW GEMM skips a
  // frozen table, so it holds only what the embeddings' backward added), the rest is halved.
  const ParamId table = m.item_embedding();
  m.parameters().set_frozen(table, true);
  step();
  const std::vector<float> gf = grads();
  step();
  m.allreduce_grads(0.5);
  std::vector<float> want = gf;
  const auto& e = m.parameters().entry(table);
  for (std::size_t i = 0; i < want.size(); ++i)
    if (i < e.offset || i >= e.offset + e.numel) want[i] *= 0.5f;
  check_identical("model.allreduce_grads", shape + ", table frozen", grads(), want,
                  "the frozen table untouched, every other gradient times 0.5");
  m.parameters().set_frozen(table, false);

  // No backward on this rank (an empty shard): the pending zeros are written and summed.
  step();
  m.zero_grads();
  m.allreduce_grads(0.5);
  check_identical("model.allreduce_grads", shape + ", empty shard", grads(),
                  std::vector<float>(g.size(), 0.0f), "a rank with no rows contributes zeros");
}

}  // namespace

int main() {
  // Skipped (77), not passed, where no GPU answers or no NCCL library loads.
  if (!device_answers() || !nccl_loads()) return 77;
  return run_checks(20261207, [](Backend& be, Rng& rng) {
    guarded("nccl.weighted_sum", "1 rank", [&] { test_weighted_sum(be, rng); });
    guarded("model.allreduce_grads", "SasRec",
            [&] { test_model_allreduce<SasRecConfig>(be, rng); });
    guarded("model.allreduce_grads", "Ours", [&] { test_model_allreduce<OursConfig>(be, rng); });
  });
}
