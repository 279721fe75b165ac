// PackedWeight <-> GPTQ tensors. Everything goes through the logical form (PackedWeight::unpack / pack), so the
// conversion never depends on lwq's kernel layout, and both directions are exact.
#include "lwq/interop/gptq.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>

namespace lwq {
namespace interop {

namespace {

void check_bits(int bits, const char* where) {
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, where, ": GPTQ packs 2, 3, 4 or 8-bit codes, got ",
              bits, " bits");
}

// Group of each input column when there is no act-order.
at::Tensor sequential_g_idx(int64_t k, int64_t group_size) {
  return at::arange(k, at::kInt).div(effective_group_size(group_size, k), "floor").to(at::kInt);
}

std::string fmt_shape(const at::Tensor& t) {
  std::ostringstream os;
  os << t.scalar_type() << " " << t.sizes();
  return os.str();
}

}  // namespace

GptqZeroFormat parse_gptq_zero_format(const std::string& name) {
  if (name == "gptq") return GptqZeroFormat::V1;
  if (name == "gptq_v2") return GptqZeroFormat::V2;
  TORCH_CHECK(false, "unknown GPTQ checkpoint format '", name, "': expected gptq (v1, zero points stored minus one) "
              "or gptq_v2 (zero points stored as they are)");
}

const char* gptq_zero_format_name(GptqZeroFormat format) { return format == GptqZeroFormat::V1 ? "gptq" : "gptq_v2"; }

at::Tensor pack_int32_rows(const at::Tensor& codes, int bits) {
  check_bits(bits, "pack_int32_rows");
  TORCH_CHECK(codes.dim() == 2, "pack_int32_rows: codes must be 2-D, got ", codes.sizes());
  const int64_t rows = codes.size(0), cols = codes.size(1);
  TORCH_CHECK(rows * bits % 32 == 0, "pack_int32_rows: ", rows, " rows of ", bits,
              "-bit codes do not fill whole 32-bit words (rows x bits must be a multiple of 32)");
  const at::Tensor src = codes.to(at::kInt).contiguous();
  if (src.numel() > 0) {
    const int64_t lo = src.min().item<int64_t>(), hi = src.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < (int64_t{1} << bits), "pack_int32_rows: codes must lie in [0, ", (1 << bits) - 1,
                "], got values in [", lo, ", ", hi, "]");
  }
  at::Tensor out = at::zeros({rows * bits / 32, cols}, at::kInt);
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src.data_ptr<int32_t>());
  uint32_t* words = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  // Columns are independent streams: threads split the columns, each walks the rows in order.
  at::parallel_for(0, cols, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t bit = r * bits;
      const int64_t w = bit / 32;
      const int shift = static_cast<int>(bit % 32);
      const uint32_t* row = in + r * cols;
      uint32_t* lo_word = words + w * cols;
      for (int64_t c = c0; c < c1; ++c) lo_word[c] |= row[c] << shift;
      if (shift + bits > 32) {  // 3-bit codes cross word boundaries: the high part starts the next word
        uint32_t* hi_word = words + (w + 1) * cols;
        for (int64_t c = c0; c < c1; ++c) hi_word[c] |= row[c] >> (32 - shift);
      }
    }
  });
  return out;
}

at::Tensor unpack_int32_rows(const at::Tensor& packed, int bits) {
  check_bits(bits, "unpack_int32_rows");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kInt, "unpack_int32_rows: expected a 2-D int32 tensor, got ",
              fmt_shape(packed));
  const int64_t n_words = packed.size(0), cols = packed.size(1);
  TORCH_CHECK(n_words * 32 % bits == 0, "unpack_int32_rows: ", n_words, " words do not hold a whole number of ", bits,
              "-bit codes");
  const int64_t rows = n_words * 32 / bits;
  const at::Tensor src = packed.contiguous();
  at::Tensor out = at::empty({rows, cols}, at::kInt);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(src.data_ptr<int32_t>());
  int32_t* dst = out.data_ptr<int32_t>();
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  at::parallel_for(0, cols, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t bit = r * bits;
      const int64_t w = bit / 32;
      const int shift = static_cast<int>(bit % 32);
      const uint32_t* lo_word = words + w * cols;
      int32_t* row = dst + r * cols;
      if (shift + bits <= 32) {
        for (int64_t c = c0; c < c1; ++c) row[c] = static_cast<int32_t>((lo_word[c] >> shift) & mask);
      } else {
        const uint32_t* hi_word = words + (w + 1) * cols;
        for (int64_t c = c0; c < c1; ++c)
          row[c] = static_cast<int32_t>(((lo_word[c] >> shift) | (hi_word[c] << (32 - shift))) & mask);
      }
    }
  });
  return out;
}

GptqTensors to_gptq(const PackedWeight& w, GptqZeroFormat zero_format, bool round_scales, const std::string& what,
                    ScaleRounding* rounding) {
  const DtypeInfo& info = w.info();
  TORCH_CHECK(info.is_int(), what, ": dtype ", info.name, " has no GPTQ form (GPTQ stores integer codes with a scale "
              "and a zero point: int8, int4, int4_fullrange, int3, int2)");
  const int bits = info.bits;
  const int64_t n = w.out_features(), k = w.in_features();
  TORCH_CHECK(k * bits % 32 == 0, what, ": in_features ", k, " x ", bits, " bits is not a multiple of 32, so qweight "
              "(32/bits input rows per int32) cannot hold it", bits == 3 ? " (3-bit needs in_features % 32 == 0)" : "");
  TORCH_CHECK(n * bits % 32 == 0, what, ": out_features ", n, " x ", bits, " bits is not a multiple of 32, so qzeros "
              "cannot hold it", bits == 3 ? " (3-bit needs out_features % 32 == 0)" : "");

  auto parts = w.unpack();
  const at::Tensor& q = std::get<0>(parts);       // [N, K]
  const at::Tensor& scales = std::get<1>(parts);  // [N, G] fp32
  const int64_t groups = scales.size(1);
  const int32_t half = kernels::sym_zero(bits);

  at::Tensor codes, zeros;  // codes [N, K] in [0, 2^bits), zeros [N, G]
  if (w.sym()) {
    codes = q + half;
    zeros = at::full({n, groups}, half, at::kInt);
  } else {
    codes = q;
    zeros = *std::get<2>(parts);
  }
  at::Tensor stored_zeros = zeros;
  if (zero_format == GptqZeroFormat::V1) {
    const at::Tensor at_zero = (zeros == 0).nonzero();
    TORCH_CHECK(at_zero.size(0) == 0, what, ": ", at_zero.size(0), " zero point(s) are 0 (first at output ",
                at_zero.size(0) ? at_zero[0][0].item<int64_t>() : 0, ", group ",
                at_zero.size(0) ? at_zero[0][1].item<int64_t>() : 0,
                "); the GPTQ v1 format stores zero - 1 and cannot write them: export with the gptq_v2 format");
    stored_zeros = zeros - 1;
  }

  // fp16 scales: exact, or rounded only when asked.
  const at::Tensor scales16 = scales.to(at::kHalf);
  const at::Tensor back = scales16.to(at::kFloat);
  TORCH_CHECK(back.isfinite().all().item<bool>(), what, ": a scale of magnitude ", scales.abs().max().item<float>(),
              " is outside the float16 range (largest finite value 65504) that GPTQ stores scales in");
  const at::Tensor changed = back != scales;
  TORCH_CHECK(!((back == 0) & (scales != 0)).any().item<bool>(), what,
              ": a scale underflows to 0 in float16 (smallest magnitude ", scales.abs().min().item<float>(), ")");
  const int64_t inexact = changed.sum().item<int64_t>();
  const double max_rel =
      inexact ? ((back - scales).abs() / scales.abs()).masked_select(changed).max().item<double>() : 0.0;
  TORCH_CHECK(inexact == 0 || round_scales, what, ": ", inexact, " of ", scales.numel(),
              " scales are not exactly representable in float16 (largest relative change ", max_rel,
              "); GPTQ stores float16 scales: accept the rounding (--round-scales) or quantize with float16-exact "
              "scales (lwq quantize --scale-dtype fp16)");
  if (rounding) {
    rounding->total += scales.numel();
    rounding->inexact += inexact;
    rounding->max_relative_change = std::max(rounding->max_relative_change, max_rel);
  }

  GptqTensors t;
  t.qweight = pack_int32_rows(codes.t(), bits);
  t.qzeros = pack_int32_rows(stored_zeros, bits).t().contiguous();
  t.scales = scales16.t().contiguous();
  t.g_idx = std::get<3>(parts) ? std::get<3>(parts)->to(at::kInt).contiguous() : sequential_g_idx(k, w.group_size());
  return t;
}

PackedWeightPtr from_gptq(const GptqTensors& t, const GptqScheme& scheme, const std::string& dtype,
                          const std::string& what) {
  const int bits = scheme.bits;
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, what, ": GPTQ bits must be 2, 3, 4 or 8, got ", bits);
  const std::string name = dtype.empty() ? "int" + std::to_string(bits) : dtype;
  const DtypeInfo& info = dtype_info(name);
  TORCH_CHECK(info.is_int() && info.bits == bits, what, ": dtype ", name, " is not a ", bits, "-bit integer dtype");
  TORCH_CHECK(scheme.sym || name != "int4_fullrange", what, ": int4_fullrange is symmetric, but the checkpoint is asym");

  TORCH_CHECK(t.qweight.defined() && t.qweight.dim() == 2 && t.qweight.scalar_type() == at::kInt, what,
              ": qweight must be int32 [in_features*bits/32, out_features], got ",
              t.qweight.defined() ? fmt_shape(t.qweight) : "nothing");
  TORCH_CHECK(t.qweight.size(0) * 32 % bits == 0 && t.qweight.size(0) > 0 && t.qweight.size(1) > 0, what,
              ": qweight has ", t.qweight.size(0), " rows, which do not hold a whole number of ", bits, "-bit codes");
  const int64_t k = t.qweight.size(0) * 32 / bits, n = t.qweight.size(1);
  TORCH_CHECK(scheme.group_size == -1 || scheme.group_size > 0, what, ": group_size must be -1 or positive, got ",
              scheme.group_size);
  const int64_t groups = group_count(scheme.group_size, k);
  TORCH_CHECK(n * bits % 32 == 0, what, ": out_features ", n, " x ", bits,
              " bits is not a multiple of 32, so there is no qzeros layout for it");
  TORCH_CHECK(t.qzeros.defined() && t.qzeros.scalar_type() == at::kInt && t.qzeros.dim() == 2 &&
                  t.qzeros.size(0) == groups && t.qzeros.size(1) == n * bits / 32,
              what, ": qzeros must be int32 [", groups, ", ", n * bits / 32, "] for a ", k, " x ", n, " weight with group_size ",
              scheme.group_size, ", got ", t.qzeros.defined() ? fmt_shape(t.qzeros) : "nothing");
  TORCH_CHECK(t.scales.defined() && t.scales.is_floating_point() && t.scales.dim() == 2 && t.scales.size(0) == groups &&
                  t.scales.size(1) == n,
              what, ": scales must be float16 [", groups, ", ", n, "], got ",
              t.scales.defined() ? fmt_shape(t.scales) : "nothing");
  c10::optional<at::Tensor> g_idx;
  if (t.g_idx.defined()) {
    TORCH_CHECK(t.g_idx.dim() == 1 && t.g_idx.size(0) == k && !t.g_idx.is_floating_point(), what,
                ": g_idx must be int32 [", k, "], got ", fmt_shape(t.g_idx));
    const at::Tensor gi = t.g_idx.to(at::kInt).contiguous();
    const int64_t lo = gi.min().item<int64_t>(), hi = gi.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < groups, what, ": g_idx values must lie in [0, ", groups - 1, "], got [", lo, ", ", hi,
                "]");
    if (scheme.desc_act || !gi.equal(sequential_g_idx(k, scheme.group_size))) g_idx = gi;
  }

  const at::Tensor codes = unpack_int32_rows(t.qweight, bits).t();        // [N, K]
  at::Tensor zeros = unpack_int32_rows(t.qzeros.t().contiguous(), bits);  // the stored fields, [N, G]
  if (scheme.zero_format == GptqZeroFormat::V1) zeros = zeros + 1;
  const int32_t half = kernels::sym_zero(bits);
  const int64_t maxq = (int64_t{1} << bits) - 1;

  at::Tensor q;
  c10::optional<at::Tensor> lwq_zeros;
  if (scheme.sym) {
    const at::Tensor off = (zeros != half).nonzero();
    TORCH_CHECK(off.size(0) == 0, what, ": quantize_config says sym, so every zero point must be ", half,
                ", but output ", off.size(0) ? off[0][0].item<int64_t>() : 0, " group ",
                off.size(0) ? off[0][1].item<int64_t>() : 0, " has ",
                off.size(0) ? zeros[off[0][0]][off[0][1]].item<int64_t>() : 0);
    q = codes - half;
  } else {
    const int64_t zmax = zeros.max().item<int64_t>();
    TORCH_CHECK(zmax <= maxq, what, ": a zero point is ", zmax, scheme.zero_format == GptqZeroFormat::V1
                ? " (a v1 field of all ones, i.e. zero point 0 written as -1 by the quantizer)" : "",
                ", outside [0, ", maxq, "], which lwq cannot represent");
    q = codes;
    lwq_zeros = zeros;
  }
  try {
    return PackedWeight::pack(q.contiguous(), t.scales.to(at::kFloat).t().contiguous(), lwq_zeros, name,
                              scheme.group_size, g_idx);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, what, ": ", e.what_without_backtrace());
  }
}

}  // namespace interop
}  // namespace lwq
