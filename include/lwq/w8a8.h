// Static W8A8 quantization of one linear layer: int8 per-output-channel symmetric weights (qscheme.h "int8",
// group_size -1) and one per-tensor activation (scale, zero_point) from an observer, optionally after
// SmoothQuant. The result runs with lwq::w8a8_linear (torch_ops/ops.h):
//
//   y = w8a8_linear(x / smooth_scales, weight, act_scale, act_zero_point, bias, act_dtype)   (smoothing on)
//   y = w8a8_linear(x, weight, act_scale, act_zero_point, bias, act_dtype)                   (smoothing off)
//
// With smoothing the packed weight is W * s; x / s is expected to be folded into the producer of x
// (scale_folding.h fold_scales_into_norm / fold_scales_into_producer).
//
// Report (LayerReport): weight_mse = mean (W - dequant / s)^2, the error of the weight the layer effectively
// applies to the unsmoothed x; output_mse = mean (y_float - y_w8a8)^2 over the calibration batches, y_w8a8 from
// the fake-quant reference below; baseline_output_mse = the same error for plain min/max W8A8 without
// SmoothQuant (same act dtype); seconds = wall time of the call.
//
// Ops (src/ops/w8a8_ops.cpp, Python: torch.ops.lwq.*):
//   observe_activation_qparams(Tensor[] batches, str observer="minmax", str act_dtype="uint8")
//       -> (float scale, int zero_point)
//   channel_absmax(Tensor[] batches) -> Tensor                              per-channel max|x| over the batches
//   smoothquant_scales(Tensor act_absmax, Tensor weight, float alpha=0.5) -> Tensor
//   w8a8_quantize(Tensor weight, Tensor? bias, Tensor[] batches, str observer="minmax", str act_dtype="uint8",
//                 float? alpha=None)
//       -> (PackedWeight weight, float act_scale, int act_zero_point, Tensor? smooth_scales,
//           Dict(str, float) report)      report keys: weight_mse, output_mse, baseline_output_mse, seconds
//   w8a8_fake_quant_linear(Tensor x, Tensor weight_dequant, float act_scale, int act_zero_point, Tensor? bias,
//                          str act_dtype="uint8") -> Tensor
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "lwq/common.h"
#include "lwq/observers.h"
#include "ops.h"

namespace lwq {

struct W8a8Options {
  std::string observer = "minmax";            // make_observer kind
  ActDtype act_dtype = ActDtype::UInt8;
  c10::optional<double> smoothquant_alpha;    // none: no SmoothQuant
  ObserverOptions observer_options;           // its act_dtype is overridden by act_dtype above
  bool measure = true;                        // compute output_mse / baseline_output_mse (one extra float pass)
};

struct W8a8Result {
  PackedWeightPtr weight;       // int8, group_size -1, sym; of W * s when smoothing is on
  double act_scale = 1.0;
  int64_t act_zero_point = 0;
  ActDtype act_dtype = ActDtype::UInt8;
  at::Tensor smooth_scales;     // fp32 [in], undefined without SmoothQuant
  LayerReport report;
};

// weight [out, in] float; bias [out] or undefined; batches: calibration inputs x [..., in] (at least one).
// `name` is used in error messages and passed to the observer.
W8a8Result w8a8_quantize(const at::Tensor& weight, const at::Tensor& bias, const std::vector<at::Tensor>& batches,
                         const W8a8Options& options = {}, const std::string& name = "linear");

// From an observer that has already seen this layer's activations (already divided by smooth_scales when those
// are given). No calibration data is available here, so output_mse and baseline_output_mse stay -1 (not
// measured). options.observer / smoothquant_alpha / measure are not used; act_dtype comes from the observer.
W8a8Result w8a8_quantize(const at::Tensor& weight, const Observer& observer,
                         const at::Tensor& smooth_scales = at::Tensor(), const std::string& name = "linear");

// The W8A8 arithmetic in float (the reference for lwq::w8a8_linear):
// y = fake_quantize_activation(x, act_scale, zp, dtype) @ weight_dequant^T + bias, for x [..., in].
at::Tensor w8a8_fake_quant_linear(const at::Tensor& x, const at::Tensor& weight_dequant, double act_scale,
                                  int64_t act_zero_point, const at::Tensor& bias, ActDtype act_dtype);

}  // namespace lwq
