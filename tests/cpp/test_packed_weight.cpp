// PackedWeight: layout round trips, RTN error budgets, the op against its float definition, state validation,
// idempotent class registration.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/custom_class.h>

#include "kernels/format.h"
#include "ops.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::expect_error;

const std::vector<std::string> kAllDtypes = {"int8", "int4", "int4_fullrange", "int3", "int2", "nf4", "fp4_e2m1"};

bool asym_ok(const std::string& d) { return d.rfind("int", 0) == 0 && d != "int4_fullrange"; }

TEST(PackedFormat, PackUnpackCodesRoundTripAllWidths) {
  at::manual_seed(18);
  for (int bits : {2, 3, 4, 8}) {
    for (auto nk : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 13}, {9, 33}, {16, 64}, {13, 100}}) {
      const int64_t n = nk.first, k = nk.second;
      at::Tensor codes = at::randint(0, 1 << bits, {n, k}, at::TensorOptions().dtype(at::kByte));
      std::vector<uint8_t> packed(kernels::packed_bytes(n, k, bits));
      kernels::pack_codes(codes.data_ptr<uint8_t>(), n, k, bits, packed.data());
      at::Tensor back = at::empty({n, k}, at::kByte);
      kernels::unpack_codes(packed.data(), n, k, bits, back.data_ptr<uint8_t>());
      EXPECT_TRUE(back.equal(codes)) << "bits " << bits << " shape " << n << "x" << k;
      // code_at (the reference kernels' reader) finds every field where pack_codes put it.
      int64_t mismatches = 0;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < k; ++c)
          mismatches += kernels::code_at(packed.data(), k, bits, r, c) != codes[r][c].item<uint8_t>();
      EXPECT_EQ(mismatches, 0) << "bits " << bits << " shape " << n << "x" << k;
    }
  }
}

// Large layers are quantized, packed and dequantized in row blocks: the result must not depend on the blocking
// (row counts that cross the block sizes with a ragged last tile).
TEST(PackedWeight, RowBlockedQuantizePackDequantizeEqualWhole) {
  at::manual_seed(71);
  for (const auto& dt : std::vector<std::string>{"int4", "int3", "int8", "nf4"}) {
    for (bool sym : {true, false}) {
      if (!sym && !asym_ok(dt)) continue;
      const int64_t n = 301, k = 5000, gs = 128;  // quantize_weight: 209-row blocks; pack: 256-row blocks
      const at::Tensor w = at::randn({n, k});
      const DtypeInfo& info = dtype_info(dt);
      const GroupwiseQ gq = quantize_groupwise(w, info, sym, gs);
      auto whole = PackedWeight::pack(gq.q, gq.scales, sym ? c10::nullopt : c10::optional<at::Tensor>(gq.zeros), dt,
                                      gs, c10::nullopt);
      auto blocked = quantize_weight(w, dt, gs, sym);
      EXPECT_TRUE(blocked->qweight().equal(whole->qweight())) << dt << " sym " << sym;
      const at::Tensor deq = blocked->dequantize();
      EXPECT_TRUE(deq.equal(dequantize_groupwise(gq, info, sym, gs))) << dt << " sym " << sym;
      for (auto range : std::vector<std::pair<int64_t, int64_t>>{{0, 8}, {8, 301}, {296, 301}, {0, 301}, {64, 64}}) {
        EXPECT_TRUE(blocked->dequantize(range.first, range.second)
                        .equal(deq.narrow(0, range.first, range.second - range.first)))
            << dt << " rows " << range.first << ".." << range.second;
      }
      expect_error([&] { blocked->dequantize(3, 10); }, "multiple of 8");
      expect_error([&] { blocked->dequantize(0, 302); }, "must lie in");
    }
  }
}

TEST(PackedFormat, Int4LaneLayoutIsAsDocumented) {
  at::manual_seed(32);
  // Row 1, column 10 of a 9x16 int4 weight: tile 0, unit 1 (columns 8..15), lane 1, nibble 2.
  at::Tensor codes = at::zeros({9, 16}, at::kByte);
  codes[1][10] = 0xB;
  std::vector<uint8_t> packed(kernels::packed_bytes(9, 16, 4));
  kernels::pack_codes(codes.data_ptr<uint8_t>(), 9, 16, 4, packed.data());
  ASSERT_EQ(packed.size(), 2u * 2 * 32);  // 2 tiles x 2 units x 32 bytes
  const size_t byte = 32 /*unit 1*/ + 4 /*lane 1*/ + 1 /*nibble 2 is in the lane's second byte*/;
  for (size_t i = 0; i < packed.size(); ++i) EXPECT_EQ(packed[i], i == byte ? 0x0B : 0) << "byte " << i;
}

TEST(PackedWeight, PackUnpackRoundTripEveryDtype) {
  at::manual_seed(43);
  for (const auto& dt : kAllDtypes) {
    for (bool sym : {true, false}) {
      if (!sym && !asym_ok(dt)) continue;
      for (int64_t gs : {int64_t(-1), int64_t(32), int64_t(20)}) {
        const int64_t n = 13, k = 100;
        const DtypeInfo& info = dtype_info(dt);
        const int64_t ng = group_count(gs, k);
        at::Tensor q = at::randint(info.qmin(sym), info.qmax(sym) + 1, {n, k}, at::kInt);
        at::Tensor s = at::rand({n, ng}) + 0.1;
        c10::optional<at::Tensor> z;
        if (!sym) z = at::randint(0, info.qmax(false) + 1, {n, ng}, at::kInt);
        auto w = PackedWeight::pack(q, s, z, dt, gs, c10::nullopt);
        auto parts = w->unpack();
        EXPECT_TRUE(std::get<0>(parts).equal(q)) << dt << " sym " << sym << " g " << gs;
        EXPECT_TRUE(std::get<1>(parts).equal(s));
        EXPECT_EQ(std::get<2>(parts).has_value(), !sym);
        if (!sym) {
          EXPECT_TRUE(std::get<2>(parts)->equal(*z));
        }
      }
    }
  }
}

TEST(PackedWeight, ActOrderRoundTripAndDequantize) {
  at::manual_seed(66);
  const int64_t n = 11, k = 70, gs = 16;
  const int64_t ng = group_count(gs, k);
  at::Tensor q = at::randint(-8, 8, {n, k}, at::kInt);
  at::Tensor s = at::rand({n, ng}) + 0.1;
  at::Tensor g_idx = at::randperm(k, at::kLong).div(gs, "floor").to(at::kInt);
  auto w = PackedWeight::pack(q, s, c10::nullopt, "int4", gs, g_idx);
  auto parts = w->unpack();
  EXPECT_TRUE(std::get<0>(parts).equal(q));
  EXPECT_TRUE(std::get<3>(parts)->equal(g_idx));
  at::Tensor expect = q.to(at::kFloat) * s.index_select(1, g_idx.to(at::kLong));
  EXPECT_TRUE(w->dequantize().equal(expect));
}

// RTN reconstruction error relative to the weight's variance, per dtype (Gaussian weights, g32). For uniform
// grids the expected error is step^2/12 with step = 2*max|w|/(2^b - 1) and max|w| of 32 Gaussians ~2.1; the
// budgets allow about 2x that.
TEST(PackedWeight, QuantizeDequantizeErrorBudget) {
  at::manual_seed(83);
  const std::map<std::string, double> budget = {{"int8", 5e-5}, {"int4", 1.5e-2}, {"int4_fullrange", 1.5e-2},
                                                {"int3", 6e-2},  {"int2", 0.3},     {"nf4", 1.5e-2},
                                                {"fp4_e2m1", 3e-2}};
  at::Tensor wt = at::randn({64, 256});
  for (const auto& kv : budget) {
    for (bool sym : {true, false}) {
      if (!sym && !asym_ok(kv.first)) continue;
      auto w = quantize_weight(wt, kv.first, 32, sym);
      const double rel = (w->dequantize() - wt).pow(2).mean().item<double>() / wt.pow(2).mean().item<double>();
      EXPECT_LT(rel, kv.second) << kv.first << " sym " << sym;
      EXPECT_GT(rel, 0.0) << kv.first;
    }
  }
}

TEST(PackedWeight, SymInt4RangeAndFullRangeExtremes) {
  at::manual_seed(99);
  at::Tensor wt = at::tensor({-1.0f, 0.5f, 0.25f, 0.0f, 2.0f, -0.5f, 1.0f, 0.1f}).view({1, 8});
  auto q = std::get<0>(quantize_weight(wt, "int4_fullrange", -1, true)->unpack());
  EXPECT_EQ(q[0][4].item<int>(), -8);  // the positive extreme maps to -8 with a negative scale
  auto d = quantize_weight(wt, "int4_fullrange", -1, true)->dequantize();
  EXPECT_FLOAT_EQ(d[0][4].item<float>(), 2.0f);
  auto q4 = std::get<0>(quantize_weight(wt, "int4", -1, true)->unpack());
  EXPECT_EQ(q4.max().item<int>(), 7);
  EXPECT_GE(q4.min().item<int>(), -8);
}

TEST(PackedWeight, RoundHalfToEven) {
  at::manual_seed(110);
  // int8 asym on [0, 255]: scale 1, zero 0, so the codes are round(w) exactly.
  at::Tensor wt = at::tensor({0.0f, 0.5f, 1.5f, 2.5f, 254.5f, 255.0f}).view({1, 6});
  auto q = std::get<0>(quantize_weight(wt, "int8", -1, false)->unpack());
  EXPECT_TRUE(q.equal(at::tensor({0, 0, 2, 2, 254, 255}, at::kInt).view({1, 6}))) << q;
}

TEST(PackedWeight, AllZeroAndConstantGroups) {
  at::manual_seed(117);
  at::Tensor wt = at::zeros({3, 64});
  wt[1].fill_(0.75);
  for (const auto& dt : kAllDtypes) {
    auto d = quantize_weight(wt, dt, 32, true)->dequantize();
    EXPECT_TRUE(d.isfinite().all().item<bool>()) << dt;
    EXPECT_TRUE(d[0].eq(0).all().item<bool>()) << dt;
  }
  auto d = quantize_weight(wt, "int4", 32, false)->dequantize();
  EXPECT_TRUE(d[0].eq(0).all().item<bool>());
  EXPECT_NEAR(d[1][5].item<float>(), 0.75f, 0.03f);
}

TEST(PackedWeight, WoqLinearEqualsDequantizedMatmul) {
  at::manual_seed(130);
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    for (const auto& dt : kAllDtypes) {
      at::Tensor wt = at::randn({33, 172});
      at::Tensor b = at::randn({33});
      at::Tensor x = at::randn({2, 3, 172});
      auto w = quantize_weight(wt, dt, 64, true);
      at::Tensor y = woq_linear(x, w, b);
      at::Tensor expect = at::linear(x, w->dequantize(), b);
      EXPECT_EQ(y.sizes(), expect.sizes());
      EXPECT_TRUE(at::allclose(y, expect, 1e-4, 1e-4)) << dt << " max diff " << (y - expect).abs().max();
    }
  }
  at::set_num_threads(1);
}

TEST(PackedWeight, BadInputErrorsNameTheProblem) {
  at::manual_seed(147);
  at::Tensor wt = at::randn({8, 32});
  expect_error([&] { quantize_weight(wt, "int5", 32, true); }, "unknown weight dtype 'int5'");
  expect_error([&] { quantize_weight(wt, "int4", 0, true); }, "group_size must be -1");
  expect_error([&] { quantize_weight(wt, "nf4", 32, false); }, "symmetric table format");
  expect_error([&] { quantize_weight(wt.view({-1}), "int4", 32, true); }, "[out, in] matrix");
  at::Tensor bad = wt.clone();
  bad[3][4] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { quantize_weight(bad, "int4", 32, true); }, "NaN or Inf");
  bad[3][4] = std::numeric_limits<float>::infinity();
  expect_error([&] { quantize_weight(bad, "int8", -1, true); }, "NaN or Inf");
  auto w = quantize_weight(wt, "int4", 32, true);
  expect_error([&] { woq_linear(at::randn({2, 31}), w, c10::nullopt); }, "[..., 32]");
  expect_error([&] { woq_linear(at::randn({2, 32}), w, at::randn({7})); }, "bias must have shape [8]");
  at::Tensor q = at::zeros({8, 32}, at::kInt);
  expect_error([&] { PackedWeight::pack(q, at::ones({8, 2}), c10::nullopt, "int4", 32, c10::nullopt); },
               "scales must have shape [8, 1]");
  expect_error([&] { PackedWeight::pack(q + 9, at::ones({8, 1}), c10::nullopt, "int4", 32, c10::nullopt); },
               "q must lie in [-8, 7]");
}

TEST(PackedWeight, StateValidationRefusesCorruptState) {
  at::manual_seed(168);
  auto w = quantize_weight(at::randn({9, 40}), "int4", 16, false);
  PackedWeight::State good = w->state();
  EXPECT_TRUE(PackedWeight::from_state(good)->dequantize().equal(w->dequantize()));
  auto s = good;
  std::get<0>(s) = 2;
  expect_error([&] { PackedWeight::from_state(s); }, "version 2 is not supported");
  s = good;
  std::get<6>(s) = std::get<6>(s).narrow(0, 0, 10).clone();
  expect_error([&] { PackedWeight::from_state(s); }, "qweight must be uint8");
  s = good;
  std::get<7>(s) = std::get<7>(s).narrow(0, 0, 1).clone();
  expect_error([&] { PackedWeight::from_state(s); }, "scales must be float32 [3, 9]");
  s = good;
  std::get<8>(s) = c10::nullopt;
  expect_error([&] { PackedWeight::from_state(s); }, "sym=0 but zeros are absent");
  s = good;
  std::get<1>(s) = "int9";
  expect_error([&] { PackedWeight::from_state(s); }, "unknown weight dtype");
  s = good;
  std::get<9>(s) = at::full({40}, 7, at::kInt);
  expect_error([&] { PackedWeight::from_state(s); }, "g_idx must lie in [0, 2]");
}

// The class is registered by whichever registration block of liblwq_ops runs first (ops_meta.cpp's, in source
// order); calling register_packed_weight again changes nothing, and every op that names the class is there.
TEST(PackedWeight, RegistrationIsIdempotent) {
  const auto before = c10::getCustomClassType<PackedWeightPtr>();
  ASSERT_TRUE(before);
  register_packed_weight();
  register_packed_weight();
  EXPECT_EQ(c10::getCustomClassType<PackedWeightPtr>(), before);
  EXPECT_EQ(torch::getCustomClass("__torch__.torch.classes.lwq.PackedWeight"), before);
  EXPECT_TRUE(before->findMethod("__getstate__") && before->findMethod("__setstate__") && before->findMethod("dtype"));
  for (const char* op : {"lwq::quantize_weight", "lwq::pack_weight", "lwq::unpack_weight", "lwq::dequantize_weight"})
    EXPECT_TRUE(c10::Dispatcher::singleton().findSchema({op, ""}).has_value()) << op;
  for (const char* op : {"lwq::woq_linear", "lwq::woq_linear_a8", "lwq::w8a8_linear"}) {
    const auto h = c10::Dispatcher::singleton().findSchema({op, ""});
    ASSERT_TRUE(h.has_value()) << op;
    EXPECT_TRUE(h->hasKernelForDispatchKey(c10::DispatchKey::CPU)) << op;
    EXPECT_TRUE(h->hasKernelForDispatchKey(c10::DispatchKey::Meta)) << op;
  }
}

}  // namespace
}  // namespace lwq
