// Driving a model that lives on a device from host-compiled code.
//
// Model<Cfg, cuda::Backend> is defined in a .cuh header that only nvcc compiles, while the trainer,
// the evaluator and the example binaries are ordinary C++ translation units (they use fmt,
// Boost.Hana and OpenMP, which nvcc's front end does not take). The bridge is one virtual
// interface, DeviceModelBase, with the coarse operations a trainer needs — one call per training
// step, not per op, so the virtual dispatch costs nothing measurable — and a thin value type
// DeviceModel<Cfg> that forwards to it and looks to the trainer exactly like a CPU model.
//
// The device implementation is created by make_device_model<Cfg>(), declared here and defined
// by an explicit instantiation in a CUDA translation unit (see model/cuda_model_impl.cuh and
// SEQREC_INSTANTIATE_CUDA_MODEL). A program that links no such instantiation fails at link time,
// never at run time.
//
// Host/device coherence is explicit, as on Model<Cfg, cuda::Backend>: parameters() is the host
// copy, valid after download(); after changing host values (pretrained init, a loaded
// checkpoint) call upload(). train::train, io::save_checkpoint and io::load_checkpoint do this
// for every model that satisfies DeviceResident.
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/model/config.hpp"
#include "seqrec/model/model.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/train/adamw.hpp"

namespace seqrec {

namespace detail {
/// MoE of SiLU MLP experts (the CUDA model runs it through cuda::MoeLayer).
template <typename F>
inline constexpr bool kCudaMoe = false;
template <int E, int K>
inline constexpr bool kCudaMoe<policy::ffn::MoE<E, K, policy::ffn::Mlp<ops::Silu>>> = true;
}  // namespace detail

/// Whether Model<Cfg, cuda::Backend> implements Cfg's policies (model_cuda.cuh static_asserts
/// on the same test). Host code uses it to refuse `--device cuda` for a variant the CUDA backend
/// lacks, with a message instead of a link error.
template <typename Cfg>
inline constexpr bool kCudaImplements = [] {
  using P = typename Cfg::Position;
  using N = typename Cfg::Normalization;
  using F = typename Cfg::FeedForward;
  constexpr bool pos = std::is_same_v<P, policy::pos::Learned> ||
                       std::is_same_v<P, policy::pos::RoPE> || std::is_same_v<P, policy::pos::None>;
  constexpr bool norm =
      std::is_same_v<N, policy::norm::RMSNorm> || std::is_same_v<N, policy::norm::LayerNorm>;
  // MoE is CPU-only.
  constexpr bool ffn = std::is_same_v<F, policy::ffn::Mlp<ops::Relu>> ||
                       std::is_same_v<F, policy::ffn::Mlp<ops::Silu>> ||
                       std::is_same_v<F, policy::ffn::GatedMlp> || detail::kCudaMoe<F>;
  return pos && norm && ffn;
}();

/// A model whose parameters, gradients and optimiser state live on a device, with a host
/// ParameterStore that mirrors them on request. The trainer, the checkpoint functions and the
/// evaluator recognise such models by this concept.
template <typename M>
concept DeviceResident = requires(M& m, const train::AdamWOptions& o) {
  m.upload();
  m.download();
  m.zero_grads();
  m.reset_moments();
  { m.optimizer_step(o, 1e-3, std::int64_t{1}, 1.0) } -> std::convertible_to<double>;
};

/// A group of device models' identifier (NCCL's unique id, 128 bytes): made by one rank's
/// new_group_id(), sent to the others by the host's communicator, passed to every join_group().
using DeviceGroupId = std::array<char, 128>;

/// A device-resident model that can train data-parallel with copies of itself on other devices,
/// one per process: the group's gradient sum runs between the devices (NCCL), not on the host.
/// dist::start_replicas and dist::sum_gradients (dist/data_parallel.hpp) use it.
template <typename M>
concept DeviceParallel = DeviceResident<M> && requires(M& m, const DeviceGroupId& id) {
  { m.new_group_id() } -> std::same_as<DeviceGroupId>;
  m.join_group(id, 0, 1);
  m.allreduce_grads(1.0);
};

/// The operations of a device-resident model, type-erased. Token arrays and scores are HOST
/// arrays; see Model<Cfg, cuda::Backend> for the meaning of each call.
class DeviceModelBase {
 public:
  virtual ~DeviceModelBase() = default;
  virtual const ModelShape& shape() const noexcept = 0;
  virtual ParameterStore<float>& parameters() noexcept = 0;
  virtual ParamId item_embedding() const noexcept = 0;
  /// The device, in words (e.g. "cuda:0 NVIDIA H100 80GB HBM3").
  virtual std::string device_name() const = 0;
  virtual void initialise(std::uint64_t seed) = 0;
  virtual void upload() = 0;
  virtual void download() = 0;
  virtual void download_grads() = 0;
  virtual void zero_grads() = 0;
  virtual void reset_moments() = 0;
  virtual double optimizer_step(const train::AdamWOptions& o, double lr, std::int64_t step,
                                double clip) = 0;
  virtual double forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                                  std::int32_t batch, std::int32_t len, std::uint64_t dropout_key,
                                  std::int64_t* num_targets) = 0;
  virtual double loss(const std::int32_t* inputs, const std::int32_t* targets, std::int32_t batch,
                      std::int32_t len, std::uint64_t dropout_key) = 0;
  virtual void score_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                          float* scores) = 0;
  virtual void rank_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                         const std::int32_t* targets, const std::int32_t* excl_offsets,
                         const std::int32_t* excl_items, std::int64_t* ranks) = 0;
  virtual void top_k_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, int k,
                          std::int32_t* items, float* scores) = 0;
  virtual std::vector<std::vector<double>> take_expert_shares() = 0;
  virtual double aux_loss() const = 0;
  virtual void selected_log_probs(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                                  std::uint64_t dropout_key, const std::int64_t* rows,
                                  std::int64_t count, const std::int32_t* tokens,
                                  std::int32_t per_row, double* logp) = 0;
  virtual void selected_backward(const double* g, double scale) = 0;
  virtual DeviceGroupId new_group_id() = 0;
  virtual void join_group(const DeviceGroupId& id, int rank, int size) = 0;
  virtual void allreduce_grads(double weight) = 0;
};

/// Where a device model runs and how it computes.
struct DeviceOptions {
  int device = 0;     // CUDA device ordinal
  bool bf16 = false;  // bf16 GEMM operands with fp32 accumulation (false: fp32 throughout)
};

/// Creates the device implementation of Model<Cfg, ·> (defined in a CUDA translation unit by
/// SEQREC_INSTANTIATE_CUDA_MODEL(Cfg)). Parameters are drawn from `seed` exactly as the CPU model
/// draws them.
template <typename Cfg>
std::unique_ptr<DeviceModelBase> make_device_model(const ModelShape& shape, std::uint64_t seed,
                                                   const DeviceOptions& options);

/// Model<Cfg, ·> on a device, usable wherever the trainer or evaluator takes a model.
template <typename Cfg>
class DeviceModel {
 public:
  using T = float;
  using Config = Cfg;

  /// Through make_device_model<Cfg>, instantiated in one of the program's CUDA files.
  DeviceModel(const ModelShape& shape, std::uint64_t seed, const DeviceOptions& options = {})
      : impl_(make_device_model<Cfg>(shape, seed, options)) {}
  /// Around an implementation made elsewhere (model/device_plugin.hpp: load_device_model).
  explicit DeviceModel(std::unique_ptr<DeviceModelBase> impl) : impl_(std::move(impl)) {
    SEQREC_CHECK(impl_ != nullptr, "DeviceModel: no implementation");
  }
  DeviceModel(DeviceModel&&) noexcept = default;
  DeviceModel& operator=(DeviceModel&&) noexcept = default;

  static std::string describe() { return Cfg::describe(); }
  const ModelShape& shape() const noexcept { return impl_->shape(); }
  ParameterStore<T>& parameters() noexcept { return impl_->parameters(); }
  const ParameterStore<T>& parameters() const noexcept { return impl_->parameters(); }
  ParamId item_embedding() const noexcept { return impl_->item_embedding(); }
  std::int32_t num_items() const noexcept { return shape().vocab_size - kNumSpecialTokens; }
  std::string device_name() const { return impl_->device_name(); }

  void initialise(std::uint64_t seed) { impl_->initialise(seed); }
  void upload() { impl_->upload(); }
  void download() { impl_->download(); }
  void download_grads() { impl_->download_grads(); }
  void zero_grads() { impl_->zero_grads(); }
  void reset_moments() { impl_->reset_moments(); }
  double optimizer_step(const train::AdamWOptions& o, double lr, std::int64_t step, double clip) {
    return impl_->optimizer_step(o, lr, step, clip);
  }
  double forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                          std::int32_t batch, std::int32_t len, std::uint64_t dropout_key,
                          std::int64_t* num_targets) {
    return impl_->forward_backward(inputs, targets, batch, len, dropout_key, num_targets);
  }
  double loss(const std::int32_t* inputs, const std::int32_t* targets, std::int32_t batch,
              std::int32_t len, std::uint64_t dropout_key) {
    return impl_->loss(inputs, targets, batch, len, dropout_key);
  }
  void score_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, T* scores) {
    impl_->score_last(inputs, batch, len, scores);
  }
  /// Pessimistic ranks of target item columns, computed where the scores are (see
  /// Model<Cfg, cuda::Backend>::rank_last); eval::rank_cases uses it.
  void rank_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                 const std::int32_t* targets, const std::int32_t* excl_offsets,
                 const std::int32_t* excl_items, std::int64_t* ranks) {
    impl_->rank_last(inputs, batch, len, targets, excl_offsets, excl_items, ranks);
  }
  /// The k best item columns per row, computed where the scores are; eval::recommend uses it.
  void top_k_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, int k,
                  std::int32_t* items, T* scores) {
    impl_->top_k_last(inputs, batch, len, k, items, scores);
  }
  std::vector<std::vector<double>> take_expert_shares() { return impl_->take_expert_shares(); }
  double aux_loss() const { return impl_->aux_loss(); }

  /// DPO's head on the device (see Model::selected_log_probs): HOST positions, tokens and
  /// log-probabilities; only (count × per_row) values cross to the host.
  void selected_log_probs(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                          std::uint64_t dropout_key, const std::int64_t* rows, std::int64_t count,
                          const std::int32_t* tokens, std::int32_t per_row, double* logp) {
    impl_->selected_log_probs(inputs, batch, len, dropout_key, rows, count, tokens, per_row, logp);
  }
  void selected_backward(const double* g, double scale) { impl_->selected_backward(g, scale); }

  /// Data parallelism across devices (see DeviceParallel and Model<Cfg, cuda::Backend>).
  DeviceGroupId new_group_id() { return impl_->new_group_id(); }
  void join_group(const DeviceGroupId& id, int rank, int size) {
    impl_->join_group(id, rank, size);
  }
  void allreduce_grads(double weight) { impl_->allreduce_grads(weight); }

 private:
  std::unique_ptr<DeviceModelBase> impl_;
};

}  // namespace seqrec
