// The layer-wise RTN driver. Order of work: check everything that can be checked cheaply (paths, every empty
// parameter has a stored tensor of the right shape) before quantizing anything, then one linear at a time
// (load -> check finite -> quantize -> pack -> drop the float weight), then the remaining parameters, the graph
// rewrite, and one atomic save.
#include "lwq/pipeline/quantize.h"

#include <c10/util/StringUtil.h>
#include <malloc.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "blockwise.h"
#include "lwq/io/packed_spill.h"
#include "lwq/io/safetensors.h"
#include "lwq/model/surgery.h"
#include "lwq/rtn.h"
#include "parameter_source.h"
#include "progress.h"
#include "resume.h"

namespace lwq {
namespace pipeline {

namespace fs = std::filesystem;

namespace {

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

std::string excluded_by(const std::string& name, const std::vector<std::string>& patterns,
                        const std::vector<std::regex>& regexes) {
  for (size_t i = 0; i < regexes.size(); ++i) {
    if (std::regex_search(name, regexes[i])) return patterns[i];
  }
  return "";
}

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
  TORCH_CHECK(config.algorithm == "rtn" || !config.calib_tensors.empty() || !config.calib_text.empty(),
              "quantize: --algo ", config.algorithm,
              " needs calibration inputs: --calib-tensors FILE (safetensors holding input_ids [N, L]) or --calib "
              "TEXT --tokenizer TOK");
  TORCH_CHECK(config.calib_tensors.empty() || config.calib_text.empty(),
              "quantize: give --calib-tensors or --calib, not both");
  for (const std::string& file : {config.calib_tensors, config.calib_text, config.tokenizer_path}) {
    TORCH_CHECK(file.empty() || fs::is_regular_file(file), "quantize: calibration file ", file,
                " is not a readable file");
  }
  TORCH_CHECK(config.nsamples >= 0, "quantize: --nsamples must be >= 0, got ", config.nsamples);
  for (const std::string& input :
       {config.model_path, config.weights_path, config.calib_tensors, config.calib_text, config.tokenizer_path}) {
    if (input.empty()) continue;
    TORCH_CHECK(!same_file(config.out_path, input), "quantize: the output ", config.out_path,
                " is an input file; write the quantized model to a new path");
  }
  TORCH_CHECK(config.report_path.empty() || !same_file(config.report_path, config.out_path),
              "quantize: the report path and the output path are the same: ", config.out_path);
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
}

// The archive writer's output file. It reads every packed weight once; with spilled weights, their pages would
// stay mapped into this process until the end and the RSS would grow by the whole packed model (docs/benchmarks.md):
// every kDropEvery bytes written, the spilled pages read so far are dropped from the process.
class SaveBuffer : public std::filebuf {
 public:
  explicit SaveBuffer(io::PackedSpill* spill) : spill_(spill) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    const std::streamsize wrote = std::filebuf::xsputn(s, n);
    since_drop_ += wrote;
    if (spill_ && since_drop_ >= kDropEvery) {
      spill_->drop_resident();
      since_drop_ = 0;
    }
    return wrote;
  }

 private:
  static constexpr std::streamsize kDropEvery = 64 << 20;
  io::PackedSpill* spill_;
  std::streamsize since_drop_ = 0;
};

}  // namespace

int64_t proc_status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string key = field + ":";
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(key.size())) * 1024;  // "VmHWM:   1234 kB"
  }
  return 0;
}

QuantizeResult quantize_model(const QuantizeConfig& config) {
  const auto start = std::chrono::steady_clock::now();
  // Loaded parameters may require grad: without this, the autograd graph of each quantization (and every
  // intermediate it saves) would stay alive with the packed weight, ~1.2x the float weight per layer.
  const at::NoGradGuard no_grad;
  check_config(config);
  std::vector<std::regex> exclude;
  for (const auto& pattern : config.exclude) {
    try {
      exclude.emplace_back(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      TORCH_CHECK(false, "quantize: --exclude '", pattern, "' is not a valid regular expression: ", e.what());
    }
  }

  torch::jit::Module module;
  try {
    // No map_location: a CPU device would materialize every meta parameter as uninitialized memory.
    module = torch::jit::load(config.model_path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "quantize: cannot load the TorchScript model ", config.model_path, ": ",
                e.what_without_backtrace());
  }
  module.eval();
  TORCH_CHECK(!model::is_quantized(module), "quantize: the model ", config.model_path,
              " already holds packed weights; quantize the float model instead");
  const ParameterSource source(config);

  // The plan: which linears are quantized, and every parameter checked before any work.
  QuantizeResult result;
  const std::vector<model::LinearLayer> layers = model::find_linear_layers(module);
  std::vector<const model::LinearLayer*> to_quantize;
  std::set<std::string> quantized_weights;
  std::vector<std::regex> include;
  for (const auto& pattern : config.include) include.emplace_back(pattern, std::regex::ECMAScript);
  std::map<std::string, LayerPlan> plans;
  for (const auto& layer : layers) {
    const std::string pattern = excluded_by(layer.name, config.exclude, exclude);
    if (!layer.quantizable) {
      result.kept_float.push_back({layer.name, layer.shape, layer.why_not});
    } else if (!pattern.empty()) {
      result.kept_float.push_back({layer.name, layer.shape, "excluded by '" + pattern + "'"});
    } else if (!include.empty() && excluded_by(layer.name, config.include, include).empty()) {
      result.kept_float.push_back({layer.name, layer.shape, "not matched by an include pattern"});
    } else {
      to_quantize.push_back(&layer);
      quantized_weights.insert(layer.weight_name());
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
      plans.emplace(layer.name, plan);
    }
  }
  std::vector<model::NamedTensorSlot> slots = model::parameter_slots(module);
  for (const auto& slot : slots) source.check(slot.name, slot.value());

  // In-memory mode: every parameter first, as a float model would be held (the reference for layer-wise runs).
  std::set<std::string> filled;  // parameters whose final float value the module already holds
  if (!config.layer_wise) {
    for (auto& slot : slots) {
      slot.set(source.load(slot.name, slot.value()));
      filled.insert(slot.name);
    }
  }

  ResumeState state(config, config.resume);
  if (state.done() > 0 && !config.quiet) {
    std::cerr << "resuming after " << state.done() << " finished units" << std::endl;
  }
  // Layer-wise, finished packed weights leave the heap (io/packed_spill.h): memory stays near one block.
  std::unique_ptr<io::PackedSpill> spill;
  if (config.layer_wise) spill = std::make_unique<io::PackedSpill>(config.out_path);
  auto sample_rss = [&result] {
    result.peak_rss_anon_bytes = std::max(result.peak_rss_anon_bytes, proc_status_bytes("RssAnon"));
  };
  std::map<std::string, model::PackedLinear> packed;
  if (config.algorithm == "rtn") {
    // One linear at a time: at most one float weight is resident. One resume unit per linear.
    Progress progress(static_cast<int64_t>(to_quantize.size()), "layer", config.quiet);
    progress.skip(state.done());
    for (size_t i = 0; i < to_quantize.size(); ++i) {
      const model::LinearLayer& layer = *to_quantize[i];
      if (static_cast<int64_t>(i) < state.done()) {
        UnitState unit = state.load_unit(static_cast<int64_t>(i));
        for (auto& p : unit.packed) {
          if (spill) p.second.weight = spill->spill(p.second.weight);
          packed.insert(p);
        }
        result.quantized.insert(result.quantized.end(), unit.layers.begin(), unit.layers.end());
        continue;
      }
      QuantizedLayer q;
      q.name = layer.name;
      q.shape = layer.shape;
      const QuantSpec& spec = plans.at(layer.name).spec;
      q.dtype = spec.dtype;
      q.group_size = spec.group_size;
      q.sym = spec.sym;
      {
        const at::Tensor current = layer.module.attr(layer.weight_attr).toTensor();
        const at::Tensor weight =
            (filled.count(layer.weight_name()) ? current : source.load(layer.weight_name(), current)).to(at::kFloat);
        check_finite(weight, "layer '" + layer.name + "': weight '" + layer.weight_name() + "'");
        try {
          packed[layer.name].weight = rtn_quantize(weight, spec, config.mse_search, &q.report);
        } catch (const c10::Error& e) {
          TORCH_CHECK(false, "layer '", layer.name, "': ", e.what_without_backtrace());
        }
      }
      q.float_bytes = layer.shape[0] * layer.shape[1] * static_cast<int64_t>(sizeof(float));
      q.packed_bytes = packed[layer.name].weight->nbytes();
      std::ostringstream detail;
      detail << layer.name << " " << c10::IntArrayRef(layer.shape) << " " << q.dtype << " g" << q.group_size
             << ": weight mse " << q.report.weight_mse << ", " << q.report.seconds << " s";
      {
        UnitState unit;
        unit.packed[layer.name] = packed[layer.name];
        unit.layers.push_back(q);
        state.save_unit(static_cast<int64_t>(i), unit);
      }
      // Spilled after the resume state is written from the heap copy (as blockwise.cpp does): written from the
      // mapping, every spilled page would stay resident and the RSS would grow by the codes of each layer.
      if (spill) packed[layer.name].weight = spill->spill(packed[layer.name].weight);
      // The layer's temporaries below glibc's mmap threshold (up to 32 MiB once large blocks were freed) leave
      // free pages between the packed scales that stay: without this, about 15 MiB of freed heap per Llama-7B
      // block stays resident (measured: docs/benchmarks.md, layer-wise RTN peak memory).
      malloc_trim(0);
      progress.done(static_cast<int64_t>(i), detail.str());
      sample_rss();
      result.quantized.push_back(std::move(q));
    }
  } else {
    packed = quantize_blockwise(config, module, source, to_quantize, plans, filled, state, spill.get(), result);
  }
  for (const auto& q : result.quantized) {
    result.float_bytes += q.float_bytes;
    result.packed_bytes += q.packed_bytes;
  }

  // Everything else keeps float values, now materialized.
  for (auto& slot : slots) {
    if (quantized_weights.count(slot.name)) continue;
    if (filled.count(slot.name)) {
      ++(source.from_store(slot.name) ? result.params_from_store : result.params_from_archive);
      continue;
    }
    const at::Tensor current = slot.value();
    if (source.from_store(slot.name)) {
      slot.set(source.load(slot.name, current));
      ++result.params_from_store;
    } else {
      ++result.params_from_archive;
    }
  }
  sample_rss();
  if (config.compute == "int8") {
    for (auto& entry : packed) entry.second.int8_activations = !entry.second.activation;
  }
  model::install_packed_linears(module, layers, packed);

  // Saved through a stream: the archive's inner folder name is then fixed ("archive"), not the temporary file's
  // name, so the same inputs give the same bytes.
  io::atomic_write(config.out_path, [&](const std::string& tmp) {
    SaveBuffer buffer(spill.get());
    TORCH_CHECK(buffer.open(tmp, std::ios::out | std::ios::binary | std::ios::trunc), "quantize: cannot create ",
                tmp);
    std::ostream out(&buffer);
    module.save(out);
    out.flush();
    TORCH_CHECK(out && buffer.close(), "quantize: cannot write ", tmp);
  });
  if (spill) spill->drop_resident();
  state.finish();
  sample_rss();
  if (spill) result.spilled_bytes = spill->bytes();
  result.peak_rss_bytes = proc_status_bytes("VmHWM");
  result.rss_anon_bytes = proc_status_bytes("RssAnon");
  result.rss_file_bytes = proc_status_bytes("RssFile");
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!config.report_path.empty()) {
    const std::string text = report_json(config, result);
    io::atomic_write(config.report_path, [&](const std::string& tmp) {
      std::ofstream out(tmp);
      out << text << "\n";
      out.close();
      TORCH_CHECK(out, "quantize: cannot write the report ", tmp);
    });
  }
  return result;
}

std::string report_json(const QuantizeConfig& config, const QuantizeResult& result) {
  using nlohmann::json;
  auto finite_or_null = [](double v) { return std::isfinite(v) && v >= 0 ? json(v) : json(nullptr); };
  json layers = json::array();
  for (const auto& q : result.quantized) {
    json entry = {{"name", q.name},
                  {"shape", q.shape},
                  {"dtype", q.dtype},
                  {"group_size", q.group_size},
                  {"sym", q.sym},
                  {"algorithm", q.report.algorithm},
                  {"weight_mse", finite_or_null(q.report.weight_mse)},
                  {"output_mse", finite_or_null(q.report.output_mse)},
                  {"rtn_output_mse", finite_or_null(q.report.baseline_output_mse)},
                  {"seconds", q.report.seconds},
                  {"float_bytes", q.float_bytes},
                  {"packed_bytes", q.packed_bytes}};
    if (!q.report.adjustments.empty()) entry["adjustments"] = q.report.adjustments;
    layers.push_back(entry);
  }
  json folds = json::array();
  for (const auto& f : result.folds) folds.push_back({{"layers", f.layers}, {"applied", f.applied}});
  json kept = json::array();
  for (const auto& f : result.kept_float) kept.push_back({{"name", f.name}, {"shape", f.shape}, {"reason", f.reason}});
  json report = {
      {"model", config.model_path},
      {"weights", config.weights_path},
      {"output", config.out_path},
      {"algorithm", config.algorithm},
      {"mse_search", config.mse_search},
      {"compute", config.compute},
      {"spec", {{"dtype", config.spec.dtype}, {"group_size", config.spec.group_size}, {"sym", config.spec.sym}}},
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
