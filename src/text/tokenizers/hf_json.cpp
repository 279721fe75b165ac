// Hugging Face tokenizer.json (BPE models): the JSON is turned into a pipeline of small components, each doing what
// its namesake in the `tokenizers` library (0.21) does: added tokens -> normalizer -> pre-tokenizer -> BPE per
// word -> ids; ids -> token strings -> decoder -> text.
#include "lwq/text/hf_tokenizer.h"

#include <c10/util/Exception.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "lwq/io/json.h"

namespace lwq {
namespace text {

namespace {

using nlohmann::json;

// Length of the UTF-8 character at s[i], or 1 for a byte that does not start a complete, valid one.
size_t utf8_length(const char* s, size_t n, size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  size_t len = 1;
  if (lead >= 0xC2 && lead <= 0xDF) {
    len = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    len = 3;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    len = 4;
  }
  if (len == 1 || i + len > n) return 1;
  for (size_t k = 1; k < len; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  }
  const auto second = static_cast<unsigned char>(s[i + 1]);  // overlong forms, surrogates, above U+10FFFF
  if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second > 0x9F) || (lead == 0xF0 && second < 0x90) ||
      (lead == 0xF4 && second > 0x8F)) {
    return 1;
  }
  return len;
}

size_t utf8_length(const std::string& s, size_t i) { return utf8_length(s.data(), s.size(), i); }

// The code point of the valid character at s[i] (length `len`).
uint32_t code_point(const std::string& s, size_t i, size_t len) {
  const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
  if (len == 1) return b(0);
  if (len == 2) return (b(0) & 0x1F) << 6 | (b(1) & 0x3F);
  if (len == 3) return (b(0) & 0x0F) << 12 | (b(1) & 0x3F) << 6 | (b(2) & 0x3F);
  return (b(0) & 0x07) << 18 | (b(1) & 0x3F) << 12 | (b(2) & 0x3F) << 6 | (b(3) & 0x3F);
}

std::string utf8_encode(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | cp >> 6);
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | cp >> 12);
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | cp >> 18);
    out += static_cast<char>(0x80 | (cp >> 12 & 0x3F));
    out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size()) {
    out.append(s, at, hit - at).append(to);
  }
  return out.append(s, at, std::string::npos);
}

// Unicode White_Space, as Rust's char::is_whitespace (the lstrip/rstrip of added tokens).
bool is_unicode_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others for U+0100 upwards.
struct ByteLevelTable {
  std::string byte_char[256];            // UTF-8 of the character of each byte
  std::unordered_map<uint32_t, uint8_t> char_byte;
  ByteLevelTable() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? b : 256 + next++;
      byte_char[b] = utf8_encode(cp);
      char_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelTable& byte_level() {
  static const ByteLevelTable table;
  return table;
}

// A PCRE2 pattern in UTF + UCP mode (\p{L}, \s over all of Unicode). PCRE2_MATCH_INVALID_UTF: invalid UTF-8 in the
// subject is never part of a match (it stays in the gaps between matches) instead of being an error.
class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& what) {
    if (literal) {  // a plain string: found byte for byte, no PCRE2
      TORCH_CHECK(!pattern.empty(), what, ": the pattern string is empty");
      literal_ = pattern;
      return;
    }
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error, &offset,
                          nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      TORCH_CHECK(false, what, ": cannot compile the pattern '", pattern, "' at offset ", offset, ": ",
                  reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // when JIT is unavailable the interpreter runs: same matches
  }
  ~Regex() {
    if (code_ != nullptr) pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The non-empty matches of the pattern in s, left to right, as [begin, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> find_all(const std::string& s) const {
    std::vector<std::pair<size_t, size_t>> out;
    if (code_ == nullptr) {
      for (size_t at = s.find(literal_); at != std::string::npos; at = s.find(literal_, at + literal_.size())) {
        out.emplace_back(at, at + literal_.size());
      }
      return out;
    }
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    TORCH_CHECK(md != nullptr, "tokenizer: out of memory for a pattern match");
    const auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t at = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code_, subject, s.size(), at, 0, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        TORCH_CHECK(false, "tokenizer: pattern match failed: ", reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] > ov[0]) {
        out.emplace_back(ov[0], ov[1]);
        at = ov[1];
      } else {  // an empty match: splits nothing; look again one character on
        if (ov[0] >= s.size()) break;
        at = ov[0] + utf8_length(s, ov[0]);
      }
    }
    pcre2_match_data_free(md);
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
  std::string literal_;
};

// A piece of text on its way to the model, and whether it starts where the input text starts (Metaspace's
// prepend_scheme "first" prepends only there).
struct Piece {
  std::string text;
  bool at_origin = false;
};

std::string what_of(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : j.dump(); }

// Field `key` of a component, checked for type; `fallback` when absent or null.
template <typename T>
T field(const json& j, const char* key, const T& fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if constexpr (std::is_integral<T>::value && !std::is_same<T, bool>::value) {
    return io::json_integer<T>(j[key], where + ": \"" + key + "\"");  // a float would be cast: undefined
  }
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    TORCH_CHECK(false, where, ": \"", key, "\" has the wrong type (", j[key].dump().substr(0, 80), ")");
  }
  return fallback;
}

// A Replace or Split pattern: {"String": s} (literal) or {"Regex": r}.
std::unique_ptr<Regex> pattern_of(const json& j, const std::string& where) {
  TORCH_CHECK(j.contains("pattern") && j["pattern"].is_object(), where, ": no \"pattern\" object");
  const json& p = j["pattern"];
  if (p.contains("String") && p["String"].is_string()) {
    return std::make_unique<Regex>(p["String"].get<std::string>(), true, where);
  }
  TORCH_CHECK(p.contains("Regex") && p["Regex"].is_string(), where, ": pattern is neither String nor Regex");
  return std::make_unique<Regex>(p["Regex"].get<std::string>(), false, where);
}

std::string regex_replace(const Regex& re, const std::string& s, const std::string& content) {
  std::string out;
  size_t at = 0;
  for (const auto& m : re.find_all(s)) {
    out.append(s, at, m.first - at).append(content);
    at = m.second;
  }
  return out.append(s, at, std::string::npos);
}

// ---- normalizers ----

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual std::string apply(const std::string& s) const = 0;
};

struct PrependNormalizer : Normalizer {
  std::string prepend;
  std::string apply(const std::string& s) const override { return s.empty() ? s : prepend + s; }
};

struct ReplaceNormalizer : Normalizer {
  std::unique_ptr<Regex> pattern;
  std::string content;
  std::string apply(const std::string& s) const override { return regex_replace(*pattern, s, content); }
};

// Unicode normalization (ICU) of each valid UTF-8 run; invalid bytes are left as they are.
struct UnicodeNormalizer : Normalizer {
  const icu::Normalizer2* normalizer = nullptr;
  std::string apply(const std::string& s) const override {
    if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) return s;
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      size_t j = i;
      while (j < s.size() && !(utf8_length(s, j) == 1 && static_cast<unsigned char>(s[j]) >= 0x80)) {
        j += utf8_length(s, j);
      }
      if (j > i) {
        UErrorCode status = U_ZERO_ERROR;
        const icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data() + i, j - i));
        const icu::UnicodeString n = normalizer->normalize(u, status);
        TORCH_CHECK(U_SUCCESS(status), "tokenizer: Unicode normalization failed: ", u_errorName(status));
        n.toUTF8String(out);
      }
      for (i = j; i < s.size() && utf8_length(s, i) == 1 && static_cast<unsigned char>(s[i]) >= 0x80; ++i) {
        out += s[i];
      }
    }
    return out;
  }
};

struct SequenceNormalizer : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> steps;
  std::string apply(const std::string& s) const override {
    std::string out = s;
    for (const auto& n : steps) out = n->apply(out);
    return out;
  }
};

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& file) {
  const std::string type = field<std::string>(j, "type", "", file + ": normalizer");
  const std::string where = file + ": normalizer " + type;
  if (type == "Sequence") {
    auto n = std::make_unique<SequenceNormalizer>();
    TORCH_CHECK(j.contains("normalizers") && j["normalizers"].is_array(), where, ": no \"normalizers\" list");
    for (const json& step : j["normalizers"]) n->steps.push_back(make_normalizer(step, file));
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prepend = field<std::string>(j, "prepend", "", where);
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = pattern_of(j, where);
    n->content = field<std::string>(j, "content", "", where);
    return n;
  }
  if (type == "NFC" || type == "NFKC" || type == "NFD" || type == "NFKD") {
    auto n = std::make_unique<UnicodeNormalizer>();
    UErrorCode status = U_ZERO_ERROR;
    n->normalizer = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
                    : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                    : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
                                     : icu::Normalizer2::getNFKDInstance(status);
    TORCH_CHECK(U_SUCCESS(status), where, ": ICU has no ", type, " normalizer (", u_errorName(status), ")");
    return n;
  }
  TORCH_CHECK(false, file, ": the normalizer ", what_of(j),
              " is not supported (lwq reads Prepend, Replace, NFC, NFKC, NFD, NFKD and Sequence)");
  return nullptr;
}

// ---- pre-tokenizers ----

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `p` at the matches of `re` as the `tokenizers` SplitDelimiterBehavior does; empty pieces are dropped.
void split_piece(const Piece& p, const Regex& re, Behavior behavior, bool invert, std::vector<Piece>& out) {
  struct Segment {
    size_t begin, end;
    bool match;
  };
  std::vector<Segment> segments;
  size_t at = 0;
  for (const auto& m : re.find_all(p.text)) {
    if (m.first > at) segments.push_back({at, m.first, invert});
    segments.push_back({m.first, m.second, !invert});
    at = m.second;
  }
  if (at < p.text.size()) segments.push_back({at, p.text.size(), invert});

  std::vector<Segment> kept;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.match) kept.push_back(s);
      }
      break;
    case Behavior::kIsolated:
      kept = segments;
      break;
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.match && !previous_match && !kept.empty()) {
          kept.back().end = s.end;
        } else {
          kept.push_back(s);
        }
        previous_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case Behavior::kContiguous:
      for (const Segment& s : segments) {
        if (!kept.empty() && kept.back().match == s.match) {
          kept.back().end = s.end;
        } else {
          kept.push_back(s);
        }
      }
      break;
  }
  for (const Segment& s : kept) {
    if (s.end > s.begin) out.push_back({p.text.substr(s.begin, s.end - s.begin), p.at_origin && s.begin == 0});
  }
}

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPreTokenizer : PreTokenizer {
  bool add_prefix_space = true;
  std::unique_ptr<Regex> regex;  // GPT-2's pattern when use_regex
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> split;
    for (Piece& p : pieces) {
      if (add_prefix_space && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, 1, ' ');
      if (regex) {
        split_piece(p, *regex, Behavior::kIsolated, false, split);
      } else {
        split.push_back(std::move(p));
      }
    }
    const ByteLevelTable& table = byte_level();
    for (Piece& p : split) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char c : p.text) mapped += table.byte_char[c];
      p.text = std::move(mapped);
    }
    pieces = std::move(split);
  }
};

struct SplitPreTokenizer : PreTokenizer {
  std::unique_ptr<Regex> pattern;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (const Piece& p : pieces) split_piece(p, *pattern, behavior, invert, out);
    pieces = std::move(out);
  }
};

enum class Prepend { kAlways, kFirst, kNever };

struct MetaspacePreTokenizer : PreTokenizer {
  std::string replacement = "\xE2\x96\x81";  // U+2581
  Prepend prepend = Prepend::kAlways;
  std::unique_ptr<Regex> split;  // the replacement, when splitting on it
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (Piece& p : pieces) {
      if (p.text.empty()) continue;
      p.text = replace_all(p.text, " ", replacement);
      if ((prepend == Prepend::kAlways || (prepend == Prepend::kFirst && p.at_origin)) &&
          !starts_with(p.text, replacement)) {
        p.text.insert(0, replacement);
      }
      if (split) {
        split_piece(p, *split, Behavior::kMergedWithNext, false, out);
      } else {
        out.push_back(std::move(p));
      }
    }
    pieces = std::move(out);
  }
};

struct SequencePreTokenizer : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void apply(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps) step->apply(pieces);
  }
};

Behavior behavior_of(const std::string& name, const std::string& where) {
  if (name == "Removed") return Behavior::kRemoved;
  if (name == "Isolated") return Behavior::kIsolated;
  if (name == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::kMergedWithNext;
  if (name == "Contiguous") return Behavior::kContiguous;
  TORCH_CHECK(false, where, ": unknown split behavior '", name, "'");
  return Behavior::kIsolated;
}

Prepend prepend_scheme_of(const json& j, const std::string& where) {
  // Files from before prepend_scheme have add_prefix_space (true: always).
  if (!j.contains("prepend_scheme") || j["prepend_scheme"].is_null()) {
    return field<bool>(j, "add_prefix_space", true, where) ? Prepend::kAlways : Prepend::kNever;
  }
  const std::string s = field<std::string>(j, "prepend_scheme", "always", where);
  if (s == "always") return Prepend::kAlways;
  if (s == "first") return Prepend::kFirst;
  if (s == "never") return Prepend::kNever;
  TORCH_CHECK(false, where, ": unknown prepend_scheme '", s, "' (always, first or never)");
  return Prepend::kAlways;
}

std::string replacement_of(const json& j, const std::string& where) {
  const std::string r = field<std::string>(j, "replacement", "\xE2\x96\x81", where);
  TORCH_CHECK(!r.empty() && utf8_length(r, 0) == r.size(), where, ": replacement must be one character, got '", r,
              "'");
  return r;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& file) {
  const std::string type = field<std::string>(j, "type", "", file + ": pre_tokenizer");
  const std::string where = file + ": pre_tokenizer " + type;
  if (type == "Sequence") {
    auto p = std::make_unique<SequencePreTokenizer>();
    TORCH_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(), where, ": no \"pretokenizers\" list");
    for (const json& step : j["pretokenizers"]) p->steps.push_back(make_pre_tokenizer(step, file));
    return p;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPreTokenizer>();
    p->add_prefix_space = field<bool>(j, "add_prefix_space", true, where);
    if (field<bool>(j, "use_regex", true, where)) p->regex = std::make_unique<Regex>(kGpt2Pattern, false, where);
    return p;
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->pattern = pattern_of(j, where);
    p->behavior = behavior_of(field<std::string>(j, "behavior", "Isolated", where), where);
    p->invert = field<bool>(j, "invert", false, where);
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePreTokenizer>();
    p->replacement = replacement_of(j, where);
    p->prepend = prepend_scheme_of(j, where);
    if (field<bool>(j, "split", true, where)) p->split = std::make_unique<Regex>(p->replacement, true, where);
    return p;
  }
  if (type == "Digits") {
    // Rust's char::is_numeric is \p{N}: each digit alone, or runs of digits together.
    auto p = std::make_unique<SplitPreTokenizer>();
    const bool individual = field<bool>(j, "individual_digits", false, where);
    p->pattern = std::make_unique<Regex>(R"(\p{N})", false, where);
    p->behavior = individual ? Behavior::kIsolated : Behavior::kContiguous;
    return p;
  }
  TORCH_CHECK(false, file, ": the pre_tokenizer ", what_of(j),
              " is not supported (lwq reads ByteLevel, Split, Metaspace, Digits and Sequence)");
  return nullptr;
}

// ---- decoders: token strings in, token strings out, as decode_chain ----

struct Decoder {
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};

struct ByteLevelDecoder : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    const ByteLevelTable& table = byte_level();
    std::string out;
    for (const std::string& t : tokens) {
      std::string bytes;
      bool all = true;
      for (size_t i = 0; i < t.size() && all;) {
        const size_t len = utf8_length(t, i);
        const bool invalid = len == 1 && static_cast<unsigned char>(t[i]) >= 0x80;
        const auto it = invalid ? table.char_byte.end() : table.char_byte.find(code_point(t, i, len));
        all = it != table.char_byte.end();
        if (all) bytes += static_cast<char>(it->second);
        i += len;
      }
      out += all ? bytes : t;  // a token that is not byte-level text (an added token) stands for itself
    }
    tokens.assign(1, out);
  }
};

struct MetaspaceDecoder : Decoder {
  std::string replacement;
  Prepend prepend = Prepend::kAlways;
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // As `tokenizers`: in the first token every replacement character goes (not only a leading one).
      tokens[i] = replace_all(tokens[i], replacement, i == 0 && prepend != Prepend::kNever ? "" : " ");
    }
  }
};

struct ReplaceDecoder : Decoder {
  std::unique_ptr<Regex> pattern;
  std::string content;
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = regex_replace(*pattern, t, content);
  }
};

// <0xNN> tokens become their bytes; a run of them is one token.
struct ByteFallbackDecoder : Decoder {
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    for (const std::string& t : tokens) {
      const int b = byte_of(t);
      if (b >= 0) {
        bytes += static_cast<char>(b);
        continue;
      }
      if (!bytes.empty()) out.push_back(std::move(bytes));
      bytes.clear();
      out.push_back(t);
    }
    if (!bytes.empty()) out.push_back(std::move(bytes));
    tokens = std::move(out);
  }
};

struct FuseDecoder : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, all);
  }
};

struct StripDecoder : Decoder {
  std::string content;
  size_t start = 0, stop = 0;
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t begin = 0;
      for (size_t k = 0; k < start && t.compare(begin, content.size(), content) == 0; ++k) begin += content.size();
      size_t end = t.size();
      for (size_t k = 0; k < stop && end >= begin + content.size() &&
                         t.compare(end - content.size(), content.size(), content) == 0;
           ++k) {
        end -= content.size();
      }
      t = t.substr(begin, end - begin);
    }
  }
};

struct SequenceDecoder : Decoder {
  std::vector<std::unique_ptr<Decoder>> steps;
  void apply(std::vector<std::string>& tokens) const override {
    for (const auto& d : steps) d->apply(tokens);
  }
};

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& file) {
  const std::string type = field<std::string>(j, "type", "", file + ": decoder");
  const std::string where = file + ": decoder " + type;
  if (type == "Sequence") {
    auto d = std::make_unique<SequenceDecoder>();
    TORCH_CHECK(j.contains("decoders") && j["decoders"].is_array(), where, ": no \"decoders\" list");
    for (const json& step : j["decoders"]) d->steps.push_back(make_decoder(step, file));
    return d;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDecoder>();
    d->replacement = replacement_of(j, where);
    d->prepend = prepend_scheme_of(j, where);
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceDecoder>();
    d->pattern = pattern_of(j, where);
    d->content = field<std::string>(j, "content", "", where);
    return d;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>();
    d->content = field<std::string>(j, "content", " ", where);
    TORCH_CHECK(!d->content.empty() && utf8_length(d->content, 0) == d->content.size(), where,
                ": content must be one character");
    const int64_t start = field<int64_t>(j, "start", 0, where), stop = field<int64_t>(j, "stop", 0, where);
    TORCH_CHECK(start >= 0 && stop >= 0, where, ": start and stop must be >= 0");
    d->start = static_cast<size_t>(start);
    d->stop = static_cast<size_t>(stop);
    return d;
  }
  TORCH_CHECK(false, file, ": the decoder ", what_of(j),
              " is not supported (lwq reads ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip and Sequence)");
  return nullptr;
}

struct AddedToken {
  int64_t id;
  std::string content;
  bool special, normalized, lstrip, rstrip;
};

uint64_t pair_key(int32_t a, int32_t b) { return static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32 | static_cast<uint32_t>(b); }

// A finished BPE word is cached; past this many words the cache starts over (bounded memory on any input).
constexpr size_t kCacheWords = 200000;
// Words longer than this are not cached (a long run of one character is unlikely to come back).
constexpr size_t kCacheWordBytes = 256;

}  // namespace

struct HfTokenizer::Impl {
  std::string source;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_token;  // content of each id (model and added), "" for a hole
  std::vector<char> special_id;        // 1 for added tokens marked special
  struct Merge {
    int32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int32_t unk_id = -1;
  int32_t byte_ids[256];  // id of <0xNN>, or -1
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> raw_added, normalized_added;  // non-special added tokens matched before / after normalizing
  std::unordered_map<std::string, int64_t> added_id;  // content of every added token
  bool byte_level = false;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void bpe(const std::string& word, std::vector<int64_t>& ids) const;
  std::vector<int32_t> bpe_uncached(const std::string& word) const;
  void encode_section(const std::string& text, bool at_origin, std::vector<int64_t>& ids) const;
};

namespace {

// Splits `text` at the leftmost-longest matches of `tokens` (lstrip/rstrip take the whitespace beside a match).
// Calls gap(begin, end) for the text between matches and hit(token) for each match.
template <typename Gap, typename Hit>
void split_added(const std::string& text, const std::vector<AddedToken>& tokens, Gap gap, Hit hit) {
  size_t at = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (const AddedToken& t : tokens) {
      if (text.compare(i, t.content.size(), t.content) == 0 && (!best || t.content.size() > best->content.size())) {
        best = &t;
      }
    }
    if (!best) {
      i += utf8_length(text, i);
      continue;
    }
    size_t begin = i, end = i + best->content.size();
    if (best->lstrip) {
      while (begin > at) {
        size_t k = begin - 1;
        while (k > at && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        const size_t len = utf8_length(text, k);
        if (k + len != begin || !is_unicode_space(code_point(text, k, len))) break;
        begin = k;
      }
    }
    if (best->rstrip) {
      while (end < text.size()) {
        const size_t len = utf8_length(text, end);
        if (!is_unicode_space(code_point(text, end, len))) break;
        end += len;
      }
    }
    if (begin > at) gap(at, begin);
    hit(*best);
    at = i = end;
  }
  if (at < text.size()) gap(at, text.size());
}

}  // namespace

std::vector<int32_t> HfTokenizer::Impl::bpe_uncached(const std::string& word) const {
  if (ignore_merges) {
    const auto it = vocab.find(word);
    if (it != vocab.end()) return {it->second};
  }
  // Symbols of the word: one per character (or per byte-fallback byte), linked as a list.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t len = utf8_length(word, i);
    const auto it = vocab.find(word.substr(i, len));
    if (it != vocab.end()) {
      symbols.push_back({it->second, 0, 0, true});
      last_unk = false;
    } else {
      bool bytes = byte_fallback;
      for (size_t k = 0; k < len && bytes; ++k) bytes = byte_ids[static_cast<unsigned char>(word[i + k])] >= 0;
      if (bytes) {
        for (size_t k = 0; k < len; ++k) symbols.push_back({byte_ids[static_cast<unsigned char>(word[i + k])], 0, 0, true});
        last_unk = false;
      } else {
        // `tokenizers` would drop the character silently; lwq refuses rather than lose text.
        TORCH_CHECK(unk_id >= 0, "tokenizer ", source, ": the character '", word.substr(i, len),
                    "' is not in the vocabulary and the model has neither byte fallback for it nor an unk_token");
        if (!(fuse_unk && last_unk)) symbols.push_back({unk_id, 0, 0, true});
        last_unk = true;
      }
    }
    i += len;
  }
  const int32_t n = static_cast<int32_t>(symbols.size());
  for (int32_t k = 0; k < n; ++k) {
    symbols[k].prev = k - 1;
    symbols[k].next = k + 1 < n ? k + 1 : -1;
  }
  // Candidate merges, lowest rank first, then leftmost; an entry is stale when its pair has changed since.
  struct Candidate {
    int32_t rank, pos, id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const auto it = merges.find(pair_key(symbols[pos].id, symbols[next].id));
    if (it != merges.end()) queue.push({it->second.rank, pos, it->second.id});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push(k);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    const auto it = merges.find(pair_key(left.id, symbols[left.next].id));
    if (it == merges.end() || it->second.id != top.id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  std::vector<int32_t> out;
  for (int32_t k = n > 0 ? 0 : -1; k >= 0; k = symbols[k].next) out.push_back(symbols[k].id);
  return out;
}

void HfTokenizer::Impl::bpe(const std::string& word, std::vector<int64_t>& ids) const {
  const bool cacheable = word.size() <= kCacheWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache.find(word);
    if (it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids = bpe_uncached(word);
  ids.insert(ids.end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kCacheWords) cache.clear();
    cache.emplace(word, std::move(word_ids));
  }
}

void HfTokenizer::Impl::encode_section(const std::string& text, bool at_origin, std::vector<int64_t>& ids) const {
  std::vector<Piece> pieces = {{text, at_origin}};
  if (pre_tokenizer) pre_tokenizer->apply(pieces);
  for (const Piece& p : pieces) {
    if (!p.text.empty()) bpe(p.text, ids);
  }
}

HfTokenizer::HfTokenizer() : impl_(std::make_unique<Impl>()) {}
HfTokenizer::~HfTokenizer() = default;

std::unique_ptr<HfTokenizer> HfTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "tokenizer ", path, ": cannot open the file");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return from_json_text(text, path);
}

std::unique_ptr<HfTokenizer> HfTokenizer::from_json_text(const std::string& json_text, const std::string& what) {
  json j;
  try {
    j = io::parse_json("tokenizer " + what, json_text);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "tokenizer ", what, ": not valid JSON (", e.what(), ")");
  }
  TORCH_CHECK(j.is_object(), "tokenizer ", what, ": not a tokenizer.json (the top level is not an object)");
  TORCH_CHECK(j.contains("model") && j["model"].is_object(), "tokenizer ", what, ": no \"model\" object");
  std::unique_ptr<HfTokenizer> t(new HfTokenizer());
  Impl& m = *t->impl_;
  m.source = what;
  const std::string file = "tokenizer " + what;
  const json& model = j["model"];
  const std::string type = field<std::string>(model, "type", model.contains("merges") ? "BPE" : "", file + ": model");
  TORCH_CHECK(type == "BPE", file, ": the model type ", type.empty() ? "(none given)" : type,
              " is not supported (lwq reads BPE models; not WordPiece, Unigram or WordLevel)");
  const std::string where = file + ": model BPE";
  TORCH_CHECK(field<double>(model, "dropout", 0.0, where) == 0.0, where,
              ": dropout is set (random merges); lwq tokenizes deterministically");
  TORCH_CHECK(field<std::string>(model, "continuing_subword_prefix", "", where).empty() &&
                  field<std::string>(model, "end_of_word_suffix", "", where).empty(),
              where, ": continuing_subword_prefix / end_of_word_suffix are not supported");
  m.byte_fallback = field<bool>(model, "byte_fallback", false, where);
  m.fuse_unk = field<bool>(model, "fuse_unk", false, where);
  m.ignore_merges = field<bool>(model, "ignore_merges", false, where);

  TORCH_CHECK(model.contains("vocab") && model["vocab"].is_object(), where, ": no \"vocab\" object");
  int64_t size = 0;
  for (const auto& kv : model["vocab"].items()) {
    TORCH_CHECK(kv.value().is_number_integer(), where, ": the id of '", kv.key(), "' is not an integer");
    const int64_t id = kv.value().get<int64_t>();
    TORCH_CHECK(id >= 0 && id < (int64_t{1} << 30), where, ": the id of '", kv.key(), "' is out of range: ", id);
    m.vocab.emplace(kv.key(), static_cast<int32_t>(id));
    size = std::max(size, id + 1);
  }
  std::vector<AddedToken> added;
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    TORCH_CHECK(j["added_tokens"].is_array(), file, ": added_tokens is not a list");
    for (const json& a : j["added_tokens"]) {
      const std::string w = file + ": added token";
      TORCH_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                      a["content"].is_string(),
                  w, " without an integer id and a content: ", a.dump().substr(0, 100));
      AddedToken at{a["id"].get<int64_t>(), a["content"].get<std::string>(), field<bool>(a, "special", false, w),
                    false, field<bool>(a, "lstrip", false, w), field<bool>(a, "rstrip", false, w)};
      at.normalized = field<bool>(a, "normalized", !at.special, w);
      TORCH_CHECK(at.id >= 0 && at.id < (int64_t{1} << 30), w, " '", at.content, "': id out of range: ", at.id);
      TORCH_CHECK(!at.content.empty(), w, " ", at.id, " has an empty content");
      TORCH_CHECK(at.special || !field<bool>(a, "single_word", false, w), w, " '", at.content,
                  "': single_word is not supported for a non-special added token");
      size = std::max(size, at.id + 1);
      added.push_back(at);
    }
  }
  m.id_token.assign(static_cast<size_t>(size), "");
  m.special_id.assign(static_cast<size_t>(size), 0);
  for (const auto& kv : m.vocab) m.id_token[kv.second] = kv.first;
  for (const AddedToken& a : added) {
    m.id_token[a.id] = a.content;
    m.special_id[a.id] = a.special;
    m.added_id[a.content] = a.id;
    if (!a.special) (a.normalized && j.contains("normalizer") && !j["normalizer"].is_null() ? m.normalized_added : m.raw_added).push_back(a);
  }

  const std::string unk = field<std::string>(model, "unk_token", "", where);
  if (!unk.empty()) {
    const auto it = m.vocab.find(unk);
    TORCH_CHECK(it != m.vocab.end(), where, ": the unk_token '", unk, "' is not in the vocabulary");
    m.unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto it = m.vocab.find(name);
    m.byte_ids[b] = it == m.vocab.end() ? -1 : it->second;
  }

  TORCH_CHECK(model.contains("merges") && model["merges"].is_array(), where, ": no \"merges\" list");
  int32_t rank = 0;
  for (const json& merge : model["merges"]) {
    std::string a, b;
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t space = s.find(' ');
      TORCH_CHECK(space != std::string::npos, where, ": merge ", rank, " '", s, "' is not two tokens separated by a space");
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else {
      TORCH_CHECK(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(), where,
                  ": merge ", rank, " is neither \"a b\" nor [a, b]: ", merge.dump().substr(0, 80));
      a = merge[0].get<std::string>();
      b = merge[1].get<std::string>();
    }
    const auto ia = m.vocab.find(a), ib = m.vocab.find(b), iab = m.vocab.find(a + b);
    TORCH_CHECK(ia != m.vocab.end() && ib != m.vocab.end() && iab != m.vocab.end(), where, ": merge ", rank, " ('",
                a, "', '", b, "') names a token that is not in the vocabulary");
    m.merges.emplace(pair_key(ia->second, ib->second), Impl::Merge{rank, iab->second});  // the first rank wins
    ++rank;
  }

  if (j.contains("normalizer") && !j["normalizer"].is_null()) m.normalizer = make_normalizer(j["normalizer"], file);
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
    m.pre_tokenizer = make_pre_tokenizer(j["pre_tokenizer"], file);
    m.byte_level = j["pre_tokenizer"].dump().find("\"ByteLevel\"") != std::string::npos;
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) m.decoder = make_decoder(j["decoder"], file);

  // BOS when the post-processor puts a special token first (TemplateProcessing, alone or in a Sequence); the
  // model's configs, read by load_tokenizer, override this.
  SpecialTokens s;
  s.add_bos = false;
  std::vector<const json*> processors;
  if (j.contains("post_processor") && j["post_processor"].is_object()) processors.push_back(&j["post_processor"]);
  for (size_t k = 0; k < processors.size(); ++k) {
    const json& p = *processors[k];
    if (p.contains("processors") && p["processors"].is_array()) {
      for (const json& q : p["processors"]) processors.push_back(&q);
    }
    if (field<std::string>(p, "type", "", file) != "TemplateProcessing" || !p.contains("single") ||
        !p["single"].is_array() || p["single"].empty())
      continue;
    const json& first = p["single"][0];
    if (first.contains("SpecialToken") && first["SpecialToken"].contains("id")) {
      const int64_t id = t->token_id(field<std::string>(first["SpecialToken"], "id", "", file));
      if (id >= 0) {
        s.bos = id;
        s.add_bos = true;
      }
    }
  }
  t->set_special(s);
  return t;
}

std::vector<int64_t> HfTokenizer::encode_text(const std::string& text) const {
  const Impl& m = *impl_;
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 4);
  auto normalized_gap = [&](const std::string& raw, bool at_origin) {
    const std::string normal = m.normalizer ? m.normalizer->apply(raw) : raw;
    if (m.normalized_added.empty()) {
      m.encode_section(normal, at_origin, ids);
      return;
    }
    split_added(
        normal, m.normalized_added,
        [&](size_t b, size_t e) { m.encode_section(normal.substr(b, e - b), at_origin && b == 0, ids); },
        [&](const AddedToken& a) { ids.push_back(a.id); });
  };
  if (m.raw_added.empty()) {
    normalized_gap(text, true);
  } else {
    split_added(
        text, m.raw_added, [&](size_t b, size_t e) { normalized_gap(text.substr(b, e - b), b == 0); },
        [&](const AddedToken& a) { ids.push_back(a.id); });
  }
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    TORCH_CHECK(id >= 0 && id < vocab_size() && !m.id_token[id].empty(), "tokenizer ", m.source, ": id ", id,
                " is not a token of the vocabulary (", vocab_size(), " ids)");
    if (!m.special_id[id]) tokens.push_back(m.id_token[id]);
  }
  if (!m.decoder) {  // `tokenizers` joins the tokens with spaces when there is no decoder
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) out += (k ? " " : "") + tokens[k];
    return out;
  }
  m.decoder->apply(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

int64_t HfTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_token.size()); }

std::string HfTokenizer::describe() const {
  const Impl& m = *impl_;
  const std::string kind = m.byte_level ? "byte-level BPE" : m.byte_fallback ? "BPE with byte fallback" : "BPE";
  return "tokenizer.json (" + kind + ", " + std::to_string(vocab_size()) + " tokens) " + m.source;
}

int64_t HfTokenizer::token_id(const std::string& token) const {
  const Impl& m = *impl_;
  const auto added = m.added_id.find(token);  // added tokens first, as `tokenizers` looks them up
  if (added != m.added_id.end()) return added->second;
  const auto it = m.vocab.find(token);
  return it == m.vocab.end() ? -1 : it->second;
}

std::string HfTokenizer::token(int64_t id) const {
  return id >= 0 && id < vocab_size() ? impl_->id_token[id] : std::string();
}

bool HfTokenizer::is_special(int64_t id) const { return id >= 0 && id < vocab_size() && impl_->special_id[id]; }

}  // namespace text
}  // namespace lwq
