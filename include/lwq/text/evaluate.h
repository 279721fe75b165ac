// Language-model quality: mean next-token negative log-likelihood (nats per predicted token) of a TorchScript
// model over token sequences, and the text protocol `lwq eval` uses (docs/evaluation.md). The numbers match
// scripts/llama2c.py's eval_sequences + sequence_nll on the same model and text.
#pragma once

#include <torch/script.h>

#include <cmath>
#include <string>
#include <vector>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

struct EvalResult {
  double nll = 0;        // mean NLL per predicted token, nats
  double total_nll = 0;  // sum over predicted tokens
  int64_t tokens = 0;    // predicted tokens: sum over sequences of (length - 1)
  int64_t sequences = 0;
  int64_t batches = 0;
  double seconds = 0;
  double perplexity() const { return std::exp(nll); }
};

// Scores each sequence on its own: logits[t] of model.forward(ids[None]) predict ids[t + 1]. Sequences are sorted
// by length and grouped into right-padded batches of at most max_tokens_per_batch tokens including padding (a
// longer sequence gets a batch of its own); causal attention makes the padding invisible to the real positions
// and its predictions are not counted. Cross-entropy is computed in double. Sequences of fewer than 2 tokens
// predict nothing. Throws when a token is outside the model's vocabulary or the output is not [B, L, V] logits.
EvalResult evaluate_nll(torch::jit::Module& model, const std::vector<std::vector<int64_t>>& sequences,
                        int64_t max_tokens_per_batch = 2048);

// The batches evaluate_nll forms: indices of the sequences, shortest first (ties in input order).
std::vector<std::vector<size_t>> length_batches(const std::vector<std::vector<int64_t>>& sequences,
                                                int64_t max_tokens_per_batch);

// The blank-line separated paragraphs of a UTF-8 text file (line ends \r\n and \r read as \n; paragraphs split at
// a newline, optional spaces/tabs, a newline; each stripped of surrounding whitespace; empty ones dropped): the
// first `count`, or all when count < 0. Throws naming the file when it cannot be read or is not valid UTF-8.
std::vector<std::string> read_segments(const std::string& path, int64_t count = -1);

// BOS + the tokens of each segment, truncated to seq_len tokens; *truncated (when given) counts the cut ones.
std::vector<std::vector<int64_t>> eval_sequences(const text::Tokenizer& tokenizer,
                                                 const std::vector<std::string>& segments, int64_t seq_len,
                                                 int64_t* truncated = nullptr);

struct EvalConfig {
  std::string model_path;      // TorchScript archive (float, or quantized: liblwq_ops must be loaded)
  std::string weights_path;    // safetensors for an archive with empty parameters; "" when it holds them
  std::string tokenizer_path;  // llama2.c tokenizer.bin
  std::string text_path;       // blank-line separated paragraphs
  int64_t segments = -1;       // the first N paragraphs; < 0: all
  int64_t seq_len = 0;         // tokens per sequence (BOS included); 0: the model's maximum
  int64_t batch_tokens = 2048;
};

struct TextEvalResult : EvalResult {
  int64_t segments = 0;  // paragraphs read
  int64_t seq_len = 0;   // the truncation length used
  int64_t truncated = 0; // paragraphs longer than seq_len tokens
};

// Loads the model, the tokenizer and the text, and evaluates (the whole `lwq eval`).
TextEvalResult evaluate_text(const EvalConfig& config);

}  // namespace text
}  // namespace lwq
