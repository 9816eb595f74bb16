// Tests of atomic_write and read_file: the target is replaced in one step, no temporary file is
// left behind on success or failure, and failures name the path and the system's reason.
#include "seqrec/io/atomic_file.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;

namespace {

/// A fresh empty folder under the system temp folder, removed with its contents at scope end.
using TempDir = seqrec::test::TempDir;  // tag: io_atomic

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string slurp(const fs::path& p) {
  const auto bytes = seqrec::io::read_file(p);
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace

TEST_CASE("atomic_write creates a file with exactly the given bytes", "[cpu]") {
  TempDir dir;
  const fs::path target = dir.path() / "out.bin";
  std::vector<std::byte> bytes;
  for (int i = 0; i < 70000; ++i) bytes.push_back(static_cast<std::byte>(i * 7 + 3));
  seqrec::io::atomic_write(target, std::span<const std::byte>(bytes));
  CHECK(seqrec::io::read_file(target) == bytes);
  CHECK(listing(dir.path()) == std::set<std::string>{"out.bin"});
}

TEST_CASE("atomic_write replaces an existing file and leaves no temporary", "[cpu]") {
  TempDir dir;
  const fs::path target = dir.path() / "config.json";
  {
    std::ofstream old(target);
    old << std::string(5000, 'x');
  }
  seqrec::io::atomic_write(target, std::string_view("{\"a\": 1}\n"));
  CHECK(slurp(target) == "{\"a\": 1}\n");
  CHECK(listing(dir.path()) == std::set<std::string>{"config.json"});

  seqrec::io::atomic_write(target, std::string_view(""));
  CHECK(fs::file_size(target) == 0);
  CHECK(listing(dir.path()) == std::set<std::string>{"config.json"});
}

TEST_CASE("atomic_write accepts a bare file name relative to the working folder", "[cpu]") {
  TempDir dir;
  const fs::path previous = fs::current_path();
  fs::current_path(dir.path());
  try {
    seqrec::io::atomic_write("plain.txt", std::string_view("hello"));
  } catch (...) {
    fs::current_path(previous);
    throw;
  }
  fs::current_path(previous);
  CHECK(slurp(dir.path() / "plain.txt") == "hello");
  CHECK(listing(dir.path()) == std::set<std::string>{"plain.txt"});
}

TEST_CASE("atomic_write into a missing folder throws naming the path and leaves nothing", "[cpu]") {
  TempDir dir;
  const fs::path missing = dir.path() / "no_such_folder";
  const fs::path target = missing / "model.safetensors";
  try {
    seqrec::io::atomic_write(target, std::string_view("data"));
    FAIL("atomic_write did not throw");
  } catch (const seqrec::Error& e) {
    CHECK_THAT(e.what(), ContainsSubstring(target.string()));
    CHECK_THAT(e.what(), ContainsSubstring(std::strerror(ENOENT)));
  }
  CHECK_FALSE(fs::exists(missing));
  CHECK(listing(dir.path()).empty());
}

TEST_CASE("atomic_write removes its temporary when the final rename fails", "[cpu]") {
  TempDir dir;
  // A non-empty folder where the file should go: the temporary is written, the rename fails.
  const fs::path target = dir.path() / "occupied";
  fs::create_directories(target / "inside");
  try {
    seqrec::io::atomic_write(target, std::string_view("data"));
    FAIL("atomic_write did not throw");
  } catch (const seqrec::Error& e) {
    CHECK_THAT(e.what(), ContainsSubstring(target.string()));
    CHECK_THAT(e.what(), ContainsSubstring("rename"));
  }
  CHECK(listing(dir.path()) == std::set<std::string>{"occupied"});
  CHECK(fs::is_directory(target / "inside"));
}

TEST_CASE("atomic_write rejects a path without a file name", "[cpu]") {
  TempDir dir;
  CHECK_THROWS_AS(seqrec::io::atomic_write(dir.path() / "", std::string_view("x")), seqrec::Error);
  CHECK_THROWS_AS(seqrec::io::atomic_write(fs::path(), std::string_view("x")), seqrec::Error);
  CHECK(listing(dir.path()).empty());
}

TEST_CASE("concurrent atomic_writes to one path never mix or leave temporaries", "[cpu]") {
  TempDir dir;
  const fs::path target = dir.path() / "shared.txt";
  const std::string a(100000, 'a');
  const std::string b(50000, 'b');
  std::atomic<int> failures{0};
  auto writer = [&](const std::string& text) {
    for (int i = 0; i < 40; ++i) {
      try {
        seqrec::io::atomic_write(target, std::string_view(text));
      } catch (...) {
        ++failures;
      }
    }
  };
  std::thread t1(writer, std::cref(a));
  std::thread t2(writer, std::cref(b));
  t1.join();
  t2.join();
  CHECK(failures == 0);
  const std::string final_text = slurp(target);
  CHECK((final_text == a || final_text == b));
  CHECK(listing(dir.path()) == std::set<std::string>{"shared.txt"});
}

TEST_CASE("read_file reports a missing file as InputError", "[cpu]") {
  TempDir dir;
  const fs::path missing = dir.path() / "absent.bin";
  try {
    seqrec::io::read_file(missing);
    FAIL("read_file did not throw");
  } catch (const seqrec::InputError& e) {
    CHECK(e.file() == missing.string());
    CHECK(e.line() == 0);
    CHECK(e.value() == std::strerror(ENOENT));
    CHECK_THAT(e.what(), ContainsSubstring("cannot open"));
  }
}

TEST_CASE("read_file reports a folder as InputError", "[cpu]") {
  TempDir dir;
  try {
    seqrec::io::read_file(dir.path());
    FAIL("read_file did not throw");
  } catch (const seqrec::InputError& e) {
    CHECK(e.file() == dir.path().string());
    CHECK(e.value() == std::strerror(EISDIR));
  }
}

TEST_CASE("read_file reads an empty file", "[cpu]") {
  TempDir dir;
  { std::ofstream(dir.path() / "empty"); }
  CHECK(seqrec::io::read_file(dir.path() / "empty").empty());
}
