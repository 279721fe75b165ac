// Atomic replacement of an output file: write a temporary next to it, fsync, rename, fsync the directory.
// A crash or an error at any point leaves either the old file or the complete new one, never a partial file.
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

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

// The process's umask, read without changing it (umask(2) can only be read by setting it, which races with
// other threads creating files).
mode_t current_umask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
  }
  return 022;
}

// Creates the temporary the safe way: a random name made exclusively (mkstemp: O_CREAT | O_EXCL, so a file or a
// symbolic link planted at a predictable name is never followed or reused), then given the mode an ordinary
// create would have given the output.
std::string create_temporary(const std::string& path) {
  std::string name = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(name.data());
  TORCH_CHECK(fd >= 0, "atomic_write ", path, ": cannot create a temporary file next to it: ", std::strerror(errno));
  const int rc = ::fchmod(fd, 0666 & ~current_umask());
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    ::unlink(name.c_str());
    TORCH_CHECK(false, "atomic_write ", path, ": cannot set the mode of ", name, ": ", std::strerror(err));
  }
  return name;
}

}  // namespace

void atomic_write(const std::string& path, const std::function<void(const std::string& tmp_path)>& fill) {
  TORCH_CHECK(!path.empty(), "atomic_write: the output path is empty");
  // Same directory as `path`, so the rename never crosses file systems.
  const std::string tmp = create_temporary(path);
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
