// The packed weight layout shared by every kernel (torch-free). docs/packed-format.md describes it to the byte.
//
// A weight [N, K] is stored as unsigned codes c in [0, 2^bits). Output channels are grouped in tiles of 8
// rows; within a tile the in-features are cut into "units" of k_per_unit(bits) columns. One unit of one tile
// is 8 little-endian 32-bit lanes (lane r = row 8t+r) per plane:
//   bits 8: 1 plane,  lane holds k+0..k+3 as bytes          (unit = 4 columns, 32 bytes)
//   bits 4: 1 plane,  lane holds k+0..k+7 as nibbles         (unit = 8 columns, 32 bytes)
//   bits 2: 1 plane,  lane holds k+0..k+15 as 2-bit fields   (unit = 16 columns, 32 bytes)
//   bits 3: 3 planes: low 2 bits of k+0..15, low 2 bits of k+16..31, high bit of k+0..31
//                                                           (unit = 32 columns, 96 bytes)
// Field j of a lane sits at bit j*width (j = 0 is the least significant). Units follow each other inside a tile;
// tiles follow each other. Padding rows (N..N_pad) and columns (K..K_pad) hold code 0.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lwq {
namespace kernels {

constexpr int64_t kTileN = 8;

// How a code becomes a value: value = scale * (code - zero) for integer types, scale * table[code] otherwise.
enum class Codebook : int32_t { Int = 0, NF4 = 1, FP4 = 2 };

// 16-entry tables in [-1, 1] indexed by the 4-bit code (nullptr for Codebook::Int).
const float* codebook_table(Codebook cb);

inline int64_t k_per_unit(int bits) { return bits == 8 ? 4 : bits == 4 ? 8 : bits == 2 ? 16 : 32; }
inline int64_t unit_bytes(int bits) { return bits == 3 ? 96 : 32; }
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t padded_rows(int64_t n) { return round_up(n, kTileN); }
inline int64_t padded_cols(int64_t k, int bits) { return round_up(k, k_per_unit(bits)); }
inline int64_t packed_bytes(int64_t n, int64_t k, int bits) {
  return padded_rows(n) / kTileN * (padded_cols(k, bits) / k_per_unit(bits)) * unit_bytes(bits);
}

// Non-owning view of one packed weight, everything a kernel needs. Columns are in "internal" order: when the
// weight has act-order (g_idx), the caller permutes x so that column k of x meets column k of the weight.
struct WeightView {
  const uint8_t* qweight = nullptr;  // tiled codes, packed_bytes(N, K, bits) bytes
  const float* scales = nullptr;     // [n_groups][N_pad], fp32; padding rows hold 0
  const uint8_t* zeros = nullptr;    // [n_groups][N_pad] zero codes, or nullptr: zero = sym_zero(bits) (Int only)
  const int32_t* col_group = nullptr;  // [K_pad] group of each internal column (nondecreasing); pad = last group
  int64_t N = 0, K = 0, N_pad = 0, K_pad = 0, n_groups = 0;
  int64_t uniform_group = 0;  // G > 0 when column k belongs to group k / G (all but the last group have G columns)
  int bits = 4;
  Codebook codebook = Codebook::Int;
};

inline int32_t sym_zero(int bits) { return 1 << (bits - 1); }

// Codes <-> packed bytes. codes is row-major [N, K] (one code per byte, internal column order).
void pack_codes(const uint8_t* codes, int64_t N, int64_t K, int bits, uint8_t* out);
void unpack_codes(const uint8_t* packed, int64_t N, int64_t K, int bits, uint8_t* codes);
// Code of (row n, internal column k) straight from the packed bytes.
uint8_t code_at(const uint8_t* packed, int64_t K, int bits, int64_t n, int64_t k);

// y[m, n] = sum_k x[m, k] * W[n, k] + bias[n] for m < M and the rows of tiles [tile_begin, tile_end).
// x is [M, K_pad] with zeros in columns K..K_pad (row stride ldx >= K_pad); bias may be nullptr;
// y is [M, N] with row stride ldy, and only columns n < N are written.
// The scalar reference; the SIMD versions are in woq_gemm_avx2.h, the choice between them in dispatch.h.
void woq_gemm_ref(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                  int64_t ldy, int64_t tile_begin, int64_t tile_end);

}  // namespace kernels
}  // namespace lwq
