// Static W8A8: observer-calibrated per-tensor activations, RTN int8 per-channel weights (qscheme.h via
// quantize_weight), optional SmoothQuant. See include/lwq/w8a8.h.
#include "lwq/w8a8.h"

#include <c10/util/Exception.h>

#include <chrono>

#include "lwq/scale_folding.h"
#include "lwq/smoothquant.h"

namespace lwq {

namespace {

using Clock = std::chrono::steady_clock;

void check_layer(const at::Tensor& weight, const at::Tensor& bias, const std::string& name) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0, "w8a8 '", name,
              "': weight must be a non-empty [out, in] matrix, got shape ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  TORCH_CHECK(weight.is_floating_point(), "w8a8 '", name, "': weight must be a float tensor, got ",
              weight.scalar_type());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)), "w8a8 '", name,
              "': bias must have shape [", weight.size(0), "], got ",
              bias.defined() ? bias.sizes() : at::IntArrayRef{});
}

// Mean squared error of the W8A8 layer (dequantized weight wq_deq applied to x / s) against the float layer
// over all batches.
double output_mse(const at::Tensor& weight, const at::Tensor& bias, const std::vector<at::Tensor>& batches,
                  const at::Tensor& wq_deq, const at::Tensor& smooth_scales, const ActQParams& qp, ActDtype dtype) {
  double sum = 0;
  int64_t count = 0;
  const at::Tensor w = weight.to(at::kFloat);
  const at::Tensor b = bias.defined() ? bias.to(at::kFloat) : at::Tensor();
  for (const auto& x : batches) {
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor y = b.defined() ? at::linear(xf, w, b) : at::linear(xf, w);
    const at::Tensor xs = smooth_scales.defined() ? smooth_activation(xf, smooth_scales) : xf;
    const at::Tensor yq = w8a8_fake_quant_linear(xs, wq_deq, qp.scale, qp.zero_point, b, dtype);
    sum += (y - yq).to(at::kDouble).pow(2).sum().item<double>();
    count += y.numel();
  }
  return sum / static_cast<double>(count);
}

W8a8Result finish(const at::Tensor& weight, const at::Tensor& smooth_scales, const ActQParams& qp, ActDtype dtype,
                  Clock::time_point start) {
  W8a8Result r;
  const at::Tensor w = weight.to(at::kFloat);
  const at::Tensor ws = smooth_scales.defined() ? scale_consumer_columns(w, smooth_scales) : w;
  r.weight = quantize_weight(ws, "int8", /*group_size=*/-1, /*sym=*/true);
  r.act_scale = qp.scale;
  r.act_zero_point = qp.zero_point;
  r.act_dtype = dtype;
  r.smooth_scales = smooth_scales;
  r.report.algorithm = smooth_scales.defined() ? "w8a8_smoothquant" : "w8a8";
  at::Tensor effective = r.weight->dequantize();
  if (smooth_scales.defined()) effective = effective / smooth_scales.unsqueeze(0);
  r.report.weight_mse = (effective - w).to(at::kDouble).pow(2).mean().item<double>();
  r.report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace

at::Tensor w8a8_fake_quant_linear(const at::Tensor& x, const at::Tensor& weight_dequant, double act_scale,
                                  int64_t act_zero_point, const at::Tensor& bias, ActDtype act_dtype) {
  TORCH_CHECK(weight_dequant.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight_dequant.size(1),
              "w8a8_fake_quant_linear: x [..., in] and weight [out, in] do not match: x ", x.sizes(), ", weight ",
              weight_dequant.sizes());
  const at::Tensor xq = fake_quantize_activation(x, act_scale, act_zero_point, act_dtype);
  const at::Tensor w = weight_dequant.to(at::kFloat);
  return bias.defined() ? at::linear(xq, w, bias.to(at::kFloat)) : at::linear(xq, w);
}

W8a8Result w8a8_quantize(const at::Tensor& weight, const at::Tensor& bias, const std::vector<at::Tensor>& batches,
                         const W8a8Options& options, const std::string& name) {
  const auto start = Clock::now();
  check_layer(weight, bias, name);
  TORCH_CHECK(!batches.empty(), "w8a8 '", name, "': no calibration batches given");
  const int64_t in = weight.size(1);
  for (size_t i = 0; i < batches.size(); ++i)
    TORCH_CHECK(batches[i].dim() >= 1 && batches[i].size(-1) == in, "w8a8 '", name, "': calibration batch ", i,
                " must be [..., ", in, "], got shape ", batches[i].sizes());

  at::Tensor smooth_scales;
  if (options.smoothquant_alpha) {
    ChannelAbsMax absmax(name);
    for (const auto& x : batches) absmax.observe(x);
    smooth_scales = smoothquant_scales(absmax.absmax(), weight, *options.smoothquant_alpha);
  }

  ObserverOptions obs_options = options.observer_options;
  obs_options.name = name;
  obs_options.act_dtype = options.act_dtype;
  auto observer = make_observer(options.observer, obs_options);
  for (const auto& x : batches) observer->observe(smooth_scales.defined() ? smooth_activation(x, smooth_scales) : x);
  const ActQParams qp = observer->compute_qparams();

  W8a8Result r = finish(weight, smooth_scales, qp, options.act_dtype, start);
  r.report.algorithm += std::string("/") + options.observer;
  if (options.measure) {
    r.report.output_mse =
        output_mse(weight, bias, batches, r.weight->dequantize(), smooth_scales, qp, options.act_dtype);
    // Plain min/max W8A8 on the unsmoothed layer, for comparison.
    ObserverOptions base_options;
    base_options.name = name;
    base_options.act_dtype = options.act_dtype;
    const ActQParams base_qp = observe_qparams(batches, "minmax", base_options);
    const at::Tensor base_w = quantize_weight(weight.to(at::kFloat), "int8", -1, true)->dequantize();
    r.report.baseline_output_mse =
        output_mse(weight, bias, batches, base_w, at::Tensor(), base_qp, options.act_dtype);
  }
  r.report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

W8a8Result w8a8_quantize(const at::Tensor& weight, const Observer& observer, const at::Tensor& smooth_scales,
                         const std::string& name) {
  const auto start = Clock::now();
  check_layer(weight, at::Tensor(), name);
  const ActQParams qp = observer.compute_qparams();
  W8a8Result r = finish(weight, smooth_scales, qp, observer.options().act_dtype, start);
  r.report.algorithm += std::string("/") + observer.kind();
  return r;
}

}  // namespace lwq
