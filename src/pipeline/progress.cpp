#include "progress.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

namespace {

std::string clock_text(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

Progress::Progress(int64_t total, std::string what, bool quiet)
    : total_(total), what_(std::move(what)), quiet_(quiet), terminal_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() {
  if (!quiet_ && terminal_ && last_ >= 0) std::cerr << std::endl;
}

void Progress::skip(int64_t count) { skipped_ += count; }

void Progress::done(int64_t i, const std::string& detail) {
  last_ = i;
  if (quiet_) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t finished = i + 1;
  const int64_t ran = finished - skipped_;  // units timed in this run
  const double eta = ran > 0 ? elapsed / static_cast<double>(ran) * static_cast<double>(total_ - finished) : 0;
  const int64_t rss_mib = proc_status_bytes("VmRSS") / (1024 * 1024);
  std::ostringstream line;
  line << "[" << what_ << " " << finished << "/" << total_ << "] " << detail << " | elapsed " << clock_text(elapsed)
       << ", ETA " << clock_text(eta) << ", RSS " << rss_mib << " MiB";
  if (terminal_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * finished / (total_ > 0 ? total_ : 1));
    std::cerr << "\r\033[K[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] "
              << line.str() << std::flush;
  } else {
    std::cerr << line.str() << std::endl;
  }
}

}  // namespace pipeline
}  // namespace lwq
