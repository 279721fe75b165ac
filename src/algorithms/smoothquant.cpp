// SmoothQuant scales and their application (see include/lwq/smoothquant.h for the math and the guards).
#include "lwq/smoothquant.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace lwq {

namespace {

constexpr double kMinWeightAbsMax = 1e-5;
constexpr double kMinScale = 1e-5;

void check_scales(const at::Tensor& scales, int64_t channels, const char* what) {
  TORCH_CHECK(scales.defined() && scales.dim() == 1 && scales.size(0) == channels, what,
              ": smoothing scales must have shape [", channels, "], got ",
              scales.defined() ? scales.sizes() : at::IntArrayRef{});
  TORCH_CHECK(scales.is_floating_point(), what, ": smoothing scales must be a float tensor, got ",
              scales.scalar_type());
}

}  // namespace

void ChannelAbsMax::observe(const at::Tensor& x) {
  TORCH_CHECK(x.defined() && x.dim() >= 1 && x.numel() > 0, "channel absmax of '", name_,
              "': expected a non-empty batch [..., channels], got shape ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK(x.is_floating_point(), "channel absmax of '", name_, "': activations must be a float tensor, got ",
              x.scalar_type());
  const int64_t C = x.size(-1);
  TORCH_CHECK(!absmax_.defined() || absmax_.size(0) == C, "channel absmax of '", name_, "': batch ", batches_,
              " has ", C, " channels, earlier batches had ", absmax_.defined() ? absmax_.size(0) : 0);
  const at::Tensor batch_max = std::get<0>(x.reshape({-1, C}).to(at::kFloat).abs().max(0));
  // max propagates NaN and |Inf| = Inf, so checking the [C] result covers the whole batch.
  TORCH_CHECK(batch_max.isfinite().all().item<bool>(), "channel absmax of '", name_, "': batch ", batches_,
              " contains NaN or Inf");
  absmax_ = absmax_.defined() ? at::maximum(absmax_, batch_max) : batch_max;
  ++batches_;
}

at::Tensor ChannelAbsMax::absmax() const {
  TORCH_CHECK(batches_ > 0, "channel absmax of '", name_, "': no batch has been observed");
  return absmax_;
}

at::Tensor smoothquant_scales(const at::Tensor& act_absmax, const std::vector<at::Tensor>& weights, double alpha) {
  TORCH_CHECK(alpha >= 0 && alpha <= 1, "smoothquant: alpha must lie in [0, 1], got ", alpha);
  TORCH_CHECK(act_absmax.defined() && act_absmax.dim() == 1 && act_absmax.size(0) > 0,
              "smoothquant: act_absmax must be a non-empty [in] vector, got shape ",
              act_absmax.defined() ? act_absmax.sizes() : at::IntArrayRef{});
  TORCH_CHECK(!weights.empty(), "smoothquant: at least one weight reading the activation is needed");
  const int64_t in = act_absmax.size(0);
  const at::Tensor ax = act_absmax.to(at::kDouble);
  TORCH_CHECK(ax.isfinite().all().item<bool>() && ax.ge(0).all().item<bool>(),
              "smoothquant: act_absmax must be finite and non-negative");
  at::Tensor wx;
  for (size_t k = 0; k < weights.size(); ++k) {
    const at::Tensor& w = weights[k];
    TORCH_CHECK(w.defined() && w.dim() == 2 && w.size(1) == in, "smoothquant: weight ", k,
                " must have shape [out, ", in, "], got ", w.defined() ? w.sizes() : at::IntArrayRef{});
    TORCH_CHECK(w.is_floating_point(), "smoothquant: weight ", k, " must be a float tensor, got ", w.scalar_type());
    const at::Tensor col_max = std::get<0>(w.to(at::kDouble).abs().max(0));
    TORCH_CHECK(col_max.isfinite().all().item<bool>(), "smoothquant: weight ", k, " contains NaN or Inf");
    wx = wx.defined() ? at::maximum(wx, col_max) : col_max;
  }
  // Computed in double: for alpha near 0 or 1 the powers of small maxima lose digits in fp32.
  at::Tensor s = ax.pow(alpha) / wx.clamp_min(kMinWeightAbsMax).pow(1.0 - alpha);
  s = at::where(ax.eq(0), at::ones_like(s), s.clamp_min(kMinScale));
  TORCH_INTERNAL_ASSERT(s.isfinite().all().item<bool>(), "smoothquant: non-finite scale");
  return s.to(at::kFloat);
}

at::Tensor smoothquant_scales(const at::Tensor& act_absmax, const at::Tensor& weight, double alpha) {
  return smoothquant_scales(act_absmax, std::vector<at::Tensor>{weight}, alpha);
}

at::Tensor smooth_activation(const at::Tensor& x, const at::Tensor& scales) {
  TORCH_CHECK(x.dim() >= 1, "smooth_activation: x must be [..., in], got a scalar");
  check_scales(scales, x.size(-1), "smooth_activation");
  return (x.to(at::kFloat) / scales.to(at::kFloat)).to(x.scalar_type());
}

}  // namespace lwq
