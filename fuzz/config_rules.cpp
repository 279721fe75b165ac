// Fuzz target: a `lwq quantize --config` rules file (JSON: algorithm, dtype, group_size, sym, include, exclude,
// per-layer rules with regexes), loaded and then applied to a few layer names.
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>

#include "fuzz_input.h"
#include "lwq/pipeline/quantize.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lwq::fuzz::write_input("rules.json", data, size);
  try {
    lwq::pipeline::QuantizeConfig config;
    lwq::pipeline::load_config_file(path, config);
    for (const char* layer : {"layers.0.self_attn.q_proj", "model.layers.31.mlp.down_proj", "lm_head", ""}) {
      lwq::pipeline::plan_for(config, layer);
    }
  } catch (const std::exception& e) {
    lwq::fuzz::refused(e);  // refused rules: fine
  }
  return 0;
}
