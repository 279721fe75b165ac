// Folding per-input-channel scales s (AWQ, TEQ, SmoothQuant-style equivalent transformations) into the model:
// a consumer linear computes x W^T = (x / s) (W diag(s))^T, so its weight columns are multiplied by s and the
// division of its input by s is folded into whatever produces that input (a norm's weight, or the output rows
// of a preceding linear). Every function returns new tensors; the inputs are not modified.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace lwq {

// W [out, in] -> W * s (column j multiplied by s[j]).
at::Tensor scale_consumer_columns(const at::Tensor& weight, const at::Tensor& s);

// A norm's affine parameters [in] -> weight / s and bias / s (bias may be undefined, e.g. RMSNorm).
std::pair<at::Tensor, at::Tensor> fold_scales_into_norm(const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                                                        const at::Tensor& s);

// A preceding linear whose output is the consumers' input: W_prev [in, k] -> row i divided by s[i], and its
// bias [in] (may be undefined) likewise.
std::pair<at::Tensor, at::Tensor> fold_scales_into_producer(const at::Tensor& prev_weight,
                                                            const at::Tensor& prev_bias, const at::Tensor& s);

}  // namespace lwq
