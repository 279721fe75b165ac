// torch.ops.lwq: the observers, SmoothQuant and the W8A8 algorithm (semantics in include/lwq/w8a8.h).
#include "bindings.h"

#include "lwq/observers.h"
#include "lwq/smoothquant.h"
#include "lwq/w8a8.h"

namespace lwq {
namespace bindings {

namespace {

std::vector<at::Tensor> to_vector(at::TensorList batches) { return {batches.begin(), batches.end()}; }

}  // namespace

std::tuple<double, int64_t> observe_activation_qparams_op(at::TensorList batches, c10::string_view observer,
                                                          c10::string_view act_dtype) {
  ObserverOptions options;
  options.act_dtype = act_dtype_from_string(std::string(act_dtype));
  const ActQParams qp = observe_qparams(to_vector(batches), std::string(observer), options);
  return {qp.scale, qp.zero_point};
}

at::Tensor channel_absmax_op(at::TensorList batches) {
  ChannelAbsMax absmax;
  for (const auto& x : batches) absmax.observe(x);
  return absmax.absmax();
}

at::Tensor smoothquant_scales_op(const at::Tensor& act_absmax, const at::Tensor& weight, double alpha) {
  return smoothquant_scales(act_absmax, weight, alpha);
}

std::tuple<PackedWeightPtr, double, int64_t, c10::optional<at::Tensor>, c10::Dict<std::string, double>>
w8a8_quantize_op(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, at::TensorList batches,
                 c10::string_view observer, c10::string_view act_dtype, c10::optional<double> alpha) {
  W8a8Options options;
  options.observer = std::string(observer);
  options.act_dtype = act_dtype_from_string(std::string(act_dtype));
  options.smoothquant_alpha = alpha;
  const W8a8Result r = w8a8_quantize(weight, bias.value_or(at::Tensor()), to_vector(batches), options);
  c10::Dict<std::string, double> report;
  report.insert("weight_mse", r.report.weight_mse);
  report.insert("output_mse", r.report.output_mse);
  report.insert("baseline_output_mse", r.report.baseline_output_mse);
  report.insert("seconds", r.report.seconds);
  c10::optional<at::Tensor> scales;
  if (r.smooth_scales.defined()) scales = r.smooth_scales;
  return {r.weight, r.act_scale, r.act_zero_point, scales, report};
}

at::Tensor w8a8_fake_quant_linear_op(const at::Tensor& x, const at::Tensor& weight_dequant, double act_scale,
                                     int64_t act_zero_point, const c10::optional<at::Tensor>& bias,
                                     c10::string_view act_dtype) {
  return w8a8_fake_quant_linear(x, weight_dequant, act_scale, act_zero_point, bias.value_or(at::Tensor()),
                                act_dtype_from_string(std::string(act_dtype)));
}

}  // namespace bindings
}  // namespace lwq
