// lwq::quantize_weight: round-to-nearest of a float weight into a PackedWeight (qscheme.h semantics).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ops.h"

namespace lwq {

namespace {
constexpr int64_t kRowBlockElements = int64_t{1} << 20;  // weights quantized per step (4 MiB of fp32)
}  // namespace

PackedWeightPtr quantize_weight(const at::Tensor& weight, const std::string& dtype, int64_t group_size, bool sym) {
  const DtypeInfo& info = dtype_info(dtype);
  check_scheme(info, sym);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0,
              "quantize_weight: weight must be a non-empty [out, in] matrix, got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), "quantize_weight: weight must be a float tensor, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device().is_cpu(), "quantize_weight: weight must be on the CPU, got ", weight.device());
  check_finite(weight, "quantize_weight: weight");
  // Row blocks (rows are quantized independently, so the result is the same): the float temporaries of
  // quantize_groupwise stay a few MiB instead of several times the weight, and only int16 codes are kept whole.
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t block = std::max<int64_t>(1, kRowBlockElements / k);
  // One parallel region over the blocks (each block's ATen ops then run on one thread): many short regions of
  // two threads spend most of their time in OpenMP barriers on a busy machine.
  const int64_t n_blocks = (n + block - 1) / block;
  at::Tensor q = at::empty({n, k}, at::kShort);
  std::vector<at::Tensor> scales(n_blocks), zeros(n_blocks);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block, rows = std::min(block, n - r0);
      const GroupwiseQ gq = quantize_groupwise(weight.narrow(0, r0, rows), info, sym, group_size);
      q.narrow(0, r0, rows).copy_(gq.q);
      scales[b] = gq.scales;
      if (!sym) zeros[b] = gq.zeros;
    }
  });
  return PackedWeight::pack(q, at::cat(scales), sym ? c10::nullopt : c10::optional<at::Tensor>(at::cat(zeros)), dtype,
                            group_size, c10::nullopt);
}

}  // namespace lwq
