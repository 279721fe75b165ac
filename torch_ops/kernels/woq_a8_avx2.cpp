// AVX2 GEMM of the int8-activation weight-only path (woq_a8.h). Integer codes meet int8 activations in
// `maddubs` (u8 x s8 -> pairs summed to s16) and `madd` with ones (-> s32), so one instruction does 32 products,
// against one FMA per 8 weights in the exact fp32 decode path.
//
// 4-bit: the low nibbles of a 32-byte unit are the even columns of 8 rows, the high nibbles the odd ones; each
// half is one `maddubs` against a 32-bit broadcast of 4 activations (stored in that order, woq_a8_pos). A block
// of 32 columns accumulates 16 products per s16 lane, at most 16 * 15 * 127 = 30480 < 2^15: no saturation.
// 8-bit: codes c are turned into s8 q = c - 128 and multiplied as maddubs(|q|, sign(x, q)) (the pair sum is
// at most 2 * 128 * 127 < 2^15), widened to s32 after every unit.
// Per block the s32 sums are corrected for the zero point in int32 (exact), converted once and accumulated with
// one FMA per block and per group, in the order the reference uses: the results are bit-identical to it.
//
// Blocking: MR rows of x x T tiles of 8 output rows. M = 1 runs 4 tiles side by side (a8_gemv4: its own loop for
// 4-bit weights whose blocks are all 32 whole columns, the usual case); larger M walks groups of 4 tiles (64 KiB
// of int4 codes at K = 4096, kept in L2) with blocks of 4 rows x 2 tiles.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "woq_a8.h"

namespace lwq {
namespace kernels {

namespace {

static_assert(kA8Block <= 32, "4-bit s16 accumulation is only safe up to 32 columns per block");

// M = 1 is memory-bound: with 4 tile streams side by side the hardware prefetchers alone reached about 20 GB/s
// per core here (64 cold copies of a 4096x4096 int4 weight, torch-free loop); prefetching each stream 2-3 KiB
// ahead gave about 26 GB/s (4 KiB: 23; 6 KiB: 22; 1 or 2 tiles side by side: 20-21).
constexpr int64_t kPrefetchBytes = 2048;

// The scales (and zeros) of one group are a row [N_pad], so a tile walk meets them 32 bytes at a time, each row
// in another page: the hardware prefetchers miss them and every miss stalls the stream. M = 1 prefetches the
// rows' lines for the tile group kScaleAhead steps ahead (+10 % at 2 threads on 4096x4096; with the GEMV loop
// below, 44 -> 50 GB/s where a plain read reached 65 and the loop with no scale reads at all 59).
constexpr int64_t kScaleAhead = 2;

// Always inlined: a call inside the loop clobbers every ymm register live across it (15 % slower measured).
template <int T>
__attribute__((always_inline)) inline void prefetch_group_params(const WeightView& w, int64_t g, int64_t t0) {
  const int64_t t = t0 + kScaleAhead * T;
  if (t >= w.N_pad / kTileN) return;
  const float* sp = w.scales + g * w.N_pad + t * kTileN;
  for (int i = 0; i < T; i += 2) _mm_prefetch(reinterpret_cast<const char*>(sp + i * kTileN), _MM_HINT_T0);
  if (w.zeros) _mm_prefetch(reinterpret_cast<const char*>(w.zeros + g * w.N_pad + t * kTileN), _MM_HINT_T0);
}

inline __m256i loadu_si(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256i lane_mask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), idx);
}

inline int64_t valid_rows(const WeightView& w, int64_t tile) {
  return std::max<int64_t>(0, std::min<int64_t>(kTileN, w.N - tile * kTileN));
}

struct Ctx {
  const WeightView* w;
  const A8Block* blocks;
  int64_t n_blocks;
  A8Acts acts;
  const float* bias;
  float* y;
  int64_t ldy;
  int64_t tile_bytes;
  bool whole_blocks;  // every block is 32 columns starting at a multiple of 32
};

// The code bias the integer products remove before the zero-point correction: 4-bit codes enter maddubs as
// they are (unsigned), 8-bit codes as c - 128 (signed).
template <int BITS>
constexpr int32_t code_bias() {
  return BITS == 8 ? 128 : 0;
}

// Rows [m0, m0 + MR) of x times tiles [t0, t0 + T).
template <int BITS, int MR, int T>
void a8_tiles(const Ctx& c, int64_t t0, int64_t m0) {
  const WeightView& w = *c.w;
  constexpr int kKpu = BITS == 8 ? 4 : 8;
  constexpr int32_t kCb = code_bias<BITS>();
  const int64_t n_blocks = c.n_blocks;
  const uint8_t* tp[T];
  alignas(32) float ybuf[MR][T][kTileN];
  alignas(32) float accb[MR][T][kTileN];
  for (int t = 0; t < T; ++t) {
    tp[t] = w.qweight + (t0 + t) * c.tile_bytes;
    const __m256 b0 = c.bias ? _mm256_maskload_ps(c.bias + (t0 + t) * kTileN, lane_mask(valid_rows(w, t0 + t)))
                             : _mm256_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      _mm256_store_ps(ybuf[m][t], b0);
      _mm256_store_ps(accb[m][t], _mm256_setzero_ps());
    }
  }
  const int8_t* xq[MR];
  for (int m = 0; m < MR; ++m) xq[m] = c.acts.xq + (m0 + m) * w.K_pad;
  const __m256i ones16 = _mm256_set1_epi16(1);

  for (int64_t b = 0; b < n_blocks; ++b) {
    const A8Block& blk = c.blocks[b];
    __m256i s32[MR][T];
    if (blk.k0 % kKpu == 0 && blk.k1 % kKpu == 0) {
      const int64_t u0 = blk.k0 / kKpu, u1 = blk.k1 / kKpu;
      if constexpr (BITS == 4) {
        const __m256i low4 = _mm256_set1_epi8(0x0F);
        __m256i s16[MR][T];
        #pragma GCC unroll 8
        for (int m = 0; m < MR; ++m)
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) s16[m][t] = _mm256_setzero_si256();
        for (int64_t u = u0; u < u1; ++u) {
          __m256i lo[T], hi[T];
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            if (MR == 1 && (u & 1) == 0)  // one prefetch per 64-byte line
              _mm_prefetch(reinterpret_cast<const char*>(tp[t] + u * 32 + kPrefetchBytes), _MM_HINT_T0);
            const __m256i v = loadu_si(tp[t] + u * 32);
            lo[t] = _mm256_and_si256(v, low4);
            hi[t] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          }
          #pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            const __m256i xe = broadcast4(xq[m] + u * 8), xo = broadcast4(xq[m] + u * 8 + 4);
            #pragma GCC unroll 8
            for (int t = 0; t < T; ++t)
              s16[m][t] = _mm256_add_epi16(
                  s16[m][t], _mm256_add_epi16(_mm256_maddubs_epi16(lo[t], xe), _mm256_maddubs_epi16(hi[t], xo)));
          }
        }
        #pragma GCC unroll 8
        for (int m = 0; m < MR; ++m)
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) s32[m][t] = _mm256_madd_epi16(s16[m][t], ones16);
      } else {
        const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
        #pragma GCC unroll 8
        for (int m = 0; m < MR; ++m)
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) s32[m][t] = _mm256_setzero_si256();
        for (int64_t u = u0; u < u1; ++u) {
          __m256i q[T], qa[T];
          #pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            q[t] = _mm256_xor_si256(loadu_si(tp[t] + u * 32), flip);  // c - 128 as s8
            qa[t] = _mm256_abs_epi8(q[t]);                            // |q| <= 128 as u8
          }
          #pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            const __m256i xb = broadcast4(xq[m] + u * 4);
            #pragma GCC unroll 8
            for (int t = 0; t < T; ++t)
              s32[m][t] = _mm256_add_epi32(
                  s32[m][t],
                  _mm256_madd_epi16(_mm256_maddubs_epi16(qa[t], _mm256_sign_epi8(xb, q[t])), ones16));
          }
        }
      }
    } else {
      // A block that starts or ends inside a unit (group boundaries off the unit grid): column by column.
      constexpr int kMask = (1 << BITS) - 1;
      #pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) s32[m][t] = _mm256_setzero_si256();
      for (int64_t k = blk.k0; k < blk.k1; ++k) {
        const int64_t u = k / kKpu;
        const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(BITS * (k - u * kKpu)));
        __m256i code[T];
        for (int t = 0; t < T; ++t)
          code[t] = _mm256_sub_epi32(
              _mm256_and_si256(_mm256_srl_epi32(loadu_si(tp[t] + u * 32), shift), _mm256_set1_epi32(kMask)),
              _mm256_set1_epi32(kCb));
        const int64_t pos = woq_a8_pos(k, BITS);
        for (int m = 0; m < MR; ++m) {
          const __m256i xv = _mm256_set1_epi32(xq[m][pos]);
          for (int t = 0; t < T; ++t) s32[m][t] = _mm256_add_epi32(s32[m][t], _mm256_mullo_epi32(code[t], xv));
        }
      }
    }
    // I = s32 - (z - code_bias) * xsum, then acc += d * I; at the end of a group y += scale * acc.
    __m256i zc[T];
    #pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      if (w.zeros) {
        const __m128i z8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zeros + blk.g * w.N_pad + (t0 + t) * kTileN));
        zc[t] = _mm256_sub_epi32(_mm256_cvtepu8_epi32(z8), _mm256_set1_epi32(kCb));
      }
    }
    #pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const int32_t xs = c.acts.xsum[(m0 + m) * n_blocks + b];
      const __m256 dv = _mm256_set1_ps(c.acts.d[(m0 + m) * n_blocks + b]);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        __m256i iv = s32[m][t];
        if (w.zeros)
          iv = _mm256_sub_epi32(iv, _mm256_mullo_epi32(zc[t], _mm256_set1_epi32(xs)));
        else if (sym_zero(BITS) != kCb)
          iv = _mm256_sub_epi32(iv, _mm256_set1_epi32((sym_zero(BITS) - kCb) * xs));
        _mm256_store_ps(accb[m][t], _mm256_fmadd_ps(_mm256_cvtepi32_ps(iv), dv, _mm256_load_ps(accb[m][t])));
      }
    }
    if (blk.seg_end) {
      if (MR == 1) prefetch_group_params<T>(w, blk.g, t0);
      #pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256 sc = _mm256_loadu_ps(w.scales + blk.g * w.N_pad + (t0 + t) * kTileN);
        #pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) {
          _mm256_store_ps(ybuf[m][t], _mm256_fmadd_ps(sc, _mm256_load_ps(accb[m][t]), _mm256_load_ps(ybuf[m][t])));
          _mm256_store_ps(accb[m][t], _mm256_setzero_ps());
        }
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    const int64_t valid = valid_rows(w, t0 + t);
    for (int m = 0; m < MR; ++m) {
      float* yp = c.y + (m0 + m) * c.ldy + (t0 + t) * kTileN;
      const __m256 yv = _mm256_load_ps(ybuf[m][t]);
      if (valid == kTileN)
        _mm256_storeu_ps(yp, yv);
      else
        _mm256_maskstore_ps(yp, lane_mask(valid), yv);
    }
  }
}

// M = 1, 4-bit, every block 32 whole columns (4 units): the loop of a8_tiles<4, 1, T> without its per-block
// cases, one group at a time with the accumulators in registers. The same operations in the same order, so the
// same bits.
template <int T, bool ZEROS>
void a8_gemv4(const Ctx& c, int64_t t0) {
  const WeightView& w = *c.w;
  const uint8_t* tp[T];
  __m256 yv[T];
  for (int t = 0; t < T; ++t) {
    tp[t] = w.qweight + (t0 + t) * c.tile_bytes;
    yv[t] = c.bias ? _mm256_maskload_ps(c.bias + (t0 + t) * kTileN, lane_mask(valid_rows(w, t0 + t)))
                   : _mm256_setzero_ps();
  }
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones16 = _mm256_set1_epi16(1);
  const int8_t* xq = c.acts.xq;
  for (int64_t b = 0; b < c.n_blocks;) {
    const int64_t g = c.blocks[b].g;
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    bool group_end;
    do {
      group_end = c.blocks[b].seg_end;
      __m256i s16[T];
      for (int t = 0; t < T; ++t) s16[t] = _mm256_setzero_si256();
      #pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m256i xe = broadcast4(xq + u * 8), xo = broadcast4(xq + u * 8 + 4);
        #pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          if ((u & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(tp[t] + u * 32 + kPrefetchBytes), _MM_HINT_T0);
          const __m256i v = loadu_si(tp[t] + u * 32);
          const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          s16[t] = _mm256_add_epi16(s16[t],
                                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo)));
        }
      }
      const int32_t xs = c.acts.xsum[b];
      const __m256 dv = _mm256_set1_ps(c.acts.d[b]);
      for (int t = 0; t < T; ++t) {
        __m256i iv = _mm256_madd_epi16(s16[t], ones16);
        if (ZEROS) {
          const __m128i z8 =
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zeros + g * w.N_pad + (t0 + t) * kTileN));
          iv = _mm256_sub_epi32(iv, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(z8), _mm256_set1_epi32(xs)));
        } else {
          iv = _mm256_sub_epi32(iv, _mm256_set1_epi32(sym_zero(4) * xs));
        }
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iv), dv, acc[t]);
        tp[t] += 4 * 32;
      }
      xq += kA8Block;
      ++b;
    } while (!group_end);
    prefetch_group_params<T>(w, g, t0);
    for (int t = 0; t < T; ++t)
      yv[t] = _mm256_fmadd_ps(_mm256_loadu_ps(w.scales + g * w.N_pad + (t0 + t) * kTileN), acc[t], yv[t]);
  }
  for (int t = 0; t < T; ++t) {
    const int64_t valid = valid_rows(w, t0 + t);
    float* yp = c.y + (t0 + t) * kTileN;
    if (valid == kTileN)
      _mm256_storeu_ps(yp, yv[t]);
    else
      _mm256_maskstore_ps(yp, lane_mask(valid), yv[t]);
  }
}

template <int T>
void a8_gemv4_tiles(const Ctx& c, int64_t t0) {
  if (c.w->zeros)
    a8_gemv4<T, true>(c, t0);
  else
    a8_gemv4<T, false>(c, t0);
}

template <int BITS, int MR>
void a8_rows(const Ctx& c, int64_t tb, int64_t te, int64_t m0) {
  int64_t t = tb;
  for (; t + 2 <= te; t += 2) a8_tiles<BITS, MR, 2>(c, t, m0);
  if (t < te) a8_tiles<BITS, MR, 1>(c, t, m0);
}

template <int BITS>
void run(const Ctx& c, int64_t M, int64_t tb, int64_t te) {
  if (M == 1) {
    int64_t t = tb;
    if (BITS == 4 && c.whole_blocks) {
      for (; t + 4 <= te; t += 4) a8_gemv4_tiles<4>(c, t);
      for (; t < te; ++t) a8_gemv4_tiles<1>(c, t);
    }
    for (; t + 4 <= te; t += 4) a8_tiles<BITS, 1, 4>(c, t, 0);
    for (; t < te; ++t) a8_tiles<BITS, 1, 1>(c, t, 0);
    return;
  }
  constexpr int64_t kTileGroup = 4;
  for (int64_t t = tb; t < te; t += kTileGroup) {
    const int64_t t1 = std::min(te, t + kTileGroup);
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) a8_rows<BITS, 4>(c, t, t1, m0);
    switch (M - m0) {
      case 3: a8_rows<BITS, 3>(c, t, t1, m0); break;
      case 2: a8_rows<BITS, 2>(c, t, t1, m0); break;
      case 1: a8_rows<BITS, 1>(c, t, t1, m0); break;
      default: break;
    }
  }
}

// Block quantization, 8 columns at a time: q = clamp(round(x * id)) as int32.
inline __m256i quantize8(__m256 v, __m256 id) {
  const __m256 r = _mm256_round_ps(_mm256_mul_ps(v, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f)));
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

}  // namespace

bool woq_a8_quantize_acts_avx2(const WeightView& w, const std::vector<A8Block>& blocks, const float* x, int64_t M,
                               int64_t ldx, int8_t* xq, float* d, int32_t* xsum) {
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 big = _mm256_set1_ps(3.4028235e38f);
  // Per 8 columns, the storage order of woq_a8_pos: 4-bit units put the even columns first.
  const __m256i order = w.bits == 4 ? _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7) : _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i dword_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256 bad = _mm256_setzero_ps();
  bool finite = true;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    int8_t* qr = xq + m * w.K_pad;
    for (int64_t b = 0; b < n_blocks; ++b) {
      const A8Block& blk = blocks[b];
      if (blk.k1 - blk.k0 == 32) {  // k0 is then a multiple of 32: whole units of either width
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; ++i) {
          v[i] = _mm256_loadu_ps(xr + blk.k0 + 8 * i);
          const __m256 a = _mm256_and_ps(v[i], abs_mask);
          bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));  // NaN or Inf
          amax = _mm256_max_ps(amax, a);
        }
        const float am = hmax(amax);
        const float db = am / 127.0f;
        const float idf = am > 0.0f ? 127.0f / am : 0.0f;
        const __m256 id = _mm256_set1_ps(idf);
        __m256i q[4];
        for (int i = 0; i < 4; ++i) q[i] = quantize8(v[i], id);
        const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        for (int i = 0; i < 4; ++i) q[i] = _mm256_permutevar8x32_epi32(q[i], order);
        // packs work per 128-bit half: bytes (q0 0-3, q1 0-3, q2 0-3, q3 0-3 | q0 4-7, ...); the dword permute
        // restores q0 0-7, q1 0-7, ...
        const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), dword_order);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + blk.k0), p8);
        d[m * n_blocks + b] = db;
        xsum[m * n_blocks + b] = hsum_epi32(sum);
      } else {  // same scalar formula as the reference
        float amax = 0.0f;
        for (int64_t k = blk.k0; k < blk.k1; ++k) {
          const float a = std::fabs(xr[k]);
          if (!(a <= 3.4028235e38f)) finite = false;
          amax = std::max(amax, a);
        }
        const float idf = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t s = 0;
        for (int64_t k = blk.k0; k < blk.k1; ++k) {
          const float r = std::min(std::max(std::nearbyint(xr[k] * idf), -127.0f), 127.0f);
          const int32_t qv = static_cast<int32_t>(r);
          qr[woq_a8_pos(k, w.bits)] = static_cast<int8_t>(qv);
          s += qv;
        }
        d[m * n_blocks + b] = amax / 127.0f;
        xsum[m * n_blocks + b] = s;
      }
    }
  }
  return finite && _mm256_movemask_ps(bad) == 0;
}

void woq_a8_gemm_avx2(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                      const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end) {
  if (M <= 0 || tile_begin >= tile_end) return;
  const bool whole = woq_a8_whole_blocks(blocks);
  Ctx c{&w, blocks.data(), static_cast<int64_t>(blocks.size()), acts, bias, y, ldy,
        w.K_pad / k_per_unit(w.bits) * unit_bytes(w.bits), whole};
  if (w.bits == 4)
    run<4>(c, M, tile_begin, tile_end);
  else
    run<8>(c, M, tile_begin, tile_end);
}

}  // namespace kernels
}  // namespace lwq
