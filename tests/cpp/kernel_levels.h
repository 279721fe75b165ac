// The checks of the one parameterised kernel test (test_kernel_levels.cpp: kernel x ISA level), each defined next
// to the helpers of its kernel family (test_woq_kernels.cpp, test_woq_a8_kernels.cpp, test_w8a8_kernels.cpp).
// Each runs the kernel table of `level` (kernels::table_for(level), also the table in use: the caller holds a
// ScopedLevel) over that kernel's dtypes and awkward shapes against the scalar reference: bit for bit where the
// kernel's header promises it, within the documented bound otherwise (and then bit for bit against the AVX2
// version for the levels above avx2).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/dispatch.h"

namespace lwq {
namespace test {

void check_woq_gemm(kernels::Level level);          // torch-free kernels
void check_woq_a8_quantize(kernels::Level level);
void check_woq_a8_gemm(kernels::Level level);
void check_w8a8_quantize(kernels::Level level);
void check_w8a8_gemm(kernels::Level level);
void check_woq_linear_op(kernels::Level level);     // the operators, at 1 and 2 threads
void check_woq_linear_a8_op(kernels::Level level);
void check_w8a8_linear_op(kernels::Level level);

// (M, N, K) shapes the weight-only op checks add to their own: M = 1 with 10 and 17 tiles (pair groups, pairs, a
// leftover tile), the 5 x 136 decode block, the blocked path at K = 600, few tiles at M = 70 (rows cut across
// threads).
inline std::vector<std::array<int64_t, 3>> with_op_level_shapes(std::vector<std::array<int64_t, 3>> shapes) {
  for (const auto& s : {std::array<int64_t, 3>{1, 77, 384}, {5, 136, 100}, {1, 45, 300}, {13, 24, 600},
                        {70, 16, 512}})
    shapes.push_back(s);
  return shapes;
}

}  // namespace test
}  // namespace lwq
