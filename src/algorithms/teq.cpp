// TEQ: per-input-channel scales trained with Adam through a straight-through fake quantizer (see teq.h).
#include "lwq/teq.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/irange.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cmath>

#include "lwq/fake_quant.h"

namespace lwq {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kMinScale = 1e-5;  // as INC clamps its alpha

// The scales the layer uses: clamped as in INC, then (by default) divided by their geometric mean. Multiplying
// every scale by one constant changes nothing after quantization (the group scales follow), but the
// straight-through gradient treats the rounding error as fixed and so keeps pushing all scales up; the
// normalisation removes that direction and leaves the learning rate to the channels' relative sizes.
at::Tensor effective_scales(const at::Tensor& s, const TeqOptions& o) {
  const at::Tensor a = s.clamp_min(kMinScale);
  return o.normalise_scales ? a / a.log().mean().exp() : a;
}

// Output error of each linear on the whole calibration set for scales s (no autograd).
std::vector<double> calibration_errors(const CalibratedGroup& g, const CalibrationError& meter,
                                       const TeqOptions& o, const at::Tensor& s) {
  at::NoGradGuard no_grad;
  const QuantSpec& spec = o.spec;
  const at::Tensor a = effective_scales(s.detach(), o);
  std::vector<double> errs;
  for (const at::Tensor& w : g.weights) errs.push_back(meter.sum_squared(w, fake_quantize_groupwise(w * a, spec) / a));
  return errs;
}

double total(const std::vector<double>& v) {
  double t = 0;
  for (double e : v) t += e;
  return t;
}

// Learning rate of step t (0-based): linear warm-up, then linear decay to 0 as in INC's default schedule.
double scheduled_lr(const TeqOptions& o, int64_t t) {
  const int64_t warmup = static_cast<int64_t>(o.warmup_ratio * static_cast<double>(o.steps));
  if (t < warmup) return o.lr * static_cast<double>(t + 1) / static_cast<double>(warmup);
  return o.lr * static_cast<double>(o.steps - t) / static_cast<double>(std::max<int64_t>(1, o.steps - warmup));
}

}  // namespace

TeqResult teq_quantize(const at::Tensor& x, const std::vector<at::Tensor>& weights, const TeqOptions& options,
                       const std::vector<std::string>& names) {
  const auto t0 = Clock::now();
  const QuantSpec& spec = options.spec;
  TORCH_CHECK(options.steps >= 0, "teq_quantize: steps must be >= 0, got ", options.steps);
  TORCH_CHECK(options.lr > 0 && std::isfinite(options.lr), "teq_quantize: lr must be > 0, got ", options.lr);
  TORCH_CHECK(options.batch_size >= 1, "teq_quantize: batch_size must be >= 1, got ", options.batch_size);
  TORCH_CHECK(options.eval_every >= 0, "teq_quantize: eval_every must be >= 0, got ", options.eval_every);
  TORCH_CHECK(options.warmup_ratio >= 0 && options.warmup_ratio < 1,
              "teq_quantize: warmup_ratio must be in [0, 1), got ", options.warmup_ratio);

  // Training needs autograd even when the caller runs under no_grad or inference mode; the inputs are copied
  // so that none of them is an inference tensor saved for backward.
  c10::InferenceMode not_inference(false);
  at::AutoGradMode grad_on(true);
  CalibratedGroup g;
  {
    at::NoGradGuard no_grad;
    g = check_calibrated_group("teq_quantize", x, weights, spec, names);
    g.x = g.x.clone();
    for (at::Tensor& w : g.weights) w = w.clone();
  }
  const int64_t n = g.x.size(0), in = g.x.size(1);
  const size_t L = g.weights.size();
  const CalibrationError meter(g.x);

  std::vector<double> rtn_err;
  std::vector<at::Tensor> targets;
  {
    at::NoGradGuard no_grad;
    for (const at::Tensor& w : g.weights) {
      const at::Tensor deq = quantize_weight(w, spec.dtype, spec.group_size, spec.sym)->dequantize();
      rtn_err.push_back(meter.sum_squared(w, deq));
      targets.push_back(g.x.matmul(w.t()));
    }
  }

  at::Tensor s = at::ones({in}, at::kFloat).set_requires_grad(true);
  at::Tensor best_s = s.detach().clone();
  std::vector<double> best_err = calibration_errors(g, meter, options, s);
  TeqResult result;
  const auto consider = [&](int64_t step) {
    const std::vector<double> errs = calibration_errors(g, meter, options, s);
    if (std::isfinite(total(errs)) && total(errs) < total(best_err)) {
      best_err = errs;
      best_s = effective_scales(s.detach(), options);
      result.best_step = step;
    }
  };

  torch::optim::Adam adam({s}, torch::optim::AdamOptions(options.lr).betas({options.beta1, options.beta2}));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const int64_t batch = std::min(options.batch_size, n);
  at::Tensor order;
  int64_t next = n;  // position in the current shuffled pass over the rows
  for (const auto t : c10::irange(options.steps)) {
    at::Tensor rows;
    if (batch == n) {
      rows = at::arange(n, at::kLong);
    } else {
      if (next + batch > n) {
        order = at::randperm(n, gen, at::kLong);
        next = 0;
      }
      rows = order.narrow(0, next, batch);
      next += batch;
    }
    static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(scheduled_lr(options, t));

    const at::Tensor a = effective_scales(s, options);
    const at::Tensor xb = g.x.index_select(0, rows) / a;
    at::Tensor loss = at::zeros({}, at::kFloat);
    for (const auto i : c10::irange(L)) {
      const at::Tensor ws = g.weights[i] * a;
      at::Tensor wq_minus_ws;
      {
        at::NoGradGuard no_grad;
        wq_minus_ws = fake_quantize_groupwise(ws, spec) - ws;
      }
      // Straight-through estimator: the forward value is Q(ws), the gradient that of ws.
      const at::Tensor y = xb.matmul((ws + wq_minus_ws).t());
      loss = loss + (y - targets[i].index_select(0, rows)).square().mean();
    }
    adam.zero_grad();
    loss.backward();
    adam.step();
    TORCH_CHECK(at::all(s.detach().isfinite()).item<bool>(), "teq_quantize: the scales became non-finite at step ",
                t + 1, " (lr ", options.lr, " too large for this layer?)");
    const int64_t done = t + 1;
    if (done == options.steps || (options.eval_every > 0 && done % options.eval_every == 0)) consider(done);
  }

  result.scales = best_s;
  std::vector<std::string> adjustments;
  if (options.steps > 0 && result.best_step == 0)
    adjustments.push_back("kept s = 1: training never lowered the calibration error below plain RTN");
  for (const auto i : c10::irange(L)) {
    at::NoGradGuard no_grad;
    const at::Tensor& w = g.weights[i];
    const GroupwiseQuantized qw = quantize_groupwise(w * result.scales, spec);
    result.packed.push_back(pack_groupwise(qw, spec));
    LayerReport rep;
    rep.algorithm = "teq";
    rep.weight_mse = (w - dequantize_groupwise(qw, spec) / result.scales).square().mean().item<double>();
    const double denom = static_cast<double>(n) * static_cast<double>(w.size(0));
    rep.output_mse = best_err[i] / denom;
    rep.baseline_output_mse = rtn_err[i] / denom;
    rep.adjustments = adjustments;
    result.reports.push_back(std::move(rep));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (LayerReport& rep : result.reports) rep.seconds = seconds;
  return result;
}

}  // namespace lwq
