// AVX2 W8A8 kernels. The GEMM multiplies int16 activation pairs with int16 weight pairs (_mm256_madd_epi16:
// exact s16 x s16 -> s32, no saturation unlike maddubs with full-range u8 x s8) and accumulates in int32.
// A weight lane holds 4 byte codes of one row; its even bytes (k, k+2) and odd bytes (k+1, k+3) zero-extended
// to int16 are two madd operands as they stand, which is why activations are stored in k, k+2, k+1, k+3 order.
// Using the unsigned codes c = q + 128 saves the sign handling; 128 * row_sum is subtracted at the end (int32
// arithmetic wraps, and the true result fits, so the difference is exact).
//
// Blocking: a register tile of 6 rows x 2 weight tiles (12 accumulators, 16 columns) over the full K; rows are
// walked in blocks whose activations stay in L2 while each weight tile pair of the range is read once per block
// (so for M <= 6 every weight byte is read once). A single row (M = 1) runs a GEMV over 4 tiles at a time.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "w8a8.h"

namespace lwq {
namespace kernels {

namespace {

inline __m256i quantize8(const float* x, __m256 scale, __m256 zpf, __m256 lo, __m256 hi,
                         __m256i zp, __m256& nan_seen) {
  const __m256 v = _mm256_loadu_ps(x);
  nan_seen = _mm256_or_ps(nan_seen, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  __m256 r = _mm256_round_ps(_mm256_div_ps(v, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_add_ps(r, zpf);
  r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);  // equals the scalar clamp for every non-NaN r
  return _mm256_sub_epi32(_mm256_cvtps_epi32(r), zp);
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i broadcast_pair(const int16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256i load_codes(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i madd_add(__m256i acc, __m256i w, __m256i a) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, a));
}

// Register tile of 6 activation rows x NT (1 or 2) weight tiles over all n_quads column quads (unsigned codes).
// Written out with named accumulators: GCC keeps an __m256i array of this size in memory. Rows past the end
// of the block point at a valid row (the caller repeats one) and their results are not stored.
template <int NT>
void dot_6rows(const uint8_t* w0, int64_t tile_bytes, const int16_t* const (&rows)[6], int64_t n_quads,
               __m256i (&out)[6][2]) {
  const __m256i low_bytes = _mm256_set1_epi16(0x00FF);
  const uint8_t* w1 = w0 + (NT == 2 ? tile_bytes : 0);
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t u = 0; u < n_quads; ++u) {
    for (int half = 0; half < 2; ++half) {
      // half 0: even bytes (columns k, k+2) with activation pair 0; half 1: odd bytes with pair 1.
      const __m256i v0 = load_codes(w0 + u * 32), v1 = load_codes(w1 + u * 32);
      const __m256i b0 = half ? _mm256_srli_epi16(v0, 8) : _mm256_and_si256(v0, low_bytes);
      const __m256i b1 = half ? _mm256_srli_epi16(v1, 8) : _mm256_and_si256(v1, low_bytes);
      const int64_t off = u * 4 + half * 2;
      __m256i a = broadcast_pair(rows[0] + off);
      c00 = madd_add(c00, b0, a);
      if (NT == 2) c01 = madd_add(c01, b1, a);
      a = broadcast_pair(rows[1] + off);
      c10 = madd_add(c10, b0, a);
      if (NT == 2) c11 = madd_add(c11, b1, a);
      a = broadcast_pair(rows[2] + off);
      c20 = madd_add(c20, b0, a);
      if (NT == 2) c21 = madd_add(c21, b1, a);
      a = broadcast_pair(rows[3] + off);
      c30 = madd_add(c30, b0, a);
      if (NT == 2) c31 = madd_add(c31, b1, a);
      a = broadcast_pair(rows[4] + off);
      c40 = madd_add(c40, b0, a);
      if (NT == 2) c41 = madd_add(c41, b1, a);
      a = broadcast_pair(rows[5] + off);
      c50 = madd_add(c50, b0, a);
      if (NT == 2) c51 = madd_add(c51, b1, a);
    }
  }
  out[0][0] = c00, out[0][1] = c01, out[1][0] = c10, out[1][1] = c11, out[2][0] = c20, out[2][1] = c21;
  out[3][0] = c30, out[3][1] = c31, out[4][0] = c40, out[4][1] = c41, out[5][0] = c50, out[5][1] = c51;
}

// One activation row (GEMV) x 4 weight tiles (fewer when NT < 4): streams the weight once, 2 pairs per quad.
template <int NT>
void dot_1row(const uint8_t* w0, int64_t tile_bytes, const int16_t* row, int64_t n_quads, __m256i (&out)[4]) {
  const __m256i low_bytes = _mm256_set1_epi16(0x00FF);
  const uint8_t* w1 = w0 + (NT > 1 ? tile_bytes : 0);
  const uint8_t* w2 = w0 + (NT > 2 ? 2 * tile_bytes : 0);
  const uint8_t* w3 = w0 + (NT > 3 ? 3 * tile_bytes : 0);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
  for (int64_t u = 0; u < n_quads; ++u) {
    const __m256i a0 = broadcast_pair(row + u * 4), a1 = broadcast_pair(row + u * 4 + 2);
    const __m256i v0 = load_codes(w0 + u * 32);
    c0 = madd_add(madd_add(c0, _mm256_and_si256(v0, low_bytes), a0), _mm256_srli_epi16(v0, 8), a1);
    if (NT > 1) {
      const __m256i v1 = load_codes(w1 + u * 32);
      c1 = madd_add(madd_add(c1, _mm256_and_si256(v1, low_bytes), a0), _mm256_srli_epi16(v1, 8), a1);
    }
    if (NT > 2) {
      const __m256i v2 = load_codes(w2 + u * 32);
      c2 = madd_add(madd_add(c2, _mm256_and_si256(v2, low_bytes), a0), _mm256_srli_epi16(v2, 8), a1);
    }
    if (NT > 3) {
      const __m256i v3 = load_codes(w3 + u * 32);
      c3 = madd_add(madd_add(c3, _mm256_and_si256(v3, low_bytes), a0), _mm256_srli_epi16(v3, 8), a1);
    }
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

struct Epilogue {
  const WeightView& w;
  const int32_t* row_sum;
  float act_scale;
  const float* bias;
  float* y;
  int64_t ldy;

  // y[m, n0..n0+8) = fma(float(acc - 128 * row_sum[m]), act_scale * w_scale[n], bias[n]) for n < N.
  void store(__m256i acc, int64_t m, int64_t n0) const {
    const int64_t valid = std::min<int64_t>(kTileN, w.N - n0);
    const __m256 s = _mm256_mul_ps(_mm256_set1_ps(act_scale), _mm256_loadu_ps(w.scales + n0));
    __m256 b = _mm256_setzero_ps();
    if (bias) {
      if (valid == kTileN) {
        b = _mm256_loadu_ps(bias + n0);
      } else {
        alignas(32) float tmp[kTileN] = {};
        std::memcpy(tmp, bias + n0, static_cast<size_t>(valid) * sizeof(float));
        b = _mm256_load_ps(tmp);
      }
    }
    const __m256i exact = _mm256_sub_epi32(acc, _mm256_set1_epi32(128 * row_sum[m]));
    const __m256 out = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), s, b);
    if (valid == kTileN) {
      _mm256_storeu_ps(y + m * ldy + n0, out);
    } else {
      alignas(32) float tmp[kTileN];
      _mm256_store_ps(tmp, out);
      std::memcpy(y + m * ldy + n0, tmp, static_cast<size_t>(valid) * sizeof(float));
    }
  }
};

// Rows [m0, m0 + mr) (1 <= mr <= 6) times tiles [tile, tile + nt) (1 <= nt <= 2).
void run_6rows(const WeightView& w, const Epilogue& ep, const int16_t* d, int64_t ldd, int64_t m0, int64_t mr,
               int64_t tile, int64_t nt) {
  const int64_t n_quads = w.K_pad / 4;
  const int64_t tile_bytes = n_quads * 32;
  const int16_t* rows[6];
  for (int64_t i = 0; i < 6; ++i) rows[i] = d + (m0 + std::min(i, mr - 1)) * ldd;
  __m256i acc[6][2];
  const uint8_t* w0 = w.qweight + tile * tile_bytes;
  if (nt == 2)
    dot_6rows<2>(w0, tile_bytes, rows, n_quads, acc);
  else
    dot_6rows<1>(w0, tile_bytes, rows, n_quads, acc);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t t = 0; t < nt; ++t) ep.store(acc[i][t], m0 + i, (tile + t) * kTileN);
}

// Row m times tiles [tile, tile + nt) (1 <= nt <= 4).
void run_1row(const WeightView& w, const Epilogue& ep, const int16_t* d, int64_t ldd, int64_t m, int64_t tile,
              int64_t nt) {
  const int64_t n_quads = w.K_pad / 4;
  const int64_t tile_bytes = n_quads * 32;
  const uint8_t* w0 = w.qweight + tile * tile_bytes;
  __m256i acc[4];
  switch (nt) {
    case 4: dot_1row<4>(w0, tile_bytes, d + m * ldd, n_quads, acc); break;
    case 3: dot_1row<3>(w0, tile_bytes, d + m * ldd, n_quads, acc); break;
    case 2: dot_1row<2>(w0, tile_bytes, d + m * ldd, n_quads, acc); break;
    default: dot_1row<1>(w0, tile_bytes, d + m * ldd, n_quads, acc); break;
  }
  for (int64_t t = 0; t < nt; ++t) ep.store(acc[t], m, (tile + t) * kTileN);
}

}  // namespace

bool w8a8_quantize_acts_avx2(const float* x, int64_t M, int64_t K, int64_t ldx, float act_scale, int32_t zp,
                             int32_t qmin, int32_t qmax, int16_t* d, int64_t ldd, int32_t* row_sum) {
  const int64_t K4 = round_up(K, 4);
  const __m256 scale = _mm256_set1_ps(act_scale);
  const __m256 zpf = _mm256_set1_ps(static_cast<float>(zp));
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin));
  const __m256 hi = _mm256_set1_ps(static_cast<float>(qmax));
  const __m256i zpi = _mm256_set1_epi32(zp);
  const __m256i quad_order = _mm256_setr_epi32(0, 2, 1, 3, 4, 6, 5, 7);
  __m256 nan_seen = _mm256_setzero_ps();
  bool finite_or_inf = true;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    int16_t* dr = d + m * ldd;
    __m256i vsum = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m256i a = quantize8(xr + k, scale, zpf, lo, hi, zpi, nan_seen);
      __m256i b = quantize8(xr + k + 8, scale, zpf, lo, hi, zpi, nan_seen);
      vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(a, b));
      a = _mm256_permutevar8x32_epi32(a, quad_order);
      b = _mm256_permutevar8x32_epi32(b, quad_order);
      // packs works per 128-bit half: (a0-3, b0-3 | a4-7, b4-7); the qword permute restores a0-7, b0-7.
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dr + k), packed);
    }
    int32_t sum = hsum_epi32(vsum);
    for (; k < K; ++k) {  // same scalar formula as the reference
      const float v = xr[k];
      if (std::isnan(v)) finite_or_inf = false;
      const float r = std::nearbyint(v / act_scale) + static_cast<float>(zp);
      const float c = std::min(std::max(r, static_cast<float>(qmin)), static_cast<float>(qmax));
      const int32_t dv = static_cast<int32_t>(c) - zp;
      dr[w8a8_act_pos(k)] = static_cast<int16_t>(dv);
      sum += dv;
    }
    for (; k < K4; ++k) dr[w8a8_act_pos(k)] = 0;
    row_sum[m] = sum;
  }
  return finite_or_inf && _mm256_movemask_ps(nan_seen) == 0;
}

void w8a8_gemm_avx2(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                    float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin,
                    int64_t tile_end) {
  const Epilogue ep{w, row_sum, act_scale, bias, y, ldy};
  // Rows per block: their activations (2 bytes per column) should take about 3/4 of a 1 MiB L2.
  constexpr int64_t kRows = 6;
  const int64_t row_bytes = ldd * 2;
  const int64_t max_rows = std::max<int64_t>(kRows, (768 * 1024 / row_bytes) / kRows * kRows);
  const int64_t n_blocks = (M + max_rows - 1) / max_rows;
  const int64_t block_rows = round_up((M + n_blocks - 1) / n_blocks, kRows);
  for (int64_t m0 = 0; m0 < M; m0 += block_rows) {
    const int64_t m_end = std::min(M, m0 + block_rows);
    if (m_end - m0 == 1) {  // GEMV: 4 tiles per pass
      for (int64_t t = tile_begin; t < tile_end; t += 4)
        run_1row(w, ep, d, ldd, m0, t, std::min<int64_t>(4, tile_end - t));
      continue;
    }
    for (int64_t t = tile_begin; t < tile_end; t += 2) {
      const int64_t nt = std::min<int64_t>(2, tile_end - t);
      for (int64_t m = m0; m < m_end; m += kRows) {
        const int64_t mr = std::min(kRows, m_end - m);
        if (mr == 1)
          run_1row(w, ep, d, ldd, m, t, nt);
        else
          run_6rows(w, ep, d, ldd, m, mr, t, nt);
      }
    }
  }
}

}  // namespace kernels
}  // namespace lwq
