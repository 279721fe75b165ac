// Weight-only GEMM with dynamically quantized int8 activations (torch-free), the kernels of lwq::woq_linear_a8.
// Not exact fp32: x is rounded to int8 per row and per block of at most 32 columns (as llama.cpp's Q8_0 does),
// then multiplied with the integer codes in exact int32 arithmetic (u8 x s8 `maddubs` on AVX2).
//
// Blocks. Columns [0, K_pad) (internal order) are cut at every multiple of 32 and at every group boundary, so a
// block lies inside one group; for the usual group sizes (multiples of 32, or one group per row) every block is
// 32 columns. Per row m and block b:
//   d[m, b]  = amax / 127 with amax = max |x[m, k]| over the block (fp32 division),
//   xq[m, k] = clamp(nearbyint(x[m, k] * id), -127, 127) with id = 127 / amax (0 when amax = 0),
//   xsum[m, b] = sum of xq over the block.
// Rounding is half to even (nearbyint in the default mode).
//
// Output. With c the unsigned code and z the zero code of (group g, row n) (2^(bits-1) when symmetric),
//   I[m, b, n] = sum_{k in b} xq[m, k] * (c[n, k] - z)                          exact in int32
//   y[m, n] = bias[n] + sum over the groups g in column order of  scale[g, n] * acc_g
//   acc_g = sum over the blocks b of g in column order of  d[m, b] * I[m, b, n]
// where every "a * b + s" is one fused multiply-add in fp32 (acc starts at 0, y at bias or 0). The AVX2 kernel
// performs exactly these operations, so it equals the reference bit for bit, and no split of rows or tiles
// changes an output.
//
// Error against the exact woq_linear: |x - d * xq| <= d / 2 per element, so |y_a8 - y| <= sum_b d[m, b] / 2 *
// sum_{k in b} |w[n, k]| plus fp32 rounding (tests/cpp/test_woq_a8_kernels.cpp checks this bound).
#pragma once

#include <cstdint>
#include <vector>

#include "format.h"

namespace lwq {
namespace kernels {

constexpr int64_t kA8Block = 32;

// True for the layouts the a8 kernels handle: integer codebook with 4 or 8 bits.
inline bool woq_a8_supported(Codebook codebook, int bits) { return codebook == Codebook::Int && (bits == 4 || bits == 8); }
inline bool woq_a8_supported(const WeightView& w) { return woq_a8_supported(w.codebook, w.bits); }

// Columns [k0, k1) of group g; seg_end marks the last block of a run of one group (the point where the kernel
// adds scale * acc to y and restarts acc).
struct A8Block {
  int64_t k0, k1, g;
  bool seg_end;
};

// The blocks of w (see above), in column order.
std::vector<A8Block> woq_a8_blocks(const WeightView& w);

// Storage position of column k inside a quantized row: 4-bit weights hold the even columns of a unit of 8 in the
// low nibbles and the odd ones in the high nibbles, so each unit's activations are stored as k+0, 2, 4, 6, 1, 3,
// 5, 7 (one 32-bit broadcast per nibble half). 8-bit units (4 columns, one per byte) keep the natural order.
inline int64_t woq_a8_pos(int64_t k, int bits) {
  if (bits != 4) return k;
  const int64_t j = k & 7;
  return (k & ~int64_t{7}) + (j & 1) * 4 + (j >> 1);
}

// Quantized activations of M rows: xq [M][K_pad] (in woq_a8_pos order, zeros past K), d and xsum [M][n_blocks].
struct A8Acts {
  const int8_t* xq;
  const float* d;
  const int32_t* xsum;
};

// Quantizes rows [0, M) of x (row stride ldx, K_pad columns read, zeros expected past K) as described above.
// Both versions give the same bytes. Return false when x holds NaN or Inf (the outputs are then unspecified).
bool woq_a8_quantize_acts_ref(const WeightView& w, const std::vector<A8Block>& blocks, const float* x, int64_t M,
                              int64_t ldx, int8_t* xq, float* d, int32_t* xsum);
bool woq_a8_quantize_acts_avx2(const WeightView& w, const std::vector<A8Block>& blocks, const float* x, int64_t M,
                               int64_t ldx, int8_t* xq, float* d, int32_t* xsum);

// y[m, n] for m < M and the rows of tiles [tile_begin, tile_end) (only n < N written; y row stride ldy); acts
// rows m hold row m's quantized activations. w must satisfy woq_a8_supported; bias may be nullptr.
void woq_a8_gemm_ref(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                     const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end);
void woq_a8_gemm_avx2(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                      const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end);
// woq_a8_gemm_avx2 with its M = 1 loop for 4-bit codes in whole 32-column blocks on AVX-512 VNNI
// (woq_a8_avx512.cpp; only where cpu_has_avx512_vnni(), dispatch.h): two tiles per register and `vpdpbusd` (u8 x
// s8 products summed into int32), the same integer sums and fp32 steps as the AVX2 loop, so the same bits.
void woq_a8_gemm_avx512(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                        const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end);

// True when every block is 32 whole columns starting at a multiple of 32 (the usual group sizes): the case the
// M = 1 4-bit loops of the AVX2 and AVX-512 kernels serve.
bool woq_a8_whole_blocks(const std::vector<A8Block>& blocks);

}  // namespace kernels
}  // namespace lwq
