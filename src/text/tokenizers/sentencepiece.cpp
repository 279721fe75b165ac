// SentencePiece tokenizer.model through libsentencepiece, reached through liblwq_sentencepiece.so (why a separate
// module loaded with RTLD_DEEPBIND: sentencepiece_shim.cpp).
#include "lwq/text/sentencepiece_tokenizer.h"

#include <c10/util/Exception.h>
#include <dlfcn.h>

#include <fstream>
#include <iterator>
#include <mutex>

#ifdef LWQ_SENTENCEPIECE_LINKED  // the shim linked in (see api() below)
extern "C" {
void* lwq_spm_load(const std::string*, std::string*);
void lwq_spm_free(void*);
void lwq_spm_info(void*, int64_t*, int64_t*, int64_t*, int64_t*);
int64_t lwq_spm_piece_id(void*, const std::string*);
bool lwq_spm_encode(void*, const std::string*, std::vector<int>*, std::string*);
bool lwq_spm_decode(void*, const std::vector<int>*, std::string*, std::string*);
}
#endif

namespace lwq {
namespace text {

namespace {


// The module's functions, resolved once.
struct Api {
  void* (*load)(const std::string*, std::string*) = nullptr;
  void (*free)(void*) = nullptr;
  void (*info)(void*, int64_t*, int64_t*, int64_t*, int64_t*) = nullptr;
  int64_t (*piece_id)(void*, const std::string*) = nullptr;
  bool (*encode)(void*, const std::string*, std::vector<int>*, std::string*) = nullptr;
  bool (*decode)(void*, const std::vector<int>*, std::string*, std::string*) = nullptr;
};

#ifdef LWQ_SENTENCEPIECE_LINKED
// Programs that do not load libtorch (the sanitized fuzz target of tokenizer.model files) link the shim and
// libsentencepiece directly: no protobuf clash to avoid, and the sanitizer runtimes refuse RTLD_DEEPBIND.
const Api& api() {
  static const Api a{lwq_spm_load, lwq_spm_free, lwq_spm_info, lwq_spm_piece_id, lwq_spm_encode, lwq_spm_decode};
  return a;
}
#else
constexpr const char* kModule = "liblwq_sentencepiece.so";

const Api& api() {
  static Api a;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    // Beside liblwq.so first (the build tree and an installed prefix both put it there), then the library path.
    std::string path = kModule;
    Dl_info self{};
    if (::dladdr(reinterpret_cast<void*>(&api), &self) != 0 && self.dli_fname != nullptr) {
      const std::string lib = self.dli_fname;
      const size_t slash = lib.rfind('/');
      if (slash != std::string::npos) path = lib.substr(0, slash + 1) + kModule;
    }
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) handle = ::dlopen(kModule, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      error = ::dlerror();
      return;
    }
    auto sym = [&](const char* name, auto& fn) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(handle, name));
      if (fn == nullptr) error = std::string(kModule) + " lacks " + name;
    };
    sym("lwq_spm_load", a.load);
    sym("lwq_spm_free", a.free);
    sym("lwq_spm_info", a.info);
    sym("lwq_spm_piece_id", a.piece_id);
    sym("lwq_spm_encode", a.encode);
    sym("lwq_spm_decode", a.decode);
  });
  TORCH_CHECK(error.empty(), "SentencePiece tokenizers need ", kModule, " (built with lwq, beside liblwq.so): ", error);
  return a;
}

#endif

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer() = default;
SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (sp_ != nullptr) api().free(sp_);
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "tokenizer ", path, ": cannot open the SentencePiece model");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return from_model_bytes(bytes, path);
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_model_bytes(const std::string& bytes,
                                                                               const std::string& what) {
  const Api& a = api();
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  std::string error;
  t->sp_ = a.load(&bytes, &error);
  TORCH_CHECK(t->sp_ != nullptr, "tokenizer ", what, ": not a SentencePiece model (", error, ")");
  int64_t bos = -1, eos = -1, unk = -1;
  a.info(t->sp_, &t->pieces_, &bos, &eos, &unk);
  TORCH_CHECK(t->pieces_ > 0, "tokenizer ", what, ": the SentencePiece model has no pieces");
  t->source_ = what;
  SpecialTokens s;
  s.bos = bos;
  if (eos >= 0) s.eos.push_back(eos);
  s.add_bos = bos >= 0;
  t->set_special(s);
  return t;
}

std::vector<int64_t> SentencePieceTokenizer::encode_text(const std::string& text) const {
  std::vector<int> ids;
  std::string error;
  TORCH_CHECK(api().encode(sp_, &text, &ids, &error), "tokenizer ", source_, ": cannot encode the text (", error, ")");
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> narrow;
  narrow.reserve(ids.size());
  for (int64_t id : ids) {
    TORCH_CHECK(id >= 0 && id < pieces_, "tokenizer ", source_, ": id ", id, " is outside the vocabulary of ", pieces_);
    narrow.push_back(static_cast<int>(id));
  }
  std::string text, error;
  TORCH_CHECK(api().decode(sp_, &narrow, &text, &error), "tokenizer ", source_, ": cannot decode (", error, ")");
  return text;
}

int64_t SentencePieceTokenizer::vocab_size() const { return pieces_; }

int64_t SentencePieceTokenizer::token_id(const std::string& token) const { return api().piece_id(sp_, &token); }

std::string SentencePieceTokenizer::describe() const {
  return "SentencePiece tokenizer.model (" + std::to_string(vocab_size()) + " pieces) " + source_;
}

}  // namespace text
}  // namespace lwq
