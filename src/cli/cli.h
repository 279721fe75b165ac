// What the subcommands of the `lwq` tool share: the CLI11 app of each command, its help layout, the value checks
// and the options every command spells the same way (--threads).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lwq {
namespace cli {

// A mistake on the command line found after parsing: "lwq: error: <command>: <what>", exit status 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A subcommand: its CLI11 app (options bound to the command's config) and what runs once the arguments parsed.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// One function per subcommand (cmd_<name>.cpp) adds it to the `lwq` app.
Command add_quantize(CLI::App& lwq);
Command add_inspect(CLI::App& lwq);
Command add_export(CLI::App& lwq);
Command add_import(CLI::App& lwq);
Command add_eval(CLI::App& lwq);
Command add_generate(CLI::App& lwq);
Command add_tokenize(CLI::App& lwq);

// The help layout of every `lwq` app: "usage: <usage>", the description, the subcommands and the options by group;
// `width` columns for the names.
std::shared_ptr<CLI::Formatter> help_layout(const std::string& usage, const std::string& description, size_t width);

// The subcommand `name` of `lwq`, its help laid out as "usage: lwq <usage>", the description, then the options by
// group ("options" first), each option's default taken from the variable it is bound to.
CLI::App* add_command(CLI::App& lwq, const std::string& name, const std::string& summary, const std::string& usage,
                      const std::string& description);

// --threads N: intra-op threads, set (at::set_num_threads) when the arguments are parsed.
CLI::Option* add_threads_option(CLI::App& app);

// --model M.pt, --weights W and --tokenizer TOK, as eval and generate take them.
void add_model_options(CLI::App& app, std::string& model, std::string& weights, std::string& tokenizer);

// The checkpoint formats of export and import, and their required --format option.
const std::vector<std::string> kCheckpointFormats = {"gptq", "safetensors"};
CLI::Option* add_format_option(CLI::App& app, std::string& format, const std::string& description);

// --json: one JSON object on stdout and nothing else.
CLI::Option* add_json_flag(CLI::App& app, bool& json, const std::string& fields);

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ");

// Checks of a value, run by CLI11 before the value is converted. The messages read after the option's name:
// "--top-p must be in (0, 1], got 2", "--group-size needs an integer, got 'abc'", "--format must be gptq or
// safetensors, got 'onnx'".
CLI::Validator one_of(const std::vector<std::string>& allowed);

template <typename T>
CLI::Validator number(std::function<bool(T)> ok = {}, const std::string& requirement = "") {
  return CLI::Validator(
      [ok, requirement](std::string& text) -> std::string {
        T value{};
        if (!CLI::detail::lexical_cast(text, value))
          return std::string(std::is_integral<T>::value ? "needs an integer" : "needs a number") + ", got '" + text +
                 "'";
        if (ok && !ok(value)) return requirement + ", got " + text;
        return "";
      },
      "");
}

template <typename T>
CLI::Validator at_least(T min) {
  std::ostringstream requirement;
  requirement << "must be at least " << min;
  return number<T>([min](T v) { return v >= min; }, requirement.str());
}

// The closest of `known` to `word` by edit distance, or "" when none is close enough to be a likely typo.
std::string closest(const std::string& word, const std::vector<std::string>& known);

}  // namespace cli
}  // namespace lwq
