// The TorchScript custom class torch.classes.lwq.PackedWeight: one linear layer's quantized weight in the packed
// layout of kernels/format.h, with the metadata that says how to decode it.
#pragma once

#include <ATen/ATen.h>
#include <torch/custom_class.h>

#include <string>
#include <tuple>

#include "kernels/format.h"
#include "qscheme.h"

namespace lwq {

class PackedWeight : public torch::CustomClassHolder {
 public:
  // Serialized state, version 1 (docs/packed-format.md):
  // (version, dtype, out_features, in_features, group_size, sym, qweight uint8 [bytes],
  //  scales fp32 [n_groups, out], zeros uint8 [n_groups, out] or None, g_idx int32 [in] or None)
  static constexpr int64_t kStateVersion = 1;
  using State = std::tuple<int64_t, std::string, int64_t, int64_t, int64_t, bool, at::Tensor, at::Tensor,
                           c10::optional<at::Tensor>, c10::optional<at::Tensor>>;

  // From the logical form (see unpack). Validates shapes, ranges and finiteness; throws naming the problem.
  static c10::intrusive_ptr<PackedWeight> pack(const at::Tensor& q, const at::Tensor& scales,
                                               const c10::optional<at::Tensor>& zeros, const std::string& dtype,
                                               int64_t group_size, const c10::optional<at::Tensor>& g_idx);
  static c10::intrusive_ptr<PackedWeight> from_state(const State& state);

  // Logical form, original column order: q int32 [out, in] (signed for int sym; codes for asym, nf4, fp4),
  // scales fp32 [out, n_groups], zeros int32 [out, n_groups] (asym only), g_idx int32 [in] (act-order only).
  std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>> unpack() const;
  at::Tensor dequantize() const;  // fp32 [out, in]
  // Rows [row_begin, row_end) only (row_begin a multiple of kernels::kTileN): fp32 [rows, in], the same values.
  at::Tensor dequantize(int64_t row_begin, int64_t row_end) const;
  State state() const;

  const DtypeInfo& info() const { return *info_; }
  const std::string dtype() const { return info_->name; }
  int64_t out_features() const { return n_; }
  int64_t in_features() const { return k_; }
  int64_t group_size() const { return group_size_; }
  int64_t n_groups() const { return n_groups_; }
  bool sym() const { return sym_; }
  bool has_g_idx() const { return g_idx_.defined(); }
  // Internal column j holds original column perm[j] (int64 [in]); undefined without g_idx.
  const at::Tensor& perm() const { return perm_; }
  const at::Tensor& qweight() const { return qweight_; }
  int64_t nbytes() const;  // packed storage: codes + scales + zeros + g_idx
  kernels::WeightView view() const;
  // True when lwq::woq_linear_a8 takes this weight (integer codes of 4 or 8 bits: int8, int4, int4_fullrange).
  bool supports_int8_activations() const;
  std::string repr() const;

 private:
  struct Private {};  // only pack() and from_state() construct, so every instance is validated

 public:
  explicit PackedWeight(Private) {}

 private:
  at::Tensor q_rows(int64_t row_begin, int64_t row_end) const;  // logical q of those rows, original column order
  void set_geometry(const DtypeInfo& info, int64_t n, int64_t k, int64_t group_size, bool sym);
  void finish_init();  // derives perm_, col_group_, padded scales/zeros

  const DtypeInfo* info_ = nullptr;
  int64_t n_ = 0, k_ = 0, group_size_ = -1, n_groups_ = 1;
  bool sym_ = true;
  at::Tensor qweight_;  // uint8 [packed_bytes]
  at::Tensor scales_;   // fp32 [n_groups, out] as serialized
  at::Tensor zeros_;    // uint8 [n_groups, out] or undefined
  at::Tensor g_idx_;    // int32 [in] or undefined
  // Derived, not serialized.
  at::Tensor scales_pad_;  // fp32 [n_groups, N_pad]
  at::Tensor zeros_pad_;   // uint8 [n_groups, N_pad] or undefined
  at::Tensor col_group_;   // int32 [K_pad]
  at::Tensor perm_;        // int64 [in] or undefined
  int64_t uniform_group_ = 0;
};

// Registers torch.classes.lwq.PackedWeight (methods and def_pickle) the first time it is called and does nothing
// after, as PyTorch's register_linear_params / register_embedding_params do. Every TORCH_LIBRARY and
// TORCH_LIBRARY_IMPL block whose schemas or kernels name the class calls it first, so static initialization order
// (link order, library load order) does not matter.
void register_packed_weight();

}  // namespace lwq
