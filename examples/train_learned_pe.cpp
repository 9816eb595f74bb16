// train_learned_pe: title-embedding init, learned positions, SiLU MLP (isolates RoPE).
#include "common/trainer_main.hpp"

int main(int argc, char** argv) {
  return seqrec::app::run_trainer<seqrec::LearnedPeConfig>(
      argc, argv, "train_learned_pe",
      "Train and evaluate: title-embedding init, learned positions, SiLU MLP (isolates RoPE).");
}
