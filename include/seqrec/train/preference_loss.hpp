// The preference losses of DPO fine-tuning (train/dpo.hpp), on per-pair log-probabilities: no
// model, no Eigen, no fmt, so that CUDA translation units (bench/gpu_train_bench.cu) can score
// pairs exactly as the trainer does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace seqrec::train {

// ---- losses -------------------------------------------------------------------------------------

enum class PreferenceLoss { Dpo, SDpo };

struct DpoOptions {
  PreferenceLoss loss = PreferenceLoss::Dpo;
  double beta = 0.1;
  double ce_weight = 0.0;  // λ of the cross-entropy anchor −λ log π(chosen)
  // Dropout in the policy's forward. Off by default (as TRL's disable_dropout): the reference's
  // log-probabilities are taken without dropout, and a policy with dropout would start with a
  // biased log-ratio (about −0.09 nats on the chosen item of the Games model).
  bool policy_dropout = false;
};

inline double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
inline double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}

/// Loss of one pair from the log-probabilities of [chosen, rejected_1..K] under the policy and
/// the reference; grad receives d loss / d policy log-probabilities (1 + K values).
inline double preference_loss(const DpoOptions& o, std::int32_t K, const double* policy,
                              const double* reference, double* grad) {
  const double uc = o.beta * (policy[0] - reference[0]);
  double loss = 0, gc = 0;
  if (o.loss == PreferenceLoss::Dpo) {
    for (std::int32_t j = 1; j <= K; ++j) {
      const double diff = uc - o.beta * (policy[j] - reference[j]);  // u_c − u_j
      loss += softplus(-diff) / K;
      const double s = sigmoid(-diff) / K;  // d loss / d u_j; the negative of it for u_c
      grad[j] = o.beta * s;
      gc -= s;
    }
  } else {
    double m = -std::numeric_limits<double>::infinity();
    for (std::int32_t j = 1; j <= K; ++j) m = std::max(m, o.beta * (policy[j] - reference[j]) - uc);
    double z = 0;
    for (std::int32_t j = 1; j <= K; ++j)
      z += std::exp(o.beta * (policy[j] - reference[j]) - uc - m);
    const double S = m + std::log(z);  // log Σ exp(u_j − u_c)
    loss = softplus(S);
    const double s = sigmoid(S);
    for (std::int32_t j = 1; j <= K; ++j)
      grad[j] = o.beta * s * std::exp(o.beta * (policy[j] - reference[j]) - uc - S);
    gc = -s;
  }
  grad[0] = o.beta * gc - o.ce_weight;
  return loss - o.ce_weight * policy[0];
}

/// Running sums of a pass over pairs.
struct PairStats {
  double loss = 0;          // sum of per-pair losses
  double margin = 0;        // sum of u_c − mean_j u_j (implicit reward margin)
  double accuracy = 0;      // pairs with u_c > every u_j
  double chosen_delta = 0;  // sum of log π(c) − log π_ref(c)
  std::int64_t pairs = 0;
  PairStats& operator+=(const PairStats& s) {
    loss += s.loss;
    margin += s.margin;
    accuracy += s.accuracy;
    chosen_delta += s.chosen_delta;
    pairs += s.pairs;
    return *this;
  }
};

/// Scores P pairs from their policy log-probabilities logp (P, 1+K) [chosen, rejected…] and the
/// reference's: returns the summed statistics and writes g (P, 1+K) = d loss / d logp per pair.
/// Summed serially in pair order, so the statistics do not depend on the thread count.
inline PairStats score_pairs(const DpoOptions& o, std::int32_t K, std::int64_t P,
                             const double* logp, const double* reference, double* g) {
  const std::int64_t J = 1 + K;
  PairStats s;
  for (std::int64_t r = 0; r < P; ++r) {
    const double* lp = logp + r * J;
    const double* ref = reference + r * J;
    s.loss += preference_loss(o, K, lp, ref, g + r * J);
    const double uc = o.beta * (lp[0] - ref[0]);
    double mean_u = 0;
    bool wins = true;
    for (std::int64_t j = 1; j < J; ++j) {
      const double uj = o.beta * (lp[j] - ref[j]);
      mean_u += uj / K;
      wins = wins && uc > uj;
    }
    s.margin += uc - mean_u;
    s.accuracy += wins ? 1.0 : 0.0;
    s.chosen_delta += lp[0] - ref[0];
  }
  s.pairs = P;
  return s;
}

}  // namespace seqrec::train
