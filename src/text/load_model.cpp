#include "lwq/text/load_model.h"

#include <malloc.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <memory>

#include "lwq/io/json.h"
#include "lwq/io/module_file.h"
#include "lwq/io/safetensors.h"
#include "lwq/model/surgery.h"

namespace lwq {
namespace text {

namespace fs = std::filesystem;

namespace {

// A float weight emptied by quantization: its module holds the packed replacement.
bool replaced_by_packed(const model::NamedTensorSlot& slot) {
  const std::string packed = model::LinearLayer::packed_attr_for(slot.attr);
  return !slot.is_buffer && slot.owner.hasattr(packed) && !slot.owner.attr(packed).isNone();
}

}  // namespace

torch::jit::Module load_model(const std::string& model_path, const std::string& weights_path) {
  TORCH_CHECK(fs::is_regular_file(model_path), "model ", model_path, " is not a readable file");
  TORCH_CHECK(weights_path.empty() || fs::exists(weights_path), "weights ", weights_path,
              ": no such file or directory");
  torch::jit::Module module = io::load_module(model_path, "");
  model::rewrite_meta_device_constants(module, "the model " + model_path);  // traced on meta: run it on CPU
  std::unique_ptr<io::WeightStore> store;
  if (!weights_path.empty()) store = std::make_unique<io::WeightStore>(weights_path);
  const at::NoGradGuard no_grad;
  int64_t filled = 0;
  for (auto& slot : model::parameter_slots(module)) {
    const at::Tensor current = slot.value();
    if (store && store->contains(slot.name) && !replaced_by_packed(slot)) {
      const std::vector<int64_t> shape = store->shape(slot.name);
      TORCH_CHECK(shape == current.sizes().vec(), "parameter '", slot.name, "' has shape ", current.sizes(),
                  " in the model ", model_path, " but ", c10::IntArrayRef(shape), " in the weights ", weights_path);
      const at::ScalarType dtype = current.scalar_type();
      slot.set(store->load(slot.name).to(dtype).set_requires_grad(current.requires_grad()));
      ++filled;
      continue;
    }
    TORCH_CHECK(!current.is_meta(), "parameter '", slot.name, "' is empty (meta) in the model ", model_path, " and ",
                store ? "the weights " + weights_path + " have no tensor of that name"
                      : std::string("no weights were given (--weights)"));
  }
  TORCH_CHECK(!store || filled > 0, "the weights ", weights_path, " hold none of the parameters of the model ",
              model_path, " (names are qualified parameter names, e.g. layers.0.self_attn.q_proj.weight)");
  return module;
}

int64_t model_max_seq_len(const torch::jit::Module& model, const std::string& model_path) {
  if (model.hasattr("max_seq_len")) {
    const c10::IValue v = model.attr("max_seq_len");
    if (v.isInt()) return v.toInt();
  }
  if (model.hasattr("rope_cos")) {
    const c10::IValue v = model.attr("rope_cos");
    if (v.isTensor() && v.toTensor().dim() == 2) return v.toTensor().size(0);
  }
  const fs::path config = fs::path(model_path).parent_path() / "config.json";
  if (fs::is_regular_file(config)) {
    std::ifstream in(config);
    nlohmann::json j;
    try {
      j = io::parse_json(config.string(), in);
    } catch (const nlohmann::json::parse_error&) {
      return 0;  // not a config this reader understands: the length is unknown
    }
    if (j.is_object() && j.contains("max_seq_len") && j["max_seq_len"].is_number_integer()) {
      return io::json_integer<int64_t>(j["max_seq_len"], "config.json max_seq_len");
    }
  }
  return 0;
}

void keep_freed_memory_in_heap() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace text
}  // namespace lwq
