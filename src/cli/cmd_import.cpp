// `lwq import`: build a runnable quantized TorchScript archive from a GPTQ checkpoint or an lwq safetensors export.
#include <iostream>
#include <string>

#include "args.h"
#include "lwq/interop/checkpoint.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq import --format gptq|safetensors CHECKPOINT --model M.pt --out Q.pt [options]\n"
    "\n"
    "Fills the float TorchScript model M.pt (its parameters may be empty, meta) with the tensors of CHECKPOINT,\n"
    "installs a packed weight in every linear layer the checkpoint quantizes, and writes Q.pt atomically\n"
    "(docs/interop.md). Load Q.pt after torch.ops.load_library(\"liblwq_ops.so\").\n"
    "\n"
    "  --format gptq         CHECKPOINT is a GPTQ directory: quantize_config.json and model.safetensors (or one\n"
    "                        other .safetensors file, or shards with model.safetensors.index.json)\n"
    "  --format safetensors  CHECKPOINT is a file written by `lwq export --format safetensors`\n"
    "  --model M.pt          the float model; its linear layers are matched by name (<layer>.qweight, ...)\n"
    "  --out Q.pt            output archive; must differ from the inputs\n"
    "  --rename FROM=TO      checkpoint names starting with FROM are read as TO + the rest (repeatable; the first\n"
    "                        matching rule applies), e.g. --rename model.= for Hugging Face prefixes\n"
    "  --quiet               no summary on stderr\n";

}  // namespace

int run_import(Args args) {
  lwq::interop::ImportConfig config;
  bool format_given = false, quiet = false;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kUsage;
      return 0;
    } else if (a == "--format") {
      const std::string f = args.value();
      if (f != "gptq" && f != "safetensors") throw UsageError("import: --format must be gptq or safetensors, got '" + f + "'");
      config.format = lwq::interop::parse_checkpoint_format(f);
      format_given = true;
    } else if (a == "--model") {
      config.model_path = args.value();
    } else if (a == "--out") {
      config.out_path = args.value();
    } else if (a == "--rename") {
      const std::string rule = args.value();
      const size_t eq = rule.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("import: --rename needs FROM=TO, got '" + rule + "'");
      config.name_map.emplace_back(rule.substr(0, eq), rule.substr(eq + 1));
    } else if (a == "--quiet") {
      quiet = true;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("import: unknown option '" + a + "'");
    } else {
      if (!config.checkpoint_path.empty())
        throw UsageError("import: one checkpoint at a time, got '" + config.checkpoint_path + "' and '" + a + "'");
      config.checkpoint_path = a;
    }
  }
  if (!format_given) throw UsageError("import: --format is required (gptq or safetensors)");
  if (config.checkpoint_path.empty()) throw UsageError("import: no checkpoint given");
  if (config.model_path.empty()) throw UsageError("import: --model is required");
  if (config.out_path.empty()) throw UsageError("import: --out is required");

  const lwq::interop::ImportResult r = lwq::interop::import_checkpoint(config);
  if (!quiet) {
    std::cerr << "wrote " << config.out_path << ": " << r.quantized_layers << " quantized layers, "
              << r.params_from_checkpoint << " parameters from the checkpoint, " << r.params_from_model
              << " kept from the model" << std::endl;
    if (!r.unused.empty()) {
      std::cerr << "warning: " << r.unused.size() << " checkpoint tensor(s) matched nothing in the model:";
      for (size_t i = 0; i < r.unused.size() && i < 5; ++i) std::cerr << " " << r.unused[i];
      std::cerr << (r.unused.size() > 5 ? " ..." : "") << std::endl;
    }
  }
  return 0;
}

}  // namespace cli
}  // namespace lwq
