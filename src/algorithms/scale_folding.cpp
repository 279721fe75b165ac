// Equivalent transformations: y = x W^T = (x / s) (W diag(s))^T. The scales live on the consumers' input
// channels; these helpers move them into concrete parameters.
#include "lwq/scale_folding.h"

namespace lwq {
namespace {

void check_scales(const at::Tensor& s, int64_t channels, const char* fn, const char* what) {
  TORCH_CHECK(s.defined() && s.dim() == 1 && s.size(0) == channels, fn, ": scales must be [", channels,
              "] to match ", what, ", got ", s.defined() ? s.sizes() : at::IntArrayRef{});
  TORCH_CHECK(s.is_floating_point(), fn, ": scales must be float, got ", s.scalar_type());
  TORCH_CHECK(at::all(s.isfinite() & (s != 0)).item<bool>(), fn, ": scales must be finite and non-zero");
}

}  // namespace

at::Tensor scale_consumer_columns(const at::Tensor& weight, const at::Tensor& s) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2, "scale_consumer_columns: expected a weight [out, in], got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  check_scales(s, weight.size(1), "scale_consumer_columns", "the weight's in_features");
  return weight * s.to(weight.scalar_type()).unsqueeze(0);
}

std::pair<at::Tensor, at::Tensor> fold_scales_into_norm(const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                                                        const at::Tensor& s) {
  TORCH_CHECK(norm_weight.defined() && norm_weight.dim() == 1,
              "fold_scales_into_norm: expected a norm weight [hidden], got ",
              norm_weight.defined() ? norm_weight.sizes() : at::IntArrayRef{});
  check_scales(s, norm_weight.size(0), "fold_scales_into_norm", "the norm weight");
  at::Tensor bias;
  if (norm_bias.defined()) {
    TORCH_CHECK(norm_bias.sizes() == norm_weight.sizes(), "fold_scales_into_norm: norm bias must be ",
                norm_weight.sizes(), ", got ", norm_bias.sizes());
    bias = norm_bias / s.to(norm_bias.scalar_type());
  }
  return {norm_weight / s.to(norm_weight.scalar_type()), bias};
}

std::pair<at::Tensor, at::Tensor> fold_scales_into_producer(const at::Tensor& prev_weight,
                                                            const at::Tensor& prev_bias, const at::Tensor& s) {
  TORCH_CHECK(prev_weight.defined() && prev_weight.dim() == 2,
              "fold_scales_into_producer: expected the preceding linear's weight [in, k], got ",
              prev_weight.defined() ? prev_weight.sizes() : at::IntArrayRef{});
  check_scales(s, prev_weight.size(0), "fold_scales_into_producer", "the preceding linear's out_features");
  at::Tensor bias;
  if (prev_bias.defined()) {
    TORCH_CHECK(prev_bias.dim() == 1 && prev_bias.size(0) == prev_weight.size(0),
                "fold_scales_into_producer: bias must be [", prev_weight.size(0), "], got ", prev_bias.sizes());
    bias = prev_bias / s.to(prev_bias.scalar_type());
  }
  return {prev_weight / s.to(prev_weight.scalar_type()).unsqueeze(1), bias};
}

}  // namespace lwq
