// Weight dtypes and the round-to-nearest arithmetic every algorithm shares: how scales and zero points are
// chosen for a group, and how a value becomes a code. One definition, used by RTN, GPTQ, AWQ, TEQ and W8A8.
//
// Semantics (follow Intel Neural Compressor's weight-only quantization):
//   int sym (int8/int4/int3/int2): wmax = max|w| * clip; scale = 2*wmax / (2^b - 1); q = clamp(round(w/scale),
//       -2^(b-1), 2^(b-1)-1).  ("int4" is this clip range.)
//   int4_fullrange (sym):  scale = -/+ wmax / 8, negative when max(w) > |min(w)|, so the extreme maps to -8.
//   int asym: lo = min(min(w)*clip, 0), hi = max(max(w)*clip, 0); scale = (hi - lo) / (2^b - 1);
//       zero = round(-lo / scale); q = clamp(round(w/scale) + zero, 0, 2^b - 1).
//   nf4 / fp4_e2m1 (sym only): scale = max|w| * clip; q = index of the nearest table entry of w/scale
//       (a tie goes to the smaller table value).
//   A group whose scale would be 0 (all zeros) gets scale 1, so there is no division by zero.
//   Rounding is round half to even everywhere (torch.round, std::nearbyint).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "kernels/format.h"

namespace lwq {

enum class WeightDtype { Int8, Int4, Int4FullRange, Int3, Int2, NF4, FP4 };

struct DtypeInfo {
  WeightDtype id;
  const char* name;  // as ITREX names them
  int bits;
  kernels::Codebook codebook;
  bool is_int() const { return codebook == kernels::Codebook::Int; }
  int64_t qmin(bool sym) const { return is_int() && sym ? -(int64_t{1} << (bits - 1)) : 0; }
  int64_t qmax(bool sym) const {
    return is_int() && sym ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1;
  }
};

// Throws a c10::Error listing the valid names when `name` is unknown.
const DtypeInfo& dtype_info(const std::string& name);
std::vector<std::string> dtype_names();
// The dtypes lwq::woq_linear_a8 takes (int8 activations, `lwq quantize --compute int8`): int8, int4, int4_fullrange.
std::vector<std::string> int8_activation_dtype_names();

// Checks a (dtype, sym) pair is meaningful: table types (nf4, fp4_e2m1) are symmetric only.
void check_scheme(const DtypeInfo& info, bool sym);

// True when t holds no NaN or Inf (integer tensors always), checked in slices so that no copy of t is made.
bool all_finite(const at::Tensor& t);
// Throws naming `what` when t holds NaN or Inf.
void check_finite(const at::Tensor& t, const std::string& what);

// Throws naming `what` when t's storage lacks bytes its shape and strides reach. A record cut short in an archive
// loads as a tensor of the declared shape over a storage with no data (reading it crashed the process), or, cut to
// fewer bytes, over less memory than the storage declares: caught while a RecordedAllocations lives.
void check_storage(const at::Tensor& t, const std::string& what);

// Quantization parameters of the rows of w [R, C] (each row one group). clip: ratio in (0, 1] applied to the
// range, either a scalar tensor or [R]. Returns scale fp32 [R] and, for asym, zero int32 [R] (else undefined).
// fp16_scales: each scale rounded to the nearest float16 value after the zero point is chosen (as lwq's Python
// fp16_scales does), so that the codes quantize_rows then picks are the nearest ones for the stored scale; throws
// when a scale is outside float16's range.
struct QParams {
  at::Tensor scale;
  at::Tensor zero;
};
QParams compute_qparams(const at::Tensor& w, const DtypeInfo& info, bool sym, double clip = 1.0,
                        bool fp16_scales = false);
QParams compute_qparams(const at::Tensor& w, const DtypeInfo& info, bool sym, const at::Tensor& clip,
                        bool fp16_scales = false);

// q int32 [R, C] from w [R, C] given scale [R] (and zero [R] for asym). Values are those of the logical form:
// signed q for int sym, codes for asym and table types.
at::Tensor quantize_rows(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero,
                         const DtypeInfo& info, bool sym);
// fp32 values of q [R, C] given scale [R] and zero [R] (asym) — the exact inverse used by dequantize.
at::Tensor dequantize_rows(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero,
                           const DtypeInfo& info, bool sym);

// Round-to-nearest of a whole weight [out, in] with groups of group_size consecutive input columns (the last one
// ragged when in % group_size != 0). q int32 [out, in], scales fp32 [out, n_groups], zeros int32 [out, n_groups]
// for asym (else undefined) — the logical form PackedWeight::pack takes.
struct GroupwiseQ {
  at::Tensor q, scales, zeros;
};
GroupwiseQ quantize_groupwise(const at::Tensor& w, const DtypeInfo& info, bool sym, int64_t group_size,
                              double clip = 1.0, bool fp16_scales = false);
// The same with one clip ratio per group: clip fp32 [out, n_groups] in (0, 1] (e.g. from a clip search).
GroupwiseQ quantize_groupwise(const at::Tensor& w, const DtypeInfo& info, bool sym, int64_t group_size,
                              const at::Tensor& clip, bool fp16_scales = false);
// Float values of a GroupwiseQ (fake quantization), fp32 [out, in].
at::Tensor dequantize_groupwise(const GroupwiseQ& gq, const DtypeInfo& info, bool sym, int64_t group_size);

// Group geometry: group_size -1 means one group per output channel. Validates group_size.
int64_t effective_group_size(int64_t group_size, int64_t in_features);
int64_t group_count(int64_t group_size, int64_t in_features);

}  // namespace lwq
