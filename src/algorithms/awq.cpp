// AWQ: a grid search over per-input-channel scales for a group of linears sharing one input, then an optional
// per-group clip search (see awq.h for the method and its options).
#include "lwq/awq.h"

#include <c10/util/irange.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "lwq/fake_quant.h"

namespace lwq {
namespace {

using Clock = std::chrono::steady_clock;

// Mean over rows of |W| normalised by its (row, group) maximum: how large each input channel's weights are
// relative to the rest of their quantization group.
at::Tensor weight_channel_mean(const at::Tensor& w, int64_t group_size) {
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t gs = effective_group_size(group_size, in);
  const int64_t full = in / gs, rem = in - full * gs;
  const at::Tensor a = w.abs();
  std::vector<at::Tensor> parts;
  auto normalise = [&](int64_t col0, int64_t n_groups, int64_t width) {
    const at::Tensor rows = a.narrow(1, col0, n_groups * width).reshape({out * n_groups, width});
    // An all-zero group stays zero instead of becoming 0/0.
    const at::Tensor peak = std::get<0>(rows.max(1, /*keepdim=*/true)).clamp_min(1e-12);
    parts.push_back((rows / peak).reshape({out, n_groups * width}));
  };
  if (full > 0) normalise(0, full, gs);
  if (rem > 0) normalise(full * gs, 1, rem);
  return (parts.size() == 1 ? parts[0] : at::cat(parts, 1)).mean(0);
}

// Output error of each linear when quantized with input scales s (and optional per-linear clip ratios).
std::vector<double> group_errors(const CalibratedGroup& g, const CalibrationError& meter, const QuantSpec& spec,
                                 const at::Tensor& s, const std::vector<at::Tensor>& clip = {}) {
  std::vector<double> errs;
  for (const auto i : c10::irange(g.weights.size())) {
    const at::Tensor& w = g.weights[i];
    const at::Tensor effective =
        fake_quantize_groupwise(w * s, spec, clip.empty() ? at::Tensor() : clip[i]) / s;
    errs.push_back(meter.sum_squared(w, effective));
  }
  return errs;
}

double total(const std::vector<double>& v) {
  double t = 0;
  for (double e : v) t += e;
  return t;
}

// Per (output row, group) squared error of the group's partial outputs x_g (w_g - w_hat_g)^T, summed over rows.
at::Tensor partial_output_errors(const at::Tensor& x, const at::Tensor& diff, int64_t group_size) {
  const int64_t m = x.size(0), out = diff.size(0), in = diff.size(1);
  const int64_t gs = effective_group_size(group_size, in);
  const int64_t full = in / gs, rem = in - full * gs;
  std::vector<at::Tensor> parts;
  if (full > 0) {
    const at::Tensor xg = x.narrow(1, 0, full * gs).reshape({m, full, gs}).permute({1, 0, 2});     // [G, m, gs]
    const at::Tensor dg = diff.narrow(1, 0, full * gs).reshape({out, full, gs}).permute({1, 2, 0});  // [G, gs, out]
    // Bound the [groups, m, out] intermediate to ~16M floats.
    const int64_t step = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(1, m * out));
    for (int64_t g0 = 0; g0 < full; g0 += step) {
      const int64_t n = std::min(step, full - g0);
      parts.push_back(at::bmm(xg.narrow(0, g0, n), dg.narrow(0, g0, n)).square().sum(1).t());  // [out, n]
    }
  }
  if (rem > 0) {
    const at::Tensor p = x.narrow(1, full * gs, rem).matmul(diff.narrow(1, full * gs, rem).t());  // [m, out]
    parts.push_back(p.square().sum(0).unsqueeze(1));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

// AWQ's auto-clip: the best clip ratio per (output row, group) of ws for the (scaled) inputs xs.
at::Tensor search_clip(const at::Tensor& xs, const at::Tensor& ws, const AwqOptions& opt) {
  const int64_t out = ws.size(0);
  const int64_t n_groups = group_count(opt.spec.group_size, ws.size(1));
  const int64_t n_ratios = std::max<int64_t>(1, static_cast<int64_t>(opt.max_shrink * opt.clip_grid));
  at::Tensor best_clip = at::ones({out, n_groups}, at::kFloat);
  at::Tensor best_err = at::full({out, n_groups}, std::numeric_limits<float>::infinity(), at::kFloat);
  for (const auto k : c10::irange(n_ratios)) {
    const double ratio = 1.0 - static_cast<double>(k) / static_cast<double>(opt.clip_grid);
    const at::Tensor clip = at::full({out, n_groups}, ratio, at::kFloat);
    const at::Tensor diff = ws - fake_quantize_groupwise(ws, opt.spec, clip);
    const at::Tensor err = partial_output_errors(xs, diff, opt.spec.group_size);
    const at::Tensor better = err < best_err;  // ties keep the larger ratio
    best_err = at::where(better, err, best_err);
    best_clip.masked_fill_(better, ratio);
  }
  return best_clip;
}

}  // namespace

AwqResult awq_search(const at::Tensor& x, const std::vector<at::Tensor>& weights, const AwqOptions& options,
                     const std::vector<std::string>& names) {
  const auto t0 = Clock::now();
  const QuantSpec& spec = options.spec;
  TORCH_CHECK(options.n_grid >= 1, "awq_search: n_grid must be >= 1, got ", options.n_grid);
  TORCH_CHECK(!options.clip_search || (options.clip_grid >= 1 && options.max_shrink >= 0 &&
                                       options.max_shrink < 1 && options.clip_max_rows >= 1),
              "awq_search: clip search needs clip_grid >= 1, max_shrink in [0, 1) and clip_max_rows >= 1, got ",
              options.clip_grid, ", ", options.max_shrink, ", ", options.clip_max_rows);
  at::NoGradGuard no_grad;
  const CalibratedGroup g = check_calibrated_group("awq_search", x, weights, spec, names);
  const int64_t n = g.x.size(0), in = g.x.size(1);
  const size_t L = g.weights.size();
  const CalibrationError meter(g.x);

  AwqResult result;
  std::vector<std::string> adjustments;

  // Plain RTN of the same spec (float16 scales included): the baseline every report compares with.
  std::vector<double> rtn_err;
  for (const auto i : c10::irange(L)) {
    const at::Tensor deq = fake_quantize_groupwise(g.weights[i], spec);
    rtn_err.push_back(meter.sum_squared(g.weights[i], deq));
  }

  // Scale search. s = 1 goes first so that an equal error keeps plain RTN.
  at::Tensor best_s = at::ones({in}, at::kFloat);
  std::vector<double> best_err = group_errors(g, meter, spec, best_s);
  const at::Tensor x_mean = g.x.abs().mean(0);
  const at::Tensor w_mean = weight_channel_mean(L == 1 ? g.weights[0] : at::cat(g.weights, 0), spec.group_size);
  int64_t non_finite = 0;
  for (const auto i : c10::irange(options.n_grid)) {
    const double r = static_cast<double>(i) / static_cast<double>(options.n_grid);
    at::Tensor s = x_mean.pow(r);
    if (options.duo_scaling) s = s / w_mean.clamp_min(1e-12).pow(1.0 - r);
    s = s.clamp_min(1e-4);
    s = s / (s.max() * s.min()).sqrt();
    if (!at::all(s.isfinite()).item<bool>()) {
      ++non_finite;
      continue;
    }
    const std::vector<double> errs = group_errors(g, meter, spec, s);
    if (std::isfinite(total(errs)) && total(errs) < total(best_err)) {
      best_err = errs;
      best_s = s;
      result.ratio = r;
    }
  }
  if (non_finite > 0)
    adjustments.push_back("skipped " + std::to_string(non_finite) + " scale candidates that were not finite");

  // Clip search per linear, on evenly strided rows of the scaled inputs.
  std::vector<at::Tensor> clip(L);
  std::vector<std::vector<std::string>> layer_adjust(L);
  if (options.clip_search) {
    const int64_t stride = std::max<int64_t>(1, n / options.clip_max_rows);
    const at::Tensor strided = g.x.slice(0, 0, n, stride);
    const at::Tensor xs = (strided.narrow(0, 0, std::min(options.clip_max_rows, strided.size(0))) / best_s).contiguous();
    for (const auto i : c10::irange(L)) {
      const at::Tensor ws = g.weights[i] * best_s;
      const at::Tensor c = search_clip(xs, ws, options);
      const double err = meter.sum_squared(g.weights[i], fake_quantize_groupwise(ws, spec, c) / best_s);
      if (err < best_err[i]) {
        clip[i] = c;
        best_err[i] = err;
      } else if (at::any(c < 1).item<bool>()) {
        layer_adjust[i].push_back("clip search dropped: it did not lower the output error on the calibration set");
      }
    }
  }

  result.scales = best_s;
  for (const auto i : c10::irange(L)) {
    const at::Tensor& w = g.weights[i];
    const GroupwiseQuantized qw = quantize_groupwise(w * best_s, spec, clip[i]);
    result.packed.push_back(pack_groupwise(qw, spec));
    result.clip.push_back(clip[i].defined() ? clip[i] : at::ones({w.size(0), qw.scales.size(1)}, at::kFloat));
    LayerReport rep;
    rep.algorithm = "awq";
    const at::Tensor effective = dequantize_groupwise(qw, spec) / best_s;
    rep.weight_mse = (w - effective).square().mean().item<double>();
    const double denom = static_cast<double>(n) * static_cast<double>(w.size(0));
    rep.output_mse = best_err[i] / denom;
    rep.baseline_output_mse = rtn_err[i] / denom;
    rep.adjustments = adjustments;
    rep.adjustments.insert(rep.adjustments.end(), layer_adjust[i].begin(), layer_adjust[i].end());
    result.reports.push_back(std::move(rep));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (LayerReport& rep : result.reports) rep.seconds = seconds;
  return result;
}

}  // namespace lwq
