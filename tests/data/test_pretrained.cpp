// Tests of pretrained item embeddings: loading .npy / .safetensors matrices with their id files
// (fixtures written by NumPy and Python's safetensors, see tests/fixtures/pretrained), every
// rejection (shape, dtype, row count, ids, NaN/Inf, truncation), the width adapters (truncate;
// PCA on data whose principal axes are known exactly), rescaling to a target norm, and
// neighbour completion on hand-built sequences where the answer of each round is known, checked
// again against a brute-force reference on synthetic data.
#include <unistd.h>

#include <atomic>
#include <catch2/catch_approx.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "seqrec/core/random.hpp"
#include "seqrec/data/dataset.hpp"
#include "seqrec/data/pretrained.hpp"
#include "seqrec/data/synthetic.hpp"
#include "seqrec/io/npy.hpp"
#include "seqrec/io/safetensors.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using Catch::Approx;
using Catch::Matchers::ContainsSubstring;
using seqrec::InputError;
using namespace seqrec::data;

namespace {

const fs::path kFixtures = fs::path(SEQREC_TEST_FIXTURES) / "pretrained";

using TempDir = seqrec::test::TempDir;  // tag: pretrained

/// The InputError message of loading (matrix, ids); fails the test when nothing is thrown.
std::string load_error(const fs::path& matrix, const fs::path& ids) {
  try {
    load_item_embeddings(matrix, ids);
  } catch (const InputError& e) {
    return e.what();
  }
  FAIL("load_item_embeddings accepted " << matrix << " with " << ids);
  return {};
}

InteractionLog make_log(const std::vector<std::vector<std::int64_t>>& users) {
  InteractionLog log;
  log.source = "test";
  for (std::size_t u = 0; u < users.size(); ++u) {
    for (std::int64_t item : users[u]) {
      log.user.push_back(static_cast<std::int64_t>(u + 1));
      log.item.push_back(item);
    }
  }
  return log;
}

ItemEmbeddings make_emb(std::vector<std::int64_t> ids, std::int64_t dim, std::vector<float> v) {
  ItemEmbeddings e;
  e.ids = std::move(ids);
  e.dim = dim;
  e.values = std::move(v);
  e.source = "emb.npy";
  return e;
}

/// A (rows, D) table of distinct, recognisable "random init" values.
template <typename T>
std::vector<T> random_table(std::size_t rows, std::size_t D, std::uint64_t seed = 7) {
  seqrec::Rng rng(seed);
  std::vector<T> t(rows * D);
  for (auto& x : t) x = static_cast<T>(rng.normal() * 0.02);
  return t;
}

template <typename T>
std::vector<T> row_of(const std::vector<T>& table, std::size_t D, std::int32_t token) {
  const auto b = table.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(token) * D);
  return {b, b + static_cast<std::ptrdiff_t>(D)};
}

/// Brute-force neighbour completion: whole-vocabulary rounds on a snapshot of the table.
std::vector<std::size_t> reference_completion(std::vector<double>& table, std::size_t D,
                                              std::vector<char> known,
                                              const std::vector<std::vector<std::int32_t>>& seqs,
                                              int window) {
  const std::size_t V = known.size();
  std::vector<std::set<std::int32_t>> nbrs(V);
  for (const auto& s : seqs) {
    for (std::size_t i = 0; i < s.size(); ++i) {
      for (std::size_t j = 0; j < s.size(); ++j) {
        const auto gap = i > j ? i - j : j - i;
        if (gap >= 1 && gap <= static_cast<std::size_t>(window) && s[i] != s[j]) {
          nbrs[static_cast<std::size_t>(s[i])].insert(s[j]);
        }
      }
    }
  }
  std::vector<std::size_t> rounds;
  for (;;) {
    const std::vector<double> snap = table;
    const std::vector<char> was = known;
    std::size_t filled = 0;
    for (std::size_t m = Vocabulary::kNumSpecial; m < V; ++m) {
      if (was[m]) continue;
      std::vector<double> acc(D, 0.0);
      std::size_t n = 0;
      for (std::int32_t nb : nbrs[m]) {
        if (!was[static_cast<std::size_t>(nb)]) continue;
        for (std::size_t j = 0; j < D; ++j) acc[j] += snap[static_cast<std::size_t>(nb) * D + j];
        ++n;
      }
      if (n == 0) continue;
      for (std::size_t j = 0; j < D; ++j) table[m * D + j] = acc[j] / static_cast<double>(n);
      known[m] = 1;
      ++filled;
    }
    if (filled == 0) return rounds;
    rounds.push_back(filled);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Loading

TEST_CASE("pretrained: float32 .npy with its id file loads", "[pretrained]") {
  const auto e = load_item_embeddings(kFixtures / "f32_3x4.npy", kFixtures / "f32_3x4.ids.txt");
  CHECK(e.ids == std::vector<std::int64_t>{10, 20, 30});
  CHECK(e.dim == 4);
  CHECK(e.rows() == 3);
  CHECK(e.source == (kFixtures / "f32_3x4.npy").string());
  REQUIRE(e.values.size() == 12);
  for (int i = 0; i < 12; ++i) CHECK(e.values[i] == 0.5f * static_cast<float>(i) - 1.0f);
}

TEST_CASE("pretrained: float16 .npy and F16 / BF16 safetensors load as float", "[pretrained]") {
  const std::vector<float> f16 = {1.0f,
                                  -2.5f,
                                  65504.0f,
                                  std::ldexp(1.0f, -14),
                                  std::ldexp(1.0f, -24),
                                  3.0f * std::ldexp(1.0f, -20),
                                  -0.0f,
                                  0.333251953125f};
  const auto a = load_item_embeddings(kFixtures / "f16_2x4.npy", kFixtures / "f16_2x4.ids.txt");
  CHECK(a.ids == std::vector<std::int64_t>{7, 8});
  CHECK(a.values == f16);
  // The tensor named "embeddings" is chosen over the other one in the file.
  const auto b =
      load_item_embeddings(kFixtures / "named_f16_2x4.safetensors", kFixtures / "f16_2x4.ids.txt");
  CHECK(b.dim == 4);
  CHECK(b.values == f16);

  // A single BF16 tensor of any name.
  TempDir dir;
  seqrec::io::SafetensorsData st;
  seqrec::io::Tensor t;
  t.dtype = seqrec::io::DType::BF16;
  t.shape = {2, 2};
  for (std::uint16_t h :
       std::initializer_list<std::uint16_t>{0x3f80, 0xc000, 0x3f00, 0x4040}) {  // 1, -2, 0.5, 3
    t.bytes.push_back(static_cast<std::byte>(h & 0xff));
    t.bytes.push_back(static_cast<std::byte>(h >> 8));
  }
  st.tensors.emplace("item_vectors", t);
  seqrec::io::save_safetensors(dir.path() / "bf16.safetensors", st);
  const auto ids = dir.write("bf16.ids.txt", "5\n9\n");
  const auto c = load_item_embeddings(dir.path() / "bf16.safetensors", ids);
  CHECK(c.values == std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f});
  CHECK(c.ids == std::vector<std::int64_t>{5, 9});

  // Other tensor dtypes are refused by name.
  seqrec::io::SafetensorsData st64;
  st64.tensors.emplace("embeddings",
                       seqrec::io::Tensor::from(std::vector<double>{1, 2, 3, 4}, {2, 2}));
  seqrec::io::save_safetensors(dir.path() / "f64.safetensors", st64);
  CHECK_THAT(load_error(dir.path() / "f64.safetensors", ids),
             ContainsSubstring("not F32, F16 or BF16") && ContainsSubstring("'F64'"));
  // A 3-D tensor is not a matrix.
  seqrec::io::SafetensorsData st3;
  st3.tensors.emplace("embeddings",
                      seqrec::io::Tensor::from(std::vector<float>(8, 1.0f), {2, 2, 2}));
  seqrec::io::save_safetensors(dir.path() / "f3d.safetensors", st3);
  CHECK_THAT(load_error(dir.path() / "f3d.safetensors", ids),
             ContainsSubstring("2-D") && ContainsSubstring("(2, 2, 2)"));
}

TEST_CASE("pretrained: bad matrices are rejected naming the file and value", "[pretrained]") {
  const auto ids3 = kFixtures / "f32_3x4.ids.txt";
  CHECK_THAT(load_error(kFixtures / "one_d_4.npy", ids3), ContainsSubstring("one_d_4.npy") &&
                                                              ContainsSubstring("must be 2-D") &&
                                                              ContainsSubstring("'(4,)'"));
  CHECK_THAT(load_error(kFixtures / "nan_3x4.npy", ids3),
             ContainsSubstring("nan_3x4.npy") && ContainsSubstring("row 1 (item id 20)") &&
                 ContainsSubstring("column 2") && ContainsSubstring("not finite"));
  TempDir dir;
  const auto ids2 = dir.write("two.ids.txt", "1\n2\n");
  CHECK_THAT(load_error(kFixtures / "inf_f16_2x3.npy", ids2),
             ContainsSubstring("row 0 (item id 1), column 1") && ContainsSubstring("'inf'"));
  CHECK_THAT(load_error(kFixtures / "f8_2x2.npy", ids2), ContainsSubstring("'<f8'"));
  CHECK_THAT(load_error(kFixtures / "fortran_2x3.npy", ids2), ContainsSubstring("Fortran"));
  CHECK_THAT(load_error(kFixtures / "ambiguous.safetensors", ids3),
             ContainsSubstring("'embeddings'") && ContainsSubstring("'a, b'"));
  CHECK_THAT(load_error(kFixtures / "f32_3x4.ids.txt", ids3),
             ContainsSubstring(".npy or .safetensors") && ContainsSubstring("'.txt'"));
  // A download cut short, at several points.
  const auto full = seqrec::io::read_file(kFixtures / "f32_3x4.npy");
  for (std::size_t keep : {std::size_t{0}, std::size_t{5}, std::size_t{60}, std::size_t{128},
                           std::size_t{150}, full.size() - 1}) {
    INFO("kept " << keep << " bytes");
    seqrec::io::atomic_write(dir.path() / "cut.npy", std::span<const std::byte>(full.data(), keep));
    CHECK_THAT(load_error(dir.path() / "cut.npy", ids3), ContainsSubstring("cut.npy"));
  }
  CHECK_THAT(load_error(dir.path() / "cut.npy", ids3), ContainsSubstring("truncated"));
  CHECK_THAT(load_error(dir.path() / "absent.npy", ids3), ContainsSubstring("cannot open"));
  CHECK_THAT(load_error(kFixtures / "f32_3x4.npy", dir.path() / "absent.txt"),
             ContainsSubstring("absent.txt") && ContainsSubstring("cannot open"));
}

TEST_CASE("pretrained: bad id files are rejected naming the line and value", "[pretrained]") {
  TempDir dir;
  const auto m = kFixtures / "f32_3x4.npy";
  const auto err = [&](std::string_view text) { return load_error(m, dir.write("ids.txt", text)); };
  CHECK_THAT(err("10\n20\n"), ContainsSubstring("ids.txt: id file has 2 ids but") &&
                                  ContainsSubstring("has 3 rows"));
  CHECK_THAT(err("10\n20\n30\n40\n"), ContainsSubstring("has 4 ids but"));
  CHECK_THAT(err("10\n20\n10\n"), ContainsSubstring("ids.txt:3: duplicate item id (first on "
                                                    "line 1)") &&
                                      ContainsSubstring("'10'"));
  CHECK_THAT(err("10\n2O\n30\n"), ContainsSubstring("ids.txt:2: item id is not an integer") &&
                                      ContainsSubstring("'2O'"));
  CHECK_THAT(err("10\n20\n3.5\n"), ContainsSubstring("ids.txt:3: item id is not an integer"));
  CHECK_THAT(err("10\n\n30\n"), ContainsSubstring("ids.txt:2: empty line"));
  CHECK_THAT(err("10\n-20\n30\n"), ContainsSubstring("ids.txt:2: item id is negative"));
  CHECK_THAT(err("10\n20\n99999999999999999999\n"), ContainsSubstring("ids.txt:3: item id does "
                                                                      "not fit"));
  CHECK_THAT(err("item_id\n10\n20\n"),
             ContainsSubstring("ids.txt:1") && ContainsSubstring("'item_id'"));
  // Accepted: CRLF line ends, surrounding blanks and no final newline.
  const auto ok = load_item_embeddings(m, dir.write("ok.txt", " 10\r\n20 \r\n30"));
  CHECK(ok.ids == std::vector<std::int64_t>{10, 20, 30});
}

// ---------------------------------------------------------------------------------------------
// Width adapters

TEST_CASE("pretrained: parse_dim_adapter reads the flag values", "[pretrained]") {
  CHECK(parse_dim_adapter("exact") == DimAdapter::Exact);
  CHECK(parse_dim_adapter("truncate") == DimAdapter::Truncate);
  CHECK(parse_dim_adapter("pca") == DimAdapter::Pca);
  CHECK(parse_dim_adapter("lift") == DimAdapter::Lift);
  CHECK_THROWS_WITH(parse_dim_adapter("PCA"),
                    ContainsSubstring("--embedding-adapter") && ContainsSubstring("'PCA'"));
  for (auto a : {DimAdapter::Exact, DimAdapter::Truncate, DimAdapter::Pca, DimAdapter::Lift}) {
    CHECK(parse_dim_adapter(dim_adapter_name(a)) == a);
  }
}

TEST_CASE("pretrained: exact keeps the matrix and names the other adapters on a mismatch",
          "[pretrained]") {
  const auto e = make_emb({1, 2}, 3, {1, 2, 3, 4, 5, 6});
  CHECK(adapt_dimension(e, 3, DimAdapter::Exact) == e.values);
  try {
    adapt_dimension(e, 2, DimAdapter::Exact);
    FAIL("exact accepted a width mismatch");
  } catch (const InputError& err) {
    CHECK(err.file() == "emb.npy");
    CHECK_THAT(std::string(err.what()),
               ContainsSubstring("embedding width 3 differs from the model width 2") &&
                   ContainsSubstring("--embedding-adapter truncate|pca"));
  }
}

TEST_CASE("pretrained: truncate keeps exactly the first d columns", "[pretrained]") {
  const auto e = make_emb({1, 2, 3}, 4, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  CHECK(adapt_dimension(e, 2, DimAdapter::Truncate) == std::vector<float>{1, 2, 5, 6, 9, 10});
  CHECK(adapt_dimension(e, 1, DimAdapter::Truncate) == std::vector<float>{1, 5, 9});
  CHECK(adapt_dimension(e, 4, DimAdapter::Truncate) == e.values);
  CHECK_THROWS_WITH(adapt_dimension(e, 5, DimAdapter::Truncate),
                    ContainsSubstring("model width 5 is larger than the embedding width 4"));
  CHECK_THROWS_WITH(adapt_dimension(e, 5, DimAdapter::Pca),
                    ContainsSubstring("larger") && ContainsSubstring("lift widens"));
}

TEST_CASE("pretrained: lift widens keeping every norm and dot product, deterministically",
          "[pretrained]") {
  // 5 rows of width 3, random; lifted to widths 3 (a rotation) and 8.
  seqrec::Rng rng(7);
  std::vector<float> v(15);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  const auto e = make_emb({1, 2, 3, 4, 5}, 3, v);
  const auto gram = [](const std::vector<float>& m, std::int64_t w, int i, int j) {
    double s = 0;
    for (std::int64_t k = 0; k < w; ++k) s += double(m[i * w + k]) * double(m[j * w + k]);
    return s;
  };
  for (const std::int64_t d : {3, 8}) {
    const auto out = adapt_dimension(e, d, DimAdapter::Lift);
    REQUIRE(out.size() == static_cast<std::size_t>(5 * d));
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 5; ++j) {
        INFO("d " << d << " rows " << i << ", " << j);
        CHECK(gram(out, d, i, j) == Approx(gram(e.values, 3, i, j)).margin(1e-5));
      }
    CHECK(adapt_dimension(e, d, DimAdapter::Lift) == out);  // same seed, same map
  }
  // A wider map really mixes the coordinates: no output column is a copy of an input column
  // (zero padding would pass the Gram check above).
  const auto out8 = adapt_dimension(e, 8, DimAdapter::Lift);
  for (int c = 0; c < 8; ++c) {
    int zero = 0;
    for (int r = 0; r < 5; ++r) zero += out8[r * 8 + c] == 0.f;
    CHECK(zero == 0);
  }
  const auto other = adapt_dimension(e, 8, DimAdapter::Lift, 12345);
  CHECK(other != out8);
  CHECK(gram(other, 8, 0, 1) == Approx(gram(e.values, 3, 0, 1)).margin(1e-5));
  CHECK_THROWS_WITH(adapt_dimension(e, 2, DimAdapter::Lift),
                    ContainsSubstring("smaller than the embedding width 3") &&
                        ContainsSubstring("lift can only widen"));
}

TEST_CASE("pretrained: PCA recovers known principal axes in variance order, deterministically",
          "[pretrained]") {
  // Rows = mean + a u1 + b u2 + c u3 with orthonormal u_k and coordinates a, b, c that are
  // exactly zero-mean and mutually orthogonal (Hadamard columns scaled 10, 3, 1): the sample
  // covariance is exactly 100/9/1 (x 8/7) along u1/u2/u3 and 0 along u4, so the top-3 PCA
  // projection must be (a, b, c) — with the sign convention "largest component positive",
  // which each u_k as written already satisfies.
  const double u[3][4] = {{0.8, 0.6, 0, 0}, {-0.6, 0.8, 0, 0}, {0, 0, 0.28, 0.96}};
  const double mean[4] = {5, -3, 2, 1};
  const int h[3][8] = {
      {1, 1, 1, 1, -1, -1, -1, -1}, {1, 1, -1, -1, 1, 1, -1, -1}, {1, -1, 1, -1, 1, -1, 1, -1}};
  const double scale[3] = {10, 3, 1};
  std::vector<float> v;
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 8; ++i) {
    ids.push_back(100 + i);
    for (int j = 0; j < 4; ++j) {
      double x = mean[j];
      for (int k = 0; k < 3; ++k) x += scale[k] * h[k][i] * u[k][j];
      v.push_back(static_cast<float>(x));
    }
  }
  const auto e = make_emb(ids, 4, v);
  const auto p = adapt_dimension(e, 3, DimAdapter::Pca);
  REQUIRE(p.size() == 24);
  for (int i = 0; i < 8; ++i) {
    for (int k = 0; k < 3; ++k) {
      INFO("row " << i << " component " << k);
      CHECK(p[static_cast<std::size_t>(i * 3 + k)] == Approx(scale[k] * h[k][i]).margin(1e-4));
    }
  }
  // The same input gives the same bits, and d = 1 is the first column of d = 3.
  CHECK(adapt_dimension(e, 3, DimAdapter::Pca) == p);
  const auto p1 = adapt_dimension(e, 1, DimAdapter::Pca);
  for (int i = 0; i < 8; ++i) CHECK(p1[static_cast<std::size_t>(i)] == p[i * 3]);
  // Flipping the data flips the projection but not the chosen directions' signs.
  auto neg = e;
  for (auto& x : neg.values) x = -x;
  const auto pn = adapt_dimension(neg, 3, DimAdapter::Pca);
  for (std::size_t i = 0; i < p.size(); ++i) CHECK(pn[i] == Approx(-p[i]).margin(1e-4));

  CHECK_THROWS_WITH(adapt_dimension(make_emb({1}, 4, {1, 2, 3, 4}), 2, DimAdapter::Pca),
                    ContainsSubstring("at least 2"));
}

// ---------------------------------------------------------------------------------------------
// init_item_table

TEMPLATE_TEST_CASE("pretrained: matched rows are written and rescaled to the target norm",
                   "[pretrained]", float, double) {
  // Vocabulary raw ids 10, 20, 30, 40 -> tokens 4..7; embeddings for 30, 10 and 99 (unknown).
  Vocabulary vocab;
  for (std::int64_t id : {10, 20, 30, 40}) vocab.add(id);
  const auto e = make_emb({30, 10, 99}, 3, {3, 4, 0, 0, 0, 2, 1, 1, 1});
  const std::size_t D = 3;
  const auto init = random_table<TestType>(static_cast<std::size_t>(vocab.size()), D);

  auto table = init;
  const auto r = init_item_table(table.data(), 3, vocab, e, DimAdapter::Exact, 7.0, {}, 3);
  CHECK(r.matched == 2);
  CHECK(r.ignored == 1);
  CHECK(r.mean_norm_before == Approx(3.5));  // norms 5 and 2
  CHECK(r.mean_norm_after == Approx(7.0));
  CHECK(r.missing_before_completion == 2);
  CHECK(r.filled_per_round.empty());
  CHECK(r.left_random == 2);
  // One common factor 2: directions kept, mean norm 7.
  CHECK(row_of(table, D, vocab.token(30)) == std::vector<TestType>{6, 8, 0});
  CHECK(row_of(table, D, vocab.token(10)) == std::vector<TestType>{0, 0, 4});
  // Special rows and items without an embedding keep the random init.
  for (std::int32_t t : {0, 1, 2, 3, vocab.token(20), vocab.token(40)}) {
    CHECK(row_of(table, D, t) == row_of(init, D, t));
  }

  // target_norm <= 0 keeps the encoder's norms.
  table = init;
  const auto keep = init_item_table(table.data(), 3, vocab, e, DimAdapter::Exact, 0.0, {}, 3);
  CHECK(keep.mean_norm_after == Approx(3.5));
  CHECK(row_of(table, D, vocab.token(30)) == std::vector<TestType>{3, 4, 0});

  // Random encoder rows at another width: PCA then rescale hits the target for any target.
  seqrec::Rng rng(3);
  std::vector<float> wide(4 * 16);
  for (auto& x : wide) x = static_cast<float>(rng.normal());
  const auto ew = make_emb({10, 20, 30, 40}, 16, wide);
  for (double target : {0.05, 1.0, 12.5}) {
    table = init;
    const auto rw = init_item_table(table.data(), 3, vocab, ew, DimAdapter::Pca, target, {}, 3);
    double mean = 0;
    for (std::int32_t t = 4; t < 8; ++t) {
      double s = 0;
      for (auto x : row_of(table, D, t)) s += static_cast<double>(x) * static_cast<double>(x);
      mean += std::sqrt(s) / 4;
    }
    CHECK(mean == Approx(target).epsilon(1e-6));
    CHECK(rw.mean_norm_after == Approx(target).epsilon(1e-6));
    CHECK(rw.left_random == 0);
  }
}

TEST_CASE("pretrained: init_item_table rejects unusable embeddings", "[pretrained]") {
  Vocabulary vocab;
  for (std::int64_t id : {1, 2}) vocab.add(id);
  std::vector<float> table(6 * 2, 0.5f);
  CHECK_THROWS_WITH(
      init_item_table(table.data(), 2, vocab, make_emb({7, 8}, 2, {1, 2, 3, 4}), DimAdapter::Exact,
                      1.0, {}, 3),
      ContainsSubstring("none of the 2 embedding ids is an item") && ContainsSubstring("'7'"));
  CHECK_THROWS_WITH(init_item_table(table.data(), 3, vocab, make_emb({1, 2}, 2, {1, 2, 3, 4}),
                                    DimAdapter::Exact, 1.0, {}, 3),
                    ContainsSubstring("truncate|pca"));
  CHECK_THROWS_WITH(init_item_table(table.data(), 2, vocab, make_emb({1, 2}, 2, {0, 0, 0, 0}),
                                    DimAdapter::Exact, 1.0, {}, 3),
                    ContainsSubstring("all zero"));
  CHECK_THROWS_WITH(init_item_table(table.data(), 2, vocab, make_emb({1, 1}, 2, {1, 2, 3, 4}),
                                    DimAdapter::Exact, 1.0, {}, 3),
                    ContainsSubstring("duplicate embedding id"));
  CHECK_THROWS_AS(init_item_table(table.data(), 2, vocab, make_emb({1}, 2, {1, 2}),
                                  DimAdapter::Exact, 1.0, {{4, 9}}, 3),
                  seqrec::Error);  // token 9 is outside the 6-row table
  // Nothing was written by the calls that threw before writing.
  CHECK(table == std::vector<float>(12, 0.5f));
}

TEST_CASE("pretrained: neighbour completion fills round by round with the known means",
          "[pretrained]") {
  // Raw items: A=1 and E=5 have embeddings (4,0) and (0,8); every other item has none.
  // Leave-one-out keeps each user's last two items (1xx) out of training.
  //   u1: A B C D E | 101 102    window 1: round 1 B = A, D = E; round 2 C = mean(B, D)
  //   u2: A Z A Z E | 103 104    Z's distinct neighbours are A and E: (A + E) / 2 unweighted
  //   u3: G H | 105 106          G and H only meet each other: nothing to fill them from
  //   u4: E K L M | 107 108      a chain from E: K round 1, L round 2, M round 3
  // 101 follows E in u1 and 107 follows M in u4, but only in held-out positions: never used.
  const auto log = make_log({{1, 2, 3, 4, 5, 101, 102},
                             {1, 6, 1, 6, 5, 103, 104},
                             {7, 8, 105, 106},
                             {5, 21, 22, 23, 107, 108}});
  const Dataset ds = build_dataset(log);
  const Split split = split_loo(ds);
  const auto emb = make_emb({1, 5, 999}, 2, {4, 0, 0, 8, 1, 1});
  const std::size_t D = 2;
  const auto& vocab = ds.vocab;
  const auto init = random_table<float>(static_cast<std::size_t>(vocab.size()), D);

  auto table = init;
  const auto r =
      init_item_table(table.data(), 2, vocab, emb, DimAdapter::Exact, 0.0, split.train, 1);
  const auto row = [&](std::int64_t raw) { return row_of(table, D, vocab.token(raw)); };
  CHECK(r.matched == 2);
  CHECK(r.ignored == 1);
  CHECK(r.missing_before_completion == 17);  // 19 items
  CHECK(r.filled_per_round == std::vector<std::size_t>{4, 2, 1});
  CHECK(r.left_random == 10);
  CHECK(row(2) == std::vector<float>{4, 0});   // B, round 1
  CHECK(row(4) == std::vector<float>{0, 8});   // D, round 1
  CHECK(row(6) == std::vector<float>{2, 4});   // Z, round 1: unweighted (A + E) / 2
  CHECK(row(21) == std::vector<float>{0, 8});  // K, round 1
  CHECK(row(3) == std::vector<float>{2, 4});   // C, round 2: B and D were both filled in round 1
  CHECK(row(22) == std::vector<float>{0, 8});  // L, round 2
  CHECK(row(23) == std::vector<float>{0, 8});  // M, round 3
  for (std::int64_t raw : {7, 8, 101, 102, 103, 104, 105, 106, 107, 108}) {
    INFO("raw item " << raw);
    CHECK(row(raw) == row_of(init, D, vocab.token(raw)));  // untouched random init
  }
  for (std::int32_t t = 0; t < Vocabulary::kNumSpecial; ++t) {
    CHECK(row_of(table, D, t) == row_of(init, D, t));
  }

  // Using every sequence (what a caller must NOT do) would fill the held-out items: the guard
  // above is not vacuous.
  auto leaky = init;
  init_item_table(leaky.data(), 2, vocab, emb, DimAdapter::Exact, 0.0, ds.sequences, 1);
  CHECK(row_of(leaky, D, vocab.token(101)) == std::vector<float>{0, 8});

  // Window 2: C sees A and E directly in round 1, so one round fills B, C, D, Z, K, L at once
  // (C = (A + E) / 2, L next to E at distance 2) and M follows in round 2.
  table = init;
  const auto r2 =
      init_item_table(table.data(), 2, vocab, emb, DimAdapter::Exact, 0.0, split.train, 2);
  CHECK(r2.filled_per_round == std::vector<std::size_t>{6, 1});
  CHECK(row(3) == std::vector<float>{2, 4});
  CHECK(row(22) == std::vector<float>{0, 8});
  CHECK(row(23) == std::vector<float>{0, 8});  // mean of K and L, both E

  // Rescaled rows feed the completion: target 3 halves A and E (mean norm 6).
  table = init;
  const auto r3 =
      init_item_table(table.data(), 2, vocab, emb, DimAdapter::Exact, 3.0, split.train, 1);
  CHECK(r3.mean_norm_before == Approx(6.0));
  CHECK(r3.mean_norm_after == Approx(3.0));
  CHECK(row(1) == std::vector<float>{2, 0});
  CHECK(row(6) == std::vector<float>{1, 2});
  CHECK(row(3) == std::vector<float>{1, 2});

  // The result does not depend on token order: the same log with users reversed gives other
  // tokens but the same row for every raw id.
  const Dataset rev = build_dataset(make_log({{5, 21, 22, 23, 107, 108},
                                              {7, 8, 105, 106},
                                              {1, 6, 1, 6, 5, 103, 104},
                                              {1, 2, 3, 4, 5, 101, 102}}));
  REQUIRE(rev.vocab.token(1) != vocab.token(1));
  auto table_rev = random_table<float>(static_cast<std::size_t>(rev.vocab.size()), D);
  const auto rr = init_item_table(table_rev.data(), 2, rev.vocab, emb, DimAdapter::Exact, 0.0,
                                  split_loo(rev).train, 1);
  CHECK(rr.filled_per_round == r.filled_per_round);
  table = init;
  init_item_table(table.data(), 2, vocab, emb, DimAdapter::Exact, 0.0, split.train, 1);
  for (std::int64_t raw : {1, 2, 3, 4, 5, 6, 21, 22, 23}) {
    CHECK(row_of(table_rev, D, rev.vocab.token(raw)) == row(raw));
  }
}

TEST_CASE("pretrained: end to end from fixture files", "[pretrained]") {
  // f32_3x4.npy rows are ids 10, 20, 30; the vocabulary also has 40, which follows 30.
  const auto e = load_item_embeddings(kFixtures / "f32_3x4.npy", kFixtures / "f32_3x4.ids.txt");
  Vocabulary vocab;
  for (std::int64_t id : {10, 20, 30, 40}) vocab.add(id);
  std::vector<float> table(static_cast<std::size_t>(vocab.size()) * 2, 9.0f);
  const std::vector<std::vector<std::int32_t>> train = {{4, 5, 6, 7}};
  const auto r = init_item_table(table.data(), 2, vocab, e, DimAdapter::Truncate, 0.0, train, 1);
  CHECK(r.matched == 3);
  CHECK(r.filled_per_round == std::vector<std::size_t>{1});
  CHECK(row_of(table, 2, 4) == std::vector<float>{-1.0f, -0.5f});
  CHECK(row_of(table, 2, 6) == std::vector<float>{3.0f, 3.5f});
  CHECK(row_of(table, 2, 7) == std::vector<float>{3.0f, 3.5f});  // = its only neighbour, 30
  CHECK(row_of(table, 2, 0) == std::vector<float>{9.0f, 9.0f});
}

TEST_CASE("pretrained: completion matches a brute-force reference on synthetic data",
          "[pretrained]") {
  SyntheticOptions o;
  o.users = 150;
  o.items = 120;
  o.text_dim = 24;
  o.min_len = 3;
  o.max_len = 12;
  const SyntheticData syn = make_synthetic(o);
  const Dataset ds = build_dataset(syn.log);
  const Split split = split_loo(ds);

  // Keep the text rows of about one item in five, written to disk and read back.
  TempDir dir;
  std::vector<float> kept;
  std::string ids_text;
  seqrec::Rng rng(11);
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < syn.text_item_ids.size(); ++i) {
    if (rng.below(5) != 0) continue;
    ids_text += std::to_string(syn.text_item_ids[i]) + "\n";
    const auto b = syn.text.begin() + static_cast<std::ptrdiff_t>(i * 24);
    kept.insert(kept.end(), b, b + 24);
    ++rows;
  }
  seqrec::io::save_npy(dir.path() / "syn.npy", kept.data(), rows, 24);
  const auto emb = load_item_embeddings(dir.path() / "syn.npy", dir.write("syn.ids.txt", ids_text));

  const std::size_t D = 8;
  const auto V = static_cast<std::size_t>(ds.vocab.size());
  for (int window : {1, 3}) {
    INFO("window " << window);
    auto table = random_table<double>(V, D);
    const auto r = init_item_table(table.data(), static_cast<std::int64_t>(D), ds.vocab, emb,
                                   DimAdapter::Pca, 1.0, split.train, window);
    std::size_t in_vocab = 0;
    for (auto id : emb.ids) in_vocab += ds.vocab.find(id) ? 1 : 0;
    CHECK(r.matched == in_vocab);
    CHECK(r.ignored == emb.ids.size() - in_vocab);
    CHECK(r.mean_norm_after == Approx(1.0));

    // Reference: write the same rescaled rows, then brute-force rounds.
    auto ref = random_table<double>(V, D);
    const auto adapted = adapt_dimension(emb, static_cast<std::int64_t>(D), DimAdapter::Pca);
    std::vector<char> known(V, 0);
    const double scale = 1.0 / r.mean_norm_before;
    for (std::size_t k = 0; k < emb.ids.size(); ++k) {
      const auto tok = ds.vocab.find(emb.ids[k]);
      if (!tok) continue;
      const auto t = static_cast<std::size_t>(*tok);
      for (std::size_t j = 0; j < D; ++j) ref[t * D + j] = scale * adapted[k * D + j];
      known[t] = 1;
    }
    const auto rounds = reference_completion(ref, D, known, split.train, window);
    CHECK(r.filled_per_round == rounds);
    CHECK(rounds.size() >= 2);  // the fixture exercises more than one round
    std::size_t filled = 0;
    for (auto f : rounds) filled += f;
    CHECK(r.left_random == r.missing_before_completion - filled);
    for (std::size_t i = 0; i < table.size(); ++i) {
      if (std::abs(table[i] - ref[i]) > 1e-12)
        FAIL("entry " << i << ": " << table[i] << " vs " << ref[i]);
    }
  }
}

TEST_CASE("pretrained: the report prints every round", "[pretrained]") {
  InitReport r;
  r.matched = 5;
  r.ignored = 1;
  r.mean_norm_before = 0.5;
  r.mean_norm_after = 2.0;
  r.missing_before_completion = 4;
  r.filled_per_round = {2, 1};
  r.left_random = 1;
  const std::string s = to_string(r);
  CHECK_THAT(s, ContainsSubstring("5 items matched") && ContainsSubstring("round 1 filled 2") &&
                    ContainsSubstring("round 2 filled 1") &&
                    ContainsSubstring("1 items keep the random init") &&
                    ContainsSubstring("0.500000 -> 2.000000"));
}
