// Internal to the pipeline: the life of one unit of work (one linear for RTN, one block for calibrated runs)
// around its computation, the same for every algorithm. A unit finished by an earlier run is restored from the
// resume state; a new one is recorded there from the heap copy of its packed weights, which are then spilled
// (layer-wise runs), the heap trimmed, the memory sampled and the progress reported.
#pragma once

#include <map>
#include <string>

#include "lwq/io/packed_spill.h"
#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"
#include "progress.h"
#include "resume.h"

namespace lwq {
namespace pipeline {

// Samples the anonymous (heap) resident memory into result.peak_rss_anon_bytes.
void sample_memory(QuantizeResult& result);

class Units {
 public:
  // `packed` and `result` collect every unit's packed linears and report entries; `spill` may be null (in-memory).
  Units(ResumeState& state, io::PackedSpill* spill, Progress& progress,
        std::map<std::string, model::PackedLinear>& packed, QuantizeResult& result);

  bool finished(int64_t k) const { return k < state_.done(); }
  // Restores unit k: its packed linears (spilled) into `packed`, its report entries and folds into `result`;
  // returns the float parameters it set.
  std::map<std::string, at::Tensor> restore(int64_t k);
  // Records unit k, whose packed linears are already in `packed` and whose entries are in `result`:
  // unit.packed is filled from `packed` for the layers of unit.layers.
  void record(int64_t k, UnitState unit, const std::string& detail, size_t samples = 0,
              const ResumeState::ActivationSource& activation = {});

 private:
  ResumeState& state_;
  io::PackedSpill* spill_;
  Progress& progress_;
  std::map<std::string, model::PackedLinear>& packed_;
  QuantizeResult& result_;
};

}  // namespace pipeline
}  // namespace lwq
