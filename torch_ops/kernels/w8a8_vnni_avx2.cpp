// W8A8 GEMM with AVX-VNNI (VEX vpdpbusd: 4 u8 x s8 products summed into each int32 lane, no saturation), for
// blocks of rows; the kernel table's choice (dispatch.h) from level avx_vnni up where the CPU has it. The file is
// compiled with the AVX2 flags of every *_avx2.cpp plus -mavxvnni (CMakeLists.txt), which no other file gets.
//
// vpdpbusd needs one unsigned and one signed operand. Weights become s8 q = c - 128 (one XOR). Activations
// d = xq - zp (int16, |d| <= 255, any sign) become u8 per row: xu = d + o with o = -min_k d (a row's values span
// at most 255, so xu fits in [0, 255]); columns K.. get xu = 0. Then, exactly in int32 (wrapping intermediate
// arithmetic, true result in range as w8a8.h states),
//   sum_k d * q = sum_k xu * q - o * wsum[n],   wsum[n] = sum_{k < K} q[n, k],
// which is the integer the AVX2 and reference kernels compute; the epilogue is theirs (one FMA), so the outputs
// are bit-identical.
//
// Blocking as in w8a8_avx2.cpp plus K chunks: a row block's activations are packed into panels of 6 rows (the
// 4 bytes of one quad of each row side by side, one sequential stream); for each pair of weight tiles, K is
// walked in chunks of 512 columns whose codes stay in L1 while every panel's register tile (6 rows x 16 columns,
// 12 accumulators) passes over them, the int32 partial sums parked in a small buffer between chunks.

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "w8a8.h"

namespace lwq {
namespace kernels {

namespace {

constexpr int64_t kRows = 6;
constexpr int64_t kChunkQuads = 128;

inline __m256i load_codes(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// acc ([6][2] int32 vectors, row-major) += 6 panel rows x NT tiles over nq quads. panel[6u + r] holds the 4 u8
// activations of quad u of row r.
template <int NT>
void dot_6rows(const uint8_t* w0, const uint8_t* w1, const int32_t* panel, int64_t nq, int32_t* acc) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  auto ld = [&](int i) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + 8 * i)); };
  __m256i c00 = ld(0), c01 = ld(1), c10 = ld(2), c11 = ld(3), c20 = ld(4), c21 = ld(5);
  __m256i c30 = ld(6), c31 = ld(7), c40 = ld(8), c41 = ld(9), c50 = ld(10), c51 = ld(11);
  for (int64_t u = 0; u < nq; ++u) {
    const __m256i b0 = _mm256_xor_si256(load_codes(w0 + u * 32), flip);
    const __m256i b1 = NT == 2 ? _mm256_xor_si256(load_codes(w1 + u * 32), flip) : b0;
    const int32_t* p = panel + u * kRows;
    __m256i a = _mm256_set1_epi32(p[0]);
    c00 = _mm256_dpbusd_avx_epi32(c00, a, b0);
    if (NT == 2) c01 = _mm256_dpbusd_avx_epi32(c01, a, b1);
    a = _mm256_set1_epi32(p[1]);
    c10 = _mm256_dpbusd_avx_epi32(c10, a, b0);
    if (NT == 2) c11 = _mm256_dpbusd_avx_epi32(c11, a, b1);
    a = _mm256_set1_epi32(p[2]);
    c20 = _mm256_dpbusd_avx_epi32(c20, a, b0);
    if (NT == 2) c21 = _mm256_dpbusd_avx_epi32(c21, a, b1);
    a = _mm256_set1_epi32(p[3]);
    c30 = _mm256_dpbusd_avx_epi32(c30, a, b0);
    if (NT == 2) c31 = _mm256_dpbusd_avx_epi32(c31, a, b1);
    a = _mm256_set1_epi32(p[4]);
    c40 = _mm256_dpbusd_avx_epi32(c40, a, b0);
    if (NT == 2) c41 = _mm256_dpbusd_avx_epi32(c41, a, b1);
    a = _mm256_set1_epi32(p[5]);
    c50 = _mm256_dpbusd_avx_epi32(c50, a, b0);
    if (NT == 2) c51 = _mm256_dpbusd_avx_epi32(c51, a, b1);
  }
  auto st = [&](int i, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + 8 * i), v); };
  st(0, c00), st(1, c01), st(2, c10), st(3, c11), st(4, c20), st(5, c21);
  st(6, c30), st(7, c31), st(8, c40), st(9, c41), st(10, c50), st(11, c51);
}

// wsum of the 8 rows of one tile: sum over the real columns (k < K) of q = c - 128.
__m256i tile_wsum(const uint8_t* tile, int64_t K) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi8(1);
  const int64_t full = K / 4, rest = K % 4;
  __m256i s = _mm256_setzero_si256();
  for (int64_t u = 0; u < full; ++u)
    s = _mm256_dpbusd_avx_epi32(s, ones, _mm256_xor_si256(load_codes(tile + u * 32), flip));
  if (rest) {
    const __m256i part = _mm256_set1_epi32(static_cast<int32_t>((1u << (8 * rest)) - 1u) & 0x01010101);
    s = _mm256_dpbusd_avx_epi32(s, part, _mm256_xor_si256(load_codes(tile + full * 32), flip));
  }
  return s;
}

// Rows [m0, m0 + mr) (mr <= 6) of d as one u8 panel of n_quads quads (rows past mr are 0); off[r] = o of row r.
void pack_panel(const int16_t* d, int64_t ldd, int64_t K, int64_t m0, int64_t mr, int64_t n_quads, int32_t* panel,
                int32_t* off) {
  for (int64_t r = 0; r < kRows; ++r) {
    uint8_t* out = reinterpret_cast<uint8_t*>(panel) + r * 4;  // byte j of quad u at out[24u + j]
    if (r >= mr) {
      off[r] = 0;
      for (int64_t u = 0; u < n_quads; ++u) std::memset(out + u * 24, 0, 4);
      continue;
    }
    const int16_t* dr = d + (m0 + r) * ldd;
    // Starting the min at 0 keeps o >= 0; xu = d + o <= 255 because a row's d lie in [qmin - zp, qmax - zp].
    int32_t lo = 0;
    for (int64_t k = 0; k < K; ++k) lo = std::min<int32_t>(lo, dr[w8a8_act_pos(k)]);
    const int32_t o = -lo;
    off[r] = o;
    for (int64_t u = 0; u < n_quads; ++u)
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t k = u * 4 + j;
        out[u * 24 + j] = k < K ? static_cast<uint8_t>(dr[w8a8_act_pos(k)] + o) : 0;
      }
  }
}

void store_row(const WeightView& w, __m256i exact, float act_scale, const float* bias, float* yrow, int64_t n0) {
  const int64_t valid = std::min<int64_t>(kTileN, w.N - n0);
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(act_scale), _mm256_loadu_ps(w.scales + n0));
  alignas(32) float b[kTileN] = {};
  if (bias) std::memcpy(b, bias + n0, static_cast<size_t>(valid) * sizeof(float));
  alignas(32) float out[kTileN];
  _mm256_store_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), s, _mm256_load_ps(b)));
  std::memcpy(yrow + n0, out, static_cast<size_t>(valid) * sizeof(float));
}

}  // namespace

void w8a8_gemm_avx_vnni(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                        float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin,
                        int64_t tile_end) {
  if (M <= 1) {
    w8a8_gemm_avx2(w, d, row_sum, M, ldd, act_scale, bias, y, ldy, tile_begin, tile_end);
    return;
  }
  const int64_t n_quads = w.K_pad / 4;
  const int64_t tile_bytes = n_quads * 32;
  // Rows per block: their packed activations (1 byte per column) take about 3/4 of a 1 MiB L2.
  const int64_t max_rows = std::max<int64_t>(kRows, (768 * 1024 / std::max<int64_t>(w.K_pad, 1)) / kRows * kRows);
  const int64_t n_blocks = (M + max_rows - 1) / max_rows;
  const int64_t block_rows = round_up((M + n_blocks - 1) / n_blocks, kRows);
  const int64_t panel_words = n_quads * kRows;
  thread_local std::vector<int32_t> panels, offs, acc;
  for (int64_t m0 = 0; m0 < M; m0 += block_rows) {
    const int64_t m_end = std::min(M, m0 + block_rows);
    const int64_t n_panels = (m_end - m0 + kRows - 1) / kRows;
    panels.resize(static_cast<size_t>(n_panels * panel_words));
    offs.resize(static_cast<size_t>(n_panels * kRows));
    acc.resize(static_cast<size_t>(n_panels * kRows * 2 * 8));
    for (int64_t i = 0; i < n_panels; ++i)
      pack_panel(d, ldd, w.K, m0 + i * kRows, std::min(kRows, m_end - m0 - i * kRows), n_quads,
                 panels.data() + i * panel_words, offs.data() + i * kRows);
    for (int64_t t = tile_begin; t < tile_end; t += 2) {
      const int64_t nt = std::min<int64_t>(2, tile_end - t);
      const uint8_t* w0 = w.qweight + t * tile_bytes;
      const uint8_t* w1 = nt == 2 ? w0 + tile_bytes : w0;
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t q0 = 0; q0 < n_quads; q0 += kChunkQuads) {
        const int64_t nq = std::min(kChunkQuads, n_quads - q0);
        for (int64_t i = 0; i < n_panels; ++i) {
          const int32_t* panel = panels.data() + i * panel_words + q0 * kRows;
          int32_t* a = acc.data() + i * kRows * 2 * 8;
          if (nt == 2)
            dot_6rows<2>(w0 + q0 * 32, w1 + q0 * 32, panel, nq, a);
          else
            dot_6rows<1>(w0 + q0 * 32, w0 + q0 * 32, panel, nq, a);
        }
      }
      const __m256i wsum[2] = {tile_wsum(w0, w.K), nt == 2 ? tile_wsum(w1, w.K) : _mm256_setzero_si256()};
      for (int64_t i = 0; i < n_panels; ++i) {
        const int64_t mr = std::min(kRows, m_end - m0 - i * kRows);
        for (int64_t r = 0; r < mr; ++r) {
          const __m256i o = _mm256_set1_epi32(offs[i * kRows + r]);
          for (int64_t j = 0; j < nt; ++j) {
            const __m256i v = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(acc.data() + ((i * kRows + r) * 2 + j) * 8));
            store_row(w, _mm256_sub_epi32(v, _mm256_mullo_epi32(o, wsum[j])), act_scale, bias,
                      y + (m0 + i * kRows + r) * ldy, (t + j) * kTileN);
          }
        }
      }
    }
  }
}

}  // namespace kernels
}  // namespace lwq
