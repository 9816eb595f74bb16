// Tests of the safetensors reader and writer: round trips, deterministic output, a golden file
// and a file from Python's `safetensors` library (see tests/fixtures/io/README.md for how both
// were made and cross-checked), every validation error on a hand-built header, and hostile
// input (every truncation, random single-byte corruptions, deep nesting, huge arrays).
#include "seqrec/io/safetensors.hpp"

#include <unistd.h>

#include <atomic>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "seqrec/core/random.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using seqrec::io::DType;
using seqrec::io::SafetensorsData;
using seqrec::io::Tensor;

namespace {

using TempDir = seqrec::test::TempDir;  // tag: io_st

std::vector<std::byte> to_bytes(std::string_view s) {
  const auto b = std::as_bytes(std::span<const char>(s.data(), s.size()));
  return {b.begin(), b.end()};
}

/// A file from a header text and a data buffer; the length field says header.size() unless
/// `declared` overrides it.
std::vector<std::byte> make_file(std::string_view header, std::vector<std::byte> buffer = {},
                                 std::optional<std::uint64_t> declared = std::nullopt) {
  const std::uint64_t n = declared.value_or(header.size());
  std::vector<std::byte> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
  const auto h = to_bytes(header);
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}

std::vector<std::byte> zeros(std::size_t n) { return std::vector<std::byte>(n, std::byte{0}); }

/// Parses `file` expecting an InputError whose value is exactly `value` and whose message holds
/// `message_part` and the value itself.
void expect_input_error(const std::vector<std::byte>& file, const std::string& message_part,
                        const std::string& value) {
  try {
    seqrec::io::parse_safetensors(file, "hand.safetensors");
    FAIL("parse_safetensors accepted the file");
  } catch (const seqrec::InputError& e) {
    INFO(e.what());
    CHECK(e.file() == "hand.safetensors");
    CHECK(e.line() == 0);
    CHECK(e.value() == value);
    CHECK_THAT(e.what(), ContainsSubstring(message_part));
    CHECK_THAT(e.what(), ContainsSubstring(value.size() > 80 ? value.substr(0, 77) : value));
  }
}

/// A header holding one F32 tensor "t" whose entry is `entry` (JSON text), with a 16-byte buffer.
std::vector<std::byte> one_entry(std::string_view entry) {
  return make_file("{\"t\":" + std::string(entry) + "}", zeros(16));
}

std::uint16_t f16_bits(const Tensor& t, std::size_t i) {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(t.bytes[2 * i]) |
                                    (std::to_integer<unsigned>(t.bytes[2 * i + 1]) << 8));
}

/// Several dtypes and shapes, a 0-element tensor, a scalar and metadata with escapes and UTF-8.
SafetensorsData sample() {
  SafetensorsData d;
  d.metadata["format"] = "pt";
  d.metadata["note"] = "quote \" backslash \\ newline \n tab \t caf\xc3\xa9 \xe2\x82\xac";
  d.metadata["empty"] = "";
  d.tensors["item_emb.weight"] =
      Tensor::from(std::vector<float>{0.5f, -1.25f, 3.0e-8f, 1.0e30f, -0.0f, 7.0f}, {3, 2});
  d.tensors["norm.eps"] = Tensor::from(std::vector<double>{1e-12}, {});
  d.tensors["step"] = Tensor::from(std::vector<std::int64_t>{-(std::int64_t{1} << 62), 5}, {2});
  d.tensors["ids"] = Tensor::from(std::vector<std::int32_t>{1, -2, 2147483647}, {1, 3, 1});
  d.tensors["shorts"] = Tensor::from(std::vector<std::int16_t>{-300, 300}, {2});
  d.tensors["tiny"] = Tensor::from(std::vector<std::int8_t>{-128, 127, 0}, {3});
  d.tensors["bytes"] = Tensor::from(std::vector<std::uint8_t>{0, 200, 255, 1}, {2, 2});
  const bool mask[] = {true, false, false, true, true};
  d.tensors["mask"] = Tensor::from(std::span<const bool>(mask), {5});
  d.tensors["empty"] = Tensor::from(std::vector<float>{}, {0, 4});
  d.tensors["half"] =
      Tensor{DType::F16, {2}, {std::byte{0x00}, std::byte{0x3c}, std::byte{0x00}, std::byte{0xc0}}};
  d.tensors["brain"] = Tensor{DType::BF16, {1, 1}, {std::byte{0x80}, std::byte{0x3f}}};
  return d;
}

}  // namespace

TEST_CASE("dtype names, sizes and C++ types agree", "[cpu]") {
  using seqrec::io::dtype_from_name;
  using seqrec::io::dtype_name;
  using seqrec::io::dtype_of;
  using seqrec::io::dtype_size;
  static_assert(dtype_of<double>() == DType::F64 && dtype_of<float>() == DType::F32);
  static_assert(dtype_of<std::int64_t>() == DType::I64 && dtype_of<long long>() == DType::I64);
  static_assert(dtype_of<std::int32_t>() == DType::I32 && dtype_of<std::int16_t>() == DType::I16);
  static_assert(dtype_of<std::int8_t>() == DType::I8 && dtype_of<std::uint8_t>() == DType::U8);
  static_assert(dtype_of<bool>() == DType::BOOL && dtype_of<std::byte>() == DType::U8);
  static_assert(!seqrec::io::detail::HasDType<char> &&
                !seqrec::io::detail::HasDType<std::uint32_t>);
  const std::vector<std::pair<DType, std::size_t>> all = {
      {DType::F64, 8}, {DType::F32, 4}, {DType::F16, 2}, {DType::BF16, 2}, {DType::I64, 8},
      {DType::I32, 4}, {DType::I16, 2}, {DType::I8, 1},  {DType::U8, 1},   {DType::BOOL, 1}};
  std::set<std::string_view> names;
  for (const auto& [d, size] : all) {
    CHECK(dtype_size(d) == size);
    CHECK(dtype_from_name(dtype_name(d)) == d);
    names.insert(dtype_name(d));
  }
  CHECK(names == std::set<std::string_view>{"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
                                            "U8", "BOOL"});
  CHECK_FALSE(dtype_from_name("f32"));
  CHECK_FALSE(dtype_from_name("U16"));
  CHECK_FALSE(dtype_from_name(""));
}

TEST_CASE("Tensor::from, numel and as check dtype and element count", "[cpu]") {
  const Tensor t = Tensor::from(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t.dtype == DType::F32);
  CHECK(t.numel() == 6);
  CHECK(t.bytes.size() == 24);
  const auto v = t.as<float>();
  CHECK(std::vector<float>(v.begin(), v.end()) == std::vector<float>{1, 2, 3, 4, 5, 6});
  try {
    (void)t.as<double>();
    FAIL("as<double> on F32 did not throw");
  } catch (const seqrec::Error& e) {
    CHECK_THAT(e.what(), ContainsSubstring("F32"));
    CHECK_THAT(e.what(), ContainsSubstring("F64"));
  }
  CHECK_THROWS_AS(Tensor::from(std::vector<float>{1, 2, 3}, {2, 2}), seqrec::Error);
  CHECK_THROWS_AS(Tensor::from(std::vector<float>{}, {-1}), seqrec::Error);
  CHECK(Tensor::from(std::vector<std::int32_t>{9}, {}).numel() == 1);
  CHECK(Tensor::from(std::vector<std::int32_t>{}, {3, 0, 2}).numel() == 0);
  Tensor broken = t;
  broken.bytes.pop_back();
  CHECK_THROWS_AS(broken.as<float>(), seqrec::Error);
  broken.shape = {std::numeric_limits<std::int64_t>::max(), 2};
  CHECK_THROWS_AS(broken.numel(), seqrec::Error);
}

TEST_CASE("SafetensorsData::at names a missing tensor", "[cpu]") {
  const SafetensorsData d = sample();
  CHECK(d.at("ids").dtype == DType::I32);
  CHECK_THROWS_WITH(d.at("no.such.weight"), ContainsSubstring("no.such.weight"));
}

TEST_CASE("save then load round-trips every dtype, shape and the metadata", "[cpu]") {
  TempDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  const SafetensorsData d = sample();
  seqrec::io::save_safetensors(path, d);
  const SafetensorsData back = seqrec::io::load_safetensors(path);
  CHECK(back.metadata == d.metadata);
  REQUIRE(back.tensors.size() == d.tensors.size());
  for (const auto& [name, t] : d.tensors) {
    INFO(name);
    const Tensor& b = back.at(name);
    CHECK(b.dtype == t.dtype);
    CHECK(b.shape == t.shape);
    CHECK(b.bytes == t.bytes);
  }
  CHECK(back == d);
  const auto w = back.at("item_emb.weight").as<float>();
  CHECK(std::vector<float>(w.begin(), w.end()) ==
        std::vector<float>{0.5f, -1.25f, 3.0e-8f, 1.0e30f, -0.0f, 7.0f});
  CHECK(std::signbit(w[4]));
  CHECK(back.at("norm.eps").as<double>()[0] == 1e-12);
  CHECK(back.at("step").as<std::int64_t>()[0] == -(std::int64_t{1} << 62));
  CHECK(back.at("ids").as<std::int32_t>()[2] == 2147483647);
  CHECK(back.at("shorts").as<std::int16_t>()[0] == -300);
  CHECK(back.at("tiny").as<std::int8_t>()[0] == -128);
  CHECK(back.at("bytes").as<std::uint8_t>()[2] == 255);
  const auto mask = back.at("mask").as<bool>();
  CHECK(std::vector<bool>(mask.begin(), mask.end()) ==
        std::vector<bool>{true, false, false, true, true});
  CHECK(back.at("empty").shape == std::vector<std::int64_t>{0, 4});
  CHECK(back.at("empty").as<float>().empty());
  CHECK(f16_bits(back.at("half"), 1) == 0xc000);  // -2.0 in F16
  CHECK(back.at("norm.eps").shape.empty());
  CHECK(dir.path() / "model.safetensors" == path);
  CHECK(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()) == 1);
}

TEST_CASE("an empty SafetensorsData round-trips", "[cpu]") {
  const auto bytes = seqrec::io::serialize_safetensors({});
  CHECK(bytes.size() == 16);  // 8-byte length + "{}" padded to 8
  CHECK(seqrec::io::parse_safetensors(bytes, "empty") == SafetensorsData{});
}

TEST_CASE("the written layout: sorted names, contiguous offsets, space padding", "[cpu]") {
  const auto bytes = seqrec::io::serialize_safetensors(sample());
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= std::uint64_t{std::to_integer<std::uint8_t>(bytes[i])} << (8 * i);
  REQUIRE(n % 8 == 0);
  REQUIRE(8 + n <= bytes.size());
  const std::string header(reinterpret_cast<const char*>(bytes.data() + 8), n);
  CHECK(header.front() == '{');
  const auto last = header.find_last_not_of(' ');
  CHECK(header[last] == '}');
  CHECK(n - (last + 1) < 8);
  CHECK(header.rfind("{\"__metadata__\":{", 0) == 0);

  const auto json = nlohmann::ordered_json::parse(header);
  std::vector<std::string> order;
  std::uint64_t expected_begin = 0;
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") continue;
    order.push_back(name);
    CHECK(entry["data_offsets"][0].get<std::uint64_t>() == expected_begin);
    expected_begin = entry["data_offsets"][1].get<std::uint64_t>();
  }
  CHECK(expected_begin == bytes.size() - 8 - n);
  CHECK(std::is_sorted(order.begin(), order.end()));
  CHECK(order.size() == sample().tensors.size());
}

TEST_CASE("saving the same data twice gives byte-identical files", "[cpu]") {
  TempDir dir;
  const SafetensorsData d = sample();
  // Same content built in the opposite insertion order.
  SafetensorsData reversed;
  for (auto it = d.metadata.rbegin(); it != d.metadata.rend(); ++it) reversed.metadata.insert(*it);
  for (auto it = d.tensors.rbegin(); it != d.tensors.rend(); ++it) reversed.tensors.insert(*it);
  seqrec::io::save_safetensors(dir.path() / "a.safetensors", d);
  seqrec::io::save_safetensors(dir.path() / "b.safetensors", reversed);
  const auto a = seqrec::io::read_file(dir.path() / "a.safetensors");
  CHECK(a == seqrec::io::read_file(dir.path() / "b.safetensors"));
  seqrec::io::save_safetensors(dir.path() / "a.safetensors", d);
  CHECK(a == seqrec::io::read_file(dir.path() / "a.safetensors"));
  CHECK(a == seqrec::io::serialize_safetensors(d));
}

TEST_CASE("the writer's output is byte-identical to the golden file Python loads", "[cpu]") {
  // tests/fixtures/io/seqrec_tiny.safetensors was written by this writer from exactly this data
  // and checked to load in Python's safetensors (see tests/fixtures/io/README.md).
  SafetensorsData d;
  d.metadata["format"] = "pt";
  d.metadata["producer"] = "seqrec";
  d.tensors["weight"] = Tensor::from(std::vector<float>{1.0f, -2.0f, 0.5f, 4.0f}, {2, 2});
  d.tensors["bias"] = Tensor::from(std::vector<double>{0.25}, {1});
  d.tensors["ids"] = Tensor::from(std::vector<std::int64_t>{3, -1}, {2});
  d.tensors["empty"] = Tensor::from(std::vector<std::int32_t>{}, {0});
  const bool flags[] = {true, false};
  d.tensors["flags"] = Tensor::from(std::span<const bool>(flags), {2});
  const fs::path golden = fs::path(SEQREC_TEST_FIXTURES) / "io" / "seqrec_tiny.safetensors";
  CHECK(seqrec::io::serialize_safetensors(d) == seqrec::io::read_file(golden));
  CHECK(seqrec::io::load_safetensors(golden) == d);
}

TEST_CASE("a file written by Python's safetensors library parses", "[cpu]") {
  // Made by tests/fixtures/io/make_python_fixture.py (safetensors 0.8.0, numpy 2.4.6). Python
  // orders tensors in the buffer by alignment, not by name, so this also covers that order.
  const fs::path path = fs::path(SEQREC_TEST_FIXTURES) / "io" / "python_tiny.safetensors";
  const SafetensorsData d = seqrec::io::load_safetensors(path);
  CHECK(d.metadata ==
        std::map<std::string, std::string>{{"format", "np"}, {"note", "seqrec fixture"}});
  CHECK(d.tensors.size() == 9);

  const Tensor& weight = d.at("weight");
  CHECK(weight.shape == std::vector<std::int64_t>{2, 3});
  const auto w = weight.as<float>();
  CHECK(std::vector<float>(w.begin(), w.end()) ==
        std::vector<float>{-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f});

  const auto bias = d.at("bias").as<double>();
  CHECK(std::vector<double>(bias.begin(), bias.end()) == std::vector<double>{1.5, -2.25});

  CHECK(d.at("ids").shape == std::vector<std::int64_t>{3, 1});
  const auto ids = d.at("ids").as<std::int64_t>();
  CHECK(std::vector<std::int64_t>(ids.begin(), ids.end()) ==
        std::vector<std::int64_t>{-3, 7, std::int64_t{1} << 40});

  const auto mask = d.at("mask").as<bool>();
  CHECK(std::vector<bool>(mask.begin(), mask.end()) == std::vector<bool>{true, false, true});

  const Tensor& half = d.at("half");
  CHECK(half.dtype == DType::F16);
  CHECK(half.shape == std::vector<std::int64_t>{3});
  CHECK(f16_bits(half, 0) == 0x3c00);  // 1.0
  CHECK(f16_bits(half, 1) == 0xb800);  // -0.5
  CHECK(f16_bits(half, 2) == 0x7bff);  // 65504

  const auto u8 = d.at("bytes").as<std::uint8_t>();
  CHECK(std::vector<std::uint8_t>(u8.begin(), u8.end()) == std::vector<std::uint8_t>{0, 127, 255});
  const auto small = d.at("small").as<std::int16_t>();
  CHECK(std::vector<std::int16_t>(small.begin(), small.end()) ==
        std::vector<std::int16_t>{-32768, 32767});

  CHECK(d.at("count").shape.empty());
  CHECK(d.at("count").as<std::int32_t>()[0] == 42);
  CHECK(d.at("empty").shape == std::vector<std::int64_t>{0, 4});
  CHECK(d.at("empty").bytes.empty());

  // Our writer reorders the buffer by name; the content survives.
  const auto ours = seqrec::io::serialize_safetensors(d);
  CHECK(seqrec::io::parse_safetensors(ours, "ours") == d);
}

TEST_CASE("truncating a valid file at every length is an InputError", "[cpu]") {
  // The writer makes the buffer end exactly at the last tensor's end, so no truncation leaves a
  // self-consistent file: a cut in the length field or header leaves the declared header past
  // the end of the file, and a cut in the buffer leaves the last non-empty tensor past its end.
  const auto full = seqrec::io::serialize_safetensors(sample());
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{std::to_integer<std::uint8_t>(full[i])} << (8 * i);
  REQUIRE(seqrec::io::parse_safetensors(full, "full") == sample());
  for (std::size_t len = 0; len < full.size(); ++len) {
    INFO("length " << len << " of " << full.size());
    const std::span<const std::byte> cut(full.data(), len);
    try {
      seqrec::io::parse_safetensors(cut, "cut.safetensors");
      FAIL("truncated file parsed");
    } catch (const seqrec::InputError& e) {
      CHECK(e.file() == "cut.safetensors");
      if (len < 8) {
        CHECK_THAT(e.what(), ContainsSubstring("shorter than the 8-byte"));
      } else if (len < 8 + n) {
        CHECK_THAT(e.what(), ContainsSubstring("past the end of the file"));
      } else {
        CHECK_THAT(e.what(), ContainsSubstring("past the " + std::to_string(len - 8 - n) +
                                               "-byte data buffer"));
      }
    }
  }
}

TEST_CASE("truncating unused trailing bytes keeps a self-consistent file", "[cpu]") {
  // Files from other writers may carry bytes after the last tensor. Cutting only those bytes
  // leaves a consistent file, which must load; any cut into a tensor must not.
  const std::string header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  std::vector<std::byte> buffer = {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4},
                                   std::byte{9}, std::byte{9}, std::byte{9}};
  const auto full = make_file(header, buffer);
  const std::size_t needed = 8 + header.size() + 4;
  for (std::size_t len = 0; len <= full.size(); ++len) {
    INFO("length " << len);
    const std::span<const std::byte> cut(full.data(), len);
    if (len >= needed) {
      const auto d = seqrec::io::parse_safetensors(cut, "cut");
      const auto a = d.at("a").as<std::uint8_t>();
      CHECK(std::vector<std::uint8_t>(a.begin(), a.end()) == std::vector<std::uint8_t>{1, 2, 3, 4});
    } else {
      CHECK_THROWS_AS(seqrec::io::parse_safetensors(cut, "cut"), seqrec::InputError);
    }
  }
}

TEST_CASE("2000 random single-byte corruptions give InputError or a valid parse", "[cpu]") {
  const auto original = seqrec::io::serialize_safetensors(sample());
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) {
    n |= std::uint64_t{std::to_integer<std::uint8_t>(original[i])} << (8 * i);
  }
  seqrec::Rng rng(20240611);
  int errors = 0, parsed = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    auto file = original;
    const std::size_t pos = rng.below(file.size());
    file[pos] ^= static_cast<std::byte>(1 + rng.below(255));  // always a different byte
    INFO("trial " << trial << ": byte " << pos);
    try {
      const SafetensorsData d = seqrec::io::parse_safetensors(file, "corrupt.safetensors");
      ++parsed;
      if (pos >= 8 + n) {
        // A changed data byte leaves the header alone: the parse must see exactly the new bytes.
        CHECK(seqrec::io::serialize_safetensors(d) == file);
      }
    } catch (const seqrec::InputError& e) {
      ++errors;
      CHECK(e.file() == "corrupt.safetensors");
    } catch (const std::exception& e) {
      FAIL("unexpected exception: " << e.what());
    } catch (...) {
      FAIL("unexpected non-std exception");
    }
  }
  CHECK(errors + parsed == 2000);
  CHECK(errors > 500);  // most header bytes matter
  CHECK(parsed > 100);  // most data bytes do not
}

// ---- one test per validation error, each on a hand-built header -----------------------------

TEST_CASE("parse error: file shorter than 8 bytes", "[cpu]") {
  for (std::size_t len = 0; len < 8; ++len) {
    expect_input_error(zeros(len), "shorter than the 8-byte header length", std::to_string(len));
  }
}

TEST_CASE("parse error: header length past the end of the file", "[cpu]") {
  expect_input_error(make_file("{}", {}, 3), "past the end of the file", "3");
  expect_input_error(make_file("{}    ", {}, 1000), "past the end of the file", "1000");
}

TEST_CASE("parse error: header length over 100 MiB", "[cpu]") {
  expect_input_error(make_file("{}", {}, (100u << 20) + 1), "100 MiB", "104857601");
  expect_input_error(make_file("{}", {}, ~std::uint64_t{0}), "100 MiB", "18446744073709551615");
}

TEST_CASE("parse error: header is not valid UTF-8 JSON", "[cpu]") {
  const auto bad = [](std::string_view header, std::string_view expect_in_value) {
    try {
      seqrec::io::parse_safetensors(make_file(header), "hand.safetensors");
      FAIL("accepted " << header);
    } catch (const seqrec::InputError& e) {
      CHECK_THAT(e.what(), ContainsSubstring("not valid UTF-8 JSON"));
      CHECK_THAT(e.value(), ContainsSubstring(std::string(expect_in_value)));
    }
  };
  bad("not json", "syntax error");
  bad("{\"t\": {\"dtype\": \"F32\"", "syntax error");  // cut short
  bad("{\"t\xff\": {}}", "syntax error");              // invalid UTF-8 in a key
  bad("{\"a\":\"\xc3\x28\"}", "syntax error");         // invalid 2-byte sequence
  // nlohmann's lexer stops at NUL; the parser must not ignore what follows it.
  bad(std::string_view("{}\0\0\0\0\0\0", 8), "NUL byte at header offset 2");
  bad(std::string_view("{}\0{\"a\":1}", 10), "NUL byte at header offset 2");
  bad(std::string_view("{\"a\0\":1}", 8), "NUL byte at header offset 3");
  bad("{} // comment", "syntax error");
}

TEST_CASE("parse error: header is not a JSON object", "[cpu]") {
  expect_input_error(make_file("[1, 2]  "), "not a JSON object", "array");
  expect_input_error(make_file("42"), "not a JSON object", "number");
  expect_input_error(make_file("\"str\""), "not a JSON object", "string");
}

TEST_CASE("parse error: entry is not an object", "[cpu]") {
  expect_input_error(one_entry("5"), "tensor 't': entry is not an object", "5");
  expect_input_error(one_entry("\"F32\""), "tensor 't': entry is not an object", "\"F32\"");
  expect_input_error(one_entry("[0, 4]"), "tensor 't': entry is not an object", "array");
}

TEST_CASE("parse error: entry misses a key", "[cpu]") {
  expect_input_error(one_entry(R"({"shape":[1],"data_offsets":[0,4]})"), "tensor 't': missing key",
                     "dtype");
  expect_input_error(one_entry(R"({"dtype":"F32","data_offsets":[0,4]})"), "missing key", "shape");
  expect_input_error(one_entry(R"({"dtype":"F32","shape":[1]})"), "missing key", "data_offsets");
}

TEST_CASE("parse error: unknown or non-string dtype", "[cpu]") {
  expect_input_error(one_entry(R"({"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]})"),
                     "tensor 't': unknown dtype", "F8_E4M3");
  expect_input_error(one_entry(R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})"),
                     "unknown dtype", "f32");
  expect_input_error(one_entry(R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})"),
                     "dtype is not a string", "4");
}

TEST_CASE("parse error: shape is not an array of non-negative integers", "[cpu]") {
  const std::string msg = "tensor 't': shape is not an array of non-negative integers";
  expect_input_error(one_entry(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})"), msg, "4");
  expect_input_error(one_entry(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), msg,
                     "[-1]");
  expect_input_error(one_entry(R"({"dtype":"F32","shape":[2,1.5],"data_offsets":[0,4]})"), msg,
                     "[2,1.5]");
  expect_input_error(one_entry(R"({"dtype":"F32","shape":["4"],"data_offsets":[0,16]})"), msg,
                     "[\"4\"]");
  expect_input_error(one_entry(R"({"dtype":"F32","shape":[null],"data_offsets":[0,4]})"), msg,
                     "[null]");
  expect_input_error(
      one_entry(R"({"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]})"), msg,
      "[9223372036854775808]");
}

TEST_CASE("parse error: element or byte count overflows 64 bits", "[cpu]") {
  const std::string msg = "tensor 't': shape has more elements or bytes than fit in 64 bits";
  expect_input_error(
      one_entry(R"({"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]})"), msg,
      "[4294967296,4294967296]");
  // numel 2^61 fits, but 2^61 F64 elements are 2^64 bytes.
  expect_input_error(
      one_entry(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]})"), msg,
      "[2305843009213693952]");
  // A zero dim makes the product 0, however large the other dims.
  const auto ok = seqrec::io::parse_safetensors(
      one_entry(R"({"dtype":"F64","shape":[9223372036854775807,0],"data_offsets":[0,0]})"), "hand");
  CHECK(ok.at("t").numel() == 0);
}

TEST_CASE("parse error: data_offsets is not two non-negative integers", "[cpu]") {
  const std::string msg = "tensor 't': data_offsets is not two non-negative integers";
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":4})"), msg, "4");
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[4]})"), msg, "[4]");
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[0,4,8]})"), msg,
                     "[0,4,8]");
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[-4,0]})"), msg,
                     "[-4,0]");
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[0,4.0]})"), msg,
                     "[0,4.0]");
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[0,"4"]})"), msg,
                     "[0,\"4\"]");
}

TEST_CASE("parse error: data_offsets begin after end", "[cpu]") {
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[8,4]})"),
                     "tensor 't': data_offsets begin is after end", "[8,4]");
}

TEST_CASE("parse error: data_offsets end past the buffer", "[cpu]") {
  expect_input_error(one_entry(R"({"dtype":"U8","shape":[4],"data_offsets":[14,18]})"),
                     "tensor 't': data_offsets end is past the 16-byte data buffer", "[14,18]");
  expect_input_error(
      one_entry(
          R"({"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]})"),
      "past the 16-byte data buffer", "[18446744073709551615,18446744073709551615]");
}

TEST_CASE("parse error: byte range does not match shape and dtype", "[cpu]") {
  expect_input_error(one_entry(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,12]})"),
                     "tensor 't': data_offsets hold 12 bytes but shape [2,3] of F32 needs 24",
                     "[0,12]");
  expect_input_error(one_entry(R"({"dtype":"I64","shape":[],"data_offsets":[0,16]})"),
                     "hold 16 bytes but shape [] of I64 needs 8", "[0,16]");
}

TEST_CASE("parse error: overlapping tensors", "[cpu]") {
  expect_input_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
                               zeros(16)),
                     "tensors 'a' [0,8] and 'b' overlap", "[4,12]");
  // The same range twice overlaps too.
  expect_input_error(make_file(R"({"x":{"dtype":"I32","shape":[1],"data_offsets":[4,8]},)"
                               R"("y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               zeros(8)),
                     "overlap", "[4,8]");
  // Adjacent ranges, empty tensors anywhere, and out-of-order ranges are fine.
  const auto ok = seqrec::io::parse_safetensors(
      make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                R"("b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                R"("e":{"dtype":"F64","shape":[0,3],"data_offsets":[4,4]}})",
                zeros(16)),
      "hand");
  CHECK(ok.tensors.size() == 3);
}

TEST_CASE("parse error: __metadata__ not an object of strings", "[cpu]") {
  expect_input_error(make_file(R"({"__metadata__":{"format":"pt","epoch":3}})"),
                     "'__metadata__' value of 'epoch' is not a string", "3");
  expect_input_error(make_file(R"({"__metadata__":{"a":{"b":"c"}}})"),
                     "'__metadata__' value of 'a' is not a string", "{\"b\":\"c\"}");
  expect_input_error(make_file(R"({"__metadata__":"pt"})"), "'__metadata__' is not an object",
                     "\"pt\"");
  expect_input_error(make_file(R"({"__metadata__":["pt"]})"), "'__metadata__' is not an object",
                     "array");
}

TEST_CASE("parse error: BOOL bytes other than 0 and 1", "[cpu]") {
  std::vector<std::byte> buffer = {std::byte{1}, std::byte{0}, std::byte{2}};
  expect_input_error(
      make_file(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", buffer),
      "tensor 'm': BOOL byte is not 0 or 1", "2");
}

TEST_CASE("parse error: duplicate tensor names and keys", "[cpu]") {
  expect_input_error(make_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                               R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                               zeros(2)),
                     "duplicate tensor name", "w");
  expect_input_error(
      make_file(R"({"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})", zeros(4)),
      "'w': duplicate key", "dtype");
}

TEST_CASE("hostile headers: deep nesting and long arrays are refused early", "[cpu]") {
  // A deeply nested header would otherwise cost tens of bytes of memory per input byte.
  const std::string deep =
      "{\"t\":{\"shape\":" + std::string(100000, '[') + std::string(100000, ']') + "}}";
  expect_input_error(make_file(deep), "nests deeper than a safetensors header", "t");
  std::string long_shape = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1";
  for (int i = 0; i < 5000; ++i) long_shape += ",1";
  long_shape += "],\"data_offsets\":[0,1]}}";
  expect_input_error(make_file(long_shape, zeros(1)), "'t': nested value has more than 1024 items",
                     "t");
  // A shape of 1024 dims is still accepted.
  std::string max_shape = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1";
  for (int i = 1; i < 1024; ++i) max_shape += ",1";
  max_shape += "],\"data_offsets\":[0,1]}}";
  CHECK(
      seqrec::io::parse_safetensors(make_file(max_shape, zeros(1)), "hand").at("t").shape.size() ==
      1024);
}

TEST_CASE("header padding is optional and any whitespace is accepted", "[cpu]") {
  const auto d = seqrec::io::parse_safetensors(
      make_file(" \n{ \"t\" : {\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[0,4]} }\t",
                {std::byte{1}, std::byte{0}, std::byte{0xff}, std::byte{0xff}}),
      "hand");
  const auto t = d.at("t").as<std::int16_t>();
  CHECK(std::vector<std::int16_t>(t.begin(), t.end()) == std::vector<std::int16_t>{1, -1});
}

TEST_CASE("load_safetensors names the file in its errors", "[cpu]") {
  TempDir dir;
  const fs::path missing = dir.path() / "absent.safetensors";
  CHECK_THROWS_AS(seqrec::io::load_safetensors(missing), seqrec::InputError);
  const fs::path junk = dir.path() / "junk.safetensors";
  seqrec::io::atomic_write(junk, std::string_view("\x04\0\0\0\0\0\0\0[1]x", 12));
  try {
    seqrec::io::load_safetensors(junk);
    FAIL("junk parsed");
  } catch (const seqrec::InputError& e) {
    CHECK(e.file() == junk.string());
    CHECK_THAT(e.what(), ContainsSubstring(junk.string()));
  }
}

TEST_CASE("save_safetensors refuses data it could not read back", "[cpu]") {
  TempDir dir;
  const fs::path path = dir.path() / "bad.safetensors";
  const auto refuses = [&](const SafetensorsData& d, const std::string& part) {
    try {
      seqrec::io::save_safetensors(path, d);
      FAIL("saved");
    } catch (const seqrec::Error& e) {
      CHECK_THAT(e.what(), ContainsSubstring(part));
    }
    CHECK_FALSE(fs::exists(path));
  };
  SafetensorsData d;
  d.tensors["w"] = Tensor{DType::F32, {2, 2}, zeros(12)};
  refuses(d, "tensor 'w' has 12 bytes but shape [2,2] of F32 needs 16");
  d.tensors["w"] = Tensor{DType::F32, {-2}, {}};
  refuses(d, "invalid shape [-2]");
  d.tensors["w"] = Tensor{DType::BOOL, {2}, {std::byte{1}, std::byte{7}}};
  refuses(d, "BOOL byte 7");
  d.tensors.clear();
  d.tensors["__metadata__"] = Tensor::from(std::vector<float>{1}, {1});
  refuses(d, "reserved");
  d.tensors.clear();
  d.tensors["bad\xff"] = Tensor::from(std::vector<float>{1}, {1});
  refuses(d, "not valid UTF-8");
  d.tensors.clear();
  d.metadata["k"] = "\xc3";
  refuses(d, "not valid UTF-8");
  CHECK(fs::is_empty(dir.path()));
}
