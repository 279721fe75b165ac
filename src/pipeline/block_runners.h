// Internal to the pipeline: the per-algorithm work on one block (block_run.h), given its cached inputs. Each adds
// the block's packed linears to `packed` and their report entries (and, for scaled methods, how the scales were
// applied) to `result`.
#pragma once

#include <map>
#include <string>

#include "block_run.h"
#include "calibration.h"
#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

// GPTQ: Hessians of every linear on the first pass; with true_sequential each later group is observed again
// after the groups before it were quantized (their dequantized weights set in the clone).
void run_gptq(const QuantizeConfig& config, BlockRun& run, const ActivationCache& args,
              std::map<std::string, model::PackedLinear>& packed, QuantizeResult& result);

// AWQ, TEQ and W8A8: one observation pass keeping each group's inputs, then the groups from last to first, each
// group's scales folded into its producer (which belongs to an earlier group and is still float) where the graph
// allows, else multiplied into the input at run time.
void run_scaled(const QuantizeConfig& config, BlockRun& run, const ActivationCache& args,
                std::map<std::string, model::PackedLinear>& packed, QuantizeResult& result);

}  // namespace pipeline
}  // namespace lwq
