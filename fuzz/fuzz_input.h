// Helpers shared by the fuzz targets: readers that take a path get the input bytes as a file in a private
// temporary directory (made once per process with mkdtemp, rewritten for every input).
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <fstream>
#include <string>

namespace lwq {
namespace fuzz {

// The directory the inputs are written into: under $TMPDIR (default /tmp), removed by nobody (tiny files only).
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/lwq-fuzz-XXXXXX";
    TORCH_CHECK(::mkdtemp(pattern.data()) != nullptr, "fuzz: cannot make a scratch directory");
    return pattern;
  }();
  return dir;
}

// Writes `size` bytes to scratch_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  TORCH_CHECK(out.good(), "fuzz: cannot write ", path);
  return path;
}

// Called for every refused input: quiet while fuzzing; with LWQ_FUZZ_VERBOSE=1 (replays) it prints the message,
// to check that seeds are accepted and that refusals say something useful.
inline void refused(const std::exception& e) {
  static const bool verbose = std::getenv("LWQ_FUZZ_VERBOSE") != nullptr;
  if (!verbose) return;
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::cerr << "refused: " << (c10_error ? c10_error->what_without_backtrace() : e.what()) << "\n";
}

// Consumes fixed-size values from the front of the input (zero once it runs out), for structured targets.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T take() {
    T v{};
    const size_t n = sizeof(T) < size_ ? sizeof(T) : size_;
    std::memcpy(&v, data_, n);
    data_ += n;
    size_ -= n;
    return v;
  }
  // The next `n` bytes (fewer when the input ends).
  std::string take_string(size_t n) {
    n = n < size_ ? n : size_;
    std::string s(reinterpret_cast<const char*>(data_), n);
    data_ += n;
    size_ -= n;
    return s;
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_;
  size_t size_;
};

}  // namespace fuzz
}  // namespace lwq
