// What a TorchScript archive holds, for `lwq inspect`: its modules, its linear layers (float or packed) and sizes.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace lwq {
namespace model {

struct LinearSummary {
  std::string name;
  std::vector<int64_t> shape;  // [out, in]
  bool quantized = false;
  std::string dtype;  // quantized: weight dtype; float: the tensor's dtype ("meta" when empty)
  int64_t group_size = 0;
  bool sym = true;
  bool act_order = false;
  int64_t bytes = 0;  // packed bytes, or the float weight's bytes (0 for meta)
};

struct ModelSummary {
  std::string path;
  std::vector<std::pair<std::string, std::string>> modules;  // qualified name ("" for the root), class name
  std::vector<LinearSummary> linears;
  int64_t float_param_bytes = 0;  // parameters and buffers holding values
  int64_t meta_params = 0;        // parameters and buffers that are empty (meta)
  int64_t packed_bytes = 0;
};

ModelSummary inspect_model(const std::string& path);
void print_summary(std::ostream& out, const ModelSummary& summary);

}  // namespace model
}  // namespace lwq
