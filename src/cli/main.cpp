// `lwq`: the command-line front end, on CLI11. Each subcommand (cmd_<name>.cpp) binds its options to a config and
// makes one library call; a usage mistake and every library error become "lwq: error: ..." and exit status 1.
#include <c10/util/Exception.h>

#include <iostream>
#include <string>
#include <vector>

#include "cli.h"

namespace {

using lwq::cli::Command;

// The names a mistyped option could have meant: every long name of the command (or of lwq itself).
std::vector<std::string> long_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::Option* opt : app.get_options()) {
    for (const std::string& n : opt->get_lnames()) names.push_back("--" + n);
  }
  return names;
}

// An argument no option or positional took: "unknown option '--grup-size'; did you mean --group-size?".
std::string unexpected(const CLI::App& app, const std::string& arg, const std::vector<std::string>& commands) {
  const bool is_command = app.get_parent() == nullptr;
  if (is_command && arg.rfind("-", 0) != 0) {
    const std::string guess = lwq::cli::closest(arg, commands);
    return "unknown command '" + arg + "'" + (guess.empty() ? "" : "; did you mean " + guess + "?");
  }
  if (arg.rfind("--", 0) != 0) return "unknown argument '" + arg + "'";
  const std::string name = arg.substr(0, arg.find('='));
  const std::string guess = lwq::cli::closest(name, long_names(app));
  return "unknown option '" + name + "'" + (guess.empty() ? "" : "; did you mean " + guess + "?");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App lwq("", "lwq");
  lwq.formatter(lwq::cli::help_layout("lwq <command> [options]", "", 13));
  lwq.footer("Run `lwq <command> --help` for the options of a command.");
  // Every command inherits these: options in the group "options", a repeated option's last value wins.
  lwq.option_defaults()->group("options")->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  lwq.set_help_flag("-h,--help", "print this help and exit");
  lwq.set_version_flag("--version", "lwq " LWQ_VERSION, "print the version and exit");
  lwq.require_subcommand(1);

  // To add a subcommand: write cmd_<name>.cpp with add_<name>, declare it in cli.h, add one line here.
  const std::vector<Command> commands = {lwq::cli::add_quantize(lwq), lwq::cli::add_inspect(lwq),
                                         lwq::cli::add_export(lwq),   lwq::cli::add_import(lwq),
                                         lwq::cli::add_eval(lwq),     lwq::cli::add_generate(lwq),
                                         lwq::cli::add_tokenize(lwq)};
  std::vector<std::string> command_names;
  for (const Command& c : commands) command_names.push_back(c.app->get_name());

  const Command* chosen = nullptr;
  auto usage_error = [&](const std::string& what) {
    const std::string command = chosen ? chosen->app->get_name() : "";
    std::cerr << "lwq: error: " << (chosen ? command + ": " : "") << what << " (see `lwq "
              << (chosen ? command + " " : "") << "--help`)" << std::endl;
    return 1;
  };
  if (argc < 2) {
    std::cerr << lwq.help();
    return 1;
  }
  try {
    lwq.parse(argc, argv);
    for (const Command& c : commands) {
      if (c.app->parsed()) chosen = &c;
    }
    return chosen->run();
  } catch (const CLI::CallForHelp&) {
    std::cout << lwq.help();
    return 0;
  } catch (const CLI::CallForVersion& e) {
    std::cout << e.what() << std::endl;
    return 0;
  } catch (const CLI::ParseError& e) {
    for (const Command& c : commands) {
      if (c.app->parsed()) chosen = &c;
    }
    const CLI::App& app = chosen ? *chosen->app : lwq;
    const std::vector<std::string> rest = app.remaining();
    if (!rest.empty()) return usage_error(unexpected(app, rest.front(), command_names));
    if (!chosen) return usage_error(std::string(e.what()) == "A subcommand is required" ? "no command given" : e.what());
    std::string what = e.what();
    // CLI11 writes "--top-p: must be in (0, 1], got 2"; lwq's messages read "--top-p must be in (0, 1], got 2".
    if (dynamic_cast<const CLI::ValidationError*>(&e) && what.find(": ") != std::string::npos)
      what.erase(what.find(": "), 1);
    // "--model: 1 required M.pt missing": the option came last, without its value.
    if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) && what.find(" missing") != std::string::npos)
      what = what.substr(0, what.find(": ")) + " needs a value";
    return usage_error(what);
  } catch (const lwq::cli::UsageError& e) {
    return usage_error(e.what());
  } catch (const c10::Error& e) {
    std::cerr << "lwq: error: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "lwq: error: " << e.what() << std::endl;
  }
  return 1;
}
