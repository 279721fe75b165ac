// RTN: plain RTN is quantize_weight; the clip search is never worse than plain RTN for any group, strictly better
// on heavy-tailed weights, handles ragged and all-zero groups, and does not depend on the thread count.
#include <ATen/Parallel.h>
#include <cmath>
#include <gtest/gtest.h>

#include "lwq/rtn.h"
#include "qscheme.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::expect_error;

struct Scheme {
  const char* dtype;
  bool sym;
};
const Scheme kSchemes[] = {{"int4", true},  {"int4", false},          {"int3", true}, {"int2", false},
                           {"int8", true},  {"int4_fullrange", true}, {"nf4", true},  {"fp4_e2m1", true}};
const int64_t kGroups[] = {-1, 32, 64, 128};

// Squared reconstruction error of every group, [out, n_groups].
at::Tensor group_errors(const at::Tensor& w, const at::Tensor& dq, int64_t group_size) {
  const int64_t in = w.size(1);
  const at::Tensor col_group = at::arange(in, at::kLong).div(effective_group_size(group_size, in), "floor");
  return at::zeros({w.size(0), group_count(group_size, in)}, at::kDouble)
      .index_add_(1, col_group, (w - dq).to(at::kDouble).pow(2));
}

// Weights with heavy tails (a Gaussian scale mixture), where clipping the range pays.
at::Tensor heavy_tailed(int64_t out, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn({out, in}) * at::exp(at::randn({out, in}));
}

TEST(Rtn, PlainIsQuantizeWeight) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({20, 172});
  for (const Scheme& s : kSchemes) {
    for (int64_t g : kGroups) {
      const QuantSpec spec{s.dtype, g, s.sym};
      const auto expected = quantize_weight(w, s.dtype, g, s.sym)->unpack();
      // The search with only the ratio 1 goes through the search path and must change nothing.
      ClipSearch only_one;
      only_one.max_shrink = 0;
      for (bool search : {false, true}) {
        const auto got = rtn_quantize(w, spec, search, nullptr, only_one)->unpack();
        SCOPED_TRACE(std::string(s.dtype) + (s.sym ? " sym" : " asym") + " g" + std::to_string(g) +
                     (search ? " search" : ""));
        EXPECT_TRUE(std::get<0>(got).equal(std::get<0>(expected)));
        EXPECT_TRUE(std::get<1>(got).equal(std::get<1>(expected)));
        EXPECT_EQ(std::get<2>(got).has_value(), !s.sym);
        if (!s.sym) {
          EXPECT_TRUE(std::get<2>(got)->equal(*std::get<2>(expected)));
        }
      }
    }
  }
}

TEST(Rtn, MseSearchNeverWorseForAnyGroup) {
  for (const Scheme& s : kSchemes) {
    for (int64_t g : kGroups) {
      const at::Tensor w = heavy_tailed(12, 172, 2);
      const QuantSpec spec{s.dtype, g, s.sym};
      LayerReport plain, searched;
      const at::Tensor dq_plain = rtn_quantize(w, spec, false, &plain)->dequantize();
      const at::Tensor dq_search = rtn_quantize(w, spec, true, &searched)->dequantize();
      SCOPED_TRACE(std::string(s.dtype) + (s.sym ? " sym" : " asym") + " g" + std::to_string(g));
      EXPECT_TRUE(group_errors(w, dq_search, g).le(group_errors(w, dq_plain, g)).all().item<bool>());
      EXPECT_EQ(searched.algorithm, "rtn_mse");
      EXPECT_LE(searched.weight_mse, plain.weight_mse);
    }
  }
}

TEST(Rtn, MseSearchStrictlyBetterOnHeavyTails) {
  const at::Tensor w = heavy_tailed(64, 256, 3);
  for (const Scheme& s : {Scheme{"int4", true}, Scheme{"int4", false}, Scheme{"int3", true}, Scheme{"nf4", true}}) {
    LayerReport plain, searched;
    rtn_quantize(w, QuantSpec{s.dtype, 128, s.sym}, false, &plain);
    rtn_quantize(w, QuantSpec{s.dtype, 128, s.sym}, true, &searched);
    SCOPED_TRACE(std::string(s.dtype) + (s.sym ? " sym" : " asym"));
    EXPECT_LT(searched.weight_mse, 0.95 * plain.weight_mse);
    ASSERT_EQ(searched.adjustments.size(), 1u);
    EXPECT_NE(searched.adjustments[0].find("clip ratio below 1"), std::string::npos);
  }
}

TEST(Rtn, ClipRatiosComeFromTheGridAndRaggedGroupsWork) {
  const at::Tensor w172 = heavy_tailed(10, 172, 4), w64 = heavy_tailed(10, 64, 5);
  struct Case {
    at::Tensor w;
    int64_t group;
  };
  for (const Case& c : {Case{w172, 32}, Case{w172, 64}, Case{w172, 128}, Case{w64, 128}}) {
    at::Tensor clip;
    const GroupwiseQ gq = rtn_groupwise(c.w, QuantSpec{"int4", c.group, false}, true, {}, &clip);
    const int64_t n_groups = group_count(c.group, c.w.size(1));
    ASSERT_EQ(clip.sizes(), (std::vector<int64_t>{10, n_groups}));
    ASSERT_EQ(gq.scales.sizes(), clip.sizes());
    // Ratios are 1 - 0.5 * i / 20.
    const at::Tensor steps = (1 - clip) * 40;
    EXPECT_TRUE(at::allclose(steps, steps.round(), 0, 1e-4));
    EXPECT_TRUE(clip.ge(0.5 - 1e-6).all().item<bool>());
    // Each group's parameters are exactly those of RTN at its ratio.
    const int64_t g = effective_group_size(c.group, c.w.size(1));
    for (int64_t grp = 0; grp < n_groups; ++grp) {
      const at::Tensor cols = c.w.narrow(1, grp * g, std::min(g, c.w.size(1) - grp * g));
      const QParams p = compute_qparams(cols, dtype_info("int4"), false, clip.select(1, grp).contiguous());
      EXPECT_TRUE(p.scale.equal(gq.scales.select(1, grp))) << "group " << grp;
      EXPECT_TRUE(p.zero.equal(gq.zeros.select(1, grp))) << "group " << grp;
    }
  }
}

TEST(Rtn, AllZeroGroupStaysZero) {
  at::Tensor w = heavy_tailed(6, 96, 6);
  w.narrow(1, 32, 32).zero_();
  for (const Scheme& s : kSchemes) {
    const PackedWeightPtr p = rtn_quantize(w, QuantSpec{s.dtype, 32, s.sym}, true);
    const at::Tensor dq = p->dequantize();
    EXPECT_TRUE(dq.narrow(1, 32, 32).eq(0).all().item<bool>()) << s.dtype;
    // The scale qscheme gives an all-zero group (never 0).
    const at::Tensor expected = compute_qparams(at::zeros({6, 1}), dtype_info(s.dtype), s.sym).scale;
    EXPECT_TRUE(std::get<1>(p->unpack()).select(1, 1).equal(expected)) << s.dtype;
  }
}

TEST(Rtn, RejectsBadInput) {
  at::Tensor w = at::randn({4, 64});
  w[2][5] = std::nan("");
  expect_error([&] { rtn_quantize(w, QuantSpec{"int4", 32, true}, true); }, "rtn_quantize: weight contains NaN");
  expect_error([&] { rtn_quantize(at::randn({64}), QuantSpec{"int4", 32, true}, true); }, "[out, in]");
  expect_error([&] { rtn_quantize(at::randn({4, 64}), QuantSpec{"fp4_e2m1", 32, false}, true); }, "symmetric");
  ClipSearch bad;
  bad.max_shrink = 1.0;
  expect_error([&] { rtn_quantize(at::randn({4, 64}), QuantSpec{"int4", 32, true}, true, nullptr, bad); },
               "max_shrink");
}

TEST(Rtn, SameBitsWithOneAndTwoThreads) {
  const at::Tensor w = heavy_tailed(96, 300, 7);
  const int saved = at::get_num_threads();
  std::vector<GroupwiseQ> runs;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    runs.push_back(rtn_groupwise(w, QuantSpec{"int3", 64, false}, true));
  }
  at::set_num_threads(saved);
  EXPECT_TRUE(runs[0].q.equal(runs[1].q));
  EXPECT_TRUE(runs[0].scales.equal(runs[1].scales));
  EXPECT_TRUE(runs[0].zeros.equal(runs[1].zeros));
}

TEST(RtnFp16Scales, ScalesAreFloat16ValuesAndCodesTheNearestForThem) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({8, 40});
  for (const bool sym : {true, false}) {
    QuantSpec spec{"int4", 16, sym};
    spec.fp16_scales = true;
    const GroupwiseQ gq = rtn_groupwise(w, spec, /*mse_search=*/false);
    EXPECT_TRUE(gq.scales.equal(gq.scales.to(at::kHalf).to(at::kFloat)));
    // The codes are round-to-nearest for the stored scale (and the zero point of the float32 scale).
    const DtypeInfo& info = dtype_info("int4");
    QuantSpec plain = spec;
    plain.fp16_scales = false;
    const GroupwiseQ gq32 = rtn_groupwise(w, plain, false);
    if (!sym) EXPECT_TRUE(gq.zeros.equal(gq32.zeros));
    const at::Tensor cols = at::arange(40, at::kLong).div(16, "floor");
    const at::Tensor s = gq.scales.index_select(1, cols);
    at::Tensor want = at::round(w / s);
    if (!sym) want = want + gq.zeros.index_select(1, cols).to(at::kFloat);
    want = at::clamp(want, info.qmin(sym), info.qmax(sym)).to(at::kInt);
    EXPECT_TRUE(gq.q.equal(want));
    // The packed weight holds the same.
    const auto packed = rtn_quantize(w, spec);
    EXPECT_TRUE(std::get<1>(packed->unpack()).equal(gq.scales));
  }
  QuantSpec spec{"int8", -1, true};
  spec.fp16_scales = true;
  expect_error([&] { rtn_groupwise(at::full({2, 4}, 1e7), spec, false); }, "outside the float16 range");
  expect_error([&] { rtn_groupwise(at::full({2, 4}, 1e-12), spec, false); }, "underflows to 0 in float16");
}

}  // namespace
}  // namespace lwq

// The finiteness check every weight, scale and Hessian goes through works in slices (no 1.5x copy of a 7B
// Hessian): a NaN or Inf is found in any slice, the last and a ragged one included, in any layout.
TEST(AllFinite, FindsNonFiniteValuesInEverySlice) {
  const at::Tensor t = at::zeros({7, int64_t{1} << 21});  // 2 rows per slice: 4 slices, the last one ragged
  EXPECT_TRUE(lwq::all_finite(t));
  for (const int64_t row : {0, 3, 6}) {
    for (const float bad : {std::nanf(""), INFINITY, -INFINITY}) {
      at::Tensor u = t.clone();
      u[row][(row * 977) % u.size(1)] = bad;
      EXPECT_FALSE(lwq::all_finite(u)) << row << " " << bad;
      EXPECT_FALSE(lwq::all_finite(u.t())) << "transposed " << row;
      EXPECT_FALSE(lwq::all_finite(u.view(-1))) << "flat " << row;
    }
  }
  EXPECT_TRUE(lwq::all_finite(at::ones({3}, at::kInt)));
  EXPECT_TRUE(lwq::all_finite(at::empty({0, 5})));
  EXPECT_FALSE(lwq::all_finite(at::full({}, std::nanf(""))));
}
