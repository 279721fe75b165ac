// AVX2/FMA weight-only GEMM over the packed layout of format.h. Two paths (woq_gemm_avx2.h):
//
// Decode (small M, memory-bound): one 32-byte load gives one field per lane for the 8 rows of a tile, so a
// decoded column is directly a vector of 8 outputs. Integer codes are not dequantized at all: per group we sum
// code * x in fp32 and finish with y += scale * (acc - zero * sum(x over the group)). A middle field is isolated
// with a single AND (it stays multiplied by 2^(bits*j)); x is multiplied by 2^-(bits*j) once per call instead,
// which is exact for powers of two. Codes are decoded once per tile and reused for up to 4 rows of x, and
// several tiles run side by side so that enough FMA chains are in flight for M = 1.
//
// Blocked (large M, compute-bound): a panel of 2 tiles x 256 columns is dequantized exactly as the reference does
// (scale * (code - zero), scale * table[code]) into an L1 buffer and multiplied by a 6x16 register-blocked FMA
// micro-kernel over blocks of rows of x.
//
// Both paths handle any grouping: columns are walked as runs of one group ("segments"); whole units inside a
// segment take the unrolled code, units cut by a group boundary fall back to per-column decoding.
// Every output is summed in an order fixed by (path, K, grouping): neither M nor the tile range changes its bits.
// woq_gemm_avx512_path (the kernel table's choice where the CPU has AVX-512) runs this code with the M = 1 row
// loop and the micro-kernel handed over to their twins in woq_gemm_avx512.cpp, which perform the same operations
// per output (same bits, tested).
#include "woq_gemm_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace lwq {
namespace kernels {

namespace {

template <class F, int... I>
inline void unroll_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
inline void unroll(F&& f) {
  unroll_impl(f, std::make_integer_sequence<int, N>{});
}

constexpr int kpu_of(int bits) { return bits == 8 ? 4 : bits == 4 ? 8 : bits == 2 ? 16 : 32; }
constexpr int unit_bytes_of(int bits) { return bits == 3 ? 96 : 32; }

using Segment = WoqSegment;

void find_segments(const WeightView& w, std::vector<Segment>& segs) {
  segs.clear();
  int64_t k0 = 0;
  for (int64_t k = 1; k <= w.K_pad; ++k) {
    if (k == w.K_pad || w.col_group[k] != w.col_group[k0]) {
      segs.push_back({k0, k, w.col_group[k0]});
      k0 = k;
    }
  }
}

inline __m256i loadu_si(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Lanes [0, valid) set.
inline __m256i lane_mask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), idx);
}
inline int64_t valid_rows(const WeightView& w, int64_t tile) {
  return std::max<int64_t>(0, std::min<int64_t>(kTileN, w.N - tile * kTileN));
}

// Field J (width BITS) of every lane as a float: the plain code for the first and the last field, code *
// 2^(BITS*J) for the others (one AND, no shift). x_factor gives the matching factor for x.
template <int BITS, int J>
inline __m256 field_scaled(__m256i v) {
  constexpr int kKpu = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  if constexpr (J == kKpu - 1) {
    return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, BITS * J));
  } else {
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(kMask << (BITS * J)))));
  }
}
inline float x_factor(int bits, int j) {
  const int kpu = 32 / bits;
  return j == 0 || j == kpu - 1 ? 1.0f : std::ldexp(1.0f, -bits * j);
}

// Field J (width BITS) of every lane as the plain code.
template <int BITS, int J>
inline __m256i field_raw(__m256i v) {
  constexpr int kKpu = 32 / BITS;
  const __m256i mask = _mm256_set1_epi32(static_cast<int>((1u << BITS) - 1u));
  if constexpr (J == kKpu - 1) return _mm256_srli_epi32(v, BITS * J);
  if constexpr (J == 0) return _mm256_and_si256(v, mask);
  return _mm256_and_si256(_mm256_srli_epi32(v, BITS * J), mask);
}

// 3-bit code of column J of a unit: 2 low bits from plane J/16, the high bit from plane 2.
template <int J>
inline __m256i code3_raw(const __m256i* planes) {
  const __m256i lo = field_raw<2, J % 16>(planes[J / 16]);
  const __m256i four = _mm256_set1_epi32(4);
  __m256i hi;
  if constexpr (J >= 2)
    hi = _mm256_and_si256(_mm256_srli_epi32(planes[2], J - 2), four);
  else
    hi = _mm256_and_si256(_mm256_slli_epi32(planes[2], 2 - J), four);
  return _mm256_or_si256(lo, hi);
}

// Code of column j (run-time) of a unit, for units cut by a group boundary.
inline __m256i code_raw_rt(const uint8_t* unit, int bits, int j) {
  if (bits == 3) {
    const __m256i lo = loadu_si(unit + (j / 16) * 32), hi = loadu_si(unit + 64);
    const __m256i l = _mm256_and_si256(_mm256_srl_epi32(lo, _mm_cvtsi32_si128(2 * (j % 16))), _mm256_set1_epi32(3));
    const __m256i h = _mm256_and_si256(_mm256_srl_epi32(hi, _mm_cvtsi32_si128(j)), _mm256_set1_epi32(1));
    return _mm256_or_si256(l, _mm256_slli_epi32(h, 2));
  }
  const __m256i v = loadu_si(unit);
  const int mask = bits == 8 ? 0xFF : (1 << bits) - 1;
  return _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(bits * j)), _mm256_set1_epi32(mask));
}

// 16-entry value table as two 8-entry halves; bits above bit 3 of the index are ignored.
struct Table {
  __m256 lo, hi;
};
inline __m256 lookup(const Table& t, __m256i idx) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, idx), _mm256_permutevar8x32_ps(t.hi, idx),
                          _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// Calls f(k, code) for the columns [a, b) of one tile (code: __m256i, plain code per lane).
template <int BITS, class F>
inline void for_each_code(const uint8_t* tile, int64_t a, int64_t b, F&& f) {
  constexpr int kKpu = kpu_of(BITS), kUb = unit_bytes_of(BITS);
  for (int64_t k = a; k < b;) {
    const int64_t u = k / kKpu, ku = u * kKpu;
    const uint8_t* unit = tile + u * kUb;
    if (k == ku && ku + kKpu <= b) {
      if constexpr (BITS == 3) {
        const __m256i planes[3] = {loadu_si(unit), loadu_si(unit + 32), loadu_si(unit + 64)};
        unroll<kKpu>([&](auto J) { f(ku + J, code3_raw<J>(planes)); });
      } else {
        const __m256i v = loadu_si(unit);
        unroll<kKpu>([&](auto J) { f(ku + J, field_raw<BITS, J>(v)); });
      }
      k = ku + kKpu;
    } else {
      const int64_t end = std::min(b, ku + kKpu);
      for (; k < end; ++k) f(k, code_raw_rt(unit, BITS, static_cast<int>(k - ku)));
    }
  }
}

// Everything one call needs, shared by both paths.
struct Args {
  const WeightView* w;
  const float* x;
  int64_t ldx, M;
  const float* bias;
  float* y;
  int64_t ldy;
  int64_t tile_bytes;
  const std::vector<Segment>* segs;
  Table table;
  // Decode path, integer codebook: x times the field factors ([M][K_pad]; xs_b: the high-bit plane of 3-bit
  // codes, times 4) and the sum of x over each segment ([M][n_segs]).
  const float* xs_a;
  const float* xs_b;
  const float* sumx;
  bool avx512;  // one row of integer codes: woq_decode_row_avx512
};

// ---------------------------------------------------------------------------------------------------------------
// Decode path

// Rows [m0, m0 + MR) of x times tiles [t0, t0 + T). Each output keeps two partial sums per segment (even and odd
// columns) so that M = 1 has 2T independent FMA chains.
template <int BITS, bool kTable, int MR, int T>
void decode_block(const Args& a, int64_t t0, int64_t m0) {
  const WeightView& w = *a.w;
  constexpr int kKpu = kpu_of(BITS), kUb = unit_bytes_of(BITS);
  const uint8_t* tp[T];
  __m256 yv[T][MR];
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    tp[t] = w.qweight + (t0 + t) * a.tile_bytes;
    const __m256 b0 = a.bias ? _mm256_maskload_ps(a.bias + (t0 + t) * kTileN, lane_mask(valid_rows(w, t0 + t)))
                             : _mm256_setzero_ps();
    #pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) yv[t][m] = b0;
  }
  const std::vector<Segment>& segs = *a.segs;
  const int64_t n_segs = static_cast<int64_t>(segs.size());
  for (int64_t si = 0; si < n_segs; ++si) {
    const Segment& s = segs[si];
    __m256 acc[T][MR][2];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
      #pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[t][m][0] = acc[t][m][1] = _mm256_setzero_ps();
    for (int64_t k = s.k0; k < s.k1;) {
      const int64_t u = k / kKpu, ku = u * kKpu;
      if (k == ku && ku + kKpu <= s.k1) {
        if constexpr (kTable) {
          __m256i v[T];
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) v[t] = loadu_si(tp[t] + u * kUb);
          const float* xr = a.x + m0 * a.ldx + ku;
          unroll<kKpu>([&](auto J) {
            __m256 c[T];
            #pragma GCC unroll 8
            for (int t = 0; t < T; ++t) c[t] = lookup(a.table, J == 0 ? v[t] : _mm256_srli_epi32(v[t], 4 * J));
            #pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const __m256 xb = _mm256_broadcast_ss(xr + m * a.ldx + J);
              #pragma GCC unroll 8
              for (int t = 0; t < T; ++t) acc[t][m][J & 1] = _mm256_fmadd_ps(c[t], xb, acc[t][m][J & 1]);
            }
          });
        } else if constexpr (BITS == 3) {
          __m256i v[T][3];
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t)
            #pragma GCC unroll 8
            for (int p = 0; p < 3; ++p) v[t][p] = loadu_si(tp[t] + u * kUb + 32 * p);
          const float* xa = a.xs_a + m0 * w.K_pad + ku;
          const float* xb = a.xs_b + m0 * w.K_pad + ku;
          unroll<kKpu>([&](auto J) {
            __m256 lo[T], hi[T];
            #pragma GCC unroll 8
            for (int t = 0; t < T; ++t) {
              lo[t] = field_scaled<2, J % 16>(v[t][J / 16]);
              hi[t] = field_scaled<1, J>(v[t][2]);
            }
            #pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const __m256 xl = _mm256_broadcast_ss(xa + m * w.K_pad + J);
              const __m256 xh = _mm256_broadcast_ss(xb + m * w.K_pad + J);
              #pragma GCC unroll 8
              for (int t = 0; t < T; ++t) {
                acc[t][m][J & 1] = _mm256_fmadd_ps(lo[t], xl, acc[t][m][J & 1]);
                acc[t][m][J & 1] = _mm256_fmadd_ps(hi[t], xh, acc[t][m][J & 1]);
              }
            }
          });
        } else {
          __m256i v[T];
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) v[t] = loadu_si(tp[t] + u * kUb);
          const float* xa = a.xs_a + m0 * w.K_pad + ku;
          unroll<kKpu>([&](auto J) {
            __m256 c[T];
            #pragma GCC unroll 8
            for (int t = 0; t < T; ++t) c[t] = field_scaled<BITS, J>(v[t]);
            #pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
              const __m256 xb = _mm256_broadcast_ss(xa + m * w.K_pad + J);
              #pragma GCC unroll 8
              for (int t = 0; t < T; ++t) acc[t][m][J & 1] = _mm256_fmadd_ps(c[t], xb, acc[t][m][J & 1]);
            }
          });
        }
        k = ku + kKpu;
      } else {
        // A unit cut by a group boundary: plain codes against plain x, column by column.
        const int64_t end = std::min(s.k1, ku + kKpu);
        for (; k < end; ++k) {
          __m256 c[T];
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            const __m256i code = code_raw_rt(tp[t] + u * kUb, BITS, static_cast<int>(k - ku));
            c[t] = kTable ? lookup(a.table, code) : _mm256_cvtepi32_ps(code);
          }
          #pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            const __m256 xb = _mm256_broadcast_ss(a.x + (m0 + m) * a.ldx + k);
            #pragma GCC unroll 8
            for (int t = 0; t < T; ++t) acc[t][m][0] = _mm256_fmadd_ps(c[t], xb, acc[t][m][0]);
          }
        }
      }
    }
    // y += scale * acc (tables), y += scale * acc - scale * zero * sum(x) (integers).
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const int64_t off = s.g * w.N_pad + (t0 + t) * kTileN;
      const __m256 sc = _mm256_loadu_ps(w.scales + off);
      __m256 sz = _mm256_setzero_ps();
      if constexpr (!kTable) {
        const __m256 zf =
            w.zeros ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                          reinterpret_cast<const __m128i*>(w.zeros + off))))
                    : _mm256_set1_ps(static_cast<float>(sym_zero(BITS)));
        sz = _mm256_mul_ps(sc, zf);
      }
      #pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        yv[t][m] = _mm256_fmadd_ps(sc, _mm256_add_ps(acc[t][m][0], acc[t][m][1]), yv[t][m]);
        if constexpr (!kTable)
          yv[t][m] = _mm256_fnmadd_ps(sz, _mm256_set1_ps(a.sumx[(m0 + m) * n_segs + si]), yv[t][m]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const int64_t valid = valid_rows(w, t0 + t);
    #pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      float* yp = a.y + (m0 + m) * a.ldy + (t0 + t) * kTileN;
      if (valid == kTileN)
        _mm256_storeu_ps(yp, yv[t][m]);
      else
        _mm256_maskstore_ps(yp, lane_mask(valid), yv[t][m]);
    }
  }
}

// One row of x (M = 1, or the last row of a larger M) with integer codes of 2, 4 or 8 bits: per output the same
// operations in the same order as decode_block<BITS, false, 1, T> (so the bits match every other row block), but
// register-lean: 3 tiles (6 FMA chains, enough to cover the FMA latency), the outputs kept in memory during the
// column loop and the field masks read from L1. decode_block<.., 1, 4> ran out of the 16 ymm registers and
// spilled accumulators, which put a store-to-load round trip inside the FMA chains (about 1.4x slower).
constexpr int kM1Tiles = 3;
template <int BITS>
void decode_m1_int(const Args& a, int64_t t0, int64_t m0) {
  constexpr int T = kM1Tiles;
  constexpr int kKpu = kpu_of(BITS), kUb = unit_bytes_of(BITS);
  const WeightView& w = *a.w;
  const int64_t tile_bytes = a.tile_bytes;
  const uint8_t* tp = w.qweight + t0 * tile_bytes;
  const float* xs = a.xs_a + m0 * w.K_pad;
  const float* xr = a.x + m0 * a.ldx;
  const std::vector<Segment>& segs = *a.segs;
  const int64_t n_segs = static_cast<int64_t>(segs.size());
  const float* sumx = a.sumx + m0 * n_segs;
  alignas(32) float ybuf[T][kTileN];
  alignas(32) __m256i field_masks[kKpu];
  for (int j = 0; j < kKpu; ++j)
    field_masks[j] = _mm256_set1_epi32(static_cast<int>(((1u << BITS) - 1u) << (BITS * j)));
  for (int t = 0; t < T; ++t) {
    const __m256 b0 = a.bias ? _mm256_maskload_ps(a.bias + (t0 + t) * kTileN, lane_mask(valid_rows(w, t0 + t)))
                             : _mm256_setzero_ps();
    _mm256_store_ps(ybuf[t], b0);
  }
  for (int64_t si = 0; si < n_segs; ++si) {
    const Segment& s = segs[si];
    __m256 acc[T][2];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    // Columns of a unit cut by a group boundary: plain codes against plain x, column by column.
    auto cut_columns = [&](int64_t k, int64_t end) {
      for (; k < end; ++k) {
        const int64_t u = k / kKpu, ku = u * kKpu;
        const __m256 xb = _mm256_broadcast_ss(xr + k);
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i code = code_raw_rt(tp + t * tile_bytes + u * kUb, BITS, static_cast<int>(k - ku));
          acc[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(code), xb, acc[t][0]);
        }
      }
    };
    const int64_t ua = (s.k0 + kKpu - 1) / kKpu, ub = s.k1 / kKpu;  // whole units [ua, ub)
    if (ua >= ub) {
      cut_columns(s.k0, s.k1);
    } else {
      if (s.k0 < ua * kKpu) cut_columns(s.k0, ua * kKpu);
      for (int64_t u = ua; u < ub; ++u) {
        const uint8_t* up = tp + u * kUb;
        __m256i v[T];
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) v[t] = loadu_si(up + t * tile_bytes);
        const float* xa = xs + u * kKpu;
        // The field masks are read from memory at each use: hoisted out of the loop they take 7 registers.
        const __m256i* masks = field_masks;
        asm("" : "+r"(masks));
        unroll<kKpu>([&](auto J) {
          const __m256 xb = _mm256_broadcast_ss(xa + J);
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            // Same value as field_scaled<BITS, J>.
            const __m256i f = J == kKpu - 1 ? _mm256_srli_epi32(v[t], BITS * J)
                                            : _mm256_and_si256(v[t], _mm256_load_si256(masks + J));
            acc[t][J & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(f), xb, acc[t][J & 1]);
          }
        });
      }
      if (ub * kKpu < s.k1) cut_columns(ub * kKpu, s.k1);
    }
    const __m256 sx = _mm256_set1_ps(sumx[si]);
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const int64_t off = s.g * w.N_pad + (t0 + t) * kTileN;
      const __m256 sc = _mm256_loadu_ps(w.scales + off);
      const __m256 zf = w.zeros ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zeros + off))))
                                : _mm256_set1_ps(static_cast<float>(sym_zero(BITS)));
      const __m256 sz = _mm256_mul_ps(sc, zf);
      __m256 yv = _mm256_fmadd_ps(sc, _mm256_add_ps(acc[t][0], acc[t][1]), _mm256_load_ps(ybuf[t]));
      yv = _mm256_fnmadd_ps(sz, sx, yv);
      _mm256_store_ps(ybuf[t], yv);
    }
  }
  for (int t = 0; t < T; ++t) {
    const int64_t valid = valid_rows(w, t0 + t);
    float* yp = a.y + m0 * a.ldy + (t0 + t) * kTileN;
    const __m256 yv = _mm256_load_ps(ybuf[t]);
    if (valid == kTileN)
      _mm256_storeu_ps(yp, yv);
    else
      _mm256_maskstore_ps(yp, lane_mask(valid), yv);
  }
}

// Tiles [tb, te) for rows [m0, m0 + MR): as many tiles side by side as registers allow.
template <int BITS, bool kTable, int MR>
void decode_rows(const Args& a, int64_t tb, int64_t te, int64_t m0) {
  constexpr int kT = MR == 1 ? (BITS == 3 ? 2 : 4) : MR == 2 ? 2 : 1;
  int64_t t = tb;
  if constexpr (MR == 1 && !kTable && BITS != 3) {
    if (a.avx512) {  // the same bits, two tiles per instruction (woq_gemm_avx512.cpp)
      const std::vector<Segment>& segs = *a.segs;
      const int64_t n_segs = static_cast<int64_t>(segs.size());
      const DecodeRow row{a.w,          a.xs_a + m0 * a.w->K_pad, a.x + m0 * a.ldx, segs.data(), n_segs,
                          a.sumx + m0 * n_segs, a.bias,            a.y + m0 * a.ldy, a.tile_bytes};
      t = woq_decode_row_avx512(row, t, te);
    }
    for (; t + kM1Tiles <= te; t += kM1Tiles) decode_m1_int<BITS>(a, t, m0);
  } else {
    for (; t + kT <= te; t += kT) decode_block<BITS, kTable, MR, kT>(a, t, m0);
  }
  for (; t < te; ++t) decode_block<BITS, kTable, MR, 1>(a, t, m0);
}

template <int BITS, bool kTable>
void decode_path(Args a, int64_t tb, int64_t te) {
  const WeightView& w = *a.w;
  const int64_t M = a.M, K_pad = w.K_pad;
  thread_local std::vector<float> xs_a, xs_b, sumx;
  if constexpr (!kTable) {
    // x times the field factors, and per-segment sums of x for the zero-point term.
    const int bits_a = BITS == 3 ? 2 : BITS, kpu_a = 32 / bits_a;
    float fa[32], fb[32];
    for (int j = 0; j < 32; ++j) {
      fa[j] = x_factor(bits_a, j % kpu_a);
      fb[j] = 4.0f * x_factor(1, j);
    }
    xs_a.resize(static_cast<size_t>(M * K_pad));
    if (BITS == 3) xs_b.resize(static_cast<size_t>(M * K_pad));
    const std::vector<Segment>& segs = *a.segs;
    sumx.resize(static_cast<size_t>(M) * segs.size());
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = a.x + m * a.ldx;
      for (int64_t k = 0; k < K_pad; ++k) xs_a[m * K_pad + k] = xr[k] * fa[k % kpu_a];
      if (BITS == 3)
        for (int64_t k = 0; k < K_pad; ++k) xs_b[m * K_pad + k] = xr[k] * fb[k % 32];
      for (size_t si = 0; si < segs.size(); ++si) {
        float sum = 0.0f;
        for (int64_t k = segs[si].k0; k < segs[si].k1; ++k) sum += xr[k];
        sumx[m * segs.size() + si] = sum;
      }
    }
    a.xs_a = xs_a.data();
    a.xs_b = xs_b.data();
    a.sumx = sumx.data();
  }
  // Up to 4 rows share each decoded column; a group of 4 tiles (16 KiB per tile at K = 4096, int4) stays in L2
  // while the row blocks walk over it. With a single row block (M <= 4) there is nothing to reuse, and one group
  // lets decode_rows keep its widest tile blocks.
  const int64_t tile_group = M <= 4 ? te - tb : 4;
  for (int64_t t = tb; t < te; t += tile_group) {
    const int64_t t1 = std::min(te, t + tile_group);
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) decode_rows<BITS, kTable, 4>(a, t, t1, m0);
    switch (M - m0) {
      case 3: decode_rows<BITS, kTable, 3>(a, t, t1, m0); break;
      case 2: decode_rows<BITS, kTable, 2>(a, t, t1, m0); break;
      case 1: decode_rows<BITS, kTable, 1>(a, t, t1, m0); break;
      default: break;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Blocked path

constexpr int64_t kKc = 256;  // columns per panel: 2 tiles x 256 x 4 B = 16 KiB, half of L1
constexpr int64_t kMc = 192;  // rows of x per block: 192 x 256 x 4 B = 192 KiB, in L2
constexpr int kPanelStride = 16;

// buf[k - kc0][8t + r] = value of (row 8(p + t) + r, column k), for k in [kc0, kc0 + kc).
template <int BITS, bool kTable>
void dequant_panel(const Args& a, int64_t p, int nt, int64_t kc0, int64_t kc, size_t seg_first, float* buf) {
  const WeightView& w = *a.w;
  const std::vector<Segment>& segs = *a.segs;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* tile = w.qweight + (p + t) * a.tile_bytes;
    float* col = buf + kTileN * t - kc0 * kPanelStride;
    for (size_t si = seg_first; si < segs.size() && segs[si].k0 < kc0 + kc; ++si) {
      const int64_t lo = std::max(segs[si].k0, kc0), hi = std::min(segs[si].k1, kc0 + kc);
      const int64_t off = segs[si].g * w.N_pad + (p + t) * kTileN;
      const __m256 sc = _mm256_loadu_ps(w.scales + off);
      if constexpr (kTable) {
        for_each_code<BITS>(tile, lo, hi, [&](int64_t k, __m256i c) {
          _mm256_store_ps(col + k * kPanelStride, _mm256_mul_ps(sc, lookup(a.table, c)));
        });
      } else {
        const __m256 zf = w.zeros ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zeros + off))))
                                  : _mm256_set1_ps(static_cast<float>(sym_zero(BITS)));
        // (code - zero) is exact in fp32, so the value is bit-identical to the reference's scale * (code - zero).
        for_each_code<BITS>(tile, lo, hi, [&](int64_t k, __m256i c) {
          _mm256_store_ps(col + k * kPanelStride, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), zf), sc));
        });
      }
    }
  }
}

// y[MR rows, 8 NT columns] (+)= x[MR rows, kc] * panel. The first column block starts from the bias; the others
// continue from what the previous block stored in y.
template <int MR, int NT>
void micro_kernel(const float* x, int64_t ldx, const float* buf, int64_t kc, float* y, int64_t ldy,
                  const float* bias, bool first, const __m256i* mask, bool full) {
  __m256 acc[MR][NT];
  #pragma GCC unroll 8
  for (int v = 0; v < NT; ++v) {
    const __m256 b0 = first && bias ? _mm256_maskload_ps(bias + 8 * v, mask[v]) : _mm256_setzero_ps();
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      acc[r][v] = first ? b0 : full ? _mm256_loadu_ps(y + r * ldy + 8 * v) : _mm256_maskload_ps(y + r * ldy + 8 * v, mask[v]);
  }
  for (int64_t k = 0; k < kc; ++k) {
    __m256 wv[NT];
    #pragma GCC unroll 8
    for (int v = 0; v < NT; ++v) wv[v] = _mm256_load_ps(buf + k * kPanelStride + 8 * v);
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * ldx + k);
      #pragma GCC unroll 8
      for (int v = 0; v < NT; ++v) acc[r][v] = _mm256_fmadd_ps(wv[v], xb, acc[r][v]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 8
    for (int v = 0; v < NT; ++v) {
      if (full)
        _mm256_storeu_ps(y + r * ldy + 8 * v, acc[r][v]);
      else
        _mm256_maskstore_ps(y + r * ldy + 8 * v, mask[v], acc[r][v]);
    }
}

template <int NT>
void micro_rows(int mr, const float* x, int64_t ldx, const float* buf, int64_t kc, float* y, int64_t ldy,
                const float* bias, bool first, const __m256i* mask, bool full) {
  switch (mr) {
    case 6: micro_kernel<6, NT>(x, ldx, buf, kc, y, ldy, bias, first, mask, full); break;
    case 5: micro_kernel<5, NT>(x, ldx, buf, kc, y, ldy, bias, first, mask, full); break;
    case 4: micro_kernel<4, NT>(x, ldx, buf, kc, y, ldy, bias, first, mask, full); break;
    case 3: micro_kernel<3, NT>(x, ldx, buf, kc, y, ldy, bias, first, mask, full); break;
    case 2: micro_kernel<2, NT>(x, ldx, buf, kc, y, ldy, bias, first, mask, full); break;
    default: micro_kernel<1, NT>(x, ldx, buf, kc, y, ldy, bias, first, mask, full); break;
  }
}

template <int BITS, bool kTable>
void blocked_path(const Args& a, int64_t tb, int64_t te) {
  const WeightView& w = *a.w;
  const std::vector<Segment>& segs = *a.segs;
  alignas(64) float buf[kKc * kPanelStride];
  size_t seg_first = 0;
  for (int64_t kc0 = 0; kc0 < w.K_pad; kc0 += kKc) {
    const int64_t kc = std::min(kKc, w.K_pad - kc0);
    while (segs[seg_first].k1 <= kc0) ++seg_first;
    for (int64_t mc0 = 0; mc0 < a.M; mc0 += kMc) {
      const int64_t mc_end = std::min(a.M, mc0 + kMc);
      for (int64_t p = tb; p < te; p += 2) {
        const int nt = static_cast<int>(std::min<int64_t>(2, te - p));
        dequant_panel<BITS, kTable>(a, p, nt, kc0, kc, seg_first, buf);
        const int64_t valid0 = valid_rows(w, p), valid1 = nt == 2 ? valid_rows(w, p + 1) : 0;
        const __m256i mask[2] = {lane_mask(valid0), lane_mask(valid1)};
        const bool full = nt == 2 ? valid1 == kTileN : valid0 == kTileN;
        const float* bias = a.bias ? a.bias + p * kTileN : nullptr;
        if (a.avx512 && nt == 2) {  // the same bits, 12 rows x 16 columns per step (woq_gemm_avx512.cpp)
          for (int64_t m0 = mc0; m0 < mc_end; m0 += 12)
            woq_micro_avx512(static_cast<int>(std::min<int64_t>(12, mc_end - m0)), a.x + m0 * a.ldx + kc0, a.ldx,
                             buf, kc, a.y + m0 * a.ldy + p * kTileN, a.ldy, bias, kc0 == 0,
                             static_cast<int>(valid0 + valid1));
          continue;
        }
        for (int64_t m0 = mc0; m0 < mc_end; m0 += 6) {
          const int mr = static_cast<int>(std::min<int64_t>(6, mc_end - m0));
          const float* xp = a.x + m0 * a.ldx + kc0;
          float* yp = a.y + m0 * a.ldy + p * kTileN;
          if (nt == 2)
            micro_rows<2>(mr, xp, a.ldx, buf, kc, yp, a.ldy, bias, kc0 == 0, mask, full);
          else
            micro_rows<1>(mr, xp, a.ldx, buf, kc, yp, a.ldy, bias, kc0 == 0, mask, full);
        }
      }
    }
  }
}

template <int BITS, bool kTable>
void run(const Args& a, int64_t tb, int64_t te, WoqPath path) {
  if (path == WoqPath::Blocked)
    blocked_path<BITS, kTable>(a, tb, te);
  else
    decode_path<BITS, kTable>(a, tb, te);
}

// Both entry points; avx512 hands the M = 1 row loop of integer codes and the micro-kernel to woq_gemm_avx512.cpp.
void gemm(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y, int64_t ldy,
          int64_t tile_begin, int64_t tile_end, WoqPath path, bool avx512) {
  if (M <= 0 || tile_begin >= tile_end) return;
  const bool table = w.codebook != Codebook::Int;
  if (table && w.bits != 4) {
    // Value tables have 16 entries: only 4-bit codes index them (PackedWeight never builds anything else).
    woq_gemm_ref(w, x, M, ldx, bias, y, ldy, tile_begin, tile_end);
    return;
  }
  thread_local std::vector<Segment> segs;
  find_segments(w, segs);
  Args a{};
  a.w = &w;
  a.x = x;
  a.ldx = ldx;
  a.M = M;
  a.bias = bias;
  a.y = y;
  a.ldy = ldy;
  a.tile_bytes = w.K_pad / k_per_unit(w.bits) * unit_bytes(w.bits);
  a.segs = &segs;
  a.avx512 = avx512;
  if (table) {
    const float* tab = codebook_table(w.codebook);
    a.table = Table{_mm256_loadu_ps(tab), _mm256_loadu_ps(tab + 8)};
    run<4, true>(a, tile_begin, tile_end, path);
    return;
  }
  switch (w.bits) {
    case 8: run<8, false>(a, tile_begin, tile_end, path); break;
    case 4: run<4, false>(a, tile_begin, tile_end, path); break;
    case 3: run<3, false>(a, tile_begin, tile_end, path); break;
    case 2: run<2, false>(a, tile_begin, tile_end, path); break;
    default: woq_gemm_ref(w, x, M, ldx, bias, y, ldy, tile_begin, tile_end); break;
  }
}

}  // namespace

void woq_gemm_avx2_path(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                        int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath path) {
  gemm(w, x, M, ldx, bias, y, ldy, tile_begin, tile_end, path, false);
}

void woq_gemm_avx512_path(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                          int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath path) {
  gemm(w, x, M, ldx, bias, y, ldy, tile_begin, tile_end, path, true);
}

}  // namespace kernels
}  // namespace lwq
