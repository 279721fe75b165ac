// GPTQ: equivalence with RTN on an identity Hessian, agreement with a direct (unblocked, fp64) implementation of
// the paper's algorithm, lower output error than RTN on inputs with outlier and correlated channels, act-order
// and static groups, dead columns, damping, bad inputs, ragged groups and thread determinism.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "lwq/gptq.h"
#include "lwq/rtn.h"
#include "test_util.h"

namespace lwq {
namespace {

using test::expect_error;

// Calibration inputs like an LLM's: a shared low-rank component (correlated channels), noise, and a few channels
// 20x larger than the rest.
at::Tensor activations(int64_t rows, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({rows, 8}).mm(at::randn({8, in})) * 0.5 + at::randn({rows, in});
  const at::Tensor outliers = at::randperm(in).narrow(0, 0, std::max<int64_t>(1, in / 32));
  x.index_copy_(1, outliers, x.index_select(1, outliers) * 20.0);
  return x;
}

struct Layer {
  at::Tensor weight, hessian;
};

Layer make_layer(int64_t out, int64_t in, uint64_t seed, int64_t rows = 512) {
  Layer l;
  l.hessian = gptq_hessian_add(at::zeros({in, in}), activations(rows, in, seed), 0);
  at::manual_seed(seed + 1);
  l.weight = at::randn({out, in}) * 0.05;
  return l;
}

// The paper's algorithm written directly, in fp64: U = upper Cholesky factor of (H + damp)^-1, one column at a
// time, the whole remaining weight updated after each column, group parameters from the current weights at each
// group start (in processing order). Returns the dequantized weight in the original column order.
at::Tensor reference_gptq(const at::Tensor& weight, const at::Tensor& hessian, const QuantSpec& spec,
                          bool act_order) {
  const DtypeInfo& info = dtype_info(spec.dtype);
  const int64_t in = weight.size(1);
  const int64_t group = effective_group_size(spec.group_size, in);
  at::Tensor w = weight.to(at::kDouble).clone();
  at::Tensor h = hessian.to(at::kDouble).clone();
  at::Tensor perm = at::arange(in, at::kLong);
  if (act_order) {
    perm = std::get<1>(h.diagonal().sort(true, 0, true));
    w = w.index_select(1, perm);
    h = h.index_select(0, perm).index_select(1, perm);
  }
  h.diagonal().add_(0.01 * h.diagonal().mean().item<double>());
  const at::Tensor u = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(h)), /*upper=*/true);
  at::Tensor dq = at::zeros_like(w);
  QParams p;
  for (int64_t j = 0; j < in; ++j) {
    if (j % group == 0) p = compute_qparams(w.narrow(1, j, std::min(group, in - j)), info, spec.sym);
    const at::Tensor col = w.narrow(1, j, 1);
    const at::Tensor q = dequantize_rows(quantize_rows(col, p.scale, p.zero, info, spec.sym), p.scale, p.zero,
                                         info, spec.sym)
                             .to(at::kDouble);
    dq.narrow(1, j, 1).copy_(q);
    const at::Tensor err = (col - q) / u[j][j];
    w.narrow(1, j, in - j).sub_(err.mm(u[j].narrow(0, j, in - j).unsqueeze(0)));
  }
  return at::empty_like(dq).index_copy_(1, perm, dq).to(at::kFloat);
}

GptqOptions make_options(bool act_order, bool static_groups = false, int64_t block = 128) {
  GptqOptions o;
  o.act_order = act_order;
  o.static_groups = static_groups;
  o.block_size = block;
  return o;
}

TEST(Gptq, IdentityHessianGivesRtnBitForBit) {
  const int64_t in = 172;
  at::manual_seed(3);
  const at::Tensor w = at::randn({24, in});
  for (const char* dtype : {"int4", "int3", "int8", "int4_fullrange", "nf4", "fp4_e2m1"}) {
    for (bool sym : {true, false}) {
      if (!sym && (dtype_info(dtype).codebook != kernels::Codebook::Int || std::string(dtype) == "int4_fullrange")) {
        continue;
      }
      for (int64_t g : {int64_t(-1), int64_t(32), int64_t(128)}) {
        for (bool act_order : {false, true}) {
          const QuantSpec spec{dtype, g, sym};
          const GroupwiseQ rtn = quantize_groupwise(w, dtype_info(dtype), sym, g);
          const GptqSolution s = gptq_solve(w, at::eye(in), spec, make_options(act_order));
          SCOPED_TRACE(std::string(dtype) + (sym ? " sym" : " asym") + " g" + std::to_string(g) +
                       (act_order ? " act_order" : ""));
          EXPECT_TRUE(s.q.q.equal(rtn.q));
          EXPECT_TRUE(s.q.scales.equal(rtn.scales));
          if (!sym) {
            EXPECT_TRUE(s.q.zeros.equal(rtn.zeros));
          }
          EXPECT_FALSE(s.g_idx.defined()) << "equal Hessian diagonal keeps the natural order";
        }
      }
    }
  }
}

TEST(Gptq, MatchesDirectImplementationOfThePaper) {
  const Layer l = make_layer(24, 172, 11);
  // block 20 < group 32 exercises the block edges moved onto group starts; block 128 the panels.
  for (int64_t block : {int64_t(20), int64_t(128)}) {
    for (bool act_order : {false, true}) {
      for (bool sym : {true, false}) {
        const QuantSpec spec{"int4", 32, sym};
        const GptqSolution s = gptq_solve(l.weight, l.hessian, spec, make_options(act_order, false, block));
        const at::Tensor ref = reference_gptq(l.weight, l.hessian, spec, act_order);
        // Values that differ by more than float noise: a code (or a group scale) came out differently.
        const double tol = 1e-4 * ref.abs().max().item<double>();
        const double mismatch = (s.dequantized - ref).abs().gt(tol).to(at::kDouble).mean().item<double>();
        const double err = hessian_weighted_error(l.weight, s.dequantized, l.hessian);
        const double ref_err = hessian_weighted_error(l.weight, ref, l.hessian);
        SCOPED_TRACE("block " + std::to_string(block) + (act_order ? " act_order" : "") + (sym ? " sym" : " asym"));
        // fp32 blocked vs fp64 direct: codes at rounding boundaries may flip and the flips propagate (the fp32
        // direct algorithm differs from fp64 in ~2.5% of the values here); the errors hardly differ.
        EXPECT_LT(mismatch, 0.06);
        EXPECT_NEAR(err, ref_err, 0.03 * ref_err);
      }
    }
  }
}

TEST(Gptq, BeatsRtnOnOutlierAndCorrelatedInputs) {
  const Layer l = make_layer(64, 512, 21);
  struct Config {
    const char* dtype;
    int64_t group;
  };
  for (const Config& c : {Config{"int4", 128}, Config{"int3", 32}}) {
    for (bool sym : {true, false}) {
      for (bool act_order : {false, true}) {
        const QuantSpec spec{c.dtype, c.group, sym};
        LayerReport report;
        gptq_quantize(l.weight, l.hessian, spec, make_options(act_order), &report);
        SCOPED_TRACE(std::string(c.dtype) + " g" + std::to_string(c.group) + (sym ? " sym" : " asym") +
                     (act_order ? " act_order" : ""));
        EXPECT_EQ(report.algorithm, "gptq");
        EXPECT_GT(report.baseline_output_mse, 0);
        EXPECT_LT(report.output_mse, 0.5 * report.baseline_output_mse);
        // The report's RTN baseline is what plain RTN gives.
        const at::Tensor rtn = rtn_quantize(l.weight, spec)->dequantize();
        EXPECT_DOUBLE_EQ(report.baseline_output_mse, hessian_weighted_error(l.weight, rtn, l.hessian));
      }
    }
  }
}

TEST(Gptq, ActOrderGidxIsConsistentWithThePackedWeight) {
  const Layer l = make_layer(40, 172, 31);
  for (int64_t g : {int64_t(32), int64_t(64)}) {
    const QuantSpec spec{"int4", g, false};
    const GptqSolution s = gptq_solve(l.weight, l.hessian, spec, make_options(true));
    ASSERT_TRUE(s.g_idx.defined());
    const at::Tensor counts = at::bincount(s.g_idx.to(at::kLong));
    const int64_t n_groups = group_count(g, 172);
    ASSERT_EQ(counts.size(0), n_groups);
    EXPECT_TRUE(counts.narrow(0, 0, n_groups - 1).eq(g).all().item<bool>());
    const PackedWeightPtr packed = gptq_quantize(l.weight, l.hessian, spec, make_options(true));
    ASSERT_TRUE(packed->has_g_idx());
    EXPECT_TRUE(std::get<3>(packed->unpack())->equal(s.g_idx));
    EXPECT_TRUE(packed->dequantize().equal(s.dequantized));
    // The group of a column is the block of g consecutive columns in decreasing-diagonal order.
    const at::Tensor order = std::get<1>(l.hessian.diagonal().sort(true, 0, true));
    EXPECT_TRUE(s.g_idx.index_select(0, order).to(at::kLong).equal(at::arange(172, at::kLong).div(g, "floor")));
  }
}

TEST(Gptq, StaticGroupsUseTheWeightsOwnGroups) {
  const Layer l = make_layer(32, 172, 41);
  const QuantSpec spec{"int4", 32, true};
  for (bool act_order : {false, true}) {
    LayerReport report;
    const GptqSolution s = gptq_solve(l.weight, l.hessian, spec, make_options(act_order, true));
    EXPECT_FALSE(s.g_idx.defined());
    EXPECT_TRUE(s.q.scales.equal(quantize_groupwise(l.weight, dtype_info("int4"), true, 32).scales));
    const PackedWeightPtr packed = gptq_quantize(l.weight, l.hessian, spec, make_options(act_order, true), &report);
    EXPECT_FALSE(packed->has_g_idx());
    EXPECT_TRUE(packed->dequantize().equal(s.dequantized));
    EXPECT_LT(report.output_mse, 0.7 * report.baseline_output_mse);
  }
}

TEST(Gptq, DeadColumnsAreZeroedAndReported) {
  const int64_t in = 96;
  at::Tensor x = activations(256, in, 51);
  const std::vector<int64_t> dead = {0, 17, 95};
  for (int64_t c : dead) x.select(1, c).zero_();
  const at::Tensor h = gptq_hessian_add(at::zeros({in, in}), x, 0);
  at::manual_seed(52);
  const at::Tensor w = at::randn({16, in});
  for (bool act_order : {false, true}) {
    LayerReport report;
    const PackedWeightPtr packed = gptq_quantize(w, h, QuantSpec{"int4", 32, false}, make_options(act_order), &report);
    const at::Tensor dq = packed->dequantize();
    for (int64_t c : dead) EXPECT_TRUE(dq.select(1, c).eq(0).all().item<bool>()) << "column " << c;
    ASSERT_EQ(report.adjustments.size(), 1u);
    EXPECT_NE(report.adjustments[0].find("3 dead input columns"), std::string::npos) << report.adjustments[0];
    EXPECT_LT(report.output_mse, report.baseline_output_mse);
  }
}

TEST(Gptq, IndefiniteHessianRaisesDampingOrFailsClearly) {
  // Pairs of columns with correlation 1.05: eigenvalue -0.05, made positive by percdamp 0.1 (not 0.01).
  const int64_t in = 8;
  at::Tensor h = at::eye(in);
  for (int64_t i = 0; i < in; i += 2) h[i][i + 1] = h[i + 1][i] = 1.05;
  at::manual_seed(61);
  const at::Tensor w = at::randn({8, in});
  LayerReport report;
  gptq_quantize(w, h, QuantSpec{"int4", -1, true}, {}, &report);
  ASSERT_EQ(report.adjustments.size(), 1u);
  EXPECT_NE(report.adjustments[0].find("percdamp raised from 0.01 to 0.1"), std::string::npos)
      << report.adjustments[0];
  at::Tensor hopeless = at::eye(2);
  hopeless[0][1] = hopeless[1][0] = 5000.0;
  expect_error([&] { gptq_quantize(at::randn({4, 2}), hopeless, QuantSpec{"int4", -1, true}); },
               "not positive definite");
}

TEST(Gptq, SingleCalibrationSample) {
  const int64_t in = 64;
  const at::Tensor x = activations(1, in, 71);
  const at::Tensor h = gptq_hessian_add(at::zeros({in, in}), x, 0);
  at::manual_seed(72);
  const at::Tensor w = at::randn({16, in});
  LayerReport report;
  const PackedWeightPtr packed = gptq_quantize(w, h, QuantSpec{"int4", 32, true}, make_options(true), &report);
  EXPECT_TRUE(packed->dequantize().isfinite().all().item<bool>());
  // Rank one: the error can be pushed almost entirely out of the one calibration direction.
  EXPECT_LT(report.output_mse, 0.1 * report.baseline_output_mse);
}

TEST(Gptq, RejectsNonFiniteAndMisshapenInputs) {
  const at::Tensor h = at::eye(8);
  at::Tensor w = at::randn({4, 8});
  const QuantSpec spec{"int4", -1, true};
  at::Tensor bad_w = w.clone();
  bad_w[1][2] = std::nan("");
  expect_error([&] { gptq_quantize(bad_w, h, spec); }, "gptq_quantize: weight contains NaN");
  at::Tensor bad_h = h.clone();
  bad_h[3][3] = INFINITY;
  expect_error([&] { gptq_quantize(w, bad_h, spec); }, "gptq_quantize: hessian contains NaN or Inf");
  expect_error([&] { gptq_quantize(w, at::eye(7), spec); }, "hessian must be [8, 8]");
  expect_error([&] { gptq_quantize(w, h, QuantSpec{"nf4", -1, false}); }, "symmetric");
  expect_error([&] { gptq_quantize(w, -h, spec); }, "negative diagonal");
  GptqOptions no_damp;
  no_damp.percdamp = 0;
  expect_error([&] { gptq_quantize(w, h, spec, no_damp); }, "percdamp must be a positive number");
  at::Tensor x = at::randn({3, 8});
  x[0][0] = std::nan("");
  expect_error([&] { gptq_hessian_add(h, x, 0); }, "gptq_hessian_add: x contains NaN");
  expect_error([&] { gptq_hessian_add(h, at::randn({3, 7}), 0); }, "x must be a float tensor [..., 8]");
}

TEST(Gptq, AllZeroWeightAndZeroGroup) {
  const Layer l = make_layer(8, 64, 81);
  const GptqSolution zero = gptq_solve(at::zeros({8, 64}), l.hessian, QuantSpec{"int4", 32, false});
  EXPECT_TRUE(zero.dequantized.eq(0).all().item<bool>());
  EXPECT_TRUE(zero.q.scales.eq(1).all().item<bool>());  // asym: an empty range gets scale 1
  // With an identity Hessian no error reaches the zero group, which stays exactly zero.
  at::Tensor w = l.weight.clone();
  w.narrow(1, 32, 32).zero_();
  const GptqSolution s = gptq_solve(w, at::eye(64), QuantSpec{"int4", 32, true});
  EXPECT_TRUE(s.dequantized.narrow(1, 32, 32).eq(0).all().item<bool>());
  EXPECT_TRUE(s.q.scales.select(1, 1).eq(2.0f / 15).all().item<bool>());  // sym int4: max|w| 0 -> 1, * 2/15
}

// Reproducible for a given thread count (the resume state records it). Across thread counts the last bits of
// the matmuls may differ: OpenBLAS on some CPUs (AMD EPYC here) and ATen's reductions split sums by thread.
TEST(Gptq, SameBitsForTheSameThreadCount) {
  const Layer l = make_layer(48, 300, 91);
  const int saved = at::get_num_threads();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    std::vector<GptqSolution> runs;
    for (int run = 0; run < 2; ++run) {
      runs.push_back(gptq_solve(l.weight, l.hessian, QuantSpec{"int4", 64, false}, make_options(true, false, 96)));
    }
    EXPECT_TRUE(runs[0].q.q.equal(runs[1].q.q)) << threads;
    EXPECT_TRUE(runs[0].q.scales.equal(runs[1].q.scales)) << threads;
    EXPECT_TRUE(runs[0].q.zeros.equal(runs[1].q.zeros)) << threads;
    EXPECT_TRUE(runs[0].g_idx.equal(runs[1].g_idx)) << threads;
  }
  at::set_num_threads(saved);
}

TEST(Gptq, RaggedGroupsAndEveryDtype) {
  struct Shape {
    int64_t in, group;
  };
  for (const Shape& sh : {Shape{172, 32}, Shape{172, 64}, Shape{172, 128}, Shape{64, 128}}) {
    const Layer l = make_layer(24, sh.in, 100 + sh.in + sh.group);
    for (const char* dtype : {"int4", "int2", "int8", "int4_fullrange", "nf4", "fp4_e2m1"}) {
      for (bool act_order : {false, true}) {
        const QuantSpec spec{dtype, sh.group, true};
        LayerReport report;
        const GptqSolution s = gptq_solve(l.weight, l.hessian, spec, make_options(act_order));
        const PackedWeightPtr packed = gptq_quantize(l.weight, l.hessian, spec, make_options(act_order), &report);
        SCOPED_TRACE(std::string(dtype) + " in " + std::to_string(sh.in) + " g" + std::to_string(sh.group) +
                     (act_order ? " act_order" : ""));
        EXPECT_EQ(s.q.scales.size(1), group_count(sh.group, sh.in));
        EXPECT_TRUE(packed->dequantize().equal(s.dequantized));
        EXPECT_LT(report.output_mse, report.baseline_output_mse);
      }
    }
  }
}

TEST(GptqHessian, StreamedBatchesEqualOneShot) {
  const int64_t in = 40;
  const at::Tensor x = activations(300, in, 121);
  const at::Tensor one_shot = x.t().mm(x) * (2.0 / 300);
  GptqHessian acc(in);
  at::Tensor h = at::zeros({in, in});
  int64_t seen = 0;
  for (int64_t r = 0; r < 300; r += 70) {
    const at::Tensor batch = x.narrow(0, r, std::min<int64_t>(70, 300 - r));
    acc.add(batch.view({-1, 1, in}));  // any leading dims
    h = gptq_hessian_add(h, batch, seen);
    seen += batch.size(0);
  }
  EXPECT_EQ(acc.nsamples(), 300);
  EXPECT_TRUE(at::allclose(acc.hessian(), one_shot, 1e-4, 1e-3));
  EXPECT_TRUE(at::allclose(h, one_shot, 1e-4, 1e-3));
  GptqHessian acc64(in, at::kDouble);
  acc64.add(x);
  EXPECT_EQ(acc64.hessian().scalar_type(), at::kDouble);
  EXPECT_TRUE(at::allclose(acc64.hessian(), one_shot.to(at::kDouble), 1e-4, 1e-3));
  // The fp64 Hessian is accepted by the solve.
  const at::Tensor w = at::randn({8, in});
  EXPECT_TRUE(gptq_solve(w, acc64.hessian(), QuantSpec{"int4", 32, true}).dequantized.isfinite().all().item<bool>());
}

}  // namespace
}  // namespace lwq
