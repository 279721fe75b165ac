// Internal to the pipeline: where the float value of each parameter comes from.
#pragma once

#include <c10/util/Exception.h>

#include <memory>
#include <string>
#include <vector>

#include "lwq/io/safetensors.h"
#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

// The float value of a parameter: from the store when it has one (it wins over values in the archive: the user
// asked for those weights), else from the archive when it holds real values.
class ParameterSource {
 public:
  explicit ParameterSource(const QuantizeConfig& config) : config_(config) {
    if (!config.weights_path.empty()) store_ = std::make_unique<io::WeightStore>(config.weights_path);
  }

  bool from_store(const std::string& name) const { return store_ && store_->contains(name); }

  // Checks the parameter can be provided with `archive_value`'s shape, without reading it.
  void check(const std::string& name, const at::Tensor& archive_value) const {
    if (from_store(name)) {
      const std::vector<int64_t> stored = store_->shape(name);
      TORCH_CHECK(stored == archive_value.sizes().vec(), "parameter '", name, "' has shape ",
                  archive_value.sizes(), " in the model ", config_.model_path, " but ", c10::IntArrayRef(stored),
                  " in the weights ", config_.weights_path);
      return;
    }
    TORCH_CHECK(!model::is_empty_in_archive(archive_value), "parameter '", name, "' is empty (",
                archive_value.is_meta() ? "meta" : "0 elements", ") in the model ", config_.model_path, " and ",
                store_ ? "the weights " + config_.weights_path + " have no tensor of that name"
                       : std::string("no weights file was given (--weights)"));
  }

  at::Tensor load(const std::string& name, const at::Tensor& archive_value) const {
    check(name, archive_value);
    if (!from_store(name)) return archive_value;
    return store_->load(name).to(archive_value.scalar_type()).set_requires_grad(archive_value.requires_grad());
  }

 private:
  const QuantizeConfig& config_;
  std::unique_ptr<io::WeightStore> store_;
};

}  // namespace pipeline
}  // namespace lwq
