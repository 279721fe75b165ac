// AWQ scale/clip search, the group-wise fake quantizer it shares with TEQ, and the scale-folding helpers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lwq/awq.h"
#include "lwq/fake_quant.h"
#include "lwq/scale_folding.h"
#include "outlier_layers.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::Layer;
using test::output_mse;

using test::make_outlier_layer;
using test::rtn_output_mse;

double awq_mse(const Layer& l, const AwqResult& r, size_t i) {
  return output_mse(l.x, l.weights[i], l.x / r.scales, r.packed[i]->dequantize());
}

AwqOptions options(const std::string& dtype, int64_t group_size, bool sym = true) {
  AwqOptions o;
  o.spec.dtype = dtype;
  o.spec.group_size = group_size;
  o.spec.sym = sym;
  return o;
}

TEST(AwqFakeQuant, EqualsQuantizeWeightBitForBit) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({24, 172});
  const std::vector<std::pair<std::string, bool>> schemes = {{"int8", true}, {"int4", true},  {"int4", false},
                                                             {"int4_fullrange", true}, {"int3", true},
                                                             {"int2", false}, {"nf4", true}, {"fp4_e2m1", true}};
  for (const auto& [dtype, sym] : schemes) {
    for (int64_t gs : {32, 64, 128, -1}) {
      const QuantSpec spec{dtype, gs, sym};
      const auto rtn = quantize_weight(w, dtype, gs, sym);
      EXPECT_TRUE(at::equal(fake_quantize_groupwise(w, spec), rtn->dequantize()))
          << dtype << " sym " << sym << " g" << gs;
      const GroupwiseQuantized qw = quantize_groupwise(w, spec);
      const auto [q, scales, zeros, g_idx] = rtn->unpack();
      EXPECT_TRUE(at::equal(qw.q, q)) << dtype << " g" << gs;
      EXPECT_TRUE(at::equal(qw.scales, scales)) << dtype << " g" << gs;
      EXPECT_EQ(qw.zeros.defined(), zeros.has_value()) << dtype << " g" << gs;
    }
  }
}

TEST(AwqFakeQuant, ClipShrinksOnlyTheChosenGroups) {
  at::manual_seed(2);
  const at::Tensor w = at::randn({8, 100});
  const QuantSpec spec{"int4", 32, true};  // groups of 32, 32, 32, 4
  at::Tensor clip = at::ones({8, 4});
  clip[3][1] = 0.5;
  const GroupwiseQuantized plain = quantize_groupwise(w, spec);
  const GroupwiseQuantized clipped = quantize_groupwise(w, spec, clip);
  EXPECT_NEAR(clipped.scales[3][1].item<float>(), 0.5f * plain.scales[3][1].item<float>(), 1e-6);
  clipped.scales[3][1] = plain.scales[3][1];
  EXPECT_TRUE(at::equal(clipped.scales, plain.scales));
  test::expect_error([&] { quantize_groupwise(w, spec, at::ones({8, 3})); }, "clip must have shape [8, 4]");
}

TEST(AwqSearch, UniformActivationsKeepScalesEqual) {
  at::manual_seed(3);
  // |x| = 1 in every channel: no channel is more salient than another.
  const at::Tensor x = at::randn({64, 256}).sign();
  const at::Tensor w = at::randn({128, 256}) * 0.02;
  // x^r alone is all-equal for every r and normalises to exactly 1: the search keeps plain RTN.
  AwqOptions o = options("int4", 128);
  o.duo_scaling = false;
  o.clip_search = false;
  const AwqResult plain = awq_search(x, {w}, o);
  EXPECT_TRUE(at::equal(plain.scales, at::ones({256})));
  EXPECT_EQ(plain.ratio, -1);
  EXPECT_TRUE(at::equal(plain.packed[0]->dequantize(), quantize_weight(w, "int4", 128, true)->dequantize()));
  // With the weight term (INC's default) only the weights' own per-channel spread remains: within 25 % of equal.
  o.duo_scaling = true;
  const AwqResult duo = awq_search(x, {w}, o);
  EXPECT_LT((duo.scales.max() / duo.scales.min()).item<double>(), 1.25);
}

TEST(AwqSearch, BeatsRtnOnOutlierChannels) {
  const Layer l = make_outlier_layer({256}, 512, 256, 6, 4);
  for (const auto& [dtype, gs] : std::vector<std::pair<std::string, int64_t>>{{"int4", 128}, {"int3", 32}}) {
    const AwqOptions o = options(dtype, gs);
    const AwqResult r = awq_search(l.x, l.weights, o);
    const double rtn = rtn_output_mse(l.x, l.weights[0], o.spec);
    const double awq = awq_mse(l, r, 0);
    EXPECT_LT(awq, 0.7 * rtn) << dtype << " g" << gs;
    EXPECT_GE(r.ratio, 0) << dtype;
    // The report agrees with the independent measurement.
    EXPECT_NEAR(r.reports[0].baseline_output_mse, rtn, 1e-3 * rtn) << dtype;
    EXPECT_NEAR(r.reports[0].output_mse, awq, 1e-3 * awq) << dtype;
    EXPECT_GT(r.reports[0].weight_mse, 0);
    EXPECT_EQ(r.reports[0].algorithm, "awq");
  }
}

TEST(AwqSearch, NeverWorseThanRtn) {
  // No outliers and a coarse grid: AWQ may find nothing, but s = 1 is a candidate.
  const Layer l = make_outlier_layer({40}, 96, 24, 0, 5);
  for (const auto& [dtype, sym] : std::vector<std::pair<std::string, bool>>{
           {"int4", true}, {"int4", false}, {"int2", false}, {"nf4", true}, {"fp4_e2m1", true}, {"int8", true}}) {
    AwqOptions o = options(dtype, 32, sym);
    o.n_grid = 4;
    const AwqResult r = awq_search(l.x, l.weights, o);
    EXPECT_LE(r.reports[0].output_mse, r.reports[0].baseline_output_mse) << dtype << " sym " << sym;
    EXPECT_LE(awq_mse(l, r, 0), rtn_output_mse(l.x, l.weights[0], o.spec) * (1 + 1e-4)) << dtype << " sym " << sym;
  }
}

TEST(AwqSearch, GroupedLinearsShareOneScale) {
  // q, k, v of different widths sharing the normed hidden state.
  const Layer l = make_outlier_layer({96, 32, 32}, 172, 80, 4, 6);
  const AwqOptions o = options("int4", 64, false);
  const AwqResult r = awq_search(l.x, l.weights, o, {"q_proj", "k_proj", "v_proj"});
  ASSERT_EQ(r.packed.size(), 3u);
  ASSERT_EQ(r.reports.size(), 3u);
  EXPECT_EQ(r.scales.sizes(), at::IntArrayRef({172}));
  double awq = 0, rtn = 0;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.packed[i]->out_features(), l.weights[i].size(0));
    EXPECT_EQ(r.packed[i]->in_features(), 172);
    EXPECT_EQ(r.packed[i]->n_groups(), 3);
    EXPECT_EQ(r.clip[i].sizes(), at::IntArrayRef({l.weights[i].size(0), 3}));
    // The packed weight is Q(W diag(s)) with the reported clip.
    EXPECT_TRUE(at::equal(r.packed[i]->dequantize(),
                          fake_quantize_groupwise(l.weights[i] * r.scales, o.spec, r.clip[i])));
    awq += awq_mse(l, r, i) * l.weights[i].size(0);
    rtn += rtn_output_mse(l.x, l.weights[i], o.spec) * l.weights[i].size(0);
  }
  EXPECT_LT(awq, 0.9 * rtn);
}

TEST(AwqSearch, RaggedGroups) {
  const Layer l = make_outlier_layer({48}, 172, 64, 3, 7);
  for (int64_t gs : {32, 64, 128}) {
    const AwqOptions o = options("int4", gs);
    const AwqResult r = awq_search(l.x, l.weights, o);
    EXPECT_EQ(r.packed[0]->n_groups(), (172 + gs - 1) / gs);
    EXPECT_LE(awq_mse(l, r, 0), rtn_output_mse(l.x, l.weights[0], o.spec)) << "g" << gs;
    EXPECT_LT(awq_mse(l, r, 0), rtn_output_mse(l.x, l.weights[0], o.spec)) << "g" << gs;
  }
}

TEST(AwqSearch, ClipSearchHelpsOrIsDropped) {
  const Layer l = make_outlier_layer({64}, 256, 128, 4, 8);
  AwqOptions o = options("int3", 64);
  o.clip_search = false;
  const AwqResult no_clip = awq_search(l.x, l.weights, o);
  EXPECT_TRUE(at::equal(no_clip.clip[0], at::ones({64, 4})));
  o.clip_search = true;
  const AwqResult clip = awq_search(l.x, l.weights, o);
  EXPECT_LE(clip.reports[0].output_mse, no_clip.reports[0].output_mse);
  const bool clipped = at::any(clip.clip[0] < 1).item<bool>();
  const bool dropped = !clip.reports[0].adjustments.empty();
  EXPECT_TRUE(clipped != dropped) << "a clip either is kept (ratios < 1) or is reported as dropped";
  EXPECT_TRUE(at::all(clip.clip[0] > 0.5).item<bool>());
}

TEST(AwqSearch, SingleCalibrationSample) {
  const Layer l = make_outlier_layer({32}, 64, 1, 2, 9);
  const AwqOptions o = options("int4", 32);
  const AwqResult r = awq_search(l.x, l.weights, o);
  EXPECT_LE(awq_mse(l, r, 0), rtn_output_mse(l.x, l.weights[0], o.spec) * (1 + 1e-4));
  // A leading batch dimension is flattened.
  const AwqResult r3 = awq_search(l.x.reshape({1, 1, 64}), l.weights, o);
  EXPECT_TRUE(at::equal(r.scales, r3.scales));
}

TEST(AwqSearch, NonFiniteAndBadInputsFail) {
  Layer l = make_outlier_layer({16, 16}, 64, 8, 0, 10);
  const AwqOptions o = options("int4", 32);
  at::Tensor bad_x = l.x.clone();
  bad_x[3][5] = NAN;
  test::expect_error([&] { awq_search(bad_x, l.weights, o); }, "calibration inputs x");
  std::vector<at::Tensor> bad_w = {l.weights[0], l.weights[1].clone()};
  bad_w[1][0][0] = INFINITY;
  test::expect_error([&] { awq_search(l.x, bad_w, o, {"up_proj", "gate_proj"}); }, "gate_proj");
  test::expect_error([&] { awq_search(l.x, {l.weights[0], at::randn({16, 63})}, o); }, "weights[1]");
  test::expect_error([&] { awq_search(l.x.narrow(0, 0, 0), l.weights, o); }, "at least one calibration row");
  test::expect_error([&] { awq_search(l.x, {}, o); }, "at least one weight");
  test::expect_error([&] { awq_search(l.x, l.weights, options("nf4", 32, false)); }, "nf4");
  AwqOptions zero_grid = o;
  zero_grid.n_grid = 0;
  test::expect_error([&] { awq_search(l.x, l.weights, zero_grid); }, "n_grid");
}

TEST(AwqSearch, SameBitsWithOneAndTwoThreads) {
  const Layer l = make_outlier_layer({64, 48}, 160, 96, 3, 11);
  AwqOptions o = options("int4", 32);
  o.n_grid = 8;  // enough candidates to pick a non-trivial ratio, fewer to run twice
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const AwqResult a = awq_search(l.x, l.weights, o);
  at::set_num_threads(2);
  const AwqResult b = awq_search(l.x, l.weights, o);
  at::set_num_threads(saved);
  EXPECT_GE(a.ratio, 0);
  EXPECT_TRUE(at::equal(a.scales, b.scales));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(at::equal(a.clip[i], b.clip[i]));
    EXPECT_TRUE(at::equal(a.packed[i]->qweight(), b.packed[i]->qweight()));
  }
}

TEST(AwqScaleFolding, FoldedModelComputesTheSameOutput) {
  at::manual_seed(12);
  const int64_t hidden = 72, k = 40, out = 24, n = 10;
  const at::Tensor s = at::rand({hidden}) * 4 + 0.25;
  const at::Tensor w = at::randn({out, hidden});
  const at::Tensor w_scaled = scale_consumer_columns(w, s);
  EXPECT_TRUE(at::allclose(w_scaled.select(1, 7), w.select(1, 7) * s[7]));

  // Norm -> linear: y = (h * g + b) W^T.
  const at::Tensor h = at::randn({n, hidden});
  const at::Tensor g = at::randn({hidden}), b = at::randn({hidden});
  const auto [g2, b2] = fold_scales_into_norm(g, b, s);
  EXPECT_TRUE(at::allclose((h * g2 + b2).matmul(w_scaled.t()), (h * g + b).matmul(w.t()), 1e-4, 1e-4));
  const auto [g3, no_bias] = fold_scales_into_norm(g, at::Tensor(), s);  // RMSNorm has no bias
  EXPECT_FALSE(no_bias.defined());
  EXPECT_TRUE(at::allclose((h * g3).matmul(w_scaled.t()), (h * g).matmul(w.t()), 1e-4, 1e-4));

  // Linear -> linear (e.g. v_proj -> o_proj): y = (z Wp^T + bp) W^T.
  const at::Tensor z = at::randn({n, k});
  const at::Tensor wp = at::randn({hidden, k}), bp = at::randn({hidden});
  const auto [wp2, bp2] = fold_scales_into_producer(wp, bp, s);
  EXPECT_TRUE(at::allclose((z.matmul(wp2.t()) + bp2).matmul(w_scaled.t()), (z.matmul(wp.t()) + bp).matmul(w.t()),
                           1e-4, 1e-3));
  // The inputs are left untouched.
  EXPECT_FALSE(at::equal(wp2, wp));

  test::expect_error([&] { scale_consumer_columns(w, at::ones({hidden + 1})); }, "scales must be [72]");
  test::expect_error([&] { fold_scales_into_norm(g, b, at::zeros({hidden})); }, "non-zero");
  test::expect_error([&] { fold_scales_into_producer(wp.t(), at::Tensor(), s); }, "scales must be [40]");
}

TEST(AwqScaleFolding, AwqResultFoldsIntoANorm) {
  // End to end: fold AWQ's scales into an RMSNorm weight and run the packed weight on the norm's output.
  const Layer l = make_outlier_layer({64}, 128, 32, 3, 13);
  const at::Tensor norm_w = at::rand({128}) + 0.5;
  const at::Tensor x = l.x * norm_w;  // what the linear sees
  const AwqResult r = awq_search(x, l.weights, options("int4", 64));
  const auto [folded, unused] = fold_scales_into_norm(norm_w, at::Tensor(), r.scales);
  const at::Tensor y = woq_linear(l.x * folded, r.packed[0], c10::nullopt);
  const at::Tensor y_ref = (x / r.scales).matmul(r.packed[0]->dequantize().t());
  EXPECT_TRUE(at::allclose(y, y_ref, 1e-4, 1e-4));
}

}  // namespace
}  // namespace lwq
