// Eigen aliases used by the CPU ops: row-major maps over raw buffers, so every tensor in seqrec is
// a flat array with its shape written beside it, and Eigen only supplies the GEMM and reductions.
#pragma once

#include <Eigen/Core>
#include <vector>

namespace seqrec {

/// Every float buffer is 64-byte aligned (Eigen's max): Eigen peels unaligned heads off its
/// vectorised reductions, so the summation order — and the last bits of a result — would
/// otherwise depend on where malloc put a buffer, and two identical runs could differ.
template <typename T>
using AlignedVector = std::vector<T, Eigen::aligned_allocator<T>>;

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
