// AWQ (activation-aware weight quantization, Lin et al. 2023) for a group of linears sharing one input, with the
// options and defaults of Intel Neural Compressor's weight-only AWQ.
//
// Scale search: with x_mean[j] = mean |x[:, j]| and w_mean[j] = mean over the rows of all the group's weights of
// |W[o, j]| / max |W[o, group of j]|, candidate scales are s = x_mean^r / w_mean^(1-r) (clamped to >= 1e-4 and
// divided by sqrt(max(s) min(s)), so all-equal channels give exactly s = 1) for r = 0, 1/n_grid, ...,
// (n_grid-1)/n_grid; plain RTN (s = 1) is always a candidate too. The chosen s minimises the group's output error
// on the calibration inputs, sum_i || x W_i^T - (x / s) Q(W_i diag(s))^T ||^2, so it is never worse than RTN.
//
// Clip search (optional, per linear, as AWQ's auto_clip): for each (output row, group), the clip ratio among
// 1, 1 - 1/clip_grid, ..., 1 - max_shrink (exclusive) minimising that group's share of the output error on up to
// clip_max_rows evenly strided calibration rows. It is kept for a linear only when it lowers that linear's output
// error on the whole calibration set (otherwise the report says it was dropped).
//
// Use of the result: each linear's quantized weight is of W_i diag(s), so its input must be divided by s — fold
// 1/s into the producer of x with scale_folding.h (or divide x at run time).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "lwq/common.h"
#include "ops.h"

namespace lwq {

struct AwqOptions {
  QuantSpec spec;
  int64_t n_grid = 20;          // scale ratios r = i / n_grid, i < n_grid
  bool duo_scaling = true;      // s = x_mean^r / w_mean^(1-r); false: s = x_mean^r (the original AWQ paper)
  bool clip_search = true;      // INC: mse_range
  int64_t clip_grid = 20;       // clip ratios 1 - i / clip_grid ...
  double max_shrink = 0.5;      // ... for i < max_shrink * clip_grid
  int64_t clip_max_rows = 512;  // calibration rows used by the clip search (INC: n_sample_token)
};

struct AwqResult {
  at::Tensor scales;                    // fp32 [in]: inputs are divided by it, weight columns multiplied
  double ratio = -1;                    // chosen r, or -1 when plain RTN (s = 1) was best
  std::vector<PackedWeightPtr> packed;  // one per linear: Q(W_i diag(s)) with the chosen clip
  std::vector<at::Tensor> clip;         // per linear fp32 [out, n_groups] clip ratios (all 1 without clip)
  // One per linear. weight_mse compares W_i with the effective weight dequant(Q) / s; output errors are on the
  // calibration inputs; seconds is the time of the whole group's search.
  std::vector<LayerReport> reports;
};

// x: calibration inputs [..., in] shared by the linears; weights: [out_i, in] each; names (optional, one per
// weight) are used in messages and reports.
AwqResult awq_search(const at::Tensor& x, const std::vector<at::Tensor>& weights, const AwqOptions& options = {},
                     const std::vector<std::string>& names = {});

}  // namespace lwq
