// From an InteractionLog to token sequences, and from sequences to a train / valid / test split.
//
// build_dataset maps raw item ids to vocabulary tokens (every item of the log, first-appearance
// order) and gathers each user's tokens in chronological order, optionally truncated. Two split
// protocols follow:
//   split_loo      leave-one-out (SASRec): valid = second-last item, test = last item, train =
//                  everything but the last two; users with fewer than 3 items are dropped.
//   split_holdout  a seeded share of the USERS is held out; each held-out user's last item is the
//                  target of a valid case and the rest of the sequence (its history) also trains;
//                  optionally a second seeded draw moves a share of those cases to test.
// Both are deterministic: split_loo has no randomness, split_holdout depends only on its seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/data/interactions.hpp"
#include "seqrec/data/vocabulary.hpp"

namespace seqrec::data {

/// Which end of a long sequence build_dataset keeps.
enum class Truncation { Recent, Earliest };

/// Users' chronological token sequences over one vocabulary.
struct Dataset {
  Vocabulary vocab;                 // every item of the log, first-appearance order
  std::vector<std::int64_t> users;  // (U,) raw user ids
  std::vector<std::vector<std::int32_t>> sequences;  // (U, n_u) tokens per user, chronological
  std::string source;
  /// Total number of tokens over all sequences.
  std::size_t num_interactions() const {
    std::size_t n = 0;
    for (const auto& s : sequences) n += s.size();
    return n;
  }
};

/// Builds token sequences from a log. Users are taken in order of first appearance and rows of a
/// user keep their log order (a log from read_interactions is already grouped and chronological).
/// max_items_per_user == 0 keeps everything; otherwise keep the most recent (Recent) or first
/// (Earliest) N items. The vocabulary holds every item of the log, even one truncated away.
inline Dataset build_dataset(const InteractionLog& log, std::size_t max_items_per_user = 0,
                             Truncation t = Truncation::Recent) {
  if (log.user.size() != log.item.size()) {
    throw Error("interaction log " + log.source +
                " is inconsistent: " + std::to_string(log.user.size()) + " users vs " +
                std::to_string(log.item.size()) + " items");
  }
  Dataset d;
  d.source = log.source;
  std::unordered_map<std::int64_t, std::size_t> user_index;
  std::int64_t last_user = 0;
  std::size_t last_index = 0;
  for (std::size_t k = 0; k < log.size(); ++k) {
    const std::int64_t u = log.user[k];
    if (k == 0 || u != last_user) {
      auto [it, inserted] = user_index.try_emplace(u, d.users.size());
      if (inserted) {
        d.users.push_back(u);
        d.sequences.emplace_back();
      }
      last_user = u;
      last_index = it->second;
    }
    d.sequences[last_index].push_back(d.vocab.add(log.item[k]));
  }
  if (max_items_per_user > 0) {
    for (auto& s : d.sequences) {
      if (s.size() <= max_items_per_user) continue;
      if (t == Truncation::Recent) {
        s.erase(s.begin(), s.end() - static_cast<std::ptrdiff_t>(max_items_per_user));
      } else {
        s.resize(max_items_per_user);
      }
      s.shrink_to_fit();
    }
  }
  return d;
}

/// One evaluation query: predict `target` after `history` for user `user` (index into
/// Dataset::users).
struct EvalCase {
  std::size_t user;
  std::vector<std::int32_t> history;
  std::int32_t target;
};

/// Training sequences and evaluation cases of one protocol.
struct Split {
  std::vector<std::vector<std::int32_t>> train;  // training sequences (one per contributing user)
  std::vector<EvalCase> valid, test;
  bool has_test = false;
  std::size_t dropped_users = 0;  // users too short for the protocol
};

/// Leave-one-out: valid target = second-last item (history = all before it), test target = last
/// (history = all before it), train = all but the last two. Users with fewer than 3 items are
/// dropped and counted. Cases and train sequences follow the user order.
inline Split split_loo(const Dataset& d) {
  Split s;
  s.has_test = true;
  for (std::size_t u = 0; u < d.sequences.size(); ++u) {
    const auto& seq = d.sequences[u];
    const std::size_t n = seq.size();
    if (n < 3) {
      ++s.dropped_users;
      continue;
    }
    s.train.emplace_back(seq.begin(), seq.end() - 2);
    s.valid.push_back(
        EvalCase{u, std::vector<std::int32_t>(seq.begin(), seq.end() - 2), seq[n - 2]});
    s.test.push_back(
        EvalCase{u, std::vector<std::int32_t>(seq.begin(), seq.end() - 1), seq[n - 1]});
  }
  return s;
}

/// Options of split_holdout.
struct HoldoutOptions {
  double holdout_share = 0.2;  // share of users held out, in [0, 1]
  std::uint64_t seed = 42;
  double test_share = 0.0;  // share of held-out cases moved from valid to test, in [0, 1]
};

namespace detail {
/// round(share * n) with share in [0, 1], computed without libm.
inline std::size_t share_count(double share, std::size_t n) {
  const double x = share * static_cast<double>(n) + 0.5;
  const auto k = static_cast<std::size_t>(x);
  return std::min(k, n);
}

inline void check_share(double v, const char* name) {
  if (!(v >= 0.0 && v <= 1.0)) {
    throw Error(std::string("HoldoutOptions::") + name + " must be in [0, 1], got " +
                std::to_string(v));
  }
}
}  // namespace detail

/// The study's protocol: a seeded split of users; round(holdout_share * users) of them are held
/// out. Each held-out user's last item is the target, the rest of their sequence (history) ALSO
/// joins train. valid = those cases. If test_share > 0, a second seeded split moves
/// round(test_share * cases) of them from valid to test (has_test = true). Held-out users with
/// fewer than 2 items are dropped and counted; all other users train. Train sequences and cases
/// follow the user order; the result depends only on (d, o).
inline Split split_holdout(const Dataset& d, const HoldoutOptions& o) {
  detail::check_share(o.holdout_share, "holdout_share");
  detail::check_share(o.test_share, "test_share");
  const std::size_t n_users = d.sequences.size();

  std::vector<std::size_t> order(n_users);
  for (std::size_t u = 0; u < n_users; ++u) order[u] = u;
  Rng users_rng(mix64(o.seed) ^ 0x686f6c646f7574ULL);  // "holdout"
  users_rng.shuffle(order);
  std::vector<char> held(n_users, 0);
  const std::size_t n_held = detail::share_count(o.holdout_share, n_users);
  for (std::size_t k = 0; k < n_held; ++k) held[order[k]] = 1;

  Split s;
  std::vector<EvalCase> cases;
  for (std::size_t u = 0; u < n_users; ++u) {
    const auto& seq = d.sequences[u];
    if (!held[u]) {
      if (!seq.empty()) s.train.push_back(seq);
      continue;
    }
    if (seq.size() < 2) {
      ++s.dropped_users;
      continue;
    }
    std::vector<std::int32_t> history(seq.begin(), seq.end() - 1);
    s.train.push_back(history);
    cases.push_back(EvalCase{u, std::move(history), seq.back()});
  }

  if (o.test_share > 0.0) {
    s.has_test = true;
    std::vector<std::size_t> pick(cases.size());
    for (std::size_t k = 0; k < pick.size(); ++k) pick[k] = k;
    Rng test_rng(mix64(o.seed) ^ 0x746573745f73706cULL);  // "test_spl"
    test_rng.shuffle(pick);
    std::vector<char> to_test(cases.size(), 0);
    const std::size_t n_test = detail::share_count(o.test_share, cases.size());
    for (std::size_t k = 0; k < n_test; ++k) to_test[pick[k]] = 1;
    for (std::size_t k = 0; k < cases.size(); ++k) {
      (to_test[k] ? s.test : s.valid).push_back(std::move(cases[k]));
    }
  } else {
    s.valid = std::move(cases);
  }
  return s;
}

}  // namespace seqrec::data
