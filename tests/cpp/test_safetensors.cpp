// safetensors reader/writer, WeightStore (single file, sharded directory, name map) and atomic_write.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <signal.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lwq/io/output_path.h"
#include "lwq/io/safetensors.h"
#include "test_util.h"

namespace lwq {
namespace {

namespace fs = std::filesystem;
using io::SafetensorsFile;
using io::WeightStore;
using test::expect_error;

// A fresh directory per test, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const std::string base = (fs::temp_directory_path() / "lwq_io_XXXXXX").string();
    std::vector<char> buf(base.begin(), base.end());
    buf.push_back('\0');
    TORCH_INTERNAL_ASSERT(::mkdtemp(buf.data()) != nullptr, "mkdtemp failed");
    path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A file by hand: the 8-byte little-endian length of `header` (or `header_size` when given), header, data.
std::string raw_file(const std::string& header, const std::string& data, int64_t header_size = -1) {
  const uint64_t n = header_size < 0 ? header.size() : static_cast<uint64_t>(header_size);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// Expects open() (or, failing that, loading every tensor) to throw a c10::Error naming `path`.
void expect_clean_failure(const std::string& path, const std::string& context) {
  try {
    const auto f = SafetensorsFile::open(path);
    for (const auto& name : f->names()) {
      const auto dtype = f->info(name).dtype;
      const bool floating = dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
      if (floating)
        f->load(name);
      else
        f->load_raw(name);
    }
    ADD_FAILURE() << context << ": no error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(path), std::string::npos) << context << ": " << msg;
  }
}

std::vector<std::pair<std::string, at::Tensor>> sample_tensors() {
  at::manual_seed(7);
  return {
      {"w.f32", at::randn({3, 5})},
      {"a.u8", at::randint(0, 256, {3}, at::kByte)},  // 3 bytes: the tensors after it start unaligned
      {"b.f16", at::randn({7}).to(at::kHalf)},
      {"c.bf16", at::randn({2, 3, 4}).to(at::kBFloat16)},
      {"empty", at::zeros({0, 4})},
      {"scalar", at::full({}, 2.5f)},
      {"i64", at::randint(-1000, 1000, {4}, at::kLong)},
      {"i32", at::randint(-1000, 1000, {2, 2}, at::kInt)},
      {"i8", at::randint(-128, 128, {5}, at::kChar)},
      {"f64", at::randn({3}, at::kDouble)},
  };
}

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  const auto tensors = sample_tensors();
  io::write_safetensors(path, tensors, {{"format", "pt"}, {"note", "é"}});
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->names(), (std::vector<std::string>{"a.u8", "b.f16", "c.bf16", "empty", "f64", "i32", "i64", "i8",
                                                  "scalar", "w.f32"}));
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "é"}}));
  EXPECT_EQ(f->info("b.f16").dtype, "F16");
  EXPECT_EQ(f->info("c.bf16").dtype, "BF16");
  EXPECT_EQ(f->info("c.bf16").shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(f->info("scalar").shape, std::vector<int64_t>{});
  for (const auto& nt : tensors) {
    const at::Tensor raw = f->load_raw(nt.first);
    EXPECT_EQ(raw.scalar_type(), nt.second.scalar_type()) << nt.first;
    EXPECT_TRUE(at::equal(raw, nt.second)) << nt.first;
    if (!nt.second.is_floating_point()) continue;
    const at::Tensor x = f->load(nt.first);
    EXPECT_EQ(x.scalar_type(), at::kFloat) << nt.first;
    EXPECT_TRUE(x.is_contiguous());
    EXPECT_TRUE(at::equal(x, nt.second.to(at::kFloat))) << nt.first;  // F16/BF16 -> F32 is exact
  }
  expect_error([&] { f->load("i64"); }, "load_raw()");
  expect_error([&] { f->info("missing"); }, "has no tensor 'missing'");
}

TEST(Safetensors, LoadedTensorOutlivesTheMapping) {
  at::manual_seed(2);
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  const at::Tensor w = at::randn({4, 4}).to(at::kHalf);
  io::write_safetensors(path, {{"w", w}});
  at::Tensor x;
  {
    const auto f = SafetensorsFile::open(path);
    x = f->load("w");
  }
  fs::remove(path);
  EXPECT_TRUE(at::equal(x, w.to(at::kFloat)));
}

// Tensors larger than the 64 MiB slices of the reader (its pages are dropped slice by slice) load exactly, and
// an odd element count leaves a short last slice.
TEST(Safetensors, TensorsLargerThanOneSliceLoadExactly) {
  at::manual_seed(9);
  TempDir dir;
  const std::string path = dir.file("big.safetensors");
  const at::Tensor f16 = at::randn({(int64_t{40} << 20) + 3}).to(at::kHalf);  // 80 MiB + 6 bytes
  const at::Tensor f32 = at::randn({3, (int64_t{6} << 20) + 1});               // 72 MiB + 12 bytes
  io::write_safetensors(path, {{"a.f16", f16}, {"b.f32", f32}});
  const auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(at::equal(f->load("a.f16"), f16.to(at::kFloat)));
  EXPECT_TRUE(at::equal(f->load_raw("a.f16"), f16));
  EXPECT_TRUE(at::equal(f->load("b.f32"), f32));
}

TEST(Safetensors, WriterLayoutIsTheReferenceOne) {
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  // Non-contiguous input, names given out of order: written contiguous, in sorted order.
  const at::Tensor b = at::arange(6, at::kFloat).reshape({2, 3}).t();
  io::write_safetensors(path, {{"b", b}, {"a", at::ones({1}, at::kInt)}});
  const std::string header = R"({"a":{"data_offsets":[0,4],"dtype":"I32","shape":[1]},)"
                             R"("b":{"data_offsets":[4,28],"dtype":"F32","shape":[3,2]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), 8 + padded.size() + 28);
  EXPECT_EQ(bytes.substr(0, 8 + padded.size()), raw_file(padded, ""));
  EXPECT_EQ(padded.size() % 8, 0u);
  const float expected_b[] = {0, 3, 1, 4, 2, 5};
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + padded.size() + 4, expected_b, sizeof(expected_b)), 0);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"t.safetensors"});
}

TEST(Safetensors, WriterRefusesBadInput) {
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  expect_error([&] { io::write_safetensors(path, {{"x", at::ones({1})}, {"x", at::ones({2})}}); }, "appears twice");
  expect_error([&] { io::write_safetensors(path, {{"__metadata__", at::ones({1})}}); }, "reserved");
  expect_error([&] { io::write_safetensors(path, {{"", at::ones({1})}}); }, "name is empty");
  expect_error([&] { io::write_safetensors(path, {{"c", at::ones({1}, at::kComplexFloat)}}); }, "tensor 'c' has dtype");
  expect_error(
      [&] {
        io::write_safetensors(path, {{"m", at::empty({2}, at::device(at::kMeta))}});
      },
      "must be on the CPU");
  EXPECT_TRUE(dir.listing().empty());
}

// Every header violation, each by hand, with its own message naming the file (and the tensor).
TEST(Safetensors, HeaderViolationsHaveDistinctErrors) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::string data16(16, '\0');
  struct Case {
    std::string what, bytes, needle;
  };
  const std::vector<Case> cases = {
      {"shorter than 8 bytes", std::string(5, '\0'), "shorter than the 8-byte header length"},
      {"header length past the end", raw_file("{}", "", 1000), "runs past the end of the file"},
      {"header length over the cap", raw_file("{}", "", int64_t{200} << 20), "exceeds the cap"},
      {"header length near 2^64", std::string(8, '\xff') + "{}", "exceeds the cap"},
      {"bad JSON", raw_file(R"({"a": {"dtype": )", ""), "header is not valid JSON"},
      {"header not an object", raw_file("[1, 2]", ""), "header must be a JSON object"},
      {"entry not an object", raw_file(R"({"a": 3})", ""), "tensor 'a': expected an object"},
      {"unknown dtype", raw_file(R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", data16),
       "tensor 'a': unknown dtype \"Q4\""},
      {"dtype not a string", raw_file(R"({"a": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", data16),
       "tensor 'a': \"dtype\" must be a string"},
      {"negative dim", raw_file(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", data16),
       "tensor 'a': \"shape\" must be an array of non-negative integers"},
      {"fractional dim", raw_file(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]}})", data16),
       "tensor 'a': \"shape\" must be an array of non-negative integers"},
      {"shape/size mismatch", raw_file(R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", data16),
       "tensor 'a': shape [2, 2] of F32 needs 16 bytes but data_offsets [0, 12] span 12"},
      {"size overflow",
       raw_file(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}})", data16),
       "tensor 'a': the byte size of shape"},
      {"missing data_offsets", raw_file(R"({"a": {"dtype": "F32", "shape": [2]}})", data16),
       "tensor 'a': \"data_offsets\" must be [begin, end]"},
      {"offsets past the end", raw_file(R"({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}})", data16),
       "tensor 'a': data_offsets end 24 is past the end of the data section (16 bytes"},
      {"begin after end", raw_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", data16),
       "tensor 'a': data_offsets begin 8 is after end 4"},
      {"overlap",
       raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                data16),
       "the data of tensors 'a' [0, 8) and 'b' [4, 12) overlap"},
      {"non-string metadata", raw_file(R"({"__metadata__": {"k": 1}})", ""),
       "__metadata__ value of 'k' must be a string"},
      {"metadata not an object", raw_file(R"({"__metadata__": "x"})", ""), "__metadata__ must be an object"},
      // Found by a mutation fuzzer: 100,000 levels overflowed the stack (SIGSEGV).
      {"nested 100,000 levels deep",
       raw_file(R"({"__metadata__": {"k": )" + std::string(100000, '[') + std::string(100000, ']') + "}}", ""),
       "nested more than 64 levels"},
  };
  for (const Case& c : cases) {
    write_bytes(path, c.bytes);
    SCOPED_TRACE(c.what);
    expect_error([&] { SafetensorsFile::open(path); }, c.needle);
    expect_error([&] { SafetensorsFile::open(path); }, "safetensors file " + path);
  }
  expect_error([&] { SafetensorsFile::open(dir.file("absent.safetensors")); }, "cannot open");
  expect_error([&] { SafetensorsFile::open(dir.path()); }, "not a regular file");
}

TEST(Safetensors, ValidCornerCasesOpen) {
  TempDir dir;
  const std::string path = dir.file("ok.safetensors");
  // Empty header object, trailing spaces, a zero-size tensor inside another's range, a gap between ranges.
  write_bytes(path, raw_file("{}   ", ""));
  EXPECT_TRUE(SafetensorsFile::open(path)->names().empty());
  write_bytes(path, raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                             R"( "z": {"dtype": "F16", "shape": [0, 3], "data_offsets": [4, 4]},)"
                             R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]}})",
                             std::string(12, '\x01')));
  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->load("z").sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(at::equal(f->load_raw("b"), at::ones({2}, at::kByte)));
  // BOOL bytes other than 0/1 are refused at load.
  write_bytes(path, raw_file(R"({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}})", "\x01\x02"));
  expect_error([&] { SafetensorsFile::open(path)->load_raw("m"); }, "holds bytes other than 0 and 1");
}

// Cutting a valid file anywhere must give a clean error naming the file, never a crash or a bad read.
TEST(Safetensors, TruncationAtEveryByteFailsCleanly) {
  TempDir dir;
  const std::string full = dir.file("full.safetensors"), cut = dir.file("cut.safetensors");
  at::manual_seed(1);
  io::write_safetensors(full,
                        {{"a", at::randn({5}).to(at::kHalf)}, {"b", at::randn({3, 2})}, {"c", at::ones({2}, at::kInt)}},
                        {{"k", "v"}});
  const std::string bytes = read_bytes(full);
  ASSERT_GT(bytes.size(), 100u);
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_bytes(cut, bytes.substr(0, n));
    expect_clean_failure(cut, "cut at " + std::to_string(n));
  }
}

TEST(Safetensors, TruncationOfALargerFileFailsCleanly) {
  at::manual_seed(4);
  TempDir dir;
  const std::string full = dir.file("full.safetensors"), cut = dir.file("cut.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int i = 0; i < 20; ++i)
    tensors.emplace_back("layer." + std::to_string(i), at::randn({64, 33}).to(at::kBFloat16));
  io::write_safetensors(full, tensors);
  const std::string bytes = read_bytes(full);
  for (int k = 0; k < 50; ++k) {
    const size_t n = bytes.size() * k / 50;
    write_bytes(cut, bytes.substr(0, n));
    expect_clean_failure(cut, "cut at " + std::to_string(n));
  }
}

// Random byte corruption of the header: open and load either succeed or throw c10::Error, nothing else.
TEST(Safetensors, CorruptedHeaderNeverCrashes) {
  at::manual_seed(5);
  TempDir dir;
  const std::string full = dir.file("full.safetensors"), bad = dir.file("bad.safetensors");
  io::write_safetensors(full, {{"a", at::randn({5}).to(at::kHalf)}, {"b", at::randn({3, 2})}});
  const std::string bytes = read_bytes(full);
  std::mt19937 rng(123);
  const char alphabet[] = "0123456789[]{}\",:-. eE";
  int failures = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string b = bytes;
    const size_t header_end = 8 + static_cast<uint8_t>(bytes[0]);
    for (int flips = 1 + trial % 3; flips > 0; --flips)
      b[rng() % header_end] = alphabet[rng() % (sizeof(alphabet) - 1)];
    write_bytes(bad, b);
    try {
      const auto f = SafetensorsFile::open(bad);
      for (const auto& name : f->names()) f->load(name);
    } catch (const c10::Error&) {
      ++failures;
    }
  }
  EXPECT_GT(failures, 250);  // nearly all are caught; the rest are still valid files
}

// WeightStore -------------------------------------------------------------------------------------------------

TEST(WeightStore, SingleFileWithNameMap) {
  at::manual_seed(6);
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const at::Tensor q = at::randn({4, 3}), n = at::randn({3}), h = at::randn({2, 3}).to(at::kHalf);
  io::write_safetensors(path, {{"model.layers.0.q", q}, {"model.norm", n}, {"lm_head.weight", h}});
  // First matching rule wins: "model.layers." before "model."; unmatched names stay.
  const WeightStore store(path, {{"model.layers.", "L."}, {"model.", ""}});
  EXPECT_EQ(store.names(), (std::vector<std::string>{"L.0.q", "lm_head.weight", "norm"}));
  EXPECT_TRUE(store.contains("norm"));
  EXPECT_FALSE(store.contains("model.norm"));
  EXPECT_TRUE(at::equal(store.load("L.0.q"), q));
  EXPECT_TRUE(at::equal(store.load("lm_head.weight"), h.to(at::kFloat)));
  EXPECT_EQ(store.shape("L.0.q"), (std::vector<int64_t>{4, 3}));
  expect_error([&] { store.load("model.norm"); }, "WeightStore " + path + " has no tensor 'model.norm'");
  expect_error([&] { store.shape("nope"); }, "has no tensor 'nope'");
  // An empty `from` prefixes every name.
  const WeightStore prefixed(path, {{"", "m."}});
  EXPECT_EQ(prefixed.names(), (std::vector<std::string>{"m.lm_head.weight", "m.model.layers.0.q", "m.model.norm"}));
}

TEST(WeightStore, TwoFileNamesOnOneModelNameIsAnError) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  io::write_safetensors(path, {{"model.a", at::ones({1})}, {"a", at::ones({1})}});
  expect_error([&] { WeightStore(path, {{"model.", ""}}); }, "tensors 'a' (" + path + ") and 'model.a'");
  expect_error([&] { WeightStore(path, {{"model.", ""}}); }, "both map to the model name 'a'");
  EXPECT_EQ(WeightStore(path).names().size(), 2u);
}

TEST(WeightStore, DirectoryWithOneFile) {
  TempDir dir;
  expect_error([&] { WeightStore{dir.path()}; }, "found 0");
  io::write_safetensors(dir.file("weights.safetensors"), {{"x", at::ones({2})}});
  EXPECT_EQ(WeightStore(dir.path()).names(), std::vector<std::string>{"x"});
  io::write_safetensors(dir.file("other.safetensors"), {{"y", at::ones({2})}});
  expect_error([&] { WeightStore{dir.path()}; }, "found 2: other.safetensors, weights.safetensors");
  expect_error([&] { WeightStore{dir.file("absent")}; }, "no such file or directory");
}

struct ShardedModel {
  TempDir dir;
  at::Tensor a, b, c;
  ShardedModel() {
    at::manual_seed(3);
    a = at::randn({3, 4});
    b = at::randn({5}).to(at::kBFloat16);
    c = at::randn({2, 2});
    io::write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"model.a", a}, {"model.b", b}});
    io::write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"model.c", c}});
  }
  std::string index() const { return dir.file("model.safetensors.index.json"); }
  void write_index(const std::string& weight_map) const {
    write_bytes(index(), R"({"metadata": {"total_size": 76}, "weight_map": )" + weight_map + "}");
  }
};

TEST(WeightStore, ShardedDirectory) {
  ShardedModel m;
  m.write_index(R"({"model.a": "model-00001-of-00002.safetensors", "model.b": "model-00001-of-00002.safetensors",
                    "model.c": "model-00002-of-00002.safetensors"})");
  const WeightStore store(m.dir.path(), {{"model.", ""}});
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(at::equal(store.load("a"), m.a));
  EXPECT_TRUE(at::equal(store.load("b"), m.b.to(at::kFloat)));
  EXPECT_TRUE(at::equal(store.load("c"), m.c));
  EXPECT_EQ(store.shape("c"), (std::vector<int64_t>{2, 2}));
}

TEST(WeightStore, ShardedIndexErrors) {
  ShardedModel m;
  const std::string where = "WeightStore index " + m.index();
  m.write_index(R"({"model.a": "model-00001-of-00002.safetensors", "model.c": "model-00003-of-00003.safetensors"})");
  expect_error([&] { WeightStore{m.dir.path()}; },
               where + ": tensor 'model.c' is mapped to shard model-00003-of-00003.safetensors, which does not exist");
  m.write_index(R"({"model.a": "model-00001-of-00002.safetensors", "model.c": "model-00001-of-00002.safetensors"})");
  expect_error(
      [&] { WeightStore{m.dir.path()}; },
      where + ": tensor 'model.c' is mapped to shard model-00001-of-00002.safetensors, which does not hold it");
  m.write_index(R"({"model.a": "../model-00001-of-00002.safetensors"})");
  expect_error([&] { WeightStore{m.dir.path()}; }, "must be a file name in the index's directory");
  m.write_index(R"({"model.a": 1})");
  expect_error([&] { WeightStore{m.dir.path()}; }, where + ": tensor 'model.a': the shard must be a file name");
  write_bytes(m.index(), R"({"weight_map": {"model.a": )");
  expect_error([&] { WeightStore{m.dir.path()}; }, where + ": not valid JSON");
  write_bytes(m.index(), R"({"metadata": {}})");
  expect_error([&] { WeightStore{m.dir.path()}; }, "\"weight_map\" object");
  write_bytes(m.index(), R"({"metadata": )" + std::string(100000, '[') + std::string(100000, ']') + "}");
  expect_error([&] { WeightStore{m.dir.path()}; }, where + ": JSON nested more than 64 levels");
  // A corrupt shard fails with the shard's own name.
  m.write_index(R"({"model.c": "model-00002-of-00002.safetensors"})");
  write_bytes(m.dir.file("model-00002-of-00002.safetensors"), "garbage!!");
  expect_error([&] { WeightStore{m.dir.path()}; }, m.dir.file("model-00002-of-00002.safetensors"));
}

// atomic_write ------------------------------------------------------------------------------------------------

TEST(AtomicWrite, ReplacesTheFileAndLeavesNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  write_bytes(path, "old");
  std::string seen_tmp;
  io::atomic_write(path, [&](const std::string& tmp) {
    seen_tmp = tmp;
    EXPECT_EQ(fs::path(tmp).parent_path(), fs::path(path).parent_path());
    write_bytes(tmp, "new contents");
    EXPECT_EQ(read_bytes(path), "old");  // untouched until fill returns
  });
  EXPECT_EQ(read_bytes(path), "new contents");
  EXPECT_NE(seen_tmp, path);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.bin"});
}

// An interrupt while the temporary is being filled (a killed multi-gigabyte archive write) removes it and keeps the
// old output; the process still ends by the signal. In a child process, which interrupts itself mid-fill.
TEST(AtomicWrite, InterruptRemovesTheTemporary) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  write_bytes(path, "old");
  for (const int sig : {SIGTERM, SIGINT}) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      io::atomic_write(path, [&](const std::string& tmp) {
        write_bytes(tmp, std::string(1 << 20, 'x'));
        ::raise(sig);
      });
      ::_exit(0);  // not reached
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << status;
    EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.bin"});
    EXPECT_EQ(read_bytes(path), "old");
  }
}

TEST(AtomicWrite, FailingFillKeepsTheOldFile) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  write_bytes(path, "old");
  EXPECT_THROW(io::atomic_write(path,
                                [&](const std::string& tmp) {
                                  write_bytes(tmp, "partial");
                                  throw std::runtime_error("disk full");
                                }),
               std::runtime_error);
  EXPECT_EQ(read_bytes(path), "old");
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.bin"});
  // fill that removes the temporary: an error, old file intact.
  expect_error([&] { io::atomic_write(path, [](const std::string& tmp) { fs::remove(tmp); }); },
               "cannot open the temporary file");
  EXPECT_EQ(read_bytes(path), "old");
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.bin"});
  // A writer error (here a tensor the format cannot hold) also leaves the old file.
  expect_error([&] { io::write_safetensors(path, {{"c", at::ones({1}, at::kComplexDouble)}}); }, "has dtype");
  EXPECT_EQ(read_bytes(path), "old");
}

// The temporary is made before fill runs, under a fresh random name, as a plain file with the mode an ordinary
// create gives (so a planted file or link is never followed, and the output's mode is the usual one).
TEST(AtomicWrite, TemporaryIsAFreshFileWithTheUsualMode) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  const mode_t mask = ::umask(027);
  std::vector<std::string> temporaries;
  for (int i = 0; i < 2; ++i) {
    io::atomic_write(path, [&](const std::string& tmp) {
      temporaries.push_back(tmp);
      EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(tmp))) << tmp;
      EXPECT_EQ(fs::file_size(tmp), 0u);
      EXPECT_EQ(fs::path(tmp).filename().string().rfind("out.bin.tmp.", 0), 0u) << tmp;
      write_bytes(tmp, "x");
    });
  }
  ::umask(mask);
  EXPECT_NE(temporaries[0], temporaries[1]);
  EXPECT_EQ(fs::status(path).permissions(), fs::perms(0640));
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.bin"});
}

// A write killed outright (SIGKILL: nothing runs) leaves its temporary; the next write of that output removes it,
// but never the temporary of a writer that is still alive (it holds an flock on it), a link, or another name.
TEST(AtomicWrite, KilledWritesTemporaryIsRemovedByTheNextWrite) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  write_bytes(path, "old");
  auto backdate = [](const std::string& file) {  // the removal leaves temporaries younger than 2 s alone
    const struct timespec times[2] = {{::time(nullptr) - 60, 0}, {::time(nullptr) - 60, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << file;
  };
  auto temporaries = [&] {
    std::vector<std::string> out;
    for (const auto& name : dir.listing())
      if (name.rfind("out.bin.tmp.", 0) == 0) out.push_back(dir.file(name));
    return out;
  };
  // 1. Killed mid-fill: the temporary stays (the old output too).
  const pid_t killed = ::fork();
  ASSERT_GE(killed, 0);
  if (killed == 0) {
    io::atomic_write(path, [&](const std::string& tmp) {
      write_bytes(tmp, std::string(1 << 20, 'x'));
      ::raise(SIGKILL);
    });
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(killed, &status, 0), killed);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  const std::vector<std::string> left = temporaries();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(read_bytes(path), "old");
  backdate(left[0]);

  // 2. A live writer in another process, its temporary as old: kept. It waits on a pipe until told to finish.
  int to_child[2], from_child[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(from_child), 0);
  const pid_t live = ::fork();
  ASSERT_GE(live, 0);
  if (live == 0) {
    io::atomic_write(dir.file("other.bin"), [&](const std::string& tmp) {
      write_bytes(tmp, "live");
      const struct timespec times[2] = {{::time(nullptr) - 60, 0}, {::time(nullptr) - 60, 0}};
      ::utimensat(AT_FDCWD, tmp.c_str(), times, 0);
      char c = 'r';
      if (::write(from_child[1], &c, 1) != 1 || ::read(to_child[0], &c, 1) != 1) ::_exit(2);
    });
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(from_child[0], &c, 1), 1);
  std::string live_tmp;
  for (const auto& name : dir.listing())
    if (name.rfind("other.bin.tmp.", 0) == 0) live_tmp = dir.file(name);
  ASSERT_FALSE(live_tmp.empty());
  EXPECT_EQ(io::remove_stale_temporaries(dir.file("other.bin")), 0);
  EXPECT_TRUE(fs::exists(live_tmp));
  ASSERT_EQ(::write(to_child[1], &c, 1), 1);
  ASSERT_EQ(::waitpid(live, &status, 0), live);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(read_bytes(dir.file("other.bin")), "live");
  for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) ::close(fd);

  // 3. Not temporaries of out.bin: a link with the pattern's name (its target kept), a longer name. Left alone.
  write_bytes(dir.file("target"), "keep");
  fs::create_symlink(dir.file("target"), dir.file("out.bin.tmp.LINK01"));
  write_bytes(dir.file("out.bin.tmp.notes.txt"), "mine");
  backdate(dir.file("out.bin.tmp.notes.txt"));

  // The next write of out.bin removes the killed write's temporary, and only it.
  io::atomic_write(path, [&](const std::string& tmp) { write_bytes(tmp, "new"); });
  EXPECT_EQ(read_bytes(path), "new");
  EXPECT_FALSE(fs::exists(left[0]));
  EXPECT_EQ(read_bytes(dir.file("target")), "keep");
  EXPECT_TRUE(fs::is_symlink(dir.file("out.bin.tmp.LINK01")));
  EXPECT_TRUE(fs::exists(dir.file("out.bin.tmp.notes.txt")));
}

TEST(AtomicWrite, RefusesEmptyPathAndMissingDirectory) {
  TempDir dir;
  expect_error([] { io::atomic_write("", [](const std::string&) {}); }, "the output path is empty");
  expect_error(
      [&] {
        io::write_safetensors(dir.file("no/such/dir/x.safetensors"), {{"x", at::ones({1})}});
      },
      "cannot create");
}

// check_output_file / check_output_dir -------------------------------------------------------------------------

TEST(OutputPath, RefusesEveryPathThatWouldDestroyAnInputOrFailLate) {
  TempDir dir;
  const std::string weights = dir.file("weights");
  fs::create_directories(weights + "/sub");
  write_bytes(weights + "/model.safetensors", "w");
  write_bytes(weights + "/sub/tokenizer.model", "t");
  write_bytes(dir.file("model.pt"), "m");
  const std::vector<io::NamedInput> inputs = {{"--model", dir.file("model.pt")}, {"--weights", weights}, {"--x", ""}};
  auto check = [&](const std::string& out) { io::check_output_file("quantize", "--out", out, inputs); };
  check(dir.file("q.pt"));                   // new, next to the inputs
  check(weights + "/new.pt");                // new, inside an input directory
  write_bytes(dir.file("old.pt"), "o");
  check(dir.file("old.pt"));                 // an existing file that is no input is replaced
  expect_error([&] { check(dir.file("model.pt")); }, "--out " + dir.file("model.pt") + " is an input");
  expect_error([&] { check(weights + "/model.safetensors"); },
               "(" + weights + "/model.safetensors, in --weights " + weights + ")");
  expect_error([&] { check(weights + "/sub/../sub/tokenizer.model"); }, "is an input");
  fs::create_symlink(weights + "/model.safetensors", dir.file("link.pt"));
  expect_error([&] { check(dir.file("link.pt")); }, "is an input");
  fs::create_hard_link(dir.file("model.pt"), dir.file("hard.pt"));
  expect_error([&] { check(dir.file("hard.pt")); }, "is an input");
  expect_error([&] { check(weights); }, "is a directory");
  expect_error([&] { check(dir.file("missing/q.pt")); }, "the folder " + dir.file("missing") + " does not exist");
  expect_error([&] { check(dir.file("model.pt") + "/q.pt"); }, "is not a directory");
  expect_error([&] { check(""); }, "no output path given (--out)");
  // A directory output: its files that would be replaced are checked too.
  io::check_output_dir("export", "directory", dir.file("new_dir"), {"model.safetensors"}, inputs);
  expect_error([&] { io::check_output_dir("export", "directory", weights, {"model.safetensors"}, inputs); },
               "is an input");
  expect_error([&] { io::check_output_dir("export", "directory", dir.file("model.pt"), {"x"}, inputs); },
               "exists and is not a directory");
  EXPECT_TRUE(io::same_file(dir.file("hard.pt"), dir.file("model.pt")));
  EXPECT_FALSE(io::same_file(dir.file("q.pt"), dir.file("q.pt")));  // neither exists
}

}  // namespace
}  // namespace lwq
