// Packed weights moved out of the heap: their codes, scales and zero points are written to an unlinked file next
// to the output and memory-mapped back (private, read-only), so a run's anonymous memory holds about one block of
// float weights whatever the size of the model. The kernels read them from the page cache; mapped pages are clean
// and can be dropped at any time (drop_resident). The file disappears when the last packed weight using it is freed.
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

  // An equal PackedWeight whose tensors live in the spill file (the argument is not modified). Its pages are not
  // left resident.
  PackedWeightPtr spill(const PackedWeightPtr& w);
  // An equal tensor backed by the spill file, for large float tensors the output keeps (an untied head and the
  // embedding are each bigger than a 7B block's float weights in fp32). Read-only: writing into it faults.
  at::Tensor spill(const at::Tensor& t);
  // Unmaps from this process every spilled page read so far (they stay in the page cache): a reader of all the
  // packed weights, such as the archive writer, calls this as it goes so that they never add up in its RSS.
  void drop_resident();
  int64_t bytes() const { return size_; }

  struct Mappings;  // live mappings, shared with the tensors' deleters

 private:
  std::string path_;  // for messages
  int fd_ = -1;
  int64_t size_ = 0;
  std::shared_ptr<Mappings> mappings_;
};

}  // namespace io
}  // namespace lwq
