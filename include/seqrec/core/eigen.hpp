// Eigen aliases used by the CPU ops: row-major maps over raw buffers, so every tensor in seqrec is
// a flat array with its shape written beside it, and Eigen only supplies the GEMM and reductions.
#pragma once

#include <Eigen/Core>

namespace seqrec {

template <typename T>
using MatRM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MapRM = Eigen::Map<MatRM<T>>;
template <typename T>
using CMapRM = Eigen::Map<const MatRM<T>>;
/// A row-major block inside a wider row-major buffer (e.g. one head's columns of the QKV buffer).
template <typename T>
using StridedRM = Eigen::Map<MatRM<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using CStridedRM = Eigen::Map<const MatRM<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using VecMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <typename T>
using CVecMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;

}  // namespace seqrec
