#include "lwq/io/output_path.h"

#include <c10/util/Exception.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <utility>

#include "lwq/io/safetensors.h"  // remove_stale_temporaries

namespace lwq {
namespace io {

namespace fs = std::filesystem;

namespace {

using FileId = std::pair<dev_t, ino_t>;

bool file_id(const std::string& path, FileId* id) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  *id = {st.st_dev, st.st_ino};
  return true;
}

// Every file an input stands for, by identity: the file itself, or each file under a directory. A directory is
// walked whole (a Hugging Face folder may keep files in subfolders); the bound only keeps a mistaken input such as
// "/" from walking the disk.
std::map<FileId, std::string> input_files(const std::vector<NamedInput>& inputs) {
  constexpr size_t kMaxFiles = 100000;
  std::map<FileId, std::string> files;
  for (const NamedInput& input : inputs) {
    if (input.path.empty()) continue;
    const std::string what = input.option + " " + input.path;
    FileId id;
    if (file_id(input.path, &id)) files.emplace(id, what);
    std::error_code ec;
    if (!fs::is_directory(input.path, ec)) continue;
    fs::recursive_directory_iterator it(input.path, fs::directory_options::skip_permission_denied, ec);
    for (size_t n = 0; !ec && it != fs::recursive_directory_iterator() && n < kMaxFiles; it.increment(ec), ++n) {
      if (file_id(it->path().string(), &id)) files.emplace(id, it->path().string() + ", in " + what);
    }
  }
  return files;
}

// The folder the output goes into must exist, be a directory and be writable.
void check_parent(const std::string& command, const std::string& option, const std::string& out) {
  std::string parent = fs::path(out).parent_path().string();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  TORCH_CHECK(fs::exists(parent, ec), command, ": the output ", option, " ", out, " cannot be written: the folder ",
              parent, " does not exist (create it first)");
  TORCH_CHECK(fs::is_directory(parent, ec), command, ": the output ", option, " ", out,
              " cannot be written: ", parent, " is not a directory");
  TORCH_CHECK(::access(parent.c_str(), W_OK | X_OK) == 0, command, ": the output ", option, " ", out,
              " cannot be written: no permission to create files in ", parent, " (", std::strerror(errno), ")");
}

void check_not_an_input(const std::string& command, const std::string& option, const std::string& out,
                        const std::map<FileId, std::string>& inputs) {
  FileId id;
  if (!file_id(out, &id)) return;  // a file that does not exist yet cannot be an input
  const auto it = inputs.find(id);
  TORCH_CHECK(it == inputs.end(), command, ": the output ", option, " ", out, " is an input of this command (",
              it == inputs.end() ? "" : it->second, "); writing it would destroy that input: choose a new path");
}

}  // namespace

bool same_file(const std::string& a, const std::string& b) {
  FileId ia, ib;
  return file_id(a, &ia) && file_id(b, &ib) && ia == ib;
}

void check_output_file(const std::string& command, const std::string& option, const std::string& out,
                       const std::vector<NamedInput>& inputs) {
  TORCH_CHECK(!out.empty(), command, ": no output path given (", option, ")");
  std::error_code ec;
  TORCH_CHECK(!fs::is_directory(out, ec), command, ": the output ", option, " ", out,
              " is a directory; give the path of a file to write, e.g. ", (fs::path(out) / "model.pt").string());
  check_parent(command, option, out);
  check_not_an_input(command, option, out, input_files(inputs));
  // The output will be written: a temporary a killed earlier write left next to it goes now, not after the run.
  remove_stale_temporaries(out);
}

void check_output_dir(const std::string& command, const std::string& option, const std::string& dir,
                      const std::vector<std::string>& files, const std::vector<NamedInput>& inputs) {
  TORCH_CHECK(!dir.empty(), command, ": no output directory given (", option, ")");
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    TORCH_CHECK(fs::is_directory(dir, ec), command, ": the output ", option, " ", dir,
                " exists and is not a directory; give a new or existing directory");
    TORCH_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, command, ": the output directory ", dir,
                " is not writable (", std::strerror(errno), ")");
  } else {
    check_parent(command, option, dir);
  }
  const std::map<FileId, std::string> ids = input_files(inputs);
  check_not_an_input(command, option, dir, ids);
  for (const std::string& f : files) {
    check_not_an_input(command, option, (fs::path(dir) / f).string(), ids);
    if (fs::is_directory(dir, ec)) remove_stale_temporaries((fs::path(dir) / f).string());
  }
}

}  // namespace io
}  // namespace lwq
