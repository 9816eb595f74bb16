// Tests of the interaction and item readers: every format on a fixture, grouping and the stable
// chronological sort, tolerated quirks (CRLF, BOM, trailing blank lines, spaces), and one test
// per kind of bad input asserting the file, the 1-based line and the offending value.
#include <atomic>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "seqrec/data/interactions.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using seqrec::InputError;
using namespace seqrec::data;

namespace {

const fs::path kFixtures = fs::path(SEQREC_TEST_FIXTURES) / "data";

/// A fresh folder under the system temp directory, removed at the end of the test.
using TempDir = seqrec::test::TempDir;  // tag: data

/// Runs `fn`, which must throw InputError, and returns the error.
template <typename Fn>
InputError catch_input_error(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e;
  }
  FAIL("expected seqrec::InputError");
  return InputError("", 0, "", "");  // not reached: FAIL throws
}

using Ids = std::vector<std::int64_t>;

}  // namespace

TEST_CASE("format helpers", "[cpu]") {
  CHECK(format_from_extension("a/ratings.dat") == Format::MovieLens);
  CHECK(format_from_extension("x.CSV") == Format::Csv);
  CHECK(format_from_extension("ml-1m.txt") == Format::SasRec);
  CHECK(format_from_extension("interactions.tsv") == Format::Tsv);
  CHECK(format_from_extension("no_extension") == Format::Tsv);
  for (Format f : {Format::Auto, Format::Tsv, Format::Csv, Format::SasRec, Format::MovieLens}) {
    CHECK(parse_format(to_string(f)) == f);
  }
  CHECK_FALSE(parse_format("parquet").has_value());
}

TEST_CASE("tsv: grouped by first appearance, stable sort by order", "[cpu]") {
  const auto log = read_interactions(kFixtures / "tiny.tsv");
  CHECK(log.size() == 5);
  CHECK(log.user == Ids{10, 10, 10, 20, 20});
  CHECK(log.item == Ids{101, 100, 102, 201, 200});  // 100 and 102 tie on order 5: file order
  CHECK(log.source == (kFixtures / "tiny.tsv").string());
}

TEST_CASE("tsv without order column keeps file order", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("log.tsv", "3\t30\n1\t10\n3\t31\n1\t11\n3\t29\n");
  const auto log = read_interactions(p);
  CHECK(log.user == Ids{3, 3, 3, 1, 1});
  CHECK(log.item == Ids{30, 31, 29, 10, 11});
}

TEST_CASE("csv: header on line 1, float order, spaces around fields", "[cpu]") {
  const auto log = read_interactions(kFixtures / "tiny.csv");
  CHECK(log.user == Ids{7, 7, 7, 8});
  CHECK(log.item == Ids{2, 1, 3, 3});  // 1e0 < 2.5 == 2.5 (tie: file order)
  // Without a header too.
  TempDir dir;
  const auto p = dir.write("x.csv", "1,2\n1,3\n");
  CHECK(read_interactions(p).item == Ids{2, 3});
}

TEST_CASE("sasrec text: file order, runs of spaces", "[cpu]") {
  const auto log = read_interactions(kFixtures / "tiny.txt");
  CHECK(log.user == Ids{1, 1, 1, 2});
  CHECK(log.item == Ids{5, 3, 4, 5});
}

TEST_CASE("movielens ratings.dat: sorted by timestamp, ties in file order", "[cpu]") {
  const auto log = read_interactions(kFixtures / "ratings.dat");
  CHECK(log.user == Ids{1, 1, 1, 1, 2});
  CHECK(log.item == Ids{1193, 3408, 914, 661, 1357});
}

TEST_CASE("explicit format overrides the extension", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("log.dat", "1 2\n1 3\n");
  CHECK(read_interactions(p, Format::SasRec).item == Ids{2, 3});
  CHECK_THROWS_AS(read_interactions(p), InputError);  // as MovieLens: wrong column count
}

TEST_CASE("order column: integers keep 64-bit precision, floats and integers mix", "[cpu]") {
  TempDir dir;
  // 2^62 + 1 and 2^62 differ only below double precision.
  const auto big = dir.write("big.tsv", "1\t7\t4611686018427387905\n1\t8\t4611686018427387904\n");
  CHECK(read_interactions(big).item == Ids{8, 7});
  const auto mixed = dir.write("mixed.tsv", "1\t7\t3\n1\t8\t2.5\n1\t9\t-1e3\n1\t10\t2\n");
  CHECK(read_interactions(mixed).item == Ids{9, 10, 8, 7});
}

TEST_CASE("CRLF line ends, a UTF-8 BOM and trailing blank lines are tolerated", "[cpu]") {
  TempDir dir;
  const auto crlf = dir.write("crlf.tsv", "1\t2\t1\r\n1\t3\t0\r\n\r\n\n  \n");
  const auto log = read_interactions(crlf);
  CHECK(log.user == Ids{1, 1});
  CHECK(log.item == Ids{3, 2});
  const auto bom = dir.write("bom.csv", "\xEF\xBB\xBFuser,item\r\n4,5\r\n");
  CHECK(read_interactions(bom).item == Ids{5});
  const auto items = dir.write("items.tsv", "1\tA title\r\n2\tB\r\n\r\n");
  const auto t = read_items(items);
  CHECK(t.item == Ids{1, 2});
  CHECK(t.title == std::vector<std::string>{"A title", "B"});
}

TEST_CASE("read_items: title is everything after the first tab", "[cpu]") {
  const auto t = read_items(kFixtures / "tiny_dir" / "items.tsv");
  CHECK(t.item == Ids{10, 11, 12, 13, 14});
  CHECK(t.title[1] == "Second Item (1999)");
  CHECK(t.title[2] == "Third\tWith Tab");
}

TEST_CASE("load_dataset_dir reads interactions.tsv and items.tsv", "[cpu]") {
  const auto files = load_dataset_dir(kFixtures / "tiny_dir");
  CHECK(files.log.size() == 9);
  CHECK(files.log.user == Ids{1, 1, 1, 1, 2, 2, 3, 3, 3});
  REQUIRE(files.items.has_value());
  CHECK(files.items->item.size() == 5);
  // items.tsv is optional.
  TempDir dir;
  dir.write("interactions.tsv", "1\t2\n");
  const auto only = load_dataset_dir(dir.path());
  CHECK(only.log.size() == 1);
  CHECK_FALSE(only.items.has_value());
}

// ---- errors: each names the file, the 1-based line and the value ------------------------------

TEST_CASE("error: missing file names the path on line 0", "[cpu]") {
  TempDir dir;
  const auto p = dir.path() / "nope.tsv";
  const auto e = catch_input_error([&] { read_interactions(p); });
  CHECK(e.file() == p.string());
  CHECK(e.line() == 0);
  CHECK(e.value() == p.string());
  CHECK_THAT(e.what(), ContainsSubstring("not found"));
  const auto items = catch_input_error([&] { read_items(dir.path() / "items.tsv"); });
  CHECK(items.line() == 0);
  CHECK(items.value() == (dir.path() / "items.tsv").string());
  // A folder where a file is expected.
  const auto folder = catch_input_error([&] { read_interactions(dir.path()); });
  CHECK(folder.value() == dir.path().string());
  CHECK_THAT(folder.what(), ContainsSubstring("folder"));
}

TEST_CASE("error: load_dataset_dir without the folder or its interactions.tsv", "[cpu]") {
  TempDir dir;
  const auto missing = dir.path() / "absent";
  const auto e1 = catch_input_error([&] { load_dataset_dir(missing); });
  CHECK(e1.file() == missing.string());
  CHECK(e1.line() == 0);
  CHECK(e1.value() == missing.string());
  const auto e2 = catch_input_error([&] { load_dataset_dir(kFixtures / "no_interactions"); });
  CHECK(e2.value() == (kFixtures / "no_interactions" / "interactions.tsv").string());
  CHECK(e2.line() == 0);
  CHECK_THAT(e2.what(), ContainsSubstring("interactions.tsv"));
}

TEST_CASE("error: empty file and a file of blank lines", "[cpu]") {
  TempDir dir;
  const auto empty = dir.write("empty.tsv", "");
  const auto e1 = catch_input_error([&] { read_interactions(empty); });
  CHECK(e1.file() == empty.string());
  CHECK(e1.line() == 0);
  CHECK_THAT(e1.what(), ContainsSubstring("empty"));
  const auto blank = dir.write("blank.tsv", "\n\r\n  \n");
  const auto e2 = catch_input_error([&] { read_interactions(blank); });
  CHECK(e2.file() == blank.string());
  CHECK(e2.line() == 0);
  CHECK_THAT(e2.what(), ContainsSubstring("only blank lines"));
  const auto header_only = dir.write("header.csv", "user,item\n");
  const auto e3 = catch_input_error([&] { read_interactions(header_only); });
  CHECK(e3.line() == 0);
  CHECK_THAT(e3.what(), ContainsSubstring("no data"));
  const auto items = dir.write("items.tsv", "");
  CHECK(catch_input_error([&] { read_items(items); }).file() == items.string());
}

TEST_CASE("error: blank line inside the data (only trailing ones are allowed)", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("gap.tsv", "1\t2\n1\t3\n\n\n2\t4\n");
  const auto e = catch_input_error([&] { read_interactions(p); });
  CHECK(e.file() == p.string());
  CHECK(e.line() == 3);
  CHECK(e.value().empty());
  CHECK_THAT(e.what(), ContainsSubstring("blank line") && ContainsSubstring("line 5"));
  const auto items = dir.write("items.tsv", "\n1\tA\n");
  CHECK(catch_input_error([&] { read_items(items); }).line() == 1);
}

TEST_CASE("error: wrong column count says expected and got", "[cpu]") {
  TempDir dir;
  {
    const auto p = dir.write("short.tsv", "1\t2\t0\n1\t3\t1\n2\t4\n");
    const auto e = catch_input_error([&] { read_interactions(p); });
    CHECK(e.file() == p.string());
    CHECK(e.line() == 3);
    CHECK(e.value() == "2\t4");
    CHECK_THAT(e.what(), ContainsSubstring("expected 3") && ContainsSubstring("got 2") &&
                             ContainsSubstring("line 1"));
  }
  {
    const auto p = dir.write("wide.tsv", "1\t2\t0\t5\n");
    const auto e = catch_input_error([&] { read_interactions(p); });
    CHECK(e.line() == 1);
    CHECK(e.value() == "1\t2\t0\t5");
    CHECK_THAT(e.what(), ContainsSubstring("expected 2 or 3") && ContainsSubstring("got 4"));
  }
  {
    const auto p = dir.write("spaces.tsv", "1 2\n");
    const auto e = catch_input_error([&] { read_interactions(p); });
    CHECK(e.line() == 1);
    CHECK(e.value() == "1 2");
    CHECK_THAT(e.what(), ContainsSubstring("got 1") && ContainsSubstring("SasRec"));
  }
  {
    const auto p = dir.write("three.txt", "1 2\n1 2 3\n");
    const auto e = catch_input_error([&] { read_interactions(p); });
    CHECK(e.line() == 2);
    CHECK(e.value() == "1 2 3");
    CHECK_THAT(e.what(), ContainsSubstring("expected 2") && ContainsSubstring("got 3"));
  }
  {
    const auto p = dir.write("ratings.dat", "1::2::5::100\n1::3::100\n");
    const auto e = catch_input_error([&] { read_interactions(p); });
    CHECK(e.line() == 2);
    CHECK(e.value() == "1::3::100");
    CHECK_THAT(e.what(), ContainsSubstring("expected 4") && ContainsSubstring("got 3"));
  }
  {
    const auto p = dir.write("csv.csv", "user,item\n1,2\n1,2,3\n");
    const auto e = catch_input_error([&] { read_interactions(p); });
    CHECK(e.line() == 3);
    CHECK(e.value() == "1,2,3");
    CHECK_THAT(e.what(), ContainsSubstring("expected 2") && ContainsSubstring("got 3"));
  }
  {
    const auto p = dir.write("items.tsv", "1\tA\n2 B\n");
    const auto e = catch_input_error([&] { read_items(p); });
    CHECK(e.line() == 2);
    CHECK(e.value() == "2 B");
    CHECK_THAT(e.what(), ContainsSubstring("got 1"));
  }
}

TEST_CASE("error: non-numeric id names the field", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("bad.tsv", "1\t2\n1\t3\n1\tabc\n");
  const auto e = catch_input_error([&] { read_interactions(p); });
  CHECK(e.file() == p.string());
  CHECK(e.line() == 3);
  CHECK(e.value() == "abc");
  CHECK_THAT(e.what(), ContainsSubstring("item id (column 2)"));

  const auto fl = dir.write("float_id.txt", "1 2\n1.5 3\n");
  const auto e2 = catch_input_error([&] { read_interactions(fl); });
  CHECK(e2.line() == 2);
  CHECK(e2.value() == "1.5");
  CHECK_THAT(e2.what(), ContainsSubstring("user id (column 1)"));

  const auto huge = dir.write("huge.tsv", "99999999999999999999\t1\n");
  const auto e3 = catch_input_error([&] { read_interactions(huge); });
  CHECK(e3.line() == 1);
  CHECK(e3.value() == "99999999999999999999");
  CHECK_THAT(e3.what(), ContainsSubstring("64 bits"));

  const auto empty_field = dir.write("hole.csv", "1,2\n,3\n");
  const auto e4 = catch_input_error([&] { read_interactions(empty_field); });
  CHECK(e4.line() == 2);
  CHECK_THAT(e4.what(), ContainsSubstring("user id (column 1) is empty"));

  const auto items = dir.write("items.tsv", "1\tA\nx7\tB\n");
  const auto e5 = catch_input_error([&] { read_items(items); });
  CHECK(e5.line() == 2);
  CHECK(e5.value() == "x7");
}

TEST_CASE("error: negative id names the field", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("neg.tsv", "1\t2\t0\n-5\t3\t1\n");
  const auto e = catch_input_error([&] { read_interactions(p); });
  CHECK(e.file() == p.string());
  CHECK(e.line() == 2);
  CHECK(e.value() == "-5");
  CHECK_THAT(e.what(), ContainsSubstring("negative"));
  const auto dat = dir.write("r.dat", "1::-2::5::1\n");
  const auto e2 = catch_input_error([&] { read_interactions(dat); });
  CHECK(e2.line() == 1);
  CHECK(e2.value() == "-2");
}

TEST_CASE("error: NaN, Inf or non-numeric order value", "[cpu]") {
  TempDir dir;
  struct Case {
    std::string content, value;
    std::size_t line;
  };
  const std::vector<Case> cases = {
      {"1\t2\t0\n1\t3\tnan\n", "nan", 2},     {"1\t2\tinf\n", "inf", 1},
      {"1\t2\t1\n1\t3\t-INF\n", "-INF", 2},   {"1\t2\t1\n1\t3\t12:30\n", "12:30", 2},
      {"1\t2\t1\n1\t3\t1e999\n", "1e999", 2},
  };
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const auto p = dir.write(std::to_string(k) + "_order.tsv", cases[k].content);
    const auto e = catch_input_error([&] { read_interactions(p); });
    INFO(cases[k].content);
    CHECK(e.file() == p.string());
    CHECK(e.line() == cases[k].line);
    CHECK(e.value() == cases[k].value);
    CHECK_THAT(e.what(), ContainsSubstring("order (column 3)"));
  }
  const auto trailing_tab = dir.write("tab.tsv", "1\t2\t\n");
  const auto e = catch_input_error([&] { read_interactions(trailing_tab); });
  CHECK(e.line() == 1);
  CHECK_THAT(e.what(), ContainsSubstring("order (column 3) is empty"));
  const auto dat = dir.write("r.dat", "1::2::5::978300760\n1::3::5::NaN\n");
  const auto e2 = catch_input_error([&] { read_interactions(dat); });
  CHECK(e2.line() == 2);
  CHECK(e2.value() == "NaN");
  CHECK_THAT(e2.what(), ContainsSubstring("timestamp"));
  const auto rating = dir.write("r2.dat", "1::2::five::978300760\n");
  const auto e3 = catch_input_error([&] { read_interactions(rating); });
  CHECK(e3.value() == "five");
  CHECK_THAT(e3.what(), ContainsSubstring("rating"));
}

TEST_CASE("error: a header is allowed only in csv and only on line 1", "[cpu]") {
  TempDir dir;
  const auto late = dir.write("late.csv", "1,2\nuser,item\n");
  const auto e = catch_input_error([&] { read_interactions(late); });
  CHECK(e.file() == late.string());
  CHECK(e.line() == 2);
  CHECK(e.value() == "user");
  const auto tsv = dir.write("header.tsv", "user_id\titem_id\n1\t2\n");
  const auto e2 = catch_input_error([&] { read_interactions(tsv); });
  CHECK(e2.line() == 1);
  CHECK(e2.value() == "user_id");
  CHECK_THAT(e2.what(), ContainsSubstring("header"));
  // A numeric-looking first field on line 1 is data, not a header.
  const auto numeric = dir.write("numeric.csv", "12x,item\n");
  const auto e3 = catch_input_error([&] { read_interactions(numeric); });
  CHECK(e3.line() == 1);
  CHECK(e3.value() == "12x");
}

TEST_CASE("error: empty title names the item", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("items.tsv", "1\tA\n2\t  \n3\tC\n");
  const auto e = catch_input_error([&] { read_items(p); });
  CHECK(e.file() == p.string());
  CHECK(e.line() == 2);
  CHECK(e.value() == "2");
  CHECK_THAT(e.what(), ContainsSubstring("empty title"));
  const auto bare = dir.write("bare.tsv", "1\tA\n4\t\r\n");
  const auto e2 = catch_input_error([&] { read_items(bare); });
  CHECK(e2.line() == 2);
  CHECK(e2.value() == "4");
}

TEST_CASE("error: duplicate item id in items file", "[cpu]") {
  TempDir dir;
  const auto p = dir.write("items.tsv", "1\tA\n2\tB\n1\tC\n");
  const auto e = catch_input_error([&] { read_items(p); });
  CHECK(e.line() == 3);
  CHECK(e.value() == "1");
  CHECK_THAT(e.what(), ContainsSubstring("line 1"));
}
