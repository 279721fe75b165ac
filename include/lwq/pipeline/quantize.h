// The layer-wise driver: quantize the linear layers of a TorchScript archive one at a time, reading each float
// weight from a safetensors store (or from the archive when it holds real values), and write the quantized archive.
//
// Memory: the archive may hold only meta (empty) parameters; at any moment one float weight is resident besides
// the packed ones already made and the float parameters that stay in the output (norms, excluded layers).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "lwq/awq.h"
#include "lwq/common.h"
#include "lwq/gptq.h"
#include "lwq/teq.h"

namespace lwq {
namespace pipeline {

// The algorithms of QuantizeConfig::algorithm: rtn one linear at a time, the others calibrated block by block.
constexpr const char* kAlgorithms[] = {"rtn", "gptq", "awq", "teq", "w8a8"};

// The weights of --algo w8a8: int8, one group per output channel, symmetric (what lwq::w8a8_linear takes).
inline const QuantSpec kW8a8Spec{"int8", -1, true};

// Module names left in float by default, as Intel Neural Compressor does (the output head).
constexpr const char* kDefaultExclude = R"((^|\.)(lm_head|output)$)";

// A per-layer rule of the --config file: the first rule whose regex is found in a layer's qualified name gives
// that layer what it sets; the rest comes from the command line.
struct LayerRule {
  std::string match;
  std::optional<std::string> dtype;
  std::optional<int64_t> group_size;
  std::optional<bool> sym;
  std::optional<std::string> algorithm;  // "rtn", or the run's calibrated algorithm
};

struct QuantizeConfig {
  std::string model_path;    // TorchScript archive (.pt)
  std::string weights_path;  // safetensors file or sharded directory; empty: the archive must hold every value
  std::string out_path;      // quantized archive, written atomically
  std::string report_path;   // JSON report; empty: none
  std::string algorithm = "rtn";
  QuantSpec spec;
  bool mse_search = false;  // RTN: per-group clip-ratio search (rtn.h)
  // How the weight-only layers of the output compute: "fp32" (lwq::woq_linear, exact) or "int8" (lwq::woq_linear_a8:
  // x rounded to int8 per 32-column block at run time, the fast decode path; dtypes int8, int4, int4_fullrange).
  std::string compute = "fp32";
  // ECMAScript regexes searched in qualified module names; matching layers stay float.
  std::vector<std::string> exclude = {kDefaultExclude};
  std::vector<std::string> include;  // when set, only layers matching one of these regexes are quantized
  std::vector<LayerRule> rules;
  bool quiet = false;  // no per-layer progress on stderr
  // Continue a killed run from the state kept next to the output (<out>.lwq-resume/) when it was made by the
  // same command; without it any such state is discarded. The result is the same bytes either way.
  bool resume = false;

  // Calibration (gptq, awq, teq, w8a8): block by block on cached activations (blocks.h).
  std::string blocks;             // qualified name of the module list of blocks; empty: detected
  std::string calib_tensors;      // safetensors file with "input_ids" [N, L] (or "inputs" [N, ...] for any model)
  std::string calib_text;         // or: a text file (blank-line separated paragraphs) tokenized with...
  std::string tokenizer_path;     // ... this tokenizer (load_tokenizer): BOS (where used) + each paragraph, cut into
  int64_t seqlen = 256;           //     windows of seqlen tokens, the first nsamples of them (default 64)
  int64_t nsamples = 0;           // calibration rows used (0: all rows of the file; 64 windows of the text)
  bool layer_wise = true;         // false: every weight is loaded first (the in-memory reference mode)
  std::string offload_dir;        // when set, the cached block inputs live in files there, not in memory
  bool true_sequential = true;    // gptq: re-observe each group of linears after the previous ones are quantized
  GptqOptions gptq;
  AwqOptions awq;                 // .spec is ignored (spec above)
  TeqOptions teq;                 // .spec is ignored
  std::string observer = "minmax";     // w8a8: activation observer kind
  std::string act_dtype = "uint8";     // w8a8: "uint8" or "int8"
  double smoothquant_alpha = -1;       // w8a8: SmoothQuant migration strength in [0, 1]; < 0: off
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

// How the per-input-channel scales of a group of linears (AWQ, TEQ, SmoothQuant) were applied.
struct ScaleFoldReport {
  std::vector<std::string> layers;
  std::string applied;  // "norm <param>", "linear <layer>" or "input multiply (<why not folded>)"
};

struct QuantizeResult {
  std::vector<QuantizedLayer> quantized;
  std::vector<FloatLayer> kept_float;
  std::vector<ScaleFoldReport> folds;
  std::string blocks;             // the module list calibrated block by block ("" : none or rtn)
  int64_t block_count = 0;
  int64_t calibration_samples = 0;
  int64_t params_from_store = 0;    // parameters and buffers filled from the weight store
  int64_t params_from_archive = 0;  // kept with the values the archive holds
  int64_t float_bytes = 0, packed_bytes = 0;  // totals over the quantized layers
  int64_t peak_rss_bytes = 0;                 // VmHWM of the process at the end
  // Resident memory at the end, split: anonymous (heap: tensors) and file-backed (mapped safetensors pages the
  // kernel may drop at will).
  int64_t rss_anon_bytes = 0, rss_file_bytes = 0;
  // Largest anonymous (heap) resident size seen after each unit of work and after the save: VmHWM also counts
  // file-backed pages (mapped safetensors, spilled packed weights) the kernel may drop at will.
  int64_t peak_rss_anon_bytes = 0;
  int64_t spilled_bytes = 0;  // packed codes kept in the spill file instead of the heap
  double seconds = 0;
};

// Reads a --config JSON file into `config` (its fields override what config holds):
//   {"algorithm": "gptq", "dtype": "int4", "group_size": 128, "sym": true,
//    "include": ["regex", ...], "exclude": ["regex", ...],
//    "layers": [{"match": "regex", "dtype": "int8", "group_size": -1, "sym": false, "algorithm": "rtn"}, ...]}
// Every field is optional. Unknown keys and wrong types are refused, naming the file and the key.
void load_config_file(const std::string& path, QuantizeConfig& config);

// What one layer gets: the command line's spec and algorithm, then the first matching rule.
struct LayerPlan {
  QuantSpec spec;
  std::string algorithm;
};
LayerPlan plan_for(const QuantizeConfig& config, const std::string& layer);

// Runs the whole pipeline. Throws c10::Error naming the file, tensor or layer on any problem; the output path is
// only created (atomically) when everything succeeded.
QuantizeResult quantize_model(const QuantizeConfig& config);

// The report as JSON text (config, per-layer entries, totals).
std::string report_json(const QuantizeConfig& config, const QuantizeResult& result);

// A field of /proc/self/status in bytes ("VmHWM": peak resident set size, "RssAnon", "RssFile"); 0 when unavailable.
int64_t proc_status_bytes(const std::string& field);

}  // namespace pipeline
}  // namespace lwq
