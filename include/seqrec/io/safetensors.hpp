// Reading and writing the safetensors format (https://github.com/huggingface/safetensors), which
// seqrec uses for checkpoints so that they load in PyTorch/NumPy and vice versa. A file is an
// 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON (padded with spaces to a
// multiple of 8 by writers), then one data buffer. The header maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the buffer) and may hold
// "__metadata__": {string: string}.
//
// Files come from outside, so parse_safetensors trusts nothing: every inconsistency is a
// seqrec::InputError naming the file and the offending value, and no input can crash, hang or
// make it allocate more than a small multiple of the file size. Writing is deterministic
// (tensors sorted by name, contiguous offsets, fixed JSON layout) and goes through atomic_write.
// Tensor data is kept as raw little-endian bytes; the library requires a little-endian host.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "seqrec/core/error.hpp"
#include "seqrec/io/atomic_file.hpp"

namespace seqrec::io {

static_assert(std::endian::native == std::endian::little,
              "seqrec::io::safetensors keeps tensor bytes in file order (little-endian) and "
              "views them in place, which needs a little-endian host");

/// Element types of a safetensors file that seqrec reads and writes.
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

/// Largest header a file may declare (the limit the reference implementation uses too).
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100ull << 20;

/// Size of one element in bytes.
constexpr std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
      return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL:
      return 1;
  }
  throw Error("dtype_size: invalid DType value " + std::to_string(static_cast<int>(d)));
}

/// Name of a dtype as written in safetensors headers: "F64", "F32", ..., "BOOL".
constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::I16:
      return "I16";
    case DType::I8:
      return "I8";
    case DType::U8:
      return "U8";
    case DType::BOOL:
      return "BOOL";
  }
  throw Error("dtype_name: invalid DType value " + std::to_string(static_cast<int>(d)));
}

/// Inverse of dtype_name (exact, case-sensitive); nullopt for names seqrec does not support.
constexpr std::optional<DType> dtype_from_name(std::string_view name) {
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                  DType::I16, DType::I8, DType::U8, DType::BOOL}) {
    if (dtype_name(d) == name) return d;
  }
  return std::nullopt;
}

namespace detail {

template <typename T>
inline constexpr bool is_char_like_v =
    std::is_same_v<T, char> || std::is_same_v<T, wchar_t> || std::is_same_v<T, char8_t> ||
    std::is_same_v<T, char16_t> || std::is_same_v<T, char32_t>;

/// C++ types with a safetensors dtype. F16 and BF16 have none in C++20: use Tensor::bytes.
template <typename T>
concept HasDType = std::is_same_v<T, double> || std::is_same_v<T, float> ||
    std::is_same_v<T, bool> || std::is_same_v<T, std::byte> ||
    (std::is_integral_v<T> && !is_char_like_v<T> && !std::is_same_v<T, bool> &&
     (std::is_signed_v<T> ? (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8)
                          : sizeof(T) == 1));

/// Product of the dims, or nullopt when a dim is negative or the product overflows int64.
inline std::optional<std::int64_t> checked_numel(std::span<const std::int64_t> shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

/// numel * dtype_size, or nullopt on overflow of int64.
inline std::optional<std::int64_t> checked_nbytes(std::span<const std::int64_t> shape, DType d) {
  const auto n = checked_numel(shape);
  std::int64_t bytes = 0;
  if (!n || __builtin_mul_overflow(*n, static_cast<std::int64_t>(dtype_size(d)), &bytes)) {
    return std::nullopt;
  }
  return bytes;
}

inline std::string shape_text(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ',';
    s += std::to_string(shape[i]);
  }
  s += ']';
  return s;
}

/// JSON text of a value for an error message; never throws on bad UTF-8.
inline std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace detail

/// The dtype that stores C++ type T: double F64, float F32, int64_t I64, int32_t I32, int16_t
/// I16, int8_t I8, uint8_t and std::byte U8, bool BOOL.
template <typename T>
requires detail::HasDType<T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>)
    return DType::F64;
  else if constexpr (std::is_same_v<T, float>)
    return DType::F32;
  else if constexpr (std::is_same_v<T, bool>)
    return DType::BOOL;
  else if constexpr (std::is_same_v<T, std::byte>)
    return DType::U8;
  else if constexpr (std::is_unsigned_v<T>)
    return DType::U8;
  else if constexpr (sizeof(T) == 1)
    return DType::I8;
  else if constexpr (sizeof(T) == 2)
    return DType::I16;
  else if constexpr (sizeof(T) == 4)
    return DType::I32;
  else
    return DType::I64;
}

/// One tensor: dtype, shape (row-major, [] for a scalar) and its raw little-endian bytes
/// (bytes.size() == numel() * dtype_size(dtype)).
struct Tensor {
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;

  /// Number of elements (1 for shape []); throws seqrec::Error on a negative dim or overflow.
  std::int64_t numel() const {
    const auto n = detail::checked_numel(shape);
    if (!n) throw Error("Tensor::numel: invalid shape " + detail::shape_text(shape));
    return *n;
  }

  /// The elements viewed as T (no copy). Throws seqrec::Error when dtype is not dtype_of<T>()
  /// (naming both) or bytes does not hold exactly numel() elements.
  template <typename T>
  requires detail::HasDType<T> std::span<const T> as()
  const {
    if (dtype != dtype_of<T>()) {
      throw Error("Tensor::as: tensor holds " + std::string(dtype_name(dtype)) +
                  " but was read as " + std::string(dtype_name(dtype_of<T>())));
    }
    const std::int64_t n = numel();
    if (bytes.size() != static_cast<std::uint64_t>(n) * sizeof(T)) {
      throw Error("Tensor::as: " + std::to_string(bytes.size()) + " bytes do not hold shape " +
                  detail::shape_text(shape) + " of " + std::string(dtype_name(dtype)));
    }
    return {reinterpret_cast<const T*>(bytes.data()), static_cast<std::size_t>(n)};
  }

  /// Copies `values` into a tensor of dtype_of<T>() and the given shape; throws seqrec::Error
  /// when the shape is invalid or its element count differs from values.size().
  template <typename T>
  requires detail::HasDType<T>
  static Tensor from(std::span<const T> values, std::vector<std::int64_t> shape) {
    const auto n = detail::checked_numel(shape);
    if (!n || static_cast<std::uint64_t>(*n) != values.size()) {
      throw Error("Tensor::from: shape " + detail::shape_text(shape) + " does not hold " +
                  std::to_string(values.size()) + " values");
    }
    Tensor t;
    t.dtype = dtype_of<T>();
    t.shape = std::move(shape);
    const auto raw = std::as_bytes(values);
    t.bytes.assign(raw.begin(), raw.end());
    return t;
  }

  /// Convenience overload of from() for a vector (not std::vector<bool>, which has no data()).
  template <typename T>
  requires(detail::HasDType<T> && !std::is_same_v<T, bool>) static Tensor
      from(const std::vector<T>& values, std::vector<std::int64_t> shape) {
    return from(std::span<const T>(values), std::move(shape));
  }

  bool operator==(const Tensor&) const = default;
};

/// The contents of a safetensors file.
struct SafetensorsData {
  std::map<std::string, std::string> metadata;  ///< "__metadata__"; omitted from files when empty
  std::map<std::string, Tensor> tensors;

  /// The tensor called `name`; throws seqrec::Error naming it when there is none.
  const Tensor& at(const std::string& name) const {
    const auto it = tensors.find(name);
    if (it == tensors.end()) throw Error("safetensors: no tensor named '" + name + "'");
    return it->second;
  }

  bool operator==(const SafetensorsData&) const = default;
};

/// The bytes of a safetensors file holding `data`: tensors sorted by name with contiguous
/// offsets, "__metadata__" first (when non-empty), header padded with spaces to a multiple of 8.
/// Deterministic: equal data gives identical bytes. Throws seqrec::Error when a tensor's bytes
/// do not match its shape and dtype, a BOOL byte is not 0 or 1, a tensor is called
/// "__metadata__", or a name or metadata string is not valid UTF-8.
inline std::vector<std::byte> serialize_safetensors(const SafetensorsData& data) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!data.metadata.empty()) {
    auto& meta = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [key, value] : data.metadata) meta[key] = value;
  }
  std::uint64_t offset = 0;
  for (const auto& [name, t] : data.tensors) {
    const std::string where = "save_safetensors: tensor '" + name + "'";
    if (name == "__metadata__") throw Error(where + ": this name is reserved for metadata");
    const auto nbytes = detail::checked_nbytes(t.shape, t.dtype);
    if (!nbytes) throw Error(where + ": invalid shape " + detail::shape_text(t.shape));
    if (t.bytes.size() != static_cast<std::uint64_t>(*nbytes)) {
      throw Error(where + " has " + std::to_string(t.bytes.size()) + " bytes but shape " +
                  detail::shape_text(t.shape) + " of " + std::string(dtype_name(t.dtype)) +
                  " needs " + std::to_string(*nbytes));
    }
    if (t.dtype == DType::BOOL) {
      for (std::byte b : t.bytes) {
        if (std::to_integer<unsigned>(b) > 1) {
          throw Error(where + ": BOOL byte " + std::to_string(std::to_integer<unsigned>(b)) +
                      " is not 0 or 1");
        }
      }
    }
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(dtype_name(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.bytes.size()};
    header[name] = std::move(entry);
    offset += t.bytes.size();
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("save_safetensors: a tensor name or metadata string is not valid "
                            "UTF-8: ") +
                e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  std::vector<std::byte> out;
  out.reserve(8 + text.size() + offset);
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
  const auto text_bytes = std::as_bytes(std::span<const char>(text));
  out.insert(out.end(), text_bytes.begin(), text_bytes.end());
  for (const auto& [name, t] : data.tensors) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

/// Writes `data` to `path` with atomic_write (see serialize_safetensors for the layout).
inline void save_safetensors(const std::filesystem::path& path, const SafetensorsData& data) {
  atomic_write(path, std::span<const std::byte>(serialize_safetensors(data)));
}

/// Parses the bytes of a safetensors file, validating everything; `name_for_errors` is the file
/// name every seqrec::InputError carries. Accepted beyond what seqrec writes: any header length
/// (no padding required), any order of tensors in the buffer, gaps and trailing bytes in it.
/// Rejected: unknown dtypes, overlapping tensors, duplicate names or keys, BOOL bytes other than
/// 0 and 1, headers nested deeper or with longer arrays than a safetensors header needs.
inline SafetensorsData parse_safetensors(std::span<const std::byte> file,
                                         const std::string& name_for_errors) {
  using Json = nlohmann::json;
  const auto fail = [&](const std::string& message, const std::string& value) {
    return InputError(name_for_errors, 0, message, value);
  };
  // Arrays and objects nested in a tensor entry (shape, data_offsets) hold at most this many
  // items. Bounds memory for hostile headers; real shapes have a handful of dims.
  constexpr std::size_t kMaxInnerItems = 1024;

  if (file.size() < 8) {
    throw fail("file is shorter than the 8-byte header length", std::to_string(file.size()));
  }
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) {
    header_len |= static_cast<std::uint64_t>(std::to_integer<std::uint8_t>(file[i])) << (8 * i);
  }
  if (header_len > kSafetensorsMaxHeaderBytes) {
    throw fail("header length is over the 100 MiB limit", std::to_string(header_len));
  }
  if (header_len > file.size() - 8) {
    throw fail("header length is past the end of the file (" + std::to_string(file.size() - 8) +
                   " bytes follow the length)",
               std::to_string(header_len));
  }
  const auto* header_begin = reinterpret_cast<const char*>(file.data() + 8);
  const auto buffer = file.subspan(8 + header_len);
  // nlohmann's lexer takes a NUL byte for the end of input and would ignore what follows it.
  if (const void* nul = std::memchr(header_begin, 0, header_len)) {
    throw fail("header is not valid UTF-8 JSON",
               "NUL byte at header offset " +
                   std::to_string(static_cast<const char*>(nul) - header_begin));
  }

  // Parse with a callback that enforces the header's shape while parsing, so hostile input
  // (deep nesting, huge arrays, duplicate keys) is refused before it is built in memory.
  std::set<std::string> root_keys;
  std::set<std::string> entry_keys;
  std::string current_entry;
  std::size_t inner_items = 0;
  const Json::parser_callback_t limits = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::array_start:
        // Only objects may hold unboundedly many items: the root and its entries are objects.
        if (depth == 0) throw fail("header is not a JSON object", "array");
        if (depth == 1) {
          throw fail(current_entry == "__metadata__"
                         ? std::string("'__metadata__' is not an object")
                         : "tensor '" + current_entry + "': entry is not an object",
                     "array");
        }
        [[fallthrough]];
      case Json::parse_event_t::object_start:
        if (depth > 2) throw fail("header nests deeper than a safetensors header", current_entry);
        if (depth == 1) entry_keys.clear();
        if (depth == 2) inner_items = 0;
        break;
      case Json::parse_event_t::key:
        if (depth == 1) {
          current_entry = parsed.get_ref<const std::string&>();
          if (!root_keys.insert(current_entry).second) {
            throw fail("duplicate tensor name in header", current_entry);
          }
        } else if (depth == 2) {
          if (!entry_keys.insert(parsed.get_ref<const std::string&>()).second) {
            throw fail("'" + current_entry + "': duplicate key",
                       parsed.get_ref<const std::string&>());
          }
        } else if (++inner_items > kMaxInnerItems) {
          throw fail("'" + current_entry + "': nested value has more than " +
                         std::to_string(kMaxInnerItems) + " items",
                     current_entry);
        }
        break;
      case Json::parse_event_t::value:
        if (depth >= 3 && ++inner_items > kMaxInnerItems) {
          throw fail("'" + current_entry + "': nested value has more than " +
                         std::to_string(kMaxInnerItems) + " items",
                     current_entry);
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(header_begin, header_begin + header_len, limits);
  } catch (const Json::exception& e) {
    throw fail("header is not valid UTF-8 JSON", e.what());
  }
  if (!root.is_object()) throw fail("header is not a JSON object", root.type_name());

  struct Pending {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::uint64_t begin, end;
  };
  SafetensorsData out;
  std::vector<Pending> pending;
  pending.reserve(root.size());
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        throw fail("'__metadata__' is not an object", detail::json_text(entry));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          throw fail("'__metadata__' value of '" + key + "' is not a string",
                     detail::json_text(value));
        }
        out.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object())
      throw fail(where + ": entry is not an object", detail::json_text(entry));
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) throw fail(where + ": missing key", key);
    }

    const Json& dtype_json = entry.at("dtype");
    if (!dtype_json.is_string()) {
      throw fail(where + ": dtype is not a string", detail::json_text(dtype_json));
    }
    const auto dtype = dtype_from_name(dtype_json.get_ref<const std::string&>());
    if (!dtype) throw fail(where + ": unknown dtype", dtype_json.get<std::string>());

    const Json& shape_json = entry.at("shape");
    std::vector<std::int64_t> shape;
    const auto bad_shape = [&] {
      return fail(where + ": shape is not an array of non-negative integers",
                  detail::json_text(shape_json));
    };
    if (!shape_json.is_array()) throw bad_shape();
    shape.reserve(shape_json.size());
    for (const Json& d : shape_json) {
      if (d.is_number_unsigned()) {
        const auto v = d.get<std::uint64_t>();
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          throw bad_shape();
        }
        shape.push_back(static_cast<std::int64_t>(v));
      } else {
        throw bad_shape();  // negative integers, floats, anything else
      }
    }
    const auto nbytes = detail::checked_nbytes(shape, *dtype);
    if (!nbytes) {
      throw fail(where + ": shape has more elements or bytes than fit in 64 bits",
                 detail::json_text(shape_json));
    }

    const Json& offsets_json = entry.at("data_offsets");
    if (!offsets_json.is_array() || offsets_json.size() != 2 ||
        !offsets_json[0].is_number_unsigned() || !offsets_json[1].is_number_unsigned()) {
      throw fail(where + ": data_offsets is not two non-negative integers",
                 detail::json_text(offsets_json));
    }
    const auto begin = offsets_json[0].get<std::uint64_t>();
    const auto end = offsets_json[1].get<std::uint64_t>();
    if (begin > end) {
      throw fail(where + ": data_offsets begin is after end", detail::json_text(offsets_json));
    }
    if (end > buffer.size()) {
      throw fail(where + ": data_offsets end is past the " + std::to_string(buffer.size()) +
                     "-byte data buffer",
                 detail::json_text(offsets_json));
    }
    if (end - begin != static_cast<std::uint64_t>(*nbytes)) {
      throw fail(where + ": data_offsets hold " + std::to_string(end - begin) +
                     " bytes but shape " + detail::shape_text(shape) + " of " +
                     std::string(dtype_name(*dtype)) + " needs " + std::to_string(*nbytes),
                 detail::json_text(offsets_json));
    }
    pending.push_back({name, *dtype, std::move(shape), begin, end});
  }

  // Non-empty byte ranges must not overlap (empty ones hold no bytes, so they never do).
  std::vector<const Pending*> by_offset;
  for (const Pending& p : pending) {
    if (p.end > p.begin) by_offset.push_back(&p);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Pending* a, const Pending* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const Pending& prev = *by_offset[i - 1];
    const Pending& cur = *by_offset[i];
    if (cur.begin < prev.end) {
      throw fail("tensors '" + prev.name + "' [" + std::to_string(prev.begin) + "," +
                     std::to_string(prev.end) + "] and '" + cur.name + "' overlap",
                 "[" + std::to_string(cur.begin) + "," + std::to_string(cur.end) + "]");
    }
  }

  for (Pending& p : pending) {
    Tensor t;
    t.dtype = p.dtype;
    t.shape = std::move(p.shape);
    const auto bytes = buffer.subspan(p.begin, p.end - p.begin);
    if (p.dtype == DType::BOOL) {
      for (std::byte b : bytes) {
        if (std::to_integer<unsigned>(b) > 1) {
          throw fail("tensor '" + p.name + "': BOOL byte is not 0 or 1",
                     std::to_string(std::to_integer<unsigned>(b)));
        }
      }
    }
    t.bytes.assign(bytes.begin(), bytes.end());
    out.tensors.emplace(std::move(p.name), std::move(t));
  }
  return out;
}

/// Reads and parses a safetensors file (see parse_safetensors); errors name `path`.
inline SafetensorsData load_safetensors(const std::filesystem::path& path) {
  const std::vector<std::byte> file = read_file(path);
  return parse_safetensors(file, path.string());
}

}  // namespace seqrec::io
