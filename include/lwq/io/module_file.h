// Writing a TorchScript archive to a file, failures included. PyTorch's archive writer finishes the zip in its
// destructor and throws from there when a write failed, which terminates the process (a full disk aborted
// `lwq quantize` with SIGABRT and no message). Here the file's stream never fails under the writer: after the
// first failed write it drops the rest, and the failure is thrown, with its errno, once the writer is done.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <string>

namespace lwq {
namespace io {

// Loads a TorchScript archive (meta parameters stay meta: no map_location) and checks that every tensor it holds
// has the bytes its shape needs: parameters, buffers and tensor attributes (packed weights check theirs as they load).
// A record cut to nothing in the zip loads without complaint and crashed the first kernel that read it (SIGSEGV).
// Errors start with `command` (e.g. "quantize: ") and name the file and the tensor.
torch::jit::Module load_module(const std::string& path, const std::string& command);

// Saves `module` to `path` (created or truncated; normally atomic_write's temporary). The archive's inner folder is
// "archive" whatever the file is called, so the same module gives the same bytes under any name. `on_written` is
// called with the size of every chunk written (the layer-wise driver drops spilled pages as the archive grows).
void save_module(const torch::jit::Module& module, const std::string& path,
                 const std::function<void(int64_t)>& on_written = {});

}  // namespace io
}  // namespace lwq
