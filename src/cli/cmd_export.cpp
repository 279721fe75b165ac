// `lwq export`: write a quantized TorchScript archive's weights as a GPTQ checkpoint or a plain safetensors file.
#include <iostream>
#include <memory>
#include <string>

#include "cli.h"
#include "lwq/interop/checkpoint.h"

namespace lwq {
namespace cli {

namespace {

const char* kDescription =
    "Writes the packed layers of the quantized TorchScript archive Q.pt (from `lwq quantize` or `lwq import`)\n"
    "and all its other parameters and buffers as data, without TorchScript code (docs/interop.md).";

struct Export {
  interop::ExportConfig config;
  std::string format, zero_format = "gptq";
  bool quiet = false;
  CLI::Option* gptq_only[2] = {};
};

int run(Export& e) {
  interop::ExportConfig& config = e.config;
  config.format = interop::parse_checkpoint_format(e.format);
  config.zero_format = interop::parse_gptq_zero_format(e.zero_format);
  for (const CLI::Option* opt : e.gptq_only) {
    if (config.format != interop::CheckpointFormat::Gptq && opt->count())
      throw UsageError(opt->get_name() + " applies to --format gptq only");
  }
  const interop::ExportResult r = interop::export_checkpoint(config);
  if (!e.quiet) {
    std::cerr << "wrote";
    for (const auto& f : r.files) std::cerr << " " << f;
    std::cerr << ": " << r.quantized_layers << " quantized layers, " << r.other_tensors << " other tensors";
    if (config.format == interop::CheckpointFormat::Gptq) {
      std::cerr << " (bits " << r.scheme.bits << ", group_size " << r.scheme.group_size << ", "
                << (r.scheme.sym ? "sym" : "asym") << (r.scheme.desc_act ? ", desc_act" : "") << ")";
      if (r.rounding.inexact) {
        std::cerr << "; " << r.rounding.inexact << " of " << r.rounding.total
                  << " scales rounded to float16 (largest relative change " << r.rounding.max_relative_change << ")";
      }
    }
    std::cerr << std::endl;
    if (r.int8_activation_layers) {
      std::cerr << "note: " << r.int8_activation_layers << " layers ran with int8 activations (--compute int8); a "
                << "GPTQ checkpoint holds their weights only, and they import as exact (float activation) layers "
                << "(--format safetensors keeps the choice)" << std::endl;
    }
  }
  return 0;
}

}  // namespace

Command add_export(CLI::App& lwq) {
  auto e = std::make_shared<Export>();
  interop::ExportConfig& c = e->config;
  CLI::App* app = add_command(lwq, "export", "write a quantized model as a GPTQ checkpoint or a plain safetensors file",
                              "--format " + join(kCheckpointFormats, "|") + " Q.pt OUT [options]", kDescription);
  add_format_option(*app, e->format,
                    "gptq: OUT is a directory: model.safetensors in the GPTQ layout (int32 qweight/qzeros,\n"
                    "float16 scales, int32 g_idx per layer) and quantize_config.json, as AutoGPTQ,\n"
                    "optimum and vLLM read them; int8/int4/int3/int2 layers that share one group size.\n"
                    "safetensors: OUT is one .safetensors file: each packed weight's exact state plus\n"
                    "JSON metadata");
  app->add_option("model,--model", c.model_path, "the quantized archive Q.pt")->type_name("Q.pt")->required();
  app->add_option("out,--out", c.out_path, "the output directory (gptq) or file (safetensors)")
      ->type_name("OUT")
      ->required();
  e->gptq_only[0] = app->add_option("--checkpoint-format", e->zero_format,
                                    "gptq (v1, zero points stored minus one, what vLLM and AutoGPTQ read) or\n"
                                    "gptq_v2 (zero points stored as they are; needed when a zero point is 0)")
                        ->type_name("F")
                        ->check(one_of({"gptq", "gptq_v2"}))
                        ->capture_default_str()
                        ->group("gptq");
  e->gptq_only[1] = app->add_flag("--round-scales", c.round_scales,
                                  "accept rounding scales that float16 does not hold exactly (GPTQ stores\n"
                                  "float16 scales; without this option such scales are refused, so the export\n"
                                  "is exact)")
                        ->group("gptq");
  app->add_flag("--quiet", e->quiet, "no summary on stderr");
  return {app, [e] { return run(*e); }};
}

}  // namespace cli
}  // namespace lwq
