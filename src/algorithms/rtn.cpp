// RTN: lwq::quantize_weight's arithmetic, plus a per-group search of the clip ratio that minimises the group's
// squared reconstruction error. The search reuses quantize_groupwise for every ratio of the grid (one definition of
// the rounding) and keeps, per group, the best candidate seen so far.
#include "lwq/rtn.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <vector>
#include <sstream>

namespace lwq {

namespace {

void check_weight(const at::Tensor& weight, const char* who) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0, who,
              ": weight must be a non-empty [out, in] matrix, got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point(), who, ": weight must be a float tensor, got ", weight.scalar_type());
  TORCH_CHECK(weight.device().is_cpu(), who, ": weight must be on the CPU, got ", weight.device());
}

// Sum of squared reconstruction errors of each group, fp32 [out, n_groups] (reshape sums: index_add along the
// columns is several times slower).
at::Tensor group_sq_error(const at::Tensor& w, const GroupwiseQ& gq, const DtypeInfo& info, bool sym,
                          int64_t group_size) {
  const at::Tensor d = w - dequantize_groupwise(gq, info, sym, group_size);
  const at::Tensor sq = d * d;
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t g = effective_group_size(group_size, in), full = in / g;
  std::vector<at::Tensor> parts;
  if (full > 0) parts.push_back(sq.narrow(1, 0, full * g).reshape({out, full, g}).sum(2));
  if (in > full * g) parts.push_back(sq.narrow(1, full * g, in - full * g).sum(1, /*keepdim=*/true));
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

// Mean squared error of the packed weight against the float one, over row blocks of about 4 MiB: a whole
// dequantized copy with its temporaries would be several times the weight (≈ 0.7 GB for 11008 x 4096).
double weight_mse(const PackedWeight& packed, const at::Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t block = std::max<int64_t>(kernels::kTileN, (int64_t{1} << 20) / in / kernels::kTileN * kernels::kTileN);
  const int64_t n_blocks = (out + block - 1) / block;
  std::vector<double> sums(n_blocks);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block, rows = std::min(block, out - r0);
      const at::Tensor d = packed.dequantize(r0, r0 + rows) - weight.narrow(0, r0, rows).to(at::kFloat);
      sums[b] = d.pow(2).sum(at::kDouble).item<double>();
    }
  });
  double sum = 0;
  for (double s : sums) sum += s;  // in block order: the same value at any thread count
  return sum / static_cast<double>(out * in);
}

}  // namespace

GroupwiseQ rtn_groupwise(const at::Tensor& weight, const QuantSpec& spec, bool mse_search, const ClipSearch& search,
                         at::Tensor* clip_out) {
  check_weight(weight, "rtn_quantize");
  const DtypeInfo& info = dtype_info(spec.dtype);
  check_scheme(info, spec.sym);
  check_finite(weight, "rtn_quantize: weight");
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t n_groups = group_count(spec.group_size, in);
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  GroupwiseQ best = quantize_groupwise(w, info, spec.sym, spec.group_size, 1.0, spec.fp16_scales);
  at::Tensor clip = at::ones({out, n_groups}, at::kFloat);
  if (mse_search) {
    TORCH_CHECK(search.grid >= 1, "rtn_quantize: the clip search needs grid >= 1, got ", search.grid);
    TORCH_CHECK(search.max_shrink >= 0 && search.max_shrink < 1,
                "rtn_quantize: max_shrink must lie in [0, 1), got ", search.max_shrink);
    const int64_t g = effective_group_size(spec.group_size, in);
    const at::Tensor col_group = at::arange(in, at::kLong).div(g, "floor");
    at::Tensor best_err = group_sq_error(w, best, info, spec.sym, spec.group_size);
    for (int64_t step = 1; step <= search.grid; ++step) {
      const double ratio = 1.0 - search.max_shrink * static_cast<double>(step) / static_cast<double>(search.grid);
      const GroupwiseQ cand = quantize_groupwise(w, info, spec.sym, spec.group_size, ratio, spec.fp16_scales);
      const at::Tensor err = group_sq_error(w, cand, info, spec.sym, spec.group_size);
      // Strictly better only: on a tie the larger ratio (plain RTN first of all) stays.
      const at::Tensor better = err < best_err;
      best_err = at::where(better, err, best_err);
      best.scales = at::where(better, cand.scales, best.scales);
      if (best.zeros.defined()) best.zeros = at::where(better, cand.zeros, best.zeros);
      best.q = at::where(better.index_select(1, col_group), cand.q, best.q);
      clip.masked_fill_(better, ratio);
    }
  }
  if (clip_out) *clip_out = clip;
  return best;
}

PackedWeightPtr rtn_quantize(const at::Tensor& weight, const QuantSpec& spec, bool mse_search, LayerReport* report,
                             const ClipSearch& search) {
  const auto start = std::chrono::steady_clock::now();
  PackedWeightPtr packed;
  at::Tensor clip;
  if (mse_search || spec.fp16_scales) {
    const GroupwiseQ gq = rtn_groupwise(weight, spec, mse_search, search, &clip);
    packed = PackedWeight::pack(gq.q, gq.scales, spec.sym ? c10::nullopt : c10::optional<at::Tensor>(gq.zeros),
                                spec.dtype, spec.group_size, c10::nullopt);
  } else {
    packed = quantize_weight(weight, spec.dtype, spec.group_size, spec.sym);
  }
  if (report) {
    report->algorithm = mse_search ? "rtn_mse" : "rtn";
    report->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report->weight_mse = weight_mse(*packed, weight);
    if (mse_search) {
      const int64_t clipped = clip.lt(1).sum().item<int64_t>();
      if (clipped > 0) {
        std::ostringstream msg;
        msg << "clip ratio below 1 for " << clipped << " of " << clip.numel() << " groups (mean ratio "
            << clip.mean().item<double>() << ")";
        report->adjustments.push_back(msg.str());
      }
    }
  }
  return packed;
}

}  // namespace lwq
