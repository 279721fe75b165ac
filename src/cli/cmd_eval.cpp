// `lwq eval`: mean next-token NLL and perplexity of a model on the paragraphs of a text file.
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <string>

#include "args.h"
#include "lwq/text/load_model.h"
#include "lwq/text/evaluate.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq eval --model M.pt [--weights W] --tokenizer TOK --text FILE [options]\n"
    "\n"
    "Mean next-token negative log-likelihood (nats/token) and perplexity of the model on the blank-line separated\n"
    "paragraphs of FILE, each encoded with BOS first and truncated to the sequence length (docs/evaluation.md).\n"
    "\n"
    "  --model M.pt       TorchScript model (float, or quantized by `lwq quantize`)\n"
    "  --weights W        safetensors file or sharded directory filling the model's empty parameters\n"
    "  --tokenizer TOK    llama2.c tokenizer.bin\n"
    "  --text FILE        UTF-8 text, paragraphs separated by blank lines\n"
    "  --segments N       only the first N paragraphs (default: all)\n"
    "  --seq-len L        tokens per paragraph, BOS included (default: the model's maximum)\n"
    "  --batch-tokens T   tokens per forward batch, padding included (default 2048)\n"
    "  --threads N        intra-op threads (default: libtorch's default)\n"
    "  --json             print one JSON object {\"nll\", \"ppl\", \"tokens\", \"segments\"} and nothing else\n";

}  // namespace

int run_eval(Args args) {
  lwq::text::EvalConfig config;
  bool json = false;
  int64_t threads = 0;
  while (args.next()) {
    const std::string& a = args.current();
    if (is_help(a)) {
      std::cout << kUsage;
      return 0;
    } else if (a == "--model") {
      config.model_path = args.value();
    } else if (a == "--weights") {
      config.weights_path = args.value();
    } else if (a == "--tokenizer") {
      config.tokenizer_path = args.value();
    } else if (a == "--text") {
      config.text_path = args.value();
    } else if (a == "--segments") {
      config.segments = args.int_value();
      if (config.segments < 1) throw UsageError("--segments must be at least 1");
    } else if (a == "--seq-len") {
      config.seq_len = args.int_value();
      if (config.seq_len < 2) throw UsageError("--seq-len must be at least 2");
    } else if (a == "--batch-tokens") {
      config.batch_tokens = args.int_value();
      if (config.batch_tokens < 1) throw UsageError("--batch-tokens must be at least 1");
    } else if (a == "--threads") {
      threads = args.int_value();
      if (threads < 1) throw UsageError("--threads must be at least 1");
    } else if (a == "--json") {
      json = true;
    } else {
      throw UsageError("eval: unknown argument '" + a + "'");
    }
  }
  if (config.model_path.empty()) throw UsageError("eval: --model is required");
  if (config.tokenizer_path.empty()) throw UsageError("eval: --tokenizer is required");
  if (config.text_path.empty()) throw UsageError("eval: --text is required");
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  lwq::text::keep_freed_memory_in_heap();

  const lwq::text::TextEvalResult r = lwq::text::evaluate_text(config);
  if (json) {
    const nlohmann::ordered_json out = {{"nll", r.nll}, {"ppl", r.perplexity()}, {"tokens", r.tokens}, {"segments", r.segments}};
    std::cout << out.dump() << std::endl;
  } else {
    std::cout << "mean NLL " << r.nll << " nats/token, perplexity " << r.perplexity() << " over " << r.tokens
              << " predicted tokens of " << r.segments << " paragraphs (seq len " << r.seq_len << ", "
              << r.truncated << " truncated; " << r.batches << " batches, " << r.seconds << " s)" << std::endl;
  }
  return 0;
}

}  // namespace cli
}  // namespace lwq
