// A random packed weight and the storage its WeightView points to, shared by the kernel tests (woq, woq_a8).
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/format.h"

namespace lwq {
namespace test {

// Group layouts: -1 = one group per row, G > 0 = uniform groups of G, kNonUniform = random nondecreasing groups.
constexpr int64_t kNonUniform = 0;

// A random packed weight with the storage a kernels::WeightView points to.
struct RandomWeight {
  std::vector<uint8_t> codes;  // [N, K]
  std::vector<uint8_t> packed;
  std::vector<float> scales;     // [n_groups, N_pad]
  std::vector<uint8_t> zeros;    // [n_groups, N_pad] or empty
  std::vector<int32_t> col_group;  // [K_pad]
  kernels::WeightView view;
};

inline RandomWeight make_weight(int bits, kernels::Codebook cb, bool asym, int64_t group, int64_t N, int64_t K, std::mt19937& rng) {
  RandomWeight rw;
  kernels::WeightView& v = rw.view;
  v.N = N;
  v.K = K;
  v.N_pad = kernels::padded_rows(N);
  v.K_pad = kernels::padded_cols(K, bits);
  v.bits = bits;
  v.codebook = cb;
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  rw.codes.resize(N * K);
  for (auto& c : rw.codes) c = static_cast<uint8_t>(code(rng));
  rw.packed.resize(kernels::packed_bytes(N, K, bits));
  kernels::pack_codes(rw.codes.data(), N, K, bits, rw.packed.data());

  rw.col_group.resize(v.K_pad);
  if (group == kNonUniform) {
    // Act-order style: groups of random sizes (some empty), boundaries anywhere.
    v.n_groups = 1 + K / 9;
    std::uniform_int_distribution<int> g(0, static_cast<int>(v.n_groups - 1));
    for (int64_t k = 0; k < K; ++k) rw.col_group[k] = g(rng);
    std::sort(rw.col_group.begin(), rw.col_group.begin() + K);
    v.uniform_group = 0;
  } else {
    const int64_t G = group == -1 ? K : group;
    v.n_groups = (K + G - 1) / G;
    for (int64_t k = 0; k < K; ++k) rw.col_group[k] = static_cast<int32_t>(k / G);
    v.uniform_group = G;
  }
  for (int64_t k = K; k < v.K_pad; ++k) rw.col_group[k] = rw.col_group[K - 1];

  std::uniform_real_distribution<float> mag(0.25f, 1.5f);
  std::bernoulli_distribution neg(0.2);  // int4_fullrange stores negative scales
  rw.scales.assign(v.n_groups * v.N_pad, 0.0f);
  if (asym) rw.zeros.assign(v.n_groups * v.N_pad, 0);
  for (int64_t g = 0; g < v.n_groups; ++g)
    for (int64_t n = 0; n < N; ++n) {
      rw.scales[g * v.N_pad + n] = mag(rng) * (neg(rng) ? -1.0f : 1.0f);
      if (asym) rw.zeros[g * v.N_pad + n] = static_cast<uint8_t>(code(rng));
    }
  v.qweight = rw.packed.data();
  v.scales = rw.scales.data();
  v.zeros = asym ? rw.zeros.data() : nullptr;
  v.col_group = rw.col_group.data();
  return rw;
}

}  // namespace test
}  // namespace lwq
