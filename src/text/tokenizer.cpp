// The format-independent part of tokenizers: BOS/EOS around encoded text, format detection, streaming decode.
#include "lwq/text/tokenizer.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <sys/stat.h>

#include "lwq/text/llama2c_tokenizer.h"

namespace lwq {
namespace text {

namespace {

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
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

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (is_directory(path)) {
    const std::string bin = path + "/tokenizer.bin";
    struct stat st {};
    TORCH_CHECK(::stat(bin.c_str(), &st) == 0, "tokenizer: the directory ", path,
                " holds no tokenizer.bin (llama2.c's format)");
    return std::make_unique<Llama2cTokenizer>(Llama2cTokenizer::load(bin));
  }
  TORCH_CHECK(!ends_with(path, ".json") && !ends_with(path, ".model"), "tokenizer ", path,
              ": Hugging Face tokenizer.json and SentencePiece tokenizer.model are not read yet; give a llama2.c "
              "tokenizer.bin");
  return std::make_unique<Llama2cTokenizer>(Llama2cTokenizer::load(path));
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
