// Synthetic calibration data for the activation-aware algorithms' tests (AWQ, TEQ): Gaussian inputs in which a few
// channels are 20-50x larger, as in LLM layers, and the output errors those tests compare.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "lwq/common.h"
#include "ops.h"

namespace lwq {
namespace test {

struct Layer {
  at::Tensor x;                     // [n, in]
  std::vector<at::Tensor> weights;  // [out_i, in], all reading x
};

inline Layer make_outlier_layer(std::vector<int64_t> outs, int64_t in, int64_t n, int64_t n_outliers,
                                uint64_t seed) {
  at::manual_seed(seed);
  Layer l;
  l.x = at::randn({n, in});
  if (n_outliers > 0) {
    const at::Tensor channels = at::randperm(in).narrow(0, 0, n_outliers);
    const at::Tensor factor = at::rand({n_outliers}) * 30 + 20;
    l.x.index_copy_(1, channels, l.x.index_select(1, channels) * factor);
  }
  for (int64_t out : outs) l.weights.push_back(at::randn({out, in}) * 0.02);
  return l;
}

// Mean squared difference between x W^T and the quantized layer's x_used W_hat^T.
inline double output_mse(const at::Tensor& x, const at::Tensor& w, const at::Tensor& x_used,
                         const at::Tensor& w_hat) {
  return (x.matmul(w.t()) - x_used.matmul(w_hat.t())).square().mean().item<double>();
}

inline double rtn_output_mse(const at::Tensor& x, const at::Tensor& w, const QuantSpec& spec) {
  return output_mse(x, w, x, quantize_weight(w, spec.dtype, spec.group_size, spec.sym)->dequantize());
}

}  // namespace test
}  // namespace lwq
