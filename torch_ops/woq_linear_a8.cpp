// lwq::woq_linear_a8 on CPU: woq_linear with x quantized dynamically to int8 per row and per block of at most
// 32 columns, multiplied with the integer codes in int32 (kernels/woq_a8.h gives the exact arithmetic and its
// error bound). Same flattening, act-order gather and padding as woq_linear; work is split over tiles of 8
// output channels (and over rows when there are few tiles), which never changes an output's bits.
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "kernels/dispatch.h"
#include "op_stats.h"
#include "ops.h"
#include "work_pool.h"

namespace lwq {

at::Tensor woq_linear_a8(const at::Tensor& x, const PackedWeightPtr& w, const c10::optional<at::Tensor>& bias) {
  const LinearOpTimer timer;
  TORCH_CHECK(w, "woq_linear_a8: the packed weight is None");
  const kernels::WeightView v = w->view();
  TORCH_CHECK(w->supports_int8_activations(),
              "woq_linear_a8: int8 activations are implemented for the dtypes ",
              c10::Join(", ", int8_activation_dtype_names()), " "
              "(sym or asym), got dtype ",
              w->dtype(), "; use woq_linear for this weight");
  const KernelInput in = kernel_input("woq_linear_a8", x, *w, bias);
  const at::Tensor& xp = in.x;
  const at::Tensor& b = in.bias;
  const int64_t M = in.M;
  const auto& out_shape = in.out_shape;
  at::Tensor y = at::empty({M, v.N}, xp.options());
  if (M == 0) return y.reshape(out_shape).to(x.scalar_type());

  const std::vector<kernels::A8Block> blocks = kernels::woq_a8_blocks(v);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  at::Tensor xq = at::empty({M, v.K_pad}, xp.options().dtype(at::kChar));
  at::Tensor d = at::empty({M, n_blocks}, xp.options());
  at::Tensor xsum = at::empty({M, n_blocks}, xp.options().dtype(at::kInt));
  const float* xd = xp.data_ptr<float>();
  int8_t* xqd = xq.data_ptr<int8_t>();
  float* dd = d.data_ptr<float>();
  int32_t* sd = xsum.data_ptr<int32_t>();
  std::atomic<bool> finite{true};
  const kernels::KernelTable& kt = kernels::table();
  const int64_t n_threads = linear_op_threads();
  parallel_chunks(M, std::max<int64_t>(1, 65536 / v.K_pad), n_threads, [&](int64_t m0, int64_t m1) {
    if (!kt.woq_a8_quantize(v, blocks, xd + m0 * v.K_pad, m1 - m0, v.K_pad, xqd + m0 * v.K_pad, dd + m0 * n_blocks,
                            sd + m0 * n_blocks))
      finite = false;
  });
  TORCH_CHECK(finite, "woq_linear_a8: x contains NaN or Inf, which has no int8 quantized value (woq_linear "
              "propagates them)");

  const float* bd = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  // Work items are (row chunk, tile) pairs, row-chunk major, in chunks from the operators' pool (work_pool.h);
  // rows are cut only when there are too few tiles to keep every thread busy.
  const int64_t n_tiles = v.N_pad / kernels::kTileN;
  int64_t m_chunk = M;
  if (n_threads > 1 && M >= 8 && n_tiles < 4 * n_threads)
    m_chunk = std::max<int64_t>(4, kernels::round_up((M + 2 * n_threads - 1) / (2 * n_threads), 4));
  const int64_t n_chunks = (M + m_chunk - 1) / m_chunk;
  parallel_chunks(n_chunks * n_tiles, tile_chunk(n_chunks * n_tiles, n_threads), n_threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t chunk = i / n_tiles, t0 = i % n_tiles;
      const int64_t t1 = std::min(n_tiles, t0 + (i1 - i));
      const int64_t m0 = chunk * m_chunk, rows = std::min(m_chunk, M - m0);
      const kernels::A8Acts acts{xqd + m0 * v.K_pad, dd + m0 * n_blocks, sd + m0 * n_blocks};
      kt.woq_a8_gemm(v, blocks, acts, rows, bd, yd + m0 * v.N, v.N, t0, t1);
      i += t1 - t0;
    }
  });
  return y.reshape(out_shape).to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(lwq, CPU, m) {
  register_packed_weight();
  m.impl("woq_linear_a8", &woq_linear_a8);
}

}  // namespace lwq
