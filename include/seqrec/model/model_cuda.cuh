// Model<Config, cuda::Backend>: the model of model/model.hpp on one GPU (fp32, or bf16 GEMM
// operands with fp32 accumulation in the backend's bf16 mode).
//
// Same parameters, same names, same order, same initialisation: they are registered into a host
// ParameterStore<float> by the very calls of the CPU model (the policies' own Layer constructors
// for norms, positions and the feed-forward block), drawn on the host from the seed exactly as the
// CPU model draws them, then uploaded. parameters(), checkpoints and the pretrained-init loader
// therefore work on the host store unchanged. The device keeps four flat arrays — values,
// gradients and both AdamW moments — with the host store's offsets; the host copy is NOT kept in
// sync during training:
//   upload()          host values + moments → device (after loading a checkpoint or init)
//   download()        device values + moments → host (before checkpointing / host-side eval)
//   download_grads()  device gradients → host (tests)
//   zero_grads()      device gradients = 0 (forward_backward accumulates, as on the CPU); the
//                     linear weights' and the table's item rows' zeros are left to their dW
//                     GEMMs (set_lazy_zero_grads)
//   optimizer_step()  clipping + AdamW on the device, honouring the host store's frozen flags
//   join_group()      joins a group of GPUs, one model per process (dist/nccl.hpp); then
//   allreduce_grads() sums the weighted gradients of the group's models in place, over NCCL
//
// forward_backward / loss / score_last take HOST token arrays (score_last writes HOST scores), so
// the trainer and the evaluator call this model exactly like the CPU one; rank_last and
// top_k_last rank and select on the device (eval::rank_cases, eval::recommend), and
// selected_log_probs / selected_backward run DPO's head on the device. Training steps
// (forward_backward, loss) compute only the non-padding rows, as the CPU model does (choose_rows) —
// attention and RoPE included: attention reads each sequence's packed rows through segment offsets,
// so no (B·L)-row tensor exists in a training step (but the embeddings', with learned positions).
// RoPE has no kernel of its own: attention rotates Q and K as it loads them and rotates dQ and dK
// back as it stores them (the same floats as the separate op), so the cached qkv stays unrotated.
// The step mirrors the CPU model op for op (read model.hpp's forward() and backward() beside this
// file), with the same dropout sites and keys: embeddings mix64(key ^ 1), attention output
// mix64(key ^ (l·16 + 2)), FFN output mix64(that ^ 0x5bd1e995). Dropout masks are recomputed from
// the counter hash in the backward instead of being stored; they are bit-identical to the CPU's.
//
// Supported policies in this version: positions Learned, RoPE, None; norm RMSNorm, LayerNorm;
// FFN Mlp<Relu>, Mlp<Silu>, GatedMlp (SwiGLU), MoE<E, K, Mlp<Silu>> (through cuda::MoeLayer, one
// per block). Any other policy stops compilation with a static_assert naming the family. The policy
// is chosen at compile time (if constexpr on the traits below): no run-time dispatch.
//   LayerNorm  params "<prefix>.weight" and "<prefix>.bias"; stats (N, 2) = (mean, rstd) per row
//              (RMSNorm: (N, 1) = rstd), sized from the policy's stats_per_row.
//   GatedMlp   y = Wd · (silu(Wg x) ⊙ Wu x), no biases, inner width F' = gated_inner_width(D, F),
//              the CPU layer's three separate GEMMs forward (gate, up, down) and six backward;
//              caches gate, up and act = silu(gate) ⊙ up (N, F') per block.
// Linear layers are cuBLASLt GEMMs (gemm_rm): fp32 without TF32 by default, bf16 operands with
// fp32 accumulation when the backend is in bf16 mode (weights marked WeightOperand::B are rounded
// once per optimiser step), biases in the GEMM's epilogue where aligned; every other reduction
// has a fixed order, so a step repeats bit for bit in either mode. In bf16 mode with bf16 GEMM
// outputs (the backend's default) the qkv GEMM, the MLP's fc1 GEMM, the out linear and fc2 (the
// branches, which the fused residual-add-and-norm kernels read) and the d(act) and d(ctx) GEMMs
// write their results in bf16 (gemm_rm_bf16_out), since only widening kernels read them, and
// attention writes d(qkv) in bf16 (the qkv linear's GEMM operand; its bias gradient sums the
// bf16 values).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"
#include "seqrec/dist/nccl.hpp"
#include "seqrec/model/model.hpp"
#include "seqrec/ops/activation/swiglu_cuda.cuh"
#include "seqrec/ops/attention/attention_cuda.cuh"
#include "seqrec/ops/cross_entropy/cross_entropy_cuda.cuh"
#include "seqrec/ops/dropout/dropout_cuda.cuh"
#include "seqrec/ops/dropout/residual_norm_cuda.cuh"
#include "seqrec/ops/elementwise/elementwise_cuda.cuh"
#include "seqrec/ops/elementwise/rows_cuda.cuh"
#include "seqrec/ops/embedding/embedding_cuda.cuh"
#include "seqrec/ops/layernorm/layernorm_cuda.cuh"
#include "seqrec/ops/moe/moe_cuda.cuh"
#include "seqrec/ops/rmsnorm/rmsnorm_cuda.cuh"
#include "seqrec/ops/rope/rope_cuda.cuh"
#include "seqrec/ops/topk/topk_cuda.cuh"
#include "seqrec/train/adamw.hpp"
#include "seqrec/train/adamw_cuda.cuh"

namespace seqrec {

namespace detail {
/// Which policies the CUDA model implements (see the static_asserts in the class).
enum class CudaPos { Unsupported, Learned, RoPE, None };
template <typename P>
inline constexpr CudaPos kCudaPos = CudaPos::Unsupported;
template <>
inline constexpr CudaPos kCudaPos<policy::pos::Learned> = CudaPos::Learned;
template <>
inline constexpr CudaPos kCudaPos<policy::pos::RoPE> = CudaPos::RoPE;
template <>
inline constexpr CudaPos kCudaPos<policy::pos::None> = CudaPos::None;

enum class CudaNorm { Unsupported, RMSNorm, LayerNorm };
template <typename P>
inline constexpr CudaNorm kCudaNorm = CudaNorm::Unsupported;
template <>
inline constexpr CudaNorm kCudaNorm<policy::norm::RMSNorm> = CudaNorm::RMSNorm;
template <>
inline constexpr CudaNorm kCudaNorm<policy::norm::LayerNorm> = CudaNorm::LayerNorm;

/// Feed-forward family: Mlp (fc1, act, fc2, with biases; `act` says which activation), Gated
/// (GatedMlp: gate, up, down, no biases; `act` unused) or Moe (MoE of SiLU MLP experts, run by
/// cuda::MoeLayer; `Layer` is its type).
enum class CudaFfnKind { Unsupported, Mlp, Gated, Moe };
template <typename P>
struct CudaFfn {
  static constexpr bool supported = false;
  static constexpr CudaFfnKind kind = CudaFfnKind::Unsupported;
  static constexpr cuda::Activation act = cuda::Activation::Relu;
};
template <int E, int K>
struct CudaFfn<policy::ffn::MoE<E, K, policy::ffn::Mlp<ops::Silu>>> {
  static constexpr bool supported = true;
  static constexpr CudaFfnKind kind = CudaFfnKind::Moe;
  static constexpr cuda::Activation act = cuda::Activation::Silu;
};

/// The device layer of an MoE block (cuda::MoeLayer), or an inert stand-in for the other
/// feed-forward policies (the model then holds none).
struct NoMoeLayer {
  double aux_loss() const { return 0.0; }
  std::vector<double> take_expert_shares() { return {}; }
};
template <typename P>
struct CudaMoeLayerOf {
  using type = NoMoeLayer;
};
template <int E, int K>
struct CudaMoeLayerOf<policy::ffn::MoE<E, K, policy::ffn::Mlp<ops::Silu>>> {
  using type = cuda::MoeLayer<E, K>;
};
template <>
struct CudaFfn<policy::ffn::Mlp<ops::Relu>> {
  static constexpr bool supported = true;
  static constexpr CudaFfnKind kind = CudaFfnKind::Mlp;
  static constexpr cuda::Activation act = cuda::Activation::Relu;
};
template <>
struct CudaFfn<policy::ffn::Mlp<ops::Silu>> {
  static constexpr bool supported = true;
  static constexpr CudaFfnKind kind = CudaFfnKind::Mlp;
  static constexpr cuda::Activation act = cuda::Activation::Silu;
};
template <>
struct CudaFfn<policy::ffn::GatedMlp> {
  static constexpr bool supported = true;
  static constexpr CudaFfnKind kind = CudaFfnKind::Gated;
  static constexpr cuda::Activation act = cuda::Activation::Silu;  // unused: SwiGLU kernels
};
}  // namespace detail

template <typename Cfg>
class Model<Cfg, cuda::Backend> {
  static_assert(detail::kCudaPos<typename Cfg::Position> != detail::CudaPos::Unsupported,
                "Model<Cfg, cuda::Backend>: unsupported position policy; the CUDA backend "
                "implements pos::Learned, pos::RoPE and pos::None");
  static_assert(detail::kCudaNorm<typename Cfg::Normalization> != detail::CudaNorm::Unsupported,
                "Model<Cfg, cuda::Backend>: unsupported normalisation policy; the CUDA backend "
                "implements norm::RMSNorm and norm::LayerNorm");
  static_assert(detail::CudaFfn<typename Cfg::FeedForward>::supported,
                "Model<Cfg, cuda::Backend>: unsupported feed-forward policy; the CUDA backend "
                "implements ffn::ReluMlp, ffn::SiluMlp, ffn::GatedMlp and ffn::MoE of SiLU MLP "
                "experts");
  // The stats buffers are sized from the policy; the kernels write 1 (RMSNorm: rstd) or 2
  // (LayerNorm: mean, rstd) floats per row.
  static_assert(Cfg::Normalization::stats_per_row ==
                    (detail::kCudaNorm<typename Cfg::Normalization> == detail::CudaNorm::LayerNorm
                         ? 2
                         : 1),
                "Model<Cfg, cuda::Backend>: norm policy's stats_per_row does not match its kernel");

 public:
  using T = float;
  using Config = Cfg;
  // Host policy layers: used only to register the parameters exactly as the CPU model does.
  using Position = typename Cfg::Position::template Layer<T>;
  using Norm = typename Cfg::Normalization::template Layer<T>;
  using Ffn = typename Cfg::FeedForward::template Layer<T>;

  /// Registers and initialises the parameters as Model<Cfg, cpu::Backend>(shape, ·, seed) does,
  /// then uploads them (moments zero) to the device.
  Model(const ModelShape& shape, cuda::Backend& backend, std::uint64_t seed)
      : shape_((shape.validate(), shape)),
        be_(&backend),
        ffn_inner_(kFfn == detail::CudaFfnKind::Gated
                       ? policy::ffn::gated_inner_width(shape_.dim, shape_.ffn_dim)
                       : shape_.ffn_dim) {
    const std::int64_t D = shape_.dim;
    item_emb_ =
        store_.add("item_emb.weight", {shape_.vocab_size, D}, true, Init::Normal, shape_.init_std);
    { const Position registers(store_, shape_); }
    if constexpr (kPos == detail::CudaPos::Learned) pos_emb_ = store_.find("pos_emb.weight");
    const double out_std = shape_.init_std / std::sqrt(2.0 * std::max(1, shape_.layers));
    for (std::int32_t l = 0; l < shape_.layers; ++l) {
      const std::string p = "blocks." + std::to_string(l);
      Block b;
      { const Norm registers(store_, p + ".norm1", D, shape_.norm_eps); }
      b.qkv_w = store_.add(p + ".attn.qkv.weight", {3 * D, D}, true, Init::Normal, shape_.init_std);
      b.qkv_b = store_.add(p + ".attn.qkv.bias", {3 * D}, false, Init::Zeros);
      b.out_w = store_.add(p + ".attn.out.weight", {D, D}, true, Init::Normal, out_std);
      b.out_b = store_.add(p + ".attn.out.bias", {D}, false, Init::Zeros);
      { const Norm registers(store_, p + ".norm2", D, shape_.norm_eps); }
      { const Ffn registers(store_, p + ".ffn", shape_, out_std); }
      b.norm1 = find_norm(p + ".norm1");
      b.norm2 = find_norm(p + ".norm2");
      if constexpr (kFfn == detail::CudaFfnKind::Gated) {
        b.gate_w = store_.find(p + ".ffn.gate.weight");
        b.up_w = store_.find(p + ".ffn.up.weight");
        b.down_w = store_.find(p + ".ffn.down.weight");
        SEQREC_CHECK(store_.entry(b.gate_w).shape == std::vector<std::int64_t>({ffn_inner_, D}),
                     "Model<Cfg, cuda::Backend>: GatedMlp inner width differs from the CPU's");
      } else if constexpr (kFfn == detail::CudaFfnKind::Moe) {
        moe_.push_back(std::make_unique<MoeLayer>(store_, p + ".ffn", shape_));
      } else {
        b.fc1_w = store_.find(p + ".ffn.fc1.weight");
        b.fc1_b = store_.find(p + ".ffn.fc1.bias");
        b.fc2_w = store_.find(p + ".ffn.fc2.weight");
        b.fc2_b = store_.find(p + ".ffn.fc2.bias");
      }
      blocks_.push_back(b);
    }
    { const Norm registers(store_, "norm_f", D, shape_.norm_eps); }
    norm_f_ = find_norm("norm_f");

    const std::size_t n = store_.size();
    values_ = be_->buffer<float>(n);
    grads_ = be_->buffer<float>(n);
    m_ = be_->buffer<float>(n);
    v_ = be_->buffer<float>(n);
    make_mirror();
    make_lazy_grads();
    initialise(seed);  // draws on the host and uploads values and (zero) moments
    clear_grads();
    register_mirror();  // last: nothing after it may throw (the destructor would not run)
  }

  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model() { be_->remove_bf16_mirrors(this); }

  static std::string describe() { return Cfg::describe(); }
  const ModelShape& shape() const noexcept { return shape_; }
  /// The host store: names, shapes, frozen flags, and values as of the last upload()/download().
  ParameterStore<T>& parameters() noexcept { return store_; }
  const ParameterStore<T>& parameters() const noexcept { return store_; }
  std::int32_t num_items() const noexcept { return shape_.vocab_size - kNumSpecialTokens; }
  ParamId item_embedding() const noexcept { return item_emb_; }
  cuda::Backend& backend() noexcept { return *be_; }

  /// Re-draws every parameter from `seed` on the host (as the CPU model does) and uploads values
  /// and moments.
  void initialise(std::uint64_t seed) {
    store_.initialise(seed);
    upload();
  }

  /// Host values and both moments → device (and the weights' bf16 mirror from the values).
  void upload() {
    copy_to_device(values_.data(), store_.values().data());
    copy_to_device(m_.data(), store_.moment1().data());
    copy_to_device(v_.data(), store_.moment2().data());
    for (const MirrorRegion& r : mirror_regions_)
      cuda::cast_to_bf16(*be_, value(r.id), r.rows, r.cols, r.cols, mirror_.data() + r.offset,
                         r.cols);
    be_->synchronize();
    be_->weights_changed();
  }
  /// Device values and both moments → host store.
  void download() {
    copy_to_host(store_.values().data(), values_.data());
    copy_to_host(store_.moment1().data(), m_.data());
    copy_to_host(store_.moment2().data(), v_.data());
    be_->synchronize();
  }
  /// Device gradients → host store.
  void download_grads() {
    settle_grads();
    copy_to_host(store_.grads().data(), grads_.data());
    be_->synchronize();
  }
  /// Device gradients = 0. With lazy zeroing (the default) only the tensors that are not a
  /// linear layer's weight are cleared here, in one launch; each weight's gradient is marked
  /// pending instead, and its dW GEMM's first write after this overwrites it (beta 0) rather
  /// than adding to zeros (beta 1): the same values, without a write and a read of every weight
  /// gradient (252 MB per step at the study's size). The item rows of the tied table go the
  /// same way through the loss's first dW GEMM (another 138 MB). settle_grads() writes the zeros
  /// of those still pending before anything reads the gradients (optimizer_step, download_grads).
  void zero_grads() {
    if (!lazy_zero_) {
      clear_grads();
      return;
    }
    cuda::zero_tiles(*be_, *eager_zero_plan_, grads_.data());
    for (LazyGrad& g : lazy_grads_) g.pending = true;
  }
  /// Lazy gradient zeroing on (default) or off (zero_grads() then clears every gradient itself:
  /// the A/B of gpu_train_bench --eager-zero-grads). Settles what is pending first.
  void set_lazy_zero_grads(bool on) {
    settle_grads();
    lazy_zero_ = on;
  }
  bool lazy_zero_grads() const noexcept { return lazy_zero_; }
  /// How many dW GEMMs have overwritten a pending gradient (beta 0) so far (tests).
  std::size_t lazy_zero_hits() const noexcept { return lazy_hits_; }
  /// How many gradients are zeroed lazily: each backward with a scored target takes over the
  /// zeros of every one of them once (tests).
  std::size_t lazy_zero_tensors() const noexcept { return lazy_grads_.size(); }
  /// Device moments = 0 (a fresh optimiser, e.g. at the start of stage two).
  void reset_moments() {
    SEQREC_CUDA_CHECK(cudaMemsetAsync(m_.data(), 0, m_.bytes(), be_->stream()));
    SEQREC_CUDA_CHECK(cudaMemsetAsync(v_.data(), 0, v_.bytes(), be_->stream()));
  }

  /// Gradient clipping (max norm `clip`, <= 0 disables) then one AdamW update at `lr`, step
  /// 1-based, over the tensors not frozen in the host store, on the device. Same formulas as
  /// train::clip_grad_norm + train::adamw_step. Returns the gradient norm before clipping. The
  /// clip factor is applied as AdamW reads each gradient (the same floats as scaling them first),
  /// so the device gradients are left unscaled; zero_grads() clears them before the next step.
  double optimizer_step(const train::AdamWOptions& o, double lr, std::int64_t step, double clip) {
    refresh_plan();
    settle_grads();  // a weight whose backward did not run this step (e.g. no targets) has 0
    const cuda::ProfileScope prof(*be_, "optimizer (clip + AdamW)");
    const double norm = cuda::grad_norm(*be_, *plan_, grads_.data());
    cuda::adamw_step(*be_, *plan_, values_.data(), grads_.data(), m_.data(), v_.data(), o, lr, step,
                     cuda::clip_factor(norm, clip), mirror_.data());
    be_->weights_changed();
    return norm;
  }

  /// Data parallelism across GPUs (dist/nccl.hpp), one model per process and GPU: one rank
  /// makes an identifier with new_group_id(), the host's communicator sends it to the others
  /// (dist::start_replicas does both), and every rank joins with it.
  static nccl::Id new_group_id() { return nccl::Group::new_id(); }
  void join_group(const nccl::Id& id, int rank, int size) {
    group_ = std::make_unique<nccl::Group>(id, rank, size, be_->device());
  }
  /// In place on every rank of the group: the sum over the ranks of weight_r · gradient_r, over
  /// the tensors not frozen in the host store, in runs of adjacent ones (the runs of
  /// dist::allreduce_grads on the CPU); the zeros still pending are written first.
  void allreduce_grads(double weight) {
    SEQREC_CHECK(group_ != nullptr, "allreduce_grads: the model has not joined a group");
    settle_grads();
    const auto& es = store_.entries();
    std::vector<nccl::Range> runs;
    for (std::size_t i = 0; i < es.size();) {
      if (es[i].frozen) {
        ++i;
        continue;
      }
      nccl::Range r{es[i].offset, es[i].offset + es[i].numel};
      for (++i; i < es.size() && !es[i].frozen; ++i) r.end = es[i].offset + es[i].numel;
      runs.push_back(r);
    }
    const cuda::ProfileScope prof(*be_, "gradient allreduce (NCCL)");
    group_->weighted_sum(grads_.data(), runs, static_cast<float>(weight), be_->stream());
  }

  /// One training step's forward and backward on HOST inputs/targets (B, L), left-padded.
  /// Gradients are added into the device gradients (zero_grads() first). dropout_key == 0
  /// disables dropout. Returns the mean cross-entropy over non-padding targets; *num_targets
  /// receives their count.
  double forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                          std::int32_t batch, std::int32_t len, std::uint64_t dropout_key,
                          std::int64_t* num_targets) {
    forward(inputs, batch, len, dropout_key, targets);
    const std::int64_t N = std::int64_t{batch} * len, D = shape_.dim, M = rows_n_;
    std::int64_t count = 0;
    for (std::int64_t r = 0; r < N; ++r) count += targets[r] >= kNumSpecialTokens;
    if (num_targets) *num_targets = count;
    if (count == 0) return 0.0;
    ensure(dh_, M * D);
    ensure(dx_, M * D);
    std::int64_t seen = 0;
    double loss = 0.0;
    {
      const cuda::ProfileScope prof(*be_, "cross-entropy (fwd + bwd)");
      loss = cuda::cross_entropy_forward_backward(
          *be_, ce_shape(M), h_.data(), row_targets(targets),
          value(item_emb_) + kNumSpecialTokens * D, dh_.data(),
          // A frozen table's gradient would be discarded: skip its (I, D) GEMM.
          table_grad(), T(1.0 / double(count)), &seen, table_grad_beta());
    }
    backward(batch, len);
    return loss / double(count) + aux_loss();
  }

  /// Forward only: the mean loss the same step would report.
  double loss(const std::int32_t* inputs, const std::int32_t* targets, std::int32_t batch,
              std::int32_t len, std::uint64_t dropout_key) {
    forward(inputs, batch, len, dropout_key, targets);
    std::int64_t count = 0;
    const double loss = cuda::cross_entropy_forward_backward(
        *be_, ce_shape(rows_n_), h_.data(), row_targets(targets),
        value(item_emb_) + kNumSpecialTokens * shape_.dim, nullptr, nullptr, T(1), &count);
    return (count ? loss / double(count) : 0.0) + aux_loss();
  }

  /// DPO's head on the device (Model<Cfg, cpu::Backend>::selected_log_probs is the reference):
  /// the forward over HOST inputs (B, L), computing the rows it needs (packed), then the
  /// log-softmax over all items of `per_row` HOST item tokens (count, per_row) at each of `count`
  /// HOST positions rows (increasing indices into the B·L positions), written to the HOST logp
  /// (count, per_row). Only the log-probabilities cross to the host.
  void selected_log_probs(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                          std::uint64_t dropout_key, const std::int64_t* rows, std::int64_t count,
                          const std::int32_t* tokens, std::int32_t per_row, double* logp) {
    const std::int64_t D = shape_.dim;
    detail::prepare_selection(shape_, std::int64_t{batch} * len, rows, count, tokens, per_row,
                              sel_targets_, sel_host_);
    forward(inputs, batch, len, dropout_key, sel_targets_.data());
    // sel_host_ = [item columns (count·per_row) | computed-row index of each position (count)]
    detail::computed_index(rows, count, packed_ ? rows_host_.data() : nullptr, rows_n_, sel_rows_);
    sel_host_.insert(sel_host_.end(), sel_rows_.begin(), sel_rows_.end());
    ensure(sel_i32_, std::max<std::int64_t>(1, count * (per_row + 1)));
    ensure(sel_f32_, std::max<std::int64_t>(1, count * (per_row + 1)));
    if (count > 0)
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(sel_i32_.data(), sel_host_.data(),
                                        sizeof(std::int32_t) * sel_host_.size(),
                                        cudaMemcpyHostToDevice, be_->stream()));
    {
      const cuda::ProfileScope prof(*be_, "selected head (fwd)");
      cuda::selected_log_softmax(*be_, rows_n_, D, num_items(), ce_shape(count).chunk_rows,
                                 h_.data(), sel_i32_.data() + count * per_row, count,
                                 sel_i32_.data(), per_row, value(item_emb_) + kNumSpecialTokens * D,
                                 sel_f32_.data());
    }
    sel_logp_.resize(static_cast<std::size_t>(count * per_row));
    if (count > 0)
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(sel_logp_.data(), sel_f32_.data(),
                                        sizeof(float) * sel_logp_.size(), cudaMemcpyDeviceToHost,
                                        be_->stream()));
    be_->synchronize();  // sel_host_ and sel_logp_ are read / reused by the host
    for (std::size_t i = 0; i < sel_logp_.size(); ++i) logp[i] = sel_logp_[i];
    sel_ = {batch, len, per_row, count};
  }

  /// Backward of the last selected_log_probs() from the HOST g (count, per_row) = d loss / d logp,
  /// times scale: gradients are added into the device gradients (the table's unless frozen; MoE
  /// auxiliary losses included, as in forward_backward).
  void selected_backward(const double* g, double scale) {
    SEQREC_CHECK(sel_.batch > 0, "selected_backward: no selected_log_probs() before it");
    const std::int64_t D = shape_.dim, M = rows_n_, P = sel_.count, J = sel_.per_row;
    // Per row [scale · Σ_j g_j, scale · g_1 … scale · g_J], summed in double as on the CPU.
    sel_weights_.resize(static_cast<std::size_t>(P * (J + 1)));
    for (std::int64_t r = 0; r < P; ++r) {
      double total = 0;
      for (std::int64_t j = 0; j < J; ++j) {
        total += g[r * J + j];
        sel_weights_[static_cast<std::size_t>(r * (J + 1) + 1 + j)] =
            static_cast<float>(scale * g[r * J + j]);
      }
      sel_weights_[static_cast<std::size_t>(r * (J + 1))] = static_cast<float>(scale * total);
    }
    ensure(dh_, M * D);
    ensure(dx_, M * D);
    if (P > 0)
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(sel_f32_.data(), sel_weights_.data(),
                                        sizeof(float) * sel_weights_.size(), cudaMemcpyHostToDevice,
                                        be_->stream()));
    {
      const cuda::ProfileScope prof(*be_, "selected head (bwd)");
      cuda::selected_log_softmax_backward(
          *be_, M, D, num_items(), ce_shape(P).chunk_rows, h_.data(), sel_i32_.data() + P * J, P,
          sel_i32_.data(), static_cast<int>(J), value(item_emb_) + kNumSpecialTokens * D,
          sel_f32_.data(), dh_.data(), table_grad(), P > 0 ? table_grad_beta() : 1.f);
    }
    const auto s = sel_;
    sel_ = {};
    backward(s.batch, s.len);
    // No synchronisation: the weights' pageable copy was staged when it returned.
  }

  /// The MoE blocks' auxiliary losses (balance + router z-loss) of the last forward; 0 for the
  /// other feed-forward policies.
  double aux_loss() const {
    double a = 0;
    for (const auto& m : moe_) a += m->aux_loss();
    return a;
  }
  /// MoE: per block, each expert's share of the routed (token, slot) pairs since the last call
  /// (resets); empty for the other feed-forward policies.
  std::vector<std::vector<double>> take_expert_shares() {
    std::vector<std::vector<double>> out;
    for (auto& m : moe_) out.push_back(m->take_expert_shares());
    return out;
  }

  /// Inference: HOST scores (B, I) of every item for the position after the last token of each
  /// row of the HOST inputs (B, L).
  void score_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, T* scores) {
    if (batch == 0) return;
    scores_last_on_device(inputs, batch, len);
    const std::int64_t B = batch, I = num_items();
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(scores, scores_.data(), sizeof(T) * B * I,
                                      cudaMemcpyDeviceToHost, be_->stream()));
    be_->synchronize();
  }

  /// Evaluation without moving scores to the host: the pessimistic rank (eval::pessimistic_rank,
  /// 1 = best) of target item column targets[b] among all items for row b of the HOST inputs,
  /// optionally excluding item columns excl_items[excl_offsets[b] … excl_offsets[b+1]) (HOST
  /// CSR; null: none). ranks (B) is HOST memory.
  void rank_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                 const std::int32_t* targets, const std::int32_t* excl_offsets,
                 const std::int32_t* excl_items, std::int64_t* ranks) {
    if (batch == 0) return;
    scores_last_on_device(inputs, batch, len);
    const std::int64_t B = batch, I = num_items();
    ensure(rank_i32_, 3 * B + 1);  // targets (B), ranks (B), offsets (B + 1)
    std::int32_t* d_targets = rank_i32_.data();
    std::int32_t* d_ranks = d_targets + B;
    std::int32_t* d_offsets = d_ranks + B;
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(d_targets, targets, sizeof(std::int32_t) * B,
                                      cudaMemcpyHostToDevice, be_->stream()));
    const std::int32_t* d_items = nullptr;
    if (excl_offsets != nullptr) {
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(d_offsets, excl_offsets, sizeof(std::int32_t) * (B + 1),
                                        cudaMemcpyHostToDevice, be_->stream()));
      const std::int64_t ne = excl_offsets[B];
      ensure(excl_, std::max<std::int64_t>(ne, 1));
      if (ne > 0)
        SEQREC_CUDA_CHECK(cudaMemcpyAsync(excl_.data(), excl_items, sizeof(std::int32_t) * ne,
                                          cudaMemcpyHostToDevice, be_->stream()));
      d_items = excl_.data();
    }
    cuda::target_rank(*be_, scores_.data(), d_targets, B, I, d_ranks,
                      excl_offsets != nullptr ? d_offsets : nullptr, d_items);
    std::vector<std::int32_t> r(static_cast<std::size_t>(B));
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(r.data(), d_ranks, sizeof(std::int32_t) * B,
                                      cudaMemcpyDeviceToHost, be_->stream()));
    be_->synchronize();
    for (std::int64_t b = 0; b < B; ++b) ranks[b] = r[static_cast<std::size_t>(b)];
  }

  /// Inference top k: for each row of the HOST inputs the k best item columns (HOST items (B, k))
  /// and their scores (HOST scores (B, k), may be null), best first, ties to the lower column.
  /// 1 <= k <= num_items().
  void top_k_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, int k,
                  std::int32_t* items, T* scores) {
    SEQREC_CHECK(k >= 1 && k <= num_items(), "top_k_last: k must be in [1, " +
                                                 std::to_string(num_items()) + "], got " +
                                                 std::to_string(k));
    if (batch == 0) return;
    scores_last_on_device(inputs, batch, len);
    const std::int64_t B = batch, I = num_items();
    ensure(topk_idx_, B * k);
    ensure(topk_val_, B * k);
    cuda::topk_rows(*be_, scores_.data(), B, I, k, topk_idx_.data(), topk_val_.data());
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(items, topk_idx_.data(), sizeof(std::int32_t) * B * k,
                                      cudaMemcpyDeviceToHost, be_->stream()));
    if (scores != nullptr)
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(scores, topk_val_.data(), sizeof(T) * B * k,
                                        cudaMemcpyDeviceToHost, be_->stream()));
    be_->synchronize();
  }

 private:
  static constexpr detail::CudaPos kPos = detail::kCudaPos<typename Cfg::Position>;
  static constexpr detail::CudaNorm kNorm = detail::kCudaNorm<typename Cfg::Normalization>;
  static constexpr std::int64_t kStatsPerRow = Cfg::Normalization::stats_per_row;
  static constexpr detail::CudaFfnKind kFfn = detail::CudaFfn<typename Cfg::FeedForward>::kind;
  static constexpr cuda::Activation kAct = detail::CudaFfn<typename Cfg::FeedForward>::act;
  using MoeLayer = typename detail::CudaMoeLayerOf<typename Cfg::FeedForward>::type;

  /// A norm's parameters: the gain, and for LayerNorm the bias (unset for RMSNorm).
  struct NormIds {
    ParamId weight, bias;
  };
  struct Block {
    NormIds norm1, norm2;
    ParamId qkv_w, qkv_b, out_w, out_b;
    ParamId fc1_w, fc1_b, fc2_w, fc2_b;  // Mlp only
    ParamId gate_w, up_w, down_w;        // GatedMlp only
  };
  /// Saved activations of one block on the device. The block's input is resid_[l]. stats1/2
  /// hold kStatsPerRow floats per row. Mlp uses pre (N, F) and act (N, F); GatedMlp uses gate,
  /// up and act, each (N, F'); the buffers a policy does not use stay empty. a1, ctx, a2 and act
  /// are read only by GEMMs: with bf16 activations (act16_) they live in the *16 buffers instead,
  /// with 16-byte rows (bf16_ld), written in bf16 by the kernels that make them (MoE keeps a2 in
  /// fp32: its layer reads it).
  struct BlockCache {
    cuda::DeviceBuffer<float> a1, stats1, qkv, probs, ctx, x_mid, a2, stats2, pre, gate, up, act;
    // With bf16 GEMM outputs (out16_) the GEMMs write qkv and the MLP's pre in bf16: qkv16 and
    // pre16, 16-byte rows, in place of qkv and pre.
    cuda::DeviceBuffer<__nv_bfloat16> a1_16, ctx16, a2_16, act16, pre16, qkv16;
  };

  float* value(ParamId id) { return values_.data() + store_.entry(id).offset; }
  float* grad(ParamId id) { return grads_.data() + store_.entry(id).offset; }

  template <typename U>
  void ensure(cuda::DeviceBuffer<U>& b, std::int64_t count) {
    if (b.size() < static_cast<std::size_t>(count))
      b = be_->buffer<U>(static_cast<std::size_t>(count));
  }
  void copy_to_device(float* dst, const float* src) {
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * store_.size(),
                                      cudaMemcpyHostToDevice, be_->stream()));
  }
  void copy_to_host(float* dst, const float* src) {
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * store_.size(),
                                      cudaMemcpyDeviceToHost, be_->stream()));
  }
  /// The HOST targets of the rows the last forward computed (all of them, or the packed rows).
  const std::int32_t* row_targets(const std::int32_t* targets) {
    if (!packed_) return targets;
    targets_host_.resize(rows_host_.size());
    for (std::size_t i = 0; i < rows_host_.size(); ++i) targets_host_[i] = targets[rows_host_[i]];
    return targets_host_.data();
  }

  /// Rebuilds the optimiser's tile plan when the host store's frozen flags changed. Mirrored
  /// tensors' segments name their place in the mirror, so the step keeps it current.
  void refresh_plan() {
    std::vector<char> frozen;
    for (const auto& e : store_.entries()) frozen.push_back(e.frozen ? 1 : 0);
    if (plan_ && frozen == plan_frozen_) return;
    auto segments = cuda::adamw_segments(store_);
    for (const MirrorRegion& r : mirror_regions_) segments[r.id.index].mirror = r.offset;
    plan_ = std::make_unique<cuda::AdamWPlan>(*be_, segments);
    plan_frozen_ = std::move(frozen);
  }

  /// The bf16 mirror of the GEMM weights (Backend::add_bf16_mirror): every 2-D tensor whose row
  /// length is a multiple of 8 (a bf16 operand's rows are then exactly its rows: bf16_ld(cols) ==
  /// cols) gets a region of mirror_, which upload() fills by casting and the optimiser step by
  /// writing the rounded update; the backend then hands the GEMMs these rows instead of casting
  /// every weight again after each step. The item table's region has zero rows after it, enough
  /// for the loss's padded item count (cross_entropy_cuda.cuh reads the items from row
  /// kNumSpecialTokens on, rounded up to a multiple of 8 rows).
  void make_mirror() {
    std::int64_t total = 0;
    for (std::size_t i = 0; i < store_.entries().size(); ++i) {
      const auto& e = store_.entries()[i];
      if (e.shape.size() != 2 || e.shape[1] % 8 != 0) continue;
      MirrorRegion r{ParamId{i}, total, e.shape[0], e.shape[1], e.shape[0]};
      if (r.id.index == item_emb_.index) {
        const std::int64_t items = e.shape[0] - kNumSpecialTokens;
        r.bf16_rows = std::max(r.rows, kNumSpecialTokens + (items + 7) / 8 * 8);
      }
      total += r.bf16_rows * r.cols;  // a multiple of 8: every region starts 16-byte aligned
      mirror_regions_.push_back(r);
    }
    if (total == 0) return;
    mirror_ = be_->buffer<__nv_bfloat16>(static_cast<std::size_t>(total));
    SEQREC_CUDA_CHECK(cudaMemsetAsync(mirror_.data(), 0, mirror_.bytes(), be_->stream()));
  }
  /// The lazily zeroed gradients (zero_grads): every linear layer's weight, whose gradient one dW
  /// GEMM per backward writes (linear_backward_gemms; MoE experts keep their own GEMMs and are
  /// zeroed eagerly), and the item rows of the tied table, which the loss's first dW GEMM writes
  /// (before the embeddings' backward adds to them); and the tile plan that clears every other
  /// tensor's gradient, the table's special-token rows included.
  void make_lazy_grads() {
    std::vector<char> lazy(store_.entries().size(), 0);
    auto mark = [&](ParamId id) {
      lazy[id.index] = 1;
      lazy_grads_.push_back({grad(id), static_cast<std::int64_t>(store_.entry(id).numel)});
    };
    const std::int64_t specials = std::int64_t{kNumSpecialTokens} * shape_.dim;
    lazy[item_emb_.index] = 1;
    lazy_grads_.push_back({grad(item_emb_) + specials,
                           static_cast<std::int64_t>(store_.entry(item_emb_).numel) - specials});
    for (const Block& b : blocks_) {
      mark(b.qkv_w);
      mark(b.out_w);
      if constexpr (kFfn == detail::CudaFfnKind::Gated) {
        mark(b.gate_w);
        mark(b.up_w);
        mark(b.down_w);
      } else if constexpr (kFfn == detail::CudaFfnKind::Mlp) {
        mark(b.fc1_w);
        mark(b.fc2_w);
      }
    }
    std::vector<cuda::AdamWSegment> eager;
    for (std::size_t i = 0; i < store_.entries().size(); ++i) {
      const auto& e = store_.entries()[i];
      if (!lazy[i])
        eager.push_back({static_cast<std::int64_t>(e.offset), static_cast<std::int64_t>(e.numel),
                         false, false});
      else if (i == item_emb_.index)
        eager.push_back({static_cast<std::int64_t>(e.offset), specials, false, false});
    }
    eager_zero_plan_ = std::make_unique<cuda::AdamWPlan>(*be_, eager);
  }
  /// Every gradient = 0, the gaps between tensors included, nothing pending.
  void clear_grads() {
    SEQREC_CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), be_->stream()));
    for (LazyGrad& g : lazy_grads_) g.pending = false;
  }
  /// Writes the zeros of the gradients still pending (see zero_grads).
  void settle_grads() {
    for (LazyGrad& g : lazy_grads_) settle_grad(g.grad);
  }
  /// Writes the zeros of the gradient at `grad` if they are still pending.
  void settle_grad(float* grad) {
    for (LazyGrad& g : lazy_grads_) {
      if (g.grad != grad || !g.pending) continue;
      SEQREC_CUDA_CHECK(cudaMemsetAsync(
          g.grad, 0, sizeof(float) * static_cast<std::size_t>(g.numel), be_->stream()));
      g.pending = false;
    }
  }
  /// The item rows of the tied table's gradient (what the loss's dW GEMM writes); null while the
  /// table is frozen (its gradient would be discarded: the GEMM is skipped).
  float* table_grad() {
    return store_.entry(item_emb_).frozen
               ? nullptr
               : grad(item_emb_) + std::int64_t{kNumSpecialTokens} * shape_.dim;
  }
  /// The beta for the loss's first dW GEMM into table_grad() (dw_beta: call it only when that
  /// GEMM runs).
  float table_grad_beta() {
    float* g = table_grad();
    return g != nullptr ? dw_beta(g) : 1.f;
  }
  /// The beta of the dW GEMM that adds into dw: 0 when dw is a pending gradient (which it then
  /// no longer is), else 1.
  float dw_beta(float* dw) {
    for (LazyGrad& g : lazy_grads_) {
      if (g.grad != dw) continue;
      if (!g.pending) return 1.f;
      g.pending = false;
      ++lazy_hits_;
      return 0.f;
    }
    return 1.f;
  }

  /// Hands the mirror's regions to the backend (the destructor takes them back).
  void register_mirror() {
    try {
      for (const MirrorRegion& r : mirror_regions_)
        be_->add_bf16_mirror(
            {this, value(r.id), r.rows, r.cols, mirror_.data() + r.offset, r.bf16_rows});
    } catch (...) {
      be_->remove_bf16_mirrors(this);
      throw;
    }
  }

  /// The ids of the norm registered under `prefix` (its ".weight", and ".bias" for LayerNorm).
  NormIds find_norm(const std::string& prefix) const {
    NormIds n;
    n.weight = store_.find(prefix + ".weight");
    if constexpr (kNorm == detail::CudaNorm::LayerNorm) n.bias = store_.find(prefix + ".bias");
    return n;
  }
  /// y (N, D) = norm(x), leading dimension ldy (0: D), fp32 or bf16; stats (N, kStatsPerRow)
  /// saved for the backward.
  template <typename OutT>
  void norm_forward(const NormIds& n, const float* x, OutT* y, float* stats, std::int64_t rows,
                    std::int64_t d, float eps, std::int64_t ldy = 0) {
    if constexpr (kNorm == detail::CudaNorm::LayerNorm)
      cuda::layernorm_forward(*be_, x, value(n.weight), value(n.bias), y, stats, rows, d, eps, ldy);
    else
      cuda::rmsnorm_forward(*be_, x, value(n.weight), y, stats, rows, d, eps, ldy);
  }
  /// norm_forward of out = residual + drop(branch), made in the same pass (dropout_add under
  /// (p, key) and the row map, then the norm: their bits, without reading out back). branch:
  /// fp32 or bf16, leading dimension ldb.
  template <typename OutT, typename BranchT>
  void residual_norm_forward(const NormIds& n, float* out, const float* residual,
                             const BranchT* branch, std::int64_t ldb, double p, std::uint64_t key,
                             const std::int32_t* rmap, OutT* y, float* stats, std::int64_t rows,
                             std::int64_t d, float eps, std::int64_t ldy = 0) {
    if constexpr (kNorm == detail::CudaNorm::LayerNorm)
      cuda::dropout_add_layernorm(*be_, out, residual, branch, p, key, rmap, value(n.weight),
                                  value(n.bias), y, stats, rows, d, eps, ldy, ldb);
    else
      cuda::dropout_add_rmsnorm(*be_, out, residual, branch, p, key, rmap, value(n.weight), y,
                                stats, rows, d, eps, ldy, ldb);
  }
  /// Calls f(branch, ldb) with the branch output the last GEMM of a block's attention or FFN
  /// left: tmp16_ (bf16, rows of bf16_ld(D)) when b16, else tmp_ (fp32, rows of D).
  template <typename F>
  void with_branch(bool b16, F&& f) {
    if (b16)
      f(static_cast<const __nv_bfloat16*>(tmp16_.data()), cuda::bf16_ld(shape_.dim));
    else
      f(static_cast<const float*>(tmp_.data()), shape_.dim);
  }
  /// Whether the FFN writes its output (the branch) in bf16: the Mlp's fc2 with bf16 GEMM outputs.
  /// GatedMlp and MoE write fp32.
  bool ffn_branch16() const noexcept { return out16_ && kFfn == detail::CudaFfnKind::Mlp; }
  /// Where a GEMM-only activation of `cols` columns lives: its bf16 buffer with 16-byte rows
  /// under bf16 activations, else its fp32 buffer. Sizes them for `rows` rows.
  cuda::Operand act_operand(cuda::DeviceBuffer<float>& f32, cuda::DeviceBuffer<__nv_bfloat16>& b16,
                            std::int64_t rows, std::int64_t cols) {
    if (act16_) {
      ensure(b16, rows * cuda::bf16_ld(cols));
      return cuda::Operand(b16.data(), cuda::bf16_ld(cols));
    }
    ensure(f32, rows * cols);
    return cuda::Operand(f32.data(), cols);
  }
  /// The same operand for the backward (the buffers are sized by the forward).
  cuda::Operand act_operand(const cuda::DeviceBuffer<float>& f32,
                            const cuda::DeviceBuffer<__nv_bfloat16>& b16, std::int64_t cols) const {
    return act16_ ? cuda::Operand(b16.data(), cuda::bf16_ld(cols))
                  : cuda::Operand(f32.data(), cols);
  }
  /// dx (N, D) overwritten from dy, or added to when accumulate (the residual stream's gradient:
  /// the bits of an overwrite then add_into); the norm's parameter gradients accumulated. dy is
  /// fp32, or bf16 (a GEMM's bf16 output) with leading dimension lddy.
  template <typename DyT = float>
  void norm_backward(const NormIds& n, const float* x, const float* stats, const DyT* dy, float* dx,
                     std::int64_t rows, std::int64_t d, bool accumulate = false,
                     std::int64_t lddy = 0) {
    if constexpr (kNorm == detail::CudaNorm::LayerNorm)
      cuda::layernorm_backward(*be_, x, value(n.weight), stats, dy, dx, grad(n.weight),
                               grad(n.bias), rows, d, accumulate, lddy);
    else
      cuda::rmsnorm_backward(*be_, x, value(n.weight), stats, dy, dx, grad(n.weight), rows, d,
                             accumulate, lddy);
  }

  /// The loss's shape, its chunk taken from the backend's logits budget (not ModelShape's, which
  /// is the CPU model's; see Backend::set_loss_chunk_elems): twice the rows when the logits are
  /// bf16. One chunk instead of two at the study's step: the item table's fp32 gradient is read
  /// and written once less, and the three GEMMs run once, on all the rows.
  ops::CrossEntropyShape ce_shape(std::int64_t rows) const {
    ops::CrossEntropyShape s = detail::loss_shape(shape_, rows);
    const std::int64_t logits = be_->loss_chunk_elems() * (cuda::bf16_logits(*be_) ? 2 : 1);
    s.chunk_rows = std::max<std::int64_t>(1, logits / s.num_items);
    return s;
  }
  void check_tokens(const std::int32_t* tokens, std::int32_t batch, std::int32_t len) const {
    detail::check_model_input(shape_, Cfg::Position::extrapolates, tokens, batch, len);
  }

  /// scores_ (B, I) on the device: every item's score for the position after the last token of
  /// each row (forward without dropout, full layout).
  void scores_last_on_device(const std::int32_t* inputs, std::int32_t batch, std::int32_t len) {
    forward(inputs, batch, len, 0);
    const std::int64_t D = shape_.dim, I = num_items(), B = batch, L = len;
    ensure(scores_, B * I);
    // Rows L−1 of each sequence are rows of h_ with stride L·D: the GEMM reads them in place.
    cuda::gemm_rm(*be_, false, true, B, I, D, 1.f, h_.data() + (L - 1) * D, L * D,
                  value(item_emb_) + kNumSpecialTokens * D, D, 0.f, scores_.data(), I,
                  cuda::WeightOperand::B);
  }

  /// linear layer: y (N, out) = x (N, in) · Wᵀ + b, W (out, in).
  void linear_forward(const cuda::Operand& x, const float* w, const float* b, float* y,
                      std::int64_t n, std::int64_t in, std::int64_t out) {
    cuda::gemm_rm(*be_, false, true, n, out, in, 1.f, x, cuda::Operand(w, in), 0.f, y, out,
                  cuda::WeightOperand::B, b);  // bias in the GEMM's epilogue where possible
  }
  /// dx (N, in) = dy · W (overwritten); dW += dyᵀ · x; db += Σ_rows dy. In bf16 mode dy is
  /// rounded once for both GEMMs, in the pass that sums its columns.
  void linear_backward(const cuda::Operand& x, const float* w, const float* dy, float* dx,
                       float* dw, float* db, std::int64_t n, std::int64_t in, std::int64_t out) {
    if (!be_->bf16()) {
      linear_backward_gemms(x, w, cuda::Operand(dy, out), dx, dw, n, in, out, false);
      cuda::column_sum_add(*be_, dy, db, n, out);
      return;
    }
    linear_backward_bf16(x, w, dx, dw, n, in, out, [&](__nv_bfloat16* g16, std::int64_t ld16) {
      cuda::column_sum_add_cast(*be_, dy, db, n, out, g16, ld16);
    });
  }
  /// bf16 mode's linear backward: sum_cast(g16, ld16) writes the output gradient's bf16 operand
  /// (N, out) at leading dimension ld16 and adds its bias gradient, in one pass over whatever it
  /// is formed from; then both GEMMs read the operand.
  /// dx is fp32, or bf16 with leading dimension bf16_ld(in) (the GEMM's epilogue rounds it).
  template <typename DX, typename SumCast>
  void linear_backward_bf16(const cuda::Operand& x, const float* w, DX* dx, float* dw,
                            std::int64_t n, std::int64_t in, std::int64_t out, SumCast&& sum_cast) {
    const std::int64_t ld16 = cuda::bf16_ld(out);
    auto g16 = be_->buffer<__nv_bfloat16>(static_cast<std::size_t>(n * ld16));
    sum_cast(g16.data(), ld16);
    linear_backward_gemms(x, w, cuda::Operand(g16.data(), ld16), dx, dw, n, in, out, false);
  }
  /// The output gradient of a branch that went through dropout into the residual stream:
  /// drop(res) under (p, key) and the packed-row map. It is formed where it is consumed: inside a
  /// bf16 linear's bias sum and operand cast, never stored (dropout_backward_sum_cast); otherwise
  /// into scratch (materialize).
  struct BranchGrad {
    const float* res;
    double p;
    std::uint64_t key;
    const std::int32_t* rows;
    float* scratch;
  };
  /// drop(res) (N, d) in g.scratch, for consumers that read the gradient in fp32.
  const float* materialize(const BranchGrad& g, std::int64_t n, std::int64_t d) {
    cuda::dropout_backward(*be_, g.res, g.scratch, n * d, g.p, g.key, g.rows, d);
    return g.scratch;
  }
  /// linear_backward with the branch gradient g as its output gradient.
  void linear_backward(const cuda::Operand& x, const float* w, const BranchGrad& g, float* dx,
                       float* dw, float* db, std::int64_t n, std::int64_t in, std::int64_t out) {
    if (!be_->bf16()) {
      linear_backward(x, w, materialize(g, n, out), dx, dw, db, n, in, out);
      return;
    }
    linear_backward_bf16(x, w, dx, dw, n, in, out, branch_sum_cast(g, db, n, out));
  }
  /// linear_backward_bf16's sum_cast for a branch gradient g of `out` columns: the dropout
  /// backward inside the bias sum (db) and the bf16 operand (dropout_backward_sum_cast).
  auto branch_sum_cast(const BranchGrad& g, float* db, std::int64_t n, std::int64_t out) {
    return [this, g, db, n, out](__nv_bfloat16* g16, std::int64_t ld16) {
      cuda::dropout_backward_sum_cast(*be_, g.res, db, n, out, g.p, g.key, g.rows, g16, ld16);
    };
  }
  /// dx (N, in) = g · W, overwritten or added (beta = 1) when accumulate_dx; dW += gᵀ · x (dW =
  /// gᵀ · x while its zeros are pending: dw_beta); g is the output gradient as a GEMM operand. A
  /// bf16 dx (bf16 mode, overwritten only) has leading dimension bf16_ld(in).
  /// With the backend's overlap_dw the dW GEMM runs on the side stream while dx's runs on the
  /// main one (cuda::Fork: both read only g, x and W, which are ready), joined before returning.
  template <typename DX>
  void linear_backward_gemms(const cuda::Operand& x, const float* w, const cuda::Operand& g, DX* dx,
                             float* dw, std::int64_t n, std::int64_t in, std::int64_t out,
                             bool accumulate_dx) {
    auto input_grad = [&] {
      if constexpr (std::is_same_v<DX, __nv_bfloat16>) {
        SEQREC_CHECK(!accumulate_dx,
                     "linear_backward_gemms: a bf16 dx is overwritten, not added to");
        cuda::gemm_rm_bf16_out(*be_, false, false, n, in, out, 1.f, g, cuda::Operand(w, in), dx,
                               cuda::bf16_ld(in), cuda::WeightOperand::B);
      } else {
        cuda::gemm_rm(*be_, false, false, n, in, out, 1.f, g, cuda::Operand(w, in),
                      accumulate_dx ? 1.f : 0.f, dx, in, cuda::WeightOperand::B);
      }
    };
    // No rows: dW gets nothing (a pending gradient stays pending: its zeros are still owed).
    if (n == 0) {
      input_grad();
      return;
    }
    auto weight_grad = [&] {
      cuda::gemm_rm(*be_, true, false, out, in, n, 1.f, g, x, dw_beta(dw), dw, in);
    };
    if (!be_->overlap_dw()) {
      input_grad();
      weight_grad();
      return;
    }
    cuda::Fork fork(*be_);
    input_grad();
    fork.on_side(weight_grad);
  }

  /// Bias-free linear layer (GatedMlp): y (N, out) = x (N, in) · Wᵀ, W (out, in).
  void linear_forward_nobias(const cuda::Operand& x, const float* w, float* y, std::int64_t n,
                             std::int64_t in, std::int64_t out) {
    cuda::gemm_rm(*be_, false, true, n, out, in, 1.f, x, cuda::Operand(w, in), 0.f, y, out,
                  cuda::WeightOperand::B);
  }
  /// Its backward: dx (N, in) = dy · W, overwritten, or added (dx += dy · W, through the GEMM's
  /// beta = 1) when accumulate_dx; dW += dyᵀ · x.
  void linear_backward_nobias(const cuda::Operand& x, const float* w, const float* dy, float* dx,
                              float* dw, std::int64_t n, std::int64_t in, std::int64_t out,
                              bool accumulate_dx) {
    cuda::DeviceBuffer<__nv_bfloat16> dy16;
    linear_backward_gemms(x, w, cuda::gemm_operand(*be_, dy, n, out, dy16), dx, dw, n, in, out,
                          accumulate_dx);
  }

  /// tmp_ (N, D) = ffn(norm2 output) for block l (`blk`), saving what ffn_backward needs in c
  /// (MoE: in its layer); into tmp16_ instead, in bf16, when ffn_branch16(). a2 is the norm2
  /// output as an operand (MoE: c.a2, fp32).
  void ffn_forward(std::size_t l, const Block& blk, BlockCache& c, const cuda::Operand& a2,
                   std::int64_t n, std::int64_t d) {
    const std::int64_t F = ffn_inner_;
    if constexpr (kFfn == detail::CudaFfnKind::Moe) {
      // As MoE::Layer::forward, with the padding mask for the auxiliary losses.
      moe_[l]->forward(*be_, values_.data(), c.a2.data(), tmp_.data(), n, valid_.data());
    } else if constexpr (kFfn == detail::CudaFfnKind::Gated) {
      // As GatedMlp::Layer::forward: gate = a2·Wgᵀ, up = a2·Wuᵀ, act = silu(gate) ⊙ up,
      // y = act·Wdᵀ; no biases.
      ensure(c.gate, n * F);
      ensure(c.up, n * F);
      linear_forward_nobias(a2, value(blk.gate_w), c.gate.data(), n, d, F);
      linear_forward_nobias(a2, value(blk.up_w), c.up.data(), n, d, F);
      const cuda::Operand act = act_operand(c.act, c.act16, n, F);
      if (act16_)
        cuda::swiglu_forward(*be_, c.gate.data(), c.up.data(), c.act16.data(), n, F, act.ld);
      else
        cuda::swiglu_forward(*be_, c.gate.data(), c.up.data(), c.act.data(), n * F);
      linear_forward_nobias(act, value(blk.down_w), tmp_.data(), n, F, d);
    } else {
      // As Mlp::Layer::forward: pre = a2·W1ᵀ + b1, act = act(pre), y = act·W2ᵀ + b2. With bf16
      // GEMM outputs fc1's GEMM writes pre in bf16 (its epilogue rounds pre + b1 once): its only
      // readers are the activation and its backward, which widen it.
      const cuda::Operand act = act_operand(c.act, c.act16, n, F);
      if (out16_) {
        const std::int64_t ldf = cuda::bf16_ld(F);
        ensure(c.pre16, n * ldf);
        cuda::gemm_rm_bf16_out(*be_, false, true, n, F, d, 1.f, a2,
                               cuda::Operand(value(blk.fc1_w), d), c.pre16.data(), ldf,
                               cuda::WeightOperand::B, value(blk.fc1_b));
        cuda::activation_forward<kAct>(*be_, c.pre16.data(), ldf, c.act16.data(), n, F, act.ld);
      } else {
        ensure(c.pre, n * F);
        linear_forward(a2, value(blk.fc1_w), value(blk.fc1_b), c.pre.data(), n, d, F);
        if (act16_)
          cuda::activation_forward<kAct>(*be_, c.pre.data(), c.act16.data(), n, F, act.ld);
        else
          cuda::activation_forward<kAct>(*be_, c.pre.data(), c.act.data(), n * F);
      }
      if (ffn_branch16())
        cuda::gemm_rm_bf16_out(*be_, false, true, n, d, F, 1.f, act,
                               cuda::Operand(value(blk.fc2_w), F), tmp16_.data(), cuda::bf16_ld(d),
                               cuda::WeightOperand::B, value(blk.fc2_b));
      else
        linear_forward(act, value(blk.fc2_w), value(blk.fc2_b), tmp_.data(), n, F, d);
    }
  }
  /// dx (N, D) overwritten = d loss / d a2 from dy = d loss / d ffn output (N, D), given as the
  /// branch gradient dy_g; the FFN's parameter gradients accumulated. dy_g.res is not modified.
  /// With bf16 GEMM outputs the Mlp writes dx into dx16 (N, bf16_ld(D)) instead, in bf16 (the
  /// norm backward that reads it widens it); the other FFNs ignore dx16.
  void ffn_backward(std::size_t l, const Block& blk, const BlockCache& c, const BranchGrad& dy_g,
                    float* dx, __nv_bfloat16* dx16, std::int64_t n, std::int64_t d) {
    const std::int64_t F = ffn_inner_;
    if constexpr (kFfn == detail::CudaFfnKind::Moe) {
      // Includes the router gradient of the auxiliary losses, as the CPU layer's backward does.
      moe_[l]->backward(*be_, values_.data(), grads_.data(), c.a2.data(), materialize(dy_g, n, d),
                        dx, n);
      return;
    }
    const cuda::Operand a2 = act_operand(c.a2, c.a2_16, d);
    const cuda::Operand act = act_operand(c.act, c.act16, F);
    if constexpr (kFfn == detail::CudaFfnKind::Gated) {
      ensure(dact_, n * F);
      // As GatedMlp::Layer::backward: d(act) = dy·Wd (dWd += dyᵀ·act); then in place
      // d(gate) = d(act) ⊙ up ⊙ silu'(gate) and d(up) = d(act) ⊙ silu(gate); then
      // dx = d(gate)·Wg (dWg += d(gate)ᵀ·a2) and dx += d(up)·Wu (dWu += d(up)ᵀ·a2). The CPU adds
      // the second product through a temporary; here the GEMM adds it (beta = 1), same order.
      ensure(dup_, n * F);
      linear_backward_nobias(act, value(blk.down_w), materialize(dy_g, n, d), dact_.data(),
                             grad(blk.down_w), n, F, d, false);
      cuda::swiglu_backward(*be_, c.gate.data(), c.up.data(), dact_.data(), dact_.data(),
                            dup_.data(), n * F);
      linear_backward_nobias(a2, value(blk.gate_w), dact_.data(), dx, grad(blk.gate_w), n, d, F,
                             false);
      linear_backward_nobias(a2, value(blk.up_w), dup_.data(), dx, grad(blk.up_w), n, d, F, true);
    } else if (out16_) {
      // bf16 GEMM outputs: fc2's input-gradient GEMM writes d(act) in bf16; the gradient through
      // the activation (at the bf16 pre the forward used) then goes straight into fc1's bias
      // gradient and bf16 GEMM operand. No (N, F) tensor in fp32.
      const std::int64_t ldf = cuda::bf16_ld(F);
      ensure(dact16_, n * ldf);
      linear_backward_bf16(act, value(blk.fc2_w), dact16_.data(), grad(blk.fc2_w), n, F, d,
                           branch_sum_cast(dy_g, grad(blk.fc2_b), n, d));
      SEQREC_CHECK(dx16 != nullptr, "ffn_backward: bf16 GEMM outputs need the bf16 dx");
      linear_backward_bf16(a2, value(blk.fc1_w), dx16, grad(blk.fc1_w), n, d, F,
                           [&](__nv_bfloat16* g16, std::int64_t ld16) {
                             cuda::activation_backward_sum_cast<kAct>(
                                 *be_, c.pre16.data(), dact16_.data(), ldf, grad(blk.fc1_b), n, F,
                                 g16, ld16);
                           });
    } else {
      ensure(dact_, n * F);
      linear_backward(act, value(blk.fc2_w), dy_g, dact_.data(), grad(blk.fc2_w), grad(blk.fc2_b),
                      n, F, d);
      if (!be_->bf16()) {
        cuda::activation_backward<kAct>(*be_, c.pre.data(), dact_.data(), n * F);
        linear_backward(a2, value(blk.fc1_w), dact_.data(), dx, grad(blk.fc1_w), grad(blk.fc1_b), n,
                        d, F);
        return;
      }
      // bf16: the gradient through the activation goes straight into fc1's bias gradient and
      // its bf16 GEMM operand (linear_backward's two uses of it), never stored in fp32.
      linear_backward_bf16(a2, value(blk.fc1_w), dx, grad(blk.fc1_w), n, d, F,
                           [&](__nv_bfloat16* g16, std::int64_t ld16) {
                             cuda::activation_backward_sum_cast<kAct>(*be_, c.pre.data(),
                                                                      dact_.data(), grad(blk.fc1_b),
                                                                      n, F, g16, ld16);
                           });
    }
  }

  std::uint64_t attn_key(std::uint64_t dropout_key, std::size_t l) const {
    return mix64(dropout_key ^ (l * 16 + 2));
  }

  /// Chooses the rows the step computes. With targets (training, loss): packed — only rows whose
  /// input is not padding or whose target is scored; a padding row's hidden state reaches nothing
  /// (its keys are masked, its target is not scored, its gradient is zero), so skipping it leaves
  /// every result as the full computation's, while the row-wise layers (norms, linears, FFN,
  /// cross-entropy) do ~45% less work at the study's padding. Without targets (scoring): all
  /// rows. rows_n_ receives the count; rows_ (device) the list when packed, and seg_ (device) the
  /// attention's view of it: B + 1 offsets of each sequence's packed rows, then the M packed
  /// tokens (every non-padding position is packed, so attention runs on the packed rows alone).
  void choose_rows(const std::int32_t* tokens, const std::int32_t* targets, std::int64_t batch,
                   std::int64_t len) {
    const std::int64_t n = batch * len;
    packed_ = false;
    rows_n_ = n;
    if (targets == nullptr) return;
    rows_host_.clear();
    for (std::int64_t r = 0; r < n; ++r)
      if (tokens[r] != kPadToken || targets[r] >= kNumSpecialTokens)
        rows_host_.push_back(static_cast<std::int32_t>(r));
    if (static_cast<std::int64_t>(rows_host_.size()) == n) return;  // nothing to skip
    packed_ = true;
    rows_n_ = static_cast<std::int64_t>(rows_host_.size());
    ensure(rows_, std::max<std::int64_t>(rows_n_, 1));
    if (rows_n_ > 0)
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(rows_.data(), rows_host_.data(),
                                        sizeof(std::int32_t) * rows_n_, cudaMemcpyHostToDevice,
                                        be_->stream()));
    seg_host_.assign(static_cast<std::size_t>(batch + 1 + rows_n_), 0);
    std::int64_t i = 0;
    for (std::int64_t b = 0; b <= batch; ++b) {
      while (i < rows_n_ && rows_host_[static_cast<std::size_t>(i)] < b * len) ++i;
      seg_host_[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(i);
    }
    for (std::int64_t r = 0; r < rows_n_; ++r)
      seg_host_[static_cast<std::size_t>(batch + 1 + r)] =
          tokens[rows_host_[static_cast<std::size_t>(r)]];
    ensure(seg_, static_cast<std::int64_t>(seg_host_.size()));
    // Pageable source: the copy has read seg_host_ when the call returns.
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(seg_.data(), seg_host_.data(),
                                      sizeof(std::int32_t) * seg_host_.size(),
                                      cudaMemcpyHostToDevice, be_->stream()));
  }
  /// The RoPE table attention fuses (null for the other position policies).
  const cuda::RopeTable* rope() const {
    if constexpr (kPos == detail::CudaPos::RoPE)
      return &rope_;
    else
      return nullptr;
  }
  /// The packed-row map for the dropout and RoPE kernels (null: all rows, in order).
  const std::int32_t* row_map() const { return packed_ ? rows_.data() : nullptr; }
  /// Attention's segments (null: the full (B, L) layout) and the tokens of the rows it sees.
  const std::int32_t* attn_seg() const { return packed_ ? seg_.data() : nullptr; }
  const std::int32_t* attn_tokens() const {
    return packed_ ? seg_.data() + (seg_host_.size() - static_cast<std::size_t>(rows_n_))
                   : tokens_.data();
  }

  void forward(const std::int32_t* tokens, std::int32_t batch, std::int32_t len,
               std::uint64_t dropout_key, const std::int32_t* targets = nullptr) {
    check_tokens(tokens, batch, len);
    const std::int64_t B = batch, L = len, N = B * L, D = shape_.dim, H = shape_.heads;
    const double p = dropout_key ? shape_.dropout : 0.0;
    const float eps = static_cast<float>(shape_.norm_eps);
    sel_ = {};  // a selected_backward() must follow its own forward
    act16_ = be_->bf16() && be_->bf16_activations();  // the backward reads the same buffers
    out16_ = act16_ && be_->bf16_gemm_outputs();
    ensure(tokens_, N);
    SEQREC_CUDA_CHECK(cudaMemcpyAsync(tokens_.data(), tokens, sizeof(std::int32_t) * N,
                                      cudaMemcpyHostToDevice, be_->stream()));
    choose_rows(tokens, targets, B, L);
    const std::int64_t M = rows_n_;
    if constexpr (kFfn == detail::CudaFfnKind::Moe) {
      // The MoE auxiliary losses count real (non-padding) rows, as on the CPU.
      valid_host_.resize(static_cast<std::size_t>(M));
      for (std::int64_t i = 0; i < M; ++i)
        valid_host_[i] = tokens[packed_ ? rows_host_[i] : i] != kPadToken;
      ensure(valid_, std::max<std::int64_t>(M, 1));
      if (M > 0)
        SEQREC_CUDA_CHECK(cudaMemcpyAsync(valid_.data(), valid_host_.data(), M,
                                          cudaMemcpyHostToDevice, be_->stream()));
    }
    resid_.resize(blocks_.size() + 1);
    for (auto& r : resid_) ensure(r, M * D);
    caches_.resize(blocks_.size());
    ensure(tmp_, M * D);
    if (out16_) ensure(tmp16_, M * cuda::bf16_ld(D));
    ensure(h_, M * D);
    ensure(stats_f_, M * kStatsPerRow);
    // Learned positions add the table on the full layout (its gradient sums over b), so only
    // they keep the embeddings' full layout in a packed step.
    const bool full_embed = packed_ && kPos == detail::CudaPos::Learned;
    if (full_embed) ensure(full_, N * D);
    if constexpr (kPos == detail::CudaPos::RoPE) rope_.ensure(*be_, L, D / H, shape_.rope_base);

    // Embeddings and their dropout straight into the computed rows (packed: the row map gives
    // each row's mask indices, the full layout's); with learned positions, on the full (B, L)
    // layout first, then gathered.
    {
      const cuda::ProfileScope prof(*be_, "embedding + dropout (fwd)");
      const T scale = shape_.scale_embeddings ? std::sqrt(T(D)) : T(1);
      if (full_embed || !packed_) {
        float* x0 = packed_ ? full_.data() : resid_[0].data();
        cuda::embedding_forward(*be_, tokens_.data(), value(item_emb_), x0, N, D, scale);
        if constexpr (kPos == detail::CudaPos::Learned) {
          SEQREC_CHECK(L <= shape_.max_len,
                       "sequence window longer than the learned position table");
          cuda::position_add(*be_, x0, value(pos_emb_), B, L, D);
        }
        cuda::dropout_forward(*be_, x0, N * D, p, mix64(dropout_key ^ 1));
        if (packed_) cuda::gather_rows(*be_, x0, rows_.data(), resid_[0].data(), M, D);
      } else {
        cuda::embedding_forward(*be_, attn_tokens(), value(item_emb_), resid_[0].data(), M, D,
                                scale);
        cuda::dropout_forward(*be_, resid_[0].data(), M * D, p, mix64(dropout_key ^ 1),
                              rows_.data(), D);
      }
    }
    const std::int32_t* rmap = row_map();
    const ops::AttentionShape as{B, L, D, H};
    // Each block's norm1 runs at the end of the block before it, fused with that block's last
    // residual add (residual_norm_forward), so every block's norm1 buffers exist up front; block
    // 0's reads the embeddings and runs alone.
    for (BlockCache& c : caches_) {
      ensure(c.stats1, M * kStatsPerRow);
      (void)act_operand(c.a1, c.a1_16, M, D);
    }
    {
      const cuda::ProfileScope prof(*be_, "norms (fwd)");
      if (!blocks_.empty()) {
        BlockCache& c0 = caches_[0];
        if (act16_)
          norm_forward(blocks_[0].norm1, resid_[0].data(), c0.a1_16.data(), c0.stats1.data(), M, D,
                       eps, cuda::bf16_ld(D));
        else
          norm_forward(blocks_[0].norm1, resid_[0].data(), c0.a1.data(), c0.stats1.data(), M, D,
                       eps);
      }
    }
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const Block& blk = blocks_[l];
      BlockCache& c = caches_[l];
      const std::uint64_t key = attn_key(dropout_key, l);
      const float* x_in = resid_[l].data();
      // qkv: packed rows too (attention reads them through seg_); in bf16 with bf16 GEMM outputs,
      // as its GEMM's epilogue rounds it (its readers are the attention kernels, which widen it).
      const std::int64_t ldq = out16_ ? cuda::bf16_ld(3 * D) : 3 * D;
      if (out16_)
        ensure(c.qkv16, M * ldq);
      else
        ensure(c.qkv, M * 3 * D);
      ensure(c.probs, B * H * L * L);
      ensure(c.x_mid, M * D);
      ensure(c.stats2, M * kStatsPerRow);
      const cuda::Operand a1 = act_operand(c.a1, c.a1_16, M, D);
      const cuda::Operand ctx = act_operand(c.ctx, c.ctx16, M, D);
      // MoE reads the norm2 output itself: fp32 always.
      const bool a2_fp32 = !act16_ || kFfn == detail::CudaFfnKind::Moe;
      if (a2_fp32) ensure(c.a2, M * D);
      const cuda::Operand a2 =
          a2_fp32 ? cuda::Operand(c.a2.data(), D) : act_operand(c.a2, c.a2_16, M, D);
      // x_mid = x_in + drop(Wo · attn(rope(Wqkv · norm1(x_in)))); norm1(x_in) is in c.a1 already.
      {
        const cuda::ProfileScope prof(*be_, "qkv linear (fwd)");
        if (out16_)
          cuda::gemm_rm_bf16_out(*be_, false, true, M, 3 * D, D, 1.f, a1,
                                 cuda::Operand(value(blk.qkv_w), D), c.qkv16.data(), ldq,
                                 cuda::WeightOperand::B, value(blk.qkv_b));
        else
          linear_forward(a1, value(blk.qkv_w), value(blk.qkv_b), c.qkv.data(), M, D, 3 * D);
      }
      {
        // Packed: each (sequence, head) block attends over that sequence's packed rows. RoPE is
        // fused: the kernel rotates Q and K as it loads them, qkv stays unrotated.
        const cuda::ProfileScope prof(*be_, "attention (fwd)");
        if (out16_)
          cuda::attention_forward(*be_, as, c.qkv16.data(), attn_tokens(), kPadToken,
                                  c.ctx16.data(), c.probs.data(), ctx.ld, attn_seg(), rope(), rmap,
                                  ldq);
        else if (act16_)
          cuda::attention_forward(*be_, as, c.qkv.data(), attn_tokens(), kPadToken, c.ctx16.data(),
                                  c.probs.data(), ctx.ld, attn_seg(), rope(), rmap);
        else
          cuda::attention_forward(*be_, as, c.qkv.data(), attn_tokens(), kPadToken, c.ctx.data(),
                                  c.probs.data(), 0, attn_seg(), rope(), rmap);
      }
      {
        // With bf16 GEMM outputs the out linear writes the branch in bf16 (tmp16_: its epilogue
        // rounds the product plus bias once, as autocast does); the residual add widens it.
        const cuda::ProfileScope prof(*be_, "out linear (fwd)");
        if (out16_)
          cuda::gemm_rm_bf16_out(*be_, false, true, M, D, D, 1.f, ctx,
                                 cuda::Operand(value(blk.out_w), D), tmp16_.data(),
                                 cuda::bf16_ld(D), cuda::WeightOperand::B, value(blk.out_b));
        else
          linear_forward(ctx, value(blk.out_w), value(blk.out_b), tmp_.data(), M, D, D);
      }
      {
        // x_mid = x_in + drop(out linear), and norm2(x_mid), in one pass.
        const cuda::ProfileScope prof(*be_, "residual + norm (fwd)");
        with_branch(out16_, [&](const auto* branch, std::int64_t ldb) {
          if (a2_fp32)
            residual_norm_forward(blk.norm2, c.x_mid.data(), x_in, branch, ldb, p, key, rmap,
                                  c.a2.data(), c.stats2.data(), M, D, eps);
          else
            residual_norm_forward(blk.norm2, c.x_mid.data(), x_in, branch, ldb, p, key, rmap,
                                  c.a2_16.data(), c.stats2.data(), M, D, eps, a2.ld);
        });
      }
      // x_out = x_mid + drop(ffn(norm2(x_mid)))
      {
        const cuda::ProfileScope prof(*be_, "ffn (fwd)");
        ffn_forward(l, blk, c, a2, M, D);  // → tmp_, or tmp16_ (ffn_branch16)
      }
      {
        // x_out, and the norm that reads it (the next block's norm1, or the final norm into h_),
        // in one pass.
        const cuda::ProfileScope prof(*be_, "residual + norm (fwd)");
        const std::uint64_t key2 = mix64(key ^ 0x5bd1e995);
        float* x_out = resid_[l + 1].data();
        with_branch(ffn_branch16(), [&](const auto* branch, std::int64_t ldb) {
          if (l + 1 == blocks_.size()) {
            residual_norm_forward(norm_f_, x_out, c.x_mid.data(), branch, ldb, p, key2, rmap,
                                  h_.data(), stats_f_.data(), M, D, eps);
          } else {
            BlockCache& next = caches_[l + 1];
            const NormIds& n1 = blocks_[l + 1].norm1;
            if (act16_)
              residual_norm_forward(n1, x_out, c.x_mid.data(), branch, ldb, p, key2, rmap,
                                    next.a1_16.data(), next.stats1.data(), M, D, eps,
                                    cuda::bf16_ld(D));
            else
              residual_norm_forward(n1, x_out, c.x_mid.data(), branch, ldb, p, key2, rmap,
                                    next.a1.data(), next.stats1.data(), M, D, eps);
          }
        });
      }
    }
    if (blocks_.empty()) {
      const cuda::ProfileScope prof(*be_, "norms (fwd)");
      norm_forward(norm_f_, resid_[0].data(), h_.data(), stats_f_.data(), M, D, eps);
    }
    last_p_ = p;
    last_key_ = dropout_key;
  }

  /// Reverse of forward(): starts from dh_ (gradient of the loss wrt h), ends in the embeddings.
  void backward(std::int32_t batch, std::int32_t len) {
    const std::int64_t B = batch, L = len, N = B * L, D = shape_.dim, H = shape_.heads, M = rows_n_;
    const double p = last_p_;
    const std::int32_t* rmap = row_map();
    float* dx = dx_.data();
    float* dbranch = dh_.data();  // dh_ is free after the final norm: branch gradients
    float* tmp = tmp_.data();
    // With bf16 GEMM outputs the input gradients of the qkv linear and the Mlp reach their norm's
    // backward in bf16, through dn16_ (N, bf16_ld(D)).
    const bool ffn16 = out16_ && kFfn == detail::CudaFfnKind::Mlp;
    const std::int64_t ldd = cuda::bf16_ld(D);
    if (out16_) ensure(dn16_, M * ldd);
    {
      const cuda::ProfileScope prof(*be_, "norms (bwd)");
      norm_backward(norm_f_, resid_[blocks_.size()].data(), stats_f_.data(), dh_.data(), dx, M, D);
    }
    const ops::AttentionShape as{B, L, D, H};
    for (std::size_t li = blocks_.size(); li-- > 0;) {
      const Block& blk = blocks_[li];
      BlockCache& c = caches_[li];
      const std::uint64_t key = attn_key(last_key_, li);
      // x_out = x_mid + drop(ffn(norm2(x_mid))). The branches' dropout backward runs inside
      // their first consumers (BranchGrad): its time shows in the FFN and out-linear phases.
      {
        const cuda::ProfileScope prof(*be_, "ffn (bwd)");
        ffn_backward(li, blk, c, {dx, p, mix64(key ^ 0x5bd1e995), rmap, dbranch}, tmp,
                     ffn16 ? dn16_.data() : nullptr, M, D);
      }
      {
        const cuda::ProfileScope prof(*be_, "norms (bwd)");
        // dx += the norm's input gradient: dx is now d x_mid.
        if (ffn16)
          norm_backward(blk.norm2, c.x_mid.data(), c.stats2.data(), dn16_.data(), dx, M, D, true,
                        ldd);
        else
          norm_backward(blk.norm2, c.x_mid.data(), c.stats2.data(), tmp, dx, M, D, true);
      }
      // x_mid = x_in + drop(Wo · attn(rope(Wqkv · norm1(x_in))))
      const BranchGrad attn_g{dx, p, key, rmap, dbranch};
      if (out16_) {
        // bf16 GEMM outputs: d(ctx) comes out of the out linear's input-gradient GEMM in bf16,
        // attention reads it and writes d(qkv) in bf16, which is then both the qkv linear's GEMM
        // operand and what its bias gradient sums; the qkv linear's input gradient comes out in
        // bf16 too, for norm1's backward. No (N, D) or (N, 3D) gradient in fp32.
        const std::int64_t ldq = cuda::bf16_ld(3 * D);
        ensure(dctx16_, M * ldd);
        ensure(dqkv16_, M * ldq);
        {
          const cuda::ProfileScope prof(*be_, "out linear (bwd)");
          linear_backward_bf16(act_operand(c.ctx, c.ctx16, D), value(blk.out_w), dctx16_.data(),
                               grad(blk.out_w), M, D, D,
                               branch_sum_cast(attn_g, grad(blk.out_b), M, D));
        }
        {
          const cuda::ProfileScope prof(*be_, "attention (bwd)");
          cuda::attention_backward(*be_, as, c.qkv16.data(), c.probs.data(), dctx16_.data(),
                                   dqkv16_.data(), attn_seg(), rope(), rmap, ldq, ldd, ldq);
        }
        {
          const cuda::ProfileScope prof(*be_, "qkv linear (bwd)");
          cuda::column_sum_add(*be_, dqkv16_.data(), ldq, grad(blk.qkv_b), M, 3 * D);
          linear_backward_gemms(act_operand(c.a1, c.a1_16, D), value(blk.qkv_w),
                                cuda::Operand(dqkv16_.data(), ldq), dn16_.data(), grad(blk.qkv_w),
                                M, D, 3 * D, false);
        }
      } else {
        {
          const cuda::ProfileScope prof(*be_, "out linear (bwd)");
          linear_backward(act_operand(c.ctx, c.ctx16, D), value(blk.out_w), attn_g, tmp,
                          grad(blk.out_w), grad(blk.out_b), M, D, D);
        }
        {
          const cuda::ProfileScope prof(*be_, "attention (bwd)");
          // RoPE fused: dqkv is the gradient with respect to the unrotated qkv.
          ensure(dqkv_, M * 3 * D);
          cuda::attention_backward(*be_, as, c.qkv.data(), c.probs.data(), tmp, dqkv_.data(),
                                   attn_seg(), rope(), rmap);
        }
        {
          const cuda::ProfileScope prof(*be_, "qkv linear (bwd)");
          linear_backward(act_operand(c.a1, c.a1_16, D), value(blk.qkv_w), dqkv_.data(), tmp,
                          grad(blk.qkv_w), grad(blk.qkv_b), M, D, 3 * D);
        }
      }
      {
        const cuda::ProfileScope prof(*be_, "norms (bwd)");
        // dx += the norm's input gradient: dx is now d x_in.
        if (out16_)
          norm_backward(blk.norm1, resid_[li].data(), c.stats1.data(), dn16_.data(), dx, M, D, true,
                        ldd);
        else
          norm_backward(blk.norm1, resid_[li].data(), c.stats1.data(), tmp, dx, M, D, true);
      }
    }
    // The embedding dropout and the table on the computed rows (as the forward); learned
    // positions go back to the full layout first.
    const cuda::ProfileScope prof(*be_, "embedding + dropout (bwd)");
    const T scale = shape_.scale_embeddings ? std::sqrt(T(D)) : T(1);
    const bool frozen = store_.entry(item_emb_).frozen;
    // The table's gradient adds here: if no loss GEMM wrote it this step, its zeros first.
    if (float* tg = table_grad()) settle_grad(tg);
    if (packed_ && kPos != detail::CudaPos::Learned) {
      cuda::dropout_backward(*be_, dx, dx, M * D, p, mix64(last_key_ ^ 1), rows_.data(), D);
      if (!frozen)
        cuda::embedding_backward(*be_, attn_tokens(), dx, grad(item_emb_), M, D, shape_.vocab_size,
                                 scale);
      return;
    }
    if (packed_) {
      cuda::scatter_rows(*be_, dx, rows_.data(), full_.data(), M, N, D);
      dx = full_.data();
    }
    cuda::dropout_backward(*be_, dx, dx, N * D, p, mix64(last_key_ ^ 1));
    if constexpr (kPos == detail::CudaPos::Learned)
      cuda::position_add_backward(*be_, dx, grad(pos_emb_), B, L, D);
    if (!frozen)
      cuda::embedding_backward(*be_, tokens_.data(), dx, grad(item_emb_), N, D, shape_.vocab_size,
                               scale);
  }

  ModelShape shape_;
  cuda::Backend* be_;
  std::int64_t ffn_inner_;  // F (Mlp) or F' = gated_inner_width(D, F) (GatedMlp)
  ParameterStore<T> store_;
  ParamId item_emb_, pos_emb_;
  NormIds norm_f_;
  std::vector<Block> blocks_;
  // Device parameters, gradients and AdamW moments, laid out as store_'s flat arrays.
  cuda::DeviceBuffer<float> values_, grads_, m_, v_;
  // The GEMM weights' bf16 mirror (make_mirror): one region per mirrored tensor.
  struct MirrorRegion {
    ParamId id;
    std::int64_t offset, rows, cols, bf16_rows;
  };
  std::vector<MirrorRegion> mirror_regions_;
  cuda::DeviceBuffer<__nv_bfloat16> mirror_;
  std::unique_ptr<cuda::AdamWPlan> plan_;
  std::vector<char> plan_frozen_;
  // Lazy gradient zeroing (zero_grads): the linear weights' gradients, each pending while its
  // zeros are owed, and the plan clearing the other tensors' gradients.
  struct LazyGrad {
    float* grad;
    std::int64_t numel;
    bool pending = false;
  };
  std::vector<LazyGrad> lazy_grads_;
  std::unique_ptr<cuda::AdamWPlan> eager_zero_plan_;
  bool lazy_zero_ = true;
  std::size_t lazy_hits_ = 0;
  cuda::RopeTable rope_;
  // Activations of the last forward and backward scratch, reused across steps.
  cuda::DeviceBuffer<std::int32_t> tokens_;
  std::vector<cuda::DeviceBuffer<float>> resid_;  // block inputs, then the last block's output
  std::vector<BlockCache> caches_;
  // dact_: d(act) (N, F or F'), for GatedMlp then d(gate) in place; dup_: d(up) (GatedMlp).
  cuda::DeviceBuffer<float> h_, stats_f_, tmp_, dx_, dh_, dqkv_, dact_, dup_, scores_;
  // With bf16 GEMM outputs: d(act) (N, bf16_ld(F)) of the Mlp, d(ctx) (N, bf16_ld(D)), d(qkv)
  // (N, bf16_ld(3D)), and dn16_ (N, bf16_ld(D)): the input gradient the qkv linear and the Mlp
  // hand their norm's backward.
  cuda::DeviceBuffer<__nv_bfloat16> dact16_, dctx16_, dqkv16_, dn16_;
  // With bf16 GEMM outputs: the branch outputs (N, bf16_ld(D)) of the out linear and the Mlp's fc2,
  // which only the residual-norm kernels read (tmp_ holds them in fp32 otherwise).
  cuda::DeviceBuffer<__nv_bfloat16> tmp16_;
  // Packed rows (training): the row list on host and device, its length, attention's segments
  // and packed tokens, and the embeddings' full-layout scratch.
  bool packed_ = false;
  std::int64_t rows_n_ = 0;
  std::vector<std::int32_t> rows_host_, targets_host_;
  cuda::DeviceBuffer<std::int32_t> rows_;
  std::vector<std::int32_t> seg_host_;  // attention: B + 1 offsets, then the packed tokens
  cuda::DeviceBuffer<std::int32_t> seg_;
  cuda::DeviceBuffer<float> full_;  // the embeddings in the full (B·L, D) layout
  // MoE: one device layer per block (it keeps its own activations), and the padding mask of the
  // computed rows.
  std::vector<std::unique_ptr<MoeLayer>> moe_;
  // Evaluation and inference on the device: targets/ranks/offsets, exclusions, top-k outputs.
  cuda::DeviceBuffer<std::int32_t> rank_i32_, excl_, topk_idx_;
  cuda::DeviceBuffer<float> topk_val_;
  std::vector<std::uint8_t> valid_host_;
  cuda::DeviceBuffer<std::uint8_t> valid_;
  double last_p_ = 0.0;
  std::uint64_t last_key_ = 0;
  bool act16_ = false;  // the last forward kept its GEMM-only activations in bf16
  bool out16_ = false;  // … and bf16 GEMM outputs (qkv, pre, d(act), d(ctx), d(qkv))
  // The last selected_log_probs() (batch 0: none pending) and its host and device arrays.
  struct Selection {
    std::int32_t batch = 0, len = 0, per_row = 0;
    std::int64_t count = 0;
  } sel_;
  std::vector<std::int32_t> sel_targets_, sel_host_, sel_rows_;
  std::vector<float> sel_logp_, sel_weights_;
  cuda::DeviceBuffer<std::int32_t> sel_i32_;  // item columns (P, J), then computed rows (P)
  cuda::DeviceBuffer<float> sel_f32_;         // log-probabilities (P, J) / weights (P, J + 1)
  // The data-parallel group this model sums its gradients in (join_group); null: one GPU.
  std::unique_ptr<nccl::Group> group_;
};

}  // namespace seqrec
