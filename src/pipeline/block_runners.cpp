#include "block_runners.h"

#include <memory>
#include <set>
#include <vector>

#include "lwq/gptq.h"
#include "lwq/model/blocks.h"
#include "lwq/observers.h"
#include "lwq/rtn.h"
#include "lwq/scale_folding.h"
#include "lwq/smoothquant.h"
#include "lwq/w8a8.h"
#include "report.h"

namespace lwq {
namespace pipeline {

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
      result.quantized.push_back(describe_layer(l.name, l.layer.shape, p, report));
      if (config.true_sequential) l.set_weight(p->dequantize());
    }
  }
}

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
      const BlockLinear& l = run.linear(group[k]);
      entries[g].push_back(describe_layer(l.name, l.layer.shape, group_packed[k], reports[k]));
    }
  }
  for (const auto& e : entries) result.quantized.insert(result.quantized.end(), e.begin(), e.end());
  result.folds.insert(result.folds.end(), fold_reports.begin(), fold_reports.end());
}

}  // namespace pipeline
}  // namespace lwq
