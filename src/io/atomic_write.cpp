// Atomic replacement of an output file: write a temporary next to it, fsync, rename, fsync the directory.
// A crash or an error at any point leaves either the old file or the complete new one, never a partial file; an
// interrupt (SIGINT, SIGTERM, SIGHUP) also removes the temporary being filled. A write killed outright (SIGKILL,
// the OOM killer, a power cut) cannot clean up: its temporary stays, and the next write of the same output removes
// it — the writer holds an flock on its temporary for as long as it fills it, so a temporary nobody holds is one
// whose writer is gone.
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <signal.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
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

// The temporary being filled, open and flock'ed (exclusive) until it is renamed or removed: the lock tells other
// processes that its writer is alive, and goes with the process however it ends.
struct Temporary {
  std::string name;
  int fd = -1;
  ~Temporary() {
    if (fd >= 0) ::close(fd);
  }
};

// Creates the temporary the safe way: a random name made exclusively (mkstemp: O_CREAT | O_EXCL, so a file or a
// symbolic link planted at a predictable name is never followed or reused), locked, then given the mode an
// ordinary create would have given the output.
void create_temporary(const std::string& path, Temporary& t) {
  t.name = path + ".tmp.XXXXXX";
  t.fd = ::mkostemp(t.name.data(), O_CLOEXEC);
  TORCH_CHECK(t.fd >= 0, "atomic_write ", path, ": cannot create a temporary file next to it: ",
              std::strerror(errno));
  int rc = ::flock(t.fd, LOCK_EX | LOCK_NB);
  if (rc == 0) rc = ::fchmod(t.fd, 0666 & ~current_umask());
  const int err = errno;
  if (rc != 0) {
    ::unlink(t.name.c_str());
    TORCH_CHECK(false, "atomic_write ", path, ": cannot lock or set the mode of ", t.name, ": ", std::strerror(err));
  }
}

// "NAME.tmp.XXXXXX" with the six characters mkstemp draws from.
bool is_temporary_of(const std::string& entry, const std::string& name) {
  const std::string prefix = name + ".tmp.";
  if (entry.size() != prefix.size() + 6 || entry.compare(0, prefix.size(), prefix) != 0) return false;
  for (size_t i = prefix.size(); i < entry.size(); ++i) {
    const char c = entry[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
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

int64_t remove_stale_temporaries(const std::string& path) {
  const std::filesystem::path p(path);
  const std::string name = p.filename().string();
  std::string dir = p.parent_path().string();
  if (dir.empty()) dir = ".";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;  // a missing folder is reported by the write itself
  int64_t removed = 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    if (!is_temporary_of(entry, name)) continue;
    const std::string full = dir + "/" + entry;
    // Never follow a link, never block on a FIFO; only this user's regular files.
    const int fd = ::open(full.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    const bool mine = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid();
    // Not locked: its writer is gone. (A writer locks its temporary right after creating it; the age check keeps
    // that instant out of reach.)
    const bool old_enough = mine && std::difftime(::time(nullptr), st.st_mtime) >= 2;
    if (old_enough && ::flock(fd, LOCK_EX | LOCK_NB) == 0 && ::unlink(full.c_str()) == 0) {
      std::cerr << "lwq: removed " << full << " (" << st.st_size
                << " bytes), the temporary of an earlier write of " << path << " that was killed" << std::endl;
      ++removed;
    }
    ::close(fd);
  }
  ::closedir(d);
  return removed;
}

void atomic_write(const std::string& path, const std::function<void(const std::string& tmp_path)>& fill) {
  TORCH_CHECK(!path.empty(), "atomic_write: the output path is empty");
  // Same directory as `path`, so the rename never crosses file systems.
  remove_stale_temporaries(path);
  Temporary temporary;
  create_temporary(path, temporary);
  const std::string& tmp = temporary.name;
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
