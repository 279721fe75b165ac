// Packed weights moved out of the heap: their codes are written to an unlinked file next to the output and
// memory-mapped back (private, read-only use), so a run's anonymous memory holds about one block of float weights
// whatever the size of the model. The kernel reads the codes from the page cache; mapped pages are clean and can
// be dropped under memory pressure. The file disappears when the last packed weight using it is freed.
#pragma once

#include <memory>
#include <string>

#include "ops.h"

namespace lwq {
namespace io {

class PackedSpill {
 public:
  // `near`: a path whose directory holds the spill file (the output path).
  explicit PackedSpill(const std::string& near);
  ~PackedSpill();
  PackedSpill(const PackedSpill&) = delete;
  PackedSpill& operator=(const PackedSpill&) = delete;

  // An equal PackedWeight whose codes live in the spill file (the argument is not modified).
  PackedWeightPtr spill(const PackedWeightPtr& w);
  int64_t bytes() const { return size_; }

 private:
  std::string path_;  // for messages
  int fd_ = -1;
  int64_t size_ = 0;
};

}  // namespace io
}  // namespace lwq
