// lwq::w8a8_linear on CPU: validate the static quantization parameters, quantize x per tensor into int16
// (xq - zp) rows (kernels/w8a8.h), then run the exact integer GEMM over tiles of 8 output channels in parallel.
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "kernels/dispatch.h"
#include "op_stats.h"
#include "ops.h"
#include "work_pool.h"

namespace lwq {

at::Tensor w8a8_linear(const at::Tensor& x, const PackedWeightPtr& w, double act_scale, int64_t act_zero_point,
                       const c10::optional<at::Tensor>& bias, const std::string& act_dtype) {
  const LinearOpTimer timer;
  TORCH_CHECK(w, "w8a8_linear: the packed weight is None");
  TORCH_CHECK(w->dtype() == "int8" && w->sym(), "w8a8_linear: the weight must be int8 symmetric, got dtype ",
              w->dtype(), " sym=", w->sym());
  TORCH_CHECK(w->group_size() == -1, "w8a8_linear: the weight must be per-channel (group_size -1), got group_size ",
              w->group_size());
  TORCH_CHECK(w->in_features() <= kernels::kW8a8MaxK, "w8a8_linear: in_features must be <= ", kernels::kW8a8MaxK,
              " so that the int32 accumulation is exact, got ", w->in_features());
  TORCH_CHECK(std::isfinite(act_scale) && act_scale > 0, "w8a8_linear: act_scale must be finite and > 0, got ",
              act_scale);
  const float act_scale_f = static_cast<float>(act_scale);
  TORCH_CHECK(act_scale_f > 0 && std::isfinite(act_scale_f),
              "w8a8_linear: act_scale must be representable as a positive finite float, got ", act_scale);
  int32_t qmin = 0, qmax = 0;
  if (act_dtype == "uint8") {
    qmin = 0;
    qmax = 255;
  } else if (act_dtype == "int8") {
    qmin = -128;
    qmax = 127;
  } else {
    TORCH_CHECK(false, "w8a8_linear: act_dtype must be \"uint8\" or \"int8\", got \"", act_dtype, "\"");
  }
  TORCH_CHECK(act_zero_point >= qmin && act_zero_point <= qmax, "w8a8_linear: act_zero_point must be in [", qmin,
              ", ", qmax, "] for act_dtype ", act_dtype, ", got ", act_zero_point);
  const auto out_shape = linear_output_shape(x, w->in_features(), w->out_features());
  TORCH_CHECK(x.is_floating_point(), "w8a8_linear: x must be a float tensor, got ", x.scalar_type());

  const kernels::WeightView v = w->view();
  TORCH_INTERNAL_ASSERT(v.bits == 8 && v.codebook == kernels::Codebook::Int && v.zeros == nullptr);
  at::Tensor x2 = x.reshape({-1, v.K}).to(at::kFloat);
  if (w->has_g_idx()) x2 = x2.index_select(1, w->perm());
  x2 = x2.contiguous();
  const int64_t M = x2.size(0);
  at::Tensor b;
  if (bias && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == v.N, "w8a8_linear: bias must have shape [", v.N, "], got ",
                bias->sizes());
    b = bias->to(at::kFloat).contiguous();
  }

  // Quantized activations: int16 (xq - zp), K_pad columns per row, and the per-row sums the kernel needs.
  at::Tensor d = at::empty({M, v.K_pad}, x2.options().dtype(at::kShort));
  at::Tensor row_sum = at::empty({M}, x2.options().dtype(at::kInt));
  const float* xd = x2.data_ptr<float>();
  int16_t* dd = d.data_ptr<int16_t>();
  int32_t* rs = row_sum.data_ptr<int32_t>();
  const int32_t zp = static_cast<int32_t>(act_zero_point);
  const kernels::KernelTable& kt = kernels::table();
  std::atomic<bool> has_nan{false};
  const int64_t n_threads = linear_op_threads();
  parallel_chunks(M, std::max<int64_t>(1, 65536 / std::max<int64_t>(v.K, 1)), n_threads, [&](int64_t m0, int64_t m1) {
    if (!kt.w8a8_quantize(xd + m0 * v.K, m1 - m0, v.K, v.K, act_scale_f, zp, qmin, qmax, dd + m0 * v.K_pad,
                          v.K_pad, rs + m0))
      has_nan = true;
  });
  TORCH_CHECK(!has_nan, "w8a8_linear: x contains NaN, which has no quantized value");

  at::Tensor y = at::empty({M, v.N}, x2.options());
  const float* bd = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  // All three kernels give the same bits (exact integer sums, one shared epilogue).
  const int64_t n_tiles = v.N_pad / kernels::kTileN;
  parallel_chunks(n_tiles, tile_chunk(n_tiles, n_threads), n_threads, [&](int64_t t0, int64_t t1) {
    kt.w8a8_gemm(v, dd, rs, M, v.K_pad, act_scale_f, bd, yd, v.N, t0, t1);
  });
  return y.reshape(out_shape).to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(lwq, CPU, m) {
  register_packed_weight();
  m.impl("w8a8_linear", &w8a8_linear);
}

}  // namespace lwq
