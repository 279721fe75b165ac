// Fuzz target: a Hugging Face tokenizer.json (model, normalizer, pre-tokenizer with its split regex, decoder, added
// tokens) parsed as `--tokenizer` parses it, then used: a few texts and the input's own bytes encoded, decoded and
// streamed.
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>

#include "fuzz_input.h"
#include "lwq/text/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tok = lwq::text::HfTokenizer::from_json_text(
        std::string(reinterpret_cast<const char*>(data), size), "tokenizer.json");
    const std::string texts[] = {"Once upon a time, 42 cats", "  \t\n\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 \xFF",
                                 "<s>[INST]</s><|endoftext|>",
                                 std::string(reinterpret_cast<const char*>(data), size < 128 ? size : 128)};
    for (const auto& t : texts) {
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
