// Whole-model checkpoint interchange (docs/interop.md):
//
//   gptq         a directory in the GPTQ layout that AutoGPTQ, optimum and vLLM read: model.safetensors (per
//                quantized linear <name>.qweight/.qzeros/.scales/.g_idx, every other parameter and buffer under its
//                own name) and quantize_config.json (bits, group_size, desc_act, sym, ...).
//   safetensors  one .safetensors file holding each PackedWeight's serialized state (<name>.qweight uint8 in lwq's
//                packed layout, .scales, .zeros, .g_idx), unfolded input scales (<name>.input_scale) and the other
//                tensors, with the layer metadata as JSON in the header (dtype, shape, group size, and how the
//                layer is called: int8 activations, W8A8 activation parameters): data only, readable without
//                pickle or TorchScript. Every lwq model exports to it.
//
// Export reads a quantized TorchScript archive (as `lwq quantize` writes it); import fills a float (possibly
// empty, meta) TorchScript model with a checkpoint's tensors, installs the packed layers and saves a runnable
// archive. Outputs are written atomically; errors name the file, tensor or layer.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "lwq/interop/gptq.h"
#include "lwq/io/safetensors.h"

namespace lwq {
namespace interop {

enum class CheckpointFormat { Gptq, Safetensors };
CheckpointFormat parse_checkpoint_format(const std::string& name);  // "gptq" | "safetensors"

// File names inside a GPTQ checkpoint directory.
constexpr const char* kGptqWeightsFile = "model.safetensors";
constexpr const char* kGptqConfigFile = "quantize_config.json";

struct ExportConfig {
  CheckpointFormat format = CheckpointFormat::Gptq;
  std::string model_path;  // quantized TorchScript archive
  std::string out_path;    // gptq: a directory (created; may hold only a previous export); safetensors: a file
  // gptq only:
  GptqZeroFormat zero_format = GptqZeroFormat::V1;
  bool round_scales = false;  // accept float16 rounding of scales that are not float16-exact
};

struct ExportResult {
  int64_t quantized_layers = 0;
  int64_t other_tensors = 0;  // parameters and buffers written under their own names
  GptqScheme scheme;          // gptq: what quantize_config.json says
  ScaleRounding rounding;     // gptq: scales changed by the float16 conversion (only with round_scales)
  int64_t int8_activation_layers = 0;  // gptq: layers that ran with int8 activations (their weights are exported)
  std::vector<std::string> files;  // written, in order
};

// Throws (nothing written) when a layer cannot be exported to gptq: a dtype the format cannot express, layers that
// disagree on bits / group size (quantize_config.json has one of each), static W8A8 layers or layers with an input
// scale (GPTQ checkpoints hold weight-only linears), or any refusal of to_gptq.
ExportResult export_checkpoint(const ExportConfig& config);

struct ImportConfig {
  CheckpointFormat format = CheckpointFormat::Gptq;
  std::string checkpoint_path;  // gptq: the directory (or its .safetensors file); safetensors: the file
  std::string model_path;       // float TorchScript model; its parameters may be empty (meta)
  std::string out_path;         // quantized archive, written atomically
  io::NameMap name_map;         // checkpoint names -> model names (prefix rules, see io::WeightStore)
};

struct ImportResult {
  int64_t quantized_layers = 0;
  int64_t params_from_checkpoint = 0;  // float parameters and buffers filled from the checkpoint
  int64_t params_from_model = 0;       // kept with the values the model archive holds
  std::vector<std::string> unused;     // checkpoint tensors no parameter or layer of the model took
};

// What quantize_config.json says: the model-wide scheme and, when lwq wrote it, each layer's lwq dtype.
struct GptqCheckpointConfig {
  GptqScheme scheme;
  std::map<std::string, std::string> dtypes;  // layer prefix -> lwq dtype (e.g. int4_fullrange)
};
// Reads quantize_config.json of a GPTQ checkpoint directory (or of the directory of its .safetensors file);
// throws naming the file for a missing file, bad JSON, quant_method other than gptq, bits or group size lwq cannot
// read.
GptqCheckpointConfig read_gptq_config(const std::string& checkpoint_path);

// Every quantized layer of the checkpoint must be a quantizable linear of the model with the same shape, and every
// parameter that the model archive leaves empty must be in the checkpoint; otherwise throws naming it.
ImportResult import_checkpoint(const ImportConfig& config);

}  // namespace interop
}  // namespace lwq
