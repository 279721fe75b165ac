// Group-wise fake quantization of a float weight and the calibration output error, shared by the search-based
// weight-only algorithms (AWQ, TEQ). All rounding goes through qscheme.h; nothing here defines a second one.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "lwq/common.h"
#include "ops.h"

namespace lwq {

// The logical form of a group-wise quantized weight [out, in] (the arguments of PackedWeight::pack).
using GroupwiseQuantized = GroupwiseQ;

// RTN of w [out, in] with spec's groups (a ragged last group when in is not a multiple of the group size).
// clip: optional fp32 [out, n_groups] ratios in (0, 1] applied to each group's range (AWQ's clip search);
// undefined means 1. With clip undefined the result equals lwq::quantize_weight(w, ...) bit for bit.
GroupwiseQuantized quantize_groupwise(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& clip = {});
// fp32 [out, in] values of a quantized weight (the inverse PackedWeight::dequantize applies).
at::Tensor dequantize_groupwise(const GroupwiseQuantized& qw, const QuantSpec& spec);
// dequantize_groupwise(quantize_groupwise(w, spec, clip), spec): what the kernels will compute with.
at::Tensor fake_quantize_groupwise(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& clip = {});
PackedWeightPtr pack_groupwise(const GroupwiseQuantized& qw, const QuantSpec& spec);

// Squared output error of a linear on fixed calibration inputs x [n, in]: sum over rows and output channels of
// (x w^T - x w_hat^T)^2, accumulated in double. Uses x directly when n <= in and the Gram matrix x^T x
// otherwise, so one evaluation costs min(n, in) * in * out multiply-adds.
class CalibrationError {
 public:
  explicit CalibrationError(const at::Tensor& x);
  double sum_squared(const at::Tensor& w, const at::Tensor& w_hat) const;
  int64_t rows() const { return rows_; }

 private:
  int64_t rows_ = 0;
  at::Tensor x_;     // fp32 [n, in] when n <= in
  at::Tensor gram_;  // fp32 [in, in] when n > in
};

// Validation shared by the algorithms that take calibration inputs and a group of linears sharing them:
// x [..., in] and weights [out_i, in], float and finite; the spec is a valid (dtype, sym) pair.
// Returns x as fp32 [n, in] and the weights as fp32.
struct CalibratedGroup {
  at::Tensor x;
  std::vector<at::Tensor> weights;
  std::vector<std::string> names;
};
CalibratedGroup check_calibrated_group(const char* algorithm, const at::Tensor& x,
                                       const std::vector<at::Tensor>& weights, const QuantSpec& spec,
                                       const std::vector<std::string>& names);

}  // namespace lwq
