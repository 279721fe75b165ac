// Internal to the pipeline: layer-wise RTN, one linear at a time (at most one float weight resident), one resume
// unit per linear.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"
#include "parameter_source.h"
#include "units.h"

namespace lwq {
namespace pipeline {

// Quantizes `targets` with their plans; a weight named in `filled` is taken as the module holds it, the others
// are read from `source`. Packed weights and report entries go through `units`.
void quantize_rtn(const QuantizeConfig& config, const std::vector<const model::LinearLayer*>& targets,
                  const std::map<std::string, LayerPlan>& plans, const std::set<std::string>& filled,
                  const ParameterSource& source, std::map<std::string, model::PackedLinear>& packed,
                  QuantizeResult& result, Units& units);

}  // namespace pipeline
}  // namespace lwq
