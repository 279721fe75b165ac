// `lwq import`: build a runnable quantized TorchScript archive from a GPTQ checkpoint or an lwq safetensors export.
#include <iostream>
#include <memory>
#include <string>

#include "cli.h"
#include "lwq/interop/checkpoint.h"

namespace lwq {
namespace cli {

namespace {

const char* kDescription =
    "Fills the float TorchScript model M.pt (its parameters may be empty, meta) with the tensors of CHECKPOINT,\n"
    "installs a packed weight in every linear layer the checkpoint quantizes, and writes Q.pt atomically\n"
    "(docs/interop.md). Load Q.pt after torch.ops.load_library(\"liblwq_ops.so\").";

struct Import {
  interop::ImportConfig config;
  std::string format;
  std::vector<std::string> renames;
  bool quiet = false;
};

int run(Import& i) {
  interop::ImportConfig& config = i.config;
  config.format = interop::parse_checkpoint_format(i.format);
  for (const std::string& rule : i.renames) {
    const size_t eq = rule.find('=');
    config.name_map.emplace_back(rule.substr(0, eq), rule.substr(eq + 1));
  }
  const interop::ImportResult r = interop::import_checkpoint(config);
  if (!i.quiet) {
    std::cerr << "wrote " << config.out_path << ": " << r.quantized_layers << " quantized layers, "
              << r.params_from_checkpoint << " parameters from the checkpoint, " << r.params_from_model
              << " kept from the model" << std::endl;
    if (!r.unused.empty()) {
      std::cerr << "warning: " << r.unused.size() << " checkpoint tensor(s) matched nothing in the model:";
      for (size_t k = 0; k < r.unused.size() && k < 5; ++k) std::cerr << " " << r.unused[k];
      std::cerr << (r.unused.size() > 5 ? " ..." : "") << std::endl;
    }
  }
  return 0;
}

}  // namespace

Command add_import(CLI::App& lwq) {
  auto i = std::make_shared<Import>();
  interop::ImportConfig& c = i->config;
  CLI::App* app =
      add_command(lwq, "import", "build a quantized TorchScript model from a GPTQ or lwq safetensors checkpoint",
                  "--format " + join(kCheckpointFormats, "|") + " CHECKPOINT --model M.pt --out Q.pt [options]",
                  kDescription);
  add_format_option(*app, i->format,
                    "gptq: CHECKPOINT is a GPTQ directory: quantize_config.json and model.safetensors (or\n"
                    "one other .safetensors file, or shards with model.safetensors.index.json).\n"
                    "safetensors: CHECKPOINT is a file written by `lwq export --format safetensors`");
  app->add_option("checkpoint,--checkpoint", c.checkpoint_path, "the checkpoint to read")
      ->type_name("CHECKPOINT")
      ->required();
  app->add_option("--model", c.model_path, "the float model; its linear layers are matched by name (<layer>.qweight, ...)")
      ->type_name("M.pt")
      ->required();
  app->add_option("--out", c.out_path, "output archive; must differ from the inputs")->type_name("Q.pt")->required();
  app->add_option("--rename", i->renames,
                  "checkpoint names starting with FROM are read as TO + the rest (repeatable; the first\n"
                  "matching rule applies), e.g. --rename model.= for Hugging Face prefixes")
      ->type_name("FROM=TO")
      ->check(CLI::Validator(
          [](std::string& rule) -> std::string {
            const size_t eq = rule.find('=');
            return eq == std::string::npos || eq == 0 ? "needs FROM=TO, got '" + rule + "'" : "";
          },
          ""));
  app->add_flag("--quiet", i->quiet, "no summary on stderr");
  return {app, [i] { return run(*i); }};
}

}  // namespace cli
}  // namespace lwq
