// Internal to the pipeline: what is recorded of each quantized layer, in one place. The JSON form of a layer is
// the same in the report (--report) and in the resume state.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "lwq/common.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

// The report entry of one packed linear (its format from the packed weight itself).
QuantizedLayer describe_layer(const std::string& name, const std::vector<int64_t>& shape,
                              const PackedWeightPtr& packed, LayerReport report);

// Errors not measured (-1) and failed measurements (NaN) are written as null and read back as NaN.
nlohmann::json layer_to_json(const QuantizedLayer& q);
QuantizedLayer layer_from_json(const nlohmann::json& j);

nlohmann::json fold_to_json(const ScaleFoldReport& f);
ScaleFoldReport fold_from_json(const nlohmann::json& j);

}  // namespace pipeline
}  // namespace lwq
