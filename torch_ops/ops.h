// The operators of liblwq_ops as C++ functions (the schemas are in registration.cpp). C++ callers may use these
// directly; TorchScript and Python reach them as torch.ops.lwq.*.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "packed_weight.h"

namespace lwq {

using PackedWeightPtr = c10::intrusive_ptr<PackedWeight>;

// Round-to-nearest quantization of a float weight [out, in] (qscheme.h semantics).
PackedWeightPtr quantize_weight(const at::Tensor& weight, const std::string& dtype, int64_t group_size, bool sym);

// y = x @ dequantize(w).T + bias for x [..., in]; fp32 (other float dtypes are computed in fp32 and cast back).
at::Tensor woq_linear(const at::Tensor& x, const PackedWeightPtr& w, const c10::optional<at::Tensor>& bias);

// woq_linear with x quantized dynamically to int8 (per row, per block of at most 32 columns inside one group)
// and integer dot products: faster, not exact fp32 (kernels/woq_a8.h: arithmetic and error bound). int8, int4,
// int4_fullrange (sym or asym, any group size, act-order); other dtypes are refused.
at::Tensor woq_linear_a8(const at::Tensor& x, const PackedWeightPtr& w, const c10::optional<at::Tensor>& bias);

// Static W8A8: x quantized per tensor with (act_scale, act_zero_point) to uint8 ([0, 255]) or int8
// ([-128, 127]), int8 per-channel symmetric weights, exact int32 accumulation, then
// y = act_scale * w_scale[n] * sum_k (xq - zp) * wq + bias.
at::Tensor w8a8_linear(const at::Tensor& x, const PackedWeightPtr& w, double act_scale, int64_t act_zero_point,
                       const c10::optional<at::Tensor>& bias, const std::string& act_dtype);

// The input of a weight-only linear as the kernels read it (shared by woq_linear and woq_linear_a8): x flattened
// to fp32 [M, K_pad] in the weight's internal column order (act-order), zeros past K; bias fp32 [N] or undefined.
// `op` names the caller in errors.
struct KernelInput {
  at::Tensor x, bias;
  std::vector<int64_t> out_shape;
  int64_t M = 0;
};
KernelInput kernel_input(const char* op, const at::Tensor& x, const PackedWeight& w,
                         const c10::optional<at::Tensor>& bias);

// Output shape of a linear on x [..., in] with `out` features (shared by the CPU and Meta implementations).
std::vector<int64_t> linear_output_shape(const at::Tensor& x, int64_t in_features, int64_t out_features);

}  // namespace lwq
