// `lwq`: the command-line front end. It parses arguments into a config and makes one library call; every error
// becomes a message on stderr and exit status 1.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "lwq/pipeline/inspect.h"
#include "lwq/pipeline/quantize.h"

namespace {

const char* kUsage =
    "usage: lwq <command> [options]\n"
    "\n"
    "commands:\n"
    "  quantize   quantize the linear layers of a TorchScript model, layer by layer\n"
    "  inspect    list the modules and linear layers of a TorchScript model\n"
    "\n"
    "Run `lwq <command> --help` for the options of a command.\n";

const char* kQuantizeUsage =
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

const char* kInspectUsage =
    "usage: lwq inspect M.pt\n"
    "\n"
    "Lists the modules of a TorchScript archive and its linear layers: shape, float or quantized (dtype, group\n"
    "size) and the bytes they take.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Walks argv; value() takes the argument after the current option.
class Args {
 public:
  Args(int argc, char** argv, int first) : args_(argv + first, argv + argc) {}
  bool next() { return ++pos_ < static_cast<long>(args_.size()); }
  const std::string& current() const { return args_[pos_]; }
  std::string value() {
    if (pos_ + 1 >= static_cast<long>(args_.size())) throw UsageError(current() + " needs a value");
    return args_[++pos_];
  }
  int64_t int_value() {
    const std::string option = current();
    const std::string v = value();
    size_t used = 0;
    int64_t out = 0;
    try {
      out = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty()) throw UsageError(option + " needs an integer, got '" + v + "'");
    return out;
  }

 private:
  std::vector<std::string> args_;
  long pos_ = -1;
};

bool is_help(const std::string& a) { return a == "--help" || a == "-h"; }

int run_quantize(Args args) {
  lwq::pipeline::QuantizeConfig config;
  std::vector<std::string> exclude;
  bool default_exclude = true;
  bool algo_given = false;
  int64_t threads = 0;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kQuantizeUsage;
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

int run_inspect(Args args) {
  std::string path;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kInspectUsage;
      return 0;
    }
    if (!a.empty() && a[0] == '-') throw UsageError("inspect: unknown option '" + a + "'");
    if (!path.empty()) throw UsageError("inspect: one model at a time, got '" + path + "' and '" + a + "'");
    path = a;
  }
  if (path.empty()) throw UsageError("inspect: no model given");
  lwq::pipeline::print_summary(std::cout, lwq::pipeline::inspect_model(path));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) {
      std::cerr << kUsage;
      return 1;
    }
    const std::string command = argv[1];
    if (is_help(command)) {
      std::cout << kUsage;
      return 0;
    }
    if (command == "quantize") return run_quantize(Args(argc, argv, 2));
    if (command == "inspect") return run_inspect(Args(argc, argv, 2));
    throw UsageError("unknown command '" + command + "'");
  } catch (const UsageError& e) {
    std::cerr << "lwq: " << e.what() << " (see `lwq --help`, `lwq <command> --help`)" << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "lwq: error: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "lwq: error: " << e.what() << std::endl;
  }
  return 1;
}
