// The calibrated algorithms block by block. Per block, in a private clone (so the model being written keeps its
// graphs, and LibTorch's cached execution plans never see a stale graph):
//   fill the block's float parameters -> observe every linear's input on the cached block inputs ->
//   quantize (gptq: group by group with true_sequential; awq/teq/w8a8: groups in reverse order, each group's
//   scales folded into its producer, which belongs to an earlier group and is still float) ->
//   a second clone with the packed ops computes the next block's inputs from the quantized block.
// A group is the set of linears that read one tensor (q/k/v, gate/up), found at run time by tensor identity.
#include "blockwise.h"

#include <malloc.h>
#include <torch/serialize.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <sstream>
#include <unordered_map>

#include "lwq/fake_quant.h"
#include "lwq/model/blocks.h"
#include "lwq/pipeline/evaluate.h"
#include "lwq/text/tokenizer.h"
#include "lwq/rtn.h"
#include "lwq/scale_folding.h"
#include "lwq/smoothquant.h"
#include "lwq/w8a8.h"
#include "progress.h"

namespace lwq {
namespace pipeline {

namespace jit = torch::jit;

namespace {

using Args = std::vector<c10::IValue>;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Token windows of a text: BOS + each paragraph, concatenated, cut into windows of seqlen tokens (the first
// nsamples). Deterministic, and the same protocol for every model, so results are comparable across runs.
std::vector<Args> text_calibration(const QuantizeConfig& config) {
  TORCH_CHECK(!config.tokenizer_path.empty(), "quantize: --calib ", config.calib_text,
              " needs --tokenizer (a llama2.c tokenizer.bin)");
  TORCH_CHECK(config.seqlen >= 2, "quantize: --seqlen must be at least 2, got ", config.seqlen);
  const text::Tokenizer tokenizer = text::Tokenizer::load(config.tokenizer_path);
  const int64_t n = config.nsamples > 0 ? config.nsamples : 64;
  std::vector<int64_t> ids;
  for (const std::string& paragraph : read_segments(config.calib_text)) {
    const std::vector<int64_t> t = tokenizer.encode(paragraph, /*bos=*/true, /*eos=*/false);
    ids.insert(ids.end(), t.begin(), t.end());
    if (static_cast<int64_t>(ids.size()) >= n * config.seqlen) break;
  }
  TORCH_CHECK(static_cast<int64_t>(ids.size()) >= n * config.seqlen, "quantize: the calibration text ",
              config.calib_text, " gives ", ids.size(), " tokens, fewer than --nsamples ", n, " x --seqlen ",
              config.seqlen, "; use a longer text or fewer/shorter samples");
  std::vector<Args> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back({at::tensor(std::vector<int64_t>(ids.begin() + i * config.seqlen,
                                                   ids.begin() + (i + 1) * config.seqlen))
                       .unsqueeze(0)});
  }
  return out;
}

// One row per sample (batch dimension kept: [1, ...]) from --calib-tensors, or windows of --calib text.
std::vector<Args> calibration_inputs(const QuantizeConfig& config) {
  if (!config.calib_text.empty()) return text_calibration(config);
  TORCH_CHECK(!config.calib_tensors.empty(), "quantize: --algo ", config.algorithm,
              " needs calibration inputs: --calib-tensors FILE (safetensors holding input_ids [N, L]) or --calib "
              "TEXT --tokenizer TOK");
  const auto file = io::SafetensorsFile::open(config.calib_tensors);
  const std::string name = file->contains("input_ids") ? "input_ids" : file->contains("inputs") ? "inputs" : "";
  TORCH_CHECK(!name.empty(), "quantize: the calibration file ", config.calib_tensors,
              " has no tensor named input_ids (token ids [N, L]) or inputs (model inputs [N, ...])");
  at::Tensor t = file->load_raw(name);
  t = at::isIntegralType(t.scalar_type(), /*includeBool=*/false) ? t.to(at::kLong) : t.to(at::kFloat);
  TORCH_CHECK(t.dim() >= 2 && t.size(0) > 0 && t.numel() > 0, "quantize: calibration tensor '", name, "' in ",
              config.calib_tensors, " must be [N, ...] with N >= 1 samples, got ", t.sizes());
  if (t.is_floating_point()) check_finite(t, "calibration tensor '" + name + "' in " + config.calib_tensors);
  TORCH_CHECK(config.nsamples <= t.size(0), "quantize: --nsamples ", config.nsamples, " but ",
              config.calib_tensors, " holds ", t.size(0), " samples");
  const int64_t n = config.nsamples > 0 ? config.nsamples : t.size(0);
  std::vector<Args> out;
  for (int64_t i = 0; i < n; ++i) out.push_back({t.slice(0, i, i + 1).contiguous()});
  return out;
}

jit::Module submodule(jit::Module m, const std::string& name) {
  if (name.empty()) return m;
  size_t begin = 0;
  while (begin <= name.size()) {
    const size_t end = std::min(name.find('.', begin), name.size());
    m = m.attr(name.substr(begin, end - begin)).toModule();
    begin = end + 1;
  }
  return m;
}

// The inputs of the next block, one Args per calibration sample. With --offload-dir the hidden states (the first
// argument: the large one) live in files there and are read back one sample at a time.
class ActivationCache {
 public:
  ActivationCache(std::vector<Args> args, const std::string& offload_dir) : args_(std::move(args)) {
    if (offload_dir.empty()) return;
    std::error_code ec;
    dir_ = offload_dir + "/lwq-activations." + std::to_string(::getpid());
    std::filesystem::create_directories(dir_, ec);
    TORCH_CHECK(!ec, "quantize: cannot create the offload directory ", dir_, ": ", ec.message());
    for (size_t s = 0; s < args_.size(); ++s) set_hidden(s, args_[s][0].toTensor());
  }
  ~ActivationCache() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  ActivationCache(const ActivationCache&) = delete;
  ActivationCache& operator=(const ActivationCache&) = delete;

  size_t size() const { return args_.size(); }
  Args get(size_t s) const {
    Args a = args_[s];
    if (!dir_.empty()) {
      std::ifstream in(path(s), std::ios::binary);
      std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      TORCH_CHECK(in.good() || in.eof(), "quantize: cannot read the offloaded activations ", path(s));
      a[0] = torch::pickle_load(bytes);
    }
    return a;
  }
  void set_hidden(size_t s, const at::Tensor& h) {
    if (dir_.empty()) {
      args_[s][0] = h;
      return;
    }
    const std::vector<char> bytes = torch::pickle_save(h);
    std::ofstream out(path(s), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    TORCH_CHECK(out, "quantize: cannot write the offloaded activations ", path(s), " (disk full?)");
    args_[s][0] = at::Tensor();  // the file holds it
  }

 private:
  std::string path(size_t s) const { return dir_ + "/" + std::to_string(s) + ".pt"; }
  std::vector<Args> args_;
  std::string dir_;
};

// One quantized linear of the block being processed.
struct BlockLinear {
  model::LinearLayer layer;  // in the work clone, name relative to the block
  std::string name;          // qualified in the model
  LayerPlan plan;
  at::Tensor weight() const { return layer.module.attr(layer.weight_attr).toTensor(); }
  at::Tensor bias() const {
    if (!layer.module.hasattr("bias")) return at::Tensor();
    const c10::IValue b = layer.module.attr("bias");
    return b.isTensor() ? b.toTensor() : at::Tensor();
  }
  void set_weight(const at::Tensor& w) { layer.module.setattr(layer.weight_attr, w); }
};

class BlockRun {
 public:
  BlockRun(const QuantizeConfig& config, jit::Module& module, const model::BlockList& blocks, size_t index,
           const ParameterSource& source, const std::map<std::string, LayerPlan>& targets,
           std::set<std::string>& filled)
      : config_(config), module_(module), blocks_(blocks), block_(blocks.blocks[index]),
        prefix_(block_.empty() ? "" : block_ + ".") {
    work_ = submodule(module, block_).clone();
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

  size_t size() const { return linears_.size(); }

  // Runs the float (or partly quantized) block on every sample, handing each observed linear input to `fn`
  // (linear index, x). Records the groups of linears reading one tensor on the first call.
  void observe(const ActivationCache& args, const std::function<void(size_t, const at::Tensor&)>& fn) {
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

  const std::vector<std::vector<size_t>>& groups() const { return groups_; }
  BlockLinear& linear(size_t i) { return linears_[i]; }
  jit::Module& work() { return work_; }

  // The float parameters that stay float (norms possibly rescaled, excluded linears) go to the model; returns them.
  std::map<std::string, at::Tensor> commit_float_parameters(std::set<std::string>& filled) {
    std::map<std::string, at::Tensor> committed;
    std::set<std::string> packed_weights;
    for (const auto& l : linears_) packed_weights.insert(prefix_ + l.layer.weight_name());
    std::map<std::string, model::NamedTensorSlot> out;
    for (auto& slot : model::parameter_slots(submodule(module_, block_))) out.emplace(slot.name, slot);
    for (auto& slot : model::parameter_slots(work_)) {
      const std::string name = prefix_ + slot.name;
      if (packed_weights.count(name)) continue;
      out.at(slot.name).set(slot.value());
      filled.insert(name);
      committed[name] = slot.value();
    }
    return committed;
  }

  // The quantized block's outputs for every sample (the next block's inputs).
  void run_quantized(ActivationCache& args, const std::map<std::string, model::PackedLinear>& packed) {
    jit::Module q = submodule(module_, block_).clone();
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

 private:
  const QuantizeConfig& config_;
  jit::Module& module_;
  const model::BlockList& blocks_;
  std::string block_, prefix_;
  jit::Module work_;
  std::vector<BlockLinear> linears_;
  std::vector<std::vector<size_t>> groups_;
};

QuantizedLayer layer_entry(const BlockLinear& l, const PackedWeightPtr& packed,
                           LayerReport report) {
  QuantizedLayer q;
  q.name = l.name;
  q.shape = l.layer.shape;
  q.dtype = packed->dtype();
  q.group_size = packed->group_size();
  q.sym = packed->sym();
  q.report = std::move(report);
  q.float_bytes = q.shape[0] * q.shape[1] * static_cast<int64_t>(sizeof(float));
  q.packed_bytes = packed->nbytes();
  return q;
}

// GPTQ: Hessians of every linear on the first pass; with true_sequential each later group is observed again
// after the groups before it were quantized (their dequantized weights set in the clone).
void run_gptq(const QuantizeConfig& config, BlockRun& run, const ActivationCache& args,
              std::map<std::string, model::PackedLinear>& packed, QuantizeResult& result) {
  std::vector<std::unique_ptr<GptqHessian>> hessians(run.size());
  auto reset = [&](const std::vector<size_t>& which) {
    for (size_t i : which) hessians[i] = std::make_unique<GptqHessian>(run.linear(i).layer.shape[1]);
  };
  auto collect = [&](size_t i, const at::Tensor& x) {
    if (hessians[i]) hessians[i]->add(x);
  };
  std::vector<size_t> all(run.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  reset(all);
  run.observe(args, collect);
  const auto groups = run.groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    if (config.true_sequential && g > 0) {
      for (auto& h : hessians) h.reset();
      reset(groups[g]);
      run.observe(args, collect);
    }
    for (size_t i : groups[g]) {
      BlockLinear& l = run.linear(i);
      LayerReport report;
      PackedWeightPtr p;
      try {
        if (l.plan.algorithm == "rtn") {
          p = rtn_quantize(l.weight(), l.plan.spec, config.mse_search, &report);
        } else {
          p = gptq_quantize(l.weight(), hessians[i]->hessian(), l.plan.spec, config.gptq, &report);
        }
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "layer '", l.name, "': ", e.what_without_backtrace());
      }
      packed[l.name].weight = p;
      result.quantized.push_back(layer_entry(l, p, report));
      if (config.true_sequential) l.set_weight(p->dequantize());
    }
  }
}

// AWQ, TEQ and W8A8: one observation pass keeping each group's inputs, then the groups from last to first.
void run_scaled(const QuantizeConfig& config, BlockRun& run, const ActivationCache& args,
                std::map<std::string, model::PackedLinear>& packed, QuantizeResult& result) {
  std::vector<std::vector<at::Tensor>> inputs(run.size());
  run.observe(args, [&](size_t i, const at::Tensor& x) {
    inputs[i].push_back(x.reshape({-1, x.size(-1)}).to(at::kFloat));
  });
  const auto groups = run.groups();
  std::vector<std::vector<std::string>> names(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i : groups[g]) names[g].push_back(run.linear(i).layer.name);
  }
  const std::vector<model::ScaleFold> folds = model::find_scale_folds(run.work(), names);
  const bool w8a8 = config.algorithm == "w8a8";
  const bool smooth = w8a8 && config.smoothquant_alpha >= 0;
  std::set<std::string> done;  // layers already quantized: their weights can no longer absorb scales
  std::vector<ScaleFoldReport> fold_reports;
  std::vector<std::vector<QuantizedLayer>> entries(groups.size());  // reported in forward order
  for (size_t g = groups.size(); g-- > 0;) {
    const auto& group = groups[g];
    std::vector<at::Tensor> weights;
    std::vector<std::string> qualified;
    for (size_t i : group) {
      weights.push_back(run.linear(i).weight());
      qualified.push_back(run.linear(i).name);
    }
    // One plan per group: the scales are shared, so are the spec and the algorithm.
    const LayerPlan& plan = run.linear(group[0]).plan;
    for (size_t i : group) {
      const LayerPlan& other = run.linear(i).plan;
      TORCH_CHECK(other.algorithm == plan.algorithm && other.spec.dtype == plan.spec.dtype &&
                      other.spec.group_size == plan.spec.group_size && other.spec.sym == plan.spec.sym,
                  "quantize: layers '", run.linear(group[0]).name, "' and '", run.linear(i).name,
                  "' read the same input, so ", config.algorithm,
                  " gives them one set of scales; the config must give them the same algorithm and format");
    }
    const at::Tensor x = at::cat(inputs[group[0]], 0);
    for (size_t i : group) inputs[i].clear();
    at::Tensor scales;  // per input channel: inputs divided by it, weight columns multiplied
    std::vector<PackedWeightPtr> group_packed(group.size());
    std::vector<LayerReport> reports(group.size());
    std::vector<c10::optional<model::ActivationQuant>> activations(group.size());
    if (plan.algorithm == "rtn") {
      for (size_t k = 0; k < group.size(); ++k) {
        group_packed[k] = rtn_quantize(weights[k], plan.spec, config.mse_search, &reports[k]);
      }
    } else if (config.algorithm == "awq") {
      AwqOptions options = config.awq;
      options.spec = plan.spec;
      AwqResult r = awq_search(x, weights, options, qualified);
      scales = r.ratio < 0 ? at::Tensor() : r.scales;
      group_packed = r.packed;
      reports = r.reports;
    } else if (config.algorithm == "teq") {
      TeqOptions options = config.teq;
      options.spec = plan.spec;
      TeqResult r = teq_quantize(x, weights, options, qualified);
      scales = r.best_step == 0 ? at::Tensor() : r.scales;
      group_packed = r.packed;
      reports = r.reports;
    } else {
      TORCH_INTERNAL_ASSERT(w8a8);
      W8a8Options options;
      options.observer = config.observer;
      options.act_dtype = act_dtype_from_string(config.act_dtype);
      std::vector<at::Tensor> batches{x};
      if (smooth) {
        ChannelAbsMax absmax(qualified[0]);
        absmax.observe(x);
        scales = smoothquant_scales(absmax.absmax(), weights, config.smoothquant_alpha);
        batches = {smooth_activation(x, scales)};
      }
      for (size_t k = 0; k < group.size(); ++k) {
        const at::Tensor w = smooth ? scale_consumer_columns(weights[k], scales) : weights[k];
        W8a8Result r = w8a8_quantize(w, run.linear(group[k]).bias(), batches, options, qualified[k]);
        group_packed[k] = r.weight;
        reports[k] = r.report;
        activations[k] = model::ActivationQuant{r.act_scale, r.act_zero_point, act_dtype_name(r.act_dtype)};
      }
    }
    // Apply the scales: fold 1/s into the producer of x when the graph allows, else multiply x at run time.
    at::Tensor input_scale;
    if (scales.defined()) {
      ScaleFoldReport fr;
      fr.layers = qualified;
      const model::ScaleFold& fold = folds[g];
      const std::string block_prefix = run.linear(group[0]).name.substr(
          0, run.linear(group[0]).name.size() - run.linear(group[0]).layer.name.size());
      bool folded = false;
      if (fold.kind == model::ScaleFold::NormWeight) {
        for (auto& slot : model::parameter_slots(run.work())) {
          if (slot.name != fold.param) continue;
          const at::Tensor p = slot.value();
          if (p.dim() == 1 && p.size(0) == scales.size(0)) {
            slot.set(fold_scales_into_norm(p.to(at::kFloat), at::Tensor(), scales).first.to(p.scalar_type()));
            fr.applied = "norm " + block_prefix + fold.param;
            folded = true;
          }
        }
      } else if (fold.kind == model::ScaleFold::LinearRows && !done.count(fold.layer)) {
        for (size_t i = 0; i < run.size(); ++i) {
          BlockLinear& producer = run.linear(i);
          if (producer.layer.name != fold.layer) continue;
          const auto folded_pair = fold_scales_into_producer(producer.weight(), producer.bias(), scales);
          producer.set_weight(folded_pair.first);
          if (folded_pair.second.defined()) producer.layer.module.setattr("bias", folded_pair.second);
          fr.applied = "linear " + producer.name;
          folded = true;
        }
      }
      if (!folded) {
        input_scale = at::reciprocal(scales);
        std::string why = fold.why_not;
        if (fold.kind == model::ScaleFold::LinearRows) why = "producer " + fold.layer + " is not a float linear";
        if (fold.kind == model::ScaleFold::NormWeight) why = "norm parameter " + fold.param + " has another shape";
        fr.applied = "input multiply (" + why + ")";
      }
      fold_reports.insert(fold_reports.begin(), fr);
    }
    for (size_t k = 0; k < group.size(); ++k) {
      const BlockLinear& l = run.linear(group[k]);
      model::PackedLinear& p = packed[l.name];
      p.weight = group_packed[k];
      p.input_scale = input_scale;
      p.activation = activations[k];
      done.insert(l.layer.name);
    }
    for (size_t k = 0; k < group.size(); ++k) {
      entries[g].push_back(layer_entry(run.linear(group[k]), group_packed[k], reports[k]));
    }
  }
  for (const auto& e : entries) result.quantized.insert(result.quantized.end(), e.begin(), e.end());
  result.folds.insert(result.folds.end(), fold_reports.begin(), fold_reports.end());
}

}  // namespace

std::map<std::string, model::PackedLinear> quantize_blockwise(const QuantizeConfig& config, jit::Module& module,
                                                              const ParameterSource& source,
                                                              const std::vector<const model::LinearLayer*>& targets,
                                                              const std::map<std::string, LayerPlan>& plans,
                                                              std::set<std::string>& filled, ResumeState& state,
                                                              io::PackedSpill* spill, QuantizeResult& result) {
  const std::set<std::string> algorithms = {"gptq", "awq", "teq", "w8a8"};
  TORCH_CHECK(algorithms.count(config.algorithm), "quantize: unknown algorithm '", config.algorithm,
              "'; available: rtn, gptq, awq, teq, w8a8");
  if (config.algorithm == "w8a8") {
    TORCH_CHECK(config.spec.dtype == kW8a8Spec.dtype && config.spec.group_size == kW8a8Spec.group_size &&
                    config.spec.sym == kW8a8Spec.sym,
                "quantize: w8a8 uses int8 symmetric per-channel weights: pass --dtype int8 --group-size -1 --sym");
  }
  const model::BlockList blocks = model::find_blocks(module, config.blocks);
  result.blocks = blocks.list;
  result.block_count = static_cast<int64_t>(blocks.blocks.size());
  std::vector<Args> samples = calibration_inputs(config);
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
    QuantizedLayer q;
    const PackedWeightPtr p = rtn_quantize(w, plans.at(t->name).spec, config.mse_search, &q.report);
    q.report.adjustments.push_back("outside the blocks: plain RTN");
    packed[t->name].weight = p;
    q.name = t->name;
    q.shape = t->shape;
    q.dtype = p->dtype();
    q.group_size = p->group_size();
    q.sym = p->sym();
    q.float_bytes = q.shape[0] * q.shape[1] * static_cast<int64_t>(sizeof(float));
    q.packed_bytes = p->nbytes();
    result.quantized.push_back(q);
  }

  const int64_t n_blocks = static_cast<int64_t>(blocks.blocks.size());
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
  progress.skip(state.done());
  for (int64_t b = 0; b < n_blocks; ++b) {
    if (b < state.done()) {  // finished by an earlier run
      UnitState unit = state.load_unit(b);
      for (auto& p : unit.packed) {
        if (spill) p.second.weight = spill->spill(p.second.weight);
        packed.insert(p);
      }
      for (const auto& p : unit.params) {
        slots.at(p.first).set(p.second);
        filled.insert(p.first);
      }
      result.quantized.insert(result.quantized.end(), unit.layers.begin(), unit.layers.end());
      result.folds.insert(result.folds.end(), unit.folds.begin(), unit.folds.end());
      continue;
    }
    // The previous block's temporaries below glibc's mmap threshold would otherwise stay resident between the
    // packed weights that remain (as in the RTN loop of quantize.cpp).
    malloc_trim(0);
    const auto start = std::chrono::steady_clock::now();
    BlockRun run(config, module, blocks, static_cast<size_t>(b), source, target_names, filled);
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
    for (const auto& q : unit.layers) unit.packed[q.name] = packed.at(q.name);
    state.save_unit(b, unit, last ? 0 : args.size(), [&args](size_t s) { return args.get(s); });
    if (spill) {
      for (const auto& q : unit.layers) packed[q.name].weight = spill->spill(packed[q.name].weight);
    }
    result.peak_rss_anon_bytes = std::max(result.peak_rss_anon_bytes, proc_status_bytes("RssAnon"));
    std::ostringstream detail;
    detail << (blocks.blocks[b].empty() ? "(whole model)" : blocks.blocks[b]) << ": "
           << (result.quantized.size() - before) << " linears, " << config.algorithm << ", " << seconds_since(start)
           << " s";
    progress.done(b, detail.str());
  }
  return packed;
}

}  // namespace pipeline
}  // namespace lwq
