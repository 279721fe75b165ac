// Static W8A8: the kernels of every ISA level against the scalar reference, bit for bit, with the int32 accumulator
// at its limit (test::check_w8a8_*, run by test_kernel_levels.cpp), the op against its float definition,
// thread-count independence, and input validation.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernel_levels.h"
#include "kernels/dispatch.h"
#include "ops.h"
#include "test_util.h"

namespace lwq {
namespace {

using kernels::KernelTable;
using kernels::Level;
using test::expect_error;

struct ActRange {
  const char* dtype;
  int32_t qmin, qmax;
};
const ActRange kUint8{"uint8", 0, 255};
const ActRange kInt8{"int8", -128, 127};

struct QuantizedActs {
  std::vector<int16_t> d;
  std::vector<int32_t> row_sum;
  int64_t ldd = 0;
  bool ok = false;
};

QuantizedActs quantize_acts(kernels::W8a8QuantizeFn fn, const at::Tensor& x, float scale, int32_t zp,
                            const ActRange& r) {
  const int64_t M = x.size(0), K = x.size(1);
  QuantizedActs q;
  q.ldd = kernels::round_up(K, 4) + 4;  // a row stride larger than needed must work too
  q.d.assign(static_cast<size_t>(M * q.ldd), int16_t{0x5A5A});
  q.row_sum.assign(static_cast<size_t>(M), -1);
  q.ok = fn(x.data_ptr<float>(), M, K, K, scale, zp, r.qmin, r.qmax, q.d.data(), q.ldd, q.row_sum.data());
  return q;
}

const kernels::W8a8QuantizeFn kQuantizeRef = kernels::w8a8_quantize_acts_ref;
const kernels::W8a8GemmFn kGemmRef = kernels::w8a8_gemm_ref;

// y [M, N] from the GEMM kernel fn, run over the tile ranges split at `cuts` (as different thread counts would).
at::Tensor gemm(kernels::W8a8GemmFn fn, const PackedWeight& w, const QuantizedActs& q, float scale,
                const at::Tensor& bias, std::vector<int64_t> cuts = {}) {
  const kernels::WeightView v = w.view();
  const int64_t M = static_cast<int64_t>(q.row_sum.size());
  at::Tensor y = at::full({M, v.N}, std::numeric_limits<float>::quiet_NaN());
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const int64_t tiles = v.N_pad / kernels::kTileN;
  cuts.erase(std::remove_if(cuts.begin(), cuts.end(), [&](int64_t c) { return c <= 0 || c >= tiles; }), cuts.end());
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(tiles);
  for (size_t i = 0; i + 1 < cuts.size(); ++i)
    fn(v, q.d.data(), q.row_sum.data(), M, q.ldd, scale, b, y.data_ptr<float>(), v.N, cuts[i], cuts[i + 1]);
  return y;
}

// Activations with ties (odd multiples of scale / 2), values far outside the range and infinities.
at::Tensor awkward_acts(int64_t M, int64_t K, float scale) {
  at::Tensor x = at::randn({M, K}) * (60 * scale);
  float* p = x.data_ptr<float>();
  const float specials[] = {1e30f, -1e30f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), 1000 * scale, -1000 * scale};
  for (int64_t i = 0; i < x.numel(); i += 5) p[i] = (static_cast<float>(i % 41) - 20.5f) * scale;
  for (int64_t i = 3; i < x.numel(); i += 11) p[i] = specials[(i / 11) % 6];
  return x;
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         std::memcmp(a.data_ptr<float>(), b.data_ptr<float>(), a.numel() * sizeof(float)) == 0;
}

// y = (xq - zp) * act_scale @ dequantize(w).T + b, computed in double.
at::Tensor float_reference(const at::Tensor& x, const PackedWeight& w, double scale, int64_t zp,
                           const ActRange& r, const at::Tensor& bias) {
  at::Tensor xq = at::empty_like(x);
  const float s = static_cast<float>(scale);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.data_ptr<float>()[i];
    xq.data_ptr<float>()[i] = std::min<float>(std::max<float>(std::nearbyint(v / s) + zp, r.qmin), r.qmax);
  }
  const at::Tensor xd = (xq.to(at::kDouble) - zp) * static_cast<double>(s);
  at::Tensor y = at::matmul(xd, w.dequantize().to(at::kDouble).t());
  if (bias.defined()) y = y + bias.to(at::kDouble);
  return y;
}

using Shapes = std::vector<std::tuple<int64_t, int64_t, int64_t>>;

// w8a8_linear on (M, N, K) shapes at 1 and 2 threads: the same bits, those of the scalar reference kernels, and
// within 1e-4 of the float definition.
void check_op(const Shapes& shapes) {
  const int saved_threads = at::get_num_threads();
  for (const ActRange& r : {kUint8, kInt8}) {
    for (const auto& [M, N, K] : shapes) {
      const auto w = quantize_weight(at::randn({N, K}), "int8", -1, true);
      const at::Tensor bias = at::randn({N});
      const double scale = 0.031;
      const int64_t zp = r.qmin == 0 ? 120 : -5;
      at::Tensor x = at::randn({M, K}) * 2.0;
      x[0][0] = 1e6f;  // saturates
      x[M - 1][K - 1] = -1e6f;
      at::set_num_threads(1);
      const at::Tensor y1 = w8a8_linear(x, w, scale, zp, bias, r.dtype);
      at::set_num_threads(2);
      const at::Tensor y2 = w8a8_linear(x, w, scale, zp, bias, r.dtype);
      at::set_num_threads(saved_threads);
      const std::string where = std::string(r.dtype) + " M " + std::to_string(M) + " N " + std::to_string(N) +
                                " K " + std::to_string(K);
      EXPECT_TRUE(bit_equal(y1, y2)) << where;
      const at::Tensor want = float_reference(x, *w, scale, zp, r, bias);
      const double err = (y1.to(at::kDouble) - want).abs().max().item<double>();
      EXPECT_LE(err, 1e-4 * want.abs().max().item<double>()) << where;
      // The same bits as the scalar reference kernels.
      const QuantizedActs q = quantize_acts(kQuantizeRef, x, static_cast<float>(scale), zp, r);
      EXPECT_TRUE(bit_equal(y1, gemm(kGemmRef, *w, q, static_cast<float>(scale), bias))) << where;
    }
  }
}

TEST(W8a8Kernel, OpMatchesFloatReferenceAndIsThreadIndependent) {
  at::manual_seed(83);
  check_op({{1, 33, 257}, {7, 13, 100}, {64, 40, 172}, {300, 17, 96}});
}

TEST(W8a8Kernel, OpThroughDispatcherKeepsLeadingDims) {
  at::manual_seed(84);
  const auto w = quantize_weight(at::randn({10, 24}), "int8", -1, true);
  const at::Tensor x = at::randn({2, 3, 24});
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("lwq::w8a8_linear", "")
                .typed<at::Tensor(const at::Tensor&, const PackedWeightPtr&, double, int64_t,
                                  const c10::optional<at::Tensor>&, const std::string&)>();
  const at::Tensor y = op.call(x, w, 0.02, 3, c10::nullopt, "int8");
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 10}));
  EXPECT_TRUE(bit_equal(y.reshape({6, 10}), w8a8_linear(x.reshape({6, 24}), w, 0.02, 3, c10::nullopt, "int8")));
}

TEST(W8a8Kernel, OpRejectsBadInput) {
  at::manual_seed(85);
  const auto w = quantize_weight(at::randn({8, 16}), "int8", -1, true);
  const at::Tensor x = at::randn({2, 16});
  const auto none = c10::nullopt;
  expect_error([&] { w8a8_linear(x, quantize_weight(at::randn({8, 16}), "int4", -1, true), 0.1, 0, none, "uint8"); },
               "must be int8 symmetric, got dtype int4");
  expect_error([&] { w8a8_linear(x, quantize_weight(at::randn({8, 16}), "int8", -1, false), 0.1, 0, none, "uint8"); },
               "sym=0");
  expect_error([&] { w8a8_linear(x, quantize_weight(at::randn({8, 16}), "int8", 8, true), 0.1, 0, none, "uint8"); },
               "group_size -1), got group_size 8");
  expect_error([&] { w8a8_linear(x, w, 0.0, 0, none, "uint8"); }, "act_scale must be finite and > 0, got 0");
  expect_error([&] { w8a8_linear(x, w, -0.5, 0, none, "uint8"); }, "got -0.5");
  expect_error([&] { w8a8_linear(x, w, std::nan(""), 0, none, "uint8"); }, "act_scale must be finite");
  expect_error([&] { w8a8_linear(x, w, INFINITY, 0, none, "uint8"); }, "act_scale must be finite");
  expect_error([&] { w8a8_linear(x, w, 1e-60, 0, none, "uint8"); }, "positive finite float");
  expect_error([&] { w8a8_linear(x, w, 0.1, 256, none, "uint8"); }, "act_zero_point must be in [0, 255]");
  expect_error([&] { w8a8_linear(x, w, 0.1, -1, none, "uint8"); }, "got -1");
  expect_error([&] { w8a8_linear(x, w, 0.1, 128, none, "int8"); }, "act_zero_point must be in [-128, 127]");
  expect_error([&] { w8a8_linear(x, w, 0.1, 0, none, "fp8"); }, "act_dtype must be \"uint8\" or \"int8\", got \"fp8\"");
  expect_error([&] { w8a8_linear(at::randn({2, 15}), w, 0.1, 0, none, "uint8"); }, "got [2, 15]");
  expect_error([&] { w8a8_linear(x, w, 0.1, 0, at::zeros({7}), "uint8"); }, "bias must have shape [8]");
  at::Tensor bad = x.clone();
  bad[1][9] = NAN;
  expect_error([&] { w8a8_linear(bad, w, 0.1, 0, none, "uint8"); }, "x contains NaN");
  const auto wide = quantize_weight(at::randn({1, kernels::kW8a8MaxK + 1}), "int8", -1, true);
  expect_error([&] { w8a8_linear(at::randn({1, kernels::kW8a8MaxK + 1}), wide, 0.1, 0, none, "uint8"); },
               "in_features must be <= 65536");
}

}  // namespace

namespace test {

// The level's activation quantization: the reference's values, which are the definition's (padding columns 0),
// and the row sums; NaN refused in the vector part and in the scalar tail.
void check_w8a8_quantize(Level level) {
  const KernelTable& t = kernels::table_for(level);
  at::manual_seed(81);
  const float scale = 0.037f;
  for (const ActRange& r : {kUint8, kInt8}) {
    for (int32_t zp : {r.qmin, r.qmax, (r.qmin + r.qmax) / 2, r.qmin + 3}) {
      for (int64_t M : {1, 3, 7}) {
        for (int64_t K : {1, 13, 16, 17, 100, 172, 257}) {
          const at::Tensor x = awkward_acts(M, K, scale);
          const QuantizedActs ref = quantize_acts(kQuantizeRef, x, scale, zp, r);
          const QuantizedActs fast = quantize_acts(t.w8a8_quantize, x, scale, zp, r);
          ASSERT_TRUE(ref.ok && fast.ok);
          const std::string where = std::string(r.dtype) + " zp " + std::to_string(zp) + " M " +
                                    std::to_string(M) + " K " + std::to_string(K);
          for (int64_t m = 0; m < M; ++m) {
            int32_t sum = 0;
            for (int64_t k = 0; k < kernels::round_up(K, 4); ++k) {
              const int64_t pos = m * ref.ldd + kernels::w8a8_act_pos(k);
              ASSERT_EQ(ref.d[pos], fast.d[pos]) << where << " m " << m << " k " << k;
              int32_t want = 0;  // padding columns hold 0
              if (k < K) {
                const float v = x[m][k].item<float>();
                const double xq = std::min<double>(std::max<double>(std::nearbyint(v / scale) + zp, r.qmin), r.qmax);
                want = static_cast<int32_t>(xq) - zp;
              }
              ASSERT_EQ(ref.d[pos], want) << where << " m " << m << " k " << k;
              sum += want;
            }
            ASSERT_EQ(ref.row_sum[m], sum) << where;
            ASSERT_EQ(fast.row_sum[m], sum) << where;
          }
        }
      }
    }
  }

  at::Tensor x = at::randn({2, 37});
  x[1][33] = std::numeric_limits<float>::quiet_NaN();  // in the scalar tail of the AVX2 loop
  EXPECT_FALSE(quantize_acts(t.w8a8_quantize, x, 0.1f, 128, kUint8).ok);
  x[1][33] = 0;
  x[0][5] = std::numeric_limits<float>::quiet_NaN();  // in the vector part
  EXPECT_FALSE(quantize_acts(t.w8a8_quantize, x, 0.1f, 128, kUint8).ok);
  x[0][5] = 0;
  EXPECT_TRUE(quantize_acts(t.w8a8_quantize, x, 0.1f, 128, kUint8).ok);
}

// The level's GEMM: the reference's bits on awkward shapes, with and without bias, under tile splits, and with the
// int32 accumulator at its limit.
void check_w8a8_gemm(Level level) {
  const KernelTable& t = kernels::table_for(level);
  at::manual_seed(82);
  const std::vector<std::pair<int64_t, int64_t>> nks = {{1, 1}, {7, 13}, {13, 100}, {33, 172}, {13, 257}, {1, 3}};
  for (const auto& [N, K] : nks) {
    const auto w = quantize_weight(at::randn({N, K}), "int8", -1, true);
    const at::Tensor bias = at::randn({N});
    const int64_t tiles = kernels::padded_rows(N) / kernels::kTileN;
    for (int64_t M : {1, 2, 3, 7, 64, 300}) {
      for (const ActRange& r : {kUint8, kInt8}) {
        const int32_t zp = M % 2 ? r.qmax : r.qmin;  // extremes: d spans the full [-255, 255]
        const float scale = 0.02f;
        const QuantizedActs q = quantize_acts(kQuantizeRef, awkward_acts(M, K, scale), scale, zp, r);
        const at::Tensor ref = gemm(kGemmRef, *w, q, scale, bias);
        ASSERT_FALSE(at::isnan(ref).any().item<bool>());
        const std::string where = "N " + std::to_string(N) + " K " + std::to_string(K) + " M " + std::to_string(M) +
                                  " " + r.dtype;
        EXPECT_TRUE(bit_equal(ref, gemm(t.w8a8_gemm, *w, q, scale, bias))) << where;
        EXPECT_TRUE(bit_equal(ref, gemm(t.w8a8_gemm, *w, q, scale, bias, {tiles / 2}))) << where << " split";
        EXPECT_TRUE(bit_equal(ref, gemm(t.w8a8_gemm, *w, q, scale, bias, {1, 2, 3, 4}))) << where << " splits";
        const at::Tensor no_bias = gemm(kGemmRef, *w, q, scale, at::Tensor());
        EXPECT_TRUE(bit_equal(no_bias, gemm(t.w8a8_gemm, *w, q, scale, at::Tensor()))) << where << " no bias";
      }
    }
  }

  // K = 65536, every product (-255) * (-128): the sum 2139095040 is just below 2^31.
  const int64_t N = 9, K = kernels::kW8a8MaxK;
  at::Tensor q = at::full({N, K}, -128, at::kInt);
  q[3].fill_(127);
  const at::Tensor scales = at::full({N, 1}, 0.5f);
  const auto w = PackedWeight::pack(q, scales, c10::nullopt, "int8", -1, c10::nullopt);
  const at::Tensor x = at::full({2, K}, -1e9f);  // saturates to xq = 0; zp 255 gives d = -255
  const QuantizedActs qa = quantize_acts(kQuantizeRef, x, 1.0f, 255, kUint8);
  const at::Tensor ref = gemm(kGemmRef, *w, qa, 1.0f, at::Tensor());
  EXPECT_EQ(ref[0][0].item<float>(), static_cast<float>(int64_t{2139095040}) * 0.5f);
  EXPECT_EQ(ref[0][3].item<float>(), static_cast<float>(int64_t{-255} * 127 * K) * 0.5f);
  // Two rows (the VNNI kernel computes sum xu * q - o * wsum with o = 255: both terms near the limit too), with
  // the level's own activation quantization; one row takes the GEMV path.
  const QuantizedActs qf = quantize_acts(t.w8a8_quantize, x, 1.0f, 255, kUint8);
  EXPECT_TRUE(bit_equal(ref, gemm(t.w8a8_gemm, *w, qf, 1.0f, at::Tensor())));
  EXPECT_TRUE(bit_equal(ref, gemm(t.w8a8_gemm, *w, qa, 1.0f, at::Tensor())));
  const QuantizedActs q1 = quantize_acts(t.w8a8_quantize, x.narrow(0, 0, 1).contiguous(), 1.0f, 255, kUint8);
  EXPECT_TRUE(bit_equal(ref.narrow(0, 0, 1).contiguous(), gemm(t.w8a8_gemm, *w, q1, 1.0f, at::Tensor())));
}

// The op at `level` (check_op): 1 and 2 threads, the bits of the reference kernels.
void check_w8a8_linear_op(Level level) {
  at::manual_seed(86);
  check_op({{1, 33, 257}, {2, 9, 13}, {7, 13, 100}, {13, 24, 600}, {64, 40, 172}, {300, 17, 96}});
}

}  // namespace test
}  // namespace lwq
