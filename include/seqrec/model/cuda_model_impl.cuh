// The CUDA side of model/device_model.hpp: DeviceModelBase implemented by
// Model<Cfg, cuda::Backend> with its own cuda::Backend, and the macro that instantiates
// make_device_model<Cfg> in a CUDA translation unit:
//
//   // my_models.cu (compiled by nvcc, linked into the host program)
//   #include <seqrec/model/cuda_model_impl.cuh>
//   SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::OursConfig)
//
// Host code then builds seqrec::DeviceModel<seqrec::OursConfig>(shape, seed) without including
// any CUDA header.
#pragma once

#include <memory>
#include <string>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/model/device_model.hpp"
#include "seqrec/model/model_cuda.cuh"

namespace seqrec::cuda {

static_assert(std::is_same_v<nccl::Id, DeviceGroupId>,
              "DeviceGroupId must hold NCCL's unique id (NCCL_UNIQUE_ID_BYTES)");

template <typename Cfg>
class DeviceModelImpl final : public DeviceModelBase {
 public:
  DeviceModelImpl(const ModelShape& shape, std::uint64_t seed, const DeviceOptions& o)
      : backend_(checked_device(o.device)), model_(shape, backend_, seed) {
    backend_.set_bf16(o.bf16);
    cudaDeviceProp prop{};
    SEQREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
    name_ = "cuda:" + std::to_string(o.device) + " " + prop.name + (o.bf16 ? " (bf16)" : " (fp32)");
  }
  const ModelShape& shape() const noexcept override { return model_.shape(); }
  ParameterStore<float>& parameters() noexcept override { return model_.parameters(); }
  ParamId item_embedding() const noexcept override { return model_.item_embedding(); }
  std::string device_name() const override { return name_; }
  void initialise(std::uint64_t seed) override { model_.initialise(seed); }
  void upload() override { model_.upload(); }
  void download() override { model_.download(); }
  void download_grads() override { model_.download_grads(); }
  void zero_grads() override { model_.zero_grads(); }
  void reset_moments() override { model_.reset_moments(); }
  double optimizer_step(const train::AdamWOptions& o, double lr, std::int64_t step,
                        double clip) override {
    return model_.optimizer_step(o, lr, step, clip);
  }
  double forward_backward(const std::int32_t* inputs, const std::int32_t* targets,
                          std::int32_t batch, std::int32_t len, std::uint64_t dropout_key,
                          std::int64_t* num_targets) override {
    return model_.forward_backward(inputs, targets, batch, len, dropout_key, num_targets);
  }
  double loss(const std::int32_t* inputs, const std::int32_t* targets, std::int32_t batch,
              std::int32_t len, std::uint64_t dropout_key) override {
    return model_.loss(inputs, targets, batch, len, dropout_key);
  }
  void score_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                  float* scores) override {
    model_.score_last(inputs, batch, len, scores);
  }
  void rank_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                 const std::int32_t* targets, const std::int32_t* excl_offsets,
                 const std::int32_t* excl_items, std::int64_t* ranks) override {
    model_.rank_last(inputs, batch, len, targets, excl_offsets, excl_items, ranks);
  }
  void top_k_last(const std::int32_t* inputs, std::int32_t batch, std::int32_t len, int k,
                  std::int32_t* items, float* scores) override {
    model_.top_k_last(inputs, batch, len, k, items, scores);
  }
  std::vector<std::vector<double>> take_expert_shares() override {
    return model_.take_expert_shares();
  }
  double aux_loss() const override { return model_.aux_loss(); }
  void selected_log_probs(const std::int32_t* inputs, std::int32_t batch, std::int32_t len,
                          std::uint64_t dropout_key, const std::int64_t* rows, std::int64_t count,
                          const std::int32_t* tokens, std::int32_t per_row, double* logp) override {
    model_.selected_log_probs(inputs, batch, len, dropout_key, rows, count, tokens, per_row, logp);
  }
  void selected_backward(const double* g, double scale) override {
    model_.selected_backward(g, scale);
  }
  DeviceGroupId new_group_id() override { return Model<Cfg, Backend>::new_group_id(); }
  void join_group(const DeviceGroupId& id, int rank, int size) override {
    model_.join_group(id, rank, size);
  }
  void allreduce_grads(double weight) override { model_.allreduce_grads(weight); }

 private:
  /// The ordinal, after checking that a CUDA device answers and that it exists.
  static int checked_device(int device) {
    std::string why;
    const int n = cuda_device_available(&why);
    if (n == 0) throw ::seqrec::Error("--device cuda: no CUDA device answers (" + why + ")");
    if (device < 0 || device >= n)
      throw ::seqrec::Error("--device cuda:" + std::to_string(device) + ": only " +
                            std::to_string(n) + " CUDA device(s) here");
    return device;
  }

  Backend backend_;  // before model_: the model keeps a pointer to it
  Model<Cfg, Backend> model_;
  std::string name_;
};

}  // namespace seqrec::cuda

namespace seqrec {
template <typename Cfg>
std::unique_ptr<DeviceModelBase> make_device_model(const ModelShape& shape, std::uint64_t seed,
                                                   const DeviceOptions& options) {
  return std::make_unique<cuda::DeviceModelImpl<Cfg>>(shape, seed, options);
}
}  // namespace seqrec

/// Explicitly instantiates seqrec::make_device_model<Cfg> in this (CUDA) translation unit, so host
/// code that only declares it links against this definition. Use at global scope, once per
/// configuration per program.
#define SEQREC_INSTANTIATE_CUDA_MODEL(Cfg)                                            \
  template std::unique_ptr<::seqrec::DeviceModelBase> seqrec::make_device_model<Cfg>( \
      const ::seqrec::ModelShape&, std::uint64_t, const ::seqrec::DeviceOptions&);
