// Mean next-token NLL of a TorchScript model, and the text protocol of `lwq eval` (docs/evaluation.md); both
// mirror scripts/llama2c.py (length_batches, pad_batch, sequence_nll, read_segments, eval_sequences).
#include "lwq/text/evaluate.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <numeric>

#include "lwq/text/load_model.h"

namespace lwq {
namespace text {

namespace {

// Rows of logits converted to double at a time: bounds the copy for large vocabularies (512 x 32000 x 8 B).
constexpr int64_t kLossChunk = 512;

// The code point of the UTF-8 sequence at s[i] and its length; -1 when it is not valid UTF-8 (overlong forms,
// surrogates and values above U+10FFFF included, as Python's strict decoder refuses them).
int32_t decode_utf8(const std::string& s, size_t i, size_t* len) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  *len = 1;
  if (b0 < 0x80) return b0;
  size_t n;
  int32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  if (i + n > s.size()) return -1;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char b = byte(i + k);
    if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (b & 0x3F);
  }
  *len = n;
  return cp;
}

// Python's str.isspace(), which str.strip() uses.
bool is_python_space(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// s without leading and trailing Python whitespace (s is valid UTF-8).
std::string strip(const std::string& s) {
  std::vector<std::pair<size_t, size_t>> spans;  // (begin, end) byte range of each code point
  std::vector<bool> space;
  for (size_t i = 0, n = 0; i < s.size(); i += n) {
    space.push_back(is_python_space(decode_utf8(s, i, &n)));
    spans.emplace_back(i, i + n);
  }
  size_t first = 0, last = spans.size();
  while (first < last && space[first]) ++first;
  while (last > first && space[last - 1]) --last;
  if (first == last) return "";
  return s.substr(spans[first].first, spans[last - 1].second - spans[first].first);
}

at::Tensor logits_of(torch::jit::Module& model, const at::Tensor& tokens) {
  c10::IValue out;
  try {
    out = model.forward({tokens});
  } catch (const std::exception& e) {
    // Errors inside TorchScript code arrive as std::runtime_error holding the script's traceback.
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    TORCH_CHECK(false, "the model's forward failed on tokens of shape ", tokens.sizes(), " (ids ",
                tokens.min().item<int64_t>(), "..", tokens.max().item<int64_t>(), "): ",
                c10_error ? c10_error->what_without_backtrace() : e.what());
  }
  TORCH_CHECK(out.isTensor(), "the model's forward must return the logits tensor [batch, length, vocab], got ",
              out.tagKind());
  const at::Tensor logits = out.toTensor();
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == tokens.size(0) && logits.size(1) == tokens.size(1),
              "the model's forward gave logits of shape ", logits.sizes(), " for tokens of shape ", tokens.sizes(),
              "; expected [batch, length, vocab]");
  return logits;
}

}  // namespace

std::vector<std::vector<size_t>> length_batches(const std::vector<std::vector<int64_t>>& sequences,
                                                int64_t max_tokens_per_batch) {
  TORCH_CHECK(max_tokens_per_batch > 0, "tokens per batch must be positive, got ", max_tokens_per_batch);
  std::vector<size_t> order(sequences.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sequences[a].size() < sequences[b].size(); });
  std::vector<std::vector<size_t>> batches;
  std::vector<size_t> current;
  for (const size_t i : order) {
    // Ascending lengths: sequence i is the longest of the batch if it joins, so it sets the padded length.
    const int64_t padded = static_cast<int64_t>(current.size() + 1) * static_cast<int64_t>(sequences[i].size());
    if (!current.empty() && padded > max_tokens_per_batch) {
      batches.push_back(std::move(current));
      current.clear();
    }
    current.push_back(i);
  }
  if (!current.empty()) batches.push_back(std::move(current));
  return batches;
}

EvalResult evaluate_nll(torch::jit::Module& model, const std::vector<std::vector<int64_t>>& sequences,
                        int64_t max_tokens_per_batch, int64_t score_from, const EvalProgress& progress) {
  TORCH_CHECK(score_from >= 1, "the first scored token must be at index 1 or later, got ", score_from);
  const auto start = std::chrono::steady_clock::now();
  const at::NoGradGuard no_grad;
  EvalResult result;
  result.sequences = static_cast<int64_t>(sequences.size());
  const auto batches = length_batches(sequences, max_tokens_per_batch);
  int64_t done = 0;
  for (const auto& indices : batches) {
    const int64_t B = static_cast<int64_t>(indices.size());
    const int64_t T = static_cast<int64_t>(sequences[indices.back()].size());
    if (progress) progress(done++, static_cast<int64_t>(batches.size()));
    if (T <= score_from) continue;
    // Right padding with id 0: it only follows the real tokens, which causal attention keeps from seeing it.
    at::Tensor tokens = at::zeros({B, T}, at::kLong);
    int64_t* tok = tokens.data_ptr<int64_t>();
    for (int64_t r = 0; r < B; ++r) {
      const auto& s = sequences[indices[r]];
      std::copy(s.begin(), s.end(), tok + r * T);
    }
    const at::Tensor logits = logits_of(model, tokens);
    const int64_t V = logits.size(2);
    const int64_t lowest = tokens.min().item<int64_t>(), highest = tokens.max().item<int64_t>();
    TORCH_CHECK(lowest >= 0 && highest < V, "token ids must be in [0, ", V, ") (the model's vocabulary), got ",
                lowest < 0 ? lowest : highest);
    ++result.batches;
    for (int64_t r = 0; r < B; ++r) {
      // logits[t] predicts ids[t + 1]: rows score_from - 1 .. length - 2.
      const int64_t predicted = static_cast<int64_t>(sequences[indices[r]].size()) - 1;
      for (int64_t t0 = score_from - 1; t0 < predicted; t0 += kLossChunk) {
        const int64_t t1 = std::min(predicted, t0 + kLossChunk);
        const at::Tensor lp = at::log_softmax(logits[r].slice(0, t0, t1).to(at::kDouble), -1);
        const at::Tensor target = tokens[r].slice(0, t0 + 1, t1 + 1).unsqueeze(1);
        result.total_nll -= lp.gather(1, target).sum().item<double>();
      }
      result.tokens += std::max<int64_t>(predicted - (score_from - 1), 0);
    }
  }
  if (progress) progress(done, static_cast<int64_t>(batches.size()));
  result.nll = result.tokens > 0 ? result.total_nll / static_cast<double>(result.tokens) : 0.0;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

std::vector<std::string> read_segments(const std::string& path, int64_t count) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "text ", path, ": cannot open the file");
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), "text ", path, ": read error");
  // Universal newlines, as Python's text mode reads the file.
  std::string text;
  text.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      text += '\n';
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      text += raw[i];
    }
  }
  for (size_t i = 0, n = 0, line = 1; i < text.size(); i += n) {
    TORCH_CHECK(decode_utf8(text, i, &n) >= 0, "text ", path, ": not valid UTF-8 at byte ", i, " (line ", line, ")");
    if (text[i] == '\n') ++line;
  }
  std::vector<std::string> segments;
  auto add = [&](size_t begin, size_t end) {
    std::string s = strip(text.substr(begin, end - begin));
    if (!s.empty()) segments.push_back(std::move(s));
  };
  size_t begin = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\n') continue;
    // A separator: newline, spaces or tabs, newline.
    size_t j = i + 1;
    while (j < text.size() && (text[j] == ' ' || text[j] == '\t')) ++j;
    if (j < text.size() && text[j] == '\n') {
      add(begin, i);
      begin = j + 1;
      i = j;
    }
  }
  add(begin, text.size());
  if (count >= 0 && static_cast<size_t>(count) < segments.size()) segments.resize(static_cast<size_t>(count));
  return segments;
}

ChunkedWindows chunked_windows(const std::vector<int64_t>& tokens, int64_t seq_len, int64_t bos) {
  TORCH_CHECK(seq_len >= 2, "window length must be at least 2, got ", seq_len);
  const int64_t text_per_window = bos >= 0 ? seq_len - 1 : seq_len;
  const int64_t n = static_cast<int64_t>(tokens.size());
  ChunkedWindows out;
  int64_t at = 0;
  for (; at + text_per_window <= n; at += text_per_window) {
    std::vector<int64_t> w;
    w.reserve(static_cast<size_t>(seq_len));
    if (bos >= 0) w.push_back(bos);
    w.insert(w.end(), tokens.begin() + at, tokens.begin() + at + text_per_window);
    out.windows.push_back(std::move(w));
  }
  out.tail_tokens = n - at;
  return out;
}

std::vector<std::vector<int64_t>> eval_sequences(const text::Tokenizer& tokenizer,
                                                 const std::vector<std::string>& segments, int64_t seq_len,
                                                 int64_t* truncated) {
  TORCH_CHECK(seq_len >= 1, "sequence length must be at least 1, got ", seq_len);
  std::vector<std::vector<int64_t>> out;
  out.reserve(segments.size());
  if (truncated) *truncated = 0;
  for (const auto& s : segments) {
    std::vector<int64_t> ids = tokenizer.encode(s, /*bos=*/true, /*eos=*/false);
    if (static_cast<int64_t>(ids.size()) > seq_len) {
      ids.resize(static_cast<size_t>(seq_len));
      if (truncated) ++*truncated;
    }
    out.push_back(std::move(ids));
  }
  return out;
}

TextEvalResult evaluate_text(const EvalConfig& config) {
  TORCH_CHECK(!config.model_path.empty(), "eval: no model given");
  TORCH_CHECK(!config.tokenizer_path.empty(), "eval: no tokenizer given");
  TORCH_CHECK(!config.text_path.empty(), "eval: no text file given");
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(config.tokenizer_path);
  const std::vector<std::string> segments = read_segments(config.text_path, config.segments);
  TORCH_CHECK(!segments.empty(), "eval: the text ", config.text_path, " has no paragraphs");
  torch::jit::Module model = load_model(config.model_path, config.weights_path);
  int64_t seq_len = config.seq_len;
  const int64_t max_seq_len = model_max_seq_len(model, config.model_path);
  if (seq_len <= 0) {
    seq_len = max_seq_len;
    TORCH_CHECK(seq_len > 0, "eval: the model ", config.model_path, " does not say its maximum sequence length ",
                "(no max_seq_len attribute, rope_cos buffer or config.json); give --seq-len");
  }
  // Checked here: beyond it the model's forward fails inside TorchScript with a traceback.
  TORCH_CHECK(max_seq_len <= 0 || seq_len <= max_seq_len, "eval: --seq-len ", seq_len, " is longer than the model ",
              config.model_path, " can take (", max_seq_len, " positions)");
  TextEvalResult result;
  result.segments = static_cast<int64_t>(segments.size());
  result.seq_len = seq_len;
  if (!config.chunked) {
    const auto sequences = eval_sequences(*tokenizer, segments, seq_len, &result.truncated);
    static_cast<EvalResult&>(result) = evaluate_nll(model, sequences, config.batch_tokens, 1, config.progress);
    return result;
  }
  // One stream of the paragraphs' tokens: BOS only where a window starts, as llama-perplexity does.
  std::vector<int64_t> stream;
  for (const std::string& s : segments) {
    const std::vector<int64_t> ids = tokenizer->encode_text(s);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  const SpecialTokens& special = tokenizer->special();
  const int64_t bos = special.add_bos ? special.bos : -1;
  const ChunkedWindows chunks = chunked_windows(stream, seq_len, bos);
  TORCH_CHECK(!chunks.windows.empty(), "eval: the text ", config.text_path, " gives ", stream.size(),
              " tokens, fewer than one window of ", bos >= 0 ? seq_len - 1 : seq_len, " text tokens (--seq-len ",
              seq_len, bos >= 0 ? ", BOS included" : "", "); give a shorter --seq-len or a longer text");
  static_cast<EvalResult&>(result) =
      evaluate_nll(model, chunks.windows, config.batch_tokens, chunked_score_from(seq_len), config.progress);
  result.text_tokens = static_cast<int64_t>(stream.size());
  result.windows = static_cast<int64_t>(chunks.windows.size());
  result.tail_tokens = chunks.tail_tokens;
  return result;
}

}  // namespace text
}  // namespace lwq
