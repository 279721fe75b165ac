// lwq::woq_linear on CPU: flatten x to [M, in], put it in the weight's internal column order (act-order) and
// pad it to K_pad, then run the kernel over tiles of 8 output channels in parallel.
#include <torch/library.h>

#include <algorithm>

#include "kernels/dispatch.h"
#include "op_stats.h"
#include "ops.h"
#include "work_pool.h"

namespace lwq {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The kernel table's GEMM over all of y. Work items are (row chunk, tile) pairs, row-chunk major, handed out in
// chunks of consecutive items by the operators' pool (work_pool.h), so a thread gets a contiguous run of tiles.
// Rows are only cut when there are too few tiles to keep every thread busy (small N, large M), and only for a SIMD
// kernel (the reference computes every output on its own: cutting its rows would only repeat its decoding). The path is chosen from the whole M, and within a path every output is summed in a
// fixed order, so the bits do not depend on the number of threads.
void run(kernels::WoqGemmFn gemm, bool cut_rows, const kernels::WeightView& v, const float* x, int64_t M,
         const float* bias, float* y) {
  const int64_t n_tiles = v.N_pad / kernels::kTileN;
  const kernels::WoqPath path = kernels::woq_path_for(M);
  const int64_t n_threads = linear_op_threads();
  int64_t m_chunk = M;
  if (cut_rows && path == kernels::WoqPath::Blocked && n_threads > 1 && n_tiles < 4 * n_threads)
    m_chunk = std::max<int64_t>(24, kernels::round_up(ceil_div(M, 2 * n_threads), 6));
  const int64_t n_chunks = ceil_div(M, m_chunk);
  parallel_chunks(n_chunks * n_tiles, tile_chunk(n_chunks * n_tiles, n_threads), n_threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t chunk = i / n_tiles, t0 = i % n_tiles;
      const int64_t t1 = std::min(n_tiles, t0 + (i1 - i));
      const int64_t m0 = chunk * m_chunk, rows = std::min(m_chunk, M - m0);
      gemm(v, x + m0 * v.K_pad, rows, v.K_pad, bias, y + m0 * v.N, v.N, t0, t1, path);
      i += t1 - t0;
    }
  });
}

}  // namespace

KernelInput kernel_input(const char* op, const at::Tensor& x, const PackedWeight& w,
                         const c10::optional<at::Tensor>& bias) {
  KernelInput in;
  in.out_shape = linear_output_shape(x, w.in_features(), w.out_features());
  TORCH_CHECK(x.is_floating_point(), op, ": x must be a float tensor, got ", x.scalar_type());
  const int64_t K = w.in_features(), K_pad = kernels::padded_cols(K, w.info().bits), N = w.out_features();
  at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat);
  if (w.has_g_idx()) x2 = x2.index_select(1, w.perm());
  in.M = x2.size(0);
  // The kernels read K_pad columns per row, zeros past K.
  if (K_pad == K) {
    in.x = x2.contiguous();
  } else {
    in.x = at::empty({in.M, K_pad}, x2.options());
    in.x.narrow(1, 0, K).copy_(x2);
    in.x.narrow(1, K, K_pad - K).zero_();
  }
  if (bias && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape [", N, "], got ",
                bias->sizes());
    in.bias = bias->to(at::kFloat).contiguous();
  }
  return in;
}

at::Tensor woq_linear(const at::Tensor& x, const PackedWeightPtr& w, const c10::optional<at::Tensor>& bias) {
  const LinearOpTimer timer;
  TORCH_CHECK(w, "woq_linear: the packed weight is None");
  const KernelInput in = kernel_input("woq_linear", x, *w, bias);
  const kernels::WeightView v = w->view();
  const at::Tensor& xp = in.x;
  const at::Tensor& b = in.bias;
  const int64_t M = in.M;
  const auto& out_shape = in.out_shape;
  at::Tensor y = at::empty({M, v.N}, xp.options());
  if (M == 0) return y.reshape(out_shape).to(x.scalar_type());
  const float* xd = xp.data_ptr<float>();
  const float* bd = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  const kernels::KernelTable& kt = kernels::table();
  run(kt.woq_gemm, kt.level != kernels::Level::Ref, v, xd, M, bd, yd);
  return y.reshape(out_shape).to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(lwq, CPU, m) {
  register_packed_weight();
  m.impl("woq_linear", &woq_linear);
}

}  // namespace lwq
