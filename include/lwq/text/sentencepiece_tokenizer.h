// A SentencePiece tokenizer.model (Llama 1/2, Mistral, ...), read and run by Debian's libsentencepiece (through
// liblwq_sentencepiece.so, see src/text/tokenizers/sentencepiece_shim.cpp): the ids are the library's own. BOS, EOS and unk come from
// the model (its trainer spec); a model directory's configs may override BOS/EOS (load_tokenizer).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Reads `path`; throws c10::Error naming it when it is missing or not a SentencePiece model.
  static std::unique_ptr<SentencePieceTokenizer> load(const std::string& path);
  // From the serialized model proto in memory (`what` names the source in errors and describe()).
  static std::unique_ptr<SentencePieceTokenizer> from_model_bytes(const std::string& bytes, const std::string& what);
  ~SentencePieceTokenizer() override;

  // The spelling of a control piece (<s>, </s>) in `text` is text, as SentencePiece itself encodes it.
  std::vector<int64_t> encode_text(const std::string& text) const override;
  // Control ids (BOS, EOS) decode to nothing, byte pieces to their raw bytes, unk to " \u2047 " as SentencePiece.
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override;
  int64_t token_id(const std::string& token) const override;
  std::string describe() const override;

 private:
  SentencePieceTokenizer();
  void* sp_ = nullptr;  // the module's processor
  int64_t pieces_ = 0;
  std::string source_;
};

}  // namespace text
}  // namespace lwq
