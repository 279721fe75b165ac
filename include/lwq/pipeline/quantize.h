// The layer-wise driver: quantize the linear layers of a TorchScript archive one at a time, reading each float
// weight from a safetensors store (or from the archive when it holds real values), and write the quantized archive.
//
// Memory: the archive may hold only meta (empty) parameters; at any moment one float weight is resident besides
// the packed ones already made and the float parameters that stay in the output (norms, excluded layers).
#pragma once

#include <string>
#include <vector>

#include "lwq/common.h"

namespace lwq {
namespace pipeline {

// Module names left in float by default, as Intel Neural Compressor does (the output head).
constexpr const char* kDefaultExclude = R"((^|\.)(lm_head|output)$)";

struct QuantizeConfig {
  std::string model_path;    // TorchScript archive (.pt)
  std::string weights_path;  // safetensors file or sharded directory; empty: the archive must hold every value
  std::string out_path;      // quantized archive, written atomically
  std::string report_path;   // JSON report; empty: none
  std::string algorithm = "rtn";
  QuantSpec spec;
  bool mse_search = false;  // RTN: per-group clip-ratio search (rtn.h)
  // ECMAScript regexes searched in qualified module names; matching layers stay float.
  std::vector<std::string> exclude = {kDefaultExclude};
  bool quiet = false;  // no per-layer progress on stderr
};

struct QuantizedLayer {
  std::string name;
  std::vector<int64_t> shape;  // [out, in]
  std::string dtype;
  int64_t group_size = 0;
  bool sym = true;
  LayerReport report;
  int64_t float_bytes = 0;   // fp32 size of the weight
  int64_t packed_bytes = 0;  // PackedWeight::nbytes
};

struct FloatLayer {
  std::string name;
  std::vector<int64_t> shape;
  std::string reason;  // "excluded by <regex>" or why it cannot be quantized
};

struct QuantizeResult {
  std::vector<QuantizedLayer> quantized;
  std::vector<FloatLayer> kept_float;
  int64_t params_from_store = 0;    // parameters and buffers filled from the weight store
  int64_t params_from_archive = 0;  // kept with the values the archive holds
  int64_t float_bytes = 0, packed_bytes = 0;  // totals over the quantized layers
  int64_t peak_rss_bytes = 0;                 // VmHWM of the process at the end
  // Resident memory at the end, split: anonymous (heap: tensors) and file-backed (mapped safetensors pages the
  // kernel may drop at will).
  int64_t rss_anon_bytes = 0, rss_file_bytes = 0;
  double seconds = 0;
};

// Runs the whole pipeline. Throws c10::Error naming the file, tensor or layer on any problem; the output path is
// only created (atomically) when everything succeeded.
QuantizeResult quantize_model(const QuantizeConfig& config);

// The report as JSON text (config, per-layer entries, totals).
std::string report_json(const QuantizeConfig& config, const QuantizeResult& result);

// A field of /proc/self/status in bytes ("VmHWM": peak resident set size, "RssAnon", "RssFile"); 0 when unavailable.
int64_t proc_status_bytes(const std::string& field);

}  // namespace pipeline
}  // namespace lwq
