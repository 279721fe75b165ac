// torch.ops.lwq.load_safetensors(path): every tensor of one safetensors file, validated and read by the C++ reader
// (for Python scripts and tests). Floating tensors (F32/F16/BF16/F64) come back as float32, as the pipeline reads
// weights; integer and BOOL tensors in their stored dtype.
#include "bindings.h"

#include "lwq/io/safetensors.h"

namespace lwq {
namespace bindings {

c10::Dict<std::string, at::Tensor> load_safetensors_op(std::string path) {
  const auto file = io::SafetensorsFile::open(path);
  c10::Dict<std::string, at::Tensor> out;
  for (const auto& name : file->names()) {
    const std::string& dtype = file->info(name).dtype;
    const bool floating = dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
    out.insert(name, floating ? file->load(name) : file->load_raw(name));
  }
  return out;
}

}  // namespace bindings
}  // namespace lwq
