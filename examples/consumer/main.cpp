// A consumer of the installed seqrec: trains a tiny SASRec for one epoch on the embedded synthetic
// data and prints its validation metrics. Exits non-zero when anything fails: an exception, a
// non-finite loss, or metrics outside [0, 1].
#include <cmath>
#include <cstdio>
#include <exception>

#include <seqrec/model.hpp>

int main() {
  try {
    seqrec::data::SyntheticOptions so;
    so.users = 300;
    so.items = 60;
    so.min_len = 5;
    so.max_len = 15;
    const auto dataset = seqrec::data::build_dataset(seqrec::data::make_synthetic(so).log);
    const auto split = seqrec::data::split_loo(dataset);

    seqrec::ModelShape shape;
    shape.vocab_size = dataset.vocab.size();
    shape.max_len = 12;
    shape.dim = 16;
    shape.layers = 1;
    shape.heads = 2;
    shape.ffn_dim = 32;
    seqrec::cpu::Backend cpu(/*threads=*/2);
    seqrec::Model<seqrec::SasRecConfig, seqrec::cpu::Backend> model(shape, cpu, /*seed=*/42);

    seqrec::train::TrainOptions opt;
    opt.epochs = 1;
    opt.batch = 32;
    opt.lr = 3e-3;
    opt.progress = false;
    opt.log_epochs = false;
    opt.eval_every = 0;
    const auto result = seqrec::train::train(model, split, opt);
    const auto m = seqrec::eval::evaluate(model, split.valid, {});

    const double loss = result.epochs.empty() ? NAN : result.epochs.back().loss;
    std::printf("seqrec %s consumer: 1 epoch, %zu steps, loss %.4f, valid HR@10 %.4f NDCG@10 %.4f "
                "(%zu users)\n",
                seqrec::kVersion, result.step_losses.size(), loss, m.hr, m.ndcg, m.count);
    const bool ok = result.epochs.size() == 1 && std::isfinite(loss) && m.count > 0 &&
                    m.hr >= 0.0 && m.hr <= 1.0 && m.ndcg >= 0.0 && m.ndcg <= m.hr;
    if (!ok) {
      std::fprintf(stderr, "seqrec consumer: FAILED (unexpected loss or metrics)\n");
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seqrec consumer: FAILED: %s\n", e.what());
    return 1;
  }
}
