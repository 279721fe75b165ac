#include "rtn_units.h"

#include <sstream>

#include "lwq/rtn.h"
#include "report.h"

namespace lwq {
namespace pipeline {

void quantize_rtn(const QuantizeConfig& config, const std::vector<const model::LinearLayer*>& targets,
                  const std::map<std::string, LayerPlan>& plans, const std::set<std::string>& filled,
                  const ParameterSource& source, std::map<std::string, model::PackedLinear>& packed,
                  QuantizeResult& result, Units& units) {
  for (size_t i = 0; i < targets.size(); ++i) {
    const int64_t k = static_cast<int64_t>(i);
    if (units.finished(k)) {
      units.restore(k);
      continue;
    }
    const model::LinearLayer& layer = *targets[i];
    const QuantSpec& spec = plans.at(layer.name).spec;
    LayerReport report;
    {
      const at::Tensor current = layer.module.attr(layer.weight_attr).toTensor();
      const at::Tensor weight =
          (filled.count(layer.weight_name()) ? current : source.load(layer.weight_name(), current)).to(at::kFloat);
      check_finite(weight, "layer '" + layer.name + "': weight '" + layer.weight_name() + "'");
      try {
        packed[layer.name].weight = rtn_quantize(weight, spec, config.mse_search, &report);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "layer '", layer.name, "': ", e.what_without_backtrace());
      }
    }  // the float weight is freed here
    UnitState unit;
    unit.layers.push_back(describe_layer(layer.name, layer.shape, packed[layer.name].weight, report));
    std::ostringstream detail;
    detail << layer.name << " " << c10::IntArrayRef(layer.shape) << " " << spec.dtype << " g" << spec.group_size
           << ": weight mse " << report.weight_mse << ", " << report.seconds << " s";
    result.quantized.push_back(unit.layers.back());
    units.record(k, std::move(unit), detail.str());
  }
}

}  // namespace pipeline
}  // namespace lwq
