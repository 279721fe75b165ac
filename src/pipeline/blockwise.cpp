// The calibrated algorithms block by block (blockwise.h): the calibration inputs are run through the model up to
// the first block, then per block (block_run.h, block_runners.h): fill its float parameters -> observe every
// linear's input on the cached block inputs -> quantize -> the quantized block computes the next block's inputs.
#include "blockwise.h"

#include <chrono>
#include <sstream>

#include "block_run.h"
#include "block_runners.h"
#include "calibration.h"
#include "lwq/model/blocks.h"
#include "lwq/rtn.h"
#include "report.h"
#include "units.h"

namespace lwq {
namespace pipeline {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Rows of the model's first embedding (its vocabulary), or -1 when it has none: token ids past it are refused
// before a forward fails on them.
int64_t embedding_rows(const torch::jit::Module& module) {
  for (const auto& item : module.named_modules()) {
    const auto type = item.value.type()->name();
    const bool embedding = type && type->name() == "Embedding";
    if (embedding && item.value.hasattr("weight")) return item.value.attr("weight").toTensor().size(0);
  }
  return -1;
}

}  // namespace

std::map<std::string, model::PackedLinear> quantize_blockwise(const QuantizeConfig& config, torch::jit::Module& module,
                                                              const ParameterSource& source,
                                                              const std::vector<const model::LinearLayer*>& targets,
                                                              const std::map<std::string, LayerPlan>& plans,
                                                              std::set<std::string>& filled, ResumeState& state,
                                                              io::PackedSpill* spill, QuantizeResult& result) {
  // check_config has refused any other algorithm, and a W8A8 spec other than kW8a8Spec.
  TORCH_INTERNAL_ASSERT(config.algorithm != "rtn", "quantize_blockwise: rtn runs one linear at a time");
  const model::BlockList blocks = model::find_blocks(module, config.blocks);
  result.blocks = blocks.list;
  result.block_count = static_cast<int64_t>(blocks.blocks.size());
  std::vector<Args> samples = calibration_inputs(config, embedding_rows(module));
  result.calibration_samples = static_cast<int64_t>(samples.size());

  std::map<std::string, model::PackedLinear> packed;
  std::set<std::string> in_blocks;
  auto block_of = [&](const std::string& name) -> std::string {
    for (const auto& b : blocks.blocks) {
      if (b.empty() || name.rfind(b + ".", 0) == 0) return b;
    }
    return "\n";  // outside every block
  };
  // Parameters outside the blocks (embeddings, final norm, head) get their values now: the capture of the first
  // block's inputs reads some of them. Linears outside the blocks are quantized with plain RTN.
  for (auto& slot : model::parameter_slots(module)) {
    if (block_of(slot.name) != "\n" || filled.count(slot.name)) continue;
    bool target = false;
    for (const auto* t : targets) target |= t->weight_name() == slot.name;
    if (target) continue;
    slot.set(source.load(slot.name, slot.value()));
    filled.insert(slot.name);
  }
  std::map<std::string, LayerPlan> target_names;  // in the blocks
  for (const auto* t : targets) {
    if (block_of(t->name) != "\n") {
      target_names.emplace(t->name, plans.at(t->name));
      continue;
    }
    const at::Tensor w = source.load(t->weight_name(), t->module.attr(t->weight_attr).toTensor()).to(at::kFloat);
    check_finite(w, "layer '" + t->name + "': weight '" + t->weight_name() + "'");
    LayerReport report;
    const PackedWeightPtr p = rtn_quantize(w, plans.at(t->name).spec, config.mse_search, &report);
    report.adjustments.push_back("outside the blocks: plain RTN");
    packed[t->name].weight = p;
    result.quantized.push_back(describe_layer(t->name, t->shape, p, report));
  }

  // Blocks after the last one holding a layer to quantize need no calibration pass: they stay float and get their
  // values with the other float parameters at the end (quantize.cpp). A --config that quantizes the first blocks
  // of a 32-block model runs only those.
  int64_t n_blocks = 0;
  for (int64_t b = 0; b < static_cast<int64_t>(blocks.blocks.size()); ++b) {
    for (const auto& t : target_names) {
      if (block_of(t.first) == blocks.blocks[static_cast<size_t>(b)]) n_blocks = b + 1;
    }
  }
  if (n_blocks == 0) return packed;
  if (state.done() == 0) {
    model::BlockInputCapture capture(module, blocks);
    const at::NoGradGuard no_grad;
    for (Args& a : samples) {
      a = capture(a);
      TORCH_CHECK(!a.empty() && a[0].isTensor(), "blocks: the first argument of '", blocks.blocks[0],
                  "' is not a tensor");
    }
  } else if (state.done() < n_blocks) {
    samples = state.load_activations();  // the inputs of the first block left to do
  }
  ActivationCache args(std::move(samples), config.offload_dir);
  std::map<std::string, model::NamedTensorSlot> slots;
  for (auto& slot : model::parameter_slots(module)) slots.emplace(slot.name, slot);

  Progress progress(n_blocks, "block", config.quiet);
  Units units(state, spill, progress, packed, result);
  for (int64_t b = 0; b < n_blocks; ++b) {
    if (units.finished(b)) {
      for (const auto& p : units.restore(b)) {
        slots.at(p.first).set(p.second);
        filled.insert(p.first);
      }
      continue;
    }
    const auto start = std::chrono::steady_clock::now();
    BlockRun run(module, blocks, static_cast<size_t>(b), source, target_names, filled);
    const size_t before = result.quantized.size(), folds_before = result.folds.size();
    if (config.algorithm == "gptq") {
      run_gptq(config, run, args, packed, result);
    } else {
      run_scaled(config, run, args, packed, result);
    }
    UnitState unit;
    unit.params = run.commit_float_parameters(filled);
    const bool last = b + 1 == n_blocks;
    if (!last) run.run_quantized(args, packed);
    unit.layers.assign(result.quantized.begin() + static_cast<long>(before), result.quantized.end());
    unit.folds.assign(result.folds.begin() + static_cast<long>(folds_before), result.folds.end());
    std::ostringstream detail;
    detail << (blocks.blocks[b].empty() ? "(whole model)" : blocks.blocks[b]) << ": "
           << (result.quantized.size() - before) << " linears, " << config.algorithm << ", " << seconds_since(start)
           << " s";
    units.record(b, std::move(unit), detail.str(), last ? 0 : args.size(), [&args](size_t s) { return args.get(s); });
  }
  return packed;
}

}  // namespace pipeline
}  // namespace lwq
