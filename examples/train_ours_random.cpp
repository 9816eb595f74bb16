// train_ours_random: random init, RoPE, SiLU MLP (control: isolates the init).
#include "common/trainer_main.hpp"

int main(int argc, char** argv) {
  return seqrec::app::run_trainer<seqrec::OursRandomConfig>(
      argc, argv, "train_ours_random",
      "Train and evaluate: random init, RoPE, SiLU MLP (control: isolates the init).");
}
