// Every operator schema of liblwq.so (the core library), in one place. The kernels are in this folder, except the
// pipeline's observation hook, which lives with the block capture (model/blocks.cpp).
#include <torch/library.h>

#include "bindings.h"
#include "lwq/gptq.h"
#include "lwq/model/blocks.h"

namespace lwq {
namespace bindings {

TORCH_LIBRARY_FRAGMENT(lwq, m) {
  // RTN and GPTQ (rtn_gptq.cpp; gptq_hessian_add is lwq::gptq_hessian_add itself).
  m.def("rtn_quantize(Tensor weight, str dtype, int group_size=128, bool sym=True, bool mse_search=False) -> "
        "__torch__.torch.classes.lwq.PackedWeight",
        &rtn_quantize_op);
  m.def("gptq_hessian_add(Tensor hessian, Tensor x, int nsamples_seen) -> Tensor", &gptq_hessian_add);
  m.def("gptq_quantize(Tensor weight, Tensor hessian, str dtype, int group_size=128, bool sym=True, "
        "float percdamp=0.01, int block_size=128, bool act_order=False, bool static_groups=False) -> "
        "__torch__.torch.classes.lwq.PackedWeight",
        &gptq_quantize_op);
  // AWQ and TEQ for one group of linears sharing an input (awq_teq.cpp).
  m.def(
      "awq_search(Tensor x, Tensor[] weights, str dtype, int group_size, bool sym, int n_grid=20, "
      "bool clip_search=True) -> (Tensor scales, __torch__.torch.classes.lwq.PackedWeight[] packed)",
      &awq_search_op);
  m.def(
      "teq_quantize(Tensor x, Tensor[] weights, str dtype, int group_size, bool sym, int steps=1000, "
      "float lr=0.001, int seed=0) -> (Tensor scales, __torch__.torch.classes.lwq.PackedWeight[] packed)",
      &teq_quantize_op);
  // Observers, SmoothQuant and W8A8 (w8a8.cpp; semantics in include/lwq/w8a8.h).
  m.def("observe_activation_qparams(Tensor[] batches, str observer=\"minmax\", str act_dtype=\"uint8\") -> "
        "(float scale, int zero_point)",
        &observe_activation_qparams_op);
  m.def("channel_absmax(Tensor[] batches) -> Tensor", &channel_absmax_op);
  m.def("smoothquant_scales(Tensor act_absmax, Tensor weight, float alpha=0.5) -> Tensor", &smoothquant_scales_op);
  m.def("w8a8_quantize(Tensor weight, Tensor? bias, Tensor[] batches, str observer=\"minmax\", "
        "str act_dtype=\"uint8\", float? alpha=None) -> (__torch__.torch.classes.lwq.PackedWeight weight, "
        "float act_scale, int act_zero_point, Tensor? smooth_scales, Dict(str, float) report)",
        &w8a8_quantize_op);
  m.def("w8a8_fake_quant_linear(Tensor x, Tensor weight_dequant, float act_scale, int act_zero_point, "
        "Tensor? bias=None, str act_dtype=\"uint8\") -> Tensor",
        &w8a8_fake_quant_linear_op);
  // The safetensors reader (io.cpp).
  m.def("load_safetensors(str path) -> Dict(str, Tensor)", &load_safetensors_op);
  // The pipeline's hook on every linear input while a block is observed (model/blocks.h). Side effects: the
  // conservative alias kind keeps the executor from reordering or removing the call.
  m.def(torch::schema("lwq::_observe_linear_input(Tensor x, Tensor weight) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        model::observe_linear_input);
}

}  // namespace bindings
}  // namespace lwq
