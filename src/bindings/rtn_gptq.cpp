// torch.ops.lwq.rtn_quantize / gptq_hessian_add / gptq_quantize: the core library's RTN and GPTQ as operators.
#include "bindings.h"

#include "lwq/gptq.h"
#include "lwq/rtn.h"

namespace lwq {
namespace bindings {

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

}  // namespace bindings
}  // namespace lwq
