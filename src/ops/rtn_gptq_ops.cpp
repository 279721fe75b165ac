// torch.ops.lwq.rtn_quantize / gptq_hessian_add / gptq_quantize: the core library's RTN and GPTQ as operators.
#include <torch/library.h>

#include "lwq/gptq.h"
#include "lwq/rtn.h"

namespace lwq {

namespace {

PackedWeightPtr rtn_quantize_op(const at::Tensor& weight, const std::string& dtype, int64_t group_size, bool sym,
                                bool mse_search) {
  return rtn_quantize(weight, QuantSpec{dtype, group_size, sym}, mse_search);
}

PackedWeightPtr gptq_quantize_op(const at::Tensor& weight, const at::Tensor& hessian, const std::string& dtype,
                                 int64_t group_size, bool sym, double percdamp, int64_t block_size, bool act_order,
                                 bool static_groups) {
  GptqOptions options;
  options.percdamp = percdamp;
  options.block_size = block_size;
  options.act_order = act_order;
  options.static_groups = static_groups;
  return gptq_quantize(weight, hessian, QuantSpec{dtype, group_size, sym}, options);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lwq, m) {
  m.def("rtn_quantize(Tensor weight, str dtype, int group_size=128, bool sym=True, bool mse_search=False) -> "
        "__torch__.torch.classes.lwq.PackedWeight",
        &rtn_quantize_op);
  m.def("gptq_hessian_add(Tensor hessian, Tensor x, int nsamples_seen) -> Tensor", &gptq_hessian_add);
  m.def("gptq_quantize(Tensor weight, Tensor hessian, str dtype, int group_size=128, bool sym=True, "
        "float percdamp=0.01, int block_size=128, bool act_order=False, bool static_groups=False) -> "
        "__torch__.torch.classes.lwq.PackedWeight",
        &gptq_quantize_op);
}

}  // namespace lwq
