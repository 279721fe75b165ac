// The SIMD weight-only GEMM (torch-free): its two paths, the AVX2 and AVX-512 entry points (chosen by the kernel
// table, dispatch.h), and the AVX-512 pieces the AVX2 code hands over to. A caller that splits M across threads
// passes the path of the whole M (woq_path_for), so that the bits of an output never depend on how the work was
// split.
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

// y[m, n] = sum_k x[m, k] * W[n, k] + bias[n] as woq_gemm_ref (format.h) with an explicit path. Within one path,
// y[m, n] is computed with a fixed order of operations that depends on neither M nor the tile range, so any split
// of rows or tiles gives the same bits.
void woq_gemm_avx2_path(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                        int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath path);
// The same with the decode path's M = 1 row loop (integer codes of 2, 4, 8 bits) and the blocked micro-kernel on
// AVX-512 (woq_decode_row_avx512, woq_micro_avx512 below): the same bits as woq_gemm_avx2_path. Only where
// cpu_has_avx512() (dispatch.h).
void woq_gemm_avx512_path(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                          int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath path);

// Columns [k0, k1) all belong to group g: the decode path walks a row as such runs ("segments").
struct WoqSegment {
  int64_t k0, k1, g;
};

// One row of x through the decode path for integer codes of 2, 4 or 8 bits, with AVX-512 (woq_gemm_avx512.cpp):
// two tiles per 512-bit register, per output the same operations in the same order as the AVX2 row loop
// (decode_m1_int in woq_gemm_avx2.cpp), so the same bits. xs is x times the field factors, sumx the sum of x over
// each segment. Runs tiles [tile_begin, tile_end) two at a time and returns where it stopped (at most one tile
// is left for the AVX2 loop).
struct DecodeRow {
  const WeightView* w;
  const float* xs;
  const float* x;
  const WoqSegment* segs;
  int64_t n_segs;
  const float* sumx;
  const float* bias;  // nullptr: none
  float* y;           // row of N outputs
  int64_t tile_bytes;
};
int64_t woq_decode_row_avx512(const DecodeRow& r, int64_t tile_begin, int64_t tile_end);

// The blocked path's micro-kernel on AVX-512 (woq_gemm_avx512.cpp): y[mr rows, 16 columns] (+)= x[mr rows, kc] *
// panel, for a panel of two tiles (buf: kc rows of 16 floats, 64-byte aligned), mr <= 12; the first column block
// starts from the bias, the others from y. Only columns < valid_cols are read from bias and y or written.
void woq_micro_avx512(int mr, const float* x, int64_t ldx, const float* buf, int64_t kc, float* y, int64_t ldy,
                      const float* bias, bool first, int valid_cols);

}  // namespace kernels
}  // namespace lwq
