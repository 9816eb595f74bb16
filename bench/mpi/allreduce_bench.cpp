// What the data-parallel step's communication costs: dist::allreduce_grads over the parameter
// store of a SASRec model at three sizes, under mpirun. Run it as
//   mpirun -np 2 ./build/bench/allreduce_bench [--reps N]
// Rank 0 prints one markdown table: parameters, bytes summed per step, the median time of one
// allreduce_grads (scaling pass included) over N repetitions, and the bus bandwidth in NCCL's
// convention, 2 (P - 1) / P · bytes / time (what each rank sends and receives).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "seqrec/dist/mpi.hpp"
#include "seqrec/model.hpp"

using namespace seqrec;

namespace {

struct Size {
  const char* name;
  std::int32_t dim, layers, ffn, items;
};

}  // namespace

int main(int argc, char** argv) {
  dist::MpiEnvironment env(&argc, &argv);
  dist::Mpi comm;
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else {
      if (comm.rank() == 0)
        std::fprintf(stderr,
                     "usage: mpirun -np N allreduce_bench [--reps N]\n"
                     "Times dist::allreduce_grads over SASRec parameter stores (ML-1M, Games "
                     "and the study's sizes).\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  if (reps < 1) reps = 1;
  // The configurations of bench/compare_pytorch.py and the study's (d 1024, 5 layers).
  const Size sizes[] = {{"ML-1M (d 64, 2 blocks)", 64, 2, 64, 3706},
                        {"Games (d 256, 2 blocks)", 256, 2, 1024, 16859},
                        {"study (d 1024, 5 blocks)", 1024, 5, 4096, 16859}};
  if (comm.rank() == 0) {
    std::printf("dist::allreduce_grads, %d ranks, median of %d\n\n", comm.size(), reps);
    std::printf("| model | parameters | MB per step | ms | bus GB/s |\n|---|---|---|---|---|\n");
  }
  cpu::Backend be(1);
  for (const Size& s : sizes) {
    ModelShape shape;
    shape.dim = s.dim;
    shape.layers = s.layers;
    shape.heads = 1;
    shape.ffn_dim = s.ffn;
    shape.max_len = 20;
    shape.vocab_size = s.items + kNumSpecialTokens;
    Model<SasRecConfig, cpu::Backend> model(shape, be, 1);
    auto& store = model.parameters();
    std::fill(store.grads().begin(), store.grads().end(), 1e-3f);
    std::vector<double> ms;
    for (int r = 0; r < reps + 1; ++r) {
      comm.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      dist::allreduce_grads(store, comm, 0.5f);
      const double t =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      // The step waits for the slowest rank.
      std::vector<double> all(static_cast<std::size_t>(comm.size()), 0.0);
      all[static_cast<std::size_t>(comm.rank())] = t;
      comm.allreduce_sum(all.data(), all.size());
      if (r > 0) ms.push_back(*std::max_element(all.begin(), all.end()));  // r 0 warms up
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double bytes = double(store.size()) * sizeof(float);
    const double p = comm.size();
    const double bus = 2 * (p - 1) / p * bytes / (med * 1e-3) / 1e9;
    if (comm.rank() == 0)
      std::printf("| %s | %zu | %.1f | %.2f | %.1f |\n", s.name, store.num_parameters(),
                  bytes / 1e6, med, bus);
  }
  return 0;
}
