// Progress reporting for long work. On a terminal: one line redrawn in place with a bar, the
// caller's figures (loss, tokens/s) and the ETA. Otherwise (a log file, CI): a plain line at most
// every `plain_interval` seconds, so logs stay short and still show that work goes on.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace seqrec {

/// "1h02m", "3m05s", "42s"
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const auto s = static_cast<std::int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

class Progress {
 public:
  using Clock = std::chrono::steady_clock;

  /// total: units of work; label: printed first; enabled false silences everything.
  Progress(std::string label, std::int64_t total, bool enabled = true, double plain_interval = 30.0)
      : label_(std::move(label)),
        total_(total),
        enabled_(enabled),
        tty_(isatty(fileno(stderr)) != 0),
        interval_(plain_interval),
        start_(Clock::now()),
        last_(start_) {}

  /// done: units finished so far (of this run); info: the caller's figures.
  void update(std::int64_t done, const std::string& info) {
    if (!enabled_) return;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (tty_ ? since < 0.1 && done < total_ : since < interval_) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double frac = total_ > 0 ? double(done) / double(total_) : 1.0;
    const double eta = done > 0 ? elapsed * (double(total_ - done) / double(done)) : -1.0;
    if (tty_) {
      constexpr int width = 24;
      const int fill = static_cast<int>(frac * width);
      std::string bar(static_cast<std::size_t>(fill), '=');
      if (fill < width) bar += '>' + std::string(static_cast<std::size_t>(width - fill - 1), ' ');
      std::fprintf(stderr, "\r%s [%s] %3.0f%% %s ETA %s\033[K", label_.c_str(), bar.c_str(),
                   frac * 100, info.c_str(), format_duration(eta).c_str());
    } else {
      std::fprintf(stderr, "%s %3.0f%% %s ETA %s\n", label_.c_str(), frac * 100, info.c_str(),
                   format_duration(eta).c_str());
    }
    std::fflush(stderr);
    drawn_ = true;
  }

  /// Ends the in-place line (terminal) so the next output starts on a fresh line.
  void finish() {
    if (enabled_ && tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  std::string label_;
  std::int64_t total_;
  bool enabled_, tty_;
  double interval_;
  Clock::time_point start_, last_;
  bool drawn_ = false;
};

}  // namespace seqrec
