// Text generation with a TorchScript model of docs/model-contract.md (init_cache / forward_cached), following llama2.c's
// run.c: `steps` counts positions, prompt included; prompt tokens after the first are emitted as they are forced,
// then tokens are chosen (argmax at temperature 0, else sampled) until `steps` positions have run, `max_tokens`
// tokens were chosen, or BOS comes out. run.c stops only at BOS; with stop_at_eos (default) any EOS id also ends
// the text, unprinted. A prompt longer than the positions is refused, not cut.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

// run.c's sampler: xorshift random numbers, softmax at a temperature, optional nucleus (top-p) truncation; with
// top_k in [1, vocab) the k most probable tokens are kept first (ties: lower id), then top-p applies to their
// renormalised distribution (llama.cpp's order). Without top-k the draws are run.c's, number for number.
class Sampler {
 public:
  Sampler(double temperature, int64_t top_k, double top_p, uint64_t seed);
  // The next token given one position's logits (modified in place when sampling).
  int64_t next(std::vector<float>& logits);
  static int64_t argmax(const std::vector<float>& logits);  // the first maximum

 private:
  uint32_t random_u32();
  float random_f32();
  int64_t next_top_k(std::vector<float>& logits);
  double temperature_;
  int64_t top_k_;
  double top_p_;
  uint64_t state_;
};

struct GenerateConfig {
  int64_t steps = 256;       // positions to run, prompt included; 0: the model's maximum (also the upper bound)
  int64_t max_tokens = -1;   // tokens to choose after the prompt; < 0: until `steps` (whichever ends first)
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // keep the k most probable tokens; 0 (or >= the vocabulary): all
  double top_p = 0.9;        // nucleus sampling when 0 < top_p < 1, else sampling from the whole distribution
  uint64_t seed = 1;         // nonzero
  bool stop_at_eos = true;
  SpecialTokens special{1, {2}, true};  // BOS ends generation (as in run.c), any EOS id too when stop_at_eos
};

struct GenerateResult {
  std::vector<int64_t> tokens;  // what was emitted: prompt tokens after the first, then the chosen ones
  int64_t prompt_tokens = 0;    // BOS included
  int64_t generated = 0;        // chosen (not forced) tokens
  int64_t positions = 0;        // positions the model ran
  std::string stop;             // "steps", "max_tokens", "bos" or "eos"
  double prefill_seconds = 0;   // the prompt's forward_cached
  double decode_seconds = 0;    // the one-token forward_cached calls after it
  int64_t decode_forwards = 0;
  // Of decode_seconds, the time inside lwq's packed linear operators (op_stats.h): the rest is everything else of
  // the forward (norms, attention, rotary, float linears such as an unquantized head, the interpreter).
  double decode_linear_seconds = 0;
  double decode_tokens_per_s() const { return decode_seconds > 0 ? decode_forwards / decode_seconds : 0.0; }
};

// Generates from `prompt` (at least one token, normally BOS first). max_seq_len bounds steps (0: unknown, steps
// must then be given); a prompt of more tokens than the positions that gives is refused, naming both lengths.
// on_token(prev, token) is called for each emitted token as it is known.
GenerateResult generate(torch::jit::Module& model, const std::vector<int64_t>& prompt, int64_t max_seq_len,
                        const GenerateConfig& config,
                        const std::function<void(int64_t prev, int64_t token)>& on_token = {});

struct GenerateTextConfig {
  std::string model_path, weights_path, tokenizer_path;
  std::string prompt;  // "" : BOS alone
  GenerateConfig generate;
};

// The whole `lwq generate`: loads, encodes the prompt with BOS (where the tokenizer uses one), and streams the text
// of the emitted tokens to `out` as it becomes final (StreamDecoder; with llama2.c's tokenizer, what run.c prints),
// flushed as it comes, then a newline.
GenerateResult generate_text(const GenerateTextConfig& config, std::ostream& out);

}  // namespace text
}  // namespace lwq
