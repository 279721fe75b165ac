// Reading weights from safetensors files (one file, or a Hugging Face sharded directory) and writing outputs
// atomically. All file I/O of the core library lives in src/io/.
//
// safetensors: 8-byte little-endian header length H, H bytes of JSON {"name": {"dtype", "shape", "data_offsets":
// [begin, end]}, "__metadata__": {...}}, then the raw little-endian data; offsets are relative to the data start.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lwq {
namespace io {

struct TensorInfo {
  std::string dtype;            // "F32", "F16", "BF16" (others are listed but refused by load())
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;   // byte range relative to the data section
};

// One safetensors file, memory-mapped. open() validates the whole header before any tensor is touched and
// throws a c10::Error naming the file (and tensor) on: header size over the cap or past the end of the file,
// malformed JSON, unknown dtype, shape x dtype size != byte range, range outside the file, overlapping ranges.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming file and tensor when absent
  // A float32 copy of the tensor (F16/BF16 converted), contiguous, owned (the mapping may be closed after).
  at::Tensor load(const std::string& name) const;
  // A copy in the stored dtype (any known dtype: the integer and BOOL tensors load() refuses), contiguous, owned.
  at::Tensor load_raw(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void release(const uint8_t* begin, const uint8_t* end) const;  // drops whole mapped pages in [begin, end)
  void release(const TensorInfo& ti) const;  // drops the tensor's mapped pages from the resident set
  // The tensor's elements as `to`, copied in slices whose mapped pages are dropped as soon as they are copied.
  at::Tensor copy_out(const TensorInfo& ti, at::ScalarType stored, at::ScalarType to) const;
  std::string path_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  const uint8_t* data_ = nullptr;  // start of the data section inside the mapping
  void* map_ = nullptr;
  size_t map_size_ = 0;
};

// How names in the files relate to the model's qualified parameter names: each rule replaces a leading prefix
// (e.g. {"model.", ""} or {"", "transformer."}); the first rule whose `from` prefixes the file name applies.
using NameMap = std::vector<std::pair<std::string, std::string>>;

// The weights of a model: a .safetensors file, or a directory with model.safetensors.index.json and its shards
// (or a directory holding exactly one .safetensors file). Names are the model's names (after the NameMap).
class WeightStore {
 public:
  explicit WeightStore(const std::string& path, NameMap name_map = {});
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  at::Tensor load(const std::string& name) const;  // float32; throws naming the tensor and the file
  at::Tensor load_raw(const std::string& name) const;  // in the stored dtype (integer tensors too)
  std::vector<int64_t> shape(const std::string& name) const;

 private:
  std::string path_;  // as given, for error messages
  std::map<std::string, std::pair<std::shared_ptr<SafetensorsFile>, std::string>> where_;  // model name -> (file, name in file)
};

// Writes a safetensors file of float32/float16/bfloat16/int tensors (used by tests, export and the pipeline's state).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes `path` atomically: fill(tmp_path) writes a temporary file next to it (already created, empty, under a random
// name), which is fsync'ed and renamed over `path` only when fill returns; on any error the temporary is removed and
// `path` is left untouched.
// A write killed outright (SIGKILL, the OOM killer) leaves its temporary "PATH.tmp.XXXXXX"; atomic_write holds an
// flock on its temporary while it fills it, so one that nobody holds (and at least 2 s old) belongs to a writer
// that is gone. Removes those next to `path` (this user's regular files only; links are never followed), says so on
// stderr, and returns how many. atomic_write calls it first; commands call it early as well, so a leftover of
// gigabytes is not kept for the length of a run.
int64_t remove_stale_temporaries(const std::string& path);
void atomic_write(const std::string& path, const std::function<void(const std::string& tmp_path)>& fill);

}  // namespace io
}  // namespace lwq
