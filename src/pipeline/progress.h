// Internal to the pipeline: progress on stderr. On a terminal, one line redrawn in place (units done / total,
// the current unit, elapsed time, ETA, resident memory); otherwise one plain log line per finished unit.
#pragma once

#include <chrono>
#include <string>

namespace lwq {
namespace pipeline {

class Progress {
 public:
  Progress(int64_t total, std::string what, bool quiet);
  ~Progress();  // ends the redrawn line
  // Unit i (0-based) finished; `detail` goes on the line ("layers.3: 7 linears, 1.2 s").
  void done(int64_t i, const std::string& detail);
  // Units restored from a resume state count as done without a line each.
  void skip(int64_t count);

 private:
  int64_t total_;
  std::string what_;
  bool quiet_, terminal_;
  int64_t skipped_ = 0, last_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace pipeline
}  // namespace lwq
