// GPTQ checkpoint tensors <-> PackedWeight (interop/gptq.h): the bit layout against hand-computed words and an
// independent bit-by-bit reader, exact round trips in both directions, and every refusal.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <tuple>

#include "lwq/interop/gptq.h"
#include "test_util.h"

namespace lwq {
namespace {

using interop::GptqScheme;
using interop::GptqTensors;
using interop::GptqZeroFormat;
using test::expect_error;

// Code r of column c of a GPTQ int32 stream, read one bit at a time (independent of pack_int32_rows' word logic).
int64_t stream_code(const at::Tensor& packed, int64_t r, int64_t c, int bits) {
  int64_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const int64_t bit = r * bits + b;
    const uint32_t word = static_cast<uint32_t>(packed[bit / 32][c].item<int32_t>());
    v |= static_cast<int64_t>((word >> (bit % 32)) & 1u) << b;
  }
  return v;
}

TEST(GptqInterop, Int4WordHoldsEightInputRowsLowNibbleFirst) {
  at::Tensor codes = at::zeros({8, 2}, at::kInt);
  for (int r = 0; r < 8; ++r) codes[r][0] = r + 1;  // rows 0..7 hold 1..8
  codes[7][1] = 15;
  const at::Tensor p = interop::pack_int32_rows(codes, 4);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(static_cast<uint32_t>(p[0][0].item<int32_t>()), 0x87654321u);
  EXPECT_EQ(static_cast<uint32_t>(p[0][1].item<int32_t>()), 0xF0000000u);
}

TEST(GptqInterop, ThreeBitCodesStraddleWordsAsInAutoGptq) {
  // 32 codes in 3 words: code 10 has its low 2 bits at bits 30-31 of word 0 and its high bit at bit 0 of word 1;
  // code 21 has its low bit at bit 31 of word 1 and its high 2 bits at bits 0-1 of word 2.
  at::Tensor codes = at::zeros({32, 1}, at::kInt);
  codes[10][0] = 0b101;
  codes[21][0] = 0b110;
  codes[31][0] = 0b111;
  const at::Tensor p = interop::pack_int32_rows(codes, 3);
  ASSERT_EQ(p.size(0), 3);
  EXPECT_EQ(static_cast<uint32_t>(p[0][0].item<int32_t>()), 0x40000000u);  // low bits 01 of code 10 at 30-31
  EXPECT_EQ(static_cast<uint32_t>(p[1][0].item<int32_t>()), 0x00000001u);  // high bit 1 of code 10; low bit 0 of 21
  EXPECT_EQ(static_cast<uint32_t>(p[2][0].item<int32_t>()), 0xE0000003u);  // high bits 11 of 21; code 31 at 29-31
  EXPECT_TRUE(interop::unpack_int32_rows(p, 3).equal(codes));
}

TEST(GptqInterop, PackingMatchesBitByBitReaderForEveryWidth) {
  at::manual_seed(1);
  for (int bits : {2, 3, 4, 8}) {
    const int64_t rows = 96, cols = 5;
    const at::Tensor codes = at::randint(0, 1 << bits, {rows, cols}, at::kInt);
    const at::Tensor p = interop::pack_int32_rows(codes, bits);
    ASSERT_EQ(p.size(0), rows * bits / 32) << bits;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_EQ(stream_code(p, r, c, bits), codes[r][c].item<int64_t>()) << "bits " << bits << " r " << r << " c " << c;
    EXPECT_TRUE(interop::unpack_int32_rows(p, bits).equal(codes)) << bits;
  }
  expect_error([] { interop::pack_int32_rows(at::zeros({48, 1}, at::kInt), 3); }, "multiple of 32");
  expect_error([] { interop::pack_int32_rows(at::full({8, 1}, 16, at::kInt), 4); }, "[0, 15]");
}

// A PackedWeight with random codes, float16-exact scales, zero points in [1, maxq] (writable in v1) and optionally
// a random act-order g_idx.
PackedWeightPtr random_weight(const std::string& dtype, bool sym, int64_t n, int64_t k, int64_t group_size,
                              bool act_order, int seed) {
  at::manual_seed(seed);
  const DtypeInfo& info = dtype_info(dtype);
  const int64_t groups = group_count(group_size, k);
  const at::Tensor q = at::randint(info.qmin(sym), info.qmax(sym) + 1, {n, k}, at::kInt);
  at::Tensor scales = (at::rand({n, groups}) * 0.1 + 1e-3).to(at::kHalf).to(at::kFloat);
  if (dtype == "int4_fullrange") scales = scales * (at::randint(0, 2, {n, groups}) * 2 - 1);
  c10::optional<at::Tensor> zeros;
  if (!sym) zeros = at::randint(1, info.qmax(false) + 1, {n, groups}, at::kInt);
  c10::optional<at::Tensor> g_idx;
  if (act_order) g_idx = at::randint(0, groups, {k}, at::kInt);
  return PackedWeight::pack(q, scales, zeros, dtype, group_size, g_idx);
}

void expect_same_weight(const PackedWeight& a, const PackedWeight& b) {
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.sym(), b.sym());
  EXPECT_EQ(a.group_size(), b.group_size());
  EXPECT_EQ(a.has_g_idx(), b.has_g_idx());
  const auto sa = a.state(), sb = b.state();
  EXPECT_TRUE(std::get<6>(sa).equal(std::get<6>(sb))) << "packed codes differ";
  EXPECT_TRUE(std::get<7>(sa).equal(std::get<7>(sb))) << "scales differ";
  ASSERT_EQ(std::get<8>(sa).has_value(), std::get<8>(sb).has_value());
  if (std::get<8>(sa)) {
    EXPECT_TRUE(std::get<8>(sa)->equal(*std::get<8>(sb))) << "zeros differ";
  }
  ASSERT_EQ(std::get<9>(sa).has_value(), std::get<9>(sb).has_value());
  if (std::get<9>(sa)) {
    EXPECT_TRUE(std::get<9>(sa)->equal(*std::get<9>(sb))) << "g_idx differ";
  }
}

struct Case {
  std::string dtype;
  bool sym;
  int64_t n, k, group_size;
  bool act_order;
};

TEST(GptqInterop, LwqToGptqToLwqIsBitExact) {
  const Case cases[] = {
      {"int4", true, 64, 128, 32, false},  {"int4", false, 64, 128, 32, false}, {"int4", true, 40, 96, 32, true},
      {"int4", false, 40, 96, 32, true},   {"int8", true, 24, 64, 16, false},   {"int8", false, 24, 64, 16, true},
      {"int8", true, 8, 40, -1, false},    {"int4", false, 16, 72, 32, false},  // ragged last group (72 = 32+32+8)
      {"int4", true, 16, 72, 32, true},    {"int3", true, 32, 64, 32, false},   {"int3", false, 32, 96, 32, true},
      {"int2", false, 16, 48, 16, false},  {"int2", true, 16, 64, -1, true},    {"int4_fullrange", true, 8, 64, 32, false},
  };
  int seed = 0;
  for (const Case& c : cases) {
    for (GptqZeroFormat format : {GptqZeroFormat::V1, GptqZeroFormat::V2}) {
      SCOPED_TRACE(c.dtype + (c.sym ? " sym" : " asym") + " " + std::to_string(c.n) + "x" + std::to_string(c.k) +
                   " g" + std::to_string(c.group_size) + (c.act_order ? " act-order " : " ") +
                   interop::gptq_zero_format_name(format));
      const PackedWeightPtr w = random_weight(c.dtype, c.sym, c.n, c.k, c.group_size, c.act_order, ++seed);
      const GptqTensors t = interop::to_gptq(*w, format, /*round_scales=*/false, "layer 'x'");
      const int bits = w->info().bits;
      EXPECT_EQ(t.qweight.sizes(), (std::vector<int64_t>{c.k * bits / 32, c.n}));
      EXPECT_EQ(t.qzeros.sizes(), (std::vector<int64_t>{w->n_groups(), c.n * bits / 32}));
      EXPECT_EQ(t.scales.scalar_type(), at::kHalf);
      EXPECT_EQ(t.g_idx.sizes(), (std::vector<int64_t>{c.k}));
      GptqScheme scheme{bits, c.group_size, c.sym, c.act_order, format};
      const PackedWeightPtr back = interop::from_gptq(t, scheme, c.dtype == "int4_fullrange" ? c.dtype : "", "layer 'x'");
      expect_same_weight(*w, *back);
    }
  }
}

TEST(GptqInterop, ValuesFollowTheGptqFormula) {
  // The dequantized lwq weight equals scales * (code - zero) computed straight from the GPTQ tensors.
  for (bool sym : {true, false}) {
    const PackedWeightPtr w = random_weight("int4", sym, 16, 64, 32, /*act_order=*/true, 7);
    const GptqTensors t = interop::to_gptq(*w, GptqZeroFormat::V1, false, "w");
    const at::Tensor dq = w->dequantize();
    for (int64_t n = 0; n < 16; ++n) {
      for (int64_t k = 0; k < 64; ++k) {
        const int64_t g = t.g_idx[k].item<int64_t>();
        const int64_t code = stream_code(t.qweight, k, n, 4);
        const int64_t zero = stream_code(t.qzeros.t().contiguous(), n, g, 4) + 1;  // v1: stored minus one
        if (sym) {
          ASSERT_EQ(zero, 8);
        }
        const float expected = t.scales[g][n].item<float>() * static_cast<float>(code - zero);
        ASSERT_EQ(dq[n][k].item<float>(), expected) << n << " " << k;
      }
    }
  }
}

// Random GPTQ tensors as a quantizer could write them (every field value valid).
GptqTensors random_gptq(const GptqScheme& s, int64_t n, int64_t k, bool act_order, int seed) {
  at::manual_seed(seed);
  const int64_t groups = group_count(s.group_size, k);
  const int64_t maxq = (1 << s.bits) - 1;
  GptqTensors t;
  t.qweight = interop::pack_int32_rows(at::randint(0, maxq + 1, {k, n}, at::kInt), s.bits);
  at::Tensor zeros = s.sym ? at::full({n, groups}, 1 << (s.bits - 1), at::kInt)
                           : at::randint(s.zero_format == GptqZeroFormat::V1 ? 1 : 0, maxq + 1, {n, groups}, at::kInt);
  if (s.zero_format == GptqZeroFormat::V1) zeros = zeros - 1;
  t.qzeros = interop::pack_int32_rows(zeros, s.bits).t().contiguous();
  t.scales = (at::rand({groups, n}) * 0.05 + 1e-3).to(at::kHalf);
  t.g_idx = act_order ? at::randperm(k, at::kInt).div(s.group_size == -1 ? k : s.group_size, "floor").to(at::kInt)
                      : at::arange(k, at::kInt).div(s.group_size == -1 ? k : s.group_size, "floor").to(at::kInt);
  return t;
}

TEST(GptqInterop, GptqToLwqToGptqIsBitExact) {
  int seed = 100;
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {true, false}) {
      for (bool act_order : {false, true}) {
        for (GptqZeroFormat format : {GptqZeroFormat::V1, GptqZeroFormat::V2}) {
          for (int64_t group_size : {int64_t{32}, int64_t{-1}, int64_t{40}}) {
            SCOPED_TRACE(std::to_string(bits) + " bits" + (sym ? " sym" : " asym") + (act_order ? " act-order" : "") +
                         " " + interop::gptq_zero_format_name(format) + " g" + std::to_string(group_size));
            const GptqScheme s{bits, group_size, sym, act_order, format};
            const int64_t n = 64, k = 96;  // group 40: 96 = 40 + 40 + 16, a ragged last group
            const GptqTensors t = random_gptq(s, n, k, act_order, ++seed);
            const PackedWeightPtr w = interop::from_gptq(t, s, "", "layer 'y'");
            EXPECT_EQ(w->has_g_idx(), act_order);
            const GptqTensors back = interop::to_gptq(*w, format, false, "layer 'y'");
            EXPECT_TRUE(back.qweight.equal(t.qweight));
            EXPECT_TRUE(back.qzeros.equal(t.qzeros));
            EXPECT_TRUE(back.scales.equal(t.scales));
            EXPECT_TRUE(back.g_idx.equal(t.g_idx));
          }
        }
      }
    }
  }
}

TEST(GptqInterop, MissingGIdxMeansSequentialGroups) {
  const GptqScheme s{4, 32, false, false, GptqZeroFormat::V1};
  GptqTensors t = random_gptq(s, 32, 64, false, 3);
  const at::Tensor expected_g_idx = t.g_idx.clone();
  t.g_idx = at::Tensor();
  const PackedWeightPtr w = interop::from_gptq(t, s, "", "l");
  EXPECT_FALSE(w->has_g_idx());
  EXPECT_TRUE(interop::to_gptq(*w, GptqZeroFormat::V1, false, "l").g_idx.equal(expected_g_idx));
}

TEST(GptqInterop, ExportRefusals) {
  expect_error([] { interop::to_gptq(*quantize_weight(at::randn({32, 64}), "nf4", 32, true), GptqZeroFormat::V1, false,
                                     "layer 'blocks.0.fc'"); },
               "layer 'blocks.0.fc': dtype nf4 has no GPTQ form");
  expect_error([] { interop::to_gptq(*quantize_weight(at::randn({32, 64}), "fp4_e2m1", 32, true), GptqZeroFormat::V1,
                                     false, "L"); },
               "fp4_e2m1");
  expect_error([] { interop::to_gptq(*random_weight("int3", true, 32, 48, 16, false, 1), GptqZeroFormat::V1, false, "L"); },
               "in_features 48 x 3 bits");
  expect_error([] { interop::to_gptq(*random_weight("int4", true, 12, 64, 32, false, 1), GptqZeroFormat::V1, false, "L"); },
               "out_features 12");

  // A zero point of 0 cannot be written in v1 (it stores zero - 1), but can in v2.
  at::Tensor zeros = at::full({8, 2}, 3, at::kInt);
  zeros[5][1] = 0;
  const at::Tensor scales = at::full({8, 2}, 0.5);
  const auto w0 = PackedWeight::pack(at::zeros({8, 64}, at::kInt), scales, zeros, "int4", 32, c10::nullopt);
  expect_error([&] { interop::to_gptq(*w0, GptqZeroFormat::V1, false, "L"); }, "first at output 5, group 1");
  const GptqTensors v2 = interop::to_gptq(*w0, GptqZeroFormat::V2, false, "L");
  expect_same_weight(*w0, *interop::from_gptq(v2, {4, 32, false, false, GptqZeroFormat::V2}, "", "L"));

  // Scales: float16-exact passes, inexact needs round_scales, out of range never passes.
  const auto inexact = PackedWeight::pack(at::zeros({8, 64}, at::kInt), at::full({8, 2}, 0.1), c10::nullopt, "int4",
                                          32, c10::nullopt);
  expect_error([&] { interop::to_gptq(*inexact, GptqZeroFormat::V1, false, "layer 'h'"); },
               "16 of 16 scales are not exactly representable in float16");
  interop::ScaleRounding rounding;
  const GptqTensors rounded = interop::to_gptq(*inexact, GptqZeroFormat::V1, true, "h", &rounding);
  EXPECT_EQ(rounding.inexact, 16);
  EXPECT_EQ(rounding.total, 16);
  EXPECT_GT(rounding.max_relative_change, 0);
  EXPECT_LT(rounding.max_relative_change, 1e-3);
  EXPECT_EQ(rounded.scales[0][0].item<float>(), static_cast<float>(c10::Half(0.1f)));
  const auto huge = PackedWeight::pack(at::zeros({8, 64}, at::kInt), at::full({8, 2}, 1e6), c10::nullopt, "int4", 32,
                                       c10::nullopt);
  expect_error([&] { interop::to_gptq(*huge, GptqZeroFormat::V1, true, "L"); }, "float16 range");
  const auto tiny = PackedWeight::pack(at::zeros({8, 64}, at::kInt), at::full({8, 2}, 1e-9), c10::nullopt, "int4", 32,
                                       c10::nullopt);
  expect_error([&] { interop::to_gptq(*tiny, GptqZeroFormat::V1, true, "L"); }, "underflows to 0");
}

TEST(GptqInterop, ImportRefusals) {
  const GptqScheme sym{4, 32, true, false, GptqZeroFormat::V1};
  const GptqScheme asym{4, 32, false, false, GptqZeroFormat::V1};

  // sym in quantize_config but a zero point that is not 8.
  GptqTensors t = random_gptq(asym, 32, 64, false, 5);
  expect_error([&] { interop::from_gptq(t, sym, "", "layer 'a'"); }, "layer 'a': quantize_config says sym");

  // A v1 zero field of all ones is zero point 16, which no 4-bit lwq dtype holds.
  at::Tensor stored = at::full({32, 2}, 3, at::kInt);
  stored[4][0] = 15;
  t.qzeros = interop::pack_int32_rows(stored, 4).t().contiguous();
  expect_error([&] { interop::from_gptq(t, asym, "", "layer 'b'"); }, "a zero point is 16");

  const GptqTensors good = random_gptq(asym, 32, 64, false, 6);
  GptqTensors bad = good;
  bad.scales = good.scales.narrow(0, 0, 1);
  expect_error([&] { interop::from_gptq(bad, asym, "", "layer 'c'"); }, "layer 'c': scales must be float16 [2, 32]");
  bad = good;
  bad.qzeros = good.qzeros.narrow(1, 0, 2);
  expect_error([&] { interop::from_gptq(bad, asym, "", "L"); }, "qzeros must be int32 [2, 4]");
  bad = good;
  bad.g_idx = at::full({64}, 2, at::kInt);
  expect_error([&] { interop::from_gptq(bad, asym, "", "L"); }, "g_idx values must lie in [0, 1]");
  bad = good;
  bad.qweight = good.qweight.to(at::kLong);
  expect_error([&] { interop::from_gptq(bad, asym, "", "L"); }, "qweight must be int32");
  bad = good;
  bad.scales = at::full({2, 32}, std::numeric_limits<float>::infinity()).to(at::kHalf);
  expect_error([&] { interop::from_gptq(bad, asym, "", "layer 'd'"); }, "layer 'd'");
  expect_error([&] { interop::from_gptq(good, {5, 32, false, false, GptqZeroFormat::V1}, "", "L"); }, "2, 3, 4 or 8");
  expect_error([&] { interop::from_gptq(good, asym, "nf4", "L"); }, "not a 4-bit integer dtype");
  expect_error([] { interop::parse_gptq_zero_format("marlin"); }, "unknown GPTQ checkpoint format 'marlin'");
}

}  // namespace
}  // namespace lwq
