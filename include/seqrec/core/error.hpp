// Errors seqrec throws. Every error about user input names where the bad value was found (file
// and 1-based line, or the flag) and the value itself, so a user can fix the input without a
// debugger. Nothing in the library prints and exits: errors propagate to the binary's main().
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace seqrec {

/// Base class of every exception seqrec throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bad user input: a file, a line in it (0 when the problem is not tied to a line) and the value.
class InputError : public Error {
 public:
  InputError(std::string file, std::size_t line, std::string message, std::string value)
      : Error(format(file, line, message, value)),
        file_(std::move(file)),
        line_(line),
        value_(std::move(value)) {}

  const std::string& file() const noexcept { return file_; }
  std::size_t line() const noexcept { return line_; }
  const std::string& value() const noexcept { return value_; }

 private:
  static std::string format(const std::string& file, std::size_t line, const std::string& message,
                            const std::string& value) {
    std::string out = file;
    if (line > 0) out.append(":").append(std::to_string(line));
    out.append(": ").append(message);
    if (!value.empty()) {
      out.append(" (got '");
      if (value.size() > 80) {
        out.append(value, 0, 77).append("...");
      } else {
        out.append(value);
      }
      out.append("')");
    }
    return out;
  }

  std::string file_;
  std::size_t line_;
  std::string value_;
};

namespace detail {
[[noreturn]] inline void check_failed(const char* cond, const char* file, int line,
                                      const std::string& msg) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": check '" + cond +
              "' failed: " + msg);
}
}  // namespace detail

}  // namespace seqrec

/// Internal invariant / argument check that stays on in release builds (cheap checks only).
#define SEQREC_CHECK(cond, msg)                                                  \
  do {                                                                           \
    if (!(cond)) ::seqrec::detail::check_failed(#cond, __FILE__, __LINE__, msg); \
  } while (0)
