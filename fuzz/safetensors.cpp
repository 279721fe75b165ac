// Fuzz target: a safetensors file (header length, JSON header with its tensor table and __metadata__, data), read
// as `lwq quantize --weights` reads it: open (validates the whole table), then every tensor loaded.
#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>

#include "fuzz_input.h"
#include "lwq/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lwq::fuzz::write_input("model.safetensors", data, size);
  try {
    const auto file = lwq::io::SafetensorsFile::open(path);
    for (const auto& name : file->names()) {
      try {
        file->load_raw(name);
        file->load(name);
      } catch (const c10::Error& e) {
        lwq::fuzz::refused(e);  // refused (a dtype load() does not convert): fine
      }
    }
  } catch (const std::exception& e) {
    lwq::fuzz::refused(e);  // a refused file: fine; a crash or a sanitizer report is what the fuzzer looks for
  }
  return 0;
}
