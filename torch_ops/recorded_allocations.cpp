#include "recorded_allocations.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <mutex>
#include <unordered_map>

namespace lwq {
namespace {

// Forwards to the allocator it stands in for and, while recording, remembers (pointer -> size). An entry can
// outlive its allocation, but a live storage's pointer always maps to its own (latest) allocation, which is all
// the check asks.
class RecordingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) const override {
    c10::DataPtr p = base_->allocate(n);
    const std::lock_guard<std::mutex> lock(mutex_);
    if (recording_ && p.get() != nullptr) sizes_[p.get()] = n;
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }

  void start() {
    c10::Allocator* current = c10::GetCPUAllocator();
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      TORCH_CHECK(!recording_, "RecordedAllocations: one at a time");
      if (current != this) base_ = current;
      recording_ = true;
    }
    c10::SetCPUAllocator(this, /*priority=*/0);
  }
  void stop() {
    c10::SetCPUAllocator(base_, /*priority=*/0);
    const std::lock_guard<std::mutex> lock(mutex_);
    recording_ = false;
    sizes_.clear();
  }
  size_t size_of(const void* p) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = recording_ ? sizes_.find(p) : sizes_.end();
    return it == sizes_.end() ? 0 : it->second;
  }

 private:
  c10::Allocator* base_ = nullptr;
  mutable std::mutex mutex_;
  bool recording_ = false;
  mutable std::unordered_map<const void*, size_t> sizes_;
};

// Never destroyed: a thread may still be inside allocate() when recording stops, and the allocator table points
// here until then.
RecordingAllocator& recorder() {
  static RecordingAllocator* r = new RecordingAllocator();
  return *r;
}

}  // namespace

RecordedAllocations::RecordedAllocations() { recorder().start(); }
RecordedAllocations::~RecordedAllocations() { recorder().stop(); }

size_t recorded_allocation_size(const void* p) { return p == nullptr ? 0 : recorder().size_of(p); }

}  // namespace lwq
