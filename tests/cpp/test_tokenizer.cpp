// The llama2.c tokenizer: a small vocabulary written here (encode/decode, byte fallback, merge order against a
// quadratic reference, malformed files), then the real tok512.bin against lwq.llama2c, python/lwq/llama2c.py
// (skipped when ../shared/data is absent).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "lwq/text/evaluate.h"
#include "lwq/text/llama2c_tokenizer.h"
#include "test_util.h"

namespace lwq {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using text::Llama2cTokenizer;
using Tokenizer = text::Llama2cTokenizer;

struct Piece {
  std::string text;
  float score;
};

// <unk>, BOS, EOS, the 256 byte pieces, then `extra`.
std::vector<Piece> vocabulary(const std::vector<Piece>& extra) {
  std::vector<Piece> v = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    v.push_back({buf, 0});
  }
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

// Characters " abcdehlo" and merges; " he" and "ll" score highest, "lo" beats "ll" nowhere (lower score).
const std::vector<Piece> kExtra = {{" ", -50}, {"a", -51}, {"b", -52}, {"c", -53}, {"d", -54}, {"e", -55},
                                   {"h", -56}, {"l", -57}, {"o", -58}, {"ll", -1},  {" h", -2},  {"he", -3},
                                   {" he", -4}, {"llo", -5}, {" hello", -6}, {"lo", -7}, {"ab", -10},
                                   {"bc", -9},  {"cd", -10}, {"abcd", -8}, {"abc", -20}, {"ba", -10}};

std::string write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::string serialize(const std::vector<Piece>& pieces, int32_t max_len = -1) {
  if (max_len < 0) {
    max_len = 0;
    for (const auto& p : pieces) max_len = std::max<int32_t>(max_len, static_cast<int32_t>(p.text.size()));
  }
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& p : pieces) {
    const int32_t n = static_cast<int32_t>(p.text.size());
    out.append(reinterpret_cast<const char*>(&p.score), 4);
    out.append(reinterpret_cast<const char*>(&n), 4);
    out += p.text;
  }
  return out;
}

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lwq_tok_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  Tokenizer small() const { return Tokenizer::load(write_bytes(file("small.bin"), serialize(vocabulary(kExtra)))); }
  fs::path dir_;
};

int64_t id_of(const Tokenizer& t, const std::string& piece) {
  const int64_t id = t.piece_id(piece);
  EXPECT_GE(id, 0) << "no piece '" << piece << "'";
  return id;
}

// llama2.c's loop as written there: rescan every pair after each merge (quadratic, obviously right).
std::vector<int64_t> naive_encode(const Tokenizer& t, const std::string& text) {
  std::vector<int64_t> ids;
  const std::string s = " " + text;
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    const auto lead = static_cast<unsigned char>(s[i]);
    if (lead >= 0xC0) n = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    const int64_t id = t.piece_id(s.substr(i, n));
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (size_t k = 0; k < n; ++k) ids.push_back(3 + static_cast<unsigned char>(s[i + k]));
    }
    i += n;
  }
  while (true) {
    float best = 0;
    int64_t best_i = -1, best_id = -1;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const int64_t m = t.piece_id(t.piece(ids[i]) + t.piece(ids[i + 1]));
      if (m >= 0 && (best_i < 0 || t.score(m) > best)) best = t.score(m), best_i = static_cast<int64_t>(i), best_id = m;
    }
    if (best_i < 0) return ids;
    ids[best_i] = best_id;
    ids.erase(ids.begin() + best_i + 1);
  }
}

TEST_F(TokenizerTest, EncodesWithMergesAndSpecialTokens) {
  const Tokenizer t = small();
  EXPECT_EQ(t.vocab_size(), 259 + static_cast<int64_t>(kExtra.size()));
  EXPECT_EQ(t.encode("", false, false), std::vector<int64_t>{});
  EXPECT_EQ(t.encode("", true, true), (std::vector<int64_t>{Tokenizer::kBos, Tokenizer::kEos}));
  // " hello": "ll" (-1) first, then " h" (-2), then "llo" (-5) before " he" needs "he"... " h"+"e" = " he" (-4).
  EXPECT_EQ(t.encode("hello", false, false), std::vector<int64_t>{id_of(t, " hello")});
  EXPECT_EQ(t.encode("hello", true, true),
            (std::vector<int64_t>{Tokenizer::kBos, id_of(t, " hello"), Tokenizer::kEos}));
  EXPECT_EQ(t.encode("hello", false, false), naive_encode(t, "hello"));
}

TEST_F(TokenizerTest, HighestScoreMergesFirstAndLeftmostOnTies) {
  const Tokenizer t = small();
  // "bc" (-9) beats "ab" (-10): a + bc; "abc" exists but only as a merge of "ab"+"c" or "a"+"bc" -> score -20.
  EXPECT_EQ(t.encode("abc", false, false), (std::vector<int64_t>{id_of(t, " "), id_of(t, "abc")}));
  // "bc" (-9) beats the tie of "ab" and "cd" (-10): a, bc, d; then "abc" (-20), then "abcd" (-8): a merge's score
  // only counts once both its parts exist.
  EXPECT_EQ(t.encode("abcd", false, false), (std::vector<int64_t>{id_of(t, " "), id_of(t, "abcd")}));
  // "ab" and "ba" tie at -10: the leftmost pair merges, a + b first, leaving "a" alone ("aba" is no piece).
  EXPECT_EQ(t.encode("aba", false, false), (std::vector<int64_t>{id_of(t, " "), id_of(t, "ab"), id_of(t, "a")}));
}

TEST_F(TokenizerTest, MatchesTheQuadraticReferenceOnRandomText) {
  const Tokenizer t = small();
  std::mt19937 rng(7);
  const std::string alphabet = "abcdehlo  ";
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    if (trial % 10 == 0) s += "\xC3\xA9";  // é, byte fallback
    ASSERT_EQ(t.encode(s, false, false), naive_encode(t, s)) << "text '" << s << "'";
    EXPECT_EQ(t.decode(t.encode(s, true, false)), s);
  }
}

TEST_F(TokenizerTest, ByteFallbackAndDecode) {
  const Tokenizer t = small();
  // "é" is not a piece: its two UTF-8 bytes become ids 3 + byte; "日" (3 bytes) likewise; 0xFF is no UTF-8 at all.
  const std::vector<int64_t> ids = t.encode("a\xC3\xA9\xE6\x97\xA5\xFF", true, false);
  EXPECT_EQ(ids, (std::vector<int64_t>{Tokenizer::kBos, id_of(t, " "), id_of(t, "a"), 3 + 0xC3, 3 + 0xA9, 3 + 0xE6,
                                       3 + 0x97, 3 + 0xA5, 3 + 0xFF}));
  EXPECT_EQ(t.decode(ids), "a\xC3\xA9\xE6\x97\xA5\xFF");
  // The leading space after BOS is dropped (SentencePiece's dummy prefix), not elsewhere.
  EXPECT_EQ(t.decode(t.encode("hello he", true, true)), "hello he");
  EXPECT_EQ(t.decode_piece(Tokenizer::kBos, id_of(t, " hello")), "hello");
  EXPECT_EQ(t.decode_piece(id_of(t, "a"), id_of(t, " hello")), " hello");
  EXPECT_EQ(t.decode_piece(Tokenizer::kBos, 3 + 'A'), "A");
  EXPECT_EQ(t.decode_piece(Tokenizer::kBos, 3 + 0xC3), "\xC3");
  expect_error([&] { t.decode_piece(1, t.vocab_size()); }, "outside the vocabulary");
  // run.c's safe_printf: lone bytes print only when printable ASCII or whitespace.
  EXPECT_EQ(Tokenizer::printable("A"), "A");
  EXPECT_EQ(Tokenizer::printable("\n"), "\n");
  EXPECT_EQ(Tokenizer::printable("\x07"), "");
  EXPECT_EQ(Tokenizer::printable("\xC3"), "");
  EXPECT_EQ(Tokenizer::printable("\n</s>\n"), "\n</s>\n");
}

TEST_F(TokenizerTest, LongTextEncodesInReasonableTime) {
  const Tokenizer t = small();
  std::string s;
  for (int i = 0; i < 20000; ++i) s += "hello abcd ";
  const std::vector<int64_t> ids = t.encode(s, false, false);
  // decode() reads ids as following a BOS, whether or not it is among them: the dummy space goes.
  EXPECT_TRUE(t.decode(ids) == s);
  EXPECT_TRUE(t.decode(std::vector<int64_t>(ids.begin(), ids.begin() + 1)) == "hello");
  EXPECT_LT(ids.size(), s.size() / 2);
}

TEST_F(TokenizerTest, MalformedFilesAreRefusedNamingTheFile) {
  const std::string good = serialize(vocabulary(kExtra));
  expect_error([&] { Tokenizer::load(file("missing.bin")); }, "missing.bin: cannot open");
  expect_error([&] { Tokenizer::load(write_bytes(file("tiny.bin"), "ab")); }, "tiny.bin: 2 bytes, too short");
  // Cut inside the bytes of the last piece, and inside a piece header.
  expect_error([&] { Tokenizer::load(write_bytes(file("cut.bin"), good.substr(0, good.size() - 1))); },
               "cut.bin: truncated in piece");
  expect_error([&] { Tokenizer::load(write_bytes(file("cut2.bin"), good + std::string("\0\0\0", 3))); },
               "cut2.bin: truncated in the header of piece");
  // Negative and oversized lengths.
  std::string negative = good;
  const int32_t minus = -5;
  std::memcpy(&negative[4 + 4], &minus, 4);  // piece 0's length
  expect_error([&] { Tokenizer::load(write_bytes(file("neg.bin"), negative)); }, "neg.bin: piece 0 has a negative");
  std::vector<Piece> long_piece = vocabulary(kExtra);
  long_piece.push_back({"abcdefghijkl", -100});
  expect_error([&] { Tokenizer::load(write_bytes(file("long.bin"), serialize(long_piece, 8))); },
               "long.bin: piece 281 is 12 bytes long, above the file's max_token_length 8");
  expect_error([&] { Tokenizer::load(write_bytes(file("zero.bin"), serialize(vocabulary(kExtra), 0))); },
               "zero.bin: max_token_length 0 is not in 1..");
  expect_error([&] { Tokenizer::load(write_bytes(file("huge.bin"), serialize(vocabulary(kExtra), 1 << 30))); },
               "huge.bin: max_token_length 1073741824");
  // Missing or misplaced byte pieces, NaN scores.
  const std::vector<Piece> all = vocabulary({});
  const std::vector<Piece> few(all.begin(), all.begin() + 100);
  expect_error([&] { Tokenizer::load(write_bytes(file("few.bin"), serialize(few))); },
               "few.bin: 100 pieces, fewer than the 259");
  std::vector<Piece> swapped = vocabulary(kExtra);
  std::swap(swapped[3 + 0x41], swapped[3 + 0x42]);
  expect_error([&] { Tokenizer::load(write_bytes(file("swap.bin"), serialize(swapped))); },
               "swap.bin: piece 68 is '<0x42>', expected the byte-fallback piece <0x41>");
  std::vector<Piece> nan_score = vocabulary(kExtra);
  nan_score[270].score = std::nanf("");
  expect_error([&] { Tokenizer::load(write_bytes(file("nan.bin"), serialize(nan_score))); },
               "nan.bin: piece 270 has a NaN score");
}

// ---------------------------------------------------------------------------------------------------------------
// The real tokenizer against the Python reference.

class RealTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string data = test::shared_data_dir();
    if (data.empty() || !fs::exists(data + "/tok512.bin")) return;
    data_ = new std::string(data);
    // The Python reference (lwq.llama2c, python/lwq/llama2c.py) writes what the C++ side must reproduce.
    out_ = new std::string((fs::temp_directory_path() / ("lwq_tok_ref_" + std::to_string(::getpid()) + ".json")).string());
    const std::string script =
        "import json, sys\n"
        "sys.path.insert(0, '" LWQ_SOURCE_DIR "/python')\n"
        "from lwq import llama, llama2c\n"
        "d = sys.argv[1]\n"
        "tok = llama2c.Tokenizer(d + '/tok512.bin')\n"
        "segs = llama2c.read_segments(d + '/tinystories_val.txt', 200)\n"
        "extra = ['naïve café – “quoted” 日本 🙂', 'a  b\\tc', 'x', ' leading', 'trailing ', '\\u00a0nbsp\\u00a0']\n"
        "greedy = llama.generate_greedy(llama2c.load_model(d + '/stories260K.bin'), 256)\n"
        "json.dump({'segments': segs, 'ids': [tok.encode(s, bos=True) for s in segs],\n"
        "           'extra': extra, 'extra_ids': [tok.encode(s, bos=True, eos=True) for s in extra],\n"
        "           'extra_decoded': [tok.decode(tok.encode(s, bos=True, eos=True)) for s in extra],\n"
        "           'greedy': greedy}, open(sys.argv[2], 'w'))\n";
    const std::string script_path = *out_ + ".py";
    write_bytes(script_path, script);
    const std::string cmd = LWQ_PYTHON " " + script_path + " " + data + " " + *out_;
    python_ok_ = std::system(cmd.c_str()) == 0;
  }
  static void TearDownTestSuite() {
    if (out_) {
      std::error_code ec;
      fs::remove(*out_, ec);
      fs::remove(*out_ + ".py", ec);
    }
    delete out_;
    delete data_;
    out_ = data_ = nullptr;
  }
  void SetUp() override {
    if (!data_) GTEST_SKIP() << "real test material absent: ../shared/data/tok512.bin not found";
    // Not a skip: with the data present, the comparison must happen.
    ASSERT_TRUE(python_ok_) << "the Python reference (" LWQ_PYTHON " with lwq.llama2c) failed to run";
    std::ifstream in(*out_);
    ref_ = nlohmann::json::parse(in);
  }
  static std::string* data_;
  static std::string* out_;
  static bool python_ok_;
  nlohmann::json ref_;
};
std::string* RealTokenizer::data_ = nullptr;
std::string* RealTokenizer::out_ = nullptr;
bool RealTokenizer::python_ok_ = false;

TEST_F(RealTokenizer, EncodesTheFirst200SegmentsAsThePythonReference) {
  const Tokenizer t = Tokenizer::load(*data_ + "/tok512.bin");
  EXPECT_EQ(t.vocab_size(), 512);
  const std::vector<std::string> segments = text::read_segments(*data_ + "/tinystories_val.txt", 200);
  ASSERT_EQ(segments, ref_["segments"].get<std::vector<std::string>>());
  const auto expected = ref_["ids"].get<std::vector<std::vector<int64_t>>>();
  ASSERT_EQ(expected.size(), 200u);
  size_t tokens = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    ASSERT_EQ(t.encode(segments[i], true, false), expected[i]) << "segment " << i << ": " << segments[i];
    EXPECT_EQ(t.decode(expected[i]), segments[i]) << "segment " << i;
    tokens += expected[i].size();
  }
  EXPECT_GT(tokens, 10000u);
  const auto extra = ref_["extra"].get<std::vector<std::string>>();
  const auto extra_ids = ref_["extra_ids"].get<std::vector<std::vector<int64_t>>>();
  const auto extra_decoded = ref_["extra_decoded"].get<std::vector<std::string>>();
  for (size_t i = 0; i < extra.size(); ++i) {
    EXPECT_EQ(t.encode(extra[i], true, true), extra_ids[i]) << extra[i];
    EXPECT_EQ(t.decode(extra_ids[i]), extra_decoded[i]) << extra[i];
  }
}

TEST_F(RealTokenizer, DecodesTheReferenceGreedyTokensToTheReferenceText) {
  const Tokenizer t = Tokenizer::load(*data_ + "/tok512.bin");
  const auto greedy = ref_["greedy"].get<std::vector<int64_t>>();
  ASSERT_EQ(greedy.size(), 256u);
  std::ifstream in(*data_ + "/stories260K.greedy.txt", std::ios::binary);
  const std::string expected((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // run.c prints each piece (after BOS first) and a newline; the reference file adds the newline ending the file.
  std::string printed;
  int64_t prev = Tokenizer::kBos;
  for (const int64_t id : greedy) {
    printed += Tokenizer::printable(t.decode_piece(prev, id));
    prev = id;
  }
  EXPECT_EQ(printed + "\n\n", expected);
  EXPECT_EQ(t.decode(greedy) + "\n\n", expected);  // ASCII text: the plain decode is the same
  text::StreamDecoder stream(t, {Tokenizer::kBos});
  std::string streamed;
  for (const int64_t id : greedy) streamed += stream.push(id);
  EXPECT_EQ(streamed + stream.finish() + "\n\n", expected);
}

// Streaming holds a character split over byte-fallback pieces until its last byte, and gives the same text as
// decoding everything at once.
TEST_F(TokenizerTest, StreamDecoderWaitsForWholeCharacters) {
  const Tokenizer t = small();
  const std::string s = "hello \xC3\xA9t\xE6\x97\xA5 he\xFF!";
  const std::vector<int64_t> ids = t.encode(s, true, false);
  text::StreamDecoder stream(t, {ids.front()});
  std::string streamed;
  for (size_t i = 1; i < ids.size(); ++i) {
    const std::string piece = stream.push(ids[i]);
    if (ids[i] == 3 + 0xC3 || ids[i] == 3 + 0xE6 || ids[i] == 3 + 0x97) {
      EXPECT_EQ(piece, "") << "id " << ids[i];
    }
    streamed += piece;
  }
  streamed += stream.finish();
  EXPECT_EQ(streamed, s);
  EXPECT_EQ(streamed, t.decode(ids));
}

// A lead byte that never gets its continuation is given at the end, not lost.
TEST_F(TokenizerTest, StreamDecoderFinishGivesAnIncompleteTail) {
  const Tokenizer t = small();
  text::StreamDecoder stream(t, {Tokenizer::kBos});
  EXPECT_EQ(stream.push(id_of(t, " hello")), "hello");
  EXPECT_EQ(stream.push(3 + 0xE6), "");
  EXPECT_EQ(stream.finish(), "\xE6");
}

}  // namespace
}  // namespace lwq
