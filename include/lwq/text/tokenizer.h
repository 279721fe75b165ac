// What the tool needs of a tokenizer, whatever the file it came from: ids of plain text, text of ids, and the
// special ids a model's text starts and ends with. load_tokenizer reads every format lwq knows:
//   - llama2.c's tokenizer.bin (llama2c_tokenizer.h),
//   - a SentencePiece tokenizer.model,
//   - a Hugging Face tokenizer.json (SentencePiece-style BPE with byte fallback, or byte-level BPE),
//   - a model directory holding one of them, whose tokenizer_config.json / generation_config.json (or the
//     directory beside a file given directly) set BOS, the EOS ids and add_bos_token.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lwq {
namespace text {

// The ids around a model's text. bos < 0: the model has no BOS (Qwen2); eos may hold several ids (Llama-3's
// <|end_of_text|> and <|eot_id|>): generation stops at any of them.
struct SpecialTokens {
  int64_t bos = -1;
  std::vector<int64_t> eos;
  bool add_bos = true;  // tokenizer_config.json's add_bos_token: whether encoded text starts with BOS
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of `text` as plain text: the spelling of a special token in it is text, not the special id (user input
  // cannot inject control tokens). Arbitrary bytes are accepted; invalid UTF-8 is encoded as the format does it.
  virtual std::vector<int64_t> encode_text(const std::string& text) const = 0;
  // The text of `ids`, special ids (BOS, EOS, control tokens) skipped; throws naming an id outside the vocabulary.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // The id of a token spelled `token` in the vocabulary (special tokens included), or -1: how the configs' bos_token
  // and eos_token strings become ids.
  virtual int64_t token_id(const std::string& token) const = 0;
  // What was read, for `lwq inspect` and messages, e.g. "tokenizer.json (byte-level BPE, 50257 tokens) /path".
  virtual std::string describe() const = 0;

  // encode_text with BOS first when `bos` is asked and the model uses one (special().add_bos), EOS last when `eos`
  // is asked and the model has one.
  std::vector<int64_t> encode(const std::string& text, bool bos, bool eos) const;

  const SpecialTokens& special() const { return special_; }
  void set_special(SpecialTokens s) { special_ = std::move(s); }
  bool is_eos(int64_t id) const;

 protected:
  SpecialTokens special_;
};

// Reads the tokenizer at `path`: a file (by name: *.json is a Hugging Face tokenizer.json, *.model a SentencePiece
// model, anything else llama2.c's format) or a model directory, where tokenizer.json, then tokenizer.model, then
// tokenizer.bin is taken. tokenizer_config.json (add_bos_token, bos_token, eos_token) and generation_config.json
// (bos_token_id, eos_token_id) in the same directory, when present, set special(). Throws c10::Error naming the
// file and what is wrong, or, for a directory without a tokenizer, the names looked for.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// Text of generated ids as it becomes final, for streaming: push() returns the new text once the ids decode to
// complete UTF-8 (a character split over byte-fallback or byte-level tokens waits for its last byte); finish()
// returns what is left. `context` (e.g. the prompt) is decoded for the spacing of the first piece, not returned.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, std::vector<int64_t> context);
  std::string push(int64_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0;  // ids_[prefix_, read_) were printed; decoding from prefix_ fixes the spacing of what follows
  size_t read_ = 0;
};

}  // namespace text
}  // namespace lwq
