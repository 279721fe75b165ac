// Internal to the pipeline: one block of a calibrated run, in a private clone of the model's block (so the model
// being written keeps its graphs, and LibTorch's cached execution plans never see a stale graph).
#pragma once

#include <torch/script.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "calibration.h"
#include "lwq/model/blocks.h"
#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"
#include "parameter_source.h"

namespace lwq {
namespace pipeline {

// One quantized linear of the block being processed.
struct BlockLinear {
  model::LinearLayer layer;  // in the work clone, name relative to the block
  std::string name;          // qualified in the model
  LayerPlan plan;
  at::Tensor weight() const { return layer.module.attr(layer.weight_attr).toTensor(); }
  at::Tensor bias() const;
  void set_weight(const at::Tensor& w) { layer.module.setattr(layer.weight_attr, w); }
};

class BlockRun {
 public:
  // Clones block `index` of `blocks` and fills its float parameters (from `source`, or as the module holds them
  // when named in `filled`); the linears named in `targets` are the ones to quantize.
  BlockRun(torch::jit::Module& module, const model::BlockList& blocks, size_t index, const ParameterSource& source,
           const std::map<std::string, LayerPlan>& targets, const std::set<std::string>& filled);

  size_t size() const { return linears_.size(); }

  // Runs the float (or partly quantized) block on every sample, handing each observed linear input to `fn`
  // (linear index, x). Records the groups of linears reading one tensor on the first call.
  void observe(const ActivationCache& args, const std::function<void(size_t, const at::Tensor&)>& fn);

  // The groups of linears that read one tensor (q/k/v, gate/up), in forward order, found by tensor identity.
  const std::vector<std::vector<size_t>>& groups() const { return groups_; }
  BlockLinear& linear(size_t i) { return linears_[i]; }
  torch::jit::Module& work() { return work_; }

  // The float parameters that stay float (norms possibly rescaled, excluded linears) go to the model; returns them.
  std::map<std::string, at::Tensor> commit_float_parameters(std::set<std::string>& filled);

  // The quantized block's outputs for every sample (the next block's inputs).
  void run_quantized(ActivationCache& args, const std::map<std::string, model::PackedLinear>& packed);

 private:
  torch::jit::Module& module_;
  const model::BlockList& blocks_;
  std::string block_, prefix_;
  torch::jit::Module work_;
  std::vector<BlockLinear> linears_;
  std::vector<std::vector<size_t>> groups_;
};

}  // namespace pipeline
}  // namespace lwq
