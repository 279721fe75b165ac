// The int8-activation GEMV (M = 1, 4-bit codes, blocks of 32 whole columns) on AVX-512 VNNI, for CPUs that have
// it (woq_a8.h: woq_a8_gemm_avx512, chosen by the kernel table; the AVX2 loop a8_gemv4 stays the twin). A 512-bit
// register holds the same unit of two adjacent tiles, and `vpdpbusd` multiplies the u8 codes by the s8
// activations and adds groups of 4 products into int32 lanes: per unit and pair, 3 decode ops and 2 VNNI ops
// where AVX2 needs, per tile, 3 decode ops, 2 `maddubs` and 2 adds. The block sums are the same exact integers,
// and the fp32 steps (zero-point correction, d * I, scale * acc) are the AVX2 loop's, so the bits are the same.
// Compiled with -mavx512vnni (CMakeLists.txt): the table picks it only where the CPU has AVX512-VNNI.
#include <cstring>

#include "avx512_common.h"
#include "woq_a8.h"

namespace lwq {
namespace kernels {

namespace {

using avx512::kPrefetchBytes;
using avx512::kScaleAhead;
using avx512::load_pair;
using avx512::row_mask;


inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Tiles [t0, t0 + 2P): P pairs side by side.
template <int P, bool ZEROS>
void gemv_pairs(const WeightView& w, const A8Block* blocks, int64_t n_blocks, const A8Acts& acts, const float* bias,
                float* y, int64_t t0, int64_t tile_bytes) {
  const uint8_t* tp[P];
  __m512 yv[P];
  for (int p = 0; p < P; ++p) {
    const int64_t t = t0 + 2 * p;
    tp[p] = w.qweight + t * tile_bytes;
    yv[p] = bias ? _mm512_maskz_loadu_ps(row_mask(w.N, t), bias + t * kTileN) : _mm512_setzero_ps();
  }
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const int8_t* xq = acts.xq;
  for (int64_t b = 0; b < n_blocks;) {
    const int64_t g = blocks[b].g;
    __m512 acc[P];
    for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
    bool group_end;
    do {
      group_end = blocks[b].seg_end;
      __m512i s32[P];
      for (int p = 0; p < P; ++p) s32[p] = _mm512_setzero_si512();
      #pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m512i xe = broadcast4(xq + u * 8), xo = broadcast4(xq + u * 8 + 4);
        #pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
          if ((u & 1) == 0) {  // one prefetch per 64-byte line of each tile
            _mm_prefetch(reinterpret_cast<const char*>(tp[p] + u * 32 + kPrefetchBytes), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(tp[p] + tile_bytes + u * 32 + kPrefetchBytes), _MM_HINT_T0);
          }
          const __m512i v = load_pair(tp[p] + u * 32, tile_bytes);
          const __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
          s32[p] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(s32[p], lo, xe), hi, xo);
        }
      }
      const int32_t xs = acts.xsum[b];
      const __m512 dv = _mm512_set1_ps(acts.d[b]);
      for (int p = 0; p < P; ++p) {
        __m512i iv;
        if (ZEROS) {
          const __m128i z8 =
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.zeros + g * w.N_pad + (t0 + 2 * p) * kTileN));
          iv = _mm512_sub_epi32(s32[p], _mm512_mullo_epi32(_mm512_cvtepu8_epi32(z8), _mm512_set1_epi32(xs)));
        } else {
          iv = _mm512_sub_epi32(s32[p], _mm512_set1_epi32(sym_zero(4) * xs));
        }
        acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iv), dv, acc[p]);
        tp[p] += 4 * 32;
      }
      xq += kA8Block;
      ++b;
    } while (!group_end);
    const int64_t ahead = t0 + kScaleAhead * 2 * P;
    if (ahead < w.N_pad / kTileN) {
      for (int p = 0; p < P; ++p)  // 16 floats per pair: one line
        _mm_prefetch(reinterpret_cast<const char*>(w.scales + g * w.N_pad + (ahead + 2 * p) * kTileN), _MM_HINT_T0);
      if (ZEROS) _mm_prefetch(reinterpret_cast<const char*>(w.zeros + g * w.N_pad + ahead * kTileN), _MM_HINT_T0);
    }
    for (int p = 0; p < P; ++p)
      yv[p] = _mm512_fmadd_ps(_mm512_loadu_ps(w.scales + g * w.N_pad + (t0 + 2 * p) * kTileN), acc[p], yv[p]);
  }
  for (int p = 0; p < P; ++p) {
    const int64_t t = t0 + 2 * p;
    _mm512_mask_storeu_ps(y + t * kTileN, row_mask(w.N, t), yv[p]);
  }
}

template <bool ZEROS>
int64_t gemv(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, const float* bias,
             float* y, int64_t tb, int64_t te) {
  constexpr int kPairs = 2;
  const int64_t tile_bytes = w.K_pad / k_per_unit(4) * unit_bytes(4);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  int64_t t = tb;
  for (; t + 2 * kPairs <= te; t += 2 * kPairs)
    gemv_pairs<kPairs, ZEROS>(w, blocks.data(), n_blocks, acts, bias, y, t, tile_bytes);
  for (; t + 2 <= te; t += 2) gemv_pairs<1, ZEROS>(w, blocks.data(), n_blocks, acts, bias, y, t, tile_bytes);
  return t;
}

}  // namespace

void woq_a8_gemm_avx512(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                        const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end) {
  // Tiles two at a time; at most one is left for the AVX2 loop, which also takes every other case.
  if (M == 1 && w.bits == 4 && tile_begin < tile_end && woq_a8_whole_blocks(blocks))
    tile_begin = w.zeros ? gemv<true>(w, blocks, acts, bias, y, tile_begin, tile_end)
                         : gemv<false>(w, blocks, acts, bias, y, tile_begin, tile_end);
  woq_a8_gemm_avx2(w, blocks, acts, M, bias, y, ldy, tile_begin, tile_end);
}

}  // namespace kernels
}  // namespace lwq
