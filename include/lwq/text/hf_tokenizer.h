// A Hugging Face tokenizer.json with a BPE model, run in lwq's own code (the ids match the `tokenizers` library's,
// checked id for id in tests/python/test_tokenizers.py). What is read:
//   - model BPE: vocab, merges ("a b" strings or [a, b] pairs), byte_fallback, fuse_unk, unk_token, ignore_merges;
//   - normalizers Prepend, Replace, NFC, NFKC, NFD, NFKD, Sequence (or none);
//   - pre-tokenizers ByteLevel (add_prefix_space, use_regex), Split (string or regex pattern, every behavior,
//     invert), Metaspace (replacement, prepend_scheme, split), Digits, Sequence (or none);
//   - decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence (or none);
//   - added_tokens: non-special ones are matched in text, as `tokenizers` does; special ones are not (their
//     spelling in text is plain text, as `tokenizers` with encode_special_tokens = True) and decode skips them.
// Any other component (a WordPiece or Unigram model, another normalizer or pre-tokenizer, BPE dropout) is refused
// with a message naming it and the file. The post_processor, truncation and padding are not applied: BOS and EOS
// come from special(), which load_tokenizer sets from the model's configs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

class HfTokenizer : public Tokenizer {
 public:
  // Reads `path`; throws c10::Error naming it and the component it cannot run.
  static std::unique_ptr<HfTokenizer> load(const std::string& path);
  // From the JSON text in memory (a fuzz target's entry point); `what` names the source in errors and describe().
  static std::unique_ptr<HfTokenizer> from_json_text(const std::string& json_text, const std::string& what);
  ~HfTokenizer() override;

  // Arbitrary bytes: invalid UTF-8 is never matched by a split pattern and goes to the model byte by byte (byte-level
  // BPE round-trips it; byte fallback gives its <0xNN> ids).
  std::vector<int64_t> encode_text(const std::string& text) const override;
  // Byte tokens (byte-level and <0xNN>) give their raw bytes, not U+FFFD, so a character split over tokens
  // reassembles (StreamDecoder) and byte-level BPE returns invalid input unchanged.
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override;
  std::string describe() const override;

  // The id of a token (an added token first, then the model vocabulary), or -1.
  int64_t token_id(const std::string& token) const override;
  // The content of an id, or "" for an id without a token.
  std::string token(int64_t id) const;
  // Whether `id` is an added token marked special.
  bool is_special(int64_t id) const;

  struct Impl;

 private:
  HfTokenizer();
  std::unique_ptr<Impl> impl_;
};

}  // namespace text
}  // namespace lwq
