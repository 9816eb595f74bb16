// Readers for interaction logs and item titles: the first step of the data flow, from a file on
// disk to an InteractionLog of raw (user, item) ids grouped by user in chronological order.
//
// Supported formats (Format::Auto picks one from the extension):
//   Tsv        `user<TAB>item[<TAB>order]`            any other extension (.tsv, none, ...)
//   Csv        `user,item[,order]`, optional header   .csv
//   SasRec     `user item` (space-separated), file order is chronological          .txt
//   MovieLens  `user::item::rating::timestamp` (ratings.dat), sorted by timestamp   .dat
// The order column may be an integer or a finite float; rows of a user are sorted by it with a
// STABLE sort, so ties keep their file order. Without an order column the file order is kept.
//
// Input rules, each violation a seqrec::InputError naming the file, the 1-based line and the value:
//   - ids are non-negative integers that fit in 64 bits;
//   - every line has the same number of columns (2 or 3 for Tsv/Csv, 2 for SasRec, 4 for
//     MovieLens);
//   - a Csv header is allowed only on line 1 and only when its first field is not a number;
//   - CRLF line ends and a UTF-8 byte-order mark are tolerated; spaces around fields are ignored;
//   - blank lines are allowed only at the END of a file (a blank line followed by more data is an
//     error: it usually means two files were pasted together or a file was cut);
//   - a file without a single data line is an error (line 0).
//
// Files are read whole into memory and parsed with std::from_chars (ml-1m's 1M lines parse in
// well under a second).
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "seqrec/core/error.hpp"

namespace seqrec::data {

/// File format of an interaction log; Auto chooses by extension (see the file comment).
enum class Format { Auto, Tsv, Csv, SasRec, MovieLens };

/// Raw interactions grouped by user (users in order of first appearance), each user's rows in
/// chronological order. user[k], item[k] is the k-th interaction.
struct InteractionLog {
  std::vector<std::int64_t> user;  // (N,) raw user ids
  std::vector<std::int64_t> item;  // (N,) raw item ids
  std::string source;              // path it came from, for messages
  /// Number of interactions N.
  std::size_t size() const { return user.size(); }
};

/// Item titles in file order: item[k] is titled title[k].
struct ItemTitles {
  std::vector<std::int64_t> item;
  std::vector<std::string> title;
};

/// An interaction log and, when the folder has one, its item titles.
struct DatasetFiles {
  InteractionLog log;
  std::optional<ItemTitles> items;
};

/// Lower-case name of a format: "auto", "tsv", "csv", "sasrec", "movielens".
inline std::string_view to_string(Format f) {
  switch (f) {
    case Format::Auto:
      return "auto";
    case Format::Tsv:
      return "tsv";
    case Format::Csv:
      return "csv";
    case Format::SasRec:
      return "sasrec";
    case Format::MovieLens:
      return "movielens";
  }
  return "unknown";
}

/// Parses a format name as written by to_string (for command-line flags); nullopt if unknown.
inline std::optional<Format> parse_format(std::string_view name) {
  for (Format f : {Format::Auto, Format::Tsv, Format::Csv, Format::SasRec, Format::MovieLens}) {
    if (name == to_string(f)) return f;
  }
  return std::nullopt;
}

/// The format Format::Auto resolves to for a path: .dat MovieLens, .csv Csv, .txt SasRec, else Tsv
/// (extension compared case-insensitively).
inline Format format_from_extension(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  for (char& c : ext) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (ext == ".dat") return Format::MovieLens;
  if (ext == ".csv") return Format::Csv;
  if (ext == ".txt") return Format::SasRec;
  return Format::Tsv;
}

namespace detail {

/// The whole file as a string; InputError (line 0, value = path) if it is missing or unreadable.
inline std::string read_whole_file(const std::filesystem::path& path, std::string_view what) {
  const std::string name = path.string();
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) {
    throw InputError(name, 0, std::string(what) + " not found", name);
  }
  if (std::filesystem::is_directory(st)) {
    throw InputError(name, 0, std::string(what) + " is a folder, expected a file", name);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(name, 0, "cannot open " + std::string(what), name);
  std::string buf;
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) throw InputError(name, 0, "cannot read " + std::string(what), name);
  in.seekg(0, std::ios::beg);
  buf.resize(static_cast<std::size_t>(size));
  if (size > 0 && !in.read(buf.data(), size)) {
    throw InputError(name, 0, "cannot read " + std::string(what), name);
  }
  return buf;
}

/// `s` without leading and trailing spaces and tabs.
inline std::string_view trim(std::string_view s) {
  auto blank = [](char c) { return c == ' ' || c == '\t'; };
  std::size_t b = 0, e = s.size();
  while (b < e && blank(s[b])) ++b;
  while (e > b && blank(s[e - 1])) --e;
  return s.substr(b, e - b);
}

/// Calls fn(line_number, line) for every data line of `text` (1-based numbers, '\r' and a leading
/// UTF-8 BOM removed). Blank lines are allowed only at the end; one followed by data throws.
/// Returns the number of data lines; a file with none throws (line 0).
template <typename Fn>
std::size_t for_each_data_line(std::string_view text, const std::string& file,
                               std::string_view what, Fn&& fn) {
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  std::size_t line_no = 0;
  std::size_t first_blank = 0;  // first blank line of the current run of blank lines, 0 if none
  std::size_t data_lines = 0;
  std::size_t pos = 0;
  const char* base = text.data();
  while (pos < text.size()) {
    const void* nl = std::memchr(base + pos, '\n', text.size() - pos);
    const std::size_t end =
        nl ? static_cast<std::size_t>(static_cast<const char*>(nl) - base) : text.size();
    std::string_view line(base + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      if (first_blank == 0) first_blank = line_no;
      continue;
    }
    if (first_blank != 0) {
      throw InputError(file, first_blank,
                       "blank line inside the " + std::string(what) +
                           " (only trailing blank lines are allowed; data follows on line " +
                           std::to_string(line_no) + ")",
                       "");
    }
    ++data_lines;
    fn(line_no, line);
  }
  if (data_lines == 0) {
    throw InputError(file, 0,
                     text.empty() ? std::string(what) + " is empty"
                                  : std::string(what) + " has only blank lines",
                     "");
  }
  return data_lines;
}

/// Fields of a line split on one delimiter character, each trimmed of spaces/tabs. Keeps the first
/// kMax fields and counts all of them.
struct Fields {
  static constexpr std::size_t kMax = 4;
  std::array<std::string_view, kMax> f{};
  std::size_t count = 0;
};

inline Fields split_on(std::string_view line, char delim) {
  // A plain loop: lines are short (ml-1m averages 13 bytes), so find()/memchr per field would
  // cost more in calls than it saves.
  Fields out;
  const char* p = line.data();
  const char* const end = p + line.size();
  const char* start = p;
  for (;; ++p) {
    if (p == end || *p == delim) {
      if (out.count < Fields::kMax) {
        out.f[out.count] = trim(std::string_view(start, static_cast<std::size_t>(p - start)));
      }
      ++out.count;
      if (p == end) break;
      start = p + 1;
    }
  }
  return out;
}

inline Fields split_on_string(std::string_view line, std::string_view delim) {
  Fields out;
  std::size_t start = 0;
  while (true) {
    const std::size_t d = line.find(delim, start);
    const std::string_view field =
        line.substr(start, d == std::string_view::npos ? std::string_view::npos : d - start);
    if (out.count < Fields::kMax) out.f[out.count] = trim(field);
    ++out.count;
    if (d == std::string_view::npos) break;
    start = d + delim.size();
  }
  return out;
}

inline Fields split_on_whitespace(std::string_view line) {
  Fields out;
  std::size_t pos = 0;
  while (true) {
    pos = line.find_first_not_of(" \t", pos);
    if (pos == std::string_view::npos) break;
    std::size_t end = line.find_first_of(" \t", pos);
    if (end == std::string_view::npos) end = line.size();
    if (out.count < Fields::kMax) out.f[out.count] = line.substr(pos, end - pos);
    ++out.count;
    pos = end;
  }
  return out;
}

/// A non-negative 64-bit id; `what` names the column in messages ("user id (column 1)").
inline std::int64_t parse_id(std::string_view field, const std::string& file, std::size_t line,
                             std::string_view what, std::string_view note = "") {
  if (field.empty()) throw InputError(file, line, std::string(what) + " is empty", "");
  std::int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  if (ec == std::errc() && ptr == field.data() + field.size()) {
    if (v < 0) throw InputError(file, line, std::string(what) + " is negative", std::string(field));
    return v;
  }
  if (field.front() == '-') {
    throw InputError(file, line, std::string(what) + " is negative", std::string(field));
  }
  if (ec == std::errc::result_out_of_range && ptr == field.data() + field.size()) {
    throw InputError(file, line, std::string(what) + " does not fit in 64 bits",
                     std::string(field));
  }
  throw InputError(file, line,
                   std::string(what) + " is not a non-negative integer" + std::string(note),
                   std::string(field));
}

/// A finite number, integer or float; `is_int` says which (integers keep full 64-bit precision).
struct OrderValue {
  std::int64_t i = 0;
  double d = 0.0;
  bool is_int = true;
};

inline OrderValue parse_order(std::string_view field, const std::string& file, std::size_t line,
                              std::string_view what) {
  if (field.empty()) throw InputError(file, line, std::string(what) + " is empty", "");
  OrderValue out;
  const char* end = field.data() + field.size();
  {
    const auto [ptr, ec] = std::from_chars(field.data(), end, out.i);
    if (ec == std::errc() && ptr == end) return out;
  }
  const auto [ptr, ec] = std::from_chars(field.data(), end, out.d);
  if (ptr != end || (ec != std::errc() && ec != std::errc::result_out_of_range)) {
    throw InputError(file, line, std::string(what) + " is not a number", std::string(field));
  }
  if (ec == std::errc::result_out_of_range || !std::isfinite(out.d)) {
    throw InputError(file, line, std::string(what) + " must be a finite number",
                     std::string(field));
  }
  out.is_int = false;
  return out;
}

/// True when a field does not even start like a number (a Csv header cell such as "user_id").
inline bool is_non_numeric(std::string_view field) {
  if (field.empty()) return false;
  double d = 0.0;
  const auto [ptr, ec] = std::from_chars(field.data(), field.data() + field.size(), d);
  return ec == std::errc::invalid_argument;
}

/// Rows as read, before grouping: raw ids and, when the format has one, the order key.
struct RawRows {
  std::vector<std::int64_t> user, item;
  std::vector<std::int64_t> key_int;  // order keys while all are integers
  std::vector<double> key_double;     // order keys once a float has been seen
  bool has_key = false;
  bool key_is_double = false;

  void add_key(const OrderValue& v) {
    if (!v.is_int && !key_is_double) {
      key_double.assign(key_int.begin(), key_int.end());
      key_int.clear();
      key_int.shrink_to_fit();
      key_is_double = true;
    }
    if (key_is_double) {
      key_double.push_back(v.is_int ? static_cast<double>(v.i) : v.d);
    } else {
      key_int.push_back(v.i);
    }
  }
};

/// Groups rows by user (first-appearance order, file order within a user) and stable-sorts each
/// user's rows by the order key when there is one.
inline InteractionLog group_and_sort(RawRows& rows, std::string source) {
  const std::size_t n = rows.user.size();
  InteractionLog log;
  log.source = std::move(source);
  // Dense user index per row, in order of first appearance. The file is "grouped" when no user
  // comes back after another user's rows.
  std::vector<std::uint32_t> uidx(n);
  std::vector<std::size_t> counts;
  std::unordered_map<std::int64_t, std::uint32_t> index;
  std::int64_t last_user = 0;
  std::uint32_t last_index = 0;
  bool grouped = true;
  for (std::size_t k = 0; k < n; ++k) {
    const std::int64_t u = rows.user[k];
    if (k == 0 || u != last_user) {
      auto [it, inserted] = index.try_emplace(u, static_cast<std::uint32_t>(counts.size()));
      if (inserted) {
        counts.push_back(0);
      } else {
        grouped = false;
      }
      last_user = u;
      last_index = it->second;
    }
    uidx[k] = last_index;
    ++counts[last_index];
  }
  auto key_sorted = [&](const auto& key) {
    for (std::size_t k = 1; k < n; ++k) {
      if (uidx[k] == uidx[k - 1] && key[k] < key[k - 1]) return false;
    }
    return true;
  };
  const bool chronological = !rows.has_key || (rows.key_is_double ? key_sorted(rows.key_double)
                                                                  : key_sorted(rows.key_int));
  if (grouped && chronological) {  // the common case: files written grouped and sorted
    log.user = std::move(rows.user);
    log.item = std::move(rows.item);
    return log;
  }
  // Counting sort by user index (stable), then a stable sort of each user's segment by key.
  std::vector<std::size_t> start(counts.size() + 1, 0);
  for (std::size_t u = 0; u < counts.size(); ++u) start[u + 1] = start[u] + counts[u];
  std::vector<std::size_t> perm(n);
  {
    std::vector<std::size_t> next(start.begin(), start.end() - 1);
    for (std::size_t k = 0; k < n; ++k) perm[next[uidx[k]]++] = k;
  }
  if (rows.has_key) {
    auto sort_segments = [&](const auto& key) {
      auto less = [&key](std::size_t a, std::size_t b) { return key[a] < key[b]; };
      for (std::size_t u = 0; u < counts.size(); ++u) {
        auto b = perm.begin() + static_cast<std::ptrdiff_t>(start[u]);
        auto e = perm.begin() + static_cast<std::ptrdiff_t>(start[u + 1]);
        if (!std::is_sorted(b, e, less)) std::stable_sort(b, e, less);
      }
    };
    if (rows.key_is_double) {
      sort_segments(rows.key_double);
    } else {
      sort_segments(rows.key_int);
    }
  }
  log.user.resize(n);
  log.item.resize(n);
  for (std::size_t k = 0; k < n; ++k) {
    log.user[k] = rows.user[perm[k]];
    log.item[k] = rows.item[perm[k]];
  }
  return log;
}

inline std::string column_hint(std::string_view line, Format f) {
  if (f == Format::Tsv && line.find(',') != std::string_view::npos) {
    return "; the line has commas: is it a CSV file? (pass Format::Csv or use a .csv name)";
  }
  if (f == Format::Tsv && line.find(' ') != std::string_view::npos) {
    return "; the line has spaces: is it a SasRec text file? (pass Format::SasRec or use .txt)";
  }
  return "";
}

}  // namespace detail

/// Reads an interaction log (see the file comment for formats and rules). Throws InputError naming
/// file, line and value for any bad input.
inline InteractionLog read_interactions(const std::filesystem::path& path,
                                        Format format = Format::Auto) {
  using detail::Fields;
  const std::string file = path.string();
  if (format == Format::Auto) format = format_from_extension(path);
  const std::string text = detail::read_whole_file(path, "interactions file");

  detail::RawRows rows;
  const std::size_t guess = text.size() / 12 + 1;
  rows.user.reserve(guess);
  rows.item.reserve(guess);

  std::size_t expected_cols = 0;  // fixed by the first data (or header) line for Tsv/Csv
  std::size_t expected_from = 0;  // the line that fixed it

  auto columns_error = [&](std::size_t line_no, std::string_view line, std::size_t got,
                           std::string expected) -> InputError {
    return InputError(
        file, line_no,
        "expected " + expected + ", got " + std::to_string(got) + detail::column_hint(line, format),
        std::string(line));
  };

  auto handle = [&](std::size_t line_no, std::string_view line) {
    Fields fs;
    switch (format) {
      case Format::Tsv:
        fs = detail::split_on(line, '\t');
        break;
      case Format::Csv:
        fs = detail::split_on(line, ',');
        break;
      case Format::SasRec:
        fs = detail::split_on_whitespace(line);
        break;
      case Format::MovieLens:
        fs = detail::split_on_string(line, "::");
        break;
      case Format::Auto:
        break;
    }
    if (format == Format::Tsv || format == Format::Csv) {
      const char* sep = format == Format::Tsv ? "tab-separated" : "comma-separated";
      if (expected_cols == 0) {
        if (fs.count != 2 && fs.count != 3) {
          throw columns_error(line_no, line, fs.count,
                              std::string("2 or 3 ") + sep + " columns (user, item[, order])");
        }
        expected_cols = fs.count;
        expected_from = line_no;
        rows.has_key = fs.count == 3;
        if (format == Format::Csv && line_no == 1 && detail::is_non_numeric(fs.f[0])) {
          return;  // header row
        }
      } else if (fs.count != expected_cols) {
        throw columns_error(line_no, line, fs.count,
                            std::to_string(expected_cols) + " " + sep + " columns as on line " +
                                std::to_string(expected_from));
      }
    } else if (format == Format::SasRec) {
      if (fs.count != 2) {
        throw columns_error(line_no, line, fs.count, "2 space-separated columns (user item)");
      }
    } else if (fs.count != 4) {
      throw columns_error(line_no, line, fs.count,
                          "4 '::'-separated columns (user::item::rating::timestamp)");
    }
    const bool csv_or_tsv = format == Format::Tsv || format == Format::Csv;
    const std::string_view note =
        line_no == 1 && format != Format::Csv ? " (only Csv files may have a header row)" : "";
    rows.user.push_back(detail::parse_id(fs.f[0], file, line_no, "user id (column 1)", note));
    rows.item.push_back(detail::parse_id(fs.f[1], file, line_no, "item id (column 2)"));
    if (format == Format::MovieLens) {
      detail::parse_order(fs.f[2], file, line_no, "rating (column 3)");
      rows.add_key(detail::parse_order(fs.f[3], file, line_no, "timestamp (column 4)"));
    } else if (csv_or_tsv && expected_cols == 3) {
      rows.add_key(detail::parse_order(fs.f[2], file, line_no, "order (column 3)"));
    }
  };

  detail::for_each_data_line(text, file, "interactions file", handle);
  if (format == Format::MovieLens) rows.has_key = true;
  if (rows.user.empty()) {
    throw InputError(file, 0, "interactions file has a header but no data lines", "");
  }
  return detail::group_and_sort(rows, file);
}

/// Reads `item_id<TAB>title` lines (the title is everything after the first tab, trailing spaces
/// removed). Throws InputError on a missing tab, a bad or duplicate id, or an empty title.
inline ItemTitles read_items(const std::filesystem::path& path) {
  const std::string file = path.string();
  const std::string text = detail::read_whole_file(path, "items file");
  ItemTitles out;
  std::unordered_map<std::int64_t, std::size_t> first_line;
  detail::for_each_data_line(
      text, file, "items file", [&](std::size_t line_no, std::string_view line) {
        const auto tab = line.find('\t');
        if (tab == std::string_view::npos) {
          throw InputError(file, line_no,
                           "expected 2 tab-separated columns (item_id, title), got 1",
                           std::string(detail::trim(line)));
        }
        const std::string_view id_field = detail::trim(line.substr(0, tab));
        const std::int64_t id = detail::parse_id(id_field, file, line_no, "item id (column 1)");
        const std::string_view title = detail::trim(line.substr(tab + 1));
        if (title.empty()) {
          throw InputError(file, line_no, "empty title for item", std::string(id_field));
        }
        auto [it, inserted] = first_line.try_emplace(id, line_no);
        if (!inserted) {
          throw InputError(
              file, line_no,
              "duplicate item id (first seen on line " + std::to_string(it->second) + ")",
              std::string(id_field));
        }
        out.item.push_back(id);
        out.title.emplace_back(title);
      });
  return out;
}

/// Loads a dataset folder: dir/interactions.tsv (required) and dir/items.tsv (if present).
inline DatasetFiles load_dataset_dir(const std::filesystem::path& dir) {
  const std::string name = dir.string();
  std::error_code ec;
  const auto st = std::filesystem::status(dir, ec);
  if (ec || !std::filesystem::exists(st)) {
    throw InputError(name, 0, "dataset folder not found", name);
  }
  if (!std::filesystem::is_directory(st)) {
    throw InputError(name, 0, "dataset path is not a folder", name);
  }
  const auto interactions = dir / "interactions.tsv";
  if (!std::filesystem::exists(interactions, ec)) {
    throw InputError(interactions.string(), 0,
                     "dataset folder has no interactions.tsv (user<TAB>item[<TAB>order])",
                     interactions.string());
  }
  DatasetFiles out;
  out.log = read_interactions(interactions, Format::Tsv);
  const auto items = dir / "items.tsv";
  if (std::filesystem::exists(items, ec)) out.items = read_items(items);
  return out;
}

}  // namespace seqrec::data
