// A random weight in PackedWeight's logical form (q, scales, zeros for PackedWeight::pack), shared by the op tests
// of the weight-only kernel families (test_woq_kernels.cpp, test_woq_a8_kernels.cpp).
#pragma once

#include <ATen/ATen.h>

#include "qscheme.h"

namespace lwq {
namespace test {

struct LogicalWeight {
  at::Tensor q, scales;             // int32 [N, K] in the dtype's range, fp32 [N, n_groups] in [0.005, 0.055)
  c10::optional<at::Tensor> zeros;  // int32 [N, n_groups] zero codes when asymmetric
};

inline LogicalWeight random_logical_weight(const DtypeInfo& info, bool sym, int64_t N, int64_t K, int64_t n_groups) {
  LogicalWeight l;
  l.q = at::randint(info.qmin(sym), info.qmax(sym) + 1, {N, K}, at::kInt);
  l.scales = (at::rand({N, n_groups}) + 0.1) * 0.05;
  if (!sym) l.zeros = at::randint(0, info.qmax(false) + 1, {N, n_groups}, at::kInt);
  return l;
}

}  // namespace test
}  // namespace lwq
