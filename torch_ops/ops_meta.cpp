// Shape functions: the linear ops on meta tensors give the output shape and dtype without touching data, so a
// model with empty (meta) parameters can be traced and shape-checked.
#include <torch/library.h>

#include "ops.h"

namespace lwq {

std::vector<int64_t> linear_output_shape(const at::Tensor& x, int64_t in_features, int64_t out_features) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "linear: x must have shape [..., ", in_features,
              "] (the weight's in_features), got ", x.sizes());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  return shape;
}

namespace {

at::Tensor woq_linear_meta(const at::Tensor& x, const PackedWeightPtr& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w, "woq_linear: the packed weight is None");
  return at::empty(linear_output_shape(x, w->in_features(), w->out_features()), x.options());
}

at::Tensor woq_linear_a8_meta(const at::Tensor& x, const PackedWeightPtr& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w, "woq_linear_a8: the packed weight is None");
  return at::empty(linear_output_shape(x, w->in_features(), w->out_features()), x.options());
}

at::Tensor w8a8_linear_meta(const at::Tensor& x, const PackedWeightPtr& w, double act_scale, int64_t act_zero_point,
                            const c10::optional<at::Tensor>& bias, const std::string& act_dtype) {
  TORCH_CHECK(w, "w8a8_linear: the packed weight is None");
  return at::empty(linear_output_shape(x, w->in_features(), w->out_features()), x.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(lwq, Meta, m) {
  register_packed_weight();
  m.impl("woq_linear", &woq_linear_meta);
  m.impl("woq_linear_a8", &woq_linear_a8_meta);
  m.impl("w8a8_linear", &w8a8_linear_meta);
}

// LibTorch 1.13 has no default fallthrough for AutogradMeta: without this, meta calls stop there.
TORCH_LIBRARY_IMPL(lwq, AutogradMeta, m) {
  m.impl("woq_linear", torch::CppFunction::makeFallthrough());
  m.impl("woq_linear_a8", torch::CppFunction::makeFallthrough());
  m.impl("w8a8_linear", torch::CppFunction::makeFallthrough());
}

}  // namespace lwq
