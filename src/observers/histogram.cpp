// The "kl" observer: entropy calibration of a clipping threshold on a streaming histogram.
//
// Histogram. 2B bins (B = kl_bins on each side of 0) cover [-R, R]; bin i holds [-R + i*w, -R + (i+1)*w),
// w = R / B, so bin B starts exactly at 0. R is the first non-zero batch's max |x|. When a later batch goes
// beyond R, R is doubled until it covers the batch, and each doubling merges bins 2m and 2m+1 into bin B/2 + m:
// the new bins are unions of old ones, so no count is ever split or guessed (the price: after growth the data
// may use as little as half of the bins). Counts are exact int64.
//
// Threshold search (the TensorRT entropy-calibration idea, written for this histogram). On the magnitude
// histogram H (H[i] = count of |x| in bin i of either side), for each candidate number of kept bins
// i = kl_min_bins .. (last non-empty bin + 1), T = i*w:
//   P = H[0..i) with the mass beyond T added to bin i-1 (clipping moves those values to T);
//   Q = H[0..i) quantized to L levels: the i bins are split into L contiguous chunks, and each chunk's total
//       is spread evenly over the bins of the chunk where P is non-zero. L is the number of quantization steps
//       the target dtype puts in [0, T]: 128 for int8 (step T/127.5, rounded half to even), and for uint8
//       255*T / span(T) with span(T) the uint8 range clipped at T, so one-sided data gets ~255 levels;
//   KL(P || Q) over the normalized P and Q. A bin where P > 0 but its whole chunk of H is empty has Q = 0; it is
//   given the probability 1e-4 / i (then Q is renormalized), a large but finite penalty.
// The T of the smallest KL wins (the smallest T on ties). The range is [-T, T] for int8, and for uint8 the
// observed [min, max] clipped to [-T, T]. Data that never fill kl_min_bins bins are not clipped.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "observer_kinds.h"

namespace lwq {

namespace {

class KlObserver final : public Observer {
 public:
  explicit KlObserver(ObserverOptions options) : Observer(std::move(options)) {
    const int64_t b = options_.kl_bins;
    TORCH_CHECK(b >= 2 && b % 2 == 0 && b <= (int64_t{1} << 20), "kl observer of '", options_.name,
                "': kl_bins must be even and in [2, 2^20], got ", b);
    TORCH_CHECK(options_.kl_min_bins >= 1 && options_.kl_min_bins <= b, "kl observer of '", options_.name,
                "': kl_min_bins must lie in [1, kl_bins = ", b, "], got ", options_.kl_min_bins);
    hist_.assign(2 * b, 0);
  }
  const char* kind() const override { return "kl"; }

 protected:
  void observe_impl(const at::Tensor& x, double bmin, double bmax) override {
    const int64_t B = options_.kl_bins;
    const double amax = std::max(-bmin, bmax);
    if (amax == 0) {  // all zeros: they belong to bin B under any R
      hist_[B] += x.numel();
      return;
    }
    if (R_ == 0) {
      R_ = amax;  // only bin B can be non-empty so far, and it stays bin B
    } else {
      while (R_ < amax) grow();
    }
    // bin = floor((x / R + 1) * B), computed in double so that an edge value is not moved by fp32 rounding.
    const at::Tensor pos = (x.reshape({-1}).to(at::kDouble) / R_ + 1.0) * static_cast<double>(B);
    const at::Tensor idx = at::floor(pos).clamp_(0, 2 * B - 1).to(at::kLong);
    const at::Tensor counts = at::bincount(idx, {}, 2 * B);
    const int64_t* c = counts.data_ptr<int64_t>();
    for (int64_t i = 0; i < 2 * B; ++i) hist_[i] += c[i];
  }

  std::pair<double, double> range_impl() const override {
    if (R_ == 0) return {0.0, 0.0};
    const int64_t B = options_.kl_bins;
    const double w = R_ / static_cast<double>(B);
    std::vector<double> H(B);
    for (int64_t i = 0; i < B; ++i) H[i] = static_cast<double>(hist_[B + i] + hist_[B - 1 - i]);
    int64_t last = B;
    while (last > 0 && H[last - 1] == 0) --last;
    const double amax = std::max(-seen_min_, seen_max_);
    double T = amax;
    if (last > options_.kl_min_bins) {
      std::vector<double> beyond(B + 1, 0.0);  // beyond[i] = sum of H[i..B)
      for (int64_t i = B - 1; i >= 0; --i) beyond[i] = beyond[i + 1] + H[i];
      std::vector<double> P(B), Q(B);
      int64_t best_i = last;
      double best_kl = std::numeric_limits<double>::infinity();
      for (int64_t i = options_.kl_min_bins; i <= last; ++i) {
        const double kl = divergence(H, beyond[i], i, levels_for(i * w), P, Q);
        if (kl < best_kl) {
          best_kl = kl;
          best_i = i;
        }
      }
      T = std::min(amax, static_cast<double>(best_i) * w);
    }
    if (options_.act_dtype == ActDtype::Int8) return {-T, T};
    return {std::max(seen_min_, -T), std::min(seen_max_, T)};
  }

 private:
  // Doubles R, merging bins pairwise (exact because B is even: bin B/2 + m of the new histogram is old 2m, 2m+1).
  void grow() {
    const int64_t B = options_.kl_bins;
    std::vector<int64_t> merged(2 * B, 0);
    for (int64_t i = 0; i < 2 * B; ++i) merged[B / 2 + i / 2] += hist_[i];
    hist_.swap(merged);
    R_ *= 2;
  }

  // Quantization steps the target dtype puts in [0, T].
  int64_t levels_for(double T) const {
    double levels = 127.5;
    if (options_.act_dtype == ActDtype::UInt8) {
      const double span = std::min(std::max(seen_max_, 0.0), T) + std::min(std::max(-seen_min_, 0.0), T);
      levels = span > 0 ? 255.0 * T / span : 255.0;
    }
    return std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(levels)));
  }

  // KL(P || Q) for the first i bins of H quantized to `levels` levels (see the file comment). beyond = the
  // count of bins i.. of H; P and Q are scratch buffers of at least i entries.
  static double divergence(const std::vector<double>& H, double beyond, int64_t i, int64_t levels,
                           std::vector<double>& P, std::vector<double>& Q) {
    levels = std::min(levels, i);
    std::copy(H.begin(), H.begin() + i, P.begin());
    P[i - 1] += beyond;
    double psum = 0, qsum = 0;
    int64_t q_missing = 0;  // bins with P > 0 whose chunk of H is empty
    for (int64_t c = 0; c < levels; ++c) {
      const int64_t begin = c * i / levels, end = (c + 1) * i / levels;
      double total = 0;
      int64_t nonzero = 0;
      for (int64_t j = begin; j < end; ++j) {
        total += H[j];
        nonzero += P[j] > 0;
      }
      const double share = nonzero > 0 ? total / static_cast<double>(nonzero) : 0;
      for (int64_t j = begin; j < end; ++j) {
        Q[j] = P[j] > 0 ? share : 0;
        q_missing += P[j] > 0 && share == 0;
        psum += P[j];
        qsum += Q[j];
      }
    }
    if (psum == 0 || qsum == 0) return std::numeric_limits<double>::infinity();
    // Q normalized with the floor probability given to the missing bins.
    const double floor_prob = 1e-4 / static_cast<double>(i);
    const double qnorm = 1.0 + floor_prob * static_cast<double>(q_missing);
    double kl = 0;
    for (int64_t j = 0; j < i; ++j) {
      if (P[j] == 0) continue;
      const double p = P[j] / psum;
      const double q = (Q[j] > 0 ? Q[j] / qsum : floor_prob) / qnorm;
      kl += p * std::log(p / q);
    }
    return kl;
  }

  double R_ = 0;               // half-width of the histogram range, 0 until a non-zero value is seen
  std::vector<int64_t> hist_;  // 2B counts over [-R, R]
};

}  // namespace

std::unique_ptr<Observer> make_kl_observer(const ObserverOptions& options) {
  return std::make_unique<KlObserver>(options);
}

}  // namespace lwq
