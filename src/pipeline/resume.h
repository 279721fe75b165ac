// Internal to the pipeline: the resume state of a run, kept next to the output (<out>.lwq-resume/) so that a run
// killed at any point and restarted with --resume continues after the last finished unit (a block, or one linear
// for RTN) and gives the same bytes as an uninterrupted run.
//
// Layout: unit-<k>.pt (packed weights, input scales, activation parameters and float parameters set by unit k,
// plus its report entries), activations-<k>-<s>.pt (the next block's inputs after unit k, one file per calibration
// sample, calibrated runs only) and
// state.json ({"fingerprint": {...}, "done": k}), each written atomically, state.json last: a kill between the
// files leaves a state that still points at complete files. The environment variable LWQ_TEST_KILL_AFTER_UNITS=k
// makes the process SIGKILL itself right after unit k-1 is recorded (the kill-and-resume test uses it).
#pragma once

#include <torch/script.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "lwq/model/surgery.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

// What one unit of work produced.
struct UnitState {
  std::map<std::string, model::PackedLinear> packed;  // by qualified layer name
  std::map<std::string, at::Tensor> params;           // float parameters given their final values
  std::vector<QuantizedLayer> layers;
  std::vector<ScaleFoldReport> folds;
};

class ResumeState {
 public:
  // With resume=false any earlier state of this output is discarded. With resume=true a state made with another
  // fingerprint (other inputs or options) is refused, naming the field that differs. The directory is locked for
  // the life of the object: a second run writing the same output is refused, not interleaved. A path in the way
  // (a file, or a directory holding anything but resume state) is refused, never deleted.
  ResumeState(const QuantizeConfig& config, bool resume);
  // A run that ends with an error after finishing units keeps them, whatever failed (a full disk at the final
  // write must not lose hours of calibration), and says so on stderr. Keeping is never wrong: the same command
  // with --resume continues to the bytes of an uninterrupted run, a changed input is refused by the fingerprint,
  // and a run without --resume discards the state. A state with no finished unit is removed.
  ~ResumeState();
  ResumeState(const ResumeState&) = delete;
  ResumeState& operator=(const ResumeState&) = delete;

  int64_t done() const { return done_; }  // units finished by earlier runs
  UnitState load_unit(int64_t k) const;
  std::vector<std::vector<c10::IValue>> load_activations() const;
  // Records unit k (== done()) and, for calibrated runs, the activations after it: `samples` of them, given one
  // at a time by `activation(s)` (so an offloaded cache is never held whole).
  using ActivationSource = std::function<std::vector<c10::IValue>(size_t)>;
  void save_unit(int64_t k, const UnitState& unit, size_t samples = 0, const ActivationSource& activation = {});
  void finish();  // the output is written: the state is no longer needed

 private:
  void open_state(bool resume);  // reads or clears the locked directory

  std::string dir_;
  int lock_fd_ = -1;         // the directory, open and flock'ed
  bool finished_ = false;
  std::string fingerprint_;  // JSON text
  int64_t done_ = 0;
  size_t samples_ = 0;  // activation files of the last unit
};

}  // namespace pipeline
}  // namespace lwq
