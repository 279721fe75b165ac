// `lwq inspect`: a summary of a TorchScript archive's modules and linear layers.
#include <iostream>
#include <string>

#include "args.h"
#include "lwq/model/inspect.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq inspect M.pt\n"
    "\n"
    "Lists the modules of a TorchScript archive and its linear layers: shape, float or quantized (dtype, group\n"
    "size) and the bytes they take.\n";

}  // namespace

int run_inspect(Args args) {
  std::string path;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kUsage;
      return 0;
    }
    if (!a.empty() && a[0] == '-') throw UsageError("inspect: unknown option '" + a + "'");
    if (!path.empty()) throw UsageError("inspect: one model at a time, got '" + path + "' and '" + a + "'");
    path = a;
  }
  if (path.empty()) throw UsageError("inspect: no model given");
  lwq::model::print_summary(std::cout, lwq::model::inspect_model(path));
  return 0;
}

}  // namespace cli
}  // namespace lwq
