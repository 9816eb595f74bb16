// Model<Config, Backend>: a decoder-only transformer over item tokens (SASRec family).
//
//   x0 = E[tokens] · sqrt(D) + positions            (B, L, D)   dropout
//   for each block:  x += dropout(Wo · attn(norm1(x)))            causal, padding-masked
//                    x += dropout(ffn(norm2(x)))
//   h  = norm_f(x)                                    (B, L, D)
//   logits = h · E[items]ᵀ                            (B, L, I)   tied; never materialised whole
//
// forward_backward() runs one training step's forward and backward in order (read it top to
// bottom, llm.c style), adding gradients into the parameter store. The CPU backend is
// implemented here; the CUDA backend provides the same member functions over device buffers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "seqrec/backend/cpu.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/model/config.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/ops/attention/attention_cpu.hpp"
#include "seqrec/ops/cross_entropy/cross_entropy_cpu.hpp"
#include "seqrec/ops/dropout/dropout_cpu.hpp"
#include "seqrec/ops/embedding/embedding_cpu.hpp"
#include "seqrec/ops/linear/linear_cpu.hpp"

namespace seqrec {

/// Token ids of the special tokens (see data/vocabulary.hpp for what each is for).
inline constexpr std::int32_t kPadToken = 0;
inline constexpr std::int32_t kNumSpecialTokens = 4;

namespace detail {

/// The chunked loss's shape: at most loss_chunk_elems logits alive at once.
inline ops::CrossEntropyShape loss_shape(const ModelShape& s, std::int64_t rows) {
  const std::int64_t items = s.vocab_size - kNumSpecialTokens;
  return {rows, s.dim, items, kNumSpecialTokens,
          std::max<std::int64_t>(1, s.loss_chunk_elems / items)};
}

/// Rejects a window longer than max_len (unless the positions extrapolate) and any token outside
/// the vocabulary, naming its row, position and value. Shared by every backend's model.
inline void check_model_input(const ModelShape& s, bool extrapolates, const std::int32_t* tokens,
                              std::int32_t batch, std::int32_t len) {
  if (len > s.max_len && !extrapolates)
    throw InputError("model input", 0,
                     "sequence window longer than --max-len " + std::to_string(s.max_len) +
                         " (only extrapolating position encodings such as RoPE allow that)",
                     std::to_string(len));
  for (std::int64_t i = 0; i < std::int64_t{batch} * len; ++i) {
    if (tokens[i] < 0 || tokens[i] >= s.vocab_size)
      throw InputError("model input", 0,
                       "token at row " + std::to_string(i / len) + ", position " +
                           std::to_string(i % len) + " is outside the vocabulary [0, " +
                           std::to_string(s.vocab_size) + ")",
                       std::to_string(tokens[i]));
  }
}

/// Validates the selection of selected_log_probs() and lays it out: targets (n) holds each
/// selected position's first token and kPadToken elsewhere (so that a packed forward computes
/// exactly the rows it needs), cols (count, per_row) the item columns of the tokens.
inline void prepare_selection(const ModelShape& s, std::int64_t n, const std::int64_t* rows,
                              std::int64_t count, const std::int32_t* tokens, std::int32_t per_row,
                              std::vector<std::int32_t>& targets, std::vector<std::int32_t>& cols) {
  SEQREC_CHECK(per_row >= 1, "selected_log_probs: need at least one token per row, got " +
                                 std::to_string(per_row));
  targets.assign(static_cast<std::size_t>(n), kPadToken);
  cols.resize(static_cast<std::size_t>(count * per_row));
  for (std::int64_t p = 0; p < count; ++p) {
    SEQREC_CHECK(rows[p] >= 0 && rows[p] < n && (p == 0 || rows[p] > rows[p - 1]),
                 "selected_log_probs: selected positions must increase within [0, " +
                     std::to_string(n) + "); entry " + std::to_string(p) + " is " +
                     std::to_string(rows[p]));
    for (std::int64_t j = 0; j < per_row; ++j) {
      const std::int32_t t = tokens[p * per_row + j];
      SEQREC_CHECK(t >= kNumSpecialTokens && t < s.vocab_size,
                   "selected_log_probs: token " + std::to_string(t) + " (entry " +
                       std::to_string(p) + ", column " + std::to_string(j) +
                       ") is not an item token");
      cols[static_cast<std::size_t>(p * per_row + j)] = t - kNumSpecialTokens;
    }
    targets[static_cast<std::size_t>(rows[p])] = tokens[p * per_row];
  }
}

/// For each selected position rows[p], its index among the rows a forward computed: `computed`
/// (m, increasing) when packed, null when every row was computed in order.
inline void computed_index(const std::int64_t* rows, std::int64_t count,
                           const std::int32_t* computed, std::int64_t m,
                           std::vector<std::int32_t>& out) {
  out.resize(static_cast<std::size_t>(count));
  std::int64_t k = 0;
  for (std::int64_t p = 0; p < count; ++p) {
    if (computed == nullptr) {
      out[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(rows[p]);
      continue;
    }
    while (k < m && computed[k] < rows[p]) ++k;
    SEQREC_CHECK(k < m && computed[k] == rows[p], "selected position " + std::to_string(rows[p]) +
                                                      " was not computed by the forward");
    out[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(k);
  }
}

/// The selected head's chunking: the loss's limit on logits alive at once.
inline ops::SelectedShape selected_shape(const ModelShape& s, std::int64_t rows,
                                         std::int32_t per_row) {
  const auto ce = loss_shape(s, rows);
  return {rows, s.dim, ce.num_items, per_row, ce.chunk_rows};
}

}  // namespace detail

template <typename Cfg, typename Backend>
class Model {
 public:
  using T = typename Backend::Scalar;
  using Position = typename Cfg::Position::template Layer<T>;
  using Norm = typename Cfg::Normalization::template Layer<T>;
  using Ffn = typename Cfg::FeedForward::template Layer<T>;
  using Config = Cfg;

  /// Builds the parameters and initialises them from `seed` (normal(init_std) for matrices and
  /// embeddings, residual-branch outputs scaled by 1/sqrt(2·layers), gains 1, biases 0).
  Model(const ModelShape& shape, Backend& backend, std::uint64_t seed)
      : shape_((shape.validate(), shape)),
        backend_(&backend),
        item_emb_(store_.add("item_emb.weight", {shape.vocab_size, shape.dim}, true, Init::Normal,
                             shape.init_std)),
        pos_(store_, shape_) {
    const double out_std = shape.init_std / std::sqrt(2.0 * std::max(1, shape.layers));
    for (std::int32_t l = 0; l < shape.layers; ++l) {
      const std::string p = "blocks." + std::to_string(l);
      const std::int64_t D = shape.dim;
      blocks_.push_back(Block{
          Norm(store_, p + ".norm1", D, shape.norm_eps),
          store_.add(p + ".attn.qkv.weight", {3 * D, D}, true, Init::Normal, shape.init_std),
          store_.add(p + ".attn.qkv.bias", {3 * D}, false, Init::Zeros),
          store_.add(p + ".attn.out.weight", {D, D}, true, Init::Normal, out_std),
          store_.add(p + ".attn.out.bias", {D}, false, Init::Zeros),
          Norm(store_, p + ".norm2", D, shape.norm_eps), Ffn(store_, p + ".ffn", shape, out_std)});
    }
    final_norm_.emplace_back(store_, "norm_f", shape.dim, shape.norm_eps);
    initialise(seed);
  }

  static std::string describe() { return Cfg::describe(); }
  const ModelShape& shape() const noexcept { return shape_; }
  ParameterStore<T>& parameters() noexcept { return store_; }
  const ParameterStore<T>& parameters() const noexcept { return store_; }
  std::int32_t num_items() const noexcept { return shape_.vocab_size - kNumSpecialTokens; }
  ParamId item_embedding() const noexcept { return item_emb_; }

  /// Re-draws every parameter from `seed` (used by the constructor).
  void initialise(std::uint64_t seed) { store_.initialise(seed); }

  /// One training step's forward and backward on inputs/targets (B, L), left-padded. Gradients
  /// are added into the store (the caller zeroes them). dropout_key == 0 disables dropout.
  /// Returns the mean cross-entropy over non-padding targets; *num_targets receives their count.
  double forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                          std::int32_t batch, std::int32_t len, std::uint64_t dropout_key,
                          std::int64_t* num_targets) {
    forward(inputs, batch, len, dropout_key, targets);
    const std::int64_t N = std::int64_t{batch} * len, D = shape_.dim, M = rows_n_;
    std::int64_t count = 0;
    // First pass only counts targets to scale the gradient as a mean.
    for (std::int64_t r = 0; r < N; ++r) count += targets[r] >= kNumSpecialTokens;
    if (num_targets) *num_targets = count;
    if (count == 0) return 0.0;
    dx_.resize(static_cast<std::size_t>(M * D));
    dh_.resize(dx_.size());
    std::int64_t seen = 0;
    const double loss = ops::cross_entropy_forward_backward<T>(
        ce_shape(M), h_.data(), row_targets(targets),
        store_.value(item_emb_) + kNumSpecialTokens * D, dh_.data(),
        // A frozen table's gradient would be discarded: skip its (I, D) GEMM.
        store_.entry(item_emb_).frozen ? nullptr : store_.grad(item_emb_) + kNumSpecialTokens * D,
        T(1.0 / double(count)), &seen, ce_workspace_);
    backward(batch, len);
    return loss / double(count) + aux_loss();
  }

  /// Forward only: the mean loss the same step would report (used by gradient checks).
  double loss(const std::int32_t* inputs, const std::int32_t* targets, std::int32_t batch,
              std::int32_t len, std::uint64_t dropout_key) {
    forward(inputs, batch, len, dropout_key, targets);
    std::int64_t count = 0;
    const double loss = ops::cross_entropy_forward_backward<T>(
        ce_shape(rows_n_), h_.data(), row_targets(targets),
        store_.value(item_emb_) + kNumSpecialTokens * shape_.dim, nullptr, nullptr, T(1), &count,
        ce_workspace_);
    return (count ? loss / double(count) : 0.0) + aux_loss();
  }

  /// Custom heads (DPO): runs the forward pass and returns the final hidden states (B·L, D)
  /// after the last norm, valid until the next call. Pair with backward_hidden().
  const T* forward_hidden(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                          std::uint64_t dropout_key) {
    forward(inputs, batch, len, dropout_key);
    return h_.data();
  }

  /// Backward of the last forward_hidden() from dL/dh (B·L, D); gradients are added into the
  /// store (the MoE auxiliary losses' included, as in forward_backward).
  void backward_hidden(const T* dh, std::int32_t batch, std::int32_t len) {
    const std::size_t n = static_cast<std::size_t>(std::int64_t{batch} * len * shape_.dim);
    SEQREC_CHECK(!packed_ && n == h_.size(),
                 "backward_hidden: shape differs from the last forward");
    dx_.resize(n);
    dh_.assign(dh, dh + n);
    backward(batch, len);
  }

  /// DPO's head: the forward pass over inputs (B, L) (dropout_key 0: none), computing the rows
  /// it needs, then the log-softmax over all items of `per_row` item tokens (count, per_row) at
  /// each of `count` positions rows (increasing indices into the B·L positions), written to logp
  /// (count, per_row). Pair with selected_backward().
  void selected_log_probs(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                          std::uint64_t dropout_key, const std::int64_t* rows, std::int64_t count,
                          const std::int32_t* tokens, std::int32_t per_row, double* logp) {
    const std::int64_t D = shape_.dim;
    detail::prepare_selection(shape_, std::int64_t{batch} * len, rows, count, tokens, per_row,
                              sel_targets_, sel_cols_);
    forward(inputs, batch, len, dropout_key, sel_targets_.data());
    detail::computed_index(rows, count, packed_ ? rows_.data() : nullptr, rows_n_, sel_rows_);
    sel_h_.resize(static_cast<std::size_t>(count * D));
    for (std::int64_t p = 0; p < count; ++p)
      std::copy_n(h_.data() + std::int64_t{sel_rows_[p]} * D, D, sel_h_.data() + p * D);
    sel_lse_.resize(static_cast<std::size_t>(count));
    ops::selected_log_softmax<T>(detail::selected_shape(shape_, count, per_row), sel_h_.data(),
                                 sel_cols_.data(), store_.value(item_emb_) + kNumSpecialTokens * D,
                                 logp, sel_lse_.data(), ce_workspace_);
    sel_ = {batch, len, per_row};
  }

  /// Backward of the last selected_log_probs() from g (count, per_row) = d loss / d logp, times
  /// scale: gradients are added into the store (the table's unless frozen; the MoE auxiliary
  /// losses' included, as in forward_backward).
  void selected_backward(const double* g, double scale) {
    SEQREC_CHECK(sel_.batch > 0, "selected_backward: no selected_log_probs() before it");
    const std::int64_t D = shape_.dim, M = rows_n_;
    const std::int64_t count = static_cast<std::int64_t>(sel_rows_.size());
    sel_dh_.resize(static_cast<std::size_t>(count * D));
    ops::selected_log_softmax_backward<T>(
        detail::selected_shape(shape_, count, sel_.per_row), sel_h_.data(), sel_cols_.data(),
        store_.value(item_emb_) + kNumSpecialTokens * D, sel_lse_.data(), g, scale, sel_dh_.data(),
        store_.entry(item_emb_).frozen ? nullptr : store_.grad(item_emb_) + kNumSpecialTokens * D,
        ce_workspace_);
    dx_.resize(static_cast<std::size_t>(M * D));
    dh_.assign(static_cast<std::size_t>(M * D), T(0));
    for (std::int64_t p = 0; p < count; ++p)
      std::copy_n(sel_dh_.data() + p * D, D, dh_.data() + std::int64_t{sel_rows_[p]} * D);
    const auto s = sel_;
    sel_ = {};
    backward(s.batch, s.len);
  }

  /// Sum of the feed-forward blocks' auxiliary losses in the last forward (MoE; 0 otherwise).
  double aux_loss() const {
    double a = 0;
    for (std::size_t l = 0; l < blocks_.size(); ++l) a += blocks_[l].ffn.aux_loss(caches_[l].ffn);
    return a;
  }

  /// Per block, the share of routed tokens each expert received since the last call (MoE
  /// variants only; empty otherwise).
  std::vector<std::vector<double>> take_expert_shares() const {
    std::vector<std::vector<double>> out;
    if constexpr (requires(const Ffn& f) { f.take_expert_shares(); })
      for (const auto& b : blocks_) out.push_back(b.ffn.take_expert_shares());
    return out;
  }

  /// Inference: scores (B, I) of every item for the position after the last token of each row.
  void score_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, T* scores) {
    forward(inputs, batch, len, 0);
    const std::int64_t D = shape_.dim;
    last_.resize(static_cast<std::size_t>(batch * D));
    for (std::int64_t b = 0; b < batch; ++b)
      std::copy_n(h_.data() + (b * len + len - 1) * D, D, last_.data() + b * D);
    CMapRM<T> H(last_.data(), batch, D);
    CMapRM<T> W(store_.value(item_emb_) + kNumSpecialTokens * D, num_items(), D);
    assign_product(MapRM<T>(scores, batch, num_items()), H, W.transpose());
  }

 private:
  struct Block {
    Norm norm1;
    ParamId qkv_w, qkv_b, out_w, out_b;
    Norm norm2;
    Ffn ffn;
  };
  /// Saved activations of one block, (B·L, ·) each.
  struct BlockCache {
    AlignedVector<T> x_in, a1, stats1, qkv, probs, ctx, x_mid, a2, stats2;
    std::vector<std::uint8_t> drop_attn, drop_ffn;
    typename Ffn::Cache ffn;
  };

  ops::CrossEntropyShape ce_shape(std::int64_t rows) const {
    return detail::loss_shape(shape_, rows);
  }
  void check_tokens(const std::int32_t* tokens, std::int32_t batch, std::int32_t len) const {
    detail::check_model_input(shape_, Cfg::Position::extrapolates, tokens, batch, len);
  }

  /// Chooses the rows a step computes. With targets (training, loss): packed — only the rows
  /// whose input is not padding or whose target is scored. A padding row's hidden state reaches
  /// nothing (its key is masked, its target unscored, its gradient zero), so skipping it leaves
  /// every result as the full computation's up to summation order, while the row-wise layers
  /// (norms, linears, FFN, loss) do the work of the real rows only — about half of B·L on Games
  /// at L = 20. Without targets (scoring, custom heads): all rows, in order.
  void choose_rows(const std::int32_t* tokens, const std::int32_t* targets, std::int64_t n) {
    packed_ = false;
    rows_n_ = n;
    if (targets == nullptr) return;
    rows_.clear();
    for (std::int64_t r = 0; r < n; ++r)
      if (tokens[r] != kPadToken || targets[r] >= kNumSpecialTokens)
        rows_.push_back(static_cast<std::int32_t>(r));
    if (static_cast<std::int64_t>(rows_.size()) == n) return;
    packed_ = true;
    rows_n_ = static_cast<std::int64_t>(rows_.size());
  }
  /// The targets of the computed rows.
  const std::int32_t* row_targets(const std::int32_t* targets) {
    if (!packed_) return targets;
    row_targets_.resize(rows_.size());
    for (std::size_t i = 0; i < rows_.size(); ++i) row_targets_[i] = targets[rows_[i]];
    return row_targets_.data();
  }
  /// dst (m, w) = src rows rows_[0..m).
  void gather(const T* src, T* dst, std::int64_t w) const {
    const std::int64_t m = rows_n_;
#pragma omp parallel for schedule(static) if (m * w > 65536)
    for (std::int64_t i = 0; i < m; ++i) std::copy_n(src + rows_[i] * w, w, dst + i * w);
  }
  /// dst (n, w) = 0 except rows rows_[i] = src row i.
  void scatter(const T* src, T* dst, std::int64_t n, std::int64_t w) const {
    std::fill(dst, dst + n * w, T(0));
    const std::int64_t m = rows_n_;
#pragma omp parallel for schedule(static) if (m * w > 65536)
    for (std::int64_t i = 0; i < m; ++i) std::copy_n(src + i * w, w, dst + rows_[i] * w);
  }

  void forward(const std::int32_t* tokens, std::int32_t batch, std::int32_t len,
               std::uint64_t dropout_key, const std::int32_t* targets = nullptr) {
    check_tokens(tokens, batch, len);
    const std::int64_t B = batch, L = len, N = B * L, D = shape_.dim;
    const double p = dropout_key ? shape_.dropout : 0.0;
    sel_ = {};  // a selected_backward() must follow its own forward
    tokens_.assign(tokens, tokens + N);
    choose_rows(tokens, targets, N);
    const std::int64_t M = rows_n_;
    const std::int32_t* rmap = packed_ ? rows_.data() : nullptr;
    valid_.resize(static_cast<std::size_t>(M));
    for (std::int64_t i = 0; i < M; ++i) valid_[i] = tokens[packed_ ? rows_[i] : i] != kPadToken;
    // Embeddings, positions and their dropout on the full (B, L) layout, then the computed rows.
    x_.resize(static_cast<std::size_t>(M * D));
    if (packed_) full_.resize(static_cast<std::size_t>(N * D));
    T* x0 = packed_ ? full_.data() : x_.data();
    drop_emb_.resize(static_cast<std::size_t>(N * D));
    const T scale = shape_.scale_embeddings ? std::sqrt(T(D)) : T(1);
    ops::embedding_forward(tokens, store_.value(item_emb_), x0, N, D, scale);
    pos_.add(store_, x0, B, L);
    ops::dropout_forward(x0, drop_emb_.data(), N * D, p, mix64(dropout_key ^ 1));
    if (packed_) gather(x0, x_.data(), D);
    caches_.resize(blocks_.size());
    const ops::AttentionShape as{B, L, D, shape_.heads};
    tmp_.resize(x_.size());
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const Block& blk = blocks_[l];
      BlockCache& c = caches_[l];
      const std::uint64_t key = mix64(dropout_key ^ (l * 16 + 2));
      c.x_in = x_;
      c.a1.resize(x_.size());
      c.stats1.resize(static_cast<std::size_t>(M * Cfg::Normalization::stats_per_row));
      blk.norm1.forward(store_, x_.data(), c.a1.data(), c.stats1.data(), M);
      // qkv of the computed rows, then the full (B, L) layout for positions and attention:
      // skipped rows are zero, and their keys are masked as padding.
      c.qkv.resize(static_cast<std::size_t>(N * 3 * D));
      T* qkv_rows = packed_
                        ? (qkv_rows_.resize(static_cast<std::size_t>(M * 3 * D)), qkv_rows_.data())
                        : c.qkv.data();
      ops::linear_forward(c.a1.data(), store_.value(blk.qkv_w), store_.value(blk.qkv_b), qkv_rows,
                          M, D, 3 * D);
      if (packed_) scatter(qkv_rows, c.qkv.data(), N, 3 * D);
      pos_.rotate_qk(c.qkv.data(), B, L);
      c.probs.resize(static_cast<std::size_t>(B * shape_.heads * L * L));
      c.ctx.resize(x_.size());
      T* ctx_full = packed_ ? full_.data() : c.ctx.data();
      ops::attention_forward(as, c.qkv.data(), tokens_.data(), kPadToken, ctx_full, c.probs.data());
      if (packed_) gather(ctx_full, c.ctx.data(), D);
      ops::linear_forward(c.ctx.data(), store_.value(blk.out_w), store_.value(blk.out_b),
                          tmp_.data(), M, D, D);
      c.drop_attn.resize(x_.size());
      ops::dropout_forward(tmp_.data(), c.drop_attn.data(), M * D, p, key, rmap, D);
      add_into(x_.data(), tmp_.data(), M * D);
      c.x_mid = x_;
      c.a2.resize(x_.size());
      c.stats2.resize(c.stats1.size());
      blk.norm2.forward(store_, x_.data(), c.a2.data(), c.stats2.data(), M);
      blk.ffn.forward(store_, c.a2.data(), tmp_.data(), c.ffn, M, valid_.data());
      c.drop_ffn.resize(x_.size());
      ops::dropout_forward(tmp_.data(), c.drop_ffn.data(), M * D, p, mix64(key ^ 0x5bd1e995), rmap,
                           D);
      add_into(x_.data(), tmp_.data(), M * D);
    }
    h_.resize(x_.size());
    stats_f_.resize(static_cast<std::size_t>(M * Cfg::Normalization::stats_per_row));
    final_norm_[0].forward(store_, x_.data(), h_.data(), stats_f_.data(), M);
    last_p_ = p;
  }

  /// Reverse of forward(): starts from dh_ (gradient of the loss wrt h), ends in the embeddings.
  void backward(std::int32_t batch, std::int32_t len) {
    const std::int64_t B = batch, L = len, N = B * L, D = shape_.dim, M = rows_n_;
    const double p = last_p_;
    final_norm_[0].backward(store_, x_.data(), stats_f_.data(), dh_.data(), dx_.data(), M);
    const ops::AttentionShape as{B, L, D, shape_.heads};
    tmp_.resize(x_.size());
    AlignedVector<T>& dbranch = dh_;  // dh_ is free again: reuse it for branch gradients
    for (std::size_t li = blocks_.size(); li-- > 0;) {
      const Block& blk = blocks_[li];
      BlockCache& c = caches_[li];
      // x_out = x_mid + drop(ffn(norm2(x_mid)))
      dbranch = dx_;
      ops::dropout_backward(dbranch.data(), c.drop_ffn.data(), M * D, p);
      blk.ffn.backward(store_, c.a2.data(), c.ffn, dbranch.data(), tmp_.data(), M);
      blk.norm2.backward(store_, c.x_mid.data(), c.stats2.data(), tmp_.data(), dbranch.data(), M);
      add_into(dx_.data(), dbranch.data(), M * D);  // dx_ is now d x_mid
      // x_mid = x_in + drop(Wo · attn(Wqkv · norm1(x_in)))
      dbranch = dx_;
      ops::dropout_backward(dbranch.data(), c.drop_attn.data(), M * D, p);
      ops::linear_backward(c.ctx.data(), store_.value(blk.out_w), dbranch.data(), tmp_.data(),
                           store_.grad(blk.out_w), store_.grad(blk.out_b), M, D, D);
      // Attention on the full layout: skipped rows carry a zero gradient.
      const T* dctx = tmp_.data();
      if (packed_) {
        scatter(tmp_.data(), full_.data(), N, D);
        dctx = full_.data();
      }
      dqkv_.resize(static_cast<std::size_t>(N * 3 * D));
      ops::attention_backward(as, c.qkv.data(), tokens_.data(), kPadToken, c.probs.data(), dctx,
                              dqkv_.data());
      pos_.rotate_qk_backward(dqkv_.data(), B, L);
      const T* dqkv_rows = dqkv_.data();
      if (packed_) {
        qkv_rows_.resize(static_cast<std::size_t>(M * 3 * D));
        gather(dqkv_.data(), qkv_rows_.data(), 3 * D);
        dqkv_rows = qkv_rows_.data();
      }
      ops::linear_backward(c.a1.data(), store_.value(blk.qkv_w), dqkv_rows, tmp_.data(),
                           store_.grad(blk.qkv_w), store_.grad(blk.qkv_b), M, D, 3 * D);
      blk.norm1.backward(store_, c.x_in.data(), c.stats1.data(), tmp_.data(), dbranch.data(), M);
      add_into(dx_.data(), dbranch.data(), M * D);  // dx_ is now d x_in
    }
    // Back to the full layout for the embedding dropout, positions and the table.
    T* dx = dx_.data();
    if (packed_) {
      scatter(dx_.data(), full_.data(), N, D);
      dx = full_.data();
    }
    ops::dropout_backward(dx, drop_emb_.data(), N * D, p);
    pos_.add_backward(store_, dx, B, L);
    const T scale = shape_.scale_embeddings ? std::sqrt(T(D)) : T(1);
    if (!store_.entry(item_emb_).frozen)
      ops::embedding_backward(tokens_.data(), dx, store_.grad(item_emb_), N, D, scale);
  }

  static void add_into(T* y, const T* x, std::int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  ModelShape shape_;
  Backend* backend_;
  ParameterStore<T> store_;
  ParamId item_emb_;
  Position pos_;
  std::vector<Block> blocks_;
  std::vector<Norm>
      final_norm_;  // one element; a vector so that Norm need not be default-constructible
  // Activations of the last forward, reused across steps (no allocation in steady state).
  std::vector<std::int32_t> tokens_;
  AlignedVector<T> x_, h_, stats_f_, tmp_, dx_, dh_, dqkv_, last_, ce_workspace_;
  // Packed rows (training): which rows a step computes, their targets, the full (B·L, D) scratch
  // (embeddings, attention context and its gradient) and packed qkv / d qkv (M, 3D).
  bool packed_ = false;
  std::int64_t rows_n_ = 0;
  std::vector<std::int32_t> rows_, row_targets_;
  AlignedVector<T> full_, qkv_rows_;
  std::vector<std::uint8_t> drop_emb_, valid_;
  std::vector<BlockCache> caches_;
  double last_p_ = 0.0;
  // The last selected_log_probs(): its shape (batch 0: none pending), targets, item columns,
  // computed-row index of each selected position, their hidden states, logsumexps and gradients.
  struct Selection {
    std::int32_t batch = 0, len = 0, per_row = 0;
  } sel_;
  std::vector<std::int32_t> sel_targets_, sel_cols_, sel_rows_;
  AlignedVector<T> sel_h_, sel_dh_;
  std::vector<double> sel_lse_;
};

}  // namespace seqrec
