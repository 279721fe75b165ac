// Internal to the pipeline: the calibration data of a calibrated run and the cache of block inputs built from it.
#pragma once

#include <torch/script.h>

#include <string>
#include <vector>

#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

// The arguments of one call of a block (or of the model, before the blocks are reached).
using Args = std::vector<c10::IValue>;

// One row per sample (batch dimension kept: [1, ...]) from --calib-tensors, or windows of --calib text: BOS + each
// paragraph, concatenated, cut into windows of seqlen tokens (the first nsamples). Deterministic, and the same
// protocol for every model, so results are comparable across runs.
// Token ids (integer inputs) outside [0, vocab) are refused naming the sample and position (the text's windows come
// from the tokenizer, whose ids the model may still not have). vocab < 0: unknown, only negative ids are refused.
std::vector<Args> calibration_inputs(const QuantizeConfig& config, int64_t vocab = -1);

// The inputs of the next block, one Args per calibration sample. With --offload-dir the hidden states (the first
// argument: the large one) live in files there and are read back one sample at a time.
class ActivationCache {
 public:
  ActivationCache(std::vector<Args> args, const std::string& offload_dir);
  ~ActivationCache();
  ActivationCache(const ActivationCache&) = delete;
  ActivationCache& operator=(const ActivationCache&) = delete;

  size_t size() const { return args_.size(); }
  Args get(size_t s) const;
  void set_hidden(size_t s, const at::Tensor& h);

 private:
  std::string path(size_t s) const { return dir_ + "/" + std::to_string(s) + ".pt"; }
  std::vector<Args> args_;
  std::string dir_;
};

}  // namespace pipeline
}  // namespace lwq
