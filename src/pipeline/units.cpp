#include "units.h"

#include <malloc.h>

#include <algorithm>

namespace lwq {
namespace pipeline {

Units::Units(ResumeState& state, io::PackedSpill* spill, Progress& progress,
             std::map<std::string, model::PackedLinear>& packed, QuantizeResult& result)
    : state_(state), spill_(spill), progress_(progress), packed_(packed), result_(result) {
  progress_.skip(state_.done());
}

std::map<std::string, at::Tensor> Units::restore(int64_t k) {
  UnitState unit = state_.load_unit(k);
  for (auto& p : unit.packed) {
    if (spill_) p.second.weight = spill_->spill(p.second.weight);
    packed_.insert(p);
  }
  result_.quantized.insert(result_.quantized.end(), unit.layers.begin(), unit.layers.end());
  result_.folds.insert(result_.folds.end(), unit.folds.begin(), unit.folds.end());
  return unit.params;
}

void Units::record(int64_t k, UnitState unit, const std::string& detail, size_t samples,
                   const ResumeState::ActivationSource& activation) {
  for (const auto& q : unit.layers) unit.packed[q.name] = packed_.at(q.name);
  state_.save_unit(k, unit, samples, activation);
  // Spilled after the resume state is written from the heap copy: written from the mapping, every spilled page
  // would stay resident and the RSS would grow by the codes of each unit.
  if (spill_) {
    for (const auto& q : unit.layers) packed_[q.name].weight = spill_->spill(packed_[q.name].weight);
  }
  // The unit's temporaries below glibc's mmap threshold (up to 32 MiB once large blocks were freed) leave free
  // pages between the packed scales that stay: without this, about 15 MiB of freed heap per Llama-7B block stays
  // resident (measured: docs/benchmarks.md, layer-wise RTN peak memory).
  malloc_trim(0);
  sample_memory(result_);
  progress_.done(k, detail);
}

void sample_memory(QuantizeResult& result) {
  result.peak_rss_anon_bytes = std::max(result.peak_rss_anon_bytes, proc_status_bytes("RssAnon"));
}

}  // namespace pipeline
}  // namespace lwq
