// Scalar reference of the W8A8 kernels: the definition the AVX2 code must match bit for bit.
#include <algorithm>
#include <cmath>

#include "w8a8.h"

namespace lwq {
namespace kernels {

bool w8a8_quantize_acts_ref(const float* x, int64_t M, int64_t K, int64_t ldx, float act_scale, int32_t zp,
                            int32_t qmin, int32_t qmax, int16_t* d, int64_t ldd, int32_t* row_sum) {
  const int64_t K4 = round_up(K, 4);
  bool finite_or_inf = true;
  for (int64_t m = 0; m < M; ++m) {
    int16_t* drow = d + m * ldd;
    int32_t sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const float v = x[m * ldx + k];
      if (std::isnan(v)) finite_or_inf = false;
      // Clamp in float: a huge x / act_scale must saturate, never wrap through an int conversion.
      const float r = std::nearbyint(v / act_scale) + static_cast<float>(zp);
      const float c = std::min(std::max(r, static_cast<float>(qmin)), static_cast<float>(qmax));
      const int32_t dv = static_cast<int32_t>(c) - zp;
      drow[w8a8_act_pos(k)] = static_cast<int16_t>(dv);
      sum += dv;
    }
    for (int64_t k = K; k < K4; ++k) drow[w8a8_act_pos(k)] = 0;
    row_sum[m] = sum;
  }
  return finite_or_inf;
}

void w8a8_gemm_ref(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                   float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end) {
  const int64_t n_end = std::min(tile_end * kTileN, w.N);
  for (int64_t n = tile_begin * kTileN; n < n_end; ++n) {
    const float s = act_scale * w.scales[n];
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) {
      int32_t acc = 0;  // exact: |acc| <= K * 255 * 128 < 2^31 for K <= kW8a8MaxK
      for (int64_t k = 0; k < w.K; ++k) {
        const int32_t q = static_cast<int32_t>(code_at(w.qweight, w.K, 8, n, k)) - 128;
        acc += static_cast<int32_t>(d[m * ldd + w8a8_act_pos(k)]) * q;
      }
      y[m * ldy + n] = std::fma(static_cast<float>(acc), s, b);
    }
  }
}

}  // namespace kernels
}  // namespace lwq
