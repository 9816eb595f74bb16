// Loading device models at run time: a program that may train on a GPU links no CUDA library;
// when asked for a device model it dlopens a plugin module built by nvcc (the trainers' is
// examples/common/cuda_models.cu → libseqrec_cuda_plugin.so) and calls its one C entry point.
// A CPU-only run therefore starts on machines without the CUDA runtime and does not map
// cuBLASLt (measured: +150 MB of resident memory when the trainers linked it directly).
//
// Where the plugin is looked for, in order: $SEQREC_CUDA_PLUGIN; next to the executable; one
// folder up from it (build/examples/x and build/tests/y find build/libseqrec_cuda_plugin.so,
// also after the build folder was moved, as the GPU check does); the path compiled in as
// SEQREC_CUDA_PLUGIN_PATH. Errors name every place tried and dlerror()'s reason.
#pragma once

#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/model/device_model.hpp"

/// The plugin's entry point: creates Model<Cfg, ·> for the Cfg whose describe() is `variant`, or
/// returns null with a message in err.
#define SEQREC_CUDA_PLUGIN_ENTRY seqrec_cuda_plugin_create_v1

namespace seqrec {

using DevicePluginEntry = DeviceModelBase* (*)(const char* variant, const ModelShape* shape,
                                               std::uint64_t seed, const DeviceOptions* options,
                                               char* err, std::size_t err_len);

inline constexpr const char* kCudaPluginFile = "libseqrec_cuda_plugin.so";

namespace detail {
/// The plugin's entry point, opened once per process (the module stays loaded: models it made
/// may outlive any caller).
inline DevicePluginEntry device_plugin_entry() {
  static DevicePluginEntry entry = [] {
    std::vector<std::filesystem::path> tried;
    if (const char* env = std::getenv("SEQREC_CUDA_PLUGIN"); env != nullptr && *env != '\0')
      tried.emplace_back(env);
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      tried.push_back(exe.parent_path() / kCudaPluginFile);
      tried.push_back(exe.parent_path().parent_path() / kCudaPluginFile);
    }
#ifdef SEQREC_CUDA_PLUGIN_PATH
    tried.emplace_back(SEQREC_CUDA_PLUGIN_PATH);
#endif
    std::string why;
    for (const auto& p : tried) {
      if (!std::filesystem::exists(p, ec)) {
        why += "\n  " + p.string() + ": not found";
        continue;
      }
      void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h == nullptr) {
        const char* e = dlerror();
        why += "\n  " + p.string() + ": " + (e ? e : "dlopen failed");
        continue;
      }
      dlerror();
      void* sym = dlsym(h, "seqrec_cuda_plugin_create_v1");
      if (sym == nullptr) {
        why += "\n  " + p.string() + ": no entry point seqrec_cuda_plugin_create_v1";
        continue;
      }
      return reinterpret_cast<DevicePluginEntry>(sym);
    }
    throw Error(std::string("--device cuda: cannot load the CUDA plugin ") + kCudaPluginFile +
                " (build the seqrec_cuda_plugin target, or set SEQREC_CUDA_PLUGIN); tried:" + why);
  }();
  return entry;
}
}  // namespace detail

/// Model<Cfg, ·> on a device, created by the CUDA plugin.
template <typename Cfg>
DeviceModel<Cfg> load_device_model(const ModelShape& shape, std::uint64_t seed,
                                   const DeviceOptions& options = {}) {
  const DevicePluginEntry create = detail::device_plugin_entry();
  std::array<char, 1024> err{};
  DeviceModelBase* m =
      create(Cfg::describe().c_str(), &shape, seed, &options, err.data(), err.size());
  if (m == nullptr) throw Error(err.data());
  return DeviceModel<Cfg>(std::unique_ptr<DeviceModelBase>(m));
}

}  // namespace seqrec
