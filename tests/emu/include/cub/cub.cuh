// The host emulator's CUB: only what seqrec's kernels use, with CUB's documented results.
//   - BlockScan<T, N>::ExclusiveSum and BlockReduce<T, N>::Sum run through shared storage and
//     __syncthreads (so they need every thread of the block, as CUB's do).
//   - DeviceRadixSort::SortPairs and DeviceSegmentedRadixSort::SortKeysDescending are stable
//     sorts on the bits [begin_bit, end_bit) of the key's radix form (signed integers with the
//     sign bit flipped, as CUB orders them); with a null temp-storage pointer they only report
//     the bytes they need.
// It shadows the real <cub/cub.cuh> in emulated builds (its include folder comes first).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

namespace cub {

template <typename T, int BlockThreads>
class BlockScan {
 public:
  struct TempStorage {
    T values[BlockThreads];
    T total;
  };
  explicit BlockScan(TempStorage& s) : s_(s) {}

  /// output = the sum of the inputs of the threads before this one; aggregate = the block's sum.
  void ExclusiveSum(T input, T& output, T& aggregate) {
    const unsigned t = threadIdx.x;
    check();
    s_.values[t] = input;
    __syncthreads();
    if (t == 0) {
      T run{};
      for (int i = 0; i < BlockThreads; ++i) {
        const T v = s_.values[i];
        s_.values[i] = run;
        run = run + v;
      }
      s_.total = run;
    }
    __syncthreads();
    output = s_.values[t];
    aggregate = s_.total;
  }

 private:
  static void check() {
    if (blockDim.x * blockDim.y * blockDim.z != static_cast<unsigned>(BlockThreads)) __trap();
  }
  TempStorage& s_;
};

template <typename T, int BlockThreads>
class BlockReduce {
 public:
  struct TempStorage {
    T values[BlockThreads];
  };
  explicit BlockReduce(TempStorage& s) : s_(s) {}

  /// The block's sum, in thread 0 (the others' results are undefined in CUB; here, their input).
  T Sum(T input) {
    if (blockDim.x * blockDim.y * blockDim.z != static_cast<unsigned>(BlockThreads)) __trap();
    const unsigned t = threadIdx.x;
    s_.values[t] = input;
    __syncthreads();
    if (t != 0) return input;
    T s{};
    for (int i = 0; i < BlockThreads; ++i) s = s + s_.values[i];
    return s;
  }

 private:
  TempStorage& s_;
};

template <typename T>
struct DoubleBuffer {
  T* d_buffers[2];
  int selector = 0;
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate} {}
  T* Current() const { return d_buffers[selector]; }
  T* Alternate() const { return d_buffers[selector ^ 1]; }
};

namespace emu_detail {

/// The key's radix form: unsigned, in the order CUB sorts (signed: sign bit flipped).
template <typename K>
std::uint64_t radix(K k, int begin_bit, int end_bit) {
  static_assert(std::is_integral_v<K>, "emulated radix sort: integer keys only");
  using U = std::make_unsigned_t<K>;
  auto u = static_cast<std::uint64_t>(static_cast<U>(k));
  if constexpr (std::is_signed_v<K>) u ^= std::uint64_t{1} << (8 * sizeof(K) - 1);
  const int width = end_bit - begin_bit;
  const std::uint64_t mask = width >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << width) - 1;
  return (u >> begin_bit) & mask;
}

inline bool query(void* temp, std::size_t& bytes) {
  if (temp == nullptr) {
    bytes = 16;
    return true;
  }
  return false;
}

}  // namespace emu_detail

struct DeviceRadixSort {
  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* temp, std::size_t& bytes, const K* keys_in, K* keys_out,
                               const V* values_in, V* values_out, N num_items, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    if (emu_detail::query(temp, bytes)) return cudaSuccess;
    const auto n = static_cast<std::size_t>(num_items);
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return emu_detail::radix(keys_in[a], begin_bit, end_bit) <
             emu_detail::radix(keys_in[b], begin_bit, end_bit);
    });
    std::vector<K> k(n);
    std::vector<V> v(n);
    for (std::size_t i = 0; i < n; ++i) {
      k[i] = keys_in[order[i]];
      v[i] = values_in[order[i]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

struct DeviceSegmentedRadixSort {
  template <typename K, typename Offset>
  static cudaError_t SortKeysDescending(void* temp, std::size_t& bytes, DoubleBuffer<K>& keys,
                                        int num_items, int num_segments, Offset begin_offsets,
                                        Offset end_offsets, int begin_bit = 0,
                                        int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    if (emu_detail::query(temp, bytes)) return cudaSuccess;
    const K* in = keys.Current();
    K* out = keys.Alternate();
    std::copy(in, in + num_items, out);
    for (int s = 0; s < num_segments; ++s) {
      std::stable_sort(out + begin_offsets[s], out + end_offsets[s], [&](K a, K b) {
        return emu_detail::radix(a, begin_bit, end_bit) > emu_detail::radix(b, begin_bit, end_bit);
      });
    }
    keys.selector ^= 1;
    return cudaSuccess;
  }
};

}  // namespace cub
