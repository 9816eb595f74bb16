// Pretrained semantic initialisation of the item embedding table: item vectors from a text encoder
// (titles embedded by tools/embed_titles.py, or any other source) replace the random init of the
// items they cover.
//
//   load_item_embeddings  a (rows, width) matrix from .npy (float32/float16) or .safetensors
//                         (F32/F16/BF16) plus a file of raw item ids, one per row; validated for
//                         shape, row count, duplicate or malformed ids and NaN/Inf.
//   adapt_dimension       encoder width -> model width: Exact (must match), Truncate (first d
//                         columns: right for Matryoshka-trained encoders such as Qwen3-Embedding)
//                         or Pca (project on the top-d principal directions), all narrowing;
//                         Lift widens (a fixed random map with orthonormal columns: every dot
//                         product and norm kept, e.g. 384-wide MiniLM into a 1024-wide model).
//   init_item_table       writes the adapted rows into the table, rescales them to a target mean
//                         row norm (a norm far from the random init's is a known failure of text
//                         init), then fills items without an embedding from their neighbours in
//                         the training sequences, round after round, until nothing changes.
//
// Only training sequences may be passed to init_item_table: co-occurrence in validation or test
// sequences would leak the held-out targets into the initial table.
#pragma once

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "seqrec/core/eigen.hpp"
#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/data/vocabulary.hpp"
#include "seqrec/io/atomic_file.hpp"
#include "seqrec/io/npy.hpp"
#include "seqrec/io/safetensors.hpp"

namespace seqrec::data {

/// Item vectors from an encoder: row r belongs to raw item id ids[r].
struct ItemEmbeddings {
  std::vector<std::int64_t> ids;  // (rows,) raw item ids, distinct
  std::int64_t dim = 0;           // encoder width
  std::vector<float> values;      // (rows, dim) row-major, all finite
  std::string source;             // the matrix file, for messages
  std::int64_t rows() const { return static_cast<std::int64_t>(ids.size()); }
};

namespace detail {

/// bfloat16 -> float: the upper 16 bits of a binary32.
inline float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// The embedding matrix of a safetensors file: the tensor "embeddings", or the only tensor.
inline io::NpyArray read_safetensors_matrix(const std::filesystem::path& path) {
  const std::string file = path.string();
  const io::SafetensorsData st = io::load_safetensors(path);
  const io::Tensor* t = nullptr;
  if (const auto it = st.tensors.find("embeddings"); it != st.tensors.end()) {
    t = &it->second;
  } else if (st.tensors.size() == 1) {
    t = &st.tensors.begin()->second;
  } else {
    std::string names;
    for (const auto& [name, tensor] : st.tensors) names += (names.empty() ? "" : ", ") + name;
    throw InputError(file, 0,
                     "safetensors file must hold one tensor or a tensor named 'embeddings'",
                     names.empty() ? "no tensors" : names);
  }
  io::NpyArray out;
  out.shape = t->shape;
  out.dtype = std::string(io::dtype_name(t->dtype));
  const auto n = static_cast<std::size_t>(t->numel());
  out.data.resize(n);
  const auto* b = reinterpret_cast<const unsigned char*>(t->bytes.data());
  switch (t->dtype) {
    case io::DType::F32:
      if (n > 0) std::memcpy(out.data.data(), b, n * sizeof(float));
      break;
    case io::DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        out.data[i] =
            io::detail::half_to_float(static_cast<std::uint16_t>(b[2 * i] | (b[2 * i + 1] << 8)));
      }
      break;
    case io::DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        out.data[i] = bf16_to_float(static_cast<std::uint16_t>(b[2 * i] | (b[2 * i + 1] << 8)));
      }
      break;
    default:
      throw InputError(file, 0, "embedding tensor dtype is not F32, F16 or BF16",
                       std::string(io::dtype_name(t->dtype)));
  }
  return out;
}

/// Raw item ids, one per line; errors name the file, the 1-based line and the text.
inline std::vector<std::int64_t> read_item_ids(const std::filesystem::path& path) {
  const std::string file = path.string();
  const std::vector<std::byte> bytes = io::read_file(path);
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::vector<std::int64_t> ids;
  std::unordered_map<std::int64_t, std::size_t> first_line;
  std::size_t line_no = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.remove_suffix(1);
    }
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty())
      throw InputError(file, line_no, "empty line where an item id was expected", "");
    std::int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), v);
    if (ec == std::errc::result_out_of_range) {
      throw InputError(file, line_no, "item id does not fit in 64 bits", std::string(line));
    }
    if (ec != std::errc() || ptr != line.data() + line.size()) {
      throw InputError(file, line_no, "item id is not an integer", std::string(line));
    }
    if (v < 0) throw InputError(file, line_no, "item id is negative", std::string(line));
    const auto [it, inserted] = first_line.try_emplace(v, line_no);
    if (!inserted) {
      throw InputError(file, line_no,
                       "duplicate item id (first on line " + std::to_string(it->second) + ")",
                       std::string(line));
    }
    ids.push_back(v);
  }
  return ids;
}

}  // namespace detail

/// Loads item embeddings: `matrix` is a .npy (float32 or float16, C order) or .safetensors file
/// (one 2-D tensor, or the tensor named "embeddings"; F32, F16 or BF16) and `ids` holds one raw
/// item id per line, line r naming row r. Throws seqrec::InputError naming the file and value on
/// an unknown extension, a matrix that is not 2-D with non-zero width, a row count that differs
/// from the id count, a duplicate, negative or non-integer id, and a NaN or Inf (naming its row,
/// item id and column).
inline ItemEmbeddings load_item_embeddings(const std::filesystem::path& matrix,
                                           const std::filesystem::path& ids) {
  const std::string file = matrix.string();
  const std::string ext = matrix.extension().string();
  io::NpyArray arr;
  if (ext == ".npy") {
    arr = io::load_npy(matrix);
  } else if (ext == ".safetensors") {
    arr = detail::read_safetensors_matrix(matrix);
  } else {
    throw InputError(file, 0, "embedding file must end in .npy or .safetensors", ext);
  }
  if (arr.shape.size() != 2) {
    throw InputError(file, 0,
                     "embedding matrix must be 2-D (rows, width) but has " +
                         std::to_string(arr.shape.size()) + " dimensions",
                     io::detail::npy_shape_text(arr.shape));
  }
  if (arr.shape[1] == 0 || arr.shape[0] == 0) {
    throw InputError(file, 0, "embedding matrix is empty", io::detail::npy_shape_text(arr.shape));
  }
  ItemEmbeddings out;
  out.ids = detail::read_item_ids(ids);
  if (static_cast<std::int64_t>(out.ids.size()) != arr.shape[0]) {
    throw InputError(ids.string(), 0,
                     "id file has " + std::to_string(out.ids.size()) + " ids but " + file +
                         " has " + std::to_string(arr.shape[0]) + " rows",
                     std::to_string(out.ids.size()));
  }
  out.dim = arr.shape[1];
  out.source = file;
  const auto W = static_cast<std::size_t>(out.dim);
  for (std::size_t i = 0; i < arr.data.size(); ++i) {
    if (!std::isfinite(arr.data[i])) {
      const std::size_t r = i / W, c = i % W;
      throw InputError(file, 0,
                       "embedding row " + std::to_string(r) + " (item id " +
                           std::to_string(out.ids[r]) + "), column " + std::to_string(c) +
                           " is not finite",
                       std::to_string(arr.data[i]));
    }
  }
  out.values = std::move(arr.data);
  return out;
}

/// How an encoder width W becomes the model width d.
enum class DimAdapter {
  Exact,     ///< W must equal d
  Truncate,  ///< the first d columns (Matryoshka-trained encoders)
  Pca,       ///< projection on the top-d principal directions of the centred rows
  Lift,      ///< d >= W: x -> Q x with Q (d, W) random, orthonormal columns (dot products kept)
};

/// Parses the --embedding-adapter flag: "exact", "truncate", "pca" or "lift".
inline DimAdapter parse_dim_adapter(std::string_view s) {
  if (s == "exact") return DimAdapter::Exact;
  if (s == "truncate") return DimAdapter::Truncate;
  if (s == "pca") return DimAdapter::Pca;
  if (s == "lift") return DimAdapter::Lift;
  throw InputError("--embedding-adapter", 0,
                   "unknown adapter (expected exact, truncate, pca or lift)", std::string(s));
}

/// The flag value of an adapter.
constexpr std::string_view dim_adapter_name(DimAdapter a) {
  switch (a) {
    case DimAdapter::Exact:
      return "exact";
    case DimAdapter::Truncate:
      return "truncate";
    case DimAdapter::Pca:
      return "pca";
    case DimAdapter::Lift:
      return "lift";
  }
  return "?";
}

/// The embeddings at width d: (rows, d) row-major. Exact requires emb.dim == d; Truncate keeps
/// the first d columns; Pca centres the rows, computes the covariance in double, and projects on
/// its top-d eigenvectors (column k has the k-th largest variance; each direction's sign makes
/// its largest-magnitude component positive, so the result is deterministic); Lift (d >= width)
/// maps each row x to Q x, Q (d, width) the Q factor of a seeded Gaussian matrix (Householder QR,
/// column signs fixed so R's diagonal is positive): Qᵀ Q = I, so every row norm and every dot
/// product between rows is kept, and the same seed gives the same map. Throws
/// seqrec::InputError when the widths differ under Exact (naming the other adapters), when
/// d > width for a narrowing adapter (naming lift) or d < width for Lift.
inline std::vector<float> adapt_dimension(const ItemEmbeddings& emb, std::int64_t d,
                                          DimAdapter adapter, std::uint64_t lift_seed = 0x11f7) {
  SEQREC_CHECK(d > 0, "adapt_dimension: model width must be positive");
  SEQREC_CHECK(emb.values.size() == static_cast<std::size_t>(emb.rows() * emb.dim),
               "adapt_dimension: values do not hold rows * dim floats");
  const std::int64_t W = emb.dim, n = emb.rows();
  if (adapter == DimAdapter::Exact) {
    if (W != d) {
      throw InputError(emb.source, 0,
                       "embedding width " + std::to_string(W) + " differs from the model width " +
                           std::to_string(d) +
                           "; pick --embedding-adapter truncate|pca (narrower) or lift (wider)",
                       std::to_string(W));
    }
    return emb.values;
  }
  if (adapter == DimAdapter::Lift) {
    if (d < W) {
      throw InputError(emb.source, 0,
                       "model width " + std::to_string(d) +
                           " is smaller than the embedding width " + std::to_string(W) +
                           "; lift can only widen (truncate or pca narrow)",
                       std::to_string(W));
    }
    Rng rng(lift_seed);
    Eigen::MatrixXd G(d, W);
    for (std::int64_t c = 0; c < W; ++c)
      for (std::int64_t r = 0; r < d; ++r) G(r, c) = rng.normal();
    const Eigen::HouseholderQR<Eigen::MatrixXd> qr(G);
    Eigen::MatrixXd Q = qr.householderQ() * Eigen::MatrixXd::Identity(d, W);
    for (std::int64_t k = 0; k < W; ++k)
      if (qr.matrixQR()(k, k) < 0) Q.col(k) = -Q.col(k);
    std::vector<float> out(static_cast<std::size_t>(n * d));
    MapRM<float>(out.data(), n, d) =
        (CMapRM<float>(emb.values.data(), n, W).cast<double>() * Q.transpose()).cast<float>();
    return out;
  }
  if (d > W) {
    throw InputError(emb.source, 0,
                     "model width " + std::to_string(d) + " is larger than the embedding width " +
                         std::to_string(W) + "; " + std::string(dim_adapter_name(adapter)) +
                         " can only narrow (--embedding-adapter lift widens)",
                     std::to_string(W));
  }
  std::vector<float> out(static_cast<std::size_t>(n * d));
  if (adapter == DimAdapter::Truncate) {
    for (std::int64_t r = 0; r < n; ++r) {
      std::copy_n(emb.values.begin() + r * W, d, out.begin() + r * d);
    }
    return out;
  }
  if (n < 2) {
    throw InputError(emb.source, 0, "pca needs at least 2 embedding rows", std::to_string(n));
  }
  const MatRM<double> X = CMapRM<float>(emb.values.data(), n, W).cast<double>();
  const Eigen::RowVectorXd mean = X.colwise().mean();
  const MatRM<double> Xc = X.rowwise() - mean;
  Eigen::MatrixXd cov = Eigen::MatrixXd::Zero(W, W);
  cov.selfadjointView<Eigen::Lower>().rankUpdate(Xc.transpose());
  cov = cov.selfadjointView<Eigen::Lower>();
  cov /= static_cast<double>(n - 1);
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(cov);
  if (eig.info() != Eigen::Success) {
    throw Error("adapt_dimension: PCA eigen decomposition of " + emb.source + " did not converge");
  }
  Eigen::MatrixXd V(W, d);  // eigenvalues come in ascending order: take the last d, reversed
  for (std::int64_t k = 0; k < d; ++k) {
    Eigen::VectorXd v = eig.eigenvectors().col(W - 1 - k);
    Eigen::Index arg = 0;
    v.cwiseAbs().maxCoeff(&arg);
    if (v(arg) < 0) v = -v;
    V.col(k) = v;
  }
  MapRM<float>(out.data(), n, d) = (Xc * V).cast<float>();
  return out;
}

/// What init_item_table did, for the caller to log.
struct InitReport {
  double mean_norm_before = 0;  // mean L2 norm of the matched rows at model width, before rescale
  double mean_norm_after = 0;   // ... after rescale (== target_norm when target_norm > 0)
  std::size_t matched = 0;      // vocabulary items that got an embedding row
  std::size_t ignored = 0;      // embedding rows whose id is not in the vocabulary
  std::size_t missing_before_completion = 0;  // vocabulary items without an embedding row
  std::vector<std::size_t> filled_per_round;  // items filled from neighbours, per round
  std::size_t left_random = 0;                // items still without a row: random init kept
};

/// One line per fact of a report, for logs.
inline std::string to_string(const InitReport& r) {
  std::string s = "pretrained init: " + std::to_string(r.matched) + " items matched, " +
                  std::to_string(r.ignored) + " embedding ids not in the vocabulary\n";
  s += "  mean row norm " + std::to_string(r.mean_norm_before) + " -> " +
       std::to_string(r.mean_norm_after) + "\n";
  s += "  neighbour completion of " + std::to_string(r.missing_before_completion) +
       " items without an embedding:";
  for (std::size_t k = 0; k < r.filled_per_round.size(); ++k) {
    s += " round " + std::to_string(k + 1) + " filled " + std::to_string(r.filled_per_round[k]) +
         (k + 1 < r.filled_per_round.size() ? "," : "");
  }
  if (r.filled_per_round.empty()) s += " nothing filled";
  s += "\n  " + std::to_string(r.left_random) + " items keep the random init\n";
  return s;
}

/// Initialises the item rows of `table` ((vocab.size(), D) row-major; row = token) from `emb`:
///  1. adapt the embeddings to width D; each row whose raw id is in `vocab` goes to that item's
///     row (ids not in the vocabulary are counted in InitReport::ignored);
///  2. scale those rows by one factor so that their mean L2 norm is target_norm (target_norm <= 0
///     keeps the encoder's norms);
///  3. neighbour completion: round after round, every item still without a row whose
///     co-occurring items (distinct items within +-window positions of it, in any of
///     `train_sequences`) include at least one that had a row at the START of the round gets the
///     unweighted mean of those rows; the round's fills are visible only from the next round, so
///     the order of items within a round never matters. Stops at the first round that fills
///     nothing (that round is not recorded in filled_per_round).
/// Rows of items left without an embedding and of special tokens are not touched: they keep the
/// caller's random init. Pass only the training sequences (Split::train). Prints nothing.
/// Throws seqrec::InputError when no embedding id is in the vocabulary or the matched rows are
/// all zero while a target norm is set, and what adapt_dimension throws.
template <typename T>
InitReport init_item_table(T* table, std::int64_t D, const Vocabulary& vocab,
                           const ItemEmbeddings& emb, DimAdapter adapter, double target_norm,
                           const std::vector<std::vector<std::int32_t>>& train_sequences,
                           std::int32_t window) {
  SEQREC_CHECK(table != nullptr, "init_item_table: null table");
  SEQREC_CHECK(D > 0, "init_item_table: width must be positive");
  SEQREC_CHECK(window > 0, "init_item_table: co-occurrence window must be positive");
  const std::vector<float> adapted = adapt_dimension(emb, D, adapter);
  const auto V = static_cast<std::size_t>(vocab.size());
  const auto Dz = static_cast<std::size_t>(D);
  InitReport report;

  // 1. Match rows to tokens.
  std::vector<char> known(V, 0);
  std::vector<std::pair<std::int32_t, std::size_t>> matches;  // (token, embedding row)
  for (std::size_t r = 0; r < emb.ids.size(); ++r) {
    const auto tok = vocab.find(emb.ids[r]);
    if (!tok) {
      ++report.ignored;
      continue;
    }
    if (known[static_cast<std::size_t>(*tok)]) {
      throw InputError(emb.source, 0, "duplicate embedding id", std::to_string(emb.ids[r]));
    }
    matches.emplace_back(*tok, r);
    known[static_cast<std::size_t>(*tok)] = 1;
  }
  report.matched = matches.size();
  report.missing_before_completion = static_cast<std::size_t>(vocab.num_items()) - matches.size();
  if (matches.empty()) {
    throw InputError(emb.source, 0,
                     "none of the " + std::to_string(emb.ids.size()) +
                         " embedding ids is an item of the dataset (" +
                         std::to_string(vocab.num_items()) + " items); wrong id file?",
                     emb.ids.empty() ? "" : std::to_string(emb.ids.front()));
  }

  // Co-occurrence lists of the items that start without a row, built (and the sequences
  // checked) before anything is written.
  std::vector<std::vector<std::int32_t>> adj(V);
  const auto add_edge = [&](std::int32_t a, std::int32_t b) {
    if (a != b && !known[static_cast<std::size_t>(a)])
      adj[static_cast<std::size_t>(a)].push_back(b);
  };
  for (const auto& seq : train_sequences) {
    const std::size_t n = seq.size();
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t a = seq[i];
      SEQREC_CHECK(a >= 0 && a < vocab.size(), "init_item_table: token out of range");
      if (!Vocabulary::is_item(a)) continue;
      const std::size_t hi = std::min(n, i + static_cast<std::size_t>(window) + 1);
      for (std::size_t j = i + 1; j < hi; ++j) {
        const std::int32_t b = seq[j];
        SEQREC_CHECK(b >= 0 && b < vocab.size(), "init_item_table: token out of range");
        if (!Vocabulary::is_item(b)) continue;
        add_edge(a, b);
        add_edge(b, a);
      }
    }
  }
  for (auto& a : adj) {
    std::sort(a.begin(), a.end());
    a.erase(std::unique(a.begin(), a.end()), a.end());
  }

  // 2. Rescale to the target mean norm, in double, then write.
  const auto row_norm = [&](const float* x) {
    double s = 0;
    for (std::size_t j = 0; j < Dz; ++j) s += static_cast<double>(x[j]) * x[j];
    return std::sqrt(s);
  };
  double sum_norm = 0;
  for (const auto& [tok, r] : matches) sum_norm += row_norm(adapted.data() + r * Dz);
  report.mean_norm_before = sum_norm / static_cast<double>(matches.size());
  double scale = 1.0;
  if (target_norm > 0) {
    if (report.mean_norm_before == 0) {
      throw InputError(emb.source, 0, "matched embedding rows are all zero; cannot rescale them",
                       "0");
    }
    scale = target_norm / report.mean_norm_before;
  }
  double sum_after = 0;
  for (const auto& [tok, r] : matches) {
    T* dst = table + static_cast<std::size_t>(tok) * Dz;
    const float* src = adapted.data() + r * Dz;
    double s = 0;
    for (std::size_t j = 0; j < Dz; ++j) {
      dst[j] = static_cast<T>(scale * src[j]);
      const auto v = static_cast<double>(dst[j]);
      s += v * v;
    }
    sum_after += std::sqrt(s);
  }
  report.mean_norm_after = sum_after / static_cast<double>(matches.size());

  // 3. Neighbour completion. Round 1 considers every missing item; later rounds only the missing
  // neighbours of the items filled in the round before (an item with no row-holding neighbour at
  // the start of round k-1 can gain one only through an item filled in round k-1).
  std::vector<std::int32_t> candidates;
  for (std::int32_t t = Vocabulary::kNumSpecial; t < vocab.size(); ++t) {
    if (!known[static_cast<std::size_t>(t)]) candidates.push_back(t);
  }
  std::vector<double> acc(Dz);
  std::vector<std::int32_t> filled;
  while (!candidates.empty()) {
    filled.clear();
    for (const std::int32_t m : candidates) {
      std::fill(acc.begin(), acc.end(), 0.0);
      std::size_t count = 0;
      for (const std::int32_t nb : adj[static_cast<std::size_t>(m)]) {
        if (!known[static_cast<std::size_t>(nb)]) continue;
        const T* src = table + static_cast<std::size_t>(nb) * Dz;
        for (std::size_t j = 0; j < Dz; ++j) acc[j] += static_cast<double>(src[j]);
        ++count;
      }
      if (count == 0) continue;
      T* dst = table + static_cast<std::size_t>(m) * Dz;
      for (std::size_t j = 0; j < Dz; ++j)
        dst[j] = static_cast<T>(acc[j] / static_cast<double>(count));
      filled.push_back(m);
    }
    if (filled.empty()) break;
    // Only now do this round's fills become known: reads above saw the start-of-round state.
    for (const std::int32_t m : filled) known[static_cast<std::size_t>(m)] = 1;
    report.filled_per_round.push_back(filled.size());
    candidates.clear();
    for (const std::int32_t f : filled) {
      for (const std::int32_t nb : adj[static_cast<std::size_t>(f)]) {
        if (!known[static_cast<std::size_t>(nb)]) candidates.push_back(nb);
      }
    }
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  }
  std::size_t total_filled = 0;
  for (std::size_t f : report.filled_per_round) total_filled += f;
  report.left_random = report.missing_before_completion - total_filled;
  return report;
}

}  // namespace seqrec::data
