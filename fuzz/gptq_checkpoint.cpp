// Fuzz target: a GPTQ checkpoint as `lwq import --format gptq` reads it: quantize_config.json (bits, group_size,
// sym, desc_act, checkpoint_format, lwq's dtype names), then each layer's qweight/qzeros/scales/g_idx from
// model.safetensors converted to a PackedWeight and dequantized. Input framing: u32 length L, L bytes of
// quantize_config.json, the rest model.safetensors (fuzz/make_seeds.py writes valid checkpoints in it).
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>
#include <set>

#include "fuzz_input.h"
#include "lwq/interop/checkpoint.h"
#include "lwq/io/safetensors.h"
#include "packed_weight.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lwq::fuzz::Bytes in(data, size);
  const std::string config = in.take_string(in.take<uint32_t>());
  lwq::fuzz::write_input(lwq::interop::kGptqConfigFile, reinterpret_cast<const uint8_t*>(config.data()),
                         config.size());
  const std::string weights = lwq::fuzz::write_input(lwq::interop::kGptqWeightsFile, in.data(), in.size());
  try {
    const lwq::interop::GptqCheckpointConfig c = lwq::interop::read_gptq_config(lwq::fuzz::scratch_dir());
    const auto file = lwq::io::SafetensorsFile::open(weights);
    std::set<std::string> prefixes;
    const std::string suffix = ".qweight";
    for (const auto& name : file->names()) {
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        prefixes.insert(name.substr(0, name.size() - suffix.size()));
      }
    }
    for (const auto& p : prefixes) {
      try {
        lwq::interop::GptqTensors t;
        t.qweight = file->load_raw(p + ".qweight");
        t.qzeros = file->load_raw(p + ".qzeros");
        t.scales = file->load_raw(p + ".scales");
        if (file->contains(p + ".g_idx")) t.g_idx = file->load_raw(p + ".g_idx");
        const auto it = c.dtypes.find(p);
        const auto w = lwq::interop::from_gptq(t, c.scheme, it == c.dtypes.end() ? "" : it->second, "layer " + p);
        w->dequantize();
      } catch (const std::exception& e) {
        lwq::fuzz::refused(e);  // a refused layer: fine
      }
    }
  } catch (const std::exception& e) {
    lwq::fuzz::refused(e);  // a refused checkpoint: fine
  }
  return 0;
}
