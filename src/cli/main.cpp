// `lwq`: the command-line front end. Each subcommand (cmd_<name>.cpp) parses its arguments into a config and makes
// one library call; every error becomes a message on stderr and exit status 1.
#include <c10/util/Exception.h>

#include <iomanip>
#include <iostream>
#include <string>

#include "args.h"

namespace {

using lwq::cli::Args;
using lwq::cli::UsageError;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(Args);
};

// To add a subcommand: write cmd_<name>.cpp, declare run_<name> in args.h, add one line here.
const Command kCommands[] = {
    {"quantize", "quantize the linear layers of a TorchScript model, layer by layer", lwq::cli::run_quantize},
    {"inspect", "list the modules and linear layers of a TorchScript model", lwq::cli::run_inspect},
    {"export", "write a quantized model as a GPTQ checkpoint or a plain safetensors file", lwq::cli::run_export},
    {"import", "build a quantized TorchScript model from a GPTQ or lwq safetensors checkpoint", lwq::cli::run_import},
    {"eval", "mean next-token NLL and perplexity of a model on a text file", lwq::cli::run_eval},
    {"generate", "generate text with a model's key/value cache, as llama2.c's run.c", lwq::cli::run_generate},
};

void print_usage(std::ostream& out) {
  out << "usage: lwq <command> [options]\n\ncommands:\n";
  for (const Command& c : kCommands) out << "  " << std::left << std::setw(11) << c.name << c.summary << "\n";
  out << "\nRun `lwq <command> --help` for the options of a command.\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) {
      print_usage(std::cerr);
      return 1;
    }
    const std::string command = argv[1];
    if (lwq::cli::is_help(command)) {
      print_usage(std::cout);
      return 0;
    }
    for (const Command& c : kCommands) {
      if (command == c.name) return c.run(Args(argc, argv, 2));
    }
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
