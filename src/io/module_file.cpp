#include "lwq/io/module_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <ostream>

#include "ops.h"
#include "recorded_allocations.h"

namespace lwq {
namespace io {
namespace {

// A file buffer whose writes always "succeed": the first failure is latched (with its errno) and everything after
// it is dropped, so the archive writer runs to its end and its destructor has nothing to throw.
class LatchingFileBuf : public std::filebuf {
 public:
  explicit LatchingFileBuf(const std::function<void(int64_t)>& on_written) : on_written_(on_written) {}
  bool failed() const { return failed_; }
  int error() const { return errno_; }
  void latch() {
    if (!failed_) errno_ = errno;
    failed_ = true;
  }

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (failed_) return n;
    errno = 0;
    if (std::filebuf::xsputn(s, n) != n) latch();
    if (on_written_) on_written_(n);
    return n;
  }
  int_type overflow(int_type c) override {
    if (failed_) return traits_type::not_eof(c);
    errno = 0;
    if (traits_type::eq_int_type(std::filebuf::overflow(c), traits_type::eof())) latch();
    return traits_type::not_eof(c);
  }
  int sync() override {
    if (!failed_ && std::filebuf::sync() != 0) latch();
    return 0;
  }

 private:
  const std::function<void(int64_t)>& on_written_;
  bool failed_ = false;
  int errno_ = 0;
};

void check_tensor(const at::Tensor& t, const std::string& name, const std::string& path,
                  const std::string& command) {
  check_storage(t, command + "the TorchScript model " + path + " is damaged: tensor '" + name + "'");
}

}  // namespace

torch::jit::Module load_module(const std::string& path, const std::string& command) {
  torch::jit::Module module;
  // Every storage is checked against the memory its record really filled (recorded_allocations.h), here and in
  // the packed weights' __setstate__.
  const RecordedAllocations recorded;
  try {
    // No map_location: a CPU device would materialize every meta parameter as uninitialized memory.
    module = torch::jit::load(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, command, "cannot load the TorchScript model ", path, ": ", e.what_without_backtrace());
  }
  // Packed weights check their own tensors while the archive loads (PackedWeight::from_state).
  for (const auto& item : module.named_modules()) {
    const c10::ClassTypePtr type = item.value.type();
    for (size_t i = 0; i < type->numAttributes(); ++i) {
      const c10::IValue v = item.value._ivalue()->getSlot(i);
      const std::string name = (item.name.empty() ? "" : item.name + ".") + type->getAttributeName(i);
      if (v.isTensor()) check_tensor(v.toTensor(), name, path, command);
    }
  }
  module.eval();
  return module;
}

void save_module(const torch::jit::Module& module, const std::string& path,
                 const std::function<void(int64_t)>& on_written) {
  LatchingFileBuf buffer(on_written);
  TORCH_CHECK(buffer.open(path, std::ios::out | std::ios::binary | std::ios::trunc), "cannot create ", path, ": ",
              std::strerror(errno));
  {
    std::ostream out(&buffer);
    module.save(out);  // through a stream: the inner folder is "archive", not the file's name
    out.flush();
  }
  errno = 0;
  if (!buffer.close()) buffer.latch();
  TORCH_CHECK(!buffer.failed(), "cannot write ", path, ": ",
              buffer.error() ? std::strerror(buffer.error()) : "write error", " (disk full?)");
}

}  // namespace io
}  // namespace lwq
