// train_moe: title-embedding init, RoPE, mixture of 4 SiLU experts, top-2.
#include "common/trainer_main.hpp"

int main(int argc, char** argv) {
  return seqrec::app::run_trainer<seqrec::MoeConfig>(
      argc, argv, "train_moe",
      "Train and evaluate: title-embedding init, RoPE, mixture of 4 SiLU experts, top-2.");
}
