#include "qscheme.h"

#include "recorded_allocations.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <sstream>

#include "kernels/woq_a8.h"

namespace lwq {

namespace {

using kernels::Codebook;

const DtypeInfo kDtypes[] = {
    {WeightDtype::Int8, "int8", 8, Codebook::Int},
    {WeightDtype::Int4, "int4", 4, Codebook::Int},
    {WeightDtype::Int4FullRange, "int4_fullrange", 4, Codebook::Int},
    {WeightDtype::Int3, "int3", 3, Codebook::Int},
    {WeightDtype::Int2, "int2", 2, Codebook::Int},
    {WeightDtype::NF4, "nf4", 4, Codebook::NF4},
    {WeightDtype::FP4, "fp4_e2m1", 4, Codebook::FP4},
};

// A clip ratio as a [R] tensor, validated to lie in (0, 1].
at::Tensor clip_vector(const at::Tensor& clip, int64_t rows) {
  at::Tensor c = clip.to(at::kFloat);
  TORCH_CHECK(c.dim() == 0 || (c.dim() == 1 && c.size(0) == rows),
              "clip ratio must be a scalar or have one entry per row (", rows, "), got shape ", c.sizes());
  TORCH_CHECK(c.gt(0).all().item<bool>() && c.le(1).all().item<bool>(), "clip ratio must lie in (0, 1]");
  return c.dim() == 0 ? c.expand({rows}) : c;
}

// Table sorted by value with the code of each entry, and the midpoints between neighbours.
struct SortedTable {
  at::Tensor mid;    // [15]
  at::Tensor codes;  // int32 [16], code of the i-th smallest value
};

SortedTable sorted_table(Codebook cb) {
  const float* table = kernels::codebook_table(cb);
  at::Tensor values = at::from_blob(const_cast<float*>(table), {16}, at::kFloat).clone();
  // A stable sort keeps -0.0 (fp4 code 8) after +0.0 (code 0): both are 0, code 0 is the one chosen.
  auto sorted = values.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor v = std::get<0>(sorted);
  return {(v.narrow(0, 0, 15) + v.narrow(0, 1, 15)) * 0.5, std::get<1>(sorted).to(at::kInt)};
}

}  // namespace

const DtypeInfo& dtype_info(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d;
  std::ostringstream valid;
  for (const auto& d : kDtypes) valid << (&d == kDtypes ? "" : ", ") << d.name;
  TORCH_CHECK(false, "unknown weight dtype '", name, "'; expected one of: ", valid.str());
}

std::vector<std::string> dtype_names() {
  std::vector<std::string> out;
  for (const auto& d : kDtypes) out.emplace_back(d.name);
  return out;
}

std::vector<std::string> int8_activation_dtype_names() {
  std::vector<std::string> out;
  for (const auto& d : kDtypes)
    if (kernels::woq_a8_supported(d.codebook, d.bits)) out.emplace_back(d.name);
  return out;
}

void check_scheme(const DtypeInfo& info, bool sym) {
  TORCH_CHECK(info.is_int() || sym, "dtype ", info.name, " is a symmetric table format: asym is not supported");
  TORCH_CHECK(info.id != WeightDtype::Int4FullRange || sym, "int4_fullrange is symmetric by definition: asym is not "
              "supported (use int4 with sym=false)");
}

bool all_finite(const at::Tensor& t) {
  if (!t.is_floating_point() || t.numel() == 0) return true;
  if (t.dim() == 0) return t.isfinite().item<bool>();
  // isfinite materializes |t| and two bool masks: 1.5x the tensor at once (1.2 GB for a 7B down_proj's Hessian).
  // Slices of about 4M elements keep that to ~25 MB.
  const int64_t rows = t.size(0);
  const int64_t per_row = std::max<int64_t>(1, t.numel() / rows);
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / per_row);
  for (int64_t r = 0; r < rows; r += chunk) {
    if (!t.narrow(0, r, std::min(chunk, rows - r)).isfinite().all().item<bool>()) return false;
  }
  return true;
}

void check_finite(const at::Tensor& t, const std::string& what) {
  TORCH_CHECK(all_finite(t), what, " contains NaN or Inf");
}

void check_storage(const at::Tensor& t, const std::string& what) {
  if (!t.defined() || t.is_meta() || !t.has_storage() || t.numel() == 0) return;
  uint64_t last = static_cast<uint64_t>(t.storage_offset());
  for (int64_t d = 0; d < t.dim(); ++d) last += static_cast<uint64_t>(t.size(d) - 1) * static_cast<uint64_t>(t.stride(d));
  const uint64_t need = (last + 1) * t.element_size();
  uint64_t have = t.storage().data() ? t.storage().nbytes() : 0;
  // Loaded from an archive under RecordedAllocations: the record's true size (a record cut short declares more).
  if (const size_t allocated = recorded_allocation_size(t.storage().data())) have = std::min<uint64_t>(have, allocated);
  TORCH_CHECK(have >= need, what, " of shape ", t.sizes(), " needs ", need, " bytes but its storage holds ", have,
              " (a truncated or edited archive?)");
}

int64_t effective_group_size(int64_t group_size, int64_t in_features) {
  TORCH_CHECK(group_size == -1 || group_size > 0, "group_size must be -1 (per output channel) or positive, got ",
              group_size);
  TORCH_CHECK(in_features > 0, "in_features must be positive, got ", in_features);
  return group_size == -1 ? in_features : group_size;
}

int64_t group_count(int64_t group_size, int64_t in_features) {
  const int64_t g = effective_group_size(group_size, in_features);
  return (in_features + g - 1) / g;
}

QParams compute_qparams(const at::Tensor& w, const DtypeInfo& info, bool sym, double clip, bool fp16_scales) {
  return compute_qparams(w, info, sym, at::scalar_tensor(clip, at::kFloat), fp16_scales);
}

namespace {

// The float16 value of each scale, as fp32. Out of range is an error: inf or 0 would not dequantize.
at::Tensor fp16_exact(const at::Tensor& scale) {
  const at::Tensor s16 = scale.to(at::kHalf).to(at::kFloat);
  TORCH_CHECK(s16.isfinite().all().item<bool>(), "a scale of magnitude ", scale.abs().max().item<float>(),
              " is outside the float16 range (largest finite value 65504)");
  TORCH_CHECK(!((s16 == 0) & (scale != 0)).any().item<bool>(), "a scale of magnitude ",
              scale.abs().min().item<float>(), " underflows to 0 in float16");
  return s16;
}

QParams qparams(const at::Tensor& w, const DtypeInfo& info, bool sym, const at::Tensor& clip);

}  // namespace

QParams compute_qparams(const at::Tensor& w, const DtypeInfo& info, bool sym, const at::Tensor& clip,
                        bool fp16_scales) {
  QParams p = qparams(w, info, sym, clip);
  if (fp16_scales) p.scale = fp16_exact(p.scale);
  return p;
}

namespace {

QParams qparams(const at::Tensor& w, const DtypeInfo& info, bool sym, const at::Tensor& clip) {
  TORCH_CHECK(w.dim() == 2, "compute_qparams expects a [rows, cols] block, got shape ", w.sizes());
  check_scheme(info, sym);
  const at::Tensor wf = w.to(at::kFloat);
  const at::Tensor c = clip_vector(clip, wf.size(0));
  const at::Tensor wmin = std::get<0>(wf.min(1)) * c;
  const at::Tensor wmax = std::get<0>(wf.max(1)) * c;
  QParams p;
  if (!info.is_int()) {
    p.scale = at::maximum(wmin.abs(), wmax.abs());
    p.scale.masked_fill_(p.scale.eq(0), 1.0);
    return p;
  }
  if (sym) {
    at::Tensor amax = at::maximum(wmin.abs(), wmax.abs());
    amax.masked_fill_(amax.eq(0), 1.0);
    if (info.id == WeightDtype::Int4FullRange) {
      // The extreme value maps to -8 exactly: the scale is negative when that extreme is positive.
      p.scale = at::where(wmax.abs() > wmin.abs(), -amax, amax) / 8.0;
    } else {
      p.scale = amax * 2.0 / static_cast<double>((int64_t{1} << info.bits) - 1);
    }
    return p;
  }
  const at::Tensor lo = at::minimum(wmin, at::zeros_like(wmin));
  const at::Tensor hi = at::maximum(wmax, at::zeros_like(wmax));
  p.scale = (hi - lo) / static_cast<double>(info.qmax(false));
  p.scale.masked_fill_(p.scale.eq(0), 1.0);
  p.zero = at::clamp(at::round(-lo / p.scale), 0, info.qmax(false)).to(at::kInt);
  return p;
}

}  // namespace

at::Tensor quantize_rows(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero,
                         const DtypeInfo& info, bool sym) {
  TORCH_CHECK(w.dim() == 2 && scale.dim() == 1 && scale.size(0) == w.size(0),
              "quantize_rows: w [rows, cols] and scale [rows] expected, got ", w.sizes(), " and ", scale.sizes());
  const at::Tensor v = w.to(at::kFloat) / scale.to(at::kFloat).unsqueeze(1);
  if (!info.is_int()) {
    const SortedTable t = sorted_table(info.codebook);
    // Index of the nearest entry: the number of midpoints strictly below v (a tie goes to the smaller value).
    const at::Tensor pos = at::searchsorted(t.mid, v.contiguous(), /*out_int32=*/false, /*right=*/false);
    return t.codes.index_select(0, pos.flatten()).view(v.sizes());
  }
  if (sym) return at::clamp(at::round(v), info.qmin(true), info.qmax(true)).to(at::kInt);
  TORCH_CHECK(zero.defined() && zero.dim() == 1 && zero.size(0) == w.size(0),
              "quantize_rows: asym needs zero [rows]");
  return at::clamp(at::round(v) + zero.to(at::kFloat).unsqueeze(1), 0, info.qmax(false)).to(at::kInt);
}

at::Tensor dequantize_rows(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero,
                           const DtypeInfo& info, bool sym) {
  TORCH_CHECK(q.dim() == 2 && scale.dim() == 1 && scale.size(0) == q.size(0),
              "dequantize_rows: q [rows, cols] and scale [rows] expected, got ", q.sizes(), " and ", scale.sizes());
  const at::Tensor s = scale.to(at::kFloat).unsqueeze(1);
  if (!info.is_int()) {
    const at::Tensor table =
        at::from_blob(const_cast<float*>(kernels::codebook_table(info.codebook)), {16}, at::kFloat);
    return table.index_select(0, q.flatten().to(at::kLong)).view(q.sizes()) * s;
  }
  if (sym) return q.to(at::kFloat) * s;
  TORCH_CHECK(zero.defined(), "dequantize_rows: asym needs zero [rows]");
  return (q.to(at::kFloat) - zero.to(at::kFloat).unsqueeze(1)) * s;
}

GroupwiseQ quantize_groupwise(const at::Tensor& w, const DtypeInfo& info, bool sym, int64_t group_size,
                              double clip, bool fp16_scales) {
  TORCH_CHECK(w.dim() == 2, "weight must be 2-D [out, in], got shape ", w.sizes());
  const at::Tensor c = at::full({w.size(0), group_count(group_size, w.size(1))}, clip, at::kFloat);
  return quantize_groupwise(w, info, sym, group_size, c, fp16_scales);
}

GroupwiseQ quantize_groupwise(const at::Tensor& w, const DtypeInfo& info, bool sym, int64_t group_size,
                              const at::Tensor& clip, bool fp16_scales) {
  TORCH_CHECK(w.dim() == 2, "weight must be 2-D [out, in], got shape ", w.sizes());
  const int64_t n = w.size(0), k = w.size(1);
  const int64_t g = effective_group_size(group_size, k);
  const int64_t full = k / g, tail = k - full * g;
  TORCH_CHECK(clip.dim() == 2 && clip.size(0) == n && clip.size(1) == full + (tail > 0),
              "clip must have shape [", n, ", ", full + (tail > 0), "] (one ratio per group), got ", clip.sizes());
  const at::Tensor wf = w.to(at::kFloat).contiguous();
  const at::Tensor cf = clip.to(at::kFloat);
  GroupwiseQ out;
  std::vector<at::Tensor> q_parts, s_parts, z_parts;
  // Full groups as rows of a [out * full, g] block, then the ragged tail as its own [out, tail] block.
  auto run = [&](int64_t first_col, int64_t groups, int64_t width, int64_t first_group) {
    const at::Tensor rows = wf.narrow(1, first_col, groups * width).reshape({n * groups, width});
    const at::Tensor rows_clip = cf.narrow(1, first_group, groups).reshape({n * groups});
    const QParams p = compute_qparams(rows, info, sym, rows_clip, fp16_scales);
    q_parts.push_back(quantize_rows(rows, p.scale, p.zero, info, sym).view({n, groups * width}));
    s_parts.push_back(p.scale.view({n, groups}));
    if (p.zero.defined()) z_parts.push_back(p.zero.view({n, groups}));
  };
  if (full > 0) run(0, full, g, 0);
  if (tail > 0) run(full * g, 1, tail, full);
  out.q = at::cat(q_parts, 1);
  out.scales = at::cat(s_parts, 1);
  if (!z_parts.empty()) out.zeros = at::cat(z_parts, 1);
  return out;
}

at::Tensor dequantize_groupwise(const GroupwiseQ& gq, const DtypeInfo& info, bool sym, int64_t group_size) {
  const int64_t n = gq.q.size(0), k = gq.q.size(1);
  const int64_t g = effective_group_size(group_size, k);
  const at::Tensor col_group = at::arange(k, at::kLong).div(g, "floor");
  const at::Tensor s = gq.scales.index_select(1, col_group).reshape({-1});
  const at::Tensor z = gq.zeros.defined() ? gq.zeros.index_select(1, col_group).reshape({-1}) : at::Tensor();
  return dequantize_rows(gq.q.reshape({-1, 1}), s, z, info, sym).view({n, k});
}

}  // namespace lwq
