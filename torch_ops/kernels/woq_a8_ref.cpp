// Blocks, activation quantization and the scalar reference GEMM of the int8-activation weight-only path
// (woq_a8.h states the arithmetic; this file is its executable definition).
#include <algorithm>
#include <cmath>

#include "woq_a8.h"

namespace lwq {
namespace kernels {

std::vector<A8Block> woq_a8_blocks(const WeightView& w) {
  std::vector<A8Block> blocks;
  int64_t k0 = 0;
  while (k0 < w.K_pad) {
    const int64_t g = w.col_group[k0];
    int64_t seg_end = k0 + 1;
    if (w.uniform_group > 0)  // group g is [g * G, (g + 1) * G), the last one up to K_pad
      seg_end = g + 1 == w.n_groups ? w.K_pad : (g + 1) * w.uniform_group;
    else
      while (seg_end < w.K_pad && w.col_group[seg_end] == g) ++seg_end;
    for (int64_t k = k0; k < seg_end;) {
      const int64_t k1 = std::min(seg_end, (k / kA8Block + 1) * kA8Block);
      blocks.push_back({k, k1, g, k1 == seg_end});
      k = k1;
    }
    k0 = seg_end;
  }
  return blocks;
}

bool woq_a8_whole_blocks(const std::vector<A8Block>& blocks) {
  return std::all_of(blocks.begin(), blocks.end(),
                     [](const A8Block& b) { return b.k1 - b.k0 == kA8Block && b.k0 % kA8Block == 0; });
}

bool woq_a8_quantize_acts_ref(const WeightView& w, const std::vector<A8Block>& blocks, const float* x, int64_t M,
                              int64_t ldx, int8_t* xq, float* d, int32_t* xsum) {
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  bool finite = true;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    int8_t* qr = xq + m * w.K_pad;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const A8Block& blk = blocks[b];
      float amax = 0.0f;
      for (int64_t k = blk.k0; k < blk.k1; ++k) {
        const float a = std::fabs(xr[k]);
        if (!(a <= 3.4028235e38f)) finite = false;  // NaN or Inf
        amax = std::max(amax, a);
      }
      const float db = amax / 127.0f;
      const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t k = blk.k0; k < blk.k1; ++k) {
        // x * id is at most 127 * (1 + 2^-23) in magnitude; the clamp only guards against that last ulp.
        const float r = std::min(std::max(std::nearbyint(xr[k] * id), -127.0f), 127.0f);
        const int32_t q = static_cast<int32_t>(r);
        qr[woq_a8_pos(k, w.bits)] = static_cast<int8_t>(q);
        sum += q;
      }
      d[m * n_blocks + b] = db;
      xsum[m * n_blocks + b] = sum;
    }
  }
  return finite;
}

void woq_a8_gemm_ref(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                     const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end) {
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  const int64_t n_end = std::min(tile_end * kTileN, w.N);
  for (int64_t n = tile_begin * kTileN; n < n_end; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* qr = acts.xq + m * w.K_pad;
      float out = bias ? bias[n] : 0.0f;
      float acc = 0.0f;
      for (int64_t b = 0; b < n_blocks; ++b) {
        const A8Block& blk = blocks[b];
        const int32_t z = w.zeros ? w.zeros[blk.g * w.N_pad + n] : sym_zero(w.bits);
        int32_t dot = 0;
        for (int64_t k = blk.k0; k < blk.k1; ++k)
          dot += static_cast<int32_t>(qr[woq_a8_pos(k, w.bits)]) * (code_at(w.qweight, w.K, w.bits, n, k) - z);
        acc = std::fma(acts.d[m * n_blocks + b], static_cast<float>(dot), acc);
        if (blk.seg_end) {
          out = std::fma(w.scales[blk.g * w.N_pad + n], acc, out);
          acc = 0.0f;
        }
      }
      y[m * ldy + n] = out;
    }
  }
}

}  // namespace kernels
}  // namespace lwq
