// lwq::quantize_weight: round-to-nearest of a float weight into a PackedWeight (qscheme.h semantics).
#include "ops.h"

namespace lwq {

PackedWeightPtr quantize_weight(const at::Tensor& weight, const std::string& dtype, int64_t group_size, bool sym) {
  const DtypeInfo& info = dtype_info(dtype);
  check_scheme(info, sym);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0,
              "quantize_weight: weight must be a non-empty [out, in] matrix, got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "quantize_weight: weight must be a float tensor, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device().is_cpu(), "quantize_weight: weight must be on the CPU, got ", weight.device());
  check_finite(weight, "quantize_weight: weight");
  const GroupwiseQ gq = quantize_groupwise(weight, info, sym, group_size);
  return PackedWeight::pack(gq.q, gq.scales, sym ? c10::nullopt : c10::optional<at::Tensor>(gq.zeros), dtype,
                            group_size, c10::nullopt);
}

}  // namespace lwq
