// test_package: includes the user's door, builds a tiny SASRec on synthetic data and runs one
// training step. Non-zero exit when the step fails or its loss is not finite.
#include <cmath>
#include <cstdio>
#include <exception>

#include <seqrec/model.hpp>

int main() {
  try {
    seqrec::data::SyntheticOptions so;
    so.users = 64;
    so.items = 30;
    so.min_len = 5;
    so.max_len = 10;
    const auto dataset = seqrec::data::build_dataset(seqrec::data::make_synthetic(so).log);
    const auto split = seqrec::data::split_loo(dataset);

    seqrec::ModelShape shape;
    shape.vocab_size = dataset.vocab.size();
    shape.max_len = 8;
    shape.dim = 8;
    shape.layers = 1;
    shape.heads = 1;
    shape.ffn_dim = 16;
    seqrec::cpu::Backend cpu(1);
    seqrec::Model<seqrec::SasRecConfig, seqrec::cpu::Backend> model(shape, cpu, /*seed=*/1);

    seqrec::train::TrainOptions opt;
    opt.epochs = 1;
    opt.batch = 16;
    opt.progress = false;
    opt.log_epochs = false;
    opt.eval_every = 0;
    const auto r = seqrec::train::train(model, split, opt, {}, {}, /*stop_after_steps=*/1);
    if (r.step_losses.size() != 1 || !std::isfinite(r.step_losses[0])) {
      std::fprintf(stderr, "test_package: FAILED: expected one finite training step\n");
      return 1;
    }
    std::printf("seqrec %s test_package: one training step, loss %.4f\n", seqrec::kVersion,
                r.step_losses[0]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_package: FAILED: %s\n", e.what());
    return 1;
  }
}
