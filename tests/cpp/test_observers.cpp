// Activation observers: the (scale, zero_point) rules, each observer kind on known data, streaming, degenerate
// inputs and errors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "lwq/observers.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::expect_error;

// Gaussian bulk with a few huge outliers of both signs at random positions.
at::Tensor heavy_tailed(int64_t n, int64_t outliers, double outlier_value, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({n});
  const at::Tensor pos = at::randperm(n).narrow(0, 0, outliers);
  at::Tensor values = at::full({outliers}, outlier_value);
  values.narrow(0, 0, outliers / 2).neg_();
  x.scatter_(0, pos, values);
  return x;
}

// Mean squared fake-quant error over the elements with |x| < bulk.
double bulk_mse(const at::Tensor& x, const ActQParams& qp, ActDtype dtype, double bulk) {
  const at::Tensor mask = x.abs() < bulk;
  const at::Tensor xb = x.masked_select(mask);
  return (fake_quantize_activation(xb, qp.scale, qp.zero_point, dtype) - xb).pow(2).mean().item<double>();
}

TEST(ObserverQParams, Uint8AsymmetricRule) {
  const ActQParams p = qparams_from_range(-1.0, 3.0, ActDtype::UInt8);
  EXPECT_DOUBLE_EQ(p.scale, 4.0 / 255.0);
  EXPECT_EQ(p.zero_point, 64);  // round(63.75)
  // The range is widened to hold 0.
  const ActQParams pos = qparams_from_range(2.0, 5.0, ActDtype::UInt8);
  EXPECT_DOUBLE_EQ(pos.scale, 5.0 / 255.0);
  EXPECT_EQ(pos.zero_point, 0);
  const ActQParams neg = qparams_from_range(-4.0, -1.0, ActDtype::UInt8);
  EXPECT_DOUBLE_EQ(neg.scale, 4.0 / 255.0);
  EXPECT_EQ(neg.zero_point, 255);
  // 0 is exactly representable: its code is the zero point.
  const at::Tensor zero = at::zeros({1});
  EXPECT_EQ(quantize_activation(zero, p.scale, p.zero_point, ActDtype::UInt8).item<int>(), 64);
}

TEST(ObserverQParams, Int8SymmetricRule) {
  const ActQParams p = qparams_from_range(-1.0, 3.0, ActDtype::Int8);
  EXPECT_DOUBLE_EQ(p.scale, 3.0 / 127.5);
  EXPECT_EQ(p.zero_point, 0);
  // -amax maps to -128 exactly, +amax is clamped to 127.
  const at::Tensor x = at::tensor({-3.0f, 3.0f, 0.0f});
  const at::Tensor q = quantize_activation(x, p.scale, 0, ActDtype::Int8);
  EXPECT_EQ(q[0].item<int>(), -128);
  EXPECT_EQ(q[1].item<int>(), 127);
  EXPECT_EQ(q[2].item<int>(), 0);
}

TEST(ObserverQParams, DegenerateRangesDoNotDivideByZero) {
  for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
    const ActQParams z = qparams_from_range(0.0, 0.0, dt);
    EXPECT_EQ(z.scale, 1.0);
    EXPECT_EQ(z.zero_point, 0);
    const ActQParams tiny = qparams_from_range(0.0, 1e-44, dt);
    EXPECT_GE(tiny.scale, static_cast<double>(std::numeric_limits<float>::min()));
    EXPECT_TRUE(std::isfinite(1.0f / static_cast<float>(tiny.scale)));
  }
  expect_error([] { qparams_from_range(1.0, -1.0, ActDtype::UInt8); }, "lo <= hi");
  expect_error([] { qparams_from_range(0.0, std::nan(""), ActDtype::UInt8); }, "finite");
}

TEST(ObserverQParams, RoundsHalfToEven) {
  // x / scale = 2.5 and 3.5 -> 2 and 4.
  const at::Tensor x = at::tensor({2.5f, 3.5f, -2.5f});
  const at::Tensor q = quantize_activation(x, 1.0, 0, ActDtype::Int8);
  EXPECT_EQ(q[0].item<int>(), 2);
  EXPECT_EQ(q[1].item<int>(), 4);
  EXPECT_EQ(q[2].item<int>(), -2);
}

TEST(ObserverMinMax, ExactRangeAndStreamingEqualsOneShot) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({1003, 7}) * 3 + 0.5;
  for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
    ObserverOptions o;
    o.act_dtype = dt;
    auto one = make_observer("minmax", o);
    one->observe(x);
    auto streamed = make_observer("minmax", o);
    // Uneven pieces, one of a single row.
    streamed->observe(x.narrow(0, 0, 1));
    streamed->observe(x.narrow(0, 1, 500));
    streamed->observe(x.narrow(0, 501, 502));
    const double lo = x.min().item<double>(), hi = x.max().item<double>();
    EXPECT_EQ(one->range().first, lo);
    EXPECT_EQ(one->range().second, hi);
    const ActQParams a = one->compute_qparams(), b = streamed->compute_qparams();
    EXPECT_EQ(a.scale, b.scale);
    EXPECT_EQ(a.zero_point, b.zero_point);
    const ActQParams expected = qparams_from_range(lo, hi, dt);
    EXPECT_EQ(a.scale, expected.scale);
    EXPECT_EQ(a.zero_point, expected.zero_point);
    EXPECT_EQ(streamed->batches(), 3);
    EXPECT_EQ(streamed->elements(), x.numel());
  }
}

TEST(ObserverMovingAverage, FollowsTheEmaFormula) {
  auto batch = [](float lo, float hi) { return at::tensor({lo, 0.25f * (lo + hi), hi}); };
  for (double c : {0.01, 0.5}) {
    ObserverOptions o;
    o.averaging_constant = c;
    auto obs = make_observer("ema", o);
    obs->observe(batch(-1, 2));
    obs->observe(batch(-3, 4));
    obs->observe(batch(0, 1));
    double mn = -1, mx = 2;
    mn += c * (-3 - mn);
    mx += c * (4 - mx);
    mn += c * (0 - mn);
    mx += c * (1 - mx);
    EXPECT_NEAR(obs->range().first, mn, 1e-12);
    EXPECT_NEAR(obs->range().second, mx, 1e-12);
    // The exact extremes are kept too.
    EXPECT_EQ(obs->seen_min(), -3);
    EXPECT_EQ(obs->seen_max(), 4);
  }
  ObserverOptions bad;
  bad.averaging_constant = 0;
  expect_error([&] { make_observer("ema", bad); }, "averaging_constant");
}

TEST(ObserverPercentile, ExactOnAKnownSample) {
  // The values 0..9999 in a shuffled order, in three batches.
  at::manual_seed(2);
  const at::Tensor x = at::randperm(10000).to(at::kFloat);
  ObserverOptions o;
  o.percentile = 99.0;
  auto obs = make_observer("percentile", o);
  obs->observe(x.narrow(0, 0, 3000));
  obs->observe(x.narrow(0, 3000, 1));
  obs->observe(x.narrow(0, 3001, 6999));
  // Linear interpolation at position q * (n - 1).
  EXPECT_NEAR(obs->range().first, 0.01 * 9999, 1e-2);
  EXPECT_NEAR(obs->range().second, 0.99 * 9999, 1e-2);
  // int8: the percentile of |x|.
  o.act_dtype = ActDtype::Int8;
  auto sym = make_observer("percentile", o);
  sym->observe(x - 5000);  // -5000..4999: |x| is 0..5000 with 1..4999 twice
  const double a = at::quantile((x - 5000).abs(), 0.99).item<double>();
  EXPECT_NEAR(sym->range().second, a, 1e-2);
  EXPECT_NEAR(sym->range().first, -a, 1e-2);
}

TEST(ObserverPercentile, BoundedSampleIsUniformAndDeterministic) {
  ObserverOptions o;
  o.percentile = 90.0;
  o.percentile_sample_size = 4000;
  o.seed = 7;
  std::vector<double> his;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    at::manual_seed(3);
    auto obs = make_observer("percentile", o);
    // Batches of different scales: a biased sample (e.g. keeping only the first batches) would miss the later,
    // larger ones. Overall the values are uniform on [0, 1].
    for (int b = 0; b < 10; ++b) obs->observe(at::rand({20000}) * 0.1 + 0.1 * b);
    his.push_back(obs->range().second);
    EXPECT_NEAR(obs->range().first, 0.1, 0.02);
    EXPECT_NEAR(obs->range().second, 0.9, 0.02);
  }
  at::set_num_threads(1);
  EXPECT_EQ(his[0], his[1]);
}

TEST(ObserverKl, ClipsRareHugeOutliers) {
  const at::Tensor x = heavy_tailed(100000, 10, 100.0, 4);
  for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      ObserverOptions o;
      o.act_dtype = dt;
      auto kl = make_observer("kl", o);
      auto mm = make_observer("minmax", o);
      for (int64_t b = 0; b < 4; ++b) {
        kl->observe(x.narrow(0, b * 25000, 25000));
        mm->observe(x.narrow(0, b * 25000, 25000));
      }
      const auto r = kl->range();
      EXPECT_LT(r.second - r.first, 0.25 * (mm->range().second - mm->range().first));
      // It clips the outliers, not the bulk (|x| < 4.5 holds ~all of N(0, 1)).
      EXPECT_GT(r.second, 4.0);
      EXPECT_LT(r.first, -4.0);
      const double kl_mse = bulk_mse(x, kl->compute_qparams(), dt, 4.0);
      const double mm_mse = bulk_mse(x, mm->compute_qparams(), dt, 4.0);
      EXPECT_LT(kl_mse, 0.1 * mm_mse) << "kl " << kl_mse << " minmax " << mm_mse;
      if (dt == ActDtype::Int8) {
        EXPECT_EQ(r.first, -r.second);
      }
    }
  }
  at::set_num_threads(1);
}

TEST(ObserverKl, KeepsTheRangeOfDataWithoutOutliers) {
  // Uniform data: nothing to gain by clipping. The second batch widens the histogram twice (0.3 -> 1.2).
  at::manual_seed(5);
  auto obs = make_observer("kl");
  obs->observe(at::rand({5000}) * 0.6 - 0.3);
  obs->observe(at::rand({100000}) * 2 - 1);
  const auto r = obs->range();
  EXPECT_GT(r.second, 0.9);
  EXPECT_LE(r.second, obs->seen_max());
  EXPECT_LT(r.first, -0.9);
  EXPECT_GE(r.first, obs->seen_min());
}

TEST(ObserverKl, OneSidedDataUsesTheUint8Range) {
  // ReLU-like data: the uint8 range starts at 0, and clipping a long positive tail is still found.
  at::Tensor x = heavy_tailed(100000, 10, 60.0, 6).abs();
  auto obs = make_observer("kl");
  obs->observe(x);
  const ActQParams p = obs->compute_qparams();
  EXPECT_EQ(p.zero_point, 0);
  EXPECT_EQ(p.range_min, x.min().item<double>());
  EXPECT_LT(p.range_max, 20.0);
  EXPECT_GT(p.range_max, 3.5);
}

TEST(ObserverAll, DegenerateInputs) {
  for (const std::string& kind : observer_kinds()) {
    for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
      ObserverOptions o;
      o.act_dtype = dt;
      auto zeros = make_observer(kind, o);
      zeros->observe(at::zeros({3, 5}));
      zeros->observe(at::zeros({1}));
      EXPECT_EQ(zeros->compute_qparams().scale, 1.0) << kind;
      EXPECT_EQ(zeros->compute_qparams().zero_point, 0) << kind;

      auto constant = make_observer(kind, o);
      constant->observe(at::full({4, 4}, 3.0f));
      const ActQParams c = constant->compute_qparams();
      EXPECT_NEAR(c.scale, dt == ActDtype::UInt8 ? 3.0 / 255 : 3.0 / 127.5, 1e-9) << kind;
      EXPECT_EQ(c.zero_point, 0) << kind;

      auto negative = make_observer(kind, o);
      negative->observe(at::full({2}, -2.0f));
      EXPECT_EQ(negative->compute_qparams().zero_point, dt == ActDtype::UInt8 ? 255 : 0) << kind;

      auto single = make_observer(kind, o);
      single->observe(at::tensor({0.75f}));
      const ActQParams s = single->compute_qparams();
      // The one value survives quantization.
      EXPECT_NEAR(fake_quantize_activation(at::tensor({0.75f}), s.scale, s.zero_point, dt).item<double>(), 0.75,
                  s.scale) << kind;

      // Zeros first, then data: the histogram starts late and still sees the zeros.
      auto late = make_observer(kind, o);
      late->observe(at::zeros({100}));
      late->observe(at::tensor({-1.0f, 1.0f}));
      EXPECT_GT(late->compute_qparams().scale, 0.0) << kind;
      EXPECT_LE(late->range().second, 1.0) << kind;
    }
  }
}

TEST(ObserverAll, RejectsNanAndInfNamingTheLayer) {
  for (const std::string& kind : observer_kinds()) {
    ObserverOptions o;
    o.name = "model.layers.3.mlp.down_proj";
    auto obs = make_observer(kind, o);
    obs->observe(at::randn({8}));
    at::Tensor bad = at::randn({4, 4});
    bad[2][1] = std::nan("");
    expect_error([&] { obs->observe(bad); }, kind + " observer of 'model.layers.3.mlp.down_proj': batch 1");
    bad[2][1] = -std::numeric_limits<float>::infinity();
    expect_error([&] { obs->observe(bad); }, "NaN or Inf");
    // A rejected batch leaves the observer as it was.
    EXPECT_EQ(obs->batches(), 1);
  }
}

TEST(ObserverAll, UsageErrors) {
  expect_error([] { make_observer("mse"); }, "expected one of: minmax, ema, percentile, kl");
  auto obs = make_observer("minmax");
  expect_error([&] { obs->compute_qparams(); }, "before any batch");
  expect_error([&] { obs->observe(at::empty({0, 4})); }, "empty batch");
  expect_error([&] { obs->observe(at::ones({3}, at::kInt)); }, "float tensor");
  expect_error([] { act_dtype_from_string("fp8"); }, "uint8, int8");
  ObserverOptions o;
  o.percentile = 0;
  expect_error([&] { make_observer("percentile", o); }, "(0, 100]");
  o = {};
  o.kl_bins = 1001;
  expect_error([&] { make_observer("kl", o); }, "even");
  expect_error([] { observe_qparams({}, "minmax"); }, "no calibration batches");
}

TEST(ObserverAll, AcceptsOtherFloatDtypesAndShapes) {
  at::manual_seed(8);
  const at::Tensor x = at::randn({2, 3, 17});
  for (const std::string& kind : observer_kinds()) {
    const ActQParams a = observe_qparams({x}, kind);
    const ActQParams b = observe_qparams({x.to(at::kDouble)}, kind);
    EXPECT_EQ(a.scale, b.scale) << kind;
    EXPECT_EQ(a.zero_point, b.zero_point) << kind;
    EXPECT_TRUE(std::isfinite(observe_qparams({x.to(at::kBFloat16)}, kind).scale)) << kind;
  }
}

}  // namespace
}  // namespace lwq
