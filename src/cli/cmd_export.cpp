// `lwq export`: write a quantized TorchScript archive's weights as a GPTQ checkpoint or a plain safetensors file.
#include <iostream>
#include <string>

#include "args.h"
#include "lwq/interop/checkpoint.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq export --format gptq|safetensors Q.pt OUT [options]\n"
    "\n"
    "Writes the packed layers of the quantized TorchScript archive Q.pt (from `lwq quantize` or `lwq import`)\n"
    "and all its other parameters and buffers as data, without TorchScript code (docs/interop.md):\n"
    "\n"
    "  --format gptq         OUT is a directory: model.safetensors in the GPTQ layout (int32 qweight/qzeros,\n"
    "                        float16 scales, int32 g_idx per layer) and quantize_config.json, as AutoGPTQ,\n"
    "                        optimum and vLLM read them; int8/int4/int3/int2 layers that share one group size\n"
    "  --format safetensors  OUT is one .safetensors file: each packed weight's exact state plus JSON metadata\n"
    "\n"
    "gptq options:\n"
    "  --checkpoint-format F gptq (default: v1, zero points stored minus one, what vLLM and AutoGPTQ read) or\n"
    "                        gptq_v2 (zero points stored as they are; needed when a zero point is 0)\n"
    "  --round-scales        accept rounding scales that float16 does not hold exactly (GPTQ stores float16\n"
    "                        scales; without this option such scales are refused, so the export is exact)\n"
    "  --quiet               no summary on stderr\n";

}  // namespace

int run_export(Args args) {
  lwq::interop::ExportConfig config;
  bool format_given = false, quiet = false;
  std::string positional[2];
  int n_positional = 0;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kUsage;
      return 0;
    } else if (a == "--format") {
      const std::string f = args.value();
      if (f != "gptq" && f != "safetensors") throw UsageError("export: --format must be gptq or safetensors, got '" + f + "'");
      config.format = lwq::interop::parse_checkpoint_format(f);
      format_given = true;
    } else if (a == "--checkpoint-format") {
      const std::string f = args.value();
      if (f != "gptq" && f != "gptq_v2")
        throw UsageError("export: --checkpoint-format must be gptq or gptq_v2, got '" + f + "'");
      config.zero_format = lwq::interop::parse_gptq_zero_format(f);
    } else if (a == "--round-scales") {
      config.round_scales = true;
    } else if (a == "--quiet") {
      quiet = true;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("export: unknown option '" + a + "'");
    } else {
      if (n_positional == 2) throw UsageError("export: expected Q.pt and OUT, got a third argument '" + a + "'");
      positional[n_positional++] = a;
    }
  }
  if (!format_given) throw UsageError("export: --format is required (gptq or safetensors)");
  if (n_positional != 2) throw UsageError("export: expected the quantized model Q.pt and the output OUT");
  if (config.format != lwq::interop::CheckpointFormat::Gptq &&
      (config.round_scales || config.zero_format != lwq::interop::GptqZeroFormat::V1))
    throw UsageError("export: --round-scales and --checkpoint-format apply to --format gptq only");
  config.model_path = positional[0];
  config.out_path = positional[1];

  const lwq::interop::ExportResult r = lwq::interop::export_checkpoint(config);
  if (!quiet) {
    std::cerr << "wrote";
    for (const auto& f : r.files) std::cerr << " " << f;
    std::cerr << ": " << r.quantized_layers << " quantized layers, " << r.other_tensors << " other tensors";
    if (config.format == lwq::interop::CheckpointFormat::Gptq) {
      std::cerr << " (bits " << r.scheme.bits << ", group_size " << r.scheme.group_size << ", "
                << (r.scheme.sym ? "sym" : "asym") << (r.scheme.desc_act ? ", desc_act" : "") << ")";
      if (r.rounding.inexact) {
        std::cerr << "; " << r.rounding.inexact << " of " << r.rounding.total
                  << " scales rounded to float16 (largest relative change " << r.rounding.max_relative_change << ")";
      }
    }
    std::cerr << std::endl;
  }
  return 0;
}

}  // namespace cli
}  // namespace lwq
