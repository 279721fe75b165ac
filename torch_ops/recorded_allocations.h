// The true size of the memory behind a storage that came out of a TorchScript archive.
//
// LibTorch 1.13 reads each tensor record of an archive into a fresh CPU allocation of the record's size, but gives
// the storage the size its pickle declares. A record cut short (an edited or damaged archive whose zip is
// otherwise consistent) then backs a storage larger than its memory, and reading the tensor reads past the end of
// the allocation. While a RecordedAllocations object lives, the CPU allocator is wrapped so that each allocation's
// size is remembered; check_storage (qscheme.h) compares storages with it. One at a time, on the thread that loads.
#pragma once

#include <cstddef>

namespace lwq {

class RecordedAllocations {
 public:
  RecordedAllocations();
  ~RecordedAllocations();
  RecordedAllocations(const RecordedAllocations&) = delete;
  RecordedAllocations& operator=(const RecordedAllocations&) = delete;
};

// Bytes of the CPU allocation that starts at `p`, when it was made while a RecordedAllocations lived; else 0.
size_t recorded_allocation_size(const void* p);

}  // namespace lwq
