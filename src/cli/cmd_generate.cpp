// `lwq generate`: text from a model, as llama2.c's run.c prints it; statistics on stderr.
#include <ATen/Parallel.h>

#include <chrono>
#include <iostream>
#include <string>

#include "args.h"
#include "lwq/text/load_model.h"
#include "lwq/text/generate.h"

namespace lwq {
namespace cli {

namespace {

const char* kUsage =
    "usage: lwq generate --model M.pt [--weights W] --tokenizer TOK [options]\n"
    "\n"
    "Generates text with the model's key/value cache (init_cache / forward_cached) and prints it on stdout as\n"
    "llama2.c's run.c does: the prompt, the continuation, a newline. Token rates go to stderr.\n"
    "\n"
    "  --model M.pt        TorchScript model (float, or quantized by `lwq quantize`)\n"
    "  --weights W         safetensors file or sharded directory filling the model's empty parameters\n"
    "  --tokenizer TOK     llama2.c tokenizer.bin\n"
    "  --prompt P          text to continue (default: none, BOS alone)\n"
    "  --steps N           positions to run, prompt included (default 256; 0 or more than the model's maximum:\n"
    "                      the maximum)\n"
    "  --temperature T     0 (default): greedy; else sample from softmax(logits / T)\n"
    "  --top-p P           nucleus sampling mass (default 0.9; 1: the whole distribution)\n"
    "  --seed S            sampling seed, nonzero (default: the time, reported on stderr)\n"
    "  --no-stop-at-eos    continue after EOS, as run.c does (which stops only at BOS)\n"
    "  --threads N         intra-op threads (default: libtorch's default)\n";

}  // namespace

int run_generate(Args args) {
  lwq::text::GenerateTextConfig config;
  bool seed_given = false;
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
    } else if (a == "--prompt") {
      config.prompt = args.value();
    } else if (a == "--steps") {
      config.generate.steps = args.int_value();
      if (config.generate.steps < 0) throw UsageError("--steps must be >= 0");
    } else if (a == "--temperature") {
      config.generate.temperature = args.float_value();
      if (!(config.generate.temperature >= 0)) throw UsageError("--temperature must be >= 0");
    } else if (a == "--top-p") {
      config.generate.top_p = args.float_value();
      if (!(config.generate.top_p > 0 && config.generate.top_p <= 1)) throw UsageError("--top-p must be in (0, 1]");
    } else if (a == "--seed") {
      const int64_t seed = args.int_value();
      if (seed <= 0) throw UsageError("--seed must be positive");
      config.generate.seed = static_cast<uint64_t>(seed);
      seed_given = true;
    } else if (a == "--no-stop-at-eos") {
      config.generate.stop_at_eos = false;
    } else if (a == "--threads") {
      threads = args.int_value();
      if (threads < 1) throw UsageError("--threads must be at least 1");
    } else {
      throw UsageError("generate: unknown argument '" + a + "'");
    }
  }
  if (config.model_path.empty()) throw UsageError("generate: --model is required");
  if (config.tokenizer_path.empty()) throw UsageError("generate: --tokenizer is required");
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  lwq::text::keep_freed_memory_in_heap();
  if (!seed_given) {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    config.generate.seed = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(now).count());
  }

  const lwq::text::GenerateResult r = lwq::text::generate_text(config, std::cout);
  std::cerr << "prompt: " << r.prompt_tokens << " tokens in " << r.prefill_seconds * 1e3 << " ms; generated "
            << r.generated << " tokens, stopped at " << r.stop << " after " << r.positions << " positions; decode "
            << r.decode_tokens_per_s() << " tokens/s (" << r.decode_forwards << " one-token forwards in "
            << r.decode_seconds << " s)";
  if (config.generate.temperature > 0) std::cerr << "; seed " << config.generate.seed;
  std::cerr << std::endl;
  return 0;
}

}  // namespace cli
}  // namespace lwq
