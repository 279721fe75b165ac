// The weight-only GEMM kernels against the scalar reference (torch-free: random codes packed with pack_codes into
// a WeightView built here; test::check_woq_gemm, run at every ISA level by test_kernel_levels.cpp), and
// lwq::woq_linear against x @ dequantize().T through PackedWeight (test::check_woq_linear_op at every level, the
// TESTs below at the process's level).
//
// Tolerance. The SIMD paths accumulate in fp32; the decode path sums code * x and subtracts zero * sum(x) per
// group, so its rounding scales with the size of the codes, not of the weights. With
//   B[m, n] = sum_k |x[m, k]| * |scale(n, k)| * (|code - zero| + |zero|)      (integers)
//   B[m, n] = sum_k |x[m, k] * w[n, k]|                                        (nf4 / fp4)
// we require |y - y_ref| <= kRelTol * B + kAbsTol.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
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

using kernels::Codebook;
using kernels::KernelTable;
using kernels::Level;
using kernels::WeightView;
using test::kNonUniform;
using test::make_weight;
using test::RandomWeight;
using kernels::WoqPath;

constexpr double kRelTol = 1e-5;
constexpr double kAbsTol = 1e-6;

// x [M, K_pad] with zeros past K, values of both signs.
std::vector<float> make_x(int64_t M, int64_t K, int64_t K_pad, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(M * K_pad, 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) x[m * K_pad + k] = d(rng);
  return x;
}

// B of the header comment.
std::vector<double> error_bound(const RandomWeight& rw, const std::vector<float>& x, int64_t M) {
  const WeightView& v = rw.view;
  const float* table = kernels::codebook_table(v.codebook);
  std::vector<double> b(M * v.N, 0.0);
  for (int64_t n = 0; n < v.N; ++n)
    for (int64_t k = 0; k < v.K; ++k) {
      const int64_t g = rw.col_group[k];
      const double s = std::fabs(rw.scales[g * v.N_pad + n]);
      const int c = rw.codes[n * v.K + k];
      double mag;
      if (table) {
        mag = s * std::fabs(table[c]);
      } else {
        const int z = v.zeros ? v.zeros[g * v.N_pad + n] : kernels::sym_zero(v.bits);
        mag = s * (std::abs(c - z) + std::abs(z));
      }
      for (int64_t m = 0; m < M; ++m) b[m * v.N + n] += std::fabs(x[m * v.K_pad + k]) * mag;
    }
  return b;
}

std::string describe(int bits, Codebook cb, bool asym, int64_t group, int64_t M, int64_t N, int64_t K) {
  std::ostringstream os;
  os << "bits " << bits << " codebook " << static_cast<int>(cb) << (asym ? " asym" : " sym") << " group "
     << (group == kNonUniform ? std::string("non-uniform") : std::to_string(group)) << " M " << M << " N " << N
     << " K " << K;
  return os.str();
}

struct Layout {
  int bits;
  Codebook cb;
  bool asym;
};
const std::vector<Layout> kLayouts = {
    {8, Codebook::Int, false}, {8, Codebook::Int, true}, {4, Codebook::Int, false}, {4, Codebook::Int, true},
    {3, Codebook::Int, false}, {3, Codebook::Int, true}, {2, Codebook::Int, false}, {2, Codebook::Int, true},
    {4, Codebook::NF4, false}, {4, Codebook::FP4, false}};
const std::vector<int64_t> kGroups = {-1, 32, 64, 128, 20, kNonUniform};

// Runs one case through the reference and both paths of t.woq_gemm (and of twin->woq_gemm, which must give the
// same bits, when given); returns the worst error / bound ratio seen.
double check_case(const KernelTable& t, const KernelTable* twin, int bits, Codebook cb, bool asym, int64_t group,
                  int64_t M, int64_t N, int64_t K, bool with_bias, std::mt19937& rng) {
  const RandomWeight rw = make_weight(bits, cb, asym, group, N, K, rng);
  const WeightView& v = rw.view;
  const std::vector<float> x = make_x(M, K, v.K_pad, rng);
  std::vector<float> bias(N);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& b : bias) b = d(rng);
  const float* bp = with_bias ? bias.data() : nullptr;
  const int64_t tiles = v.N_pad / kernels::kTileN;
  // y has a wider row stride than N, with a sentinel that must survive (only columns < N are written).
  const int64_t ldy = N + 3;
  const float kSentinel = 12345.0f;
  std::vector<float> ref(M * ldy, kSentinel);
  kernels::woq_gemm_ref(v, x.data(), M, v.K_pad, bp, ref.data(), ldy, 0, tiles);
  const std::vector<double> bound = error_bound(rw, x, M);
  const std::string what = describe(bits, cb, asym, group, M, N, K) + (with_bias ? " bias" : "");
  double worst = 0.0;
  for (WoqPath path : {WoqPath::Decode, WoqPath::Blocked}) {
    std::vector<float> y(M * ldy, kSentinel);
    t.woq_gemm(v, x.data(), M, v.K_pad, bp, y.data(), ldy, 0, tiles, path);
    if (twin) {
      std::vector<float> y2(M * ldy, kSentinel);
      twin->woq_gemm(v, x.data(), M, v.K_pad, bp, y2.data(), ldy, 0, tiles, path);
      EXPECT_EQ(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)), 0)
          << what << " path " << static_cast<int>(path) << ": not the bits of " << kernels::level_name(twin->level);
    }
    int failures = 0;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < ldy; ++n) {
        const float got = y[m * ldy + n], want = ref[m * ldy + n];
        if (n >= N) {
          if (got != kSentinel && ++failures <= 3) ADD_FAILURE() << what << ": wrote past N at m " << m << " n " << n;
          continue;
        }
        const double b = bound[m * N + n];
        const double err = std::fabs(static_cast<double>(got) - want);
        if (b > 0) worst = std::max(worst, err / b);
        if (!(err <= kRelTol * b + kAbsTol) && ++failures <= 3)
          ADD_FAILURE() << what << " path " << static_cast<int>(path) << ": y[" << m << "," << n << "] = " << got
                        << ", ref " << want << ", bound " << b;
      }
    }
  }
  return worst;
}

// --- Through the op ---------------------------------------------------------------------------------------------

const std::vector<std::string> kDtypes = {"int8", "int4", "int4_fullrange", "int3", "int2", "nf4", "fp4_e2m1"};

struct OpCase {
  std::string what;
  PackedWeightPtr w;
  at::Tensor x, bias, want, bound;
};

// Every dtype, sym and asym, per-channel / 32 / ragged 20 groups, with and without act-order, over (M, N, K) shapes;
// want = x @ dequantize().T + bias in double, bound = B of the header comment.
std::vector<OpCase> make_op_cases(const std::vector<std::array<int64_t, 3>>& shapes) {
  std::vector<OpCase> cases;
  for (const std::string& dt : kDtypes) {
    const DtypeInfo& info = dtype_info(dt);
    for (bool sym : {true, false}) {
      if (!sym && !(info.is_int() && dt != "int4_fullrange")) continue;
      for (int64_t gs : {int64_t(-1), int64_t(32), int64_t(20)})
        for (bool act_order : {false, true})
          for (const auto& s : shapes) {
            const int64_t M = s[0], N = s[1], K = s[2];
            const int64_t ng = group_count(gs, K);
            const auto [q, scales, zeros] = test::random_logical_weight(info, sym, N, K, ng);
            const at::Tensor groups =
                act_order ? at::randint(0, ng, {K}, at::kLong) : at::arange(K, at::kLong).div(gs == -1 ? K : gs, "floor");
            c10::optional<at::Tensor> g_idx;
            if (act_order) g_idx = groups.to(at::kInt);
            OpCase c;
            c.what = dt + (sym ? " sym" : " asym") + " group " + std::to_string(gs) + (act_order ? " g_idx" : "") +
                     " M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K);
            c.w = PackedWeight::pack(q, scales, zeros, dt, gs, g_idx);
            c.x = at::randn({1, M, K});  // 3-D: the op flattens leading dimensions
            c.bias = at::randn({N});
            const at::Tensor deq = c.w->dequantize();
            c.want = at::linear(c.x.to(at::kDouble), deq.to(at::kDouble), c.bias.to(at::kDouble));
            // B = |x| @ (|w| + |scale| * |zero|)^T with the zero in code space.
            const at::Tensor s_full = scales.index_select(1, groups);
            at::Tensor zmag = at::zeros_like(s_full);
            if (!sym)
              zmag = zeros->to(at::kFloat).index_select(1, groups);
            else if (info.is_int())
              zmag.fill_(kernels::sym_zero(info.bits));
            c.bound = at::linear(c.x.abs(), deq.abs() + s_full.abs() * zmag).to(at::kDouble);
            cases.push_back(std::move(c));
          }
    }
  }
  return cases;
}

// (M, N, K): decode and blocked sizes, odd shapes, and few tiles with many rows (the op then splits rows).
const std::vector<std::array<int64_t, 3>> kOpShapes = {{1, 33, 172}, {3, 13, 100}, {64, 40, 257}, {300, 7, 96}};

void expect_within_bound(const OpCase& c, const at::Tensor& y, const std::string& what) {
  const at::Tensor excess = (y.to(at::kDouble) - c.want).abs() - (c.bound * kRelTol + kAbsTol);
  EXPECT_LE(excess.max().item<double>(), 0.0) << what;
}

TEST(WoqKernel, WoqLinearMatchesDequantizedMatmulAndIsThreadInvariant) {
  at::manual_seed(2024);
  const std::vector<OpCase> cases = make_op_cases(kOpShapes);
  std::vector<at::Tensor> y1;
  const int saved_threads = at::get_num_threads();
  at::set_num_threads(1);
  for (const OpCase& c : cases) y1.push_back(woq_linear(c.x, c.w, c.bias));
  at::set_num_threads(2);
  for (size_t i = 0; i < cases.size(); ++i) {
    const OpCase& c = cases[i];
    const at::Tensor y2 = woq_linear(c.x, c.w, c.bias);
    ASSERT_EQ(y1[i].sizes(), (std::vector<int64_t>{1, c.x.size(1), c.w->out_features()})) << c.what;
    EXPECT_TRUE(y1[i].equal(y2)) << c.what << ": 1 and 2 threads differ";
    expect_within_bound(c, y1[i], c.what);
  }
  at::set_num_threads(saved_threads);
}

TEST(WoqKernel, WoqLinearWithoutBiasAndBf16Input) {
  at::manual_seed(9);
  const int64_t N = 19, K = 130;
  at::Tensor q = at::randint(-8, 8, {N, K}, at::kInt);
  at::Tensor scales = at::rand({N, 2}) * 0.1 + 0.01;
  auto w = PackedWeight::pack(q, scales, c10::nullopt, "int4", 128, c10::nullopt);
  at::Tensor x = at::randn({4, 3, K});
  const at::Tensor want = at::linear(x, w->dequantize());
  const at::Tensor got = woq_linear(x, w, c10::nullopt);
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{4, 3, N}));
  EXPECT_TRUE(at::allclose(got, want, 1e-4, 1e-4));
  // bf16 activations are computed in fp32 and cast back.
  const at::Tensor got_bf16 = woq_linear(x.to(at::kBFloat16), w, c10::nullopt);
  EXPECT_EQ(got_bf16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::allclose(got_bf16.to(at::kFloat), at::linear(x.to(at::kBFloat16).to(at::kFloat), w->dequantize()),
                           2e-2, 2e-2));
}

}  // namespace

namespace test {

void check_woq_gemm(Level level) {
  const KernelTable& t = kernels::table_for(level);
  // Above avx2 the kernel performs the AVX2 kernel's operations in the same order: the same bits.
  const KernelTable* twin = level > Level::Avx2 ? &kernels::table_for(Level::Avx2) : nullptr;
  std::mt19937 rng(20240611);
  // (M, N, K): odd N and K, K below and not a multiple of the group sizes, one-column weights.
  const std::vector<std::array<int64_t, 3>> shapes = {
      {1, 7, 13}, {2, 13, 100}, {3, 33, 172}, {7, 1, 257}, {1, 16, 1}, {5, 9, 64}, {64, 13, 257}, {300, 7, 100}};
  double worst = 0.0;
  int bias_toggle = 0;
  for (const Layout& l : kLayouts)
    for (int64_t group : kGroups)
      for (const auto& s : shapes)
        worst = std::max(worst, check_case(t, twin, l.bits, l.cb, l.asym, group, s[0], s[1], s[2],
                                           (++bias_toggle % 2) == 0, rng));
  // The bound must be meaningful, not vacuous: fp32 rounding shows up at well below the tolerance.
  if (level != Level::Ref) {
    EXPECT_GT(worst, 0.0);
  }
  EXPECT_LT(worst, kRelTol);
  std::cout << "[ info ] " << kernels::level_name(level) << ": worst |y - y_ref| / B = " << worst << "\n";

  // Long K: several 256-column panels of the blocked path, groups spanning panels, a ragged last group.
  for (const Layout& l : kLayouts)
    for (int64_t group : {int64_t(-1), int64_t(128), int64_t(96)}) {
      check_case(t, twin, l.bits, l.cb, l.asym, group, 2, 24, 1000, true, rng);
      check_case(t, twin, l.bits, l.cb, l.asym, group, 70, 17, 600, false, rng);
    }

  // Any split of tiles or rows must give the same bits: that is what makes woq_linear independent of the number
  // of threads.
  for (const Layout& l : kLayouts)
    for (int64_t group : {int64_t(32), int64_t(20), kNonUniform})
      for (WoqPath path : {WoqPath::Decode, WoqPath::Blocked}) {
        const int64_t M = 13, N = 45, K = 300;
        const RandomWeight rw = make_weight(l.bits, l.cb, l.asym, group, N, K, rng);
        const WeightView& v = rw.view;
        const std::vector<float> x = make_x(M, K, v.K_pad, rng);
        const int64_t tiles = v.N_pad / kernels::kTileN;
        std::vector<float> whole(M * N), split(M * N, -1.0f);
        t.woq_gemm(v, x.data(), M, v.K_pad, nullptr, whole.data(), N, 0, tiles, path);
        // Tiles {0}, {1, 2, 3}, {4, 5}; rows {0..4}, {5}, {6..12}.
        const int64_t tile_cuts[] = {0, 1, 4, tiles};
        const int64_t row_cuts[] = {0, 5, 6, M};
        for (int ti = 0; ti < 3; ++ti)
          for (int ri = 0; ri < 3; ++ri)
            t.woq_gemm(v, x.data() + row_cuts[ri] * v.K_pad, row_cuts[ri + 1] - row_cuts[ri], v.K_pad, nullptr,
                       split.data() + row_cuts[ri] * N, N, tile_cuts[ti], tile_cuts[ti + 1], path);
        EXPECT_EQ(std::memcmp(whole.data(), split.data(), whole.size() * sizeof(float)), 0)
            << describe(l.bits, l.cb, l.asym, group, M, N, K) << " path " << static_cast<int>(path);
      }

  if (!twin) return;
  // The AVX-512 code (woq_gemm_avx512.cpp) against the AVX2 code, bit for bit. Decode row loop: every integer
  // width it serves, ragged and cut groups, odd tile counts (a pair group, single pairs and a leftover tile), bias,
  // tile ranges starting on an odd tile, the last row of a larger M. Blocked micro-kernel: every layout, row counts
  // around its 12-row step, several 256-column panels, odd tile counts.
  const std::vector<std::array<int64_t, 3>> decode_shapes = {{1, 7, 13},  {1, 45, 300},  {1, 77, 384}, {5, 136, 100},
                                                             {1, 16, 1},  {1, 200, 1000}, {3, 24, 64}};
  const std::vector<std::array<int64_t, 3>> blocked_shapes = {{12, 16, 300}, {13, 45, 600}, {30, 24, 100},
                                                              {70, 17, 257}, {1, 8, 40}};
  int64_t cases = 0;
  auto compare = [&](const Layout& l, int64_t group, const std::array<int64_t, 3>& s, WoqPath path) {
    const int64_t M = s[0], N = s[1], K = s[2];
    const RandomWeight rw = make_weight(l.bits, l.cb, l.asym, group, N, K, rng);
    const WeightView& v = rw.view;
    const std::vector<float> x = make_x(M, K, v.K_pad, rng);
    std::vector<float> bias(N);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (auto& b : bias) b = d(rng);
    const float* bp = (++cases % 2) ? bias.data() : nullptr;
    const int64_t tiles = v.N_pad / kernels::kTileN, ldy = N + 3;
    std::vector<float> avx2(M * ldy, 7.0f), got(M * ldy, 7.0f), split(M * ldy, 7.0f);
    twin->woq_gemm(v, x.data(), M, v.K_pad, bp, avx2.data(), ldy, 0, tiles, path);
    t.woq_gemm(v, x.data(), M, v.K_pad, bp, got.data(), ldy, 0, tiles, path);
    const int64_t cut = std::min<int64_t>(1, tiles);  // tiles {0}, {1 ..}: the second range starts odd
    t.woq_gemm(v, x.data(), M, v.K_pad, bp, split.data(), ldy, 0, cut, path);
    t.woq_gemm(v, x.data(), M, v.K_pad, bp, split.data(), ldy, cut, tiles, path);
    const std::string what = describe(l.bits, l.cb, l.asym, group, M, N, K) + " path " +
                             std::to_string(static_cast<int>(path));
    EXPECT_EQ(std::memcmp(avx2.data(), got.data(), avx2.size() * sizeof(float)), 0) << what;
    EXPECT_EQ(std::memcmp(avx2.data(), split.data(), avx2.size() * sizeof(float)), 0) << what << " (split)";
  };
  for (const Layout& l : kLayouts)
    for (int64_t group : kGroups) {
      if (l.cb == Codebook::Int && l.bits != 3)  // the decode row loop serves these
        for (const auto& s : decode_shapes) compare(l, group, s, WoqPath::Decode);
      for (const auto& s : blocked_shapes) compare(l, group, s, WoqPath::Blocked);
    }
  EXPECT_EQ(cases, 6 * 6 * 7 + 10 * 6 * 5);
}

// The op at `level`, 1 and 2 threads: the same bits as the level's GEMM run directly on the op's own kernel input
// (so the op uses the table), within the bound of x @ dequantize().T, and above avx2 the bits of the op at avx2.
// Shapes: kOpShapes and with_op_level_shapes' (kernel_levels.h).
void check_woq_linear_op(Level level) {
  at::manual_seed(2025);
  const std::vector<std::array<int64_t, 3>> shapes = test::with_op_level_shapes(kOpShapes);
  const KernelTable& t = kernels::table_for(level);
  const int saved_threads = at::get_num_threads();
  for (const OpCase& c : make_op_cases(shapes)) {
    at::Tensor y[2];
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      y[threads - 1] = woq_linear(c.x, c.w, c.bias);
    }
    at::set_num_threads(saved_threads);
    EXPECT_TRUE(y[0].equal(y[1])) << c.what << ": 1 and 2 threads differ";
    expect_within_bound(c, y[0], c.what);
    const KernelInput in = kernel_input("test", c.x, *c.w, c.bias);
    const WeightView v = c.w->view();
    at::Tensor direct = at::empty({in.M, v.N});
    t.woq_gemm(v, in.x.data_ptr<float>(), in.M, v.K_pad, in.bias.data_ptr<float>(), direct.data_ptr<float>(), v.N,
               0, v.N_pad / kernels::kTileN, kernels::woq_path_for(in.M));
    EXPECT_TRUE(direct.equal(y[0].reshape({in.M, v.N}))) << c.what << ": not the table's kernel";
    if (level > Level::Avx2) {
      kernels::ScopedLevel avx2(Level::Avx2);
      for (int threads : {1, 2}) {
        at::set_num_threads(threads);
        EXPECT_TRUE(woq_linear(c.x, c.w, c.bias).equal(y[threads - 1]))
            << c.what << " threads " << threads << ": not the bits of avx2";
      }
      at::set_num_threads(saved_threads);
    }
  }
}

}  // namespace test
}  // namespace lwq
