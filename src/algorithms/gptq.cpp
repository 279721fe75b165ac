// GPTQ: column-by-column quantization with error feedback through a triangular factor of the Hessian (see gptq.h).
// Working layout: the weight is transposed to Wt [in, out], so that input column j is the contiguous row Wt[j];
// column updates are then row operations and the lazy trailing update is one matmul per block.
#include "lwq/gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include <ATen/Dispatch.h>

#include "qscheme.h"

namespace lwq {

namespace {

constexpr int64_t kPanel = 16;      // columns whose updates reach the rest of their block one by one
constexpr int kMaxDampRaises = 5;   // percdamp may grow by 10^5 before the solve gives up

void check_hessian(const at::Tensor& hessian, int64_t in, const char* who) {
  TORCH_CHECK(hessian.dim() == 2 && hessian.size(0) == in && hessian.size(1) == in, who, ": hessian must be [", in,
              ", ", in, "], got shape ", hessian.sizes());
  TORCH_CHECK(hessian.scalar_type() == at::kFloat || hessian.scalar_type() == at::kDouble, who,
              ": hessian must be float32 or float64, got ", hessian.scalar_type());
  TORCH_CHECK(hessian.device().is_cpu(), who, ": hessian must be on the CPU, got ", hessian.device());
}

// [x rows of a batch] -> H * n/(n+m) + 2/(n+m) X^T X, in place or into a new tensor.
at::Tensor hessian_update(const at::Tensor& hessian, const at::Tensor& x, int64_t nsamples_seen, bool in_place) {
  const int64_t in = hessian.size(0);
  TORCH_CHECK(nsamples_seen >= 0, "gptq_hessian_add: nsamples_seen must be >= 0, got ", nsamples_seen);
  TORCH_CHECK(x.is_floating_point() && x.dim() >= 1 && x.size(-1) == in,
              "gptq_hessian_add: x must be a float tensor [..., ", in, "], got ", x.scalar_type(), " ", x.sizes());
  check_finite(x, "gptq_hessian_add: x");
  const at::Tensor rows = x.reshape({-1, in}).to(hessian.scalar_type());
  const int64_t m = rows.size(0);
  if (m == 0) return in_place ? hessian : hessian.clone();
  const double total = static_cast<double>(nsamples_seen + m);
  const double beta = static_cast<double>(nsamples_seen) / total, alpha = 2.0 / total;
  if (in_place) return hessian.addmm_(rows.t(), rows, beta, alpha);
  return at::addmm(hessian, rows.t(), rows, beta, alpha);
}

// Lower Cholesky factor of the symmetric matrix a (fp32 or fp64), or an undefined tensor when a is not positive
// definite. Left-looking and blocked: one matmul and one triangular solve per block of kCholBlock columns, the
// small diagonal blocks factorized here in fp64. Unlike LAPACK's threaded potrf, the result does not depend on
// the number of threads (matmul and triangular solves split their work by output element).
constexpr int64_t kCholBlock = 128;

bool factor_diagonal_block(at::Tensor& block) {  // in place, fp64 contiguous [n, n], lower triangle
  const int64_t n = block.size(0);
  double* a = block.data_ptr<double>();
  for (int64_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int64_t k = 0; k < j; ++k) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0)) return false;  // also catches NaN
    const double ljj = std::sqrt(d);
    a[j * n + j] = ljj;
    for (int64_t i = j + 1; i < n; ++i) {
      double v = a[i * n + j];
      for (int64_t k = 0; k < j; ++k) v -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = v / ljj;
    }
  }
  return true;
}

// In place: `a` (fp32 or fp64, contiguous) becomes its lower factor. False when a is not positive definite (a is
// then left half-factorized).
bool cholesky_lower_(at::Tensor& a) {
  const int64_t n = a.size(0);
  for (int64_t k0 = 0; k0 < n; k0 += kCholBlock) {
    const int64_t kb = std::min(kCholBlock, n - k0);
    at::Tensor panel = a.narrow(0, k0, n - k0).narrow(1, k0, kb);
    if (k0 > 0) {
      const at::Tensor done = a.narrow(1, 0, k0);
      panel.addmm_(done.narrow(0, k0, n - k0), done.narrow(0, k0, kb).t(), 1, -1);
    }
    at::Tensor diag = panel.narrow(0, 0, kb).to(at::kDouble).contiguous();
    if (!factor_diagonal_block(diag)) return false;
    diag = diag.tril().to(a.scalar_type());
    panel.narrow(0, 0, kb).copy_(diag);
    if (n - k0 > kb) {
      at::Tensor below = panel.narrow(0, kb, n - k0 - kb);
      below.copy_(at::linalg_solve_triangular(diag.t(), below, /*upper=*/true, /*left=*/false));
    }
  }
  a.tril_();
  return true;
}

// flip({0, 1}) of a contiguous square matrix without a second matrix: it is the reversal of the flat buffer.
void flip_square_(at::Tensor& a) {
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "flip_square_", [&] {
    scalar_t* p = a.data_ptr<scalar_t>();
    std::reverse(p, p + a.numel());
  });
}

// End of the block that starts at `start` (at most `size` columns, not past `limit`). With per-column group
// parameters (dynamic), a group's weights must have received every earlier column's update when its first column
// is reached: no group may start inside a block and end beyond it, and when every_group_start is set (panels)
// a group start always begins a new block.
int64_t block_end(int64_t start, int64_t size, int64_t limit, int64_t in, int64_t group, bool dynamic,
                  bool every_group_start) {
  const int64_t end = std::min(start + size, limit);
  if (!dynamic) return end;
  for (int64_t s = (start / group + 1) * group; s < end; s += group)
    if (every_group_start || std::min(s + group, in) > end) return s;
  return end;
}

std::string describe_percdamp(double from, double to) {
  std::ostringstream msg;
  msg << "percdamp raised from " << from << " to " << to << " (the damped Hessian was not positive definite)";
  return msg.str();
}

}  // namespace

at::Tensor gptq_hessian_add(const at::Tensor& hessian, const at::Tensor& x, int64_t nsamples_seen) {
  TORCH_CHECK(hessian.dim() == 2, "gptq_hessian_add: hessian must be [in, in], got shape ", hessian.sizes());
  check_hessian(hessian, hessian.size(0), "gptq_hessian_add");
  return hessian_update(hessian, x, nsamples_seen, /*in_place=*/false);
}

GptqHessian::GptqHessian(int64_t in_features, at::ScalarType dtype) {
  TORCH_CHECK(in_features > 0, "GptqHessian: in_features must be positive, got ", in_features);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "GptqHessian: dtype must be float32 or float64, got ",
              dtype);
  hessian_ = at::zeros({in_features, in_features}, at::TensorOptions().dtype(dtype));
}

void GptqHessian::add(const at::Tensor& x) {
  hessian_update(hessian_, x, nsamples_, /*in_place=*/true);
  nsamples_ += x.numel() / hessian_.size(0);
}

double hessian_weighted_error(const at::Tensor& weight, const at::Tensor& approx, const at::Tensor& hessian) {
  TORCH_CHECK(weight.dim() == 2 && approx.sizes() == weight.sizes(),
              "hessian_weighted_error: weight and approx must both be [out, in], got ", weight.sizes(), " and ",
              approx.sizes());
  check_hessian(hessian, weight.size(1), "hessian_weighted_error");
  const at::Tensor d = weight.to(at::kFloat) - approx.to(at::kFloat);
  const at::Tensor dh = d.mm(hessian.to(at::kFloat));
  return (dh * d).sum(at::kDouble).item<double>() / (2.0 * static_cast<double>(weight.size(0)));
}

GptqSolution gptq_solve(const at::Tensor& weight, const at::Tensor& hessian, const QuantSpec& spec,
                        const GptqOptions& options) {
  const auto start_time = std::chrono::steady_clock::now();
  const DtypeInfo& info = dtype_info(spec.dtype);
  const bool sym = spec.sym;
  check_scheme(info, sym);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0,
              "gptq_quantize: weight must be a non-empty [out, in] matrix, got shape ", weight.sizes());
  TORCH_CHECK(weight.is_floating_point() && weight.device().is_cpu(),
              "gptq_quantize: weight must be a float CPU tensor, got ", weight.scalar_type(), " on ", weight.device());
  const int64_t out = weight.size(0), in = weight.size(1);
  check_hessian(hessian, in, "gptq_quantize");
  check_finite(weight, "gptq_quantize: weight");
  check_finite(hessian, "gptq_quantize: hessian");
  TORCH_CHECK(options.percdamp > 0 && std::isfinite(options.percdamp),
              "gptq_quantize: percdamp must be a positive number, got ", options.percdamp);
  TORCH_CHECK(options.block_size > 0, "gptq_quantize: block_size must be positive, got ", options.block_size);
  const int64_t group = effective_group_size(spec.group_size, in);
  const int64_t n_groups = group_count(spec.group_size, in);
  // Parameters fixed before the solve: static groups, or a single group per row (taken from the whole row).
  const bool fixed_params = options.static_groups || n_groups == 1;
  GptqSolution solution;
  std::vector<std::string>& adjustments = solution.adjustments;

  at::Tensor w = weight.to(at::kFloat).clone().contiguous();
  // The Hessian is the largest matrix of the solve (822 MB in fp32 for a 7B down_proj): besides the caller's, one
  // working copy is made, in the order the factorization needs, and factorized and flipped in place.
  at::Tensor diag = hessian.diagonal().clone();
  TORCH_CHECK(diag.ge(0).all().item<bool>(),
              "gptq_quantize: the hessian has a negative diagonal entry; a Hessian 2/n X^T X has none");
  const at::Tensor dead = diag.eq(0);
  const int64_t n_dead = dead.sum().item<int64_t>();
  if (n_dead > 0) {
    // Never active in calibration: the column cannot influence the loss, so it is zeroed and decoupled.
    diag.masked_fill_(dead, 1.0);
    w.masked_fill_(dead.unsqueeze(0), 0.0);
    adjustments.push_back(std::to_string(n_dead) + " dead input columns (zero Hessian diagonal) set to 0");
  }

  at::Tensor fixed_scale, fixed_zero;  // [n_groups, out] of the natural groups
  if (fixed_params) {
    std::vector<at::Tensor> scales, zeros;
    for (int64_t g = 0; g < n_groups; ++g) {
      const QParams p =
          compute_qparams(w.narrow(1, g * group, std::min(group, in - g * group)), info, sym, 1.0, spec.fp16_scales);
      scales.push_back(p.scale);
      if (p.zero.defined()) zeros.push_back(p.zero);
    }
    fixed_scale = at::stack(scales);
    if (!zeros.empty()) fixed_zero = at::stack(zeros);
  }

  at::Tensor perm;  // processing position -> original column (act_order only)
  at::Tensor order = at::arange(in, at::kLong);
  if (options.act_order) {
    perm = std::get<1>(diag.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    order = perm;
    w = w.index_select(1, perm);
  }

  // Damping, then the factor V of H = V V^T with V upper triangular ("reverse Cholesky"): if P H P = L L^T with
  // P the order reversal, V = P L P. GPTQ's usual factor is U = V^-1 (H^-1 = U^T U); with V the same recursion
  // needs no inverse. Column j is quantized from w_j = w0_j + S_j / V[j,j], where S = sum over earlier columns
  // k of (w0_k - q_k) V[k,j] (w0: the weight before the solve). Expanding U = V^-1 gives GPTQ's update exactly.
  // (The same S serves the lazy updates: S of later rows grows by one matmul per block.)
  // The mean as earlier versions took it, over a strided vector (the diagonal of the working matrix): ATen sums a
  // contiguous vector in another order, and its last bit would change every result that depends on the damping.
  at::Tensor strided = at::empty({in, 2}, diag.options()).select(1, 0);
  strided.copy_(diag.index_select(0, order));
  const double mean_diag = strided.mean().item<double>();
  const at::Tensor reversed = order.flip(0);
  const at::Tensor dead_reversed = dead.index_select(0, reversed);
  std::vector<double> damping{options.percdamp * mean_diag};  // added to the diagonal in turn
  double percdamp = options.percdamp;
  at::Tensor v;
  for (int raises = 0;; ++raises) {
    // P H P in processing order, one gather: H[order[n-1-i], order[n-1-j]].
    v = hessian.index({reversed.unsqueeze(1), reversed.unsqueeze(0)}).contiguous();
    at::Tensor v_diagonal = v.diagonal();
    if (n_dead > 0) v_diagonal.masked_fill_(dead_reversed, 1.0);
    for (const double d : damping) v_diagonal.add_(d);
    if (cholesky_lower_(v)) break;
    TORCH_CHECK(raises < kMaxDampRaises, "gptq_quantize: the Hessian [", in, ", ", in,
                "] is not positive definite even with percdamp ", percdamp, "; check the calibration inputs");
    damping.push_back(9.0 * percdamp * mean_diag);
    percdamp *= 10.0;
  }
  flip_square_(v);
  v = v.to(at::kFloat).contiguous();
  if (percdamp != options.percdamp) adjustments.push_back(describe_percdamp(options.percdamp, percdamp));
  const at::Tensor v_diag = v.diagonal().clone();
  TORCH_CHECK(v_diag.gt(0).all().item<bool>() && all_finite(v),
              "gptq_quantize: the Hessian factor is singular or not finite (percdamp ", percdamp, ")");

  const at::Tensor wt = w.t().contiguous();  // w0 [in, out], rows in processing order
  w = at::Tensor();
  at::Tensor st = at::zeros({in, out}, at::kFloat);  // S of the comment above, one row per input column
  at::Tensor qt = at::empty({in, out}, at::kInt);
  at::Tensor dqt = at::empty({in, out}, at::kFloat);
  const int64_t block = options.block_size;
  at::Tensor res = at::empty({std::min(block, in), out}, at::kFloat);  // w0 - q of the current block
  std::vector<at::Tensor> group_scale(n_groups), group_zero(n_groups);
  at::Tensor scale, zero;
  const int64_t* perm_p = perm.defined() ? perm.data_ptr<int64_t>() : nullptr;
  float* st_p = st.data_ptr<float>();
  const float* v_p = v.data_ptr<float>();
  float* res_p = res.data_ptr<float>();
  // GPTQ's weights of columns [j, j + len) once columns < j are quantized: w0 + S U_GG, where U_GG is the
  // len x len diagonal block of U = V^-1 (the inverse of V's block), because the trailing block of U is the
  // inverse of the trailing block of V. For a single column this is w0_j + S_j / V[j,j].
  auto group_weights = [&](int64_t j, int64_t len) {
    const at::Tensor v_gg = v.narrow(0, j, len).narrow(1, j, len);
    const at::Tensor u_gg = at::linalg_solve_triangular(v_gg, at::eye(len, v.options()), /*upper=*/true);
    return at::addmm(wt.narrow(0, j, len), u_gg.t(), st.narrow(0, j, len));
  };

  for (int64_t i1 = 0, i2; i1 < in; i1 = i2) {
    i2 = block_end(i1, block, in, in, group, !fixed_params, false);
    for (int64_t p1 = i1, p2; p1 < i2; p1 = p2) {
      p2 = block_end(p1, kPanel, i2, in, group, !fixed_params, true);
      for (int64_t j = p1; j < p2; ++j) {
        if (fixed_params) {
          const int64_t g = (perm_p ? perm_p[j] : j) / group;
          scale = fixed_scale[g];
          if (fixed_zero.defined()) zero = fixed_zero[g];
        } else if (j % group == 0) {
          // The group's rows of S are complete up to column j here (block_end), as GPTQ requires.
          const QParams p =
              compute_qparams(group_weights(j, std::min(group, in - j)).t(), info, sym, 1.0, spec.fp16_scales);
          scale = group_scale[j / group] = p.scale;
          zero = group_zero[j / group] = p.zero;
        }
        const at::Tensor col = (wt[j] + st[j] / v_diag[j]).view({out, 1});
        const at::Tensor q = quantize_rows(col, scale, zero, info, sym);
        const at::Tensor dq = dequantize_rows(q, scale, zero, info, sym).contiguous();
        qt[j].copy_(q.view({out}));
        dqt[j].copy_(dq.view({out}));
        // r_j = w0_j - q_j, then S_r += V[j,r] r_j for the rest of the panel.
        const float* w0j = wt.data_ptr<float>() + j * out;
        const float* dqj = dq.data_ptr<float>();
        float* rj = res_p + (j - i1) * out;
        const float* vrow = v_p + j * in;
        // Serial on purpose: a few hundred KB per column, and a parallel region per column costs more than it
        // saves (badly so when the machine is oversubscribed).
        for (int64_t o = 0; o < out; ++o) rj[o] = w0j[o] - dqj[o];
        for (int64_t r = j + 1; r < p2; ++r) {
          const float vr = vrow[r];
          float* sr = st_p + r * out;
          for (int64_t o = 0; o < out; ++o) sr[o] += vr * rj[o];
        }
      }
      if (p2 < i2)
        st.narrow(0, p2, i2 - p2)
            .addmm_(v.narrow(0, p1, p2 - p1).narrow(1, p2, i2 - p2).t(), res.narrow(0, p1 - i1, p2 - p1));
    }
    if (i2 < in)
      st.narrow(0, i2, in - i2)
          .addmm_(v.narrow(0, i1, i2 - i1).narrow(1, i2, in - i2).t(), res.narrow(0, 0, i2 - i1));
  }

  // Back to [out, in] in the original column order.
  GroupwiseQ& result = solution.q;
  if (perm.defined()) {
    const at::Tensor inverse = at::empty_like(perm).scatter_(0, perm, at::arange(in, perm.options()));
    result.q = qt.index_select(0, inverse).t().contiguous();
    solution.dequantized = dqt.index_select(0, inverse).t().contiguous();
    if (!fixed_params) {
      const at::Tensor natural = at::arange(in, perm.options()).div(group, "floor");
      const at::Tensor assigned = natural.index_select(0, inverse);
      // Unchanged order (e.g. equal Hessian diagonal) needs no g_idx.
      if (!assigned.equal(natural)) solution.g_idx = assigned.to(at::kInt);
    }
  } else {
    result.q = qt.t().contiguous();
    solution.dequantized = dqt.t().contiguous();
  }
  if (fixed_params) {
    result.scales = fixed_scale.t().contiguous();
    if (fixed_zero.defined()) result.zeros = fixed_zero.t().contiguous();
  } else {
    result.scales = at::stack(group_scale, 1);
    if (!sym) result.zeros = at::stack(group_zero, 1);
  }
  solution.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return solution;
}

PackedWeightPtr gptq_quantize(const at::Tensor& weight, const at::Tensor& hessian, const QuantSpec& spec,
                              const GptqOptions& options, LayerReport* report) {
  const auto start_time = std::chrono::steady_clock::now();
  const GptqSolution solution = gptq_solve(weight, hessian, spec, options);
  const GroupwiseQ& gq = solution.q;
  PackedWeightPtr packed =
      PackedWeight::pack(gq.q, gq.scales, spec.sym ? c10::nullopt : c10::optional<at::Tensor>(gq.zeros), spec.dtype,
                         spec.group_size,
                         solution.g_idx.defined() ? c10::optional<at::Tensor>(solution.g_idx) : c10::nullopt);
  if (report) {
    report->algorithm = "gptq";
    report->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
    const at::Tensor wf = weight.to(at::kFloat);
    const DtypeInfo& info = dtype_info(spec.dtype);
    report->weight_mse = (solution.dequantized - wf).pow(2).mean().item<double>();
    report->output_mse = hessian_weighted_error(wf, solution.dequantized, hessian);
    const GroupwiseQ rtn = quantize_groupwise(wf, info, spec.sym, spec.group_size, 1.0, spec.fp16_scales);
    report->baseline_output_mse =
        hessian_weighted_error(wf, dequantize_groupwise(rtn, info, spec.sym, spec.group_size), hessian);
    report->adjustments.insert(report->adjustments.end(), solution.adjustments.begin(), solution.adjustments.end());
  }
  return packed;
}

}  // namespace lwq
