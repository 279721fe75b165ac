// Fuzz target: a llama2.c tokenizer.bin, loaded as `--tokenizer` loads it, then used: a few texts encoded and
// decoded (streaming too), and the input's own bytes encoded as text.
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>

#include "fuzz_input.h"
#include "lwq/text/llama2c_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lwq::fuzz::write_input("tokenizer.bin", data, size);
  try {
    const auto tok = lwq::text::Llama2cTokenizer::load(path);
    const std::string texts[] = {"Once upon a time", " \xC3\xA9\xF0\x9F\x98\x80\xFF ", "",
                                 std::string(reinterpret_cast<const char*>(data), size < 256 ? size : 256)};
    for (const auto& t : texts) {
      const auto ids = tok.encode(t, true, true);
      tok.decode(ids);
      lwq::text::StreamDecoder stream(tok, {ids.front()});
      for (size_t i = 1; i < ids.size(); ++i) stream.push(ids[i]);
      stream.finish();
    }
  } catch (const std::exception& e) {
    lwq::fuzz::refused(e);  // a refused file: fine
  }
  return 0;
}
