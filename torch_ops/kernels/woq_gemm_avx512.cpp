// AVX-512 pieces of the weight-only GEMM (woq_gemm_avx2.h), for CPUs that have it (chosen at run time; the AVX2
// code stays the reference on others). Per output lane both perform the operations of their AVX2 twins in the
// same order, so the results are bit-identical.
// - woq_decode_row_avx512, the decode path's row loop: instruction-bound at M = 1 on AVX2 (per 8 weights of a
//   tile: AND, convert, FMA); a 512-bit register holds the same unit of two adjacent tiles, so one instruction
//   does the work of two, and four pairs run side by side (8 FMA chains, all in registers).
// - woq_micro_avx512, the blocked path's micro-kernel: a panel of 16 columns is one register, so 12 rows of x
//   take 12 accumulators (the AVX2 kernel: 6 rows x 2 registers).

#include "avx512_common.h"
#include "woq_gemm_avx2.h"

namespace lwq {
namespace kernels {

namespace {

using avx512::kPrefetchBytes;
using avx512::kScaleAhead;
using avx512::load_pair;
using avx512::row_mask;


constexpr int kpu(int bits) { return 32 / bits; }

// Pairs [t0, t0 + 2P) of tiles: the AVX2 loop of woq_gemm_avx2.cpp (decode_m1_int) with two tiles per register.
template <int BITS, int P>
void decode_pairs(const DecodeRow& r, int64_t t0) {
  constexpr int kKpu = kpu(BITS);
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  const WeightView& w = *r.w;
  const uint8_t* tp = w.qweight + t0 * r.tile_bytes;
  __m512i masks[kKpu];
  for (int j = 0; j < kKpu; ++j) masks[j] = _mm512_set1_epi32(static_cast<int>(kMask << (BITS * j)));
  __m512 yv[P];
  for (int p = 0; p < P; ++p) {
    const int64_t t = t0 + 2 * p;
    yv[p] = r.bias ? _mm512_maskz_loadu_ps(row_mask(w.N, t), r.bias + t * kTileN) : _mm512_setzero_ps();
  }
  const int64_t pair_bytes = 2 * r.tile_bytes;
  for (int64_t si = 0; si < r.n_segs; ++si) {
    const WoqSegment& s = r.segs[si];
    __m512 acc[P][2];
    for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm512_setzero_ps();
    // Columns of a unit cut by a group boundary: plain codes against plain x, column by column.
    auto cut_columns = [&](int64_t k, int64_t end) {
      for (; k < end; ++k) {
        const int64_t u = k / kKpu;
        const __m512 xb = _mm512_set1_ps(r.x[k]);
        const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(BITS * (k - u * kKpu)));
        for (int p = 0; p < P; ++p) {
          const __m512i v = load_pair(tp + p * pair_bytes + u * 32, r.tile_bytes);
          const __m512i code = _mm512_and_si512(_mm512_srl_epi32(v, shift), _mm512_set1_epi32(kMask));
          acc[p][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(code), xb, acc[p][0]);
        }
      }
    };
    const int64_t ua = (s.k0 + kKpu - 1) / kKpu, ub = s.k1 / kKpu;  // whole units [ua, ub)
    if (ua >= ub) {
      cut_columns(s.k0, s.k1);
    } else {
      if (s.k0 < ua * kKpu) cut_columns(s.k0, ua * kKpu);
      for (int64_t u = ua; u < ub; ++u) {
        __m512i v[P];
        for (int p = 0; p < P; ++p) {
          const uint8_t* pp = tp + p * pair_bytes + u * 32;
          if ((u & 1) == 0) {  // one prefetch per 64-byte line of each tile
            _mm_prefetch(reinterpret_cast<const char*>(pp + kPrefetchBytes), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(pp + r.tile_bytes + kPrefetchBytes), _MM_HINT_T0);
          }
          v[p] = load_pair(tp + p * pair_bytes + u * 32, r.tile_bytes);
        }
        const float* xa = r.xs + u * kKpu;
        #pragma GCC unroll 16
        for (int J = 0; J < kKpu; ++J) {
          const __m512 xb = _mm512_set1_ps(xa[J]);
          for (int p = 0; p < P; ++p) {
            // Same value as field_scaled<BITS, J> of the AVX2 file.
            const __m512i f = J == kKpu - 1 ? _mm512_srli_epi32(v[p], BITS * (kKpu - 1))
                                            : _mm512_and_si512(v[p], masks[J]);
            acc[p][J & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(f), xb, acc[p][J & 1]);
          }
        }
      }
      if (ub * kKpu < s.k1) cut_columns(ub * kKpu, s.k1);
    }
    const int64_t ahead = t0 + kScaleAhead * 2 * P;
    if (ahead < w.N_pad / kTileN) {
      for (int p = 0; p < P; ++p) {  // 16 floats per pair: one line
        _mm_prefetch(reinterpret_cast<const char*>(w.scales + s.g * w.N_pad + (ahead + 2 * p) * kTileN), _MM_HINT_T0);
      }
      if (w.zeros) _mm_prefetch(reinterpret_cast<const char*>(w.zeros + s.g * w.N_pad + ahead * kTileN), _MM_HINT_T0);
    }
    const __m512 sx = _mm512_set1_ps(r.sumx[si]);
    for (int p = 0; p < P; ++p) {
      const int64_t off = s.g * w.N_pad + (t0 + 2 * p) * kTileN;  // two tiles: 16 consecutive rows
      const __m512 sc = _mm512_loadu_ps(w.scales + off);
      const __m512 zf =
          w.zeros ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                        w.zeros + off))))
                  : _mm512_set1_ps(static_cast<float>(sym_zero(BITS)));
      const __m512 sz = _mm512_mul_ps(sc, zf);
      yv[p] = _mm512_fmadd_ps(sc, _mm512_add_ps(acc[p][0], acc[p][1]), yv[p]);
      yv[p] = _mm512_fnmadd_ps(sz, sx, yv[p]);
    }
  }
  for (int p = 0; p < P; ++p) {
    const int64_t t = t0 + 2 * p;
    _mm512_mask_storeu_ps(r.y + t * kTileN, row_mask(w.N, t), yv[p]);
  }
}

template <int BITS>
int64_t decode_row(const DecodeRow& r, int64_t tb, int64_t te) {
  constexpr int kPairs = 4;
  int64_t t = tb;
  for (; t + 2 * kPairs <= te; t += 2 * kPairs) decode_pairs<BITS, kPairs>(r, t);
  for (; t + 2 <= te; t += 2) decode_pairs<BITS, 1>(r, t);
  return t;
}

template <int MR>
void micro(const float* x, int64_t ldx, const float* buf, int64_t kc, float* y, int64_t ldy, const float* bias,
           bool first, __mmask16 mask) {
  __m512 acc[MR];
  const __m512 b0 = first && bias ? _mm512_maskz_loadu_ps(mask, bias) : _mm512_setzero_ps();
  for (int r = 0; r < MR; ++r) acc[r] = first ? b0 : _mm512_maskz_loadu_ps(mask, y + r * ldy);
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 wv = _mm512_load_ps(buf + k * 16);
    #pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[r * ldx + k]), acc[r]);
  }
  for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + r * ldy, mask, acc[r]);
}

}  // namespace

void woq_micro_avx512(int mr, const float* x, int64_t ldx, const float* buf, int64_t kc, float* y, int64_t ldy,
                      const float* bias, bool first, int valid_cols) {
  const __mmask16 mask = static_cast<__mmask16>((1u << valid_cols) - 1u);
  switch (mr) {
    case 12: micro<12>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 11: micro<11>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 10: micro<10>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 9: micro<9>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 8: micro<8>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 7: micro<7>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 6: micro<6>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 5: micro<5>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 4: micro<4>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 3: micro<3>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    case 2: micro<2>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
    default: micro<1>(x, ldx, buf, kc, y, ldy, bias, first, mask); break;
  }
}

int64_t woq_decode_row_avx512(const DecodeRow& r, int64_t tile_begin, int64_t tile_end) {
  switch (r.w->bits) {
    case 8: return decode_row<8>(r, tile_begin, tile_end);
    case 4: return decode_row<4>(r, tile_begin, tile_end);
    case 2: return decode_row<2>(r, tile_begin, tile_end);
    default: return tile_begin;
  }
}

}  // namespace kernels
}  // namespace lwq
