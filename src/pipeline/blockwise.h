// Internal to the pipeline: the calibrated algorithms (gptq, awq, teq, w8a8) run block by block.
#pragma once

#include <torch/script.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "lwq/io/packed_spill.h"
#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"
#include "parameter_source.h"
#include "resume.h"

namespace lwq {
namespace pipeline {

// Quantizes `targets` (linear layers of `module`) with config.algorithm. For each block: its parameters are read
// into a private clone, the linears' inputs are observed on the cached block inputs, the linears are quantized
// (scales folded into producers where the graph allows), the quantized clone computes the next block's inputs,
// and the block's float parameters that stay float (norms, possibly rescaled) are set on `module`, their names
// added to `filled`. One resume unit per block: blocks finished by an earlier run are restored from `state`.
// Returns the packed linears by qualified layer name; appends to result.quantized/folds.
std::map<std::string, model::PackedLinear> quantize_blockwise(const QuantizeConfig& config,
                                                              torch::jit::Module& module,
                                                              const ParameterSource& source,
                                                              const std::vector<const model::LinearLayer*>& targets,
                                                              const std::map<std::string, LayerPlan>& plans,
                                                              std::set<std::string>& filled, ResumeState& state,
                                                              io::PackedSpill* spill, QuantizeResult& result);

}  // namespace pipeline
}  // namespace lwq
