#include "lwq/io/packed_spill.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "packed_weight.h"

namespace lwq {
namespace io {

// A tensor freed before drop_resident() unmaps its range, and the address may be reused by other memory: the
// registry forgets a mapping before it is unmapped, so madvise never touches anything but spilled pages.
struct PackedSpill::Mappings {
  std::mutex mutex;
  std::map<void*, size_t> live;
};

PackedSpill::PackedSpill(const std::string& near) : mappings_(std::make_shared<Mappings>()) {
  std::string dir = std::filesystem::path(near).parent_path().string();
  if (dir.empty()) dir = ".";
  path_ = dir + "/.lwq-spill.XXXXXX";
  fd_ = ::mkostemp(path_.data(), O_CLOEXEC);  // a random name, created exclusively (O_EXCL), mode 0600
  TORCH_CHECK(fd_ >= 0, "cannot create the spill file ", path_, " for packed weights: ", std::strerror(errno));
  ::unlink(path_.c_str());  // nothing is left behind, whatever happens to the process
}

PackedSpill::~PackedSpill() {
  if (fd_ >= 0) ::close(fd_);  // the mappings keep the file alive while packed weights use it
}

at::Tensor PackedSpill::spill(const at::Tensor& t) {
  const at::Tensor src_t = t.contiguous();
  const int64_t n = src_t.numel() * static_cast<int64_t>(src_t.element_size());
  if (n == 0) return t;
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  const int64_t offset = (size_ + page - 1) / page * page;
  const auto* src = static_cast<const char*>(src_t.data_ptr());
  for (int64_t done = 0; done < n;) {
    const ssize_t wrote = ::pwrite(fd_, src + done, static_cast<size_t>(n - done), offset + done);
    TORCH_CHECK(wrote > 0, "cannot write to the spill file ", path_, " (", offset + n,
                " bytes): ", std::strerror(errno));
    done += wrote;
  }
  size_ = offset + n;
  const size_t len = static_cast<size_t>(n);
  void* map = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd_, offset);
  TORCH_CHECK(map != MAP_FAILED, "cannot map the spill file ", path_, ": ", std::strerror(errno));
  {
    std::lock_guard<std::mutex> lock(mappings_->mutex);
    mappings_->live[map] = len;
  }
  std::weak_ptr<Mappings> registry = mappings_;
  return at::from_blob(
      map, src_t.sizes(),
      [len, registry](void* p) {
        if (auto m = registry.lock()) {
          std::lock_guard<std::mutex> lock(m->mutex);
          m->live.erase(p);
        }
        ::munmap(p, len);
      },
      src_t.options());
}

PackedWeightPtr PackedSpill::spill(const PackedWeightPtr& w) {
  PackedWeight::State state = w->state();
  std::get<6>(state) = spill(std::get<6>(state));
  std::get<7>(state) = spill(std::get<7>(state));
  if (std::get<8>(state)) std::get<8>(state) = spill(*std::get<8>(state));
  if (std::get<9>(state)) std::get<9>(state) = spill(*std::get<9>(state));
  PackedWeightPtr spilled = PackedWeight::from_state(state);
  drop_resident();  // from_state validated the scales and zero points by reading them
  return spilled;
}

void PackedSpill::drop_resident() {
  std::lock_guard<std::mutex> lock(mappings_->mutex);
  for (const auto& m : mappings_->live) ::madvise(m.first, m.second, MADV_DONTNEED);
}

}  // namespace io
}  // namespace lwq
