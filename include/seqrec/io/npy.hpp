// Reading and writing NumPy's .npy format (numpy.lib.format), the format in which Python tools
// hand seqrec float matrices such as pretrained item embeddings. A file is the magic
// "\x93NUMPY", a major and minor version byte, a little-endian header length (2 bytes in version
// 1.0, 4 bytes in 2.0 and 3.0), the header — a Python dict literal
// "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" padded with spaces and ended by
// '\n' — and then the raw elements.
//
// Only what seqrec needs is read: little-endian float32 ('<f4') and float16 ('<f2', converted to
// float), C order. The header is parsed strictly (exactly the keys descr, fortran_order and shape,
// each once, with literal values) and the data must be exactly as long as the shape says, so a
// truncated download or a file with junk appended is refused. Every problem is a
// seqrec::InputError naming the file and the offending value. save_npy writes version 1.0 float32
// files that numpy.load reads, through atomic_write.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/io/atomic_file.hpp"

namespace seqrec::io {

static_assert(std::endian::native == std::endian::little,
              "seqrec::io::npy reads little-endian elements in place");

/// A float array read from a .npy file: its shape (C order), the elements converted to float and
/// the dtype the file stored them in ("<f4" or "<f2").
struct NpyArray {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // (prod(shape),) row-major
  std::string dtype;
};

namespace detail {

inline constexpr std::string_view kNpyMagic = "\x93NUMPY";

/// IEEE 754 binary16 -> binary32, exact for every input (subnormals, infinities, NaN payloads).
inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: value = mant * 2^-24; normalise it into a float.
    std::uint32_t e = 113;  // exponent of 2^-14 in float bias, decreased while shifting
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

/// A strict reader of the header dict literal numpy writes.
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, const std::string& file) : s_(text), file_(file) {}

  struct Result {
    std::string descr;
    bool fortran_order = false;
    std::vector<std::int64_t> shape;
  };

  Result parse() {
    Result r;
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        break;
      }
      const std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (have_descr) fail("header has the key 'descr' twice", key);
        have_descr = true;
        r.descr = parse_string();
      } else if (key == "fortran_order") {
        if (have_fortran) fail("header has the key 'fortran_order' twice", key);
        have_fortran = true;
        r.fortran_order = parse_bool();
      } else if (key == "shape") {
        if (have_shape) fail("header has the key 'shape' twice", key);
        have_shape = true;
        r.shape = parse_shape();
      } else {
        fail("header has an unexpected key (expected descr, fortran_order, shape)", key);
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != '}') {
        fail("header: expected ',' or '}' after the value of '" + key + "'", rest());
      }
    }
    skip_ws();
    if (pos_ != s_.size()) fail("header has text after the closing '}'", rest());
    if (!have_descr) fail("header lacks the key 'descr'", std::string(s_));
    if (!have_fortran) fail("header lacks the key 'fortran_order'", std::string(s_));
    if (!have_shape) fail("header lacks the key 'shape'", std::string(s_));
    return r;
  }

 private:
  [[noreturn]] void fail(const std::string& message, const std::string& value) const {
    throw InputError(file_, 0, "npy " + message, value);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  std::string rest() const { return std::string(s_.substr(pos_, 40)); }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("header: expected '") + c + "'", rest());
    ++pos_;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("header: expected a quoted string", rest());
    const std::size_t end = s_.find(q, pos_ + 1);
    if (end == std::string_view::npos) fail("header: unterminated string", rest());
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    if (out.find('\\') != std::string::npos) fail("header: escapes in strings", out);
    pos_ = end + 1;
    return out;
  }
  bool parse_bool() {
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    fail("header: fortran_order is not True or False", rest());
  }
  std::vector<std::int64_t> parse_shape() {
    const std::size_t start = pos_;
    const auto bad = [&] {
      fail("header: shape is not a tuple of non-negative integers", rest_from(start));
    };
    std::vector<std::int64_t> shape;
    if (peek() != '(') bad();
    ++pos_;
    bool need_comma = false;  // a 1-tuple must be written "(n,)"
    for (;;) {
      skip_ws();
      if (peek() == ')') {
        if (shape.size() == 1 && need_comma) bad();
        ++pos_;
        return shape;
      }
      if (peek() < '0' || peek() > '9') bad();
      std::int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, peek() - '0', &v)) {
          fail("header: shape dimension does not fit in 64 bits", rest_from(start));
        }
        ++pos_;
      }
      shape.push_back(v);
      if (shape.size() > 32) fail("header: shape has more than 32 dimensions", rest_from(start));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        need_comma = false;
      } else if (peek() == ')') {
        need_comma = true;
      } else {
        bad();
      }
    }
  }
  std::string rest_from(std::size_t start) const {
    const std::size_t close = s_.find(')', start);
    const std::size_t n = close == std::string_view::npos ? 40 : close + 1 - start;
    return std::string(s_.substr(start, n));
  }

  std::string_view s_;
  std::size_t pos_ = 0;
  const std::string& file_;
};

inline std::string npy_shape_text(std::span<const std::int64_t> shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ',';
  return s + ")";
}

}  // namespace detail

/// Parses the bytes of a .npy file (float32 '<f4' or float16 '<f2', C order, format version 1.0,
/// 2.0 or 3.0). `file` names the source in errors. Throws seqrec::InputError on a bad magic or
/// version, a malformed header, another dtype or Fortran order, and data shorter or longer than
/// the shape says.
inline NpyArray parse_npy(std::span<const std::byte> bytes, const std::string& file) {
  const auto fail = [&](const std::string& message, const std::string& value) {
    return InputError(file, 0, "npy " + message, value);
  };
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  if (n < 8 || std::memcmp(p, detail::kNpyMagic.data(), detail::kNpyMagic.size()) != 0) {
    std::string got;
    for (std::size_t i = 0; i < std::min<std::size_t>(n, 6); ++i) {
      const unsigned c = p[i];
      got += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c))
                                     : "\\x" + std::string(1, "0123456789abcdef"[c >> 4]) +
                                           std::string(1, "0123456789abcdef"[c & 15]);
    }
    throw fail(n < 8 ? "file is too short to be a .npy file"
                     : "file does not start with the "
                       "magic \\x93NUMPY",
               got);
  }
  const unsigned major = p[6], minor = p[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    throw fail("format version is not 1.0, 2.0 or 3.0",
               std::to_string(major) + "." + std::to_string(minor));
  }
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (n < 8 + len_bytes) throw fail("file ends inside the header length", std::to_string(n));
  std::uint64_t header_len = 0;
  for (std::size_t i = 0; i < len_bytes; ++i) header_len |= std::uint64_t{p[8 + i]} << (8 * i);
  const std::size_t header_begin = 8 + len_bytes;
  if (header_len > n - header_begin) {
    throw fail("header length runs past the end of the " + std::to_string(n) + "-byte file",
               std::to_string(header_len));
  }
  const std::string_view header(reinterpret_cast<const char*>(p + header_begin), header_len);
  for (char c : header) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80 || (u < 0x20 && c != '\n' && c != '\t' && c != '\r')) {
      throw fail("header is not printable ASCII", std::string(header.substr(0, 80)));
    }
  }
  if (header.empty() || header.back() != '\n') {
    throw fail("header does not end with a newline", std::string(header.substr(0, 80)));
  }
  const auto h = detail::NpyHeaderParser(header, file).parse();

  std::size_t item = 0;
  if (h.descr == "<f4") {
    item = 4;
  } else if (h.descr == "<f2") {
    item = 2;
  } else {
    throw fail("dtype is not supported (only little-endian float32 '<f4' and float16 '<f2')",
               h.descr);
  }
  if (h.fortran_order) {
    throw fail("array is in Fortran order; save it in C order (numpy.ascontiguousarray)",
               "fortran_order: True");
  }
  std::int64_t numel = 1;
  std::int64_t nbytes = 0;
  for (std::int64_t d : h.shape) {
    if (__builtin_mul_overflow(numel, d, &numel)) {
      throw fail("shape has more elements than fit in 64 bits", detail::npy_shape_text(h.shape));
    }
  }
  if (__builtin_mul_overflow(numel, static_cast<std::int64_t>(item), &nbytes)) {
    throw fail("shape has more bytes than fit in 64 bits", detail::npy_shape_text(h.shape));
  }
  const std::size_t data_begin = header_begin + header_len;
  const std::uint64_t have = n - data_begin;
  if (have != static_cast<std::uint64_t>(nbytes)) {
    throw fail(std::string(have < static_cast<std::uint64_t>(nbytes) ? "file is truncated: "
                                                                     : "file has extra bytes: ") +
                   "shape " + detail::npy_shape_text(h.shape) + " of " + h.descr + " needs " +
                   std::to_string(nbytes) + " data bytes but the file holds " +
                   std::to_string(have),
               std::to_string(have));
  }

  NpyArray out;
  out.shape = h.shape;
  out.dtype = h.descr;
  out.data.resize(static_cast<std::size_t>(numel));
  const unsigned char* d = p + data_begin;
  if (item == 4) {
    if (nbytes > 0) std::memcpy(out.data.data(), d, static_cast<std::size_t>(nbytes));
  } else {
    for (std::size_t i = 0; i < out.data.size(); ++i) {
      const auto h16 = static_cast<std::uint16_t>(d[2 * i] | (d[2 * i + 1] << 8));
      out.data[i] = detail::half_to_float(h16);
    }
  }
  return out;
}

/// Reads a .npy file (see parse_npy); errors name `path`.
inline NpyArray load_npy(const std::filesystem::path& path) {
  const std::vector<std::byte> bytes = read_file(path);
  return parse_npy(bytes, path.string());
}

/// Writes a (rows, cols) row-major float32 matrix as a version 1.0 .npy file through atomic_write.
inline void save_npy(const std::filesystem::path& path, const float* data, std::int64_t rows,
                     std::int64_t cols) {
  SEQREC_CHECK(rows >= 0 && cols >= 0, "save_npy: negative shape");
  SEQREC_CHECK(data != nullptr || rows * cols == 0, "save_npy: null data");
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  // Pad with spaces so magic + version + length + header is a multiple of 64, ending in '\n'.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  SEQREC_CHECK(header.size() <= 0xffff, "save_npy: header too long");
  const std::size_t nbytes = static_cast<std::size_t>(rows * cols) * sizeof(float);
  std::vector<std::byte> out(10 + header.size() + nbytes);
  std::memcpy(out.data(), detail::kNpyMagic.data(), detail::kNpyMagic.size());
  out[6] = std::byte{1};
  out[7] = std::byte{0};
  out[8] = static_cast<std::byte>(header.size() & 0xff);
  out[9] = static_cast<std::byte>(header.size() >> 8);
  std::memcpy(out.data() + 10, header.data(), header.size());
  if (nbytes > 0) std::memcpy(out.data() + 10 + header.size(), data, nbytes);
  atomic_write(path, out);
}

}  // namespace seqrec::io
