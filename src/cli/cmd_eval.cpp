// `lwq eval`: mean next-token NLL and perplexity of a model on the paragraphs of a text file.
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>
#include <string>

#include "cli.h"
#include "lwq/text/evaluate.h"
#include "lwq/text/load_model.h"

namespace lwq {
namespace cli {

namespace {

const char* kDescription =
    "Mean next-token negative log-likelihood (nats/token) and perplexity of the model on the blank-line separated\n"
    "paragraphs of FILE, each encoded with BOS first and truncated to the sequence length; or, with --chunked,\n"
    "llama.cpp's llama-perplexity protocol: the paragraphs' tokens as one stream cut into windows of --seq-len\n"
    "tokens (BOS first where the tokenizer uses one), the second half of each window scored, a last partial\n"
    "window left out (docs/evaluation.md). On a terminal, a progress line on stderr.";

struct Eval {
  text::EvalConfig config;
  bool json = false;
};

int run(Eval& e) {
  lwq::text::keep_freed_memory_in_heap();
  // Redrawn in place on a terminal only: a log or a pipe gets the result alone.
  if (::isatty(STDERR_FILENO) == 1) {
    e.config.progress = [](int64_t done, int64_t total) {
      std::cerr << "\r\033[Keval: batch " << done << "/" << total << std::flush;
      if (done == total) std::cerr << "\r\033[K" << std::flush;
    };
  }
  const text::TextEvalResult r = text::evaluate_text(e.config);
  if (e.json) {
    nlohmann::ordered_json out = {
        {"nll", r.nll}, {"ppl", r.perplexity()}, {"tokens", r.tokens}, {"segments", r.segments}};
    if (e.config.chunked) {
      out["seq_len"] = r.seq_len;
      out["windows"] = r.windows;
      out["text_tokens"] = r.text_tokens;
      out["tail_tokens"] = r.tail_tokens;
    }
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else if (e.config.chunked) {
    std::cout << "mean NLL " << r.nll << " nats/token, perplexity " << r.perplexity() << " over " << r.tokens
              << " scored tokens of " << r.windows << " windows of " << r.seq_len << " tokens (" << r.text_tokens
              << " text tokens of " << r.segments << " paragraphs, the last " << r.tail_tokens << " not scored; "
              << r.batches << " batches, " << r.seconds << " s)" << std::endl;
  } else {
    std::cout << "mean NLL " << r.nll << " nats/token, perplexity " << r.perplexity() << " over " << r.tokens
              << " predicted tokens of " << r.segments << " paragraphs (seq len " << r.seq_len << ", "
              << r.truncated << " truncated; " << r.batches << " batches, " << r.seconds << " s)" << std::endl;
  }
  return 0;
}

}  // namespace

Command add_eval(CLI::App& lwq) {
  auto e = std::make_shared<Eval>();
  text::EvalConfig& c = e->config;
  CLI::App* app = add_command(lwq, "eval", "mean next-token NLL and perplexity of a model on a text file",
                              "--model M.pt [--weights W] --tokenizer TOK --text FILE [options]", kDescription);
  add_model_options(*app, c.model_path, c.weights_path, c.tokenizer_path);
  app->add_option("--text", c.text_path, "UTF-8 text, paragraphs separated by blank lines")
      ->type_name("FILE")
      ->required();
  app->add_option("--segments", c.segments, "only the first N paragraphs (default: all)")
      ->type_name("N")
      ->check(at_least<int64_t>(1));
  app->add_flag("--chunked", c.chunked,
               "llama-perplexity's protocol: windows of --seq-len tokens over the whole text, second\n"
               "half of each scored");
  app->add_option("--seq-len,--seqlen", c.seq_len,
                  "tokens per paragraph (or window), BOS included (default: the model's maximum)")
      ->type_name("L")
      ->check(at_least<int64_t>(2));
  app->add_option("--batch-tokens", c.batch_tokens, "tokens per forward batch, padding included")
      ->type_name("T")
      ->check(at_least<int64_t>(1))
      ->capture_default_str();
  add_threads_option(*app);
  add_json_flag(*app, e->json,
                "{\"nll\", \"ppl\", \"tokens\", \"segments\"; with --chunked also \"seq_len\", \"windows\",\n"
                " \"text_tokens\", \"tail_tokens\"}");
  return {app, [e] { return run(*e); }};
}

}  // namespace cli
}  // namespace lwq
