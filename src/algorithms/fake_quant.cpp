// Group-wise fake quantization for the search-based algorithms, on qscheme.h's group-wise RTN, and the
// calibration error they minimise.
#include "lwq/fake_quant.h"

#include <c10/util/irange.h>

#include <cmath>

namespace lwq {

GroupwiseQuantized quantize_groupwise(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& clip) {
  TORCH_CHECK(w.dim() == 2 && w.is_floating_point(), "quantize_groupwise: expected a float weight [out, in], got ",
              w.scalar_type(), " ", w.sizes());
  const DtypeInfo& info = dtype_info(spec.dtype);
  check_scheme(info, spec.sym);
  return clip.defined() ? lwq::quantize_groupwise(w, info, spec.sym, spec.group_size, clip, spec.fp16_scales)
                        : lwq::quantize_groupwise(w, info, spec.sym, spec.group_size, 1.0, spec.fp16_scales);
}

at::Tensor dequantize_groupwise(const GroupwiseQuantized& qw, const QuantSpec& spec) {
  return lwq::dequantize_groupwise(qw, dtype_info(spec.dtype), spec.sym, spec.group_size);
}

at::Tensor fake_quantize_groupwise(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& clip) {
  return dequantize_groupwise(quantize_groupwise(w, spec, clip), spec);
}

PackedWeightPtr pack_groupwise(const GroupwiseQuantized& qw, const QuantSpec& spec) {
  c10::optional<at::Tensor> zeros;
  if (qw.zeros.defined()) zeros = qw.zeros;
  return PackedWeight::pack(qw.q, qw.scales, zeros, spec.dtype, spec.group_size, c10::nullopt);
}

CalibrationError::CalibrationError(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "CalibrationError: expected x [n, in], got ", x.sizes());
  rows_ = x.size(0);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  if (rows_ <= xf.size(1))
    x_ = xf;
  else
    gram_ = xf.t().matmul(xf);
}

double CalibrationError::sum_squared(const at::Tensor& w, const at::Tensor& w_hat) const {
  const at::Tensor d = (w - w_hat).to(at::kFloat);
  if (gram_.defined()) {
    // ||x d^T||^2 = sum_o d_o (x^T x) d_o^T
    return at::sum(d.matmul(gram_).mul_(d), at::kDouble).item<double>();
  }
  // Row chunks keep the [rows, out] product small when out is large.
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(1, d.size(0)));
  double total = 0;
  for (int64_t r0 = 0; r0 < rows_; r0 += chunk) {
    const at::Tensor p = x_.narrow(0, r0, std::min(chunk, rows_ - r0)).matmul(d.t());
    total += at::sum(p.square(), at::kDouble).item<double>();
  }
  return total;
}

CalibratedGroup check_calibrated_group(const char* algorithm, const at::Tensor& x,
                                       const std::vector<at::Tensor>& weights, const QuantSpec& spec,
                                       const std::vector<std::string>& names) {
  check_scheme(dtype_info(spec.dtype), spec.sym);
  TORCH_CHECK(!weights.empty(), algorithm, ": expected at least one weight sharing the input, got none");
  TORCH_CHECK(names.empty() || names.size() == weights.size(), algorithm, ": expected ", weights.size(),
              " names (one per weight), got ", names.size());
  CalibratedGroup g;
  for (const auto i : c10::irange(weights.size()))
    g.names.push_back(names.empty() ? "weights[" + std::to_string(i) + "]" : names[i]);
  const at::Tensor& w0 = weights[0];
  TORCH_CHECK(w0.defined() && w0.dim() == 2, algorithm, ": ", g.names[0], " must be a 2-D weight [out, in], got ",
              w0.defined() ? w0.sizes() : at::IntArrayRef{});
  const int64_t in = w0.size(1);
  TORCH_CHECK(x.defined() && x.is_floating_point() && x.dim() >= 1 && x.size(-1) == in, algorithm,
              ": expected float calibration inputs [..., ", in, "], got ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK(x.numel() > 0, algorithm, ": expected at least one calibration row, got x of shape ", x.sizes());
  g.x = x.reshape({-1, in}).to(at::kFloat).contiguous();
  check_finite(g.x, std::string(algorithm) + ": calibration inputs x");
  for (const auto i : c10::irange(weights.size())) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.defined() && w.dim() == 2 && w.is_floating_point() && w.size(1) == in && w.size(0) > 0,
                algorithm, ": ", g.names[i], " must be a float weight [out, ", in,
                "] (all weights share the input), got ", w.defined() ? w.sizes() : at::IntArrayRef{});
    g.weights.push_back(w.to(at::kFloat).contiguous());
    check_finite(g.weights.back(), std::string(algorithm) + ": " + g.names[i]);
  }
  return g;
}

}  // namespace lwq
