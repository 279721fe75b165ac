#include "lwq/io/packed_spill.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "packed_weight.h"

namespace lwq {
namespace io {

PackedSpill::PackedSpill(const std::string& near) {
  static std::atomic<uint64_t> counter{0};
  std::string dir = std::filesystem::path(near).parent_path().string();
  if (dir.empty()) dir = ".";
  path_ = dir + "/.lwq-spill." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  TORCH_CHECK(fd_ >= 0, "cannot create the spill file ", path_, " for packed weights: ", std::strerror(errno));
  ::unlink(path_.c_str());  // nothing is left behind, whatever happens to the process
}

PackedSpill::~PackedSpill() {
  if (fd_ >= 0) ::close(fd_);  // the mappings keep the file alive while packed weights use it
}

PackedWeightPtr PackedSpill::spill(const PackedWeightPtr& w) {
  PackedWeight::State state = w->state();
  const at::Tensor codes = std::get<6>(state).contiguous();
  const int64_t n = codes.numel();
  if (n == 0) return w;
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  const int64_t offset = (size_ + page - 1) / page * page;
  const auto* src = static_cast<const char*>(codes.data_ptr());
  for (int64_t done = 0; done < n;) {
    const ssize_t wrote = ::pwrite(fd_, src + done, static_cast<size_t>(n - done), offset + done);
    TORCH_CHECK(wrote > 0, "cannot write packed weights to the spill file ", path_, " (", offset + n,
                " bytes): ", std::strerror(errno));
    done += wrote;
  }
  size_ = offset + n;
  void* map = ::mmap(nullptr, static_cast<size_t>(n), PROT_READ, MAP_PRIVATE, fd_, offset);
  TORCH_CHECK(map != MAP_FAILED, "cannot map the spill file ", path_, ": ", std::strerror(errno));
  const size_t len = static_cast<size_t>(n);
  std::get<6>(state) = at::from_blob(map, {n}, [len](void* p) { ::munmap(p, len); },
                                     at::TensorOptions().dtype(at::kByte));
  return PackedWeight::from_state(state);
}

}  // namespace io
}  // namespace lwq
