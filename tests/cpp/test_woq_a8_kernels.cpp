// The int8-activation weight-only path (kernels/woq_a8.h, lwq::woq_linear_a8): the block cut and the activation
// quantization as documented, the kernels of every ISA level equal to the scalar reference bit for bit on awkward
// shapes and under any split of rows and tiles (test::check_woq_a8_*, run by test_kernel_levels.cpp), and the op
// within the documented error bound of the exact woq_linear.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernel_levels.h"
#include "kernels/dispatch.h"
#include "ops.h"
#include "random_logical_weight.h"
#include "random_weight.h"

namespace lwq {
namespace {

using kernels::A8Block;
using kernels::Codebook;
using kernels::KernelTable;
using kernels::Level;
using kernels::WeightView;
using test::kNonUniform;
using test::make_weight;
using test::RandomWeight;

// x [M, K_pad], zeros past K; some rows scaled up, one block of zeros (amax = 0), exact extremes.
std::vector<float> make_x(int64_t M, int64_t K, int64_t K_pad, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(M * K_pad, 0.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float row_scale = m % 3 == 1 ? 100.0f : 1.0f;
    for (int64_t k = 0; k < K; ++k) x[m * K_pad + k] = d(rng) * row_scale;
    if (m % 5 == 2)
      for (int64_t k = 0; k < std::min<int64_t>(K, 40); ++k) x[m * K_pad + k] = 0.0f;
  }
  return x;
}

struct Acts {
  std::vector<int8_t> xq;
  std::vector<float> d;
  std::vector<int32_t> xsum;
  kernels::A8Acts view(int64_t m0, int64_t K_pad, int64_t n_blocks) const {
    return {xq.data() + m0 * K_pad, d.data() + m0 * n_blocks, xsum.data() + m0 * n_blocks};
  }
};

Acts quantize(const WeightView& v, const std::vector<A8Block>& blocks, const std::vector<float>& x, int64_t M) {
  Acts a;
  a.xq.assign(M * v.K_pad, 99);
  a.d.resize(M * blocks.size());
  a.xsum.resize(M * blocks.size());
  EXPECT_TRUE(kernels::woq_a8_quantize_acts_ref(v, blocks, x.data(), M, v.K_pad, a.xq.data(), a.d.data(),
                                            a.xsum.data()));
  return a;
}

std::string describe(int bits, bool asym, int64_t group, int64_t M, int64_t N, int64_t K) {
  std::ostringstream os;
  os << "bits " << bits << (asym ? " asym" : " sym") << " group "
     << (group == kNonUniform ? std::string("non-uniform") : std::to_string(group)) << " M " << M << " N " << N
     << " K " << K;
  return os.str();
}

TEST(WoqA8Kernel, BlocksStayInsideGroupsAndQuantizationIsAsDocumented) {
  std::mt19937 rng(11);
  for (int bits : {4, 8})
    for (int64_t group : {int64_t(-1), int64_t(128), int64_t(32), int64_t(20), kNonUniform})
      for (int64_t K : {int64_t(5), int64_t(100), int64_t(257)}) {
        const RandomWeight rw = make_weight(bits, Codebook::Int, false, group, 9, K, rng);
        const WeightView& v = rw.view;
        const std::vector<A8Block> blocks = kernels::woq_a8_blocks(v);
        const std::string what = describe(bits, false, group, 3, 9, K);
        // Contiguous cover of [0, K_pad), each block inside one group, at most 32 columns, never across a
        // multiple of 32, seg_end exactly where the group changes.
        int64_t k = 0;
        for (size_t i = 0; i < blocks.size(); ++i) {
          const A8Block& b = blocks[i];
          ASSERT_EQ(b.k0, k) << what;
          ASSERT_GT(b.k1, b.k0) << what;
          EXPECT_LE(b.k1 - b.k0, kernels::kA8Block) << what;
          EXPECT_EQ(b.k0 / 32, (b.k1 - 1) / 32) << what;
          for (int64_t j = b.k0; j < b.k1; ++j) EXPECT_EQ(rw.col_group[j], b.g) << what;
          const bool group_changes = b.k1 == v.K_pad || rw.col_group[b.k1] != b.g;
          EXPECT_EQ(b.seg_end, group_changes) << what;
          k = b.k1;
        }
        EXPECT_EQ(k, v.K_pad) << what;

        const int64_t M = 3;
        const std::vector<float> x = make_x(M, K, v.K_pad, rng);
        const Acts a = quantize(v, blocks, x, M);
        const int64_t nb = static_cast<int64_t>(blocks.size());
        for (int64_t m = 0; m < M; ++m)
          for (int64_t bi = 0; bi < nb; ++bi) {
            const A8Block& b = blocks[bi];
            float amax = 0.0f;
            int32_t sum = 0;
            for (int64_t j = b.k0; j < b.k1; ++j) amax = std::max(amax, std::fabs(x[m * v.K_pad + j]));
            const float d = a.d[m * nb + bi];
            EXPECT_EQ(d, amax / 127.0f) << what;
            for (int64_t j = b.k0; j < b.k1; ++j) {
              const int q = a.xq[m * v.K_pad + kernels::woq_a8_pos(j, bits)];
              sum += q;
              EXPECT_LE(std::abs(q), 127) << what;
              EXPECT_LE(std::fabs(x[m * v.K_pad + j] - d * q), 0.5001f * d) << what << " m " << m << " k " << j;
              if (std::fabs(x[m * v.K_pad + j]) == amax && amax > 0) {
                EXPECT_EQ(std::abs(q), 127) << what;
              }
            }
            EXPECT_EQ(a.xsum[m * nb + bi], sum) << what;
          }
      }
}

TEST(WoqA8Kernel, PositionsArePermutationsOfEachUnit) {
  for (int bits : {4, 8}) {
    std::vector<int> seen(16, 0);
    for (int64_t k = 0; k < 16; ++k) ++seen[kernels::woq_a8_pos(k, bits)];
    for (int s : seen) EXPECT_EQ(s, 1);
  }
  // The 4-bit order: low nibbles hold columns 0, 2, 4, 6 of a unit, high nibbles 1, 3, 5, 7.
  EXPECT_EQ(kernels::woq_a8_pos(8 + 2, 4), 8 + 1);
  EXPECT_EQ(kernels::woq_a8_pos(8 + 1, 4), 8 + 4);
  EXPECT_EQ(kernels::woq_a8_pos(8 + 7, 4), 8 + 7);
}

// --- Through the op ---------------------------------------------------------------------------------------------

// B[m, n] = sum_b d[m, b] / 2 * sum_{k in b} |w[n, k]| (the activation rounding bound of woq_a8.h), computed
// from the op's own block cut, in original column order via the permutation.
at::Tensor rounding_bound(const PackedWeightPtr& w, const at::Tensor& x2) {
  const WeightView v = w->view();
  const std::vector<A8Block> blocks = kernels::woq_a8_blocks(v);
  at::Tensor xi = w->has_g_idx() ? x2.index_select(1, w->perm()) : x2;
  at::Tensor wi = w->dequantize();
  if (w->has_g_idx()) wi = wi.index_select(1, w->perm());
  // half_d[m, k] = d of the block holding column k, over 2; bound = half_d @ |w|^T.
  at::Tensor half_d = at::zeros({x2.size(0), v.K}, at::kDouble);
  for (const A8Block& b : blocks) {
    const int64_t k1 = std::min(b.k1, v.K);
    if (k1 <= b.k0) continue;
    const at::Tensor amax = std::get<0>(xi.narrow(1, b.k0, k1 - b.k0).abs().max(1, true)).to(at::kDouble);
    half_d.narrow(1, b.k0, k1 - b.k0).copy_((amax / 127.0 / 2.0).expand({x2.size(0), k1 - b.k0}));
  }
  const at::Tensor bound = at::mm(half_d, wi.abs().to(at::kDouble).t());
  return bound;
}

struct Case {
  std::string what;
  PackedWeightPtr w;
  at::Tensor x, bias, y1;
};

// int8, int4 (sym, asym), int4_fullrange; per-channel, 32, 128 and ragged 20 groups; with and without act-order.
std::vector<Case> make_op_cases(const std::vector<std::array<int64_t, 3>>& shapes) {
  std::vector<Case> cases;
  for (const std::string dt : {"int8", "int4", "int4_fullrange"}) {
    const DtypeInfo& info = dtype_info(dt);
    for (bool sym : {true, false}) {
      if (!sym && dt == "int4_fullrange") continue;
      for (int64_t gs : {int64_t(-1), int64_t(32), int64_t(128), int64_t(20)})
        for (bool act_order : {false, true})
          for (const auto& s : shapes) {
            const int64_t M = s[0], N = s[1], K = s[2];
            const int64_t ng = group_count(gs, K);
            const auto [q, scales, zeros] = test::random_logical_weight(info, sym, N, K, ng);
            c10::optional<at::Tensor> g_idx;
            if (act_order) g_idx = at::randint(0, ng, {K}, at::kInt);
            Case c;
            c.w = PackedWeight::pack(q, scales, zeros, dt, gs, g_idx);
            c.x = at::randn({1, M, K});  // 3-D: the op flattens leading dimensions
            c.bias = at::randn({N});
            c.what = dt + (sym ? " sym" : " asym") + " group " + std::to_string(gs) + (act_order ? " g_idx" : "") +
                     " M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K);
            cases.push_back(std::move(c));
          }
    }
  }
  return cases;
}

const std::vector<std::array<int64_t, 3>> kOpShapes = {{1, 33, 172}, {2, 13, 100}, {7, 9, 20}, {64, 40, 257},
                                                    {300, 7, 96}};

TEST(WoqA8Op, WithinTheRoundingBoundOfWoqLinearAndThreadInvariant) {
  at::manual_seed(77);
  std::vector<Case> cases = make_op_cases(kOpShapes);
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  for (Case& c : cases) c.y1 = woq_linear_a8(c.x, c.w, c.bias);
  at::set_num_threads(2);
  double worst = 0.0, err2 = 0.0, ref2 = 0.0;
  for (const Case& c : cases) {
    const at::Tensor y2 = woq_linear_a8(c.x, c.w, c.bias);
    const int64_t M = c.x.size(1), N = c.w->out_features(), K = c.w->in_features();
    ASSERT_EQ(c.y1.sizes(), (std::vector<int64_t>{1, M, N})) << c.what;
    EXPECT_TRUE(c.y1.equal(y2)) << c.what << ": 1 and 2 threads differ";
    const at::Tensor exact = at::linear(c.x.to(at::kDouble), c.w->dequantize().to(at::kDouble),
                                        c.bias.to(at::kDouble)).reshape({M, N});
    const at::Tensor err = (c.y1.reshape({M, N}).to(at::kDouble) - exact).abs();
    const at::Tensor bound = rounding_bound(c.w, c.x.reshape({M, K}));
    // fp32 accumulation adds far less than 1e-3 of the bound (or 1e-5 absolute) on these sizes.
    const at::Tensor excess = err - (bound * 1.001 + 1e-5);
    EXPECT_LE(excess.max().item<double>(), 0.0) << c.what;
    worst = std::max(worst, (err / (bound + 1e-30)).max().item<double>());
    err2 += err.pow(2).sum().item<double>();
    ref2 += (exact - c.bias.to(at::kDouble)).pow(2).sum().item<double>();
  }
  at::set_num_threads(saved);
  // The bound is worst-case; typical errors are a fraction of it, but not vanishing (the path really rounds x).
  EXPECT_GT(worst, 0.01);
  EXPECT_LT(worst, 1.0);
  const double rel = std::sqrt(err2 / ref2);
  EXPECT_LT(rel, 0.01);
  std::cout << "[ info ] worst |y_a8 - y_exact| / bound = " << worst << ", relative RMS error of x W^T = " << rel
            << "\n";
}

TEST(WoqA8Op, RefusesOtherDtypesNonFiniteInputAndBadShapes) {
  at::manual_seed(5);
  for (const std::string dt : {"int3", "int2", "nf4", "fp4_e2m1"}) {
    const auto w = quantize_weight(at::randn({8, 64}), dt, 32, true);
    try {
      woq_linear_a8(at::randn({2, 64}), w, c10::nullopt);
      ADD_FAILURE() << dt << " was accepted";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("got dtype " + dt), std::string::npos) << e.what();
    }
  }
  const auto w = quantize_weight(at::randn({8, 64}), "int4", 32, true);
  at::Tensor x = at::randn({2, 64});
  x[1][5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(woq_linear_a8(x, w, c10::nullopt), c10::Error);
  EXPECT_THROW(woq_linear_a8(at::randn({2, 63}), w, c10::nullopt), c10::Error);
  EXPECT_THROW(woq_linear_a8(at::randn({2, 64}), w, at::randn({7})), c10::Error);
  // Through the dispatcher: CPU equals the C++ function, meta tensors give the shape without computing.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("lwq::woq_linear_a8", "")
                .typed<at::Tensor(const at::Tensor&, const PackedWeightPtr&, const c10::optional<at::Tensor>&)>();
  const at::Tensor x3 = at::randn({3, 5, 64});
  EXPECT_TRUE(op.call(x3, w, c10::nullopt).equal(woq_linear_a8(x3, w, c10::nullopt)));
  const at::Tensor y = op.call(at::empty({3, 5, 64}, at::kMeta), w, c10::nullopt);
  EXPECT_TRUE(y.is_meta());
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 5, 8}));
}

TEST(WoqA8Op, ReferenceFallbackMatchesAvx2ThroughTheOp) {
  // The op at the process's level equals the reference GEMM on the op's own blocks (at every level:
  // test::check_woq_linear_a8_op).
  at::manual_seed(8);
  const auto w = quantize_weight(at::randn({24, 200}), "int4", 64, false);
  const at::Tensor x = at::randn({5, 200});
  const at::Tensor y = woq_linear_a8(x, w, c10::nullopt);
  const WeightView v = w->view();
  const std::vector<A8Block> blocks = kernels::woq_a8_blocks(v);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  std::vector<float> xp(5 * v.K_pad, 0.0f);
  for (int64_t m = 0; m < 5; ++m)
    for (int64_t k = 0; k < 200; ++k) xp[m * v.K_pad + k] = x[m][k].item<float>();
  Acts a = quantize(v, blocks, xp, 5);
  std::vector<float> ref(5 * 24);
  kernels::woq_a8_gemm_ref(v, blocks, a.view(0, v.K_pad, nb), 5, nullptr, ref.data(), 24, 0, v.N_pad / 8);
  EXPECT_EQ(std::memcmp(ref.data(), y.contiguous().data_ptr<float>(), ref.size() * sizeof(float)), 0);
}

}  // namespace

namespace test {

// The level's activation quantization gives the reference's bytes (ties included), and refuses NaN and Inf.
void check_woq_a8_quantize(Level level) {
  const KernelTable& t = kernels::table_for(level);
  std::mt19937 rng(21);
  for (int bits : {4, 8})
    for (int64_t group : {int64_t(-1), int64_t(128), int64_t(20), kNonUniform})
      for (int64_t K : {int64_t(5), int64_t(96), int64_t(257), int64_t(1000)}) {
        const RandomWeight rw = make_weight(bits, Codebook::Int, false, group, 8, K, rng);
        const WeightView& v = rw.view;
        const std::vector<A8Block> blocks = kernels::woq_a8_blocks(v);
        const int64_t M = 7, nb = static_cast<int64_t>(blocks.size());
        std::vector<float> x = make_x(M, K, v.K_pad, rng);
        // Ties: x * id lands exactly on .5 for x = amax * (j + 0.5) / 127 (round half to even).
        for (int64_t k = 0; k < std::min<int64_t>(K, 32); ++k) x[3 * v.K_pad + k] = (k % 2 ? 127.0f : 2.5f + k);
        const Acts ref = quantize(v, blocks, x, M);
        Acts got;
        got.xq.assign(M * v.K_pad, 99);
        got.d.resize(M * nb);
        got.xsum.resize(M * nb);
        EXPECT_TRUE(t.woq_a8_quantize(v, blocks, x.data(), M, v.K_pad, got.xq.data(), got.d.data(), got.xsum.data()));
        const std::string what = describe(bits, false, group, M, 8, K);
        EXPECT_EQ(got.xq, ref.xq) << what;
        EXPECT_EQ(std::memcmp(got.d.data(), ref.d.data(), ref.d.size() * sizeof(float)), 0) << what;
        EXPECT_EQ(got.xsum, ref.xsum) << what;
      }

  const RandomWeight rw = make_weight(4, Codebook::Int, false, 32, 8, 64, rng);
  const std::vector<A8Block> blocks = kernels::woq_a8_blocks(rw.view);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(64, 1.0f);
    x[37] = bad;
    std::vector<int8_t> xq(64);
    std::vector<float> d(blocks.size());
    std::vector<int32_t> xs(blocks.size());
    EXPECT_FALSE(t.woq_a8_quantize(rw.view, blocks, x.data(), 1, 64, xq.data(), d.data(), xs.data())) << bad;
  }
}

// The level's GEMM equals the reference bit for bit for every layout the path supports and any split of rows and
// tiles, and writes no column past N.
void check_woq_a8_gemm(Level level) {
  const KernelTable& t = kernels::table_for(level);
  std::mt19937 rng(20261130);
  // (M, N, K): M in {1, 2, 3, 7, 64, 300}, odd N, K below and not a multiple of the group sizes; M = 1 with K a
  // multiple of 32 and 10 or 13 tiles takes the 4-bit GEMV loops (groups of 4 tiles (AVX2) or 2 pairs (AVX-512),
  // then pairs, then one tile).
  const std::vector<std::array<int64_t, 3>> shapes = {{1, 7, 13},    {2, 13, 100}, {3, 33, 172},  {7, 1, 257},
                                                      {1, 16, 1},    {1, 45, 300}, {64, 13, 257}, {300, 7, 100},
                                                      {5, 24, 1000}, {1, 77, 384}, {1, 104, 96}};
  int toggle = 0;
  int64_t cases = 0;
  for (int bits : {4, 8})
    for (bool asym : {false, true})
      for (int64_t group : {int64_t(-1), int64_t(32), int64_t(128), int64_t(20), int64_t(96), kNonUniform})
        for (const auto& s : shapes) {
          const int64_t M = s[0], N = s[1], K = s[2];
          const RandomWeight rw = make_weight(bits, Codebook::Int, asym, group, N, K, rng);
          const WeightView& v = rw.view;
          const std::vector<A8Block> blocks = kernels::woq_a8_blocks(v);
          const int64_t nb = static_cast<int64_t>(blocks.size());
          const std::vector<float> x = make_x(M, K, v.K_pad, rng);
          const Acts a = quantize(v, blocks, x, M);
          std::vector<float> bias(N);
          std::normal_distribution<float> nd(0.0f, 1.0f);
          for (auto& b : bias) b = nd(rng);
          const float* bp = (++toggle % 2) ? bias.data() : nullptr;
          const int64_t tiles = v.N_pad / kernels::kTileN;
          const int64_t ldy = N + 3;  // columns N.. hold a sentinel that must survive
          const float kSentinel = 12345.0f;
          std::vector<float> ref(M * ldy, kSentinel), got(M * ldy, kSentinel), split(M * ldy, kSentinel);
          kernels::woq_a8_gemm_ref(v, blocks, a.view(0, v.K_pad, nb), M, bp, ref.data(), ldy, 0, tiles);
          t.woq_a8_gemm(v, blocks, a.view(0, v.K_pad, nb), M, bp, got.data(), ldy, 0, tiles);
          // Rows {0}, {1 .. M/2}, {M/2 + 1 ..}; tiles {0}, {1 ..}.
          const int64_t row_cuts[] = {0, std::min<int64_t>(1, M), std::max<int64_t>(std::min<int64_t>(1, M), M / 2 + 1), M};
          const int64_t tile_cuts[] = {0, std::min<int64_t>(1, tiles), tiles};
          for (int ri = 0; ri < 3; ++ri)
            for (int ti = 0; ti < 2; ++ti) {
              const int64_t m0 = row_cuts[ri], m1 = row_cuts[ri + 1];
              if (m1 <= m0) continue;
              t.woq_a8_gemm(v, blocks, a.view(m0, v.K_pad, nb), m1 - m0, bp, split.data() + m0 * ldy, ldy,
                            tile_cuts[ti], tile_cuts[ti + 1]);
            }
          const std::string what = describe(bits, asym, group, M, N, K);
          EXPECT_EQ(std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)), 0) << what;
          EXPECT_EQ(std::memcmp(ref.data(), split.data(), ref.size() * sizeof(float)), 0) << what << " (split)";
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = N; n < ldy; ++n) ASSERT_EQ(got[m * ldy + n], kSentinel) << what << ": wrote past N";
          ++cases;
        }
  EXPECT_EQ(cases, 2 * 2 * 6 * 11);
}

// The op at `level`, 1 and 2 threads: the bits of the op at the reference level. Shapes: those of the rounding
// bound test and with_op_level_shapes' (kernel_levels.h).
void check_woq_linear_a8_op(Level level) {
  at::manual_seed(78);
  const std::vector<std::array<int64_t, 3>> shapes = test::with_op_level_shapes(kOpShapes);
  const int saved_threads = at::get_num_threads();
  for (const Case& c : make_op_cases(shapes)) {
    at::Tensor ref;
    {
      kernels::ScopedLevel scalar(Level::Ref);
      at::set_num_threads(1);
      ref = woq_linear_a8(c.x, c.w, c.bias);
    }
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      EXPECT_TRUE(woq_linear_a8(c.x, c.w, c.bias).equal(ref))
          << c.what << " threads " << threads << ": not the bits of the reference";
    }
    at::set_num_threads(saved_threads);
  }
}

}  // namespace test
}  // namespace lwq
