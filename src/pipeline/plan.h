// Internal to the pipeline: what a run will do, decided before any work. check_config refuses bad options and
// output paths; plan_layers says which linears are quantized with which format and algorithm, and why the others
// stay float.
#pragma once

#include <torch/script.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

void check_config(const QuantizeConfig& config);

struct LayerSelection {
  std::vector<model::LinearLayer> layers;               // every linear call site of the model
  std::vector<const model::LinearLayer*> to_quantize;   // into `layers`, in its order
  std::map<std::string, LayerPlan> plans;               // by layer name, for to_quantize
  std::set<std::string> quantized_weights;              // their weights' qualified parameter names
  LayerSelection() = default;
  LayerSelection(LayerSelection&&) = default;           // moving keeps the pointers into `layers` valid
  LayerSelection(const LayerSelection&) = delete;
};

// The selection for `module`; the layers kept float are appended to result.kept_float with the reason.
LayerSelection plan_layers(const QuantizeConfig& config, const torch::jit::Module& module, QuantizeResult& result);

}  // namespace pipeline
}  // namespace lwq
