// Algorithm benchmark: wall time of each weight-only algorithm on real Llama-7B layer shapes, next to the same
// run's time of one 4096^3 fp32 torch::mm at the same thread count, plus the errors the algorithm reports.
//
//   lwq_bench_algos [--threads N] [--filter SUBSTR] [--json]
//
// Cases live in one list (cases()): to add an algorithm, include its header and append a Case whose run() returns
// a Result (its LayerReport). Inputs are seeded synthetic layers whose calibration activations have outlier channels and
// correlated features, like real LLM inputs. Exit status 0 even on MISS: this is a measurement, not a test.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lwq/awq.h"
#include "lwq/gptq.h"
#include "lwq/rtn.h"
#include "lwq/teq.h"
#include "lwq/w8a8.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One synthetic layer: weight [out, in] and the Hessian 2/n X^T X of its calibration inputs X [rows, in].
struct Layer {
  at::Tensor weight, hessian;
};

// Shared inputs, built on first use (the Hessian is shared by layers with the same in_features).
class Inputs {
 public:
  const Layer& layer(int64_t out, int64_t in) {
    auto key = std::make_pair(out, in);
    auto it = layers_.find(key);
    if (it != layers_.end()) return it->second;
    Layer l;
    at::manual_seed(1000 + out);
    l.weight = at::randn({out, in}) * 0.02;
    l.hessian = hessian(in);
    return layers_.emplace(key, l).first->second;
  }
  // Activations: a low-rank correlated part plus noise, with 1% of the channels 20x larger.
  at::Tensor activations(int64_t rows, int64_t in) {
    at::manual_seed(7);
    at::Tensor x = at::randn({rows, 32}).mm(at::randn({32, in})) * 0.3 + at::randn({rows, in});
    const at::Tensor outliers = at::randperm(in).narrow(0, 0, std::max<int64_t>(1, in / 100));
    x.index_copy_(1, outliers, x.index_select(1, outliers) * 20.0);
    return x;
  }
  const at::Tensor& hessian(int64_t in) {
    auto it = hessians_.find(in);
    if (it != hessians_.end()) return it->second;
    lwq::GptqHessian acc(in);
    const at::Tensor x = activations(kCalibRows, in);
    for (int64_t r = 0; r < kCalibRows; r += 512) acc.add(x.narrow(0, r, 512));
    return hessians_.emplace(in, acc.hessian()).first->second;
  }
  static constexpr int64_t kCalibRows = 2048;

 private:
  std::map<std::pair<int64_t, int64_t>, Layer> layers_;
  std::map<int64_t, at::Tensor> hessians_;
};

// What one run of a case measured: the algorithm's report (report.seconds = the timed part, the one compared
// with mm) and, when the algorithm packs separately, the packing time.
struct Result {
  lwq::LayerReport report;
  double pack_seconds = -1;
};

struct Case {
  std::string name;
  std::string shape;
  std::function<Result(Inputs&)> run;
};

lwq::QuantSpec int4_g128() { return lwq::QuantSpec{"int4", 128, true}; }

Case gptq_case(int64_t out, int64_t in, bool act_order) {
  const std::string shape = std::to_string(out) + "x" + std::to_string(in);
  return {std::string("gptq int4 g128") + (act_order ? " act_order" : ""), shape, [=](Inputs& inputs) {
            const Layer& l = inputs.layer(out, in);
            lwq::GptqOptions options;
            options.act_order = act_order;
            const lwq::GptqSolution s = lwq::gptq_solve(l.weight, l.hessian, int4_g128(), options);
            Result r;
            const auto t0 = Clock::now();
            lwq::PackedWeight::pack(s.q.q, s.q.scales, c10::nullopt, "int4", 128,
                                    s.g_idx.defined() ? c10::optional<at::Tensor>(s.g_idx) : c10::nullopt);
            r.pack_seconds = seconds_since(t0);
            r.report.algorithm = "gptq";
            r.report.seconds = s.seconds;
            r.report.adjustments = s.adjustments;
            r.report.weight_mse = (s.dequantized - l.weight).pow(2).mean().item<double>();
            r.report.output_mse = lwq::hessian_weighted_error(l.weight, s.dequantized, l.hessian);
            r.report.baseline_output_mse = lwq::hessian_weighted_error(
                l.weight, lwq::rtn_quantize(l.weight, int4_g128())->dequantize(), l.hessian);
            return r;
          }};
}

Case rtn_case(int64_t out, int64_t in, bool mse_search) {
  const std::string shape = std::to_string(out) + "x" + std::to_string(in);
  return {std::string("rtn int4 g128") + (mse_search ? " mse_search" : ""), shape, [=](Inputs& inputs) {
            const Layer& l = inputs.layer(out, in);
            Result r;
            const lwq::PackedWeightPtr packed = lwq::rtn_quantize(l.weight, int4_g128(), mse_search, &r.report);
            r.report.output_mse = lwq::hessian_weighted_error(l.weight, packed->dequantize(), l.hessian);
            return r;
          }};
}

Case hessian_case(int64_t rows, int64_t in) {
  return {"gptq hessian (" + std::to_string(rows) + " rows)", std::to_string(in) + "x" + std::to_string(in),
          [=](Inputs& inputs) {
            const at::Tensor x = inputs.activations(rows, in);
            const auto t0 = Clock::now();
            lwq::GptqHessian acc(in);
            for (int64_t r = 0; r < rows; r += 512) acc.add(x.narrow(0, r, std::min<int64_t>(512, rows - r)));
            Result r;
            r.report.algorithm = "gptq_hessian";
            r.report.seconds = seconds_since(t0);
            return r;
          }};
}

// AWQ, TEQ and W8A8 take calibration activations (kSearchRows rows) rather than a Hessian; their output errors
// are their own reports' (mean squared output error on those rows, and plain RTN's / plain W8A8's).
constexpr int64_t kSearchRows = 512;

Case awq_case(int64_t out, int64_t in, bool clip_search) {
  const std::string shape = std::to_string(out) + "x" + std::to_string(in);
  return {std::string("awq int4 g128") + (clip_search ? " clip" : ""), shape, [=](Inputs& inputs) {
            const Layer& l = inputs.layer(out, in);
            lwq::AwqOptions options;
            options.spec = int4_g128();
            options.clip_search = clip_search;
            const lwq::AwqResult a = lwq::awq_search(inputs.activations(kSearchRows, in), {l.weight}, options);
            return Result{a.reports.at(0)};
          }};
}

Case teq_case(int64_t out, int64_t in, int64_t steps) {
  const std::string shape = std::to_string(out) + "x" + std::to_string(in);
  return {"teq int4 g128 (" + std::to_string(steps) + " steps)", shape, [=](Inputs& inputs) {
            const Layer& l = inputs.layer(out, in);
            lwq::TeqOptions options;
            options.spec = int4_g128();
            options.steps = steps;
            const lwq::TeqResult t = lwq::teq_quantize(inputs.activations(kSearchRows, in), {l.weight}, options);
            return Result{t.reports.at(0)};
          }};
}

Case w8a8_case(int64_t out, int64_t in, bool smoothquant) {
  const std::string shape = std::to_string(out) + "x" + std::to_string(in);
  return {std::string("w8a8 minmax") + (smoothquant ? " smoothquant 0.5" : ""), shape, [=](Inputs& inputs) {
            const Layer& l = inputs.layer(out, in);
            lwq::W8a8Options options;
            if (smoothquant) options.smoothquant_alpha = 0.5;
            const lwq::W8a8Result w =
                lwq::w8a8_quantize(l.weight, at::Tensor(), {inputs.activations(kSearchRows, in)}, options);
            return Result{w.report};
          }};
}

// The benchmark's case list. Append new algorithms here.
std::vector<Case> cases() {
  return {
      hessian_case(2048, 4096),
      gptq_case(4096, 4096, false),
      gptq_case(4096, 4096, true),
      gptq_case(11008, 4096, false),
      gptq_case(11008, 4096, true),
      rtn_case(4096, 4096, false),
      rtn_case(4096, 4096, true),
      rtn_case(11008, 4096, false),
      rtn_case(11008, 4096, true),
      awq_case(4096, 4096, false),
      awq_case(4096, 4096, true),
      teq_case(4096, 4096, 100),
      w8a8_case(4096, 4096, false),
      w8a8_case(4096, 4096, true),
  };
}

double time_mm(int64_t n) {
  at::manual_seed(1);
  const at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::mm(a, b);  // warm-up
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    at::mm(a, b);
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

std::string fmt(double v, const char* spec = "%.3g") {
  if (v < 0) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, spec, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool json = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--filter" && i + 1 < argc) {
      filter = argv[++i];
    } else if (a == "--json") {
      json = true;
    } else {
      std::cerr << "usage: " << argv[0] << " [--threads N] [--filter SUBSTR] [--json]\n";
      return 2;
    }
  }
  if (threads < 1) {
    std::cerr << "--threads must be >= 1\n";
    return 2;
  }
  at::set_num_threads(threads);
  const double mm = time_mm(4096);

  Inputs inputs;
  nlohmann::json rows = nlohmann::json::array();
  double gptq_4096 = -1;
  if (!json) {
    std::printf("threads %d, one 4096^3 fp32 mm: %.3f s\n", threads, mm);
    std::printf("%-30s %-10s %9s %8s %6s %11s %11s %11s  %s\n", "case", "shape", "seconds", "x mm", "pack",
                "weight_mse", "output_mse", "rtn_out_mse", "adjustments");
  }
  for (const Case& c : cases()) {
    if (!filter.empty() && (c.name + " " + c.shape).find(filter) == std::string::npos) continue;
    const Result result = c.run(inputs);
    const lwq::LayerReport& r = result.report;
    std::string adjustments;
    for (const auto& a : r.adjustments) adjustments += (adjustments.empty() ? "" : "; ") + a;
    if (c.name == "gptq int4 g128" && c.shape == "4096x4096") gptq_4096 = r.seconds;
    rows.push_back({{"case", c.name}, {"shape", c.shape}, {"seconds", r.seconds}, {"ratio_to_mm", r.seconds / mm},
                    {"pack_seconds", result.pack_seconds},
                    {"weight_mse", r.weight_mse}, {"output_mse", r.output_mse},
                    {"baseline_output_mse", r.baseline_output_mse}, {"adjustments", r.adjustments}});
    if (!json)
      std::printf("%-30s %-10s %9.3f %8.2f %6s %11s %11s %11s  %s\n", c.name.c_str(), c.shape.c_str(), r.seconds,
                  r.seconds / mm, fmt(result.pack_seconds, "%.2f").c_str(), fmt(r.weight_mse).c_str(),
                  fmt(r.output_mse).c_str(),
                  fmt(r.baseline_output_mse).c_str(), adjustments.c_str());
    std::fflush(stdout);
  }
  const bool measured = gptq_4096 >= 0;
  const bool pass = measured && gptq_4096 <= 2.0 * mm;
  const std::string verdict = !measured ? "SKIP" : pass ? "PASS" : "MISS";
  if (json) {
    nlohmann::json doc = {{"threads", threads}, {"mm_4096_seconds", mm}, {"cases", rows},
                          {"gptq_4096_solve_within_2x_mm", verdict}};
    std::cout << doc.dump(2) << "\n";
  } else {
    std::printf("%s: GPTQ 4096x4096 int4 g128 solve %s s <= 2 x mm (%.3f s)\n", verdict.c_str(),
                measured ? fmt(gptq_4096, "%.3f").c_str() : "-", 2.0 * mm);
  }
  return 0;
}
