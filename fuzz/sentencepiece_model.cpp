// Fuzz target: a SentencePiece tokenizer.model (a protobuf, parsed by Debian's libsentencepiece through lwq's
// shim), loaded as `--tokenizer` loads it, then used to encode, decode and stream a few texts.
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>

#include "fuzz_input.h"
#include "lwq/text/sentencepiece_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tok = lwq::text::SentencePieceTokenizer::from_model_bytes(
        std::string(reinterpret_cast<const char*>(data), size), "tokenizer.model");
    for (const std::string t : {"Once upon a time", " \xC3\xA9\xF0\x9F\x98\x80\xFF ", ""}) {
      const auto ids = tok->encode(t, true, true);
      tok->decode(ids);
      lwq::text::StreamDecoder stream(*tok, {});
      for (const auto id : ids) stream.push(id);
      stream.finish();
    }
  } catch (const std::exception& e) {
    lwq::fuzz::refused(e);  // a refused file: fine
  }
  return 0;
}
