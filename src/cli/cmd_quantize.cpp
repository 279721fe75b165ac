// `lwq quantize`: options into a QuantizeConfig, the pipeline, a summary.
#include <malloc.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli.h"
#include "lwq/observers.h"
#include "lwq/pipeline/quantize.h"
#include "qscheme.h"

namespace lwq {
namespace cli {

namespace {

const char* kDescription =
    "Quantizes the linear layers of the TorchScript model M.pt and writes Q.pt, whose layers call lwq::woq_linear\n"
    "(lwq::woq_linear_a8 with --compute int8, lwq::w8a8_linear with --algo w8a8) on packed weights (load it after\n"
    "torch.ops.load_library(\"liblwq_ops.so\")).\n"
    "RTN works one linear at a time. The calibrated algorithms work block by block: the repeated blocks (the\n"
    "longest module list, or --blocks) are read, observed on the cached calibration activations, quantized,\n"
    "and run quantized to give the next block's inputs, so one block of float weights is resident at a time.\n"
    "The options of a group named after an algorithm apply to that algorithm only; others are refused.";

const char* kCalibration = "calibration (gptq, awq, teq, w8a8)";

struct Quantize {
  pipeline::QuantizeConfig config;
  std::vector<std::string> exclude;
  bool no_default_exclude = false;
  std::vector<std::string> config_files;  // --config, in the order given
  CLI::App* app = nullptr;
  CLI::Option *algo = nullptr, *config_opt = nullptr, *dtype = nullptr, *group_size = nullptr, *sym = nullptr,
              *asym = nullptr;
};

std::vector<std::string> algorithms() { return {std::begin(pipeline::kAlgorithms), std::end(pipeline::kAlgorithms)}; }

void add_options(Quantize& q) {
  CLI::App& app = *q.app;
  pipeline::QuantizeConfig& c = q.config;
  app.add_option("--model", c.model_path, "TorchScript archive; its parameters may be empty (meta)")
      ->type_name("M.pt")
      ->required();
  app.add_option("--weights", c.weights_path,
                 "safetensors file, or a directory of shards with model.safetensors.index.json;\n"
                 "tensors named by qualified parameter name; they win over values in the archive")
      ->type_name("W");
  q.algo = app.add_option("--algo", c.algorithm,
                          "rtn (round to nearest), gptq, awq, teq (weight-only, calibrated), or w8a8 (static\n"
                          "int8 activations and int8 weights, per channel and symmetric unless given)")
               ->type_name("A")
               ->check(one_of(algorithms()));
  app.add_flag("--mse-search", c.mse_search, "RTN layers: per-group clip-ratio search minimising the weight error");
  q.dtype = app.add_option("--dtype", c.spec.dtype, "weight dtype: " + join(dtype_names()))
                ->type_name("D")
                ->check(one_of(dtype_names()))
                ->capture_default_str();
  q.group_size = app.add_option("--group-size", c.spec.group_size,
                                "input columns per group, -1 for one group per output channel")
                     ->type_name("G")
                     ->check(number<int64_t>([](int64_t g) { return g == -1 || g > 0; },
                                             "must be -1 (per output channel) or positive"))
                     ->capture_default_str();
  q.sym = app.add_flag_callback("--sym", [&c] { c.spec.sym = true; }, "symmetric (the default)");
  q.asym = app.add_flag_callback("--asym", [&c] { c.spec.sym = false; }, "asymmetric, with zero points");
  q.sym->excludes(q.asym);
  app.add_option_function<std::string>(
         "--scale-dtype", [&c](const std::string& d) { c.spec.fp16_scales = d == "fp16"; },
         "fp32 (default) or fp16: scales rounded to float16 before the codes are chosen, as\n"
         "GPTQ checkpoints store them (`lwq export --format gptq` is then exact); weight-only")
      ->type_name("S")
      ->check(one_of({"fp32", "fp16"}));
  CLI::Option* exclude =
      app.add_option("--exclude", q.exclude,
                     "layers whose qualified name matches stay float (repeatable); replaces the default,\n"
                     "which keeps the output head float: " + std::string(pipeline::kDefaultExclude))
          ->type_name("REGEX");
  app.add_flag("--no-default-exclude", q.no_default_exclude, "quantize the output head too")->excludes(exclude);
  app.add_option("--out", c.out_path, "output archive, written atomically; must differ from the inputs")
      ->type_name("Q.pt")
      ->required();
  app.add_option("--compute", c.compute,
                 "weight-only layers: fp32 (exact, lwq::woq_linear) or int8 (lwq::woq_linear_a8: the\n"
                 "input is rounded to int8 per 32 columns at run time; decoding about 2x faster on\n"
                 "AVX2-only CPUs, 1.05-1.2x with AVX-512; dtypes " + join(int8_activation_dtype_names()) + ")")
      ->type_name("C")
      ->capture_default_str();
  app.add_option("--report", c.report_path,
                 "per-layer report (shape, dtype, group size, weight MSE, seconds) and totals")
      ->type_name("R.json");
  q.config_opt =
      app.add_option("--config", q.config_files,
                     "per-layer rules (applied where it appears: later options override it):\n"
                     "{\"algorithm\", \"dtype\", \"group_size\", \"sym\", \"include\": [regex], \"exclude\": [regex],\n"
                     " \"layers\": [{\"match\": regex, \"dtype\", \"group_size\", \"sym\", \"algorithm\": \"rtn\"}]}\n"
                     "the first matching rule applies; a rule may select rtn inside a calibrated run")
          ->type_name("C.json");
  app.add_flag("--resume", c.resume,
               "continue a killed run of the same command from its state (Q.pt.lwq-resume/, kept\n"
               "until the output is written); the result is the same bytes as an uninterrupted run");
  app.add_flag_callback("--no-layer-wise", [&c] { c.layer_wise = false; },
                        "load every weight first (in-memory reference mode; same result, more memory)");
  add_threads_option(app);
  app.add_flag("--quiet", c.quiet, "no per-layer progress on stderr");

  CLI::Option* tensors =
      app.add_option("--calib-tensors", c.calib_tensors,
                     "safetensors file with input_ids [N, L] (token ids; or inputs [N, ...] for models\n"
                     "whose forward takes a float tensor); each row is one calibration sample")
          ->type_name("F")
          ->group(kCalibration);
  app.add_option("--calib", c.calib_text,
                 "or a text file for language models (forward(input_ids) -> logits): (BOS where used) + each\n"
                 "blank-line separated paragraph, concatenated, cut into windows of --seq-len tokens")
      ->type_name("TEXT")
      ->group(kCalibration)
      ->excludes(tensors);
  app.add_option("--tokenizer", c.tokenizer_path, "tokenizer for --calib (tokenizer.bin, .model, .json or a model directory)")->type_name("TOK")->group(kCalibration);
  app.add_option("--seq-len,--seqlen", c.seqlen, "tokens per --calib window")
      ->type_name("L")
      ->check(at_least<int64_t>(1))
      ->capture_default_str()
      ->group(kCalibration);
  app.add_option("--nsamples", c.nsamples,
                 "samples: the first N rows of --calib-tensors (default all), or N windows of --calib\n"
                 "(default 64); activations of N x L tokens are cached per block")
      ->type_name("N")
      ->check(at_least<int64_t>(1))
      ->group(kCalibration);
  app.add_option("--blocks", c.blocks,
                 "the module list whose children are the blocks (default: the longest one found;\n"
                 "a model without one is calibrated as a single block)")
      ->type_name("NAME")
      ->group(kCalibration);
  app.add_option("--offload-dir", c.offload_dir, "keep the cached block inputs (N x L x hidden floats) in files under DIR")
      ->type_name("DIR")
      ->group(kCalibration);

  app.add_flag_callback("--no-true-sequential", [&c] { c.true_sequential = false; },
                        "observe all linears of a block once, on float inputs")
      ->group("gptq");
  app.add_flag("--act-order", c.gptq.act_order, "columns by decreasing Hessian diagonal (g_idx stored)")->group("gptq");
  app.add_option("--percdamp", c.gptq.percdamp, "damping as a fraction of the mean Hessian diagonal")
      ->type_name("F")
      ->check(number<double>())
      ->capture_default_str()
      ->group("gptq");
  app.add_option("--gptq-block-size", c.gptq.block_size, "columns per lazy update block")
      ->type_name("N")
      ->check(at_least<int64_t>(1))
      ->capture_default_str()
      ->group("gptq");
  app.add_flag_callback("--no-clip-search", [&c] { c.awq.clip_search = false; }, "scale search only")->group("awq");
  app.add_option("--awq-grid", c.awq.n_grid, "scale ratios tried")
      ->type_name("N")
      ->check(at_least<int64_t>(1))
      ->capture_default_str()
      ->group("awq");
  app.add_option("--teq-steps", c.teq.steps, "Adam steps per group")
      ->type_name("N")
      ->check(at_least<int64_t>(0))
      ->capture_default_str()
      ->group("teq");
  app.add_option("--teq-lr", c.teq.lr, "learning rate")
      ->type_name("F")
      ->check(number<double>())
      ->capture_default_str()
      ->group("teq");
  app.add_option("--observer", c.observer, "activation observer: " + join(observer_kinds()))
      ->type_name("K")
      ->check(one_of(observer_kinds()))
      ->capture_default_str()
      ->group("w8a8");
  const std::vector<std::string> act_dtypes = {act_dtype_name(ActDtype::UInt8), act_dtype_name(ActDtype::Int8)};
  app.add_option("--act-dtype", c.act_dtype, "activations: uint8 (asymmetric) or int8 (symmetric)")
      ->type_name("D")
      ->check(one_of(act_dtypes))
      ->capture_default_str()
      ->group("w8a8");
  app.add_option("--smoothquant", c.smoothquant_alpha, "SmoothQuant with migration strength A in [0, 1] (e.g. 0.5)")
      ->type_name("A")
      ->check(number<double>([](double a) { return a >= 0 && a <= 1; }, "needs a strength in [0, 1]"))
      ->group("w8a8");
}

// Loads each --config file where it appeared: a file overrides what came before it, and the options after it are
// given their values again (an option seen after a file has its last value there). Returns whether a file chose
// the algorithm.
bool apply_config_files(Quantize& q) {
  pipeline::QuantizeConfig& c = q.config;
  const std::vector<CLI::Option*>& order = q.app->parse_order();
  bool chosen = false;
  size_t file = 0;
  for (auto at = order.begin(); at != order.end(); ++at) {
    if (*at != q.config_opt) continue;
    const std::string before = c.algorithm;
    c.algorithm.clear();  // so that the file's algorithm, if any, can be told from none
    pipeline::load_config_file(q.config_files.at(file++), c);
    chosen = chosen || !c.algorithm.empty();
    if (c.algorithm.empty()) c.algorithm = before;
    for (auto it = at + 1; it != order.end(); ++it) {
      if (*it != q.config_opt) (*it)->run_callback();
    }
  }
  return chosen;
}

// Options of another algorithm's group do nothing: refuse them. Calibration data given to RTN (a script may give
// the same data to every algorithm) and --mse-search without RTN layers are only warned about.
void check_algorithm_options(const Quantize& q) {
  const std::string& algo = q.config.algorithm;
  for (const CLI::Option* opt : q.app->get_options()) {
    if (opt->count() == 0) continue;
    const std::string& group = opt->get_group();
    if (group == kCalibration && algo == "rtn")
      std::cerr << "lwq: warning: " << opt->get_name() << " is ignored: --algo rtn uses no calibration data" << std::endl;
    const std::vector<std::string> names = algorithms();
    if (std::find(names.begin(), names.end(), group) != names.end() && group != algo)
      throw UsageError(opt->get_name() + " applies to --algo " + group + " only, not to --algo " + algo);
  }
  const bool rtn_layers =
      algo == "rtn" || std::any_of(q.config.rules.begin(), q.config.rules.end(),
                                   [](const pipeline::LayerRule& r) { return r.algorithm == std::string("rtn"); });
  if (q.config.mse_search && !rtn_layers)
    std::cerr << "lwq: warning: --mse-search applies to RTN layers, and this " << algo
              << " run has none (no --config rule selects rtn)" << std::endl;
}

// --algo w8a8 quantizes the weights as int8 per output channel, symmetric: that is its default, and anything else
// given (on the command line or in the --config file) is refused.
void apply_w8a8_spec(Quantize& q) {
  QuantSpec& spec = q.config.spec;
  std::vector<nlohmann::json> files;
  for (const std::string& path : q.config_files) files.push_back(nlohmann::json::parse(std::ifstream(path)));
  // The file that sets `key` (to `value`, when given), or -1.
  auto file_setting = [&](const char* key, const nlohmann::json* value = nullptr) {
    for (size_t i = files.size(); i-- > 0;) {
      if (files[i].contains(key) && (!value || files[i][key] == *value)) return static_cast<int64_t>(i);
    }
    return int64_t{-1};
  };
  auto given = [&](bool on_command_line, const char* key) { return on_command_line || file_setting(key) >= 0; };
  // Names the file when the value in effect is a file's, else the option.
  auto conflict = [&](const char* key, const std::string& option, const nlohmann::json& value) {
    const int64_t file = file_setting(key, &value);
    const std::string what =
        file >= 0 ? "\"" + std::string(key) + "\": " + value.dump() + " in " + q.config_files[file] : option;
    throw UsageError("--algo w8a8 quantizes the weights as int8, one group per output channel, symmetric; " + what +
                     " conflicts (leave it out)");
  };
  if (!given(q.dtype->count() > 0, "dtype")) {
    spec.dtype = pipeline::kW8a8Spec.dtype;
  } else if (spec.dtype != pipeline::kW8a8Spec.dtype) {
    conflict("dtype", "--dtype " + spec.dtype, spec.dtype);
  }
  if (!given(q.group_size->count() > 0, "group_size")) {
    spec.group_size = pipeline::kW8a8Spec.group_size;
  } else if (spec.group_size != pipeline::kW8a8Spec.group_size) {
    conflict("group_size", "--group-size " + std::to_string(spec.group_size), spec.group_size);
  }
  if (!given(q.sym->count() + q.asym->count() > 0, "sym")) {
    spec.sym = pipeline::kW8a8Spec.sym;
  } else if (spec.sym != pipeline::kW8a8Spec.sym) {
    conflict("sym", "--asym", spec.sym);
  }
}

int run(Quantize& q) {
  pipeline::QuantizeConfig& config = q.config;
  const bool file_algorithm = apply_config_files(q);
  if (q.algo->count() == 0 && !file_algorithm)
    throw UsageError("--algo is required (" + join(algorithms(), ", ") + ")");
  check_algorithm_options(q);
  if (config.algorithm == "w8a8") apply_w8a8_spec(q);
  // --exclude replaces the default (or the config file's list); --no-default-exclude drops the default.
  if (!q.exclude.empty()) {
    config.exclude = q.exclude;
  } else if (q.no_default_exclude) {
    config.exclude.clear();
  }
  // Allocator policy of this process: quantization makes many short-lived temporaries of a few MiB per layer.
  // glibc's defaults hand them back to the kernel as soon as they are freed, and every reuse then page-faults
  // (measured: 2.7-4.2 s against 1.3-2.0 s for an 11008 x 4096 int4 layer). Keep them in the heap instead: the
  // pipeline calls malloc_trim after each layer and block, so memory is still returned between layers.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

  const pipeline::QuantizeResult result = pipeline::quantize_model(config);
  if (!config.quiet) {
    std::cerr << "wrote " << config.out_path << ": " << result.quantized.size() << " layers quantized ("
              << result.float_bytes << " float bytes -> " << result.packed_bytes << " packed bytes), "
              << result.kept_float.size() << " kept float, " << result.seconds << " s, peak RSS "
              << result.peak_rss_bytes / (1024 * 1024) << " MiB" << std::endl;
  }
  return 0;
}

}  // namespace

Command add_quantize(CLI::App& lwq) {
  auto q = std::make_shared<Quantize>();
  q->app = add_command(lwq, "quantize", "quantize the linear layers of a TorchScript model, layer by layer",
                       "--model M.pt [--weights W] --algo " + join(algorithms(), "|") + " [options] --out Q.pt",
                       kDescription);
  add_options(*q);
  return {q->app, [q] { return run(*q); }};
}

}  // namespace cli
}  // namespace lwq
