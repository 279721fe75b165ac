// SmoothQuant scales and the static W8A8 algorithm: equivalence of smoothing, error reduction on outlier
// channels, the fake-quant reference against the integer formula and against lwq::w8a8_linear.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>

#include "lwq/scale_folding.h"
#include "lwq/smoothquant.h"
#include "lwq/w8a8.h"
#include "ops.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::expect_error;

// Activations [batches x rows, in] with a few outlier channels (x50), like the inputs of LLM projections.
std::vector<at::Tensor> outlier_batches(int64_t n_batches, int64_t rows, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor channel_gain = at::ones({in});
  channel_gain.narrow(0, 1, 1).fill_(50);
  channel_gain.narrow(0, in / 2, 1).fill_(-40);
  channel_gain.narrow(0, in - 1, 1).fill_(30);
  std::vector<at::Tensor> out;
  for (int64_t b = 0; b < n_batches; ++b) out.push_back(at::randn({rows, in}) * channel_gain);
  return out;
}

// y = act_scale * w_scale[n] * sum_k (xq - zp) * q + bias in double, straight from the logical weight.
at::Tensor integer_reference(const at::Tensor& x, const W8a8Result& r, const at::Tensor& bias) {
  const auto logical = r.weight->unpack();
  const at::Tensor q = std::get<0>(logical).to(at::kDouble);         // [out, in]
  const at::Tensor w_scale = std::get<1>(logical).to(at::kDouble);   // [out, 1]
  const at::Tensor xq = quantize_activation(x, r.act_scale, r.act_zero_point, r.act_dtype).to(at::kDouble);
  at::Tensor y = at::matmul(xq - static_cast<double>(r.act_zero_point), q.t()) * r.act_scale * w_scale.t();
  if (bias.defined()) y = y + bias.to(at::kDouble);
  return y;
}

TEST(SmoothQuant, ScalesFollowTheFormula) {
  const at::Tensor ax = at::tensor({4.0f, 0.0f, 1.0f, 9.0f});
  // Column maxima 1, 2, 0.25, 0 (the last column is all zero).
  const at::Tensor w = at::tensor({1.0f, -2.0f, 0.25f, 0.0f, -0.5f, 1.0f, -0.125f, 0.0f}).reshape({2, 4});
  const at::Tensor s = smoothquant_scales(ax, w, 0.5);
  EXPECT_FLOAT_EQ(s[0].item<float>(), 2.0f);                    // sqrt(4) / sqrt(1)
  EXPECT_FLOAT_EQ(s[1].item<float>(), 1.0f);                    // no activation: s = 1
  EXPECT_FLOAT_EQ(s[2].item<float>(), 2.0f);                    // sqrt(1) / sqrt(0.25)
  EXPECT_NEAR(s[3].item<float>(), 3.0 / std::sqrt(1e-5), 1e-2);  // the zero column is floored at 1e-5
  const at::Tensor s1 = smoothquant_scales(ax, w, 1.0);
  EXPECT_FLOAT_EQ(s1[0].item<float>(), 4.0f);
  EXPECT_FLOAT_EQ(s1[3].item<float>(), 9.0f);
  const at::Tensor s0 = smoothquant_scales(ax, w, 0.0);
  EXPECT_FLOAT_EQ(s0[2].item<float>(), 4.0f);  // 1 / 0.25
  // Two weights reading the same activation: the column maxima are taken over both.
  const at::Tensor w2 = at::tensor({16.0f, 0.0f, 0.0f, 0.0f}).reshape({1, 4});
  const at::Tensor sj = smoothquant_scales(ax, {w, w2}, 0.5);
  EXPECT_FLOAT_EQ(sj[0].item<float>(), 0.5f);  // sqrt(4) / sqrt(16)
  EXPECT_FLOAT_EQ(sj[2].item<float>(), 2.0f);
}

TEST(SmoothQuant, SmoothedProductEqualsOriginal) {
  const auto batches = outlier_batches(1, 9, 37, 11);
  at::manual_seed(12);
  const at::Tensor w = at::randn({13, 37}) * 0.1;
  ChannelAbsMax absmax("layer");
  absmax.observe(batches[0]);
  for (double alpha : {0.0, 0.3, 0.5, 0.85, 1.0}) {
    const at::Tensor s = smoothquant_scales(absmax.absmax(), w, alpha);
    const at::Tensor y = at::matmul(batches[0], w.t());
    const at::Tensor ys = at::matmul(smooth_activation(batches[0], s), scale_consumer_columns(w, s).t());
    EXPECT_TRUE(at::allclose(ys, y, 1e-4, 1e-4)) << "alpha " << alpha << " max diff "
                                                 << (ys - y).abs().max().item<double>();
  }
  // With alpha 0.5 the outlier channel's activation max and weight max meet: max|x_j / s_j| = max|W_j * s_j|.
  const at::Tensor s = smoothquant_scales(absmax.absmax(), w, 0.5);
  const double act = (batches[0].select(1, 1).abs().max() / s[1]).item<double>();
  const double wt = (w.select(1, 1).abs().max() * s[1]).item<double>();
  EXPECT_NEAR(act, wt, 1e-4 * act);
}

TEST(SmoothQuant, FoldIntoRmsNormKeepsTheOutput) {
  const auto batches = outlier_batches(1, 6, 24, 13);
  at::manual_seed(14);
  const at::Tensor gamma = at::rand({24}) + 0.5;
  const at::Tensor w = at::randn({10, 24});
  const at::Tensor h = batches[0] * at::rsqrt(batches[0].pow(2).mean(-1, true) + 1e-6);  // normalized, before gamma
  ChannelAbsMax absmax;
  absmax.observe(h * gamma);
  const at::Tensor s = smoothquant_scales(absmax.absmax(), w, 0.5);
  const at::Tensor folded_gamma = fold_scales_into_norm(gamma, at::Tensor(), s).first;
  const at::Tensor y = at::matmul(h * gamma, w.t());
  const at::Tensor ys = at::matmul(h * folded_gamma, scale_consumer_columns(w, s).t());
  EXPECT_TRUE(at::allclose(ys, y, 1e-4, 1e-4));
}

TEST(SmoothQuant, ChannelAbsMaxStreamsAndChecks) {
  const auto batches = outlier_batches(3, 5, 8, 15);
  ChannelAbsMax streamed("proj");
  for (const auto& b : batches) streamed.observe(b.reshape({5, 1, 8}));  // any leading shape
  const at::Tensor expected = std::get<0>(at::cat(batches).abs().max(0));
  EXPECT_TRUE(at::equal(streamed.absmax(), expected));
  expect_error([&] { streamed.observe(at::randn({2, 9})); }, "has 9 channels, earlier batches had 8");
  at::Tensor bad = at::randn({2, 8});
  bad[1][3] = std::nan("");
  expect_error([&] { streamed.observe(bad); }, "channel absmax of 'proj': batch 3 contains NaN or Inf");
  ChannelAbsMax empty;
  expect_error([&] { empty.absmax(); }, "no batch");
  expect_error([&] { smoothquant_scales(expected, at::randn({4, 8}), 1.5); }, "alpha must lie in [0, 1]");
  expect_error([&] { smoothquant_scales(expected, at::randn({4, 7}), 0.5); }, "must have shape [out, 8]");
}

TEST(W8a8Algo, SmoothQuantBeatsPlainW8a8OnOutlierChannels) {
  const auto batches = outlier_batches(4, 16, 64, 21);
  at::manual_seed(22);
  const at::Tensor w = at::randn({24, 64}) * 0.05;
  const at::Tensor bias = at::randn({24}) * 0.1;
  for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
    W8a8Options o;
    o.act_dtype = dt;
    o.smoothquant_alpha = 0.5;
    const W8a8Result r = w8a8_quantize(w, bias, batches, o, "mlp.up_proj");
    ASSERT_TRUE(r.smooth_scales.defined());
    EXPECT_GT(r.report.output_mse, 0.0);
    EXPECT_LT(r.report.output_mse, 0.5 * r.report.baseline_output_mse)
        << act_dtype_name(dt) << ": smoothquant " << r.report.output_mse << " plain " << r.report.baseline_output_mse;
    EXPECT_EQ(r.report.algorithm, "w8a8_smoothquant/minmax");
    EXPECT_GE(r.report.seconds, 0.0);
    EXPECT_GT(r.report.weight_mse, 0.0);
    EXPECT_LT(r.report.weight_mse, 1e-4);
  }
}

TEST(W8a8Algo, PlainMinMaxReportsItsOwnBaseline) {
  const auto batches = outlier_batches(2, 8, 40, 23);
  at::manual_seed(24);
  const at::Tensor w = at::randn({12, 40});
  const W8a8Result r = w8a8_quantize(w, at::Tensor(), batches);
  EXPECT_FALSE(r.smooth_scales.defined());
  EXPECT_EQ(r.report.output_mse, r.report.baseline_output_mse);
  // The weight error is that of RTN int8 per channel.
  const at::Tensor deq = quantize_weight(w, "int8", -1, true)->dequantize();
  EXPECT_DOUBLE_EQ(r.report.weight_mse, (deq - w).to(at::kDouble).pow(2).mean().item<double>());
  // And the activation parameters are those of the min/max observer.
  const ActQParams qp = observe_qparams(batches, "minmax");
  EXPECT_EQ(r.act_scale, qp.scale);
  EXPECT_EQ(r.act_zero_point, qp.zero_point);
}

TEST(W8a8Algo, FakeQuantMatchesTheIntegerFormula) {
  const auto batches = outlier_batches(1, 7, 45, 25);
  at::manual_seed(26);
  const at::Tensor w = at::randn({11, 45});
  const at::Tensor bias = at::randn({11});
  for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
    W8a8Options o;
    o.act_dtype = dt;
    o.smoothquant_alpha = 0.6;
    o.observer = "percentile";
    const W8a8Result r = w8a8_quantize(w, bias, batches, o);
    const at::Tensor xs = smooth_activation(batches[0], r.smooth_scales);
    const at::Tensor y = w8a8_fake_quant_linear(xs, r.weight->dequantize(), r.act_scale, r.act_zero_point, bias, dt);
    const at::Tensor ref = integer_reference(xs, r, bias).to(at::kFloat);
    EXPECT_TRUE(at::allclose(y, ref, 1e-4, 1e-4)) << (y - ref).abs().max().item<double>();
  }
}

TEST(W8a8Algo, PackedResultRunsThroughW8a8Linear) {
  // Awkward sizes: out not a multiple of the 8-row tile, in not a multiple of the 4-column unit.
  const auto batches = outlier_batches(2, 5, 67, 27);
  at::manual_seed(28);
  const at::Tensor w = at::randn({13, 67}) * 0.2;
  const at::Tensor bias = at::randn({13});
  for (const char* kind : {"minmax", "kl"}) {
    for (ActDtype dt : {ActDtype::UInt8, ActDtype::Int8}) {
      W8a8Options o;
      o.observer = kind;
      o.act_dtype = dt;
      o.smoothquant_alpha = 0.5;
      const W8a8Result r = w8a8_quantize(w, bias, batches, o);
      EXPECT_EQ(r.weight->dtype(), "int8");
      EXPECT_EQ(r.weight->group_size(), -1);
      EXPECT_TRUE(r.weight->sym());
      const at::Tensor xs = smooth_activation(batches[1], r.smooth_scales);
      const at::Tensor ref = w8a8_fake_quant_linear(xs, r.weight->dequantize(), r.act_scale, r.act_zero_point, bias,
                                                    dt);
      for (int threads : {1, 2}) {
        at::set_num_threads(threads);
        const at::Tensor y = w8a8_linear(xs, r.weight, r.act_scale, r.act_zero_point, bias, act_dtype_name(dt));
        EXPECT_TRUE(at::allclose(y, ref, 1e-4, 1e-4))
            << kind << " " << act_dtype_name(dt) << " threads " << threads << ": max diff "
            << (y - ref).abs().max().item<double>();
      }
      at::set_num_threads(1);
    }
  }
}

TEST(W8a8Algo, FromAFilledObserverEqualsFromBatches) {
  const auto batches = outlier_batches(3, 4, 20, 29);
  at::manual_seed(30);
  const at::Tensor w = at::randn({6, 20});
  W8a8Options o;
  o.observer = "ema";
  o.act_dtype = ActDtype::Int8;
  o.smoothquant_alpha = 0.5;
  const W8a8Result a = w8a8_quantize(w, at::Tensor(), batches, o);
  ObserverOptions oo;
  oo.act_dtype = ActDtype::Int8;
  auto obs = make_observer("ema", oo);
  for (const auto& x : batches) obs->observe(smooth_activation(x, a.smooth_scales));
  const W8a8Result b = w8a8_quantize(w, *obs, a.smooth_scales);
  EXPECT_EQ(a.act_scale, b.act_scale);
  EXPECT_EQ(a.act_zero_point, b.act_zero_point);
  EXPECT_TRUE(at::equal(a.weight->dequantize(), b.weight->dequantize()));
  EXPECT_EQ(a.report.weight_mse, b.report.weight_mse);
  EXPECT_EQ(b.report.output_mse, -1);  // no calibration data to measure on
  EXPECT_EQ(b.report.algorithm, "w8a8_smoothquant/ema");
}

TEST(W8a8Algo, SingleSampleAndErrors) {
  at::manual_seed(31);
  const at::Tensor w = at::randn({5, 9});
  const W8a8Result one = w8a8_quantize(w, at::Tensor(), {at::randn({9})});  // one token, 1-D
  EXPECT_TRUE(std::isfinite(one.report.output_mse));
  EXPECT_GT(one.act_scale, 0.0);
  expect_error([&] { w8a8_quantize(w, at::Tensor(), {}, {}, "blk.0.q"); }, "w8a8 'blk.0.q': no calibration");
  expect_error([&] { w8a8_quantize(w, at::Tensor(), {at::randn({2, 8})}, {}, "blk.0.q"); },
               "calibration batch 0 must be [..., 9]");
  expect_error([&] { w8a8_quantize(w, at::randn({4}), {at::randn({2, 9})}); }, "bias must have shape [5]");
  W8a8Options o;
  o.observer = "kl";
  at::Tensor bad = at::randn({2, 9});
  bad[0][0] = INFINITY;
  expect_error([&] { w8a8_quantize(w, at::Tensor(), {bad}, o, "blk.0.q"); }, "kl observer of 'blk.0.q'");
}

}  // namespace
}  // namespace lwq
