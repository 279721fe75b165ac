// Path selection of the AVX2 weight-only GEMM (torch-free). woq_gemm_avx2 (format.h) picks the path from M; a
// caller that splits M across threads uses woq_gemm_avx2_path with the path of the whole M, so that the bits of
// an output never depend on how the work was split.
#pragma once

#include "format.h"

namespace lwq {
namespace kernels {

enum class WoqPath : int32_t {
  // Small M (decode): codes are decoded once per tile and reused for every row of x; integer codes are summed
  // against x per group and scaled once per group.
  Decode = 0,
  // Large M (prefill): a panel of 16 output rows is dequantized to fp32 in L1 and fed to a register-blocked
  // 6x16 FMA micro-kernel.
  Blocked = 1,
};

// Smallest M served by the blocked path: where the two paths cross on 4096x4096 int4/int8 (Zen 4; nf4 crosses
// a little earlier, at about 8).
constexpr int64_t kWoqBlockedMinM = 12;

inline WoqPath woq_path_for(int64_t M) { return M >= kWoqBlockedMinM ? WoqPath::Blocked : WoqPath::Decode; }

// woq_gemm_avx2 with an explicit path. Within one path, y[m, n] is computed with a fixed order of operations that
// depends on neither M nor the tile range, so any split of rows or tiles gives the same bits.
void woq_gemm_avx2_path(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                        int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath path);

}  // namespace kernels
}  // namespace lwq
