// The safetensors reader (mmap, whole-header validation before any data is touched) and writer.
#include "lwq/io/safetensors.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "lwq/io/json.h"

// The data section is mapped and copied as is: its byte order must be the host's.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; this host is not");

namespace lwq {
namespace io {
namespace {

using json = nlohmann::json;

// A header larger than this is refused before it is parsed (real headers are a few MB at most).
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

struct DtypeDesc {
  const char* name;
  at::ScalarType type;
  uint64_t size;
};

constexpr DtypeDesc kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

const DtypeDesc* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeDesc* find_dtype(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return &d;
  return nullptr;
}

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : ", ") + d.name;
  return s;
}

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// A JSON number that is a non-negative integer representable as int64_t.
bool is_size(const json& v) {
  return v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// Checks one header entry and returns what it describes; `data_size` is the byte count after the header.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry, uint64_t data_size) {
  const std::string where = "safetensors file " + path + ": tensor '" + name + "'";
  TORCH_CHECK(entry.is_object(), where, ": expected an object with dtype, shape and data_offsets, got a JSON ",
              entry.type_name());
  TensorInfo info;

  const auto dtype = entry.find("dtype");
  TORCH_CHECK(dtype != entry.end() && dtype->is_string(), where, ": \"dtype\" must be a string, got ",
              dtype == entry.end() ? "nothing" : dtype->dump());
  info.dtype = dtype->get<std::string>();
  const DtypeDesc* desc = find_dtype(info.dtype);
  TORCH_CHECK(desc != nullptr, where, ": unknown dtype \"", info.dtype, "\" (known: ", known_dtypes(), ")");

  const auto shape = entry.find("shape");
  TORCH_CHECK(shape != entry.end() && shape->is_array(), where,
              ": \"shape\" must be an array of non-negative integers, got ",
              shape == entry.end() ? "nothing" : shape->dump());
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : *shape) {
    TORCH_CHECK(is_size(dim), where, ": \"shape\" must be an array of non-negative integers, got ", shape->dump());
    info.shape.push_back(dim.get<int64_t>());
    overflow = overflow || __builtin_mul_overflow(numel, dim.get<uint64_t>(), &numel);
  }
  uint64_t nbytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, desc->size, &nbytes);
  TORCH_CHECK(!overflow, where, ": the byte size of shape ", shape->dump(), " x ", info.dtype, " overflows");

  const auto offsets = entry.find("data_offsets");
  TORCH_CHECK(offsets != entry.end() && offsets->is_array() && offsets->size() == 2 && is_size((*offsets)[0]) &&
                  is_size((*offsets)[1]),
              where, ": \"data_offsets\" must be [begin, end] with non-negative integers, got ",
              offsets == entry.end() ? "nothing" : offsets->dump());
  const uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
  TORCH_CHECK(begin <= end, where, ": data_offsets begin ", begin, " is after end ", end);
  TORCH_CHECK(end <= data_size, where, ": data_offsets end ", end, " is past the end of the data section (", data_size,
              " bytes; the file is truncated or the header is wrong)");
  TORCH_CHECK(nbytes == end - begin, where, ": shape ", c10::IntArrayRef(info.shape), " of ", info.dtype, " needs ", nbytes,
              " bytes but data_offsets [", begin, ", ", end, "] span ", end - begin);
  info.begin = static_cast<int64_t>(begin);
  info.end = static_cast<int64_t>(end);
  return info;
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const std::string where = "safetensors file " + path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, where, ": cannot open: ", std::strerror(errno));
  const FdCloser closer{fd};
  struct stat st;
  TORCH_CHECK(::fstat(fd, &st) == 0, where, ": cannot stat: ", std::strerror(errno));
  TORCH_CHECK(S_ISREG(st.st_mode), where, ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  TORCH_CHECK(size >= 8, where, ": ", size, " bytes is shorter than the 8-byte header length");
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  TORCH_CHECK(map != MAP_FAILED, where, ": cannot mmap ", size, " bytes: ", std::strerror(errno));
  // From here the destructor unmaps, also when a check below throws.
  file->map_ = map;
  file->map_size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(map);

  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, 8);
  TORCH_CHECK(header_size <= kMaxHeaderBytes, where, ": header length ", header_size, " exceeds the cap of ",
              kMaxHeaderBytes, " bytes (not a safetensors file?)");
  TORCH_CHECK(8 + header_size <= size, where, ": header length ", header_size, " runs past the end of the file (", size,
              " bytes; truncated?)");

  json header;
  try {
    const auto* text = reinterpret_cast<const char*>(bytes + 8);
    header = parse_json(where + ": header", text, text + header_size);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, where, ": header is not valid JSON: ", e.what());
  }
  TORCH_CHECK(header.is_object(), where, ": header must be a JSON object, got a JSON ", header.type_name());

  const uint64_t data_size = size - 8 - header_size;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      TORCH_CHECK(it->is_object(), where, ": __metadata__ must be an object of strings, got a JSON ", it->type_name());
      for (auto m = it->begin(); m != it->end(); ++m) {
        TORCH_CHECK(m->is_string(), where, ": __metadata__ value of '", m.key(), "' must be a string, got ", m->dump());
        file->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    file->tensors_[it.key()] = parse_entry(path, it.key(), *it, data_size);
  }

  // Ranges sorted by begin overlap iff some range starts before its predecessor ends. Empty ranges hold no bytes.
  std::vector<std::pair<const std::string*, const TensorInfo*>> ranges;
  for (const auto& kv : file->tensors_)
    if (kv.second.begin < kv.second.end) ranges.emplace_back(&kv.first, &kv.second);
  std::sort(ranges.begin(), ranges.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const TensorInfo& prev = *ranges[i - 1].second;
    const TensorInfo& cur = *ranges[i].second;
    TORCH_CHECK(cur.begin >= prev.end, where, ": the data of tensors '", *ranges[i - 1].first, "' [", prev.begin, ", ",
                prev.end, ") and '", *ranges[i].first, "' [", cur.begin, ", ", cur.end, ") overlap");
  }

  file->data_ = bytes + 8 + header_size;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = tensors_.find(name);
  TORCH_CHECK(it != tensors_.end(), "safetensors file ", path_, " has no tensor '", name, "'");
  return it->second;
}

at::Tensor SafetensorsFile::load_raw(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const DtypeDesc* desc = find_dtype(ti.dtype);
  TORCH_INTERNAL_ASSERT(desc != nullptr, "dtype ", ti.dtype, " passed validation in open()");
  const uint8_t* src = data_ + ti.begin;
  const size_t nbytes = static_cast<size_t>(ti.end - ti.begin);
  if (desc->type == at::kBool) {
    // Any byte other than 0 or 1 is not a valid bool for ATen.
    const bool valid = std::all_of(src, src + nbytes, [](uint8_t b) { return b <= 1; });
    TORCH_CHECK(valid, "safetensors file ", path_, ": tensor '", name, "' is BOOL but holds bytes other than 0 and 1");
  }
  at::Tensor out = copy_out(ti, desc->type, desc->type);
  TORCH_INTERNAL_ASSERT(out.nbytes() == nbytes);
  return out;
}

void SafetensorsFile::release(const uint8_t* first, const uint8_t* last) const {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(first) + page - 1) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(last) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void SafetensorsFile::release(const TensorInfo& ti) const {
  // The copy is made: the mapped pages of this tensor leave the process's resident set (they stay in the page
  // cache). Without this a layer-wise run over a model larger than RAM would hold every page it ever read.
  release(data_ + ti.begin, data_ + ti.end);
}

at::Tensor SafetensorsFile::copy_out(const TensorInfo& ti, at::ScalarType stored, at::ScalarType to) const {
  // Slices of 64 MiB: a 500 MB embedding would otherwise be resident twice (mapped source and copy) at its end.
  constexpr int64_t kSliceBytes = int64_t{64} << 20;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(stored));
  at::Tensor out = at::empty(ti.shape, at::TensorOptions().dtype(to));
  const at::Tensor flat = out.view({-1});
  const int64_t n = flat.numel(), step = std::max<int64_t>(1, kSliceBytes / elem);
  const uint8_t* src = data_ + ti.begin;
  // Converting reads the source as `stored` elements in place, which needs aligned data; else bytes are copied.
  const bool in_place = stored == to || reinterpret_cast<uintptr_t>(src) % elem == 0;
  TORCH_INTERNAL_ASSERT(in_place, "copy_out: unaligned ", ti.dtype, " data needs stored == to");
  for (int64_t e0 = 0; e0 < n; e0 += step) {
    const int64_t len = std::min(step, n - e0);
    const uint8_t* from = src + e0 * elem;
    if (stored == to) {
      std::memcpy(static_cast<uint8_t*>(out.data_ptr()) + e0 * elem, from, static_cast<size_t>(len * elem));
    } else {  // read only: copy_ never writes its source
      flat.narrow(0, e0, len).copy_(at::from_blob(const_cast<uint8_t*>(from), {len}, at::TensorOptions().dtype(stored)));
    }
    release(from, from + len * elem);
  }
  release(ti);  // the pages that straddle two slices
  return out;
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const DtypeDesc* desc = find_dtype(ti.dtype);
  TORCH_INTERNAL_ASSERT(desc != nullptr, "dtype ", ti.dtype, " passed validation in open()");
  TORCH_CHECK(is_floating(desc->type), "safetensors file ", path_, ": tensor '", name, "' has dtype ", ti.dtype,
              "; load() reads F32, F16, BF16 and F64 tensors as float32 (load_raw() gives the stored dtype)");
  if (desc->type == at::kFloat) return load_raw(name);
  const uint8_t* src = data_ + ti.begin;
  if (reinterpret_cast<uintptr_t>(src) % desc->size == 0) return copy_out(ti, desc->type, at::kFloat);
  // Data at an offset that is not a multiple of the element size: copy into aligned memory first.
  return load_raw(name).to(at::kFloat);
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = "write_safetensors " + path;
  std::map<std::string, at::Tensor> sorted;
  for (const auto& nt : tensors) {
    const std::string& name = nt.first;
    const at::Tensor& t = nt.second;
    TORCH_CHECK(!name.empty(), where, ": a tensor name is empty");
    TORCH_CHECK(name != "__metadata__", where, ": \"__metadata__\" is reserved and cannot name a tensor");
    TORCH_CHECK(t.defined(), where, ": tensor '", name, "' is undefined");
    TORCH_CHECK(t.device().is_cpu(), where, ": tensor '", name, "' must be on the CPU, got ", t.device());
    TORCH_CHECK(find_dtype(t.scalar_type()) != nullptr, where, ": tensor '", name, "' has dtype ", t.scalar_type(),
                ", which safetensors cannot hold here (", known_dtypes(), ")");
    TORCH_CHECK(sorted.emplace(name, t.contiguous()).second, where, ": tensor name '", name, "' appears twice");
  }

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& kv : sorted) {
    const uint64_t nbytes = kv.second.nbytes();
    json entry = json::object();
    entry["dtype"] = find_dtype(kv.second.scalar_type())->name;
    entry["shape"] = kv.second.sizes().vec();
    entry["data_offsets"] = json::array({offset, offset + nbytes});
    header[kv.first] = std::move(entry);
    offset += nbytes;
  }
  std::string text = header.dump();
  // Padded with spaces so the data section starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_size = text.size();

  atomic_write(path, [&](const std::string& tmp) {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    TORCH_CHECK(f != nullptr, where, ": cannot create ", tmp, ": ", std::strerror(errno));
    bool ok = std::fwrite(&header_size, 8, 1, f) == 1 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (auto it = sorted.begin(); ok && it != sorted.end(); ++it) {
      const size_t nbytes = it->second.nbytes();
      ok = nbytes == 0 || std::fwrite(it->second.data_ptr(), 1, nbytes, f) == nbytes;
    }
    const int write_errno = errno;
    const bool closed = std::fclose(f) == 0;
    TORCH_CHECK(ok && closed, where, ": writing ", tmp, " failed: ", std::strerror(ok ? errno : write_errno));
  });
}

}  // namespace io
}  // namespace lwq
