// llama2.c's tokenizer.bin: file reader, BPE encoder (heap of candidate merges over a linked list of pieces), decoder.
#include "lwq/text/llama2c_tokenizer.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <queue>
#include <utility>

namespace lwq {
namespace text {

namespace {

// A piece length above this is not a tokenizer (SentencePiece pieces are a few dozen bytes at most).
constexpr int32_t kMaxPieceBytes = 1 << 16;

template <typename T>
T read_le(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86-64 and aarch64 are little-endian, as the format is
  return v;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte of a piece spelled exactly "<0xNN>", or -1.
int byte_piece_value(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  const int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Length of the UTF-8 character starting at text[i], or 1 for a byte that does not start a complete one.
size_t utf8_length(const std::string& text, size_t i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  size_t n = 1;
  if ((lead & 0xE0) == 0xC0) {
    n = 2;
  } else if ((lead & 0xF0) == 0xE0) {
    n = 3;
  } else if ((lead & 0xF8) == 0xF0) {
    n = 4;
  }
  if (n == 1 || i + n > text.size()) return 1;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return 1;
  }
  return n;
}

}  // namespace

Llama2cTokenizer Llama2cTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "tokenizer ", path, ": cannot open the file");
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), "tokenizer ", path, ": read error");
  TORCH_CHECK(data.size() >= 4, "tokenizer ", path, ": ", data.size(),
              " bytes, too short for a llama2.c tokenizer (4-byte max_token_length first)");
  const int32_t max_len = read_le<int32_t>(data.data());
  TORCH_CHECK(max_len > 0 && max_len <= kMaxPieceBytes, "tokenizer ", path, ": max_token_length ", max_len,
              " is not in 1..", kMaxPieceBytes, "; not a llama2.c tokenizer.bin");

  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t pos = 4;
  while (pos < data.size()) {
    const size_t i = pieces.size();
    TORCH_CHECK(pos + 8 <= data.size(), "tokenizer ", path, ": truncated in the header of piece ", i, " (",
                data.size() - pos, " bytes left, 8 needed)");
    const float score = read_le<float>(data.data() + pos);
    const int32_t n = read_le<int32_t>(data.data() + pos + 4);
    pos += 8;
    TORCH_CHECK(n >= 0, "tokenizer ", path, ": piece ", i, " has a negative length ", n);
    TORCH_CHECK(n <= max_len, "tokenizer ", path, ": piece ", i, " is ", n, " bytes long, above the file's ",
                "max_token_length ", max_len);
    TORCH_CHECK(pos + static_cast<size_t>(n) <= data.size(), "tokenizer ", path, ": truncated in piece ", i,
                " (", n, " bytes expected, ", data.size() - pos, " left)");
    pieces.emplace_back(data, pos, static_cast<size_t>(n));
    scores.push_back(score);
    pos += static_cast<size_t>(n);
  }
  Llama2cTokenizer t = from_pieces(std::move(pieces), std::move(scores), "tokenizer " + path);
  t.max_token_length_ = max_len;
  t.source_ = path;
  return t;
}

Llama2cTokenizer Llama2cTokenizer::from_pieces(std::vector<std::string> pieces, std::vector<float> scores, const std::string& what) {
  TORCH_CHECK(pieces.size() == scores.size(), what, ": ", pieces.size(), " pieces but ", scores.size(), " scores");
  Llama2cTokenizer t;
  t.pieces_ = std::move(pieces);
  t.scores_ = std::move(scores);
  t.index(what);
  for (const auto& p : t.pieces_) t.max_token_length_ = std::max(t.max_token_length_, static_cast<int32_t>(p.size()));
  return t;
}

void Llama2cTokenizer::index(const std::string& what) {
  TORCH_CHECK(vocab_size() >= kByteOffset + 256, what, ": ", vocab_size(),
              " pieces, fewer than the 259 special and byte-fallback pieces every llama2.c tokenizer has");
  byte_value_.assign(pieces_.size(), -1);
  ids_.clear();
  ids_.reserve(pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i) {
    TORCH_CHECK(!std::isnan(scores_[i]), what, ": piece ", i, " has a NaN score");
    byte_value_[i] = static_cast<int16_t>(byte_piece_value(pieces_[i]));
    ids_.emplace(pieces_[i], static_cast<int64_t>(i));  // keeps the first id of a repeated piece
  }
  for (int b = 0; b < 256; ++b) {
    const int64_t id = kByteOffset + b;
    TORCH_CHECK(byte_value_[id] == b, what, ": piece ", id, " is '", pieces_[id], "', expected the byte-fallback ",
                "piece <0x", "0123456789ABCDEF"[b >> 4], "0123456789ABCDEF"[b & 15], ">");
  }
}

const std::string& Llama2cTokenizer::piece(int64_t id) const {
  TORCH_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " is outside the vocabulary of ", vocab_size(),
              " pieces");
  return pieces_[id];
}

float Llama2cTokenizer::score(int64_t id) const {
  piece(id);  // range check
  return scores_[id];
}

int64_t Llama2cTokenizer::piece_id(const std::string& p) const {
  const auto it = ids_.find(p);
  return it == ids_.end() ? -1 : it->second;
}

Llama2cTokenizer::Llama2cTokenizer() { special_ = SpecialTokens{kBos, {kEos}, /*add_bos=*/true}; }

std::string Llama2cTokenizer::describe() const {
  return "llama2.c tokenizer.bin (" + std::to_string(vocab_size()) + " pieces)" + (source_.empty() ? "" : " " + source_);
}

std::vector<int64_t> Llama2cTokenizer::encode_text(const std::string& text) const {
  std::vector<int64_t> ids;
  if (!text.empty()) {
    // SentencePiece's dummy prefix: a space before the text, so a word at the start tokenizes as mid-text.
    const std::string s = " " + text;
    std::vector<int64_t> chars;
    chars.reserve(s.size());
    std::string ch;
    for (size_t i = 0; i < s.size();) {
      const size_t n = utf8_length(s, i);
      ch.assign(s, i, n);
      const int64_t id = piece_id(ch);
      if (id >= 0) {
        chars.push_back(id);
      } else {
        for (size_t k = 0; k < n; ++k) chars.push_back(kByteOffset + static_cast<unsigned char>(s[i + k]));
      }
      i += n;
    }
    const std::vector<int64_t> merged = merge(std::move(chars));
    ids.insert(ids.end(), merged.begin(), merged.end());
  }
  return ids;
}

// The result of "merge the best-scoring adjacent pair, leftmost on ties, until none is a piece" in O(n log n):
// pieces form a linked list over their original positions, candidate merges sit in a heap ordered by (score desc,
// left position asc), and a stamp per position discards candidates whose pieces changed since they were pushed.
std::vector<int64_t> Llama2cTokenizer::merge(std::vector<int64_t> tok) const {
  const int64_t n = static_cast<int64_t>(tok.size());
  if (n < 2) return tok;
  struct Candidate {
    float score;
    int64_t left, right;
    uint32_t stamp_left, stamp_right;
    int64_t merged;
  };
  struct Worse {
    bool operator()(const Candidate& a, const Candidate& b) const {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    }
  };
  std::vector<int64_t> next(n), prev(n);
  std::vector<uint32_t> stamp(n, 0);
  std::vector<char> alive(n, 1);
  for (int64_t i = 0; i < n; ++i) {
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, Worse> heap;
  std::string joined;
  auto push = [&](int64_t i) {
    const int64_t j = next[i];
    if (j >= n) return;
    joined.assign(pieces_[tok[i]]);
    joined.append(pieces_[tok[j]]);
    const int64_t m = piece_id(joined);
    if (m >= 0) heap.push({scores_[m], i, j, stamp[i], stamp[j], m});
  };
  for (int64_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int64_t i = c.left, j = c.right;
    if (!alive[i] || !alive[j] || next[i] != j || stamp[i] != c.stamp_left || stamp[j] != c.stamp_right) continue;
    tok[i] = c.merged;
    ++stamp[i];
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] < n) prev[next[j]] = i;
    if (prev[i] >= 0) push(prev[i]);
    push(i);
  }
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; i = next[i]) out.push_back(tok[i]);
  return out;
}

std::string Llama2cTokenizer::decode_piece(int64_t prev, int64_t token) const {
  const std::string& p = piece(token);
  // SentencePiece's decoder drops the dummy-prefix space of the first piece after BOS.
  const bool strip = prev == kBos && !p.empty() && p[0] == ' ';
  std::string out = strip ? p.substr(1) : p;
  const int byte = strip ? byte_piece_value(out) : byte_value_[token];
  if (byte >= 0) out.assign(1, static_cast<char>(byte));
  return out;
}

std::string Llama2cTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  int64_t prev = kBos;
  for (const int64_t t : ids) {
    if (t != kBos && t != kEos) out += decode_piece(prev, t);
    prev = t;
  }
  return out;
}

std::string Llama2cTokenizer::printable(const std::string& piece) {
  if (piece.size() == 1) {
    const auto b = static_cast<unsigned char>(piece[0]);
    // C-locale isprint || isspace.
    const bool shown = (b >= 0x20 && b < 0x7F) || b == ' ' || (b >= '\t' && b <= '\r');
    return shown ? piece : std::string();
  }
  return piece.substr(0, piece.find('\0'));  // printf("%s") stops at a NUL
}

}  // namespace text
}  // namespace lwq
