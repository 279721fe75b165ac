// Language-model quality: mean next-token negative log-likelihood (nats per predicted token) of a TorchScript
// model over token sequences, and the text protocol `lwq eval` uses (docs/evaluation.md). The numbers match
// scripts/llama2c.py's eval_sequences + sequence_nll on the same model and text.
#pragma once

#include <torch/script.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

struct EvalResult {
  double nll = 0;        // mean NLL per predicted token, nats
  double total_nll = 0;  // sum over predicted tokens
  int64_t tokens = 0;    // predicted (scored) tokens: sum over sequences of (length - score_from)
  int64_t sequences = 0;
  int64_t batches = 0;
  double seconds = 0;
  double perplexity() const { return std::exp(nll); }
};

// Scores each sequence on its own: logits[t] of model.forward(ids[None]) predict ids[t + 1]. Sequences are sorted
// by length and grouped into right-padded batches of at most max_tokens_per_batch tokens including padding (a
// longer sequence gets a batch of its own); causal attention makes the padding invisible to the real positions
// and its predictions are not counted. Cross-entropy is computed in double. Sequences of fewer than 2 tokens
// predict nothing. Only ids[t] with t >= score_from are scored (1: every prediction; the chunked protocol scores the
// second half). progress(done, total) is called before each batch and once after the last. Throws when a token is outside the model's
// vocabulary or the output is not [B, L, V] logits.
using EvalProgress = std::function<void(int64_t batches_done, int64_t batches_total)>;
EvalResult evaluate_nll(torch::jit::Module& model, const std::vector<std::vector<int64_t>>& sequences,
                        int64_t max_tokens_per_batch = 2048, int64_t score_from = 1,
                        const EvalProgress& progress = {});

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

// The chunked protocol (llama.cpp's llama-perplexity): `tokens` (the text as one stream, no BOS) cut into
// consecutive windows of seq_len tokens, each BOS + seq_len - 1 text tokens when bos >= 0, else seq_len text
// tokens; no text token is in two windows. What is left after the last whole window is not scored (tail_tokens);
// a text shorter than one window gives no window. Scoring takes the window's tokens from index seq_len / 2 on
// (chunked_score_from), each predicted with at least half a window of context.
struct ChunkedWindows {
  std::vector<std::vector<int64_t>> windows;
  int64_t tail_tokens = 0;  // text tokens after the last whole window
};
ChunkedWindows chunked_windows(const std::vector<int64_t>& tokens, int64_t seq_len, int64_t bos);
inline int64_t chunked_score_from(int64_t seq_len) { return seq_len / 2; }

struct EvalConfig {
  std::string model_path;      // TorchScript archive (float, or quantized: liblwq_ops must be loaded)
  std::string weights_path;    // safetensors for an archive with empty parameters; "" when it holds them
  std::string tokenizer_path;  // any format load_tokenizer reads
  std::string text_path;       // blank-line separated paragraphs
  int64_t segments = -1;       // the first N paragraphs; < 0: all
  int64_t seq_len = 0;         // tokens per sequence or window (BOS included); 0: the model's maximum
  int64_t batch_tokens = 2048;
  // false: each paragraph on its own (BOS + its tokens, truncated); true: the chunked protocol over the
  // paragraphs' tokens concatenated (chunked_windows).
  bool chunked = false;
  EvalProgress progress;  // as evaluate_nll calls it, when set
};

struct TextEvalResult : EvalResult {
  int64_t segments = 0;     // paragraphs read
  int64_t seq_len = 0;      // the truncation (or window) length used
  int64_t truncated = 0;    // per paragraph: paragraphs longer than seq_len tokens
  int64_t text_tokens = 0;  // chunked: the tokens of the text (no BOS)
  int64_t windows = 0;      // chunked: windows scored (EvalResult::sequences)
  int64_t tail_tokens = 0;  // chunked: text tokens after the last whole window, not scored
};

// Loads the model, the tokenizer and the text, and evaluates (the whole `lwq eval`). The chunked protocol refuses
// a text shorter than one window, naming both lengths.
TextEvalResult evaluate_text(const EvalConfig& config);

}  // namespace text
}  // namespace lwq
