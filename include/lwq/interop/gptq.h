// One linear layer's weight in the GPTQ checkpoint layout (AutoGPTQ, optimum, vLLM), to and from a PackedWeight.
// Tensors only: files are read and written by interop/checkpoint.h through the io layer. docs/interop.md describes
// the layout to the bit.
//
//   qweight int32 [K*bits/32, N]  codes packed along the input dimension: the K codes of output column n are laid
//                                 end to end (least significant bits first) in qweight[:, n], 32 bits a word
//   qzeros  int32 [G, N*bits/32]  zero points packed the same way along the output dimension; the v1 ("gptq")
//                                 checkpoint format stores zero - 1, v2 ("gptq_v2") stores zero
//   scales  fp16  [G, N]          value of code c in group g of output n: scales[g, n] * (c - zero[g, n])
//   g_idx   int32 [K]             group of each input column (k / group_size without act-order)
//
// GPTQ "sym" is zero = 2^(bits-1) for every group: lwq's signed int sym codes q map to c = q + 2^(bits-1).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "ops.h"

namespace lwq {
namespace interop {

// How zero points are stored in qzeros: v1 (AutoGPTQ's checkpoint_format "gptq", what vLLM and optimum read)
// stores zero - 1, so a zero point of 0 cannot be written; v2 ("gptq_v2") stores the zero point itself.
enum class GptqZeroFormat { V1, V2 };

// "gptq" -> V1, "gptq_v2" -> V2; throws naming the valid names otherwise.
GptqZeroFormat parse_gptq_zero_format(const std::string& name);
const char* gptq_zero_format_name(GptqZeroFormat format);

struct GptqTensors {
  at::Tensor qweight;  // int32 [K*bits/32, N]
  at::Tensor qzeros;   // int32 [G, N*bits/32]
  at::Tensor scales;   // float16 [G, N]
  at::Tensor g_idx;    // int32 [K]
};

// The model-wide settings of quantize_config.json that a layer's tensors need to be read.
struct GptqScheme {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group per output channel
  bool sym = true;
  bool desc_act = false;
  GptqZeroFormat zero_format = GptqZeroFormat::V1;
};

// Bit streams along dim 0: codes [R, C] (each in [0, 2^bits)) -> int32 [R*bits/32, C], where column c holds the
// R codes of codes[:, c] end to end, code r at bits [r*bits, r*bits + bits) of the column's stream (word w = bits
// [32w, 32w + 32)). For bits = 3 a code may straddle two words. R*bits must be a multiple of 32.
at::Tensor pack_int32_rows(const at::Tensor& codes, int bits);
// The inverse: int32 [W, C] -> int32 [W*32/bits, C] (W*32 must be a multiple of bits).
at::Tensor unpack_int32_rows(const at::Tensor& packed, int bits);

// What happened to the scales on the way to float16.
struct ScaleRounding {
  int64_t total = 0;    // scales converted
  int64_t inexact = 0;  // scales that float16 does not hold exactly (changed by the conversion)
  double max_relative_change = 0;
};

// A PackedWeight in the GPTQ layout. Exportable: int8, int4, int4_fullrange, int3, int2 (sym or asym, any group
// size including a ragged last group, with or without g_idx) with K*bits and N*bits multiples of 32. Refused, with
// `what` (e.g. "layer 'layers.0.up'") in the message: other dtypes, shapes that do not pack into whole int32 words,
// a zero point of 0 in the v1 format, scales outside the float16 range, and scales that float16 does not hold
// exactly unless round_scales (then they are rounded to nearest and counted in *rounding when given).
GptqTensors to_gptq(const PackedWeight& w, GptqZeroFormat zero_format, bool round_scales, const std::string& what,
                    ScaleRounding* rounding = nullptr);

// A PackedWeight of dtype `dtype` (empty: "int<bits>"; "int4_fullrange" is accepted for 4-bit sym) from one
// layer's GPTQ tensors. g_idx may be undefined (k / group_size). The result has a g_idx when scheme.desc_act or
// when g_idx is not k / group_size; it is sym when scheme.sym (every zero point must then be 2^(bits-1)).
// Refused, naming `what`: shapes or dtypes that do not fit each other or the scheme, group indices out of range,
// and zero points outside [0, 2^bits - 1] (a v1 field of all ones means 2^bits, which no lwq dtype holds).
// Conversions are exact: from_gptq(to_gptq(w)) == w for every exportable w with float16-exact scales, and
// to_gptq(from_gptq(t)) == t for every t it accepts (g_idx written as k / group_size when it was absent).
PackedWeightPtr from_gptq(const GptqTensors& t, const GptqScheme& scheme, const std::string& dtype,
                          const std::string& what);

}  // namespace interop
}  // namespace lwq
