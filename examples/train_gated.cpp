// train_gated: title-embedding init, RoPE, SwiGLU with parameters matched to the SiLU MLP.
#include "common/trainer_main.hpp"

int main(int argc, char** argv) {
  return seqrec::app::run_trainer<seqrec::GatedConfig>(
      argc, argv, "train_gated",
      "Train and evaluate: title-embedding init, RoPE, SwiGLU with parameters matched to the SiLU "
      "MLP.");
}
