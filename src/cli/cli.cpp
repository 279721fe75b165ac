#include "cli.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

namespace lwq {
namespace cli {

namespace {

// "usage: lwq <command> ...", the description, the options by group: name and value placeholder, then what it
// does, its default (from the bound variable) and what it excludes.
class Help : public CLI::Formatter {
 public:
  Help(std::string usage, std::string description, size_t width)
      : usage_(std::move(usage)), description_(std::move(description)) {
    column_width(width);
  }

  std::string make_help(const CLI::App* app, std::string, CLI::AppFormatMode mode) const override {
    std::ostringstream out;
    out << "usage: " << usage_ << "\n";
    if (!description_.empty()) out << "\n" << description_ << "\n";
    // A positional argument is an option too ("--model" for "M.pt"): listed once, with the options.
    out << make_subcommands(app, mode) << make_groups(app, mode) << "\n"
        << make_footer(app);
    std::string help = out.str();  // one blank line between groups (CLI11 puts two)
    for (size_t at; (at = help.find("\n\n\n")) != std::string::npos;) help.erase(at, 1);
    return help;
  }

  std::string make_option_opts(const CLI::Option* opt) const override {
    return opt->get_type_size() != 0 && !opt->get_type_name().empty() ? " " + opt->get_type_name() : "";
  }

  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string desc = opt->get_description();
    auto append = [&](const std::string& note) {  // on the last line while it stays within 118 columns
      const size_t last_line = desc.size() - (desc.rfind('\n') == std::string::npos ? 0 : desc.rfind('\n') + 1);
      desc += (column_width_ + last_line + 1 + note.size() > 118 ? "\n" : " ") + note;
    };
    if (opt->get_positional() && opt->nonpositional()) append("(or given as a plain argument)");
    if (!opt->get_default_str().empty()) append("(default " + opt->get_default_str() + ")");
    for (const CLI::Option* other : opt->get_excludes()) append("(excludes " + other->get_name() + ")");
    return desc;
  }

 private:
  std::string usage_, description_;
};

}  // namespace

std::shared_ptr<CLI::Formatter> help_layout(const std::string& usage, const std::string& description,
                                            size_t width) {
  return std::make_shared<Help>(usage, description, width);
}

CLI::App* add_command(CLI::App& lwq, const std::string& name, const std::string& summary, const std::string& usage,
                      const std::string& description) {
  CLI::App* app = lwq.add_subcommand(name, summary);
  app->group("commands");
  app->formatter(help_layout("lwq " + name + " " + usage, description, 25));
  app->set_help_flag("-h,--help", "print this help and exit");
  app->footer("");
  return app;
}

CLI::Option* add_threads_option(CLI::App& app) {
  return app
      .add_option_function<int>(
          "--threads", [](const int& n) { at::set_num_threads(n); }, "intra-op threads (default: libtorch's default)")
      ->type_name("N")
      ->check(at_least<int>(1));
}

void add_model_options(CLI::App& app, std::string& model, std::string& weights, std::string& tokenizer) {
  app.add_option("--model", model, "TorchScript model (float, or quantized by `lwq quantize`)")
      ->type_name("M.pt")
      ->required();
  app.add_option("--weights", weights, "safetensors file or sharded directory filling the model's empty parameters")
      ->type_name("W");
  app.add_option("--tokenizer", tokenizer, "tokenizer.json, tokenizer.model, llama2.c tokenizer.bin, or a model directory")->type_name("TOK")->required();
}

CLI::Option* add_format_option(CLI::App& app, std::string& format, const std::string& description) {
  return app.add_option("--format", format, description)
      ->type_name("F")
      ->check(one_of(kCheckpointFormats))
      ->required();
}

CLI::Option* add_json_flag(CLI::App& app, bool& json, const std::string& fields) {
  return app.add_flag("--json", json, "print one JSON object on stdout and nothing else:\n" + fields);
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : sep) + item;
  return out;
}

CLI::Validator one_of(const std::vector<std::string>& allowed) {
  return CLI::Validator(
      [allowed](std::string& value) -> std::string {
        if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return "";
        const std::string which = allowed.size() == 2 ? allowed[0] + " or " + allowed[1] : "one of " + join(allowed);
        return "must be " + which + ", got '" + value + "'";
      },
      "");
}

std::string closest(const std::string& word, const std::vector<std::string>& known) {
  // Levenshtein distance, one row at a time.
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t above = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diagonal = above;
      }
    }
    return row[b.size()];
  };
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;  // a typo: at most a third of the word wrong
  for (const std::string& candidate : known) {
    const size_t d = distance(word, candidate);
    if (d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  return best;
}

}  // namespace cli
}  // namespace lwq
