// Atomic replacement of an output file: write a temporary next to it, fsync, rename, fsync the directory.
// A crash or an error at any point leaves either the old file or the complete new one, never a partial file.
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "lwq/io/safetensors.h"

namespace lwq {
namespace io {
namespace {

// fsync of a file or directory opened read-only (Linux allows fsync on such descriptors).
void fsync_path(const std::string& path, int flags, const std::string& what, const std::string& output) {
  const int fd = ::open(path.c_str(), flags | O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, "atomic_write ", output, ": cannot open ", what, " ", path,
              " to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  TORCH_CHECK(rc == 0, "atomic_write ", output, ": fsync of ", what, " ", path, " failed: ", std::strerror(err));
}

}  // namespace

void atomic_write(const std::string& path, const std::function<void(const std::string& tmp_path)>& fill) {
  TORCH_CHECK(!path.empty(), "atomic_write: the output path is empty");
  // Same directory as `path`, so the rename never crosses file systems; pid and counter keep concurrent
  // writers (processes or threads) from sharing a temporary.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  try {
    fill(tmp);
    fsync_path(tmp, 0, "the temporary file", path);
    TORCH_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "atomic_write ", path, ": cannot rename ", tmp,
                " over it: ", std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());  // fill may have failed before creating it: nothing to report then
    throw;
  }
  // The rename is durable only once the directory entry is on disk.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  fsync_path(dir, O_DIRECTORY, "the directory", path);
}

}  // namespace io
}  // namespace lwq
