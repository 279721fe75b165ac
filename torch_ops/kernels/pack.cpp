// Codes <-> the tiled bit layout of format.h, and the 4-bit value tables. Scalar on purpose: packing runs once
// per weight, and this file is the executable definition of the layout that docs/packed-format.md describes.
#include "format.h"

#include <algorithm>
#include <cstring>

namespace lwq {
namespace kernels {

namespace {

// NF4 (QLoRA): quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
const float kNF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// FP4 E2M1, code = sign bit 3 | magnitude 0,0.5,1,1.5,2,3,4,6; divided by 6 so that the table spans [-1, 1].
const float kFP4[16] = {0.0f,        1.0f / 12,   2.0f / 12,   3.0f / 12,   4.0f / 12,   6.0f / 12,
                        8.0f / 12,   12.0f / 12,  -0.0f,       -1.0f / 12,  -2.0f / 12,  -3.0f / 12,
                        -4.0f / 12,  -6.0f / 12,  -8.0f / 12,  -12.0f / 12};

// Where the field of (n, k) lives: byte offset of its 32-bit lane and bit position inside it.
struct FieldPos {
  int64_t lane;   // byte offset of the lane (low bits for bits == 3)
  int shift;
  int64_t hi_lane;  // bits == 3 only: byte offset of the high-bit lane
  int hi_shift;
};

FieldPos field_pos(int64_t K, int bits, int64_t n, int64_t k) {
  const int64_t kpu = k_per_unit(bits);
  const int64_t n_units = padded_cols(K, bits) / kpu;
  const int64_t base = (n / kTileN * n_units + k / kpu) * unit_bytes(bits);
  const int64_t r = n % kTileN;
  const int j = static_cast<int>(k % kpu);
  FieldPos p{};
  if (bits == 3) {
    p.lane = base + (j / 16) * 32 + r * 4;
    p.shift = (j % 16) * 2;
    p.hi_lane = base + 64 + r * 4;
    p.hi_shift = j;
  } else {
    p.lane = base + r * 4;
    p.shift = j * bits;
  }
  return p;
}

inline uint32_t load_lane(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);  // the format is little-endian; so is every x86 host
  return v;
}
inline void store_lane(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

// Calls f(n, k, lane, shift, hi_lane, j) for every field of a [N, K] weight in storage order (tile, unit, lane,
// field): the same positions as field_pos without its per-field divisions, which made packing a 7B layer take
// seconds. lane/shift: the field's 32-bit lane (byte offset) and bit position (the low two bits for bits == 3);
// hi_lane, j: for bits == 3, the lane and bit of the high bit.
template <typename F>
void for_each_field(int64_t N, int64_t K, int bits, F&& f) {
  const int64_t kpu = k_per_unit(bits);
  const int64_t n_units = padded_cols(K, bits) / kpu;
  const int width = bits == 3 ? 2 : bits;
  for (int64_t t = 0; t * kTileN < N; ++t) {
    for (int64_t u = 0; u < n_units; ++u) {
      const int64_t base = (t * n_units + u) * unit_bytes(bits);
      const int64_t k0 = u * kpu, k_end = std::min(K, k0 + kpu);
      for (int64_t r = 0; r < kTileN && t * kTileN + r < N; ++r) {
        for (int64_t k = k0; k < k_end; ++k) {
          const int j = static_cast<int>(k - k0);
          const int64_t lane = bits == 3 ? base + (j / 16) * 32 + r * 4 : base + r * 4;
          f(t * kTileN + r, k, lane, bits == 3 ? (j % 16) * 2 : j * width, base + 64 + r * 4, j);
        }
      }
    }
  }
}

}  // namespace

const float* codebook_table(Codebook cb) {
  switch (cb) {
    case Codebook::NF4: return kNF4;
    case Codebook::FP4: return kFP4;
    default: return nullptr;
  }
}

void pack_codes(const uint8_t* codes, int64_t N, int64_t K, int bits, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(packed_bytes(N, K, bits)));
  const uint32_t mask = bits == 3 ? 3u : (bits == 8 ? 0xFFu : (1u << bits) - 1u);
  for_each_field(N, K, bits, [&](int64_t n, int64_t k, int64_t lane, int shift, int64_t hi_lane, int j) {
    const uint32_t c = codes[n * K + k];
    store_lane(out + lane, load_lane(out + lane) | ((c & mask) << shift));
    if (bits == 3) store_lane(out + hi_lane, load_lane(out + hi_lane) | (((c >> 2) & 1u) << j));
  });
}

uint8_t code_at(const uint8_t* packed, int64_t K, int bits, int64_t n, int64_t k) {
  const FieldPos p = field_pos(K, bits, n, k);
  const uint32_t mask = bits == 3 ? 3u : (bits == 8 ? 0xFFu : (1u << bits) - 1u);
  uint32_t c = (load_lane(packed + p.lane) >> p.shift) & mask;
  if (bits == 3) c |= ((load_lane(packed + p.hi_lane) >> p.hi_shift) & 1u) << 2;
  return static_cast<uint8_t>(c);
}

void unpack_codes(const uint8_t* packed, int64_t N, int64_t K, int bits, uint8_t* codes) {
  const uint32_t mask = bits == 3 ? 3u : (bits == 8 ? 0xFFu : (1u << bits) - 1u);
  for_each_field(N, K, bits, [&](int64_t n, int64_t k, int64_t lane, int shift, int64_t hi_lane, int j) {
    uint32_t c = (load_lane(packed + lane) >> shift) & mask;
    if (bits == 3) c |= ((load_lane(packed + hi_lane) >> j) & 1u) << 2;
    codes[n * K + k] = static_cast<uint8_t>(c);
  });
}

}  // namespace kernels
}  // namespace lwq
