// The tokenizer of llama2.c's tokenizer.bin format (tok512.bin for stories260K, tokenizer.bin for Llama 2):
// int32 max_token_length, then for each piece float32 score, int32 byte length, the bytes (all little-endian).
// Ids 0, 1, 2 are <unk>, BOS, EOS; ids 3..258 are the byte-fallback pieces <0x00>..<0xFF>.
//
// Encoding is SentencePiece BPE as llama2.c's run.c does it: a dummy-prefix space before non-empty text, one piece
// per UTF-8 character (or its bytes as byte-fallback ids when the character is not a piece), then repeatedly merge
// the adjacent pair whose concatenation is a piece with the highest score (the leftmost pair on ties).
// python/lwq/llama2c.py's Tokenizer is the Python reference; both give the same ids.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

class Llama2cTokenizer : public Tokenizer {
 public:
  static constexpr int64_t kBos = 1, kEos = 2;
  static constexpr int64_t kByteOffset = 3;  // id of the piece <0x00>

  // Reads and validates a tokenizer.bin; throws c10::Error naming the file (and the piece) when it is truncated,
  // has a negative or oversized length, a NaN score, or lacks the byte-fallback pieces at ids 3..258.
  static Llama2cTokenizer load(const std::string& path);
  // From pieces and scores in memory (the same checks; `what` names the source in errors).
  static Llama2cTokenizer from_pieces(std::vector<std::string> pieces, std::vector<float> scores,
                               const std::string& what = "tokenizer");

  // Ids of `text` (arbitrary bytes; invalid UTF-8 bytes fall back to byte pieces).
  std::vector<int64_t> encode_text(const std::string& text) const override;

  // The text of `ids` following a BOS: BOS and EOS are skipped, the leading space of a piece right after BOS is
  // dropped, byte pieces become their raw bytes (so byte-fallback sequences reassemble into UTF-8).
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string describe() const override;

  // The bytes llama2.c's decode() gives for `token` following `prev`: the piece, without its leading space when
  // prev is BOS, or the single raw byte of a <0xNN> piece.
  std::string decode_piece(int64_t prev, int64_t token) const;

  // What run.c's safe_printf prints of a decoded piece: nothing for a single byte that is neither printable ASCII
  // nor whitespace (control codes, lone UTF-8 bytes), else the piece up to any NUL byte.
  static std::string printable(const std::string& piece);

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  const std::string& piece(int64_t id) const;
  float score(int64_t id) const;
  int32_t max_token_length() const { return max_token_length_; }
  // The id of a piece, or -1 (the first id when the vocabulary repeats a piece, as the Python reference does).
  int64_t piece_id(const std::string& piece) const;
  int64_t token_id(const std::string& token) const override { return piece_id(token); }

 private:
  Llama2cTokenizer();
  void index(const std::string& what);
  std::vector<int64_t> merge(std::vector<int64_t> ids) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int16_t> byte_value_;  // the byte a <0xNN> piece stands for, or -1
  std::unordered_map<std::string, int64_t> ids_;
  int32_t max_token_length_ = 0;
  std::string source_;  // the file read, for describe()
};

}  // namespace text
}  // namespace lwq
