// Full-catalogue ranking on the GPU, fp32 scores (B, I) row-major in device memory:
//
//   topk_rows    the k highest scores of every row, in descending order, ties broken by the lower
//                item index: exactly a stable CPU sort of the row by (−score, index), cut at k.
//   target_rank  the rank of one target item per row, with the CPU evaluator's rule
//                (eval::pessimistic_rank in eval/metrics.hpp), bit for bit.
//
// Order used by topk_rows. Scores are mapped to 32-bit unsigned keys that sort like the floats:
// key(x) = bits(x) | 0x80000000 for x >= 0, ~bits(x) for x < 0 — with −0 folded onto +0 (so
// −0 and +0 tie, as they compare equal) and every NaN mapped to 0xFFFFFFFF: a NaN ranks above
// +inf, all NaNs tie with each other and are ordered by index. (The evaluator also ranks NaN
// scores ahead of a target; here they come first in the top-k so that a broken model shows.)
// out_val holds the original score bits of the chosen items (a −0 stays −0, a NaN its payload).
//
// Design of topk_rows (CCCL 3.0 here has no cub::DeviceTopK / BlockTopK):
//  * k <= kTopkMaxK (256), the common case (k = 10 … 100, I ≈ 17k … 100k): one block of 256
//    threads per row runs an exact radix select on the keys, 8 bits at a time from the top: a
//    256-bin shared-memory histogram (integer atomics: exact counts, so the result does not
//    depend on timing) of the keys that match the prefix found so far picks the digit of the k-th
//    largest key. After 4 passes the block knows T, the k-th largest key, and how many items with
//    key == T belong in the answer (need_eq; the other k − need_eq have key > T). A fifth pass
//    walks the row in index order, tile by tile; a cub::BlockScan over the flags (key > T,
//    key == T) gives each selected item its slot, so the need_eq lowest-index items with key == T
//    are kept. The k candidates (≤ 256, in shared memory) are then placed by rank: candidate c
//    goes to position #{j : key_j > key_c or (key_j == key_c and idx_j < idx_c)} — the pairs are
//    distinct, so that is a permutation. The row is read 5 times (from L2 when it fits), with no
//    temporary memory and no sort of the whole row: about 5·B·I·4 bytes of traffic.
//    A segmented sort of (key, index) pairs was the simpler alternative, but it writes and reads
//    the whole B × I row set several times over (plus 2·B·I·8 bytes of buffers) to keep 10 items.
//  * k > kTopkMaxK: the simple path. 64-bit keys (key << 32 | ~index) are sorted per row with
//    cub::DeviceSegmentedRadixSort::SortKeysDescending; since the low word orders equal scores
//    by ascending index, the result does not even rely on the sort's stability. Needs B·I < 2³¹
//    and 2·B·I·8 bytes of temporary device memory (callers can split the rows into batches).
//
// Rule of target_rank, copied from eval::pessimistic_rank (1-based, pessimistic ties):
//   rank = 1 + #{ j != t : !(s_j < s_t) }  −  #{ distinct excluded e != t, 0 <= e < I : !(s_e <
//   s_t) }
// so items with an equal score count ahead of the target whatever their index, a NaN score ranks
// ahead of the target, and a NaN target gets rank I (minus exclusions). NB: this is NOT "ahead
// if greater, or equal with a lower index" — the evaluator is pessimistic on ties, and this op
// matches the evaluator (rank 1 = best). Exclusions (the evaluator's exclude_history) are an
// optional CSR list of item column indices per row: duplicates, the target itself and indices
// outside [0, I) are ignored, as in pessimistic_rank. A target outside [0, I) yields rank 0
// (never a valid rank). One block per row; integer counts reduced with cub::BlockReduce: exact.
#pragma once

#include <cstdint>
#include <cub/cub.cuh>
#include <string>

#include "seqrec/backend/cuda.cuh"

namespace seqrec::cuda {

namespace detail {
constexpr int kTopkThreads = 256;  // threads per row block (topk select and target_rank)
constexpr int kTopkMaxK = 256;     // largest k of the block-select path; larger k sorts the rows

/// Order-preserving key of a score: larger score → larger key; −0 → key(+0); NaN → 0xFFFFFFFF.
/// Pure integer arithmetic, so compiler flags on float comparisons cannot change it.
__host__ __device__ __forceinline__ std::uint32_t topk_key_bits(std::uint32_t b) {
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFFFFFFu;  // NaN (any sign, any payload)
  if (b == 0x80000000u) b = 0u;                             // −0 ties with +0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ std::uint32_t topk_key(float x) {
  return topk_key_bits(__float_as_uint(x));
}

/// The block-select path (k <= kTopkMaxK). Grid: B blocks of kTopkThreads. out_idx, out_val (B, k).
static __global__ void __launch_bounds__(kTopkThreads)
    topk_select_kernel(const float* __restrict__ scores, std::int64_t items, int k,
                       std::int32_t* __restrict__ out_idx, float* __restrict__ out_val) {
  using Scan = cub::BlockScan<unsigned, kTopkThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ unsigned hist[256];
  __shared__ std::uint32_t cand_key[kTopkMaxK];
  __shared__ std::int32_t cand_idx[kTopkMaxK];
  __shared__ unsigned s_digit;
  __shared__ int s_rem;

  const std::int64_t row = blockIdx.x;
  const float* s = scores + row * items;
  const int tid = threadIdx.x;

  // Radix select. Invariant: among the items whose key matches `prefix` on the bits of `mask`,
  // at least `rem` exist, and the answer takes exactly the `rem` largest of them (together with
  // the k − rem items already known to be larger).
  std::uint32_t prefix = 0, mask = 0;
  int rem = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kTopkThreads) hist[b] = 0;
    __syncthreads();
    for (std::int64_t i = tid; i < items; i += kTopkThreads) {
      const std::uint32_t key = topk_key(s[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      // Highest digit whose bin, with every bin above it, holds at least rem items.
      unsigned above = 0;
      int digit = 255;
      for (; digit > 0; --digit) {
        if (above + hist[digit] >= static_cast<unsigned>(rem)) break;
        above += hist[digit];
      }
      s_digit = static_cast<unsigned>(digit);
      s_rem = rem - static_cast<int>(above);
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 0xFFu << shift;
    rem = s_rem;
    __syncthreads();  // everyone has read s_digit / s_rem and hist before they are reused
  }
  const std::uint32_t kth = prefix;  // the k-th largest key
  const int need_eq = rem;           // items with key == kth to keep (the lowest indices)
  const int n_gt = k - rem;          // items with key > kth: all kept

  // Collect in index order. flags: bit 0 = key > kth, bit 16 = key == kth; the exclusive scan
  // of the packed flags counts both at once (a tile has 256 items, so no carry between halves).
  unsigned gt_base = 0, eq_base = 0;
  for (std::int64_t base = 0; base < items; base += kTopkThreads) {
    const std::int64_t i = base + tid;
    std::uint32_t key = 0;
    unsigned flags = 0;
    if (i < items) {
      key = topk_key(s[i]);
      flags = key > kth ? 1u : (key == kth ? 0x10000u : 0u);
    }
    unsigned pos = 0, total = 0;
    Scan(scan_tmp).ExclusiveSum(flags, pos, total);
    if (flags == 1u) {
      const unsigned p = gt_base + (pos & 0xFFFFu);  // < n_gt
      cand_key[p] = key;
      cand_idx[p] = static_cast<std::int32_t>(i);
    } else if (flags == 0x10000u) {
      const unsigned p = eq_base + (pos >> 16);
      if (p < static_cast<unsigned>(need_eq)) {
        cand_key[n_gt + p] = key;
        cand_idx[n_gt + p] = static_cast<std::int32_t>(i);
      }
    }
    gt_base += total & 0xFFFFu;
    eq_base += total >> 16;
    __syncthreads();  // scan_tmp is reused by the next tile
    if (gt_base == static_cast<unsigned>(n_gt) && eq_base >= static_cast<unsigned>(need_eq))
      break;  // block-uniform: every thread holds the same totals
  }
  __syncthreads();

  // Place the k candidates by rank (descending key, then ascending index).
  for (int c = tid; c < k; c += kTopkThreads) {
    const std::uint32_t kc = cand_key[c];
    const std::int32_t ic = cand_idx[c];
    int r = 0;
    for (int j = 0; j < k; ++j) {
      const std::uint32_t kj = cand_key[j];
      r += (kj > kc) || (kj == kc && cand_idx[j] < ic);
    }
    out_idx[row * k + r] = ic;
    out_val[row * k + r] = s[ic];
  }
}

/// keys[b·I + i] = key(scores[b·I + i]) << 32 | ~i (the large-k path). Grid-stride.
static __global__ void topk_make_keys_kernel(const float* __restrict__ scores,
                                             std::uint64_t* __restrict__ keys, std::int64_t total,
                                             std::int64_t items) {
  for (std::int64_t x = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = x % items;
    keys[x] = (static_cast<std::uint64_t>(topk_key(scores[x])) << 32) |
              static_cast<std::uint64_t>(~static_cast<std::uint32_t>(i));
  }
}

/// offsets[b] = b · I, b = 0 … B (segment bounds of the large-k sort).
static __global__ void topk_offsets_kernel(int* __restrict__ offsets, std::int64_t rows,
                                           std::int64_t items) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b <= rows) offsets[b] = static_cast<int>(b * items);
}

/// out (B, k) from the first k sorted keys of every row (the large-k path). Grid-stride.
static __global__ void topk_gather_kernel(const float* __restrict__ scores,
                                          const std::uint64_t* __restrict__ sorted,
                                          std::int64_t rows, std::int64_t items, int k,
                                          std::int32_t* __restrict__ out_idx,
                                          float* __restrict__ out_val) {
  const std::int64_t total = rows * k;
  for (std::int64_t x = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < total;
       x += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = x / k, j = x - b * k;
    const auto i = static_cast<std::int32_t>(~static_cast<std::uint32_t>(sorted[b * items + j]));
    out_idx[x] = i;
    out_val[x] = scores[b * items + i];
  }
}

/// See target_rank(). Grid: B blocks of kTopkThreads.
static __global__ void __launch_bounds__(kTopkThreads)
    target_rank_kernel(const float* __restrict__ scores, const std::int32_t* __restrict__ target,
                       std::int64_t items, const std::int32_t* __restrict__ excl_offsets,
                       const std::int32_t* __restrict__ excl_items,
                       std::int32_t* __restrict__ rank) {
  using Reduce = cub::BlockReduce<int, kTopkThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t row = blockIdx.x;
  const float* s = scores + row * items;
  const std::int64_t t = target[row];
  if (t < 0 || t >= items) {  // block-uniform
    if (threadIdx.x == 0) rank[row] = 0;
    return;
  }
  const float st = s[t];
  int ahead = 0;
  for (std::int64_t j = threadIdx.x; j < items; j += kTopkThreads)
    ahead += (j != t && !(s[j] < st)) ? 1 : 0;  // >=, and true when either side is NaN
  if (excl_offsets != nullptr) {
    const std::int64_t p0 = excl_offsets[row], p1 = excl_offsets[row + 1];
    for (std::int64_t p = p0 + threadIdx.x; p < p1; p += kTopkThreads) {
      const std::int64_t e = excl_items[p];
      if (e < 0 || e >= items || e == t) continue;
      bool dup = false;  // count each excluded item once: only its first occurrence
      for (std::int64_t q = p0; q < p && !dup; ++q) dup = excl_items[q] == e;
      if (!dup && !(s[e] < st)) --ahead;
    }
  }
  const int total = Reduce(tmp).Sum(ahead);
  if (threadIdx.x == 0) rank[row] = total + 1;
}
}  // namespace detail

/// Top k of every row of scores (B, I): out_idx (B, k) item column indices and out_val (B, k)
/// their scores, in descending order of score, ties by ascending index (NaN above +inf; −0 ties
/// +0; see the file comment). All pointers are device memory; runs on be.stream(). 1 <= k <= I
/// (k == 0 or B == 0 does nothing), I < 2³¹. Deterministic.
inline void topk_rows(Backend& be, const float* scores, std::int64_t B, std::int64_t I, int k,
                      std::int32_t* out_idx, float* out_val) {
  SEQREC_CHECK(B >= 0 && I >= 0 && I < (std::int64_t{1} << 31),
               "topk_rows (CUDA): need B >= 0 and 0 <= I < 2^31");
  SEQREC_CHECK(k >= 0 && k <= I, "topk_rows (CUDA): need 0 <= k <= I, got k = " +
                                     std::to_string(k) + ", I = " + std::to_string(I));
  if (B == 0 || k == 0) return;
  SEQREC_CHECK(B <= 0x7FFFFFFF, "topk_rows (CUDA): too many rows");
  if (k <= detail::kTopkMaxK) {
    detail::topk_select_kernel<<<static_cast<unsigned>(B), detail::kTopkThreads, 0, be.stream()>>>(
        scores, I, k, out_idx, out_val);
    SEQREC_CUDA_CHECK_LAUNCH();
    return;
  }
  // Large k: sort every row.
  const std::int64_t total = B * I;
  SEQREC_CHECK(total < (std::int64_t{1} << 31),
               "topk_rows (CUDA): k > 256 needs B*I < 2^31; split the rows, got B*I = " +
                   std::to_string(total));
  auto keys = be.buffer<std::uint64_t>(static_cast<std::size_t>(total));
  auto sorted = be.buffer<std::uint64_t>(static_cast<std::size_t>(total));
  auto offsets = be.buffer<int>(static_cast<std::size_t>(B + 1));
  const auto grid = [](std::int64_t n) {
    const std::int64_t want = (n + 255) / 256;
    return static_cast<unsigned>(want < 65535 * 8 ? want : 65535 * 8);
  };
  detail::topk_make_keys_kernel<<<grid(total), 256, 0, be.stream()>>>(scores, keys.data(), total,
                                                                      I);
  SEQREC_CUDA_CHECK_LAUNCH();
  detail::topk_offsets_kernel<<<grid(B + 1), 256, 0, be.stream()>>>(offsets.data(), B, I);
  SEQREC_CUDA_CHECK_LAUNCH();
  // The DoubleBuffer form sorts between keys and sorted (keys may be overwritten), so CUB's
  // temporary storage holds no third copy of the keys: 2·B·I·8 bytes in all.
  cub::DoubleBuffer<std::uint64_t> db(keys.data(), sorted.data());
  std::size_t t_bytes = 0;
  SEQREC_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(
      nullptr, t_bytes, db, static_cast<int>(total), static_cast<int>(B), offsets.data(),
      offsets.data() + 1, 0, 64, be.stream()));
  auto temp = be.buffer<std::byte>(t_bytes);
  SEQREC_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(
      temp.data(), t_bytes, db, static_cast<int>(total), static_cast<int>(B), offsets.data(),
      offsets.data() + 1, 0, 64, be.stream()));
  detail::topk_gather_kernel<<<grid(B * k), 256, 0, be.stream()>>>(scores, db.Current(), B, I, k,
                                                                   out_idx, out_val);
  SEQREC_CUDA_CHECK_LAUNCH();
}

/// Pessimistic 1-based rank of target[b] (an item column index) in every row of scores (B, I),
/// exactly eval::pessimistic_rank (see the file comment): rank[b] = 1 + #{j != t: !(s_j < s_t)}
/// minus the distinct excluded items with !(s_e < s_t). Optional exclusions, CSR on the device:
/// row b excludes excl_items[excl_offsets[b] … excl_offsets[b+1]) (column indices; duplicates,
/// the target and out-of-range entries ignored); pass nullptr for none. A target outside [0, I)
/// gives rank 0. All pointers are device memory; runs on be.stream(). I < 2³¹. Deterministic.
inline void target_rank(Backend& be, const float* scores, const std::int32_t* target,
                        std::int64_t B, std::int64_t I, std::int32_t* rank,
                        const std::int32_t* excl_offsets = nullptr,
                        const std::int32_t* excl_items = nullptr) {
  SEQREC_CHECK(B >= 0 && B <= 0x7FFFFFFF && I >= 1 && I < (std::int64_t{1} << 31),
               "target_rank (CUDA): need 0 <= B < 2^31 and 1 <= I < 2^31");
  SEQREC_CHECK((excl_offsets == nullptr) == (excl_items == nullptr),
               "target_rank (CUDA): pass both excl_offsets and excl_items, or neither");
  if (B == 0) return;
  detail::target_rank_kernel<<<static_cast<unsigned>(B), detail::kTopkThreads, 0, be.stream()>>>(
      scores, target, I, excl_offsets, excl_items, rank);
  SEQREC_CUDA_CHECK_LAUNCH();
}

}  // namespace seqrec::cuda
