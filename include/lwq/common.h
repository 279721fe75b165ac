// Types shared by the algorithms of the core library: what to quantize to, and what happened to a layer.
#pragma once

#include <string>
#include <vector>

namespace lwq {

// The target format of a weight (names as in qscheme.h / the PackedWeight dtype strings).
struct QuantSpec {
  std::string dtype = "int4";
  int64_t group_size = 128;  // -1: one group per output channel
  bool sym = true;
  // Scales rounded to float16 before the codes are chosen (the codes are then the nearest for the rounded scale):
  // what GPTQ checkpoints store, so `lwq export --format gptq` needs no rounding after the fact.
  bool fp16_scales = false;
};

// What an algorithm reports for one layer. Errors are means over elements; NaN when not measured.
struct LayerReport {
  std::string algorithm;
  double weight_mse = -1;      // mean (W - dequant(Q))^2
  double output_mse = -1;      // mean squared output error on calibration inputs (Hessian-weighted for GPTQ)
  double baseline_output_mse = -1;  // the same error for plain RTN, when the algorithm measured it
  double seconds = 0;
  std::vector<std::string> adjustments;  // anything changed to make it work (damping raised, dead columns, ...)
};

}  // namespace lwq
