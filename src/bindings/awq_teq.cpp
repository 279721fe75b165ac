// torch.ops.lwq.awq_search and torch.ops.lwq.teq_quantize: the AWQ and TEQ searches for one group of linears
// sharing an input, returning the input scales and one packed weight per linear (of W diag(scales)).
#include "bindings.h"

#include "lwq/awq.h"
#include "lwq/teq.h"

namespace lwq {
namespace bindings {

std::tuple<at::Tensor, PackedList> awq_search_op(const at::Tensor& x, std::vector<at::Tensor> weights,
                                                 std::string dtype, int64_t group_size, bool sym, int64_t n_grid,
                                                 bool clip_search) {
  AwqOptions o;
  o.spec.dtype = std::move(dtype);
  o.spec.group_size = group_size;
  o.spec.sym = sym;
  o.n_grid = n_grid;
  o.clip_search = clip_search;
  AwqResult r = awq_search(x, weights, o);
  return {r.scales, std::move(r.packed)};
}

std::tuple<at::Tensor, PackedList> teq_quantize_op(const at::Tensor& x, std::vector<at::Tensor> weights,
                                                   std::string dtype, int64_t group_size, bool sym, int64_t steps,
                                                   double lr, int64_t seed) {
  TORCH_CHECK(seed >= 0, "teq_quantize: seed must be >= 0, got ", seed);
  TeqOptions o;
  o.spec.dtype = std::move(dtype);
  o.spec.group_size = group_size;
  o.spec.sym = sym;
  o.steps = steps;
  o.lr = lr;
  o.seed = static_cast<uint64_t>(seed);
  TeqResult r = teq_quantize(x, weights, o);
  return {r.scales, std::move(r.packed)};
}

}  // namespace bindings
}  // namespace lwq
