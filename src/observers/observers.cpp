// The observer base class, the dtype rules for (scale, zero_point), and the min/max, moving-average and
// percentile observers. The KL (histogram) observer is in histogram.cpp.
#include "lwq/observers.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "observer_kinds.h"

namespace lwq {

ActDtype act_dtype_from_string(const std::string& name) {
  if (name == "uint8") return ActDtype::UInt8;
  if (name == "int8") return ActDtype::Int8;
  TORCH_CHECK(false, "unknown activation dtype '", name, "'; expected one of: uint8, int8");
}

const char* act_dtype_name(ActDtype dtype) { return dtype == ActDtype::UInt8 ? "uint8" : "int8"; }
int64_t act_qmin(ActDtype dtype) { return dtype == ActDtype::UInt8 ? 0 : -128; }
int64_t act_qmax(ActDtype dtype) { return dtype == ActDtype::UInt8 ? 255 : 127; }

ActQParams qparams_from_range(double lo, double hi, ActDtype dtype) {
  TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo <= hi,
              "qparams_from_range: expected a finite range with lo <= hi, got [", lo, ", ", hi, "]");
  ActQParams p;
  p.range_min = lo;
  p.range_max = hi;
  // Smallest scale given to a non-empty range: keeps 1/scale finite in fp32.
  constexpr double kMinScale = std::numeric_limits<float>::min();
  if (dtype == ActDtype::Int8) {
    const double amax = std::max(std::abs(lo), std::abs(hi));
    p.scale = amax == 0 ? 1.0 : std::max(amax / 127.5, kMinScale);
    p.zero_point = 0;
    return p;
  }
  const double qlo = std::min(lo, 0.0), qhi = std::max(hi, 0.0);
  const double span = qhi - qlo;
  p.scale = span == 0 ? 1.0 : std::max(span / 255.0, kMinScale);
  const double zp = std::nearbyint(-qlo / p.scale);
  p.zero_point = static_cast<int64_t>(std::min(255.0, std::max(0.0, zp)));
  return p;
}

Observer::Observer(ObserverOptions options) : options_(std::move(options)) {}

std::string Observer::describe() const {
  std::ostringstream s;
  s << kind() << " observer of '" << options_.name << "'";
  return s.str();
}

void Observer::observe(const at::Tensor& x) {
  TORCH_CHECK(x.defined() && x.numel() > 0, describe(), ": observed an empty batch (shape ",
              x.defined() ? x.sizes() : at::IntArrayRef{}, ")");
  TORCH_CHECK(x.is_floating_point(), describe(), ": activations must be a float tensor, got ", x.scalar_type());
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  // min/max propagate NaN, and an Inf shows up as a non-finite extreme: no extra pass over x is needed.
  const auto mm = at::aminmax(xf);
  const double bmin = std::get<0>(mm).item<double>();
  const double bmax = std::get<1>(mm).item<double>();
  TORCH_CHECK(std::isfinite(bmin) && std::isfinite(bmax), describe(), ": batch ", batches_,
              " contains NaN or Inf (observed range [", bmin, ", ", bmax, "])");
  observe_impl(xf, bmin, bmax);
  seen_min_ = batches_ == 0 ? bmin : std::min(seen_min_, bmin);
  seen_max_ = batches_ == 0 ? bmax : std::max(seen_max_, bmax);
  ++batches_;
  elements_ += xf.numel();
}

std::pair<double, double> Observer::range() const {
  TORCH_CHECK(batches_ > 0, describe(), ": compute_qparams called before any batch was observed");
  const auto r = range_impl();
  TORCH_INTERNAL_ASSERT(std::isfinite(r.first) && std::isfinite(r.second) && r.first <= r.second, describe(),
                        " produced the range [", r.first, ", ", r.second, "]");
  return r;
}

ActQParams Observer::compute_qparams() const {
  const auto r = range();
  return qparams_from_range(r.first, r.second, options_.act_dtype);
}

namespace {

class MinMaxObserver final : public Observer {
 public:
  using Observer::Observer;
  const char* kind() const override { return "minmax"; }

 protected:
  void observe_impl(const at::Tensor&, double, double) override {}  // the base class keeps the exact extremes
  std::pair<double, double> range_impl() const override { return {seen_min_, seen_max_}; }
};

class MovingAverageObserver final : public Observer {
 public:
  explicit MovingAverageObserver(ObserverOptions options) : Observer(std::move(options)) {
    const double c = options_.averaging_constant;
    TORCH_CHECK(c > 0 && c <= 1, "ema observer of '", options_.name, "': averaging_constant must lie in (0, 1], got ",
                c);
  }
  const char* kind() const override { return "ema"; }

 protected:
  void observe_impl(const at::Tensor&, double bmin, double bmax) override {
    if (batches_ == 0) {
      min_ = bmin;
      max_ = bmax;
      return;
    }
    const double c = options_.averaging_constant;
    min_ += c * (bmin - min_);
    max_ += c * (bmax - max_);
  }
  std::pair<double, double> range_impl() const override { return {min_, max_}; }

 private:
  double min_ = 0, max_ = 0;
};

class PercentileObserver final : public Observer {
 public:
  explicit PercentileObserver(ObserverOptions options) : Observer(std::move(options)) {
    TORCH_CHECK(options_.percentile > 0 && options_.percentile <= 100, "percentile observer of '", options_.name,
                "': percentile must lie in (0, 100], got ", options_.percentile);
    // torch.quantile accepts at most 2^24 values.
    TORCH_CHECK(options_.percentile_sample_size > 0 && options_.percentile_sample_size <= (int64_t{1} << 24),
                "percentile observer of '", options_.name, "': percentile_sample_size must lie in [1, 2^24], got ",
                options_.percentile_sample_size);
    gen_ = at::make_generator<at::CPUGeneratorImpl>(options_.seed);
  }
  const char* kind() const override { return "percentile"; }

 protected:
  // Bottom-k sampling: every value gets an independent uniform key and the k values with the smallest keys are
  // kept, which is a uniform sample without replacement of the whole stream, whatever the batch sizes.
  void observe_impl(const at::Tensor& x, double, double) override {
    const at::Tensor flat = x.reshape({-1});
    const at::Tensor keys = at::rand({flat.numel()}, gen_, x.options());
    at::Tensor values = sample_.defined() ? at::cat({sample_, flat}) : flat.clone();
    at::Tensor all_keys = sample_.defined() ? at::cat({keys_, keys}) : keys;
    const int64_t k = options_.percentile_sample_size;
    if (values.numel() > k) {
      const at::Tensor idx = std::get<1>(all_keys.topk(k, /*dim=*/0, /*largest=*/false, /*sorted=*/false));
      values = values.index_select(0, idx);
      all_keys = all_keys.index_select(0, idx);
    }
    sample_ = values;
    keys_ = all_keys;
  }

  std::pair<double, double> range_impl() const override {
    const double p = options_.percentile / 100.0;
    if (options_.act_dtype == ActDtype::Int8) {
      const double a = at::quantile(sample_.abs(), p).item<double>();
      return {-a, a};
    }
    const at::Tensor q = at::quantile(sample_, at::tensor({1.0 - p, p}, sample_.options()));
    return {q[0].item<double>(), q[1].item<double>()};
  }

 private:
  at::Generator gen_;
  at::Tensor sample_;  // fp32 [<= percentile_sample_size]
  at::Tensor keys_;    // the sampling key of each kept value
};

}  // namespace

std::vector<std::string> observer_kinds() { return {"minmax", "ema", "percentile", "kl"}; }

std::unique_ptr<Observer> make_observer(const std::string& kind, const ObserverOptions& options) {
  if (kind == "minmax") return std::make_unique<MinMaxObserver>(options);
  if (kind == "ema") return std::make_unique<MovingAverageObserver>(options);
  if (kind == "percentile") return std::make_unique<PercentileObserver>(options);
  if (kind == "kl") return make_kl_observer(options);
  TORCH_CHECK(false, "unknown observer '", kind, "' for '", options.name,
              "'; expected one of: minmax, ema, percentile, kl");
}

ActQParams observe_qparams(const std::vector<at::Tensor>& batches, const std::string& kind,
                           const ObserverOptions& options) {
  auto obs = make_observer(kind, options);
  TORCH_CHECK(!batches.empty(), obs->kind(), " observer of '", options.name, "': no calibration batches given");
  for (const auto& b : batches) obs->observe(b);
  return obs->compute_qparams();
}

at::Tensor quantize_activation(const at::Tensor& x, double scale, int64_t zero_point, ActDtype dtype) {
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "quantize_activation: scale must be finite and positive, got ",
              scale);
  TORCH_CHECK(zero_point >= act_qmin(dtype) && zero_point <= act_qmax(dtype), "quantize_activation: zero_point ",
              zero_point, " is outside the ", act_dtype_name(dtype), " range [", act_qmin(dtype), ", ",
              act_qmax(dtype), "]");
  // at::round is round half to even.
  return at::clamp(at::round(x.to(at::kFloat) / scale) + static_cast<double>(zero_point),
                   static_cast<double>(act_qmin(dtype)), static_cast<double>(act_qmax(dtype)))
      .to(at::kInt);
}

at::Tensor fake_quantize_activation(const at::Tensor& x, double scale, int64_t zero_point, ActDtype dtype) {
  return (quantize_activation(x, scale, zero_point, dtype) - zero_point).to(at::kFloat) * scale;
}

}  // namespace lwq
