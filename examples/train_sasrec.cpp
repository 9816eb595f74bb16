// train_sasrec: the study's baseline — random init, learned positions, RMSNorm, ReLU MLP.
#include "common/trainer_main.hpp"

int main(int argc, char** argv) {
  return seqrec::app::run_trainer<seqrec::SasRecConfig>(
      argc, argv, "train_sasrec",
      "Train and evaluate SASRec (random init, learned positions, ReLU MLP) on the CPU.");
}
