// The format-independent part of tokenizers: BOS/EOS around encoded text, format detection, streaming decode.
#include "lwq/text/tokenizer.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sys/stat.h>

#include "lwq/io/json.h"
#include "lwq/text/hf_tokenizer.h"
#include "lwq/text/llama2c_tokenizer.h"
#include "lwq/text/sentencepiece_tokenizer.h"

namespace lwq {
namespace text {

namespace {

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Bytes at the end of `s` that begin a UTF-8 character whose continuation bytes have not come yet (0 if none): a
// lead byte followed by fewer continuation bytes than it announces. Bytes that can never complete are not held.
size_t incomplete_utf8_tail(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const auto b = static_cast<unsigned char>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: look further back for its lead
    size_t need = 0;
    if ((b & 0xE0) == 0xC0) {
      need = 2;
    } else if ((b & 0xF0) == 0xE0) {
      need = 3;
    } else if ((b & 0xF8) == 0xF0) {
      need = 4;
    }
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  std::vector<int64_t> ids;
  if (bos && special_.add_bos && special_.bos >= 0) ids.push_back(special_.bos);
  const std::vector<int64_t> body = encode_text(text);
  ids.insert(ids.end(), body.begin(), body.end());
  if (eos && !special_.eos.empty()) ids.push_back(special_.eos.front());
  return ids;
}

bool Tokenizer::is_eos(int64_t id) const {
  return std::find(special_.eos.begin(), special_.eos.end(), id) != special_.eos.end();
}

namespace {

// The JSON of a config file beside the tokenizer, or null when there is none.
nlohmann::json read_config(const std::string& path) {
  if (!is_file(path)) return nullptr;
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "tokenizer config ", path, ": cannot open the file");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json j;
  try {
    j = io::parse_json("tokenizer config " + path, text);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "tokenizer config ", path, ": not valid JSON (", e.what(), ")");
  }
  TORCH_CHECK(j.is_object(), "tokenizer config ", path, ": the top level is not an object");
  return j;
}

// A token of tokenizer_config.json: a string, {"content": string, ...}, or null (none); its id in `t`.
int64_t config_token(const Tokenizer& t, const nlohmann::json& config, const char* key, const std::string& path) {
  const nlohmann::json& v = config[key];
  if (v.is_null()) return -1;
  std::string token;
  if (v.is_string()) {
    token = v.get<std::string>();
  } else {
    TORCH_CHECK(v.is_object() && v.contains("content") && v["content"].is_string(), "tokenizer config ", path, ": ",
                key, " is neither a string nor {\"content\": ...}: ", v.dump().substr(0, 80));
    token = v["content"].get<std::string>();
  }
  const int64_t id = t.token_id(token);
  TORCH_CHECK(id >= 0, "tokenizer config ", path, ": ", key, " '", token, "' is not a token of ", t.describe());
  return id;
}

std::vector<int64_t> config_ids(const Tokenizer& t, const nlohmann::json& v, const char* key, const std::string& path) {
  std::vector<int64_t> ids;
  if (v.is_number_integer()) {
    ids.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const nlohmann::json& e : v) {
      TORCH_CHECK(e.is_number_integer(), "generation config ", path, ": ", key, " holds a non-integer: ", e.dump());
      ids.push_back(e.get<int64_t>());
    }
  } else {
    TORCH_CHECK(v.is_null(), "generation config ", path, ": ", key, " is neither an id nor a list of ids");
  }
  for (int64_t id : ids) {
    TORCH_CHECK(id >= 0 && id < t.vocab_size(), "generation config ", path, ": ", key, " ", id,
                " is outside the vocabulary of ", t.describe());
  }
  return ids;
}

// special() from the configs in `dir`: tokenizer_config.json first (its eos_token leads the EOS list), then
// generation_config.json's ids (BOS when the first gave none, more EOS ids).
void apply_configs(Tokenizer& t, const std::string& dir) {
  SpecialTokens s = t.special();
  const std::string tc_path = dir + "/tokenizer_config.json", gc_path = dir + "/generation_config.json";
  const nlohmann::json tc = read_config(tc_path), gc = read_config(gc_path);
  bool bos_set = false;
  if (tc.is_object()) {
    if (tc.contains("add_bos_token")) {
      TORCH_CHECK(tc["add_bos_token"].is_boolean(), "tokenizer config ", tc_path, ": add_bos_token is not true/false");
      s.add_bos = tc["add_bos_token"].get<bool>();
    }
    if (tc.contains("bos_token")) {
      s.bos = config_token(t, tc, "bos_token", tc_path);
      bos_set = true;
    }
    if (tc.contains("eos_token")) {
      const int64_t eos = config_token(t, tc, "eos_token", tc_path);
      s.eos.clear();
      if (eos >= 0) s.eos.push_back(eos);
    }
  }
  if (gc.is_object()) {
    if (!bos_set && gc.contains("bos_token_id")) {
      const std::vector<int64_t> bos = config_ids(t, gc["bos_token_id"], "bos_token_id", gc_path);
      if (!bos.empty()) s.bos = bos.front();
    }
    if (gc.contains("eos_token_id")) {
      for (int64_t id : config_ids(t, gc["eos_token_id"], "eos_token_id", gc_path)) {
        if (std::find(s.eos.begin(), s.eos.end(), id) == s.eos.end()) s.eos.push_back(id);
      }
    }
  }
  if (s.bos < 0) s.add_bos = false;
  t.set_special(s);
}

std::unique_ptr<Tokenizer> load_file(const std::string& path) {
  TORCH_CHECK(is_file(path), "tokenizer ", path, ": no such file");
  if (ends_with(path, ".json")) return HfTokenizer::load(path);
  if (ends_with(path, ".model")) return SentencePieceTokenizer::load(path);
  return std::make_unique<Llama2cTokenizer>(Llama2cTokenizer::load(path));
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::string file = path, dir;
  if (is_directory(path)) {
    dir = path;
    file.clear();
    // tokenizer.json first: it is the complete description (added tokens, normalizer) where a model has both.
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
      if (is_file(dir + "/" + name)) {
        file = dir + "/" + name;
        break;
      }
    }
    TORCH_CHECK(!file.empty(), "tokenizer: the directory ", path,
                " holds none of tokenizer.json (Hugging Face), tokenizer.model (SentencePiece), tokenizer.bin "
                "(llama2.c)");
  } else {
    const size_t slash = path.rfind('/');
    dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  }
  std::unique_ptr<Tokenizer> t = load_file(file);
  apply_configs(*t, dir);
  return t;
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, std::vector<int64_t> context)
    : tokenizer_(tokenizer), ids_(std::move(context)) {
  read_ = ids_.size();
  prefix_ = read_ > 0 ? read_ - 1 : 0;
}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  const auto from = ids_.begin() + static_cast<long>(prefix_);
  const std::string before = tokenizer_.decode(std::vector<int64_t>(from, ids_.begin() + static_cast<long>(read_)));
  const std::string after = tokenizer_.decode(std::vector<int64_t>(from, ids_.end()));
  // A window decodes the same way wherever it starts, so the new text is what `after` adds to `before`; it is
  // held back while it ends inside a character.
  if (after.size() <= before.size() || after.compare(0, before.size(), before) != 0 ||
      incomplete_utf8_tail(after) > 0) {
    return "";
  }
  prefix_ = read_;
  read_ = ids_.size();
  return after.substr(before.size());
}

std::string StreamDecoder::finish() {
  const auto from = ids_.begin() + static_cast<long>(prefix_);
  const std::string before = tokenizer_.decode(std::vector<int64_t>(from, ids_.begin() + static_cast<long>(read_)));
  const std::string after = tokenizer_.decode(std::vector<int64_t>(from, ids_.end()));
  prefix_ = read_ = ids_.size();
  return after.size() > before.size() && after.compare(0, before.size(), before) == 0 ? after.substr(before.size())
                                                                                       : "";
}

}  // namespace text
}  // namespace lwq
