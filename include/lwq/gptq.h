// GPTQ (Frantar et al., 2022): quantize a weight column by column, spreading each column's rounding error over the
// columns not yet quantized so that the layer's output on the calibration inputs changes least.
//
// Calibration statistics: the Hessian of the layer's squared output error, H = 2/n * sum over calibration rows x
// of x^T x ([in, in]). It is accumulated batch by batch, either with the GptqHessian class (C++) or with the
// functional op lwq::gptq_hessian_add(hessian, x, nsamples_seen) -> new hessian (Python / TorchScript), where
// nsamples_seen counts the rows (tokens) already in `hessian`. fp32 or fp64 Hessians are both accepted; the
// Cholesky factorization runs in the Hessian's dtype, the column updates in fp32.
//
// The solve (gptq_quantize):
//  - dead input columns (H[i,i] == 0: never active in calibration) get H[i,i] = 1 and W[:,i] = 0;
//  - act_order: columns are processed by decreasing H[i,i] (stable order);
//  - damping: H += percdamp * mean(diag H) * I; if the Cholesky factorization still fails, percdamp is raised
//    tenfold (up to 5 times) and the report says so;
//  - the error propagation uses V, the upper-triangular factor with H = V V^T (a Cholesky factorization in
//    reversed order; GPTQ's factor of H^-1 is V^-1, so no inverse is formed), in lazy blocks of block_size
//    columns (trailing update by matmul) and panels of 16 columns inside a block;
//  - quantization parameters of a group are computed from the current (already error-updated) weights when the
//    group's first column is reached. Block edges are moved onto group starts when a group would straddle one, so
//    those weights are exactly up to date. With act_order the groups are runs of group_size consecutive columns
//    in processing order and the PackedWeight gets g_idx (dropped when it equals the natural grouping).
//    static_groups: parameters of the natural groups are computed up front from the weight itself, and no g_idx
//    is needed even with act_order. group_size -1: one group per output channel, from the weight itself.
//  - every column is quantized with quantize_rows / dequantize_rows of qscheme.h, so any dtype works;
//  - the result is reproducible for a given thread count (the Cholesky factorization is lwq's own, blocked on
//    matmul and triangular solves, because LAPACK's threaded one is not reproducible even for one thread count);
//    across thread counts the last bits may differ where OpenBLAS (AMD EPYC kernels) or ATen's reductions split
//    sums by thread.
//
// Errors in the report: weight_mse = mean (W - Q)^2; output_mse = tr((W-Q) H (W-Q)^T) / (2 * out), the mean
// squared output error per output feature and calibration row (exactly that for H = 2/n X^T X, undamped);
// baseline_output_mse = the same for plain RTN of the same spec. seconds covers the solve and the packing, not
// the error measurement (done only when a report is asked for: about two more [out,in]x[in,in] matmuls).
#pragma once

#include <ATen/ATen.h>

#include "lwq/common.h"
#include "ops.h"
#include "qscheme.h"

namespace lwq {

// Returns H * n/(n+m) + 2/(n+m) * X^T X for x [..., in] (m rows); the input hessian is not modified.
// hessian: fp32 or fp64 [in, in]; x is cast to its dtype. nsamples_seen = n >= 0.
at::Tensor gptq_hessian_add(const at::Tensor& hessian, const at::Tensor& x, int64_t nsamples_seen);

// Streaming accumulator of the GPTQ Hessian of one layer.
class GptqHessian {
 public:
  explicit GptqHessian(int64_t in_features, at::ScalarType dtype = at::kFloat);
  void add(const at::Tensor& x);  // x [..., in_features], any float dtype
  const at::Tensor& hessian() const { return hessian_; }
  int64_t nsamples() const { return nsamples_; }

 private:
  at::Tensor hessian_;
  int64_t nsamples_ = 0;
};

struct GptqOptions {
  double percdamp = 0.01;    // > 0, fraction of mean(diag H) added to the diagonal
  int64_t block_size = 128;  // columns per lazy-update block
  bool act_order = false;
  bool static_groups = false;
};

// The solve alone: the logical form of the result (original column order), before packing.
struct GptqSolution {
  GroupwiseQ q;                          // q [out, in], scales / zeros [out, n_groups] (group g as in g_idx)
  at::Tensor g_idx;                      // int32 [in] with act_order and dynamic groups, else undefined
  at::Tensor dequantized;                // fp32 [out, in]: the values the solve committed to
  std::vector<std::string> adjustments;  // dead columns, raised damping
  double seconds = 0;
};
GptqSolution gptq_solve(const at::Tensor& weight, const at::Tensor& hessian, const QuantSpec& spec,
                        const GptqOptions& options = {});

// GPTQ of weight [out, in] (float, CPU) with hessian [in, in] into a PackedWeight (gptq_solve, then pack).
PackedWeightPtr gptq_quantize(const at::Tensor& weight, const at::Tensor& hessian, const QuantSpec& spec,
                              const GptqOptions& options = {}, LayerReport* report = nullptr);

// tr((W - Q) H (W - Q)^T) / (2 * out) for weight and approx [out, in], hessian [in, in] (fp32 matmul, fp64 sum).
double hessian_weighted_error(const at::Tensor& weight, const at::Tensor& approx, const at::Tensor& hessian);

}  // namespace lwq
