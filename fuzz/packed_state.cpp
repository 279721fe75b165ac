// Fuzz target: the serialized state of a PackedWeight (what __setstate__ reads from an archive), then the weight
// used: dequantized, unpacked, and multiplied by woq_linear. Input framing (little-endian; fuzz/make_seeds.py
// writes valid states in it): u8 version, u8 dtype index, u16 out, u16 in, i16 group_size, u8 flags (1 sym,
// 2 zeros present, 4 g_idx present), then four tensors, each u32 element count + its elements: qweight u8,
// scales f32, zeros u8, g_idx i32 (scales and zeros are [count / out, out] when out divides count, else 1-D).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>

#include "fuzz_input.h"
#include "ops.h"
#include "packed_weight.h"

namespace {

const char* const kDtypes[] = {"int8", "int4", "int4_fullrange", "int3", "int2", "nf4", "fp4_e2m1", "int5"};

at::Tensor take_tensor(lwq::fuzz::Bytes& in, at::ScalarType type, size_t elem, int64_t rows_of = 0) {
  const uint64_t count = std::min<uint64_t>(in.take<uint32_t>(), in.size() / elem);
  const std::string bytes = in.take_string(count * elem);
  at::Tensor t = at::empty({static_cast<int64_t>(count)}, at::TensorOptions().dtype(type));
  if (count) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  if (rows_of > 0 && count % rows_of == 0) t = t.view({static_cast<int64_t>(count) / rows_of, rows_of});
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lwq::fuzz::Bytes in(data, size);
  const int64_t version = in.take<uint8_t>();
  const std::string dtype = kDtypes[in.take<uint8_t>() % 8];
  const int64_t out = in.take<uint16_t>(), k = in.take<uint16_t>();
  const int64_t group = in.take<int16_t>();
  const uint8_t flags = in.take<uint8_t>();
  if (out * k > (1 << 20)) return 0;  // keep each input fast; the size checks are the same at any size
  try {
    const at::Tensor qweight = take_tensor(in, at::kByte, 1);
    const at::Tensor scales = take_tensor(in, at::kFloat, 4, out);
    const at::Tensor zeros = take_tensor(in, at::kByte, 1, out);
    const at::Tensor g_idx = take_tensor(in, at::kInt, 4);
    const lwq::PackedWeight::State state(version, dtype, out, k, group, (flags & 1) != 0, qweight, scales,
                                         (flags & 2) ? c10::optional<at::Tensor>(zeros) : c10::nullopt,
                                         (flags & 4) ? c10::optional<at::Tensor>(g_idx) : c10::nullopt);
    const auto w = lwq::PackedWeight::from_state(state);
    w->dequantize();
    w->unpack();
    lwq::woq_linear(at::ones({3, k}), w, c10::nullopt);
  } catch (const std::exception& e) {
    lwq::fuzz::refused(e);  // a refused state: fine
  }
  return 0;
}
