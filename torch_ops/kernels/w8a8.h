// Static W8A8 kernels (torch-free): per-tensor activation quantization and the exact integer GEMM against an
// int8 symmetric weight in the 8-bit tiled layout of format.h (code c = q + 128, per-channel scale).
//
// Quantized activations are kept as d = xq - zp in int16 (|d| <= 255), one row of ldd >= round_up(K, 4) values
// per input row; columns K.. hold 0. Inside every group of 4 columns the order is k, k+2, k+1, k+3: the AVX2
// kernel reads a weight lane (4 byte codes of one row) as two int16 pairs (even bytes, odd bytes) and multiplies
// each pair with one 32-bit broadcast of activations, so no byte shuffling of the weight is needed.
// row_sum[m] = sum_k d[m, k] lets the kernel multiply by the unsigned codes c and subtract 128 * row_sum.
//
// y[m, n] = fma(float(acc), act_scale * w_scale[n], bias[n]) with acc = sum_k d[m, k] * q[n, k] exact in int32
// (K <= 65536 keeps |acc| <= 65536 * 255 * 128 < 2^31). Every implementation computes the epilogue with one
// fused multiply-add, so the ref and AVX2 results are bit-identical.
#pragma once

#include <cstdint>

#include "format.h"

namespace lwq {
namespace kernels {

constexpr int64_t kW8a8MaxK = 65536;

// Storage position of column k inside a quantized activation row (the k, k+2, k+1, k+3 order).
inline int64_t w8a8_act_pos(int64_t k) {
  const int64_t j = k & 3;
  return (k & ~int64_t{3}) + (j == 1 ? 2 : j == 2 ? 1 : j);
}

// Quantizes rows [0, M) of x (row stride ldx): d = clamp(nearbyint(x / act_scale) + zp, qmin, qmax) - zp with the
// division in fp32, writes d (row stride ldd, columns up to round_up(K, 4)) and row_sum. Returns false when x
// holds a NaN (the outputs are then unspecified).
bool w8a8_quantize_acts_ref(const float* x, int64_t M, int64_t K, int64_t ldx, float act_scale, int32_t zp,
                            int32_t qmin, int32_t qmax, int16_t* d, int64_t ldd, int32_t* row_sum);
bool w8a8_quantize_acts_avx2(const float* x, int64_t M, int64_t K, int64_t ldx, float act_scale, int32_t zp,
                             int32_t qmin, int32_t qmax, int16_t* d, int64_t ldd, int32_t* row_sum);

// y[m, n] for m < M and the rows n of tiles [tile_begin, tile_end) (only n < N is written; y row stride ldy).
// w must be 8-bit, Codebook::Int, without zeros, one group; bias may be nullptr.
void w8a8_gemm_ref(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                   float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end);
void w8a8_gemm_avx2(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                    float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin,
                    int64_t tile_end);
// The same result (bit for bit: the integer sums are exact either way) with AVX-VNNI's vpdpbusd, 4 u8 x s8
// products per 32-bit lane and instruction, where the CPU has it (dispatch.h: level avx_vnni); a single row goes
// to w8a8_gemm_avx2's GEMV, which is memory-bound already.
void w8a8_gemm_avx_vnni(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                        float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin,
                        int64_t tile_end);

}  // namespace kernels
}  // namespace lwq
