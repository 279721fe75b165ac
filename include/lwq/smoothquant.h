// SmoothQuant: move activation outliers into the weights with a per-input-channel scale s, so that
// x W^T == (x / s)(W * s)^T and the smoothed activation x / s is easier to quantize per tensor.
//
//   s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), alpha in [0, 1] (default 0.5)
//
// max|X_j| is collected over calibration batches (ChannelAbsMax); max|W_:,j| is over every weight that reads
// the same activation (q, k and v projections share one s). Guards: a channel whose activation max is 0 gets
// s = 1 (nothing to move, and 0^alpha would zero the weight column); a weight column max is floored at 1e-5
// (as in the SmoothQuant paper's code) so an all-zero column does not divide by 0; s is floored at 1e-5.
//
// Applying s uses the shared equivalent-transformation helpers of lwq/scale_folding.h: the weight becomes
// scale_consumer_columns(W, s) = W * s (column j times s_j), and x / s is folded into whatever produces x
// (fold_scales_into_norm for a RMSNorm/LayerNorm, fold_scales_into_producer for a preceding linear).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace lwq {

// Streaming per-channel max |x| over batches x [..., C] (last dimension = channel).
class ChannelAbsMax {
 public:
  explicit ChannelAbsMax(std::string name = "activation") : name_(std::move(name)) {}
  // Throws on NaN/Inf, an empty batch, or a channel count that differs from earlier batches.
  void observe(const at::Tensor& x);
  // fp32 [C]; throws when nothing was observed.
  at::Tensor absmax() const;
  int64_t batches() const { return batches_; }

 private:
  std::string name_;
  at::Tensor absmax_;
  int64_t batches_ = 0;
};

constexpr double kSmoothQuantDefaultAlpha = 0.5;

// s fp32 [in] from act_absmax [in] and the weights [out_k, in] that read the activation. Throws on shape
// mismatches, alpha outside [0, 1], negative or non-finite maxima.
at::Tensor smoothquant_scales(const at::Tensor& act_absmax, const std::vector<at::Tensor>& weights,
                              double alpha = kSmoothQuantDefaultAlpha);
at::Tensor smoothquant_scales(const at::Tensor& act_absmax, const at::Tensor& weight,
                              double alpha = kSmoothQuantDefaultAlpha);

// x [..., in] / s, in x's dtype: what the layer's input becomes (for measuring; in a model the division is
// folded into the producer of x).
at::Tensor smooth_activation(const at::Tensor& x, const at::Tensor& scales);

}  // namespace lwq
