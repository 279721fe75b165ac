// Activation observers for static quantization: each one sees the calibration activations of one tensor batch
// by batch (observe) and then picks one per-tensor range and its (scale, zero_point) (compute_qparams).
//
// Activation dtypes (as lwq::w8a8_linear takes them):
//   "uint8": asymmetric, codes [0, 255]. The range is widened to hold 0, lo = min(lo, 0), hi = max(hi, 0);
//            scale = (hi - lo) / 255, zero_point = clamp(round(-lo / scale), 0, 255).
//   "int8":  symmetric, codes [-128, 127], zero_point 0; scale = max(|lo|, |hi|) / 127.5.
//            127.5 (not 127) because it is the int8 weight rule of qscheme.h and PyTorch's symmetric observer
//            rule (scale = amax / ((qmax - qmin) / 2)): -amax maps to -128 exactly, +amax rounds to 128 and is
//            clamped to 127, an error of at most half a step on that one extreme.
//   Degenerate ranges: an all-zero range gives scale 1 (the qscheme.h convention for an all-zero group), so
//   nothing divides by zero; a positive range is never given a scale below FLT_MIN, so 1/scale stays finite
//   in fp32. Rounding is round half to even (std::nearbyint), as everywhere in lwq.
//
// Observer kinds (make_observer):
//   "minmax"     running min and max. Memory O(1).
//   "ema"        moving-average min/max (PyTorch's MovingAverageMinMaxObserver rule): the first batch sets
//                min/max, later batches do m += c * (batch_m - m), c = averaging_constant (0.01). Memory O(1).
//   "percentile" the range is the (100 - p) and p percentiles of the observed values ("uint8"), or the p
//                percentile of |x| ("int8"), p = 99.99. Memory bound: a uniform random sample of at most
//                percentile_sample_size values (bottom-k sampling by random keys, seeded, so a fixed stream
//                gives a fixed result); while fewer values have been seen the percentiles are exact.
//                Percentiles interpolate linearly between order statistics (torch.quantile's default).
//   "kl"         entropy calibration: a histogram of the values and a search for the clipping threshold T
//                that minimizes KL(P || Q), P the histogram clipped at T (the clipped mass added to the last
//                kept bin), Q the same bins after quantization to the number of levels the target dtype puts
//                in [0, T]. See histogram.cpp for the details. Memory O(bins).
//                It matches distributions, not layer outputs: on peaked, heavy-tailed LLM activations it can clip
//                far more than min/max and raise the output error (stories260K layer 2 feed-forward w2 input:
//                T = 2.84 where max |x| = 8.72, W8A8 output MSE 8.3e-3 against 9.0e-4 for min/max).
//
// All kinds reject NaN/Inf in an observed batch with an error naming the observer kind and the layer name.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lwq {

enum class ActDtype { UInt8, Int8 };

// "uint8" | "int8"; throws listing the valid names otherwise.
ActDtype act_dtype_from_string(const std::string& name);
const char* act_dtype_name(ActDtype dtype);
int64_t act_qmin(ActDtype dtype);  // 0 or -128
int64_t act_qmax(ActDtype dtype);  // 255 or 127

// Per-tensor activation quantization parameters and the clipping range they were made from.
struct ActQParams {
  double scale = 1.0;
  int64_t zero_point = 0;
  double range_min = 0;  // the calibrated range before widening to hold 0 / making it symmetric
  double range_max = 0;
};

// (scale, zero_point) of the range [lo, hi] for `dtype` (rules above). Requires finite lo <= hi.
ActQParams qparams_from_range(double lo, double hi, ActDtype dtype);

struct ObserverOptions {
  std::string name = "activation";  // layer / tensor name used in error messages
  ActDtype act_dtype = ActDtype::UInt8;
  double averaging_constant = 0.01;           // "ema"
  double percentile = 99.99;                  // "percentile", in (0, 100]
  int64_t percentile_sample_size = 1 << 20;   // "percentile": values kept at most (4 bytes each + a key)
  uint64_t seed = 0;                          // "percentile": sampling keys
  int64_t kl_bins = 2048;                     // "kl": histogram bins on each side of 0
  int64_t kl_min_bins = 128;                  // "kl": smallest threshold tried, in bins
};

class Observer {
 public:
  explicit Observer(ObserverOptions options);
  virtual ~Observer() = default;
  Observer(const Observer&) = delete;
  Observer& operator=(const Observer&) = delete;

  // Adds one batch (any shape, any float dtype). Throws on NaN/Inf or an empty batch.
  void observe(const at::Tensor& x);
  // The calibrated range [lo, hi] (before the dtype rules). Throws when nothing has been observed.
  std::pair<double, double> range() const;
  ActQParams compute_qparams() const;

  virtual const char* kind() const = 0;
  const ObserverOptions& options() const { return options_; }
  int64_t batches() const { return batches_; }
  int64_t elements() const { return elements_; }
  // Exact min and max of everything observed, whatever the kind.
  double seen_min() const { return seen_min_; }
  double seen_max() const { return seen_max_; }

 protected:
  // x is contiguous fp32, non-empty and finite; [bmin, bmax] is its exact range.
  virtual void observe_impl(const at::Tensor& x, double bmin, double bmax) = 0;
  virtual std::pair<double, double> range_impl() const = 0;
  std::string describe() const;  // "<kind> observer of '<name>'" for messages

  ObserverOptions options_;
  int64_t batches_ = 0;
  int64_t elements_ = 0;
  double seen_min_ = 0, seen_max_ = 0;
};

// kind: "minmax" | "ema" | "percentile" | "kl". Validates the options the kind uses.
std::unique_ptr<Observer> make_observer(const std::string& kind, const ObserverOptions& options = {});
std::vector<std::string> observer_kinds();

// One-call helper: a fresh observer of `kind` over all `batches`, then its qparams.
ActQParams observe_qparams(const std::vector<at::Tensor>& batches, const std::string& kind,
                           const ObserverOptions& options = {});

// x quantized per tensor to act codes (int32 tensor of codes in [qmin, qmax]) and back to fp32:
// codes = clamp(round_half_even(x / scale) + zero_point, qmin, qmax); dequant = (codes - zero_point) * scale.
at::Tensor quantize_activation(const at::Tensor& x, double scale, int64_t zero_point, ActDtype dtype);
at::Tensor fake_quantize_activation(const at::Tensor& x, double scale, int64_t zero_point, ActDtype dtype);

}  // namespace lwq
