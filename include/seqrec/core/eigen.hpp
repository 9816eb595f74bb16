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

/// dst = lhs · rhs for a row-major dst (a map over a buffer): Eigen's `dst.noalias() = lhs * rhs`
/// zeroes dst in the calling thread before its multi-threaded GEMM adds into it, a serial pass
/// over what is often a step's largest buffer (the logits). This zeroes the rows in parallel and
/// then adds: the same GEMM on a zero destination, hence the same bits. Not for use inside a
/// parallel region (the zeroing would then run on one thread, which is only slower).
template <typename Dst, typename Lhs, typename Rhs>
void assign_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  const Eigen::Index rows = dst.rows();
#pragma omp parallel for schedule(static)
  for (Eigen::Index i = 0; i < rows; ++i) dst.row(i).setZero();
  dst.noalias() += lhs * rhs;
}

}  // namespace seqrec
