// Checkpoints: a model's parameters, both AdamW moments, the training position and the whole
// configuration in one safetensors file, readable from Python's safetensors as well.
//
//   tensors   param/<name>, adam_m/<name>, adam_v/<name>    (dtype of the model: F32 or F64)
//   metadata  format = "seqrec-checkpoint-1", variant = Config::describe(),
//             config = JSON (model shape and whatever the trainer adds), state = JSON
//             {step, epoch, batch_in_epoch}
//
// Saving goes through a temporary file and a rename (io/atomic_file.hpp). Loading checks that the
// file is a seqrec checkpoint of the same variant and that every tensor has the shape and dtype
// the model expects, and says which one does not.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "seqrec/core/eigen.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/io/safetensors.hpp"
#include "seqrec/model/shape.hpp"

namespace seqrec::io {

inline constexpr const char* kCheckpointFormat = "seqrec-checkpoint-1";

/// Where training stands: optimiser steps done, current epoch, next batch within it.
struct TrainState {
  std::int64_t step = 0;
  std::int64_t epoch = 0;
  std::int64_t batch_in_epoch = 0;
};
inline void to_json(nlohmann::json& j, const TrainState& s) {
  j = {{"step", s.step}, {"epoch", s.epoch}, {"batch_in_epoch", s.batch_in_epoch}};
}
inline void from_json(const nlohmann::json& j, TrainState& s) {
  j.at("step").get_to(s.step);
  j.at("epoch").get_to(s.epoch);
  j.at("batch_in_epoch").get_to(s.batch_in_epoch);
}

/// Writes model + optimiser state. `config` must hold "shape" (a ModelShape); any other keys are
/// kept as they are (the trainer stores its options there).
/// A device-resident model (one with download()) is downloaded first, so `model` is not const.
template <typename Model>
void save_checkpoint(const std::filesystem::path& path, Model& model, const TrainState& state,
                     nlohmann::json config) {
  using T = typename Model::T;
  if constexpr (requires { model.download(); }) model.download();
  const auto& store = model.parameters();
  SafetensorsData data;
  config["shape"] = model.shape();
  data.metadata["format"] = kCheckpointFormat;
  data.metadata["variant"] = Model::describe();
  data.metadata["config"] = config.dump();
  data.metadata["state"] = nlohmann::json(state).dump();
  for (const auto& e : store.entries()) {
    auto put = [&](const std::string& prefix, const AlignedVector<T>& all) {
      data.tensors[prefix + e.name] =
          Tensor::from<T>(std::span<const T>(all.data() + e.offset, e.numel), e.shape);
    };
    put("param/", store.values());
    put("adam_m/", store.moment1());
    put("adam_v/", store.moment2());
  }
  save_safetensors(path, data);
}

/// What a checkpoint says about itself, without building a model.
struct CheckpointInfo {
  std::string variant;
  nlohmann::json config;
  TrainState state;
};

inline CheckpointInfo read_checkpoint_info(const SafetensorsData& data, const std::string& file) {
  auto meta = [&](const std::string& key) -> const std::string& {
    auto it = data.metadata.find(key);
    if (it == data.metadata.end())
      throw InputError(file, 0, "not a seqrec checkpoint: metadata has no '" + key + "'", "");
    return it->second;
  };
  if (meta("format") != kCheckpointFormat)
    throw InputError(file, 0,
                     std::string("unsupported checkpoint format, expected ") + kCheckpointFormat,
                     meta("format"));
  CheckpointInfo info;
  info.variant = meta("variant");
  try {
    info.config = nlohmann::json::parse(meta("config"));
    info.state = nlohmann::json::parse(meta("state")).get<TrainState>();
    (void)info.config.at("shape").get<ModelShape>();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(file, 0, std::string("checkpoint metadata is malformed: ") + e.what(), "");
  }
  return info;
}

inline CheckpointInfo read_checkpoint_info(const std::filesystem::path& path) {
  return read_checkpoint_info(load_safetensors(path), path.string());
}

/// Loads parameters (and, when with_optimizer, both moments) into `model`, which must have been
/// built with the checkpoint's shape and variant. Returns the stored metadata.
template <typename Model>
CheckpointInfo load_checkpoint(const std::filesystem::path& path, Model& model,
                               bool with_optimizer = true) {
  using T = typename Model::T;
  const std::string file = path.string();
  const SafetensorsData data = load_safetensors(path);
  CheckpointInfo info = read_checkpoint_info(data, file);
  if (info.variant != Model::describe())
    throw InputError(
        file, 0,
        "checkpoint is of another model variant; this binary trains '" + Model::describe() + "'",
        info.variant);
  const ModelShape stored = info.config.at("shape").get<ModelShape>();
  if (nlohmann::json(stored) != nlohmann::json(model.shape()))
    throw InputError(
        file, 0,
        "checkpoint shape differs from the model's " + nlohmann::json(model.shape()).dump(),
        nlohmann::json(stored).dump());
  // A device-resident model: start from its current state (the moments a parameters-only load
  // keeps), load on the host, then upload.
  constexpr bool on_device = requires { model.upload(); };
  if constexpr (on_device) model.download();
  auto& store = model.parameters();
  for (const auto& e : store.entries()) {
    auto get = [&](const std::string& prefix, AlignedVector<T>& all) {
      const std::string name = prefix + e.name;
      auto it = data.tensors.find(name);
      if (it == data.tensors.end()) throw InputError(file, 0, "checkpoint lacks tensor", name);
      const Tensor& t = it->second;
      if (t.shape != e.shape)
        throw InputError(file, 0, "tensor " + name + " has the wrong shape",
                         nlohmann::json(t.shape).dump());
      const auto values = t.as<T>();  // throws naming both dtypes on mismatch
      std::copy(values.begin(), values.end(), all.begin() + static_cast<std::ptrdiff_t>(e.offset));
    };
    get("param/", store.values());
    if (with_optimizer) {
      get("adam_m/", store.moment1());
      get("adam_v/", store.moment2());
    }
  }
  if constexpr (on_device) model.upload();
  return info;
}

}  // namespace seqrec::io
