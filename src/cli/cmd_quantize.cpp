// `lwq quantize`: parse options into a QuantizeConfig, run the pipeline, print a summary.
#include <ATen/Parallel.h>

#include <iostream>
#include <string>
#include <vector>

#include "args.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq quantize --model M.pt [--weights W] --algo rtn [options] --out Q.pt\n"
    "\n"
    "Quantizes every linear layer of the TorchScript model M.pt one at a time and writes Q.pt, whose layers call\n"
    "lwq::woq_linear on packed weights (load it after torch.ops.load_library(\"liblwq_ops.so\")).\n"
    "\n"
    "  --model M.pt         TorchScript archive; its parameters may be empty (meta)\n"
    "  --weights W          safetensors file, or a directory of shards with model.safetensors.index.json;\n"
    "                       tensors named by qualified parameter name; they win over values in the archive\n"
    "  --algo rtn           round to nearest (the only algorithm of the layer-wise pipeline so far)\n"
    "  --mse-search         RTN: per-group clip-ratio search minimising the weight error\n"
    "  --dtype D            int8, int4 (default), int4_fullrange, int3, int2, nf4, fp4_e2m1\n"
    "  --group-size G       input columns per group, -1 for one group per output channel (default 128)\n"
    "  --sym | --asym       symmetric (default) or asymmetric with zero points\n"
    "  --exclude REGEX      layers whose qualified name matches stay float (repeatable); replaces the default,\n"
    "                       which keeps the output head float: (^|\\.)(lm_head|output)$\n"
    "  --no-default-exclude quantize the output head too\n"
    "  --out Q.pt           output archive, written atomically; must differ from the inputs\n"
    "  --report R.json      per-layer report (shape, dtype, group size, weight MSE, seconds) and totals\n"
    "  --threads N          intra-op threads (default: libtorch's default)\n"
    "  --quiet              no per-layer progress on stderr\n";

}  // namespace

int run_quantize(Args args) {
  lwq::pipeline::QuantizeConfig config;
  std::vector<std::string> exclude;
  bool default_exclude = true;
  bool algo_given = false;
  int64_t threads = 0;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kUsage;
      return 0;
    } else if (a == "--model") {
      config.model_path = args.value();
    } else if (a == "--weights") {
      config.weights_path = args.value();
    } else if (a == "--algo") {
      config.algorithm = args.value();
      algo_given = true;
    } else if (a == "--mse-search") {
      config.mse_search = true;
    } else if (a == "--dtype") {
      config.spec.dtype = args.value();
    } else if (a == "--group-size") {
      config.spec.group_size = args.int_value();
    } else if (a == "--sym") {
      config.spec.sym = true;
    } else if (a == "--asym") {
      config.spec.sym = false;
    } else if (a == "--exclude") {
      exclude.push_back(args.value());
    } else if (a == "--no-default-exclude") {
      default_exclude = false;
    } else if (a == "--out") {
      config.out_path = args.value();
    } else if (a == "--report") {
      config.report_path = args.value();
    } else if (a == "--threads") {
      threads = args.int_value();
      if (threads < 1) throw UsageError("--threads must be at least 1");
    } else if (a == "--quiet") {
      config.quiet = true;
    } else {
      throw UsageError("quantize: unknown argument '" + a + "'");
    }
  }
  if (config.model_path.empty()) throw UsageError("quantize: --model is required");
  if (config.out_path.empty()) throw UsageError("quantize: --out is required");
  if (!algo_given) throw UsageError("quantize: --algo is required (rtn)");
  config.exclude = exclude;
  if (exclude.empty() && default_exclude) config.exclude = {lwq::pipeline::kDefaultExclude};
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));

  const lwq::pipeline::QuantizeResult result = lwq::pipeline::quantize_model(config);
  if (!config.quiet) {
    std::cerr << "wrote " << config.out_path << ": " << result.quantized.size() << " layers quantized ("
              << result.float_bytes << " float bytes -> " << result.packed_bytes << " packed bytes), "
              << result.kept_float.size() << " kept float, " << result.seconds << " s, peak RSS "
              << result.peak_rss_bytes / (1024 * 1024) << " MiB" << std::endl;
  }
  return 0;
}

}  // namespace cli
}  // namespace lwq
