// Internal to the core library: its algorithms and I/O as TorchScript operators (torch.ops.lwq.*), for Python
// scripts and tests. Each function is the kernel of one schema in registration.cpp, the one place that names the
// core library's operators (liblwq_ops.so registers the run-time operators in torch_ops/registration.cpp).
#pragma once

#include <ATen/core/Dict.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "ops.h"

namespace lwq {
namespace bindings {

using PackedList = std::vector<PackedWeightPtr>;

// awq_teq.cpp
std::tuple<at::Tensor, PackedList> awq_search_op(const at::Tensor& x, std::vector<at::Tensor> weights,
                                                 std::string dtype, int64_t group_size, bool sym, int64_t n_grid,
                                                 bool clip_search);
std::tuple<at::Tensor, PackedList> teq_quantize_op(const at::Tensor& x, std::vector<at::Tensor> weights,
                                                   std::string dtype, int64_t group_size, bool sym, int64_t steps,
                                                   double lr, int64_t seed);
// rtn_gptq.cpp
PackedWeightPtr rtn_quantize_op(const at::Tensor& weight, const std::string& dtype, int64_t group_size, bool sym,
                                bool mse_search);
PackedWeightPtr gptq_quantize_op(const at::Tensor& weight, const at::Tensor& hessian, const std::string& dtype,
                                 int64_t group_size, bool sym, double percdamp, int64_t block_size, bool act_order,
                                 bool static_groups);
// w8a8.cpp
std::tuple<double, int64_t> observe_activation_qparams_op(at::TensorList batches, c10::string_view observer,
                                                          c10::string_view act_dtype);
at::Tensor channel_absmax_op(at::TensorList batches);
at::Tensor smoothquant_scales_op(const at::Tensor& act_absmax, const at::Tensor& weight, double alpha);
std::tuple<PackedWeightPtr, double, int64_t, c10::optional<at::Tensor>, c10::Dict<std::string, double>>
w8a8_quantize_op(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, at::TensorList batches,
                 c10::string_view observer, c10::string_view act_dtype, c10::optional<double> alpha);
at::Tensor w8a8_fake_quant_linear_op(const at::Tensor& x, const at::Tensor& weight_dequant, double act_scale,
                                     int64_t act_zero_point, const c10::optional<at::Tensor>& bias,
                                     c10::string_view act_dtype);
// io.cpp
c10::Dict<std::string, at::Tensor> load_safetensors_op(std::string path);

}  // namespace bindings
}  // namespace lwq
