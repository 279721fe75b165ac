#include "plan.h"

#include <c10/util/StringUtil.h>

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <regex>

#include "lwq/io/output_path.h"

namespace lwq {
namespace pipeline {

namespace fs = std::filesystem;

namespace {

std::vector<std::regex> compile(const std::vector<std::string>& patterns, const char* option) {
  std::vector<std::regex> out;
  for (const auto& pattern : patterns) {
    try {
      out.emplace_back(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      TORCH_CHECK(false, "quantize: ", option, " '", pattern, "' is not a valid regular expression: ", e.what());
    }
  }
  return out;
}

std::string excluded_by(const std::string& name, const std::vector<std::string>& patterns,
                        const std::vector<std::regex>& regexes) {
  for (size_t i = 0; i < regexes.size(); ++i) {
    if (std::regex_search(name, regexes[i])) return patterns[i];
  }
  return "";
}

}  // namespace

void check_config(const QuantizeConfig& config) {
  TORCH_CHECK(!config.model_path.empty(), "quantize: no model given");
  TORCH_CHECK(!config.out_path.empty(), "quantize: no output path given");
  TORCH_CHECK(fs::is_regular_file(config.model_path), "quantize: model ", config.model_path,
              " is not a readable file");
  TORCH_CHECK(config.weights_path.empty() || fs::exists(config.weights_path), "quantize: weights ",
              config.weights_path, ": no such file or directory");
  const std::vector<std::string> algorithms(std::begin(kAlgorithms), std::end(kAlgorithms));
  TORCH_CHECK(std::count(algorithms.begin(), algorithms.end(), config.algorithm), "quantize: unknown algorithm '",
              config.algorithm, "'; available: ", c10::Join(", ", algorithms));
  if (config.algorithm == "w8a8") {
    TORCH_CHECK(config.spec.dtype == kW8a8Spec.dtype && config.spec.group_size == kW8a8Spec.group_size &&
                    config.spec.sym == kW8a8Spec.sym,
                "quantize: w8a8 uses int8 symmetric per-channel weights: pass --dtype int8 --group-size -1 --sym");
    // lwq::w8a8_linear's weights never go to a GPTQ checkpoint; a setting that changes nothing is refused.
    TORCH_CHECK(!config.spec.fp16_scales, "quantize: float16 scales apply to the weight-only algorithms (rtn, gptq, ",
                "awq, teq), not to w8a8");
  }
  TORCH_CHECK(config.algorithm == "rtn" || !config.calib_tensors.empty() || !config.calib_text.empty(),
              "quantize: --algo ", config.algorithm,
              " needs calibration inputs: --calib-tensors FILE (safetensors holding input_ids [N, L]) or --calib "
              "TEXT --tokenizer TOK");
  TORCH_CHECK(config.calib_tensors.empty() || config.calib_text.empty(),
              "quantize: give --calib-tensors or --calib, not both");
  for (const auto& file : std::vector<std::pair<const char*, std::string>>{
           {"calibration file", config.calib_tensors}, {"calibration text", config.calib_text}}) {
    TORCH_CHECK(file.second.empty() || fs::is_regular_file(file.second), "quantize: ", file.first, " ", file.second,
                " is not a readable file");
  }
  // A tokenizer is a file or a model directory (text::load_tokenizer).
  TORCH_CHECK(config.tokenizer_path.empty() || fs::is_regular_file(config.tokenizer_path) ||
                  fs::is_directory(config.tokenizer_path),
              "quantize: tokenizer ", config.tokenizer_path, " is neither a readable file nor a model directory");
  TORCH_CHECK(config.nsamples >= 0, "quantize: --nsamples must be >= 0, got ", config.nsamples);
  // Before any work: the outputs can be written and none of them is an input (by file identity).
  const std::vector<io::NamedInput> inputs = {{"--model", config.model_path},
                                              {"--weights", config.weights_path},
                                              {"--calib-tensors", config.calib_tensors},
                                              {"--calib", config.calib_text},
                                              {"--tokenizer", config.tokenizer_path}};
  io::check_output_file("quantize", "--out", config.out_path, inputs);
  if (!config.report_path.empty()) {
    TORCH_CHECK(fs::weakly_canonical(config.report_path) != fs::weakly_canonical(config.out_path) &&
                    !io::same_file(config.report_path, config.out_path),
                "quantize: the report path and the output path are the same: ", config.out_path);
    io::check_output_file("quantize", "--report", config.report_path, inputs);
  }
  const DtypeInfo& info = dtype_info(config.spec.dtype);
  check_scheme(info, config.spec.sym);
  TORCH_CHECK(config.compute == "fp32" || config.compute == "int8", "quantize: unknown compute '", config.compute,
              "'; available: fp32, int8");
  if (config.compute == "int8") {
    TORCH_CHECK(config.algorithm != "w8a8", "quantize: --compute int8 applies to weight-only layers; W8A8 layers "
                "already compute in int8 with static activation scales");
    const std::vector<std::string> a8_dtypes = int8_activation_dtype_names();
    const std::string a8_list = c10::Join(", ", a8_dtypes);
    auto a8 = [&](const std::string& dtype) { return std::count(a8_dtypes.begin(), a8_dtypes.end(), dtype) > 0; };
    TORCH_CHECK(a8(config.spec.dtype), "quantize: --compute int8 needs one of the dtypes ", a8_list, ", got ",
                config.spec.dtype);
    for (const LayerRule& rule : config.rules) {
      TORCH_CHECK(!rule.dtype || a8(*rule.dtype), "quantize: --compute int8 needs one of the dtypes ", a8_list,
                  ", but the rule for layers matching '", rule.match, "' selects ", *rule.dtype);
    }
  }
  TORCH_CHECK(config.spec.group_size == -1 || config.spec.group_size > 0,
              "quantize: group size must be -1 (per output channel) or positive, got ", config.spec.group_size);
  compile(config.exclude, "--exclude");
  compile(config.include, "--include");
}


LayerSelection plan_layers(const QuantizeConfig& config, const torch::jit::Module& module, QuantizeResult& result) {
  const std::vector<std::regex> exclude = compile(config.exclude, "--exclude");
  const std::vector<std::regex> include = compile(config.include, "--include");
  LayerSelection s;
  s.layers = model::find_linear_layers(module);
  for (const auto& layer : s.layers) {
    const std::string pattern = excluded_by(layer.name, config.exclude, exclude);
    if (!layer.quantizable) {
      result.kept_float.push_back({layer.name, layer.shape, layer.why_not});
    } else if (!pattern.empty()) {
      result.kept_float.push_back({layer.name, layer.shape, "excluded by '" + pattern + "'"});
    } else if (!include.empty() && excluded_by(layer.name, config.include, include).empty()) {
      result.kept_float.push_back({layer.name, layer.shape, "not matched by an include pattern"});
    } else {
      s.to_quantize.push_back(&layer);
      s.quantized_weights.insert(layer.weight_name());
      const LayerPlan plan = plan_for(config, layer.name);
      TORCH_CHECK(plan.algorithm == "rtn" || plan.algorithm == config.algorithm, "quantize: layer '", layer.name,
                  "': a config rule selects algorithm '", plan.algorithm, "' but the run's algorithm is '",
                  config.algorithm, "'; a rule may select rtn or the run's algorithm");
      try {
        check_scheme(dtype_info(plan.spec.dtype), plan.spec.sym);
        TORCH_CHECK(plan.spec.group_size == -1 || plan.spec.group_size > 0,
                    "group size must be -1 (per output channel) or positive, got ", plan.spec.group_size);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "quantize: layer '", layer.name, "': ", e.what_without_backtrace());
      }
      s.plans.emplace(layer.name, plan);
    }
  }
  return s;
}

}  // namespace pipeline
}  // namespace lwq
