// Argument walking shared by the subcommands of the `lwq` tool.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lwq {
namespace cli {

// A mistake on the command line: printed with a pointer to --help, exit status 1.
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
  double float_value() {
    const std::string option = current();
    const std::string v = value();
    size_t used = 0;
    double out = 0;
    try {
      out = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty()) throw UsageError(option + " needs a number, got '" + v + "'");
    return out;
  }

 private:
  std::vector<std::string> args_;
  long pos_ = -1;
};

inline bool is_help(const std::string& a) { return a == "--help" || a == "-h"; }

// One function per subcommand (cmd_<name>.cpp); each returns the exit status.
int run_quantize(Args args);
int run_inspect(Args args);
int run_export(Args args);
int run_import(Args args);
int run_eval(Args args);
int run_generate(Args args);

}  // namespace cli
}  // namespace lwq
