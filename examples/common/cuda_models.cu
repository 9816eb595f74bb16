// The CUDA instantiations of every variant the trainers can run with --device cuda: one
// make_device_model<Cfg> per configuration that Model<Cfg, cuda::Backend> implements
// (kCudaImplements). Compiled by nvcc into the seqrec_cuda_models library, which the example
// binaries link when the build has CUDA; the binaries themselves stay ordinary C++.
#include <seqrec/model/config.hpp>
#include <seqrec/model/cuda_model_impl.cuh>

SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::SasRecConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::SasRecSiluConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::OursConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::OursRandomConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::LearnedPeConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::GatedConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::SasRecLayerNormConfig)
SEQREC_INSTANTIATE_CUDA_MODEL(seqrec::MoeConfig)
