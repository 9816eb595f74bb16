// The CUDA plugin of the trainers: one CUDA model per variant the trainers can run with
// --device cuda, built by nvcc into the shared module libseqrec_cuda_plugin.so. The trainers do
// not link it: they dlopen it only when asked for a GPU (model/device_plugin.hpp), so a CPU run
// neither needs the CUDA libraries installed nor pays for loading cuBLASLt.
//
// The module's one entry point takes the variant's describe() string and returns a
// DeviceModelBase, or null with the error in `err` (no exception crosses the C boundary).
#include <algorithm>
#include <cstring>
#include <exception>
#include <seqrec/model/config.hpp>
#include <seqrec/model/cuda_model_impl.cuh>
#include <seqrec/model/device_plugin.hpp>
#include <string>

namespace {

template <typename Cfg>
bool try_make(const char* variant, const seqrec::ModelShape& shape, std::uint64_t seed,
              const seqrec::DeviceOptions& options, seqrec::DeviceModelBase** out) {
  if (Cfg::describe() != variant) return false;
  *out = seqrec::make_device_model<Cfg>(shape, seed, options).release();
  return true;
}

}  // namespace

extern "C" seqrec::DeviceModelBase* SEQREC_CUDA_PLUGIN_ENTRY(const char* variant,
                                                             const seqrec::ModelShape* shape,
                                                             std::uint64_t seed,
                                                             const seqrec::DeviceOptions* options,
                                                             char* err, std::size_t err_len) {
  auto fail = [&](const std::string& why) -> seqrec::DeviceModelBase* {
    if (err != nullptr && err_len > 0) {
      const std::size_t n = std::min(why.size(), err_len - 1);
      std::memcpy(err, why.data(), n);
      err[n] = '\0';
    }
    return nullptr;
  };
  try {
    seqrec::DeviceModelBase* m = nullptr;
    using namespace seqrec;
    const bool found = try_make<SasRecConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<SasRecSiluConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<OursConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<OursRandomConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<LearnedPeConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<GatedConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<SasRecLayerNormConfig>(variant, *shape, seed, *options, &m) ||
                       try_make<MoeConfig>(variant, *shape, seed, *options, &m);
    if (!found) return fail(std::string("the CUDA plugin has no variant '") + variant + "'");
    return m;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
