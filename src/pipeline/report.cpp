// The report of a run (report_json, declared in lwq/pipeline/quantize.h) and the one JSON form of its layers.
#include "report.h"

#include <cmath>

#include "ops.h"

namespace lwq {
namespace pipeline {

using nlohmann::json;

namespace {

json finite_or_null(double v) { return std::isfinite(v) && v >= 0 ? json(v) : json(nullptr); }

double number_or_nan(const json& j, const char* key) {
  const json& v = j.at(key);
  return v.is_number() ? v.get<double>() : std::nan("");
}

}  // namespace

QuantizedLayer describe_layer(const std::string& name, const std::vector<int64_t>& shape,
                              const PackedWeightPtr& packed, LayerReport report) {
  QuantizedLayer q;
  q.name = name;
  q.shape = shape;
  q.dtype = packed->dtype();
  q.group_size = packed->group_size();
  q.sym = packed->sym();
  q.report = std::move(report);
  q.float_bytes = shape[0] * shape[1] * static_cast<int64_t>(sizeof(float));
  q.packed_bytes = packed->nbytes();
  return q;
}

json layer_to_json(const QuantizedLayer& q) {
  return {{"name", q.name},
          {"shape", q.shape},
          {"dtype", q.dtype},
          {"group_size", q.group_size},
          {"sym", q.sym},
          {"algorithm", q.report.algorithm},
          {"weight_mse", finite_or_null(q.report.weight_mse)},
          {"output_mse", finite_or_null(q.report.output_mse)},
          {"rtn_output_mse", finite_or_null(q.report.baseline_output_mse)},
          {"seconds", q.report.seconds},
          {"adjustments", q.report.adjustments},
          {"float_bytes", q.float_bytes},
          {"packed_bytes", q.packed_bytes}};
}

QuantizedLayer layer_from_json(const json& j) {
  QuantizedLayer q;
  q.name = j.at("name");
  q.shape = j.at("shape").get<std::vector<int64_t>>();
  q.dtype = j.at("dtype");
  q.group_size = j.at("group_size");
  q.sym = j.at("sym");
  q.report.algorithm = j.at("algorithm");
  q.report.weight_mse = number_or_nan(j, "weight_mse");
  q.report.output_mse = number_or_nan(j, "output_mse");
  q.report.baseline_output_mse = number_or_nan(j, "rtn_output_mse");
  q.report.seconds = number_or_nan(j, "seconds");
  q.report.adjustments = j.at("adjustments").get<std::vector<std::string>>();
  q.float_bytes = j.at("float_bytes");
  q.packed_bytes = j.at("packed_bytes");
  return q;
}

// scale_dtype only when the scales are float16-exact: reports of other runs stay as they were.
json spec_json(const QuantSpec& spec) {
  json j = {{"dtype", spec.dtype}, {"group_size", spec.group_size}, {"sym", spec.sym}};
  if (spec.fp16_scales) j["scale_dtype"] = "fp16";
  return j;
}

json fold_to_json(const ScaleFoldReport& f) { return {{"layers", f.layers}, {"applied", f.applied}}; }

ScaleFoldReport fold_from_json(const json& j) {
  return {j.at("layers").get<std::vector<std::string>>(), j.at("applied").get<std::string>()};
}

std::string report_json(const QuantizeConfig& config, const QuantizeResult& result) {
  json layers = json::array();
  for (const auto& q : result.quantized) layers.push_back(layer_to_json(q));
  json folds = json::array();
  for (const auto& f : result.folds) folds.push_back(fold_to_json(f));
  json kept = json::array();
  for (const auto& f : result.kept_float) kept.push_back({{"name", f.name}, {"shape", f.shape}, {"reason", f.reason}});
  json report = {
      {"model", config.model_path},
      {"weights", config.weights_path},
      {"output", config.out_path},
      {"algorithm", config.algorithm},
      {"mse_search", config.mse_search},
      {"compute", config.compute},
      {"spec", spec_json(config.spec)},
      {"exclude", config.exclude},
      {"calibration",
       {{"file", config.calib_text.empty() ? config.calib_tensors : config.calib_text},
        {"seqlen", config.calib_text.empty() ? json(nullptr) : json(config.seqlen)},
        {"samples", result.calibration_samples},
        {"blocks", result.blocks},
        {"block_count", result.block_count},
        {"layer_wise", config.layer_wise}}},
      {"scale_folds", folds},
      {"layers", layers},
      {"kept_float", kept},
      {"totals",
       {{"quantized_layers", result.quantized.size()},
        {"float_bytes", result.float_bytes},
        {"packed_bytes", result.packed_bytes},
        {"params_from_store", result.params_from_store},
        {"params_from_archive", result.params_from_archive},
        {"peak_rss_bytes", result.peak_rss_bytes},
        {"rss_anon_bytes_at_end", result.rss_anon_bytes},
        {"peak_rss_anon_bytes", result.peak_rss_anon_bytes},
        {"packed_bytes_spilled", result.spilled_bytes},
        {"rss_file_bytes_at_end", result.rss_file_bytes},
        {"seconds", result.seconds}}}};
  return report.dump(2);
}

}  // namespace pipeline
}  // namespace lwq
