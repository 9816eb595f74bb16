// seqrec: the user's door. Including this header brings the whole CPU library: data loading,
// the model types and their policies, training, evaluation and checkpoints.
//
//   #include <seqrec/model.hpp>
//   seqrec::cpu::Backend cpu(2);
//   seqrec::Model<seqrec::SasRecConfig, seqrec::cpu::Backend> model(shape, cpu, /*seed=*/42);
//
// CUDA code lives in .cuh headers included only by CUDA translation units.
#pragma once

#include "seqrec/backend/cpu.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/core/progress.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/data/batcher.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/data/interactions.hpp"
#include "seqrec/data/pretrained.hpp"
#include "seqrec/data/synthetic.hpp"
#include "seqrec/data/vocabulary.hpp"
#include "seqrec/eval/analysis.hpp"
#include "seqrec/eval/baselines.hpp"
#include "seqrec/eval/evaluator.hpp"
#include "seqrec/eval/metrics.hpp"
#include "seqrec/eval/recommend.hpp"
#include "seqrec/io/atomic_file.hpp"
#include "seqrec/io/checkpoint.hpp"
#include "seqrec/io/npy.hpp"
#include "seqrec/io/safetensors.hpp"
#include "seqrec/model/config.hpp"
#include "seqrec/model/model.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/train/adamw.hpp"
#include "seqrec/train/dpo.hpp"
#include "seqrec/train/schedule.hpp"
#include "seqrec/train/trainer.hpp"

namespace seqrec {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace seqrec
