// The committed golden archive loads from C++ (as a deployment would) and gives the numbers it was written with.
#include <gtest/gtest.h>
#include <torch/script.h>

#include "ops.h"
#include "test_util.h"

namespace lwq {
namespace {

TEST(Golden, V1ArchiveLoadsFromCppWithTheSameNumbers) {
  torch::jit::Module m = torch::jit::load(std::string(LWQ_SOURCE_DIR) + "/tests/golden/packed_v1.pt");
  const at::Tensor x = m.attr("x").toTensor();
  EXPECT_TRUE(m.run_method("dequantized").toTensor().equal(m.attr("expected_w").toTensor()));
  const at::Tensor y = m.forward({x}).toTensor();
  EXPECT_TRUE(at::allclose(y, m.attr("expected_y").toTensor(), 1e-5, 1e-5));
  // The packed attributes are real PackedWeight objects, usable from C++.
  auto w = m.attr("int3_g16_actorder").toCustomClass<PackedWeight>();
  EXPECT_EQ(w->dtype(), "int3");
  EXPECT_TRUE(w->has_g_idx());
  EXPECT_EQ(w->out_features(), 11);
  EXPECT_EQ(w->in_features(), 44);
}

}  // namespace
}  // namespace lwq
