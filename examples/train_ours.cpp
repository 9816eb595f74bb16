// train_ours: title-embedding init, RoPE, SiLU MLP (the study's best).
#include "common/trainer_main.hpp"

int main(int argc, char** argv) {
  return seqrec::app::run_trainer<seqrec::OursConfig>(
      argc, argv, "train_ours",
      "Train and evaluate: title-embedding init, RoPE, SiLU MLP (the study's best).");
}
