// Atomic replacement of an output file: write a temporary next to it, fsync, rename, fsync the directory.
// A crash or an error at any point leaves either the old file or the complete new one, never a partial file; an
// interrupt (SIGINT, SIGTERM, SIGHUP) also removes the temporary being filled.
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
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

// The temporaries being filled, for the interrupt handler: a killed 7B archive write would otherwise leave gigabytes
// next to the output under a random name. Fixed slots of leaked copies of the names, so that the handler only
// reads memory that stays valid (async-signal-safe: loads, unlink, signal, raise).
constexpr int kTemporarySlots = 16;
std::atomic<const char*> g_temporaries[kTemporarySlots];

void remove_temporaries_and_die(int sig) {
  for (auto& slot : g_temporaries) {
    if (const char* p = slot.load()) ::unlink(p);
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Installs the handler for the signals that still have their default action (a host program's handlers, such as
// Python's for SIGINT, are left alone).
void install_interrupt_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL) continue;
      struct sigaction sa {};
      sa.sa_handler = remove_temporaries_and_die;
      sigemptyset(&sa.sa_mask);
      ::sigaction(sig, &sa, nullptr);
    }
  });
}

// Registers a temporary for the handler while it exists.
class InterruptCleanup {
 public:
  explicit InterruptCleanup(const std::string& path) {
    install_interrupt_handler();
    name_ = ::strdup(path.c_str());
    for (auto& slot : g_temporaries) {
      const char* empty = nullptr;
      if (slot.compare_exchange_strong(empty, name_)) {
        slot_ = &slot;
        return;
      }
    }
    // More writes at once than slots: this one is left to the normal error path only.
  }
  ~InterruptCleanup() {
    if (slot_) slot_->store(nullptr);
    std::free(name_);  // safe once unregistered; a handler already running will end the process anyway
  }
  InterruptCleanup(const InterruptCleanup&) = delete;
  InterruptCleanup& operator=(const InterruptCleanup&) = delete;

 private:
  char* name_ = nullptr;
  std::atomic<const char*>* slot_ = nullptr;
};

}  // namespace

void atomic_write(const std::string& path, const std::function<void(const std::string& tmp_path)>& fill) {
  TORCH_CHECK(!path.empty(), "atomic_write: the output path is empty");
  // Same directory as `path`, so the rename never crosses file systems.
  const std::string tmp = create_temporary(path);
  const InterruptCleanup cleanup(tmp);
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
