#include "block_run.h"

#include <unordered_map>

namespace lwq {
namespace pipeline {

namespace jit = torch::jit;

at::Tensor BlockLinear::bias() const {
  if (!layer.module.hasattr("bias")) return at::Tensor();
  const c10::IValue b = layer.module.attr("bias");
  return b.isTensor() ? b.toTensor() : at::Tensor();
}

BlockRun::BlockRun(jit::Module& module, const model::BlockList& blocks, size_t index, const ParameterSource& source,
                   const std::map<std::string, LayerPlan>& targets, const std::set<std::string>& filled)
    : module_(module), blocks_(blocks), block_(blocks.blocks[index]), prefix_(block_.empty() ? "" : block_ + ".") {
  work_ = model::submodule(module, block_).clone();
  work_.eval();
  // The block's float parameters: from the store, or already in the module (in-memory mode, or set earlier).
  for (auto& slot : model::parameter_slots(work_)) {
    const std::string name = prefix_ + slot.name;
    const at::Tensor current = slot.value();
    if (filled.count(name)) continue;  // the clone holds the value the module holds
    slot.set(source.load(name, current).to(current.scalar_type()));
  }
  for (auto& layer : model::find_linear_layers(work_)) {
    if (!targets.count(prefix_ + layer.name)) continue;
    BlockLinear bl{layer, prefix_ + layer.name, targets.at(prefix_ + layer.name)};
    check_finite(bl.weight(), "layer '" + bl.name + "': weight '" + prefix_ + layer.weight_name() + "'");
    bl.set_weight(bl.weight().to(at::kFloat));
    linears_.push_back(std::move(bl));
  }
  model::instrument_linear_inputs(work_);
}

void BlockRun::observe(const ActivationCache& args, const std::function<void(size_t, const at::Tensor&)>& fn) {
  std::unordered_map<const c10::TensorImpl*, size_t> by_weight;
  for (size_t i = 0; i < linears_.size(); ++i) by_weight[linears_[i].weight().unsafeGetTensorImpl()] = i;
  const bool record = groups_.empty();
  at::Tensor last_x;
  std::set<size_t> seen;
  auto callback = [&](const at::Tensor& x, const at::Tensor& w) {
    const auto it = by_weight.find(w.unsafeGetTensorImpl());
    if (it == by_weight.end()) return;  // a linear that stays float
    check_finite(x, "the input of layer '" + linears_[it->second].name + "'");
    if (record && seen.insert(it->second).second) {
      if (last_x.defined() && x.is_same(last_x) && !groups_.empty()) {
        groups_.back().push_back(it->second);
      } else {
        groups_.push_back({it->second});
      }
      last_x = x;  // held, so its storage is not reused by a later tensor
    }
    fn(it->second, x);
  };
  const model::ObserveLinearInputs scope(callback);
  for (size_t s = 0; s < args.size(); ++s) work_.forward(args.get(s));
  if (record) {
    TORCH_CHECK(seen.size() == linears_.size(), "block '", block_, "': ", linears_.size() - seen.size(),
                " of its linear layers were not called by its forward on the calibration inputs");
  }
}

std::map<std::string, at::Tensor> BlockRun::commit_float_parameters(std::set<std::string>& filled) {
  std::map<std::string, at::Tensor> committed;
  std::set<std::string> packed_weights;
  for (const auto& l : linears_) packed_weights.insert(prefix_ + l.layer.weight_name());
  std::map<std::string, model::NamedTensorSlot> out;
  for (auto& slot : model::parameter_slots(model::submodule(module_, block_))) out.emplace(slot.name, slot);
  for (auto& slot : model::parameter_slots(work_)) {
    const std::string name = prefix_ + slot.name;
    if (packed_weights.count(name)) continue;
    out.at(slot.name).set(slot.value());
    filled.insert(name);
    committed[name] = slot.value();
  }
  return committed;
}

void BlockRun::run_quantized(ActivationCache& args, const std::map<std::string, model::PackedLinear>& packed) {
  jit::Module q = model::submodule(module_, block_).clone();
  q.eval();
  std::map<std::string, model::PackedLinear> relative;
  for (const auto& l : linears_) relative[l.layer.name] = packed.at(l.name);
  model::install_packed_linears(q, model::find_linear_layers(q), relative);
  for (size_t s = 0; s < args.size(); ++s) {
    const at::Tensor h = model::block_output(q.forward(args.get(s)), blocks_);
    check_finite(h, "the output of block '" + block_ + "' (quantized) on the calibration inputs");
    args.set_hidden(s, h);
  }
}

}  // namespace pipeline
}  // namespace lwq
