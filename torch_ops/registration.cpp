// The one TORCH_LIBRARY(lwq, m): the PackedWeight class (register_packed_weight, idempotent), then every schema of
// liblwq_ops. Implementations are registered next to their code (TORCH_LIBRARY_IMPL in woq_linear.cpp,
// woq_linear_a8.cpp, w8a8_linear.cpp, ops_meta.cpp), each block calling register_packed_weight first, so the
// order in which the files' static initializers run does not matter.
#include <torch/library.h>

#include "ops.h"

namespace lwq {

namespace {

std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>> unpack_weight(
    const PackedWeightPtr& w) {
  TORCH_CHECK(w, "unpack_weight: the packed weight is None");
  return w->unpack();
}

at::Tensor dequantize_weight(const PackedWeightPtr& w) {
  TORCH_CHECK(w, "dequantize_weight: the packed weight is None");
  return w->dequantize();
}

PackedWeightPtr pack_weight(const at::Tensor& q, const at::Tensor& scales, const c10::optional<at::Tensor>& zeros,
                            const std::string& dtype, int64_t group_size, const c10::optional<at::Tensor>& g_idx) {
  return PackedWeight::pack(q, scales, zeros, dtype, group_size, g_idx);
}

}  // namespace

void register_packed_weight() {
  using Ptr = c10::intrusive_ptr<PackedWeight>;
  static const auto registered =
      torch::class_<PackedWeight>("lwq", "PackedWeight")
          .def("dtype", &PackedWeight::dtype)
          .def("out_features", &PackedWeight::out_features)
          .def("in_features", &PackedWeight::in_features)
          .def("group_size", &PackedWeight::group_size)
          .def("sym", &PackedWeight::sym)
          .def("has_g_idx", &PackedWeight::has_g_idx)
          .def("nbytes", &PackedWeight::nbytes)
          .def("describe", &PackedWeight::repr)
          .def_pickle([](const Ptr& self) -> PackedWeight::State { return self->state(); },
                      [](PackedWeight::State state) -> Ptr { return PackedWeight::from_state(state); });
  (void)registered;
}

TORCH_LIBRARY(lwq, m) {
  register_packed_weight();

  m.def("quantize_weight(Tensor weight, str dtype, int group_size=128, bool sym=True) -> "
        "__torch__.torch.classes.lwq.PackedWeight",
        &quantize_weight);
  m.def("pack_weight(Tensor q, Tensor scales, Tensor? zeros, str dtype, int group_size, Tensor? g_idx=None) -> "
        "__torch__.torch.classes.lwq.PackedWeight",
        &pack_weight);
  m.def("unpack_weight(__torch__.torch.classes.lwq.PackedWeight w) -> (Tensor q, Tensor scales, Tensor? zeros, "
        "Tensor? g_idx)",
        &unpack_weight);
  m.def("dequantize_weight(__torch__.torch.classes.lwq.PackedWeight w) -> Tensor", &dequantize_weight);
  m.def("woq_linear(Tensor x, __torch__.torch.classes.lwq.PackedWeight w, Tensor? bias=None) -> Tensor");
  m.def("woq_linear_a8(Tensor x, __torch__.torch.classes.lwq.PackedWeight w, Tensor? bias=None) -> Tensor");
  m.def("w8a8_linear(Tensor x, __torch__.torch.classes.lwq.PackedWeight w, float act_scale, int act_zero_point, "
        "Tensor? bias=None, str act_dtype=\"uint8\") -> Tensor");
}

}  // namespace lwq
