// Scalar reference of the weight-only GEMM: decode each code to its fp32 value, then a plain dot product with
// double accumulation. Slow and obviously right; every optimized kernel is tested against it.
#include "format.h"

#include <algorithm>
#include <vector>

namespace lwq {
namespace kernels {

void woq_gemm_ref(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                  int64_t ldy, int64_t tile_begin, int64_t tile_end) {
  const float* table = codebook_table(w.codebook);
  std::vector<float> row(static_cast<size_t>(w.K));
  const int64_t n_end = std::min(tile_end * kTileN, w.N);
  for (int64_t n = tile_begin * kTileN; n < n_end; ++n) {
    for (int64_t k = 0; k < w.K; ++k) {
      const int64_t g = w.col_group[k];
      const float s = w.scales[g * w.N_pad + n];
      const int32_t c = code_at(w.qweight, w.K, w.bits, n, k);
      if (table) {
        row[k] = s * table[c];
      } else {
        const int32_t z = w.zeros ? w.zeros[g * w.N_pad + n] : sym_zero(w.bits);
        row[k] = s * static_cast<float>(c - z);
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < w.K; ++k) acc += static_cast<double>(x[m * ldx + k]) * row[k];
      y[m * ldy + n] = static_cast<float>(acc);
    }
  }
}

}  // namespace kernels
}  // namespace lwq
