// Group-wise RTN on top of qscheme.h's row functions: the full groups are quantized as rows [out * n_full, gs]
// and a ragged last group as rows [out, rem], then the pieces are put back side by side.
#include "lwq/fake_quant.h"

#include <c10/util/irange.h>

#include <cmath>

namespace lwq {
namespace {

struct GroupGeometry {
  int64_t size = 0;    // columns of a full group
  int64_t full = 0;    // number of full groups
  int64_t rem = 0;     // columns of the ragged last group (0: none)
  int64_t count = 0;   // full + (rem > 0)
};

GroupGeometry geometry(int64_t group_size, int64_t in) {
  GroupGeometry g;
  g.size = effective_group_size(group_size, in);
  g.full = in / g.size;
  g.rem = in - g.full * g.size;
  g.count = group_count(group_size, in);
  TORCH_INTERNAL_ASSERT(g.count == g.full + (g.rem > 0 ? 1 : 0), "group_count disagrees with the group size");
  return g;
}

// Calls f(first_column, n_groups, group_width, first_group) for the block of full groups and the ragged tail.
template <typename F>
void for_each_block(const GroupGeometry& g, F&& f) {
  if (g.full > 0) f(int64_t{0}, g.full, g.size, int64_t{0});
  if (g.rem > 0) f(g.full * g.size, int64_t{1}, g.rem, g.full);
}

at::Tensor cat_or_single(std::vector<at::Tensor>& parts, int64_t dim) {
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts, dim);
}

}  // namespace

GroupwiseQuantized quantize_groupwise(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& clip) {
  TORCH_CHECK(w.dim() == 2 && w.is_floating_point(), "quantize_groupwise: expected a float weight [out, in], got ",
              w.scalar_type(), " ", w.sizes());
  const DtypeInfo& info = dtype_info(spec.dtype);
  check_scheme(info, spec.sym);
  const at::Tensor wf = w.to(at::kFloat).contiguous();
  const int64_t out = wf.size(0), in = wf.size(1);
  const GroupGeometry g = geometry(spec.group_size, in);
  if (clip.defined()) {
    TORCH_CHECK(clip.dim() == 2 && clip.size(0) == out && clip.size(1) == g.count,
                "quantize_groupwise: clip must be [", out, ", ", g.count, "], got ", clip.sizes());
  }
  std::vector<at::Tensor> qs, scales, zeros;
  for_each_block(g, [&](int64_t col0, int64_t n_groups, int64_t width, int64_t group0) {
    const at::Tensor rows = wf.narrow(1, col0, n_groups * width).reshape({out * n_groups, width});
    const QParams p = clip.defined()
                          ? compute_qparams(rows, info, spec.sym,
                                            clip.to(at::kFloat).narrow(1, group0, n_groups).reshape({-1}))
                          : compute_qparams(rows, info, spec.sym, 1.0);
    qs.push_back(quantize_rows(rows, p.scale, p.zero, info, spec.sym).reshape({out, n_groups * width}));
    scales.push_back(p.scale.reshape({out, n_groups}));
    if (p.zero.defined()) zeros.push_back(p.zero.reshape({out, n_groups}));
  });
  GroupwiseQuantized r;
  r.q = cat_or_single(qs, 1);
  r.scales = cat_or_single(scales, 1);
  if (!zeros.empty()) r.zeros = cat_or_single(zeros, 1);
  return r;
}

at::Tensor dequantize_groupwise(const GroupwiseQuantized& qw, const QuantSpec& spec) {
  const DtypeInfo& info = dtype_info(spec.dtype);
  const int64_t out = qw.q.size(0), in = qw.q.size(1);
  const GroupGeometry g = geometry(spec.group_size, in);
  std::vector<at::Tensor> parts;
  for_each_block(g, [&](int64_t col0, int64_t n_groups, int64_t width, int64_t group0) {
    const at::Tensor rows = qw.q.narrow(1, col0, n_groups * width).reshape({out * n_groups, width});
    const at::Tensor scale = qw.scales.narrow(1, group0, n_groups).reshape({-1});
    const at::Tensor zero =
        qw.zeros.defined() ? qw.zeros.narrow(1, group0, n_groups).reshape({-1}) : at::Tensor();
    parts.push_back(dequantize_rows(rows, scale, zero, info, spec.sym).reshape({out, n_groups * width}));
  });
  return cat_or_single(parts, 1);
}

at::Tensor fake_quantize_groupwise(const at::Tensor& w, const QuantSpec& spec, const at::Tensor& clip) {
  return dequantize_groupwise(quantize_groupwise(w, spec, clip), spec);
}

PackedWeightPtr pack_groupwise(const GroupwiseQuantized& qw, const QuantSpec& spec) {
  c10::optional<at::Tensor> zeros;
  if (qw.zeros.defined()) zeros = qw.zeros;
  return PackedWeight::pack(qw.q, qw.scales, zeros, spec.dtype, spec.group_size, c10::nullopt);
}

CalibrationError::CalibrationError(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "CalibrationError: expected x [n, in], got ", x.sizes());
  rows_ = x.size(0);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  if (rows_ <= xf.size(1))
    x_ = xf;
  else
    gram_ = xf.t().matmul(xf);
}

double CalibrationError::sum_squared(const at::Tensor& w, const at::Tensor& w_hat) const {
  const at::Tensor d = (w - w_hat).to(at::kFloat);
  if (gram_.defined()) {
    // ||x d^T||^2 = sum_o d_o (x^T x) d_o^T
    return at::sum(d.matmul(gram_).mul_(d), at::kDouble).item<double>();
  }
  // Row chunks keep the [rows, out] product small when out is large.
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(1, d.size(0)));
  double total = 0;
  for (int64_t r0 = 0; r0 < rows_; r0 += chunk) {
    const at::Tensor p = x_.narrow(0, r0, std::min(chunk, rows_ - r0)).matmul(d.t());
    total += at::sum(p.square(), at::kDouble).item<double>();
  }
  return total;
}

CalibratedGroup check_calibrated_group(const char* algorithm, const at::Tensor& x,
                                       const std::vector<at::Tensor>& weights, const QuantSpec& spec,
                                       const std::vector<std::string>& names) {
  check_scheme(dtype_info(spec.dtype), spec.sym);
  TORCH_CHECK(!weights.empty(), algorithm, ": expected at least one weight sharing the input, got none");
  TORCH_CHECK(names.empty() || names.size() == weights.size(), algorithm, ": expected ", weights.size(),
              " names (one per weight), got ", names.size());
  CalibratedGroup g;
  for (const auto i : c10::irange(weights.size()))
    g.names.push_back(names.empty() ? "weights[" + std::to_string(i) + "]" : names[i]);
  const at::Tensor& w0 = weights[0];
  TORCH_CHECK(w0.defined() && w0.dim() == 2, algorithm, ": ", g.names[0], " must be a 2-D weight [out, in], got ",
              w0.defined() ? w0.sizes() : at::IntArrayRef{});
  const int64_t in = w0.size(1);
  TORCH_CHECK(x.defined() && x.is_floating_point() && x.dim() >= 1 && x.size(-1) == in, algorithm,
              ": expected float calibration inputs [..., ", in, "], got ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK(x.numel() > 0, algorithm, ": expected at least one calibration row, got x of shape ", x.sizes());
  g.x = x.reshape({-1, in}).to(at::kFloat).contiguous();
  check_finite(g.x, std::string(algorithm) + ": calibration inputs x");
  for (const auto i : c10::irange(weights.size())) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.defined() && w.dim() == 2 && w.is_floating_point() && w.size(1) == in && w.size(0) > 0,
                algorithm, ": ", g.names[i], " must be a float weight [out, ", in,
                "] (all weights share the input), got ", w.defined() ? w.sizes() : at::IntArrayRef{});
    g.weights.push_back(w.to(at::kFloat).contiguous());
    check_finite(g.weights.back(), std::string(algorithm) + ": " + g.names[i]);
  }
  return g;
}

}  // namespace lwq
