// `lwq quantize`: parse options into a QuantizeConfig, run the pipeline, print a summary.
#include <ATen/Parallel.h>
#include <malloc.h>

#include <iostream>
#include <string>
#include <vector>

#include "args.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq quantize --model M.pt [--weights W] --algo rtn|gptq|awq|teq|w8a8 [options] --out Q.pt\n"
    "\n"
    "Quantizes the linear layers of the TorchScript model M.pt and writes Q.pt, whose layers call lwq::woq_linear\n"
    "(lwq::woq_linear_a8 with --compute int8, lwq::w8a8_linear with --algo w8a8) on packed weights (load it after\n"
    "torch.ops.load_library(\"liblwq_ops.so\")).\n"
    "RTN works one linear at a time. The calibrated algorithms work block by block: the repeated blocks (the\n"
    "longest module list, or --blocks) are read, observed on the cached calibration activations, quantized,\n"
    "and run quantized to give the next block's inputs, so one block of float weights is resident at a time.\n"
    "\n"
    "  --model M.pt         TorchScript archive; its parameters may be empty (meta)\n"
    "  --weights W          safetensors file, or a directory of shards with model.safetensors.index.json;\n"
    "                       tensors named by qualified parameter name; they win over values in the archive\n"
    "  --algo A             rtn (round to nearest), gptq, awq, teq (weight-only, calibrated), or w8a8 (static\n"
    "                       int8 activations and per-channel int8 weights: --dtype int8 --group-size -1)\n"
    "  --mse-search         RTN: per-group clip-ratio search minimising the weight error\n"
    "  --dtype D            int8, int4 (default), int4_fullrange, int3, int2, nf4, fp4_e2m1\n"
    "  --group-size G       input columns per group, -1 for one group per output channel (default 128)\n"
    "  --sym | --asym       symmetric (default) or asymmetric with zero points\n"
    "  --exclude REGEX      layers whose qualified name matches stay float (repeatable); replaces the default,\n"
    "                       which keeps the output head float: (^|\\.)(lm_head|output)$\n"
    "  --no-default-exclude quantize the output head too\n"
    "  --out Q.pt           output archive, written atomically; must differ from the inputs\n"
    "  --compute C          weight-only layers: fp32 (default; exact, lwq::woq_linear) or int8 (lwq::woq_linear_a8:\n"
    "                       the input is rounded to int8 per 32 columns at run time; decoding about 2x faster\n"
    "                       on AVX2-only CPUs, 1.05-1.2x with AVX-512;\n"
    "                       dtypes int8, int4, int4_fullrange)\n"
    "calibration (gptq, awq, teq, w8a8):\n"
    "  --calib-tensors F    safetensors file with input_ids [N, L] (token ids; or inputs [N, ...] for models\n"
    "                       whose forward takes a float tensor); each row is one calibration sample\n"
    "  --calib TEXT         or a text file for language models (forward(input_ids) -> logits): BOS + each\n"
    "                       blank-line separated paragraph, concatenated, cut into windows of --seqlen tokens\n"
    "  --tokenizer TOK      llama2.c tokenizer for --calib\n"
    "  --seqlen L           tokens per --calib window (default 256)\n"
    "  --nsamples N         samples: the first N rows of --calib-tensors (default all), or N windows of --calib\n"
    "                       (default 64); activations of N x L tokens are cached per block\n"
    "  --blocks NAME        the module list whose children are the blocks (default: the longest one found;\n"
    "                       a model without one is calibrated as a single block)\n"
    "  --offload-dir DIR    keep the cached block inputs (N x L x hidden floats) in files under DIR\n"
    "  --no-layer-wise      load every weight first (in-memory reference mode; same result, more memory)\n"
    "  --no-true-sequential gptq: observe all linears of a block once, on float inputs\n"
    "  --act-order          gptq: columns by decreasing Hessian diagonal (g_idx stored)\n"
    "  --percdamp F         gptq: damping as a fraction of the mean Hessian diagonal (default 0.01)\n"
    "  --gptq-block-size N  gptq: columns per lazy update block (default 128)\n"
    "  --no-clip-search     awq: scale search only\n"
    "  --awq-grid N         awq: scale ratios tried (default 20)\n"
    "  --teq-steps N        teq: Adam steps per group (default 1000)\n"
    "  --teq-lr F           teq: learning rate (default 1e-3)\n"
    "  --observer K         w8a8: minmax (default), ema, percentile, kl\n"
    "  --act-dtype D        w8a8: uint8 (default, asymmetric) or int8 (symmetric)\n"
    "  --smoothquant A      w8a8: SmoothQuant with migration strength A in [0, 1] (e.g. 0.5)\n"
    "\n"
    "  --report R.json      per-layer report (shape, dtype, group size, weight MSE, seconds) and totals\n"
    "  --config C.json      per-layer rules (applied where it appears: later options override it):\n"
    "                       {\"algorithm\", \"dtype\", \"group_size\", \"sym\", \"include\": [regex], \"exclude\": [regex],\n"
    "                        \"layers\": [{\"match\": regex, \"dtype\", \"group_size\", \"sym\", \"algorithm\": \"rtn\"}]}\n"
    "                       the first matching rule applies; a rule may select rtn inside a calibrated run\n"
    "  --resume             continue a killed run of the same command from its state (Q.pt.lwq-resume/, kept\n"
    "                       until the output is written); the result is the same bytes as an uninterrupted run\n"
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
    } else if (a == "--compute") {
      config.compute = args.value();
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
    } else if (a == "--calib-tensors") {
      config.calib_tensors = args.value();
    } else if (a == "--calib") {
      config.calib_text = args.value();
    } else if (a == "--tokenizer") {
      config.tokenizer_path = args.value();
    } else if (a == "--seqlen") {
      config.seqlen = args.int_value();
    } else if (a == "--nsamples") {
      config.nsamples = args.int_value();
      if (config.nsamples < 1) throw UsageError("--nsamples must be at least 1");
    } else if (a == "--blocks") {
      config.blocks = args.value();
    } else if (a == "--offload-dir") {
      config.offload_dir = args.value();
    } else if (a == "--no-layer-wise") {
      config.layer_wise = false;
    } else if (a == "--no-true-sequential") {
      config.true_sequential = false;
    } else if (a == "--act-order") {
      config.gptq.act_order = true;
    } else if (a == "--percdamp") {
      config.gptq.percdamp = args.float_value();
    } else if (a == "--gptq-block-size") {
      config.gptq.block_size = args.int_value();
    } else if (a == "--no-clip-search") {
      config.awq.clip_search = false;
    } else if (a == "--awq-grid") {
      config.awq.n_grid = args.int_value();
    } else if (a == "--teq-steps") {
      config.teq.steps = args.int_value();
    } else if (a == "--teq-lr") {
      config.teq.lr = args.float_value();
    } else if (a == "--observer") {
      config.observer = args.value();
    } else if (a == "--act-dtype") {
      config.act_dtype = args.value();
    } else if (a == "--smoothquant") {
      config.smoothquant_alpha = args.float_value();
      if (!(config.smoothquant_alpha >= 0 && config.smoothquant_alpha <= 1))
        throw UsageError("--smoothquant needs a strength in [0, 1]");
    } else if (a == "--config") {
      const std::string before = config.algorithm;
      config.algorithm.clear();  // so that the file's algorithm, if any, can be told from none
      lwq::pipeline::load_config_file(args.value(), config);
      if (config.algorithm.empty()) {
        config.algorithm = before;
      } else {
        algo_given = true;
      }
    } else if (a == "--resume") {
      config.resume = true;
    } else if (a == "--quiet") {
      config.quiet = true;
    } else {
      throw UsageError("quantize: unknown argument '" + a + "'");
    }
  }
  if (config.model_path.empty()) throw UsageError("quantize: --model is required");
  if (config.out_path.empty()) throw UsageError("quantize: --out is required");
  if (!algo_given) throw UsageError("quantize: --algo is required (rtn, gptq, awq, teq or w8a8)");
  // --exclude replaces the default (or the config file's list); --no-default-exclude drops the default.
  if (!exclude.empty()) {
    config.exclude = exclude;
  } else if (!default_exclude) {
    config.exclude.clear();
  }
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  // Allocator policy of this process: quantization makes many short-lived temporaries of a few MiB per layer.
  // glibc's defaults hand them back to the kernel as soon as they are freed, and every reuse then page-faults
  // (measured: 2.7-4.2 s against 1.3-2.0 s for an 11008 x 4096 int4 layer). Keep them in the heap instead: the
  // pipeline calls malloc_trim after each layer and block, so memory is still returned between layers.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

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
