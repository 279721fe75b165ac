// TEQ: trained input scales through a straight-through fake quantizer, compared with plain RTN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lwq/teq.h"
#include "outlier_layers.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::Layer;
using test::output_mse;

using test::make_outlier_layer;
using test::rtn_output_mse;

double teq_mse(const Layer& l, const TeqResult& r, size_t i) {
  return output_mse(l.x, l.weights[i], l.x / r.scales, r.packed[i]->dequantize());
}

TeqOptions options(const std::string& dtype, int64_t group_size, int64_t steps, bool sym = true) {
  TeqOptions o;
  o.spec = QuantSpec{dtype, group_size, sym};
  o.steps = steps;
  o.eval_every = 50;
  return o;
}

TEST(TeqQuantize, BeatsRtnOnOutlierChannels) {
  const Layer l = make_outlier_layer({128}, 256, 256, 5, 21);
  for (const auto& [dtype, gs] : std::vector<std::pair<std::string, int64_t>>{{"int4", 128}, {"int3", 32}}) {
    const TeqOptions o = options(dtype, gs, 200);
    const TeqResult r = teq_quantize(l.x, l.weights, o);
    const double rtn = rtn_output_mse(l.x, l.weights[0], o.spec);
    const double teq = teq_mse(l, r, 0);
    EXPECT_LT(teq, 0.9 * rtn) << dtype << " g" << gs;
    EXPECT_GT(r.best_step, 0) << dtype;
    EXPECT_NEAR(r.reports[0].baseline_output_mse, rtn, 1e-3 * rtn) << dtype;
    EXPECT_NEAR(r.reports[0].output_mse, teq, 1e-3 * teq) << dtype;
    EXPECT_EQ(r.reports[0].algorithm, "teq");
    EXPECT_GT(r.reports[0].seconds, 0);
    // The returned scales are normalised: geometric mean 1.
    EXPECT_NEAR(r.scales.log().mean().item<double>(), 0.0, 1e-5) << dtype;
  }
}

TEST(TeqQuantize, IncFormulationWithoutNormalisation) {
  // INC trains the raw scales; the straight-through gradient then also inflates them all together, which costs
  // progress but must still never end above RTN.
  const Layer l = make_outlier_layer({64}, 128, 128, 4, 28);
  TeqOptions o = options("int4", 64, 100);
  o.normalise_scales = false;
  const TeqResult r = teq_quantize(l.x, l.weights, o);
  const double rtn = rtn_output_mse(l.x, l.weights[0], o.spec);
  EXPECT_LT(teq_mse(l, r, 0), rtn);
  EXPECT_GT(r.scales.log().mean().item<double>(), 0.0) << "expected the common drift upwards";
}

TEST(TeqQuantize, ZeroStepsIsPlainRtn) {
  const Layer l = make_outlier_layer({40}, 100, 16, 2, 22);
  const TeqResult r = teq_quantize(l.x, l.weights, options("int4", 32, 0, false));
  EXPECT_TRUE(at::equal(r.scales, at::ones({100})));
  EXPECT_EQ(r.best_step, 0);
  const auto rtn = quantize_weight(l.weights[0], "int4", 32, false);
  EXPECT_TRUE(at::equal(r.packed[0]->qweight(), rtn->qweight()));
  EXPECT_EQ(r.reports[0].output_mse, r.reports[0].baseline_output_mse);
}

TEST(TeqQuantize, GroupedRaggedLinearsNeverWorseThanRtn) {
  // gate and up of an MLP with in 172 (ragged last group), asymmetric int4 and nf4.
  const Layer l = make_outlier_layer({64, 64}, 172, 48, 3, 23);
  for (const auto& [dtype, sym] : std::vector<std::pair<std::string, bool>>{{"int4", false}, {"nf4", true}}) {
    for (int64_t gs : {32, 64, 128}) {
      const TeqOptions o = options(dtype, gs, 60, sym);
      const TeqResult r = teq_quantize(l.x, l.weights, o, {"gate_proj", "up_proj"});
      ASSERT_EQ(r.packed.size(), 2u);
      double teq = 0, rtn = 0;
      for (size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(r.packed[i]->n_groups(), (172 + gs - 1) / gs);
        teq += teq_mse(l, r, i);
        rtn += rtn_output_mse(l.x, l.weights[i], o.spec);
      }
      EXPECT_LE(teq, rtn * (1 + 1e-4)) << dtype << " g" << gs;
    }
  }
}

TEST(TeqQuantize, SingleCalibrationSample) {
  const Layer l = make_outlier_layer({32}, 64, 1, 1, 24);
  const TeqOptions o = options("int4", 32, 50);
  const TeqResult r = teq_quantize(l.x, l.weights, o);
  EXPECT_LE(teq_mse(l, r, 0), rtn_output_mse(l.x, l.weights[0], o.spec) * (1 + 1e-4));
}

TEST(TeqQuantize, DeterministicForASeed) {
  const Layer l = make_outlier_layer({48}, 96, 200, 3, 25);
  TeqOptions o = options("int3", 32, 60);
  o.batch_size = 32;  // sampled mini-batches
  o.eval_every = 0;   // the end point is compared, so the batches matter
  const int saved = at::get_num_threads();
  // Reproducible for a given thread count. Across thread counts the last bits may differ: OpenBLAS (on some CPUs,
  // e.g. AMD EPYC) and ATen's reductions split sums by thread.
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    const TeqResult a = teq_quantize(l.x, l.weights, o);
    const TeqResult b = teq_quantize(l.x, l.weights, o);
    EXPECT_TRUE(at::equal(a.scales, b.scales)) << threads << " threads";
    EXPECT_TRUE(at::equal(a.packed[0]->qweight(), b.packed[0]->qweight())) << threads << " threads";
  }
  at::set_num_threads(saved);
  const TeqResult a = teq_quantize(l.x, l.weights, o);
  o.seed = 7;
  const TeqResult c = teq_quantize(l.x, l.weights, o);
  ASSERT_EQ(a.best_step, 60);
  ASSERT_EQ(c.best_step, 60);
  EXPECT_FALSE(at::equal(a.scales, c.scales)) << "the seed should change the batches";
}

TEST(TeqQuantize, RunsUnderInferenceMode) {
  const Layer l = make_outlier_layer({16}, 64, 32, 2, 26);
  const TeqOptions o = options("int4", 32, 20);
  const TeqResult plain = teq_quantize(l.x, l.weights, o);
  c10::InferenceMode guard;
  const at::Tensor x = l.x.clone(), w = l.weights[0].clone();  // inference tensors
  const TeqResult r = teq_quantize(x, {w}, o);
  EXPECT_TRUE(at::equal(r.scales, plain.scales));
}

TEST(TeqQuantize, BadInputsFail) {
  const Layer l = make_outlier_layer({16}, 64, 8, 0, 27);
  const TeqOptions o = options("int4", 32, 5);
  at::Tensor bad_x = l.x.clone();
  bad_x[0][0] = NAN;
  test::expect_error([&] { teq_quantize(bad_x, l.weights, o); }, "calibration inputs x");
  at::Tensor bad_w = l.weights[0].clone();
  bad_w[2][3] = NAN;
  test::expect_error([&] { teq_quantize(l.x, {bad_w}, o, {"o_proj"}); }, "o_proj");
  TeqOptions bad = o;
  bad.lr = 0;
  test::expect_error([&] { teq_quantize(l.x, l.weights, bad); }, "lr must be > 0");
  bad = o;
  bad.steps = -1;
  test::expect_error([&] { teq_quantize(l.x, l.weights, bad); }, "steps must be >= 0");
  test::expect_error([&] { teq_quantize(l.x, l.weights, options("int5", 32, 5)); }, "int5");
}

}  // namespace
}  // namespace lwq
