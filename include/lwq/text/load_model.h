// Loading a TorchScript model to run it (eval, generate): a quantized archive as it is, or an archive with empty
// (meta) parameters filled from safetensors weights.
#pragma once

#include <torch/script.h>

#include <string>

namespace lwq {
namespace text {

// Loads `model_path` and, when `weights_path` is not empty, sets every parameter and buffer the weight store holds
// (a file or a sharded directory, tensors named by qualified parameter name, converted to the archive's dtype).
// The emptied float weight of a packed layer is left alone (its packed weight is what runs). Throws naming the
// file and the parameter when a stored shape differs, or when a parameter is still meta afterwards. The module
// is returned in eval mode and has never run (LibTorch caches a method's plan on its first run).
torch::jit::Module load_model(const std::string& model_path, const std::string& weights_path);

// The longest sequence the model takes: its int attribute max_seq_len, else the rows of its rope_cos buffer,
// else "max_seq_len" in config.json beside the archive; 0 when none of them says.
int64_t model_max_seq_len(const torch::jit::Module& model, const std::string& model_path);

// Makes glibc keep freed memory for reuse (mmap threshold 32 MiB, trim threshold 1 GiB) instead of returning every
// freed activation above 128 KiB to the kernel, whose pages then fault in again on the next op: running a model
// allocates and frees tensors at every op, and `lwq eval` on stories260K spent most of its time in page faults
// (3-4x slower). Process-wide: for programs that run models (eval, generate), not for the layer-wise quantizer,
// whose resident memory should fall as each layer is dropped.
void keep_freed_memory_in_heap();

}  // namespace text
}  // namespace lwq
