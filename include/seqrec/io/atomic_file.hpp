// Whole-file reads and crash-safe whole-file writes. Checkpoints, configs and metrics are written
// with atomic_write so that a crash, a full disk or a kill at any moment leaves either the old
// file or the new one, never a torn mix: the bytes go to a temporary file in the same folder, are
// flushed to disk, and the temporary is renamed over the target (rename is atomic on POSIX within
// one file system); the folder is then flushed so the rename itself survives a power cut.
// read_file is the matching reader, reporting a missing or unreadable file as bad input.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "seqrec/core/error.hpp"

namespace seqrec::io {

namespace detail {

inline std::string errno_text(int err) { return std::strerror(err); }

/// Closes a file descriptor and removes a temporary file unless released; used so that every
/// failure path of atomic_write cleans up, including exceptions thrown while building messages.
class TempFileGuard {
 public:
  TempFileGuard() = default;
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  ~TempFileGuard() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void arm(int fd, std::string path) {
    fd_ = fd;
    path_ = std::move(path);
  }
  /// Closes the descriptor now; returns 0 or the errno of a failed close.
  int close_fd() {
    int err = 0;
    if (fd_ >= 0 && ::close(fd_) != 0) err = errno;
    fd_ = -1;
    return err;
  }
  int fd() const noexcept { return fd_; }
  /// The temporary has been renamed into place: nothing left to remove.
  void release_path() noexcept { path_.clear(); }

 private:
  int fd_ = -1;
  std::string path_;
};

[[noreturn]] inline void throw_io(const std::string& what, const std::filesystem::path& path,
                                  int err) {
  throw Error("atomic_write: " + what + " '" + path.string() + "': " + errno_text(err));
}

/// A per-process, per-call counter so concurrent writers in one process never share a name.
inline std::uint64_t next_temp_serial() {
  static std::atomic<std::uint64_t> serial{0};
  return serial.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace detail

/// Writes bytes to `path` so that a crash never leaves a partial file: write to a temporary file
/// in the same folder (name unique per process and call), flush + fsync, rename over `path`,
/// fsync the folder. On any failure the temporary is removed and seqrec::Error names the path
/// and strerror(errno). The new file gets the default mode (0666 less the umask).
inline void atomic_write(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  namespace fs = std::filesystem;
  if (path.empty() || !path.has_filename()) {
    throw Error("atomic_write: '" + path.string() + "' does not name a file");
  }
  const fs::path folder = path.has_parent_path() ? path.parent_path() : fs::path(".");

  // Hidden temporary next to the target: ".<name>.tmp.<pid>.<serial>". O_EXCL refuses to reuse
  // a name left behind by a crashed process that had the same pid; then the next serial is tried.
  detail::TempFileGuard guard;
  std::string stem = ".";  // built by appending: GCC 12 warns falsely on "." + std::string
  stem += path.filename().string();
  stem += ".tmp.";
  stem += std::to_string(::getpid());
  std::string temp;
  for (int attempt = 0;; ++attempt) {
    std::string name = stem;
    name += '.';
    name += std::to_string(detail::next_temp_serial());
    temp = (folder / name).string();
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      guard.arm(fd, temp);
      break;
    }
    const int err = errno;
    if (err != EEXIST || attempt >= 64) {
      throw Error("atomic_write: cannot create a temporary file in '" + folder.string() +
                  "' for '" + path.string() + "': " + detail::errno_text(err));
    }
  }

  const auto* data = reinterpret_cast<const char*>(bytes.data());
  std::size_t left = bytes.size();
  while (left > 0) {
    const ::ssize_t n = ::write(guard.fd(), data, left);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      detail::throw_io("cannot write", path, err);
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fsync(guard.fd()) != 0) {
    const int err = errno;
    detail::throw_io("cannot flush", path, err);
  }
  if (const int err = guard.close_fd(); err != 0) detail::throw_io("cannot close", path, err);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    detail::throw_io("cannot rename the temporary file over", path, err);
  }
  guard.release_path();

  // Flush the folder entry so the rename is durable. Some file systems cannot fsync a folder
  // (EINVAL); the data itself is already safe there, so that case is not an error.
  const int dir_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    const int err = errno;
    detail::throw_io("cannot open the folder of", path, err);
  }
  const int sync_err = ::fsync(dir_fd) != 0 ? errno : 0;
  ::close(dir_fd);
  if (sync_err != 0 && sync_err != EINVAL) {
    detail::throw_io("cannot flush the folder of", path, sync_err);
  }
}

/// Text overload of atomic_write: writes the characters of `text` as they are.
inline void atomic_write(const std::filesystem::path& path, std::string_view text) {
  atomic_write(path, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

/// Reads a whole file. Throws seqrec::InputError(path, 0, "cannot open", strerror) when the file
/// is missing or unreadable, and InputError(path, 0, "cannot read", strerror) on a read error
/// (for example when `path` is a folder).
inline std::vector<std::byte> read_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw InputError(path.string(), 0, "cannot open", detail::errno_text(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  std::vector<std::byte> out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    out.reserve(static_cast<std::size_t>(st.st_size));
  }
  // Read until end of file rather than trusting the size: the file may grow or shrink meanwhile.
  std::byte chunk[1 << 16];
  for (;;) {
    const ::ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      throw InputError(path.string(), 0, "cannot read", detail::errno_text(err));
    }
    if (n == 0) break;
    out.insert(out.end(), chunk, chunk + n);
  }
  return out;
}

}  // namespace seqrec::io
