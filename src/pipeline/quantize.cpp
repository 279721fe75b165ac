// The layer-wise driver (lwq/pipeline/quantize.h): check everything that can be checked cheaply (options, paths,
// every empty parameter has a stored tensor of the right shape) before quantizing anything (plan.h); quantize in
// resumable units, one linear at a time for RTN (rtn_units.h) or block by block for calibrated algorithms
// (blockwise.h); then the remaining parameters, the graph rewrite and one atomic save.
#include "lwq/pipeline/quantize.h"

#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include "blockwise.h"
#include "lwq/io/module_file.h"
#include "lwq/io/packed_spill.h"
#include "lwq/io/safetensors.h"
#include "lwq/model/surgery.h"
#include "parameter_source.h"
#include "plan.h"
#include "progress.h"
#include "resume.h"
#include "rtn_units.h"
#include "units.h"

namespace lwq {
namespace pipeline {

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

  torch::jit::Module module = io::load_module(config.model_path, "quantize: ");
  TORCH_CHECK(!model::is_quantized(module), "quantize: the model ", config.model_path,
              " already holds packed weights; quantize the float model instead");
  // A graph traced on the meta device runs on CPU once its device constants say so (the output is a CPU model).
  const int64_t meta_constants = model::rewrite_meta_device_constants(module, "quantize: the model " + config.model_path);
  if (meta_constants > 0 && !config.quiet) {
    std::cerr << "quantize: " << config.model_path << " was traced on the meta device: " << meta_constants
              << " device constants of its graph now say cpu" << std::endl;
  }
  const ParameterSource source(config);

  // The plan: which linears are quantized, and every parameter checked before any work.
  QuantizeResult result;
  const LayerSelection selection = plan_layers(config, module, result);
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
  std::map<std::string, model::PackedLinear> packed;
  if (config.algorithm == "rtn") {
    Progress progress(static_cast<int64_t>(selection.to_quantize.size()), "layer", config.quiet);
    Units units(state, spill.get(), progress, packed, result);
    quantize_rtn(config, selection.to_quantize, selection.plans, filled, source, packed, result, units);
  } else {
    packed = quantize_blockwise(config, module, source, selection.to_quantize, selection.plans, filled, state,
                                spill.get(), result);
  }
  for (const auto& q : result.quantized) {
    result.float_bytes += q.float_bytes;
    result.packed_bytes += q.packed_bytes;
  }

  // Everything else keeps float values, now materialized.
  for (auto& slot : slots) {
    if (selection.quantized_weights.count(slot.name)) continue;
    if (filled.count(slot.name)) {
      ++(source.from_store(slot.name) ? result.params_from_store : result.params_from_archive);
      continue;
    }
    const at::Tensor current = slot.value();
    if (source.from_store(slot.name)) {
      at::Tensor value = source.load(slot.name, current);
      // Large float tensors leave the heap as the packed weights do, so that the embedding and an untied head are
      // not resident together (in fp32 they are 1 GiB for Mistral-7B, more than two blocks in bf16).
      if (spill && value.numel() * static_cast<int64_t>(value.element_size()) >= (int64_t{16} << 20)) {
        value = spill->spill(value);
      }
      slot.set(value);
      ++result.params_from_store;
    } else {
      ++result.params_from_archive;
    }
  }
  sample_memory(result);
  if (config.compute == "int8") {
    for (auto& entry : packed) entry.second.int8_activations = !entry.second.activation;
  }
  model::install_packed_linears(module, selection.layers, packed);

  // Should the write fail (a full disk), the finished units stay in the resume state.
  // The archive writer reads every packed weight once; with spilled weights, their pages would stay mapped into this
  // process until the end and the RSS would grow by the whole packed model (docs/benchmarks.md): every 64 MiB
  // written, the spilled pages read so far are dropped from the process.
  io::atomic_write(config.out_path, [&](const std::string& tmp) {
    int64_t since_drop = 0;
    io::save_module(module, tmp, [&](int64_t n) {
      since_drop += n;
      if (spill && since_drop >= (int64_t{64} << 20)) {
        spill->drop_resident();
        since_drop = 0;
      }
    });
  });
  if (spill) spill->drop_resident();
  state.finish();
  sample_memory(result);
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

}  // namespace pipeline
}  // namespace lwq
