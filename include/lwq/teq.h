// TEQ (Intel's trainable equivalent transformation) for a linear or a group of linears sharing one input:
// per-input-channel scales s (init 1) trained with Adam so that (x / s) Q(W diag(s))^T matches x W^T on the
// calibration inputs. Q is the group-wise RTN of qscheme.h with a straight-through estimator for the rounding
// (w + (Q(w) - w).detach()); s is clamped to >= 1e-5 as in Intel Neural Compressor.
//
// Defaults follow INC 2.x (1000 steps, lr 1e-3, Adam betas (0.9, 0.9), linear schedule with 5 % warm-up). INC
// trains on the model's loss end to end; here the loss is the layer group's output MSE on calibration rows,
// sampled in mini-batches from a seeded generator (deterministic for a given seed).
// The full-calibration error is measured at s = 1 (plain RTN), every eval_every steps and at the end; the best
// scales seen are returned, so the result is never worse than RTN on the calibration data.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "lwq/common.h"
#include "ops.h"

namespace lwq {

struct TeqOptions {
  QuantSpec spec;
  int64_t steps = 1000;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.9;
  double warmup_ratio = 0.05;
  int64_t batch_size = 64;   // calibration rows per step (all rows when there are fewer)
  int64_t eval_every = 100;  // full-calibration checks for the best scales; 0: only at the start and the end
  uint64_t seed = 0;         // batch sampling
  // Divide the scales by their geometric mean in the forward pass (not in INC): a common factor is a no-op
  // after quantization, but the straight-through gradient drifts all scales upwards along it.
  bool normalise_scales = true;
};

struct TeqResult {
  at::Tensor scales;                    // fp32 [in]: inputs are divided by it, weight columns multiplied
  int64_t best_step = 0;                // steps trained when the returned scales were measured (0: s = 1)
  std::vector<PackedWeightPtr> packed;  // one per linear: Q(W_i diag(s))
  // One per linear; weight_mse compares W_i with dequant(Q) / s; seconds is the time of the whole group.
  std::vector<LayerReport> reports;
};

TeqResult teq_quantize(const at::Tensor& x, const std::vector<at::Tensor>& weights, const TeqOptions& options = {},
                       const std::vector<std::string>& names = {});

}  // namespace lwq
