// Tests of the .npy reader and writer: files written by NumPy itself (tests/fixtures/pretrained,
// made by make_fixtures.py there) in format versions 1.0, 2.0 and 3.0, float16 values including
// subnormals, round trips of save_npy, and every rejection: bad magic or version, malformed
// headers, other dtypes, Fortran order, truncated or over-long data.
#include <unistd.h>

#include <atomic>
#include <bit>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "seqrec/core/random.hpp"
#include "seqrec/io/npy.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using seqrec::InputError;
using seqrec::io::load_npy;
using seqrec::io::NpyArray;
using seqrec::io::parse_npy;
using seqrec::io::save_npy;

namespace {

const fs::path kFixtures = fs::path(SEQREC_TEST_FIXTURES) / "pretrained";

using TempDir = seqrec::test::TempDir;  // tag: io_npy

/// A version 1.0 file from a header text (written as is, no padding) and raw data bytes.
std::vector<std::byte> npy_bytes(const std::string& header, std::size_t data_bytes = 0,
                                 unsigned major = 1) {
  std::vector<std::byte> out;
  for (char c : std::string("\x93NUMPY")) out.push_back(static_cast<std::byte>(c));
  out.push_back(static_cast<std::byte>(major));
  out.push_back(std::byte{0});
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  for (std::size_t i = 0; i < len_bytes; ++i) {
    out.push_back(static_cast<std::byte>((header.size() >> (8 * i)) & 0xff));
  }
  for (char c : header) out.push_back(static_cast<std::byte>(c));
  out.resize(out.size() + data_bytes, std::byte{0});
  return out;
}

std::string header_for(const std::string& descr, const std::string& fortran,
                       const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }\n";
}

/// The message of the InputError that parsing `bytes` throws (fails the test if none).
std::string parse_error(const std::vector<std::byte>& bytes) {
  try {
    parse_npy(bytes, "x.npy");
  } catch (const InputError& e) {
    CHECK(e.file() == "x.npy");
    return e.what();
  }
  FAIL("parse_npy accepted a bad file");
  return {};
}

std::vector<float> expected_f32_3x4() {
  std::vector<float> v;
  for (int i = 0; i < 12; ++i) v.push_back(0.5f * static_cast<float>(i) - 1.0f);
  return v;
}

}  // namespace

TEST_CASE("npy: NumPy-written float32 files load in every format version", "[npy]") {
  for (const char* name : {"f32_3x4.npy", "f32_3x4_v2.npy", "f32_3x4_v3.npy"}) {
    INFO(name);
    const NpyArray a = load_npy(kFixtures / name);
    CHECK(a.dtype == "<f4");
    CHECK(a.shape == std::vector<std::int64_t>{3, 4});
    CHECK(a.data == expected_f32_3x4());
  }
  CHECK(load_npy(kFixtures / "one_d_4.npy").shape == std::vector<std::int64_t>{4});
}

TEST_CASE("npy: float16 values convert exactly, subnormals and signed zero included", "[npy]") {
  const NpyArray a = load_npy(kFixtures / "f16_2x4.npy");
  CHECK(a.dtype == "<f2");
  CHECK(a.shape == std::vector<std::int64_t>{2, 4});
  REQUIRE(a.data.size() == 8);
  CHECK(a.data[0] == 1.0f);
  CHECK(a.data[1] == -2.5f);
  CHECK(a.data[2] == 65504.0f);
  CHECK(a.data[3] == std::ldexp(1.0f, -14));  // smallest normal half
  CHECK(a.data[4] == std::ldexp(1.0f, -24));  // smallest subnormal half
  CHECK(a.data[5] == 3.0f * std::ldexp(1.0f, -20));
  CHECK(a.data[6] == 0.0f);
  CHECK(std::signbit(a.data[6]));
  CHECK(a.data[7] == 0.333251953125f);  // 1/3 rounded to half: 0x3555

  const NpyArray inf = load_npy(kFixtures / "inf_f16_2x3.npy");
  CHECK(std::isinf(inf.data[1]));
  CHECK(inf.data[1] > 0);
}

TEST_CASE("npy: half_to_float matches the bit layout for every class of value", "[npy]") {
  using seqrec::io::detail::half_to_float;
  CHECK(half_to_float(0x3c00) == 1.0f);
  CHECK(half_to_float(0xc000) == -2.0f);
  CHECK(half_to_float(0x7bff) == 65504.0f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half_to_float(0x03ff) == 1023.0f * std::ldexp(1.0f, -24));
  CHECK(half_to_float(0x7c00) == std::numeric_limits<float>::infinity());
  CHECK(half_to_float(0xfc00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(half_to_float(0x7e00)));
  // Every finite half round-trips through float -> half rounding of the exact value.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    if ((h & 0x7c00) == 0x7c00) {
      CHECK(!std::isfinite(f));
      continue;
    }
    // Reconstruct the value from the fields in double and compare.
    const int e = static_cast<int>((h >> 10) & 0x1f);
    const double m = static_cast<double>(h & 0x3ff);
    const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024.0 + m, e - 25);
    const double v = (h & 0x8000) ? -mag : mag;
    if (static_cast<double>(f) != v) FAIL("half " << h << " -> " << f << " expected " << v);
  }
}

TEST_CASE("npy: save_npy round trip, and the file is what NumPy writes", "[npy]") {
  TempDir dir;
  const std::vector<float> v = expected_f32_3x4();
  save_npy(dir.path() / "a.npy", v.data(), 3, 4);
  const NpyArray a = load_npy(dir.path() / "a.npy");
  CHECK(a.shape == std::vector<std::int64_t>{3, 4});
  CHECK(a.data == v);
  // NumPy's writer pads the same header the same way: byte-identical to the fixture.
  CHECK(seqrec::io::read_file(dir.path() / "a.npy") ==
        seqrec::io::read_file(kFixtures / "f32_3x4.npy"));

  // Awkward values survive bit for bit; an empty matrix is a valid file.
  const std::vector<float> odd = {-0.0f, std::numeric_limits<float>::denorm_min(),
                                  std::numeric_limits<float>::max(), 1e-30f};
  save_npy(dir.path() / "b.npy", odd.data(), 1, 4);
  const NpyArray b = load_npy(dir.path() / "b.npy");
  REQUIRE(b.data.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(std::bit_cast<std::uint32_t>(b.data[i]) == std::bit_cast<std::uint32_t>(odd[i]));
  }
  save_npy(dir.path() / "c.npy", nullptr, 0, 7);
  CHECK(load_npy(dir.path() / "c.npy").shape == std::vector<std::int64_t>{0, 7});
  // The header block is a multiple of 64 bytes, as numpy.lib.format requires of writers.
  const auto raw = seqrec::io::read_file(dir.path() / "c.npy");
  CHECK(raw.size() % 64 == 0);
}

TEST_CASE("npy: hand-written headers in the accepted variants parse", "[npy]") {
  // Double quotes, no trailing comma, keys in another order, spaces, a 1-tuple and 2.0 format.
  const auto a = parse_npy(
      npy_bytes("{\"shape\": (2,), \"descr\": \"<f4\", \"fortran_order\": False}  \n", 8), "x.npy");
  CHECK(a.shape == std::vector<std::int64_t>{2});
  const auto b = parse_npy(npy_bytes(header_for("<f2", "False", "(1, 3)"), 6, 2), "x.npy");
  CHECK(b.shape == std::vector<std::int64_t>{1, 3});
  const auto c = parse_npy(npy_bytes(header_for("<f4", "False", "()"), 4), "x.npy");
  CHECK(c.shape.empty());
  CHECK(c.data.size() == 1);
}

TEST_CASE("npy: a bad magic or version is rejected", "[npy]") {
  auto bytes = seqrec::io::read_file(kFixtures / "f32_3x4.npy");
  auto bad = bytes;
  bad[1] = static_cast<std::byte>('X');
  CHECK_THAT(parse_error(bad), ContainsSubstring("magic") && ContainsSubstring("\\x93XUMPY"));
  CHECK_THAT(parse_error({std::byte{0x93}, std::byte{'N'}}), ContainsSubstring("too short"));
  bad = bytes;
  bad[6] = std::byte{4};
  CHECK_THAT(parse_error(bad), ContainsSubstring("version") && ContainsSubstring("'4.0'"));
  bad = bytes;
  bad[7] = std::byte{1};
  CHECK_THAT(parse_error(bad), ContainsSubstring("version") && ContainsSubstring("'1.1'"));
  // A text file with a .npy name.
  const std::string text = "item_id,x\n1,2\n";
  std::vector<std::byte> csv;
  for (char ch : text) csv.push_back(static_cast<std::byte>(ch));
  CHECK_THAT(parse_error(csv), ContainsSubstring("magic") && ContainsSubstring("'item_i'"));
}

TEST_CASE("npy: malformed headers are rejected naming the value", "[npy]") {
  const auto err = [](const std::string& header, std::size_t data = 0) {
    return parse_error(npy_bytes(header, data));
  };
  CHECK_THAT(err("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"),
             ContainsSubstring("newline"));
  CHECK_THAT(err("{'descr': '<f4', 'fortran_order': False}\n"),
             ContainsSubstring("lacks the key 'shape'"));
  CHECK_THAT(err("{'fortran_order': False, 'shape': (1,)}\n", 4),
             ContainsSubstring("lacks the key 'descr'"));
  CHECK_THAT(err("{'descr': '<f4', 'shape': (1,)}\n", 4),
             ContainsSubstring("lacks the key 'fortran_order'"));
  CHECK_THAT(err("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\n"),
             ContainsSubstring("'descr' twice"));
  CHECK_THAT(err("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}\n"),
             ContainsSubstring("unexpected key") && ContainsSubstring("'extra'"));
  CHECK_THAT(err(header_for("<f4", "0", "(1,)")), ContainsSubstring("not True or False"));
  CHECK_THAT(err(header_for("<f4", "False", "(3)")),
             ContainsSubstring("shape is not a tuple") && ContainsSubstring("'(3)'"));
  CHECK_THAT(err(header_for("<f4", "False", "(2, -1)")),
             ContainsSubstring("shape is not a tuple") && ContainsSubstring("'(2, -1)'"));
  CHECK_THAT(err(header_for("<f4", "False", "[2, 3]")), ContainsSubstring("shape is not a tuple"));
  CHECK_THAT(err(header_for("<f4", "False", "(2.5,)")), ContainsSubstring("shape is not a tuple"));
  CHECK_THAT(err(header_for("<f4", "False", "(99999999999999999999,)")),
             ContainsSubstring("64 bits"));
  CHECK_THAT(err(header_for("<f4", "False", "(4294967296, 4294967296)")),
             ContainsSubstring("64 bits"));
  CHECK_THAT(err("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk\n", 4),
             ContainsSubstring("after the closing"));
  CHECK_THAT(err("{'descr': '<f4' 'fortran_order': False, 'shape': (1,)}\n", 4),
             ContainsSubstring("expected ',' or '}'"));
  CHECK_THAT(err("{'descr: '<f4'}\n"), ContainsSubstring("header"));
  CHECK_THAT(err("not a dict\n"), ContainsSubstring("expected '{'"));
  CHECK_THAT(err("{'descr': '<f4\xc3\xa9', 'fortran_order': False, 'shape': (1,)}\n"),
             ContainsSubstring("not printable ASCII"));
  // A header length past the end of the file.
  auto bytes = npy_bytes(header_for("<f4", "False", "(1,)"), 4);
  bytes[8] = std::byte{0xff};
  bytes[9] = std::byte{0x7f};
  CHECK_THAT(parse_error(bytes),
             ContainsSubstring("header length runs past the end") && ContainsSubstring("'32767'"));
}

TEST_CASE("npy: other dtypes and Fortran order are rejected", "[npy]") {
  const auto load_error = [](const char* name) {
    try {
      load_npy(kFixtures / name);
    } catch (const InputError& e) {
      CHECK(e.file() == (kFixtures / name).string());
      return std::string(e.what());
    }
    FAIL("accepted " << name);
    return std::string();
  };
  CHECK_THAT(load_error("f8_2x2.npy"),
             ContainsSubstring("dtype is not supported") && ContainsSubstring("'<f8'"));
  CHECK_THAT(load_error("be_f4_2x2.npy"),
             ContainsSubstring("dtype is not supported") && ContainsSubstring("'>f4'"));
  CHECK_THAT(load_error("fortran_2x3.npy"), ContainsSubstring("Fortran order"));
  CHECK_THAT(parse_error(npy_bytes(header_for("|u1", "False", "(2,)"), 2)),
             ContainsSubstring("'|u1'"));
}

TEST_CASE("npy: truncated data is detected at every cut point", "[npy]") {
  for (const char* name : {"f32_3x4.npy", "f16_2x4.npy", "f32_3x4_v3.npy"}) {
    const auto full = seqrec::io::read_file(kFixtures / name);
    REQUIRE_NOTHROW(parse_npy(full, name));
    // Every cut, from an empty file through the header into the last data byte.
    for (std::size_t cut = 0; cut < full.size(); ++cut) {
      const std::vector<std::byte> part(full.begin(), full.begin() + cut);
      CHECK_THROWS_AS(parse_npy(part, name), InputError);
    }
    // A cut inside the data says how many bytes the shape needs and how many are there.
    const std::vector<std::byte> part(full.begin(), full.end() - 3);
    CHECK_THAT(parse_error(part), ContainsSubstring("truncated") && ContainsSubstring("needs"));
  }
  // Through the file system too: a half-written download.
  TempDir dir;
  const auto full = seqrec::io::read_file(kFixtures / "f32_3x4.npy");
  seqrec::io::atomic_write(dir.path() / "cut.npy",
                           std::span<const std::byte>(full.data(), full.size() - 20));
  try {
    load_npy(dir.path() / "cut.npy");
    FAIL("accepted a truncated file");
  } catch (const InputError& e) {
    CHECK_THAT(std::string(e.what()), ContainsSubstring("cut.npy") &&
                                          ContainsSubstring("needs 48 data bytes") &&
                                          ContainsSubstring("holds 28"));
  }
  // Junk appended after the data is refused too.
  auto longer = full;
  longer.push_back(std::byte{0});
  CHECK_THAT(parse_error(longer), ContainsSubstring("extra bytes"));
}

TEST_CASE("npy: random byte corruptions either parse or throw InputError", "[npy]") {
  // Header bytes are where a corruption can change the meaning; data bytes only change values.
  seqrec::Rng rng(42);
  for (const char* name : {"f32_3x4.npy", "f16_2x4.npy", "f32_3x4_v2.npy"}) {
    const auto full = seqrec::io::read_file(kFixtures / name);
    int rejected = 0;
    for (int trial = 0; trial < 3000; ++trial) {
      auto bad = full;
      const auto at = static_cast<std::size_t>(rng.below(128));  // magic, length and header
      bad[at] = static_cast<std::byte>(rng.below(256));
      try {
        const NpyArray a = parse_npy(bad, name);
        CHECK(a.data.size() * (a.dtype == "<f4" ? 4u : 2u) == full.size() - 128);
      } catch (const InputError&) {
        ++rejected;
      }
    }
    CHECK(rejected > 1000);
  }
}

TEST_CASE("npy: a missing file is an InputError naming it", "[npy]") {
  TempDir dir;
  CHECK_THROWS_WITH(load_npy(dir.path() / "absent.npy"),
                    ContainsSubstring("absent.npy") && ContainsSubstring("cannot open"));
}
