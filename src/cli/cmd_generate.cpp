// `lwq generate`: text from a model, as llama2.c's run.c prints it; statistics on stderr (or all of it as JSON).
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "cli.h"
#include "lwq/text/generate.h"
#include "lwq/text/load_model.h"

namespace lwq {
namespace cli {

namespace {

const char* kDescription =
    "Generates text with the model's key/value cache (init_cache / forward_cached) and prints it on stdout as\n"
    "llama2.c's run.c does: the prompt, the continuation, a newline. Token rates go to stderr.\n"
    "Generation ends at the first of: --steps positions (prompt included), --max-tokens tokens after the prompt,\n"
    "an EOS id of the tokenizer (unless --no-stop-at-eos), BOS. A prompt longer than the positions is refused.";

struct Generate {
  text::GenerateTextConfig config;
  bool json = false;
  CLI::Option *seed = nullptr, *top_k = nullptr, *top_p = nullptr, *steps = nullptr, *max_tokens = nullptr;
};

int run(Generate& g) {
  text::GenerateConfig& c = g.config.generate;
  if (c.temperature == 0) {
    for (const CLI::Option* opt : {g.seed, g.top_k, g.top_p}) {
      if (opt->count())
        std::cerr << "lwq: warning: " << opt->get_name() << " applies to sampling (--temperature > 0); "
                  << "at temperature 0 generation is greedy" << std::endl;
    }
  }
  // --max-tokens alone is bounded by the model's positions, not by the default --steps.
  if (g.max_tokens->count() && !g.steps->count()) c.steps = 0;
  lwq::text::keep_freed_memory_in_heap();
  if (!g.seed->count()) {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    c.seed = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(now).count());
  }

  std::ostringstream text;
  const text::GenerateResult r = text::generate_text(g.config, g.json ? text : std::cout);
  if (g.json) {
    std::string printed = text.str();
    if (!printed.empty() && printed.back() == '\n') printed.pop_back();
    nlohmann::ordered_json out = {{"text", printed},
                                  {"tokens", r.tokens},
                                  {"prompt_tokens", r.prompt_tokens},
                                  {"generated", r.generated},
                                  {"positions", r.positions},
                                  {"stop", r.stop},
                                  {"prefill_seconds", r.prefill_seconds},
                                  {"decode_seconds", r.decode_seconds},
                                  {"decode_forwards", r.decode_forwards},
                                  {"decode_tokens_per_s", r.decode_tokens_per_s()}};
    if (c.temperature > 0) out["seed"] = c.seed;
    std::cout << out.dump() << std::endl;
    return 0;
  }
  std::cerr << "prompt: " << r.prompt_tokens << " tokens in " << r.prefill_seconds * 1e3 << " ms; generated "
            << r.generated << " tokens, stopped at " << r.stop << " after " << r.positions << " positions; decode "
            << r.decode_tokens_per_s() << " tokens/s (" << r.decode_forwards << " one-token forwards in "
            << r.decode_seconds << " s)";
  if (c.temperature > 0) std::cerr << "; seed " << c.seed;
  std::cerr << std::endl;
  return 0;
}

}  // namespace

Command add_generate(CLI::App& lwq) {
  auto g = std::make_shared<Generate>();
  text::GenerateTextConfig& c = g->config;
  CLI::App* app = add_command(lwq, "generate", "generate text with a model's key/value cache, as llama2.c's run.c",
                              "--model M.pt [--weights W] --tokenizer TOK [options]", kDescription);
  add_model_options(*app, c.model_path, c.weights_path, c.tokenizer_path);
  app->add_option("--prompt", c.prompt, "text to continue (default: none, BOS alone)")->type_name("P");
  g->steps = app->add_option("--steps", c.generate.steps,
                              "positions to run, prompt included (0 or more than the model's maximum: the\n"
                              "maximum; with --max-tokens and no --steps: the maximum)")
                 ->type_name("N")
                 ->check(number<int64_t>([](int64_t n) { return n >= 0; }, "must be >= 0"))
                 ->capture_default_str();
  g->max_tokens = app->add_option("--max-tokens", c.generate.max_tokens,
                                  "tokens to generate after the prompt (default: until --steps positions);\n"
                                  "both given: whichever ends first")
                      ->type_name("N")
                      ->check(number<int64_t>([](int64_t n) { return n >= 0; }, "must be >= 0"));
  app->add_option("--temperature", c.generate.temperature, "0: greedy; else sample from softmax(logits / T)")
      ->type_name("T")
      ->check(number<double>([](double t) { return t >= 0; }, "must be >= 0"))
      ->capture_default_str();
  g->top_k = app->add_option("--top-k", c.generate.top_k,
                             "sample among the K most probable tokens only, before --top-p (0: all)")
                 ->type_name("K")
                 ->check(number<int64_t>([](int64_t k) { return k >= 0; }, "must be >= 0"))
                 ->capture_default_str();
  g->top_p = app->add_option("--top-p", c.generate.top_p, "nucleus sampling mass (1: the whole distribution)")
                 ->type_name("P")
                 ->check(number<double>([](double p) { return p > 0 && p <= 1; }, "must be in (0, 1]"))
                 ->capture_default_str();
  g->seed = app->add_option("--seed", c.generate.seed, "sampling seed, nonzero (default: the time, reported on stderr)")
                ->type_name("S")
                ->check(number<int64_t>([](int64_t s) { return s > 0; }, "must be positive"));
  app->add_flag_callback("--no-stop-at-eos", [&c] { c.generate.stop_at_eos = false; },
                         "continue after the tokenizer's EOS ids, as run.c does (which stops only at BOS)");
  add_threads_option(*app);
  add_json_flag(*app, g->json,
                "{\"text\", \"tokens\", \"prompt_tokens\", \"generated\", \"positions\", \"stop\", \"prefill_seconds\",\n"
                " \"decode_seconds\", \"decode_forwards\", \"decode_tokens_per_s\", \"seed\" (when sampling)}");
  return {app, [g] { return run(*g); }};
}

}  // namespace cli
}  // namespace lwq
