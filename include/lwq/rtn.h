// Round-to-nearest (RTN) weight-only quantization, optionally with a per-group clip-ratio search.
//
// Plain RTN is exactly lwq::quantize_weight (torch_ops/ops.h): same codes, scales and zero points.
// With mse_search, every group tries the clip ratios 1, 1 - s/grid, ..., 1 - s (s = max_shrink) and keeps the one
// whose dequantized values are closest to the weights in squared error; ties keep the larger ratio, so the result
// is never worse than plain RTN for any group. The ratio scales the group's range before the scale and zero point
// are computed (qscheme.h, compute_qparams).
#pragma once

#include <ATen/ATen.h>

#include "lwq/common.h"
#include "ops.h"
#include "qscheme.h"

namespace lwq {

// The clip-ratio grid of the MSE search (21 ratios from 1.0 down to 0.5 by default, as AWQ's auto-clip).
struct ClipSearch {
  int64_t grid = 20;        // number of steps below 1.0
  double max_shrink = 0.5;  // the smallest ratio tried is 1 - max_shrink; in [0, 1)
};

// Logical form (q, scales, zeros) of the RTN quantization of weight [out, in] (any float dtype, CPU).
// clip_out, when given, receives the chosen ratio of every group, fp32 [out, n_groups] (all 1 without search).
GroupwiseQ rtn_groupwise(const at::Tensor& weight, const QuantSpec& spec, bool mse_search,
                         const ClipSearch& search = {}, at::Tensor* clip_out = nullptr);

// RTN of weight [out, in] into a PackedWeight. The report, when given, gets weight_mse, seconds, and for the
// search how many groups were clipped.
PackedWeightPtr rtn_quantize(const at::Tensor& weight, const QuantSpec& spec, bool mse_search = false,
                             LayerReport* report = nullptr, const ClipSearch& search = {});

}  // namespace lwq
