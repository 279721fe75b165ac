// Helpers shared by the AVX-512 kernels (*_avx512.cpp only: the including file must be compiled for AVX-512).
// Those kernels put the same unit of two adjacent tiles (8 rows each) in one 512-bit register.
#pragma once

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and trip -Wmaybe-uninitialized in every caller.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "format.h"

namespace lwq {
namespace kernels {
namespace avx512 {

// Each tile stream is prefetched this far ahead, and the scale/zero rows of a group for the pair group
// kScaleAhead steps ahead (their rows are N_pad apart: the hardware prefetchers do not follow them).
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kScaleAhead = 2;

// The 32 bytes at `unit` in tile t and at the same offset in tile t + 1 (tile_bytes further): lanes 0-7, 8-15.
inline __m512i load_pair(const uint8_t* unit, int64_t tile_bytes) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit + tile_bytes));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The lanes of the pair starting at tile t whose rows (8 t + lane) are < N.
inline __mmask16 row_mask(int64_t N, int64_t t) {
  const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(16, N - t * kTileN));
  return static_cast<__mmask16>((1u << valid) - 1u);
}

}  // namespace avx512
}  // namespace kernels
}  // namespace lwq
