// tokenizer.json pieces that need no reference library: merge order, both merge forms, byte fallback and unk,
// split behaviors (the examples of the `tokenizers` documentation), Metaspace's prepend schemes, added tokens,
// invalid UTF-8, streaming a character split over byte-level tokens, refusals. The id-for-id comparison with
// `tokenizers` is tests/python/test_tokenizers.py.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "lwq/text/hf_tokenizer.h"
#include "test_util.h"

namespace lwq {
namespace {

using nlohmann::json;
using test::expect_error;
using text::HfTokenizer;

// A BPE tokenizer.json over `tokens` (ids in order) with `merges` and the given components.
json spec(const std::vector<std::string>& tokens, const json& merges, json pre = nullptr, json decoder = nullptr) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  return {{"version", "1.0"},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre},
          {"decoder", decoder},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

std::unique_ptr<HfTokenizer> make(const json& j) { return HfTokenizer::from_json_text(j.dump(), "test.json"); }

TEST(HfTokenizer, MergesByRankInBothForms) {
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  // "b c" ranks before "a b": "abc" -> a + bc (then no merge "a bc") -> [a, bc].
  const auto strings = make(spec(tokens, {"b c", "a b", "ab c"}));
  const auto pairs = make(spec(tokens, json::array({json::array({"b", "c"}), json::array({"a", "b"}),
                                                     json::array({"ab", "c"})})));
  EXPECT_EQ(strings->encode_text("abc"), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(pairs->encode_text("abc"), strings->encode_text("abc"));
  const auto other = make(spec(tokens, {"a b", "b c", "ab c"}));
  EXPECT_EQ(other->encode_text("abc"), (std::vector<int64_t>{5}));
  EXPECT_EQ(other->encode_text("abcabc"), (std::vector<int64_t>{5, 5}));  // the word cache gives the same
  EXPECT_EQ(other->encode_text("abcabc"), (std::vector<int64_t>{5, 5}));
}

TEST(HfTokenizer, ByteFallbackUnkAndFuseUnk) {
  std::vector<std::string> tokens = {"<unk>", "a"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    tokens.push_back(name);
  }
  json j = spec(tokens, json::array(), nullptr,
                {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}});
  j["model"]["byte_fallback"] = true;
  const auto t = make(j);
  EXPECT_EQ(t->encode_text("a\xC3\xA9"), (std::vector<int64_t>{1, 2 + 0xC3, 2 + 0xA9}));
  EXPECT_EQ(t->decode(t->encode_text("a\xC3\xA9\xFF")), "a\xC3\xA9\xFF");  // raw bytes, not U+FFFD

  json u = spec({"<unk>", "a"}, json::array());
  u["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(make(u)->encode_text("axyа"), (std::vector<int64_t>{1, 0, 0, 0}));
  u["model"]["fuse_unk"] = true;
  EXPECT_EQ(make(u)->encode_text("axya"), (std::vector<int64_t>{1, 0, 1}));
  json none = spec({"a"}, json::array());
  expect_error([&] { make(none)->encode_text("ax"); }, "neither byte fallback");
}

TEST(HfTokenizer, SplitBehaviorsAsDocumented) {
  // `tokenizers`' example: "the-final--countdown" split on "-". ignore_merges makes each piece one id.
  const std::vector<std::string> tokens = {"the", "final", "countdown", "-", "--", "the-", "final-", "-final",
                                           "-countdown"};
  auto ids = [&](const std::string& behavior) {
    json j = spec(tokens, json::array(),
                  {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", false}});
    j["model"]["ignore_merges"] = true;
    std::vector<std::string> out;
    const auto t = make(j);
    for (int64_t id : t->encode_text("the-final--countdown")) out.push_back(t->token(id));
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(ids("Removed"), (V{"the", "final", "countdown"}));
  EXPECT_EQ(ids("Isolated"), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(ids("MergedWithPrevious"), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(ids("MergedWithNext"), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(ids("Contiguous"), (V{"the", "-", "final", "--", "countdown"}));
}

TEST(HfTokenizer, MetaspacePrependSchemes) {
  const std::string m = "\xE2\x96\x81";  // U+2581
  const std::vector<std::string> tokens = {m + "a", "a", m + "b", "b", m, "c"};
  auto t = [&](const std::string& scheme, bool split) {
    json j = spec(tokens, json::array(),
                  {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", scheme}, {"split", split}},
                  {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", scheme}, {"split", split}});
    j["model"]["ignore_merges"] = true;
    j["added_tokens"] = {{{"id", 5}, {"content", "c"}, {"special", false}, {"normalized", false}}};
    return make(j);
  };
  EXPECT_EQ(t("always", true)->encode_text("a b"), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(t("never", true)->encode_text("a b"), (std::vector<int64_t>{1, 2}));
  // "first": only the text at the start of the input gets the prefix, not the text after an added token.
  EXPECT_EQ(t("first", true)->encode_text("aca"), (std::vector<int64_t>{0, 5, 1}));
  EXPECT_EQ(t("always", true)->encode_text("aca"), (std::vector<int64_t>{0, 5, 0}));
  EXPECT_EQ(t("always", true)->decode({0, 2}), "a b");
}

TEST(HfTokenizer, SpecialTokensAreTextAndSkippedInDecode) {
  json j = spec({"<", "s", ">", "x"}, json::array(), nullptr, {{"type", "Fuse"}});
  j["added_tokens"] = {{{"id", 4}, {"content", "<s>"}, {"special", true}},
                       {{"id", 5}, {"content", "xx"}, {"special", false}}};
  const auto t = make(j);
  EXPECT_EQ(t->encode_text("<s>xxx"), (std::vector<int64_t>{0, 1, 2, 5, 3}));
  EXPECT_EQ(t->decode({4, 3, 5}), "xxx");
  EXPECT_EQ(t->token_id("<s>"), 4);
  EXPECT_EQ(t->vocab_size(), 6);
}

TEST(HfTokenizer, ByteLevelRoundTripsInvalidUtf8AndStreams) {
  // Every byte as its GPT-2 character, no merges: ids are bytes in the ByteLevel order.
  std::vector<std::string> tokens;
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? b : 256 + next++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | cp >> 6);
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    tokens.push_back(s);
  }
  const auto t = make(spec(tokens, json::array(), {{"type", "ByteLevel"}, {"add_prefix_space", false}},
                           {{"type", "ByteLevel"}}));
  const std::string bad = "ok \xFF\xC3 \xED\xA0\x80 \xF0\x9F\x99\x82";
  const std::vector<int64_t> ids = t->encode_text(bad);
  EXPECT_EQ(ids.size(), bad.size());
  EXPECT_EQ(t->decode(ids), bad);
  text::StreamDecoder stream(*t, {});
  std::string out;
  std::vector<std::string> pushed;
  for (int64_t id : t->encode_text("\xF0\x9F\x99\x82!")) pushed.push_back(stream.push(id));
  EXPECT_EQ(pushed, (std::vector<std::string>{"", "", "", "\xF0\x9F\x99\x82", "!"}));
}

TEST(HfTokenizer, RefusesWhatItDoesNotRun) {
  json base = spec({"a"}, json::array());
  auto with = [&](const char* key, json value) {
    json j = base;
    j[key] = value;
    return j.dump();
  };
  expect_error([&] { HfTokenizer::from_json_text(with("normalizer", {{"type", "Lowercase"}}), "x.json"); },
               "x.json: the normalizer Lowercase is not supported");
  expect_error([&] { HfTokenizer::from_json_text(with("pre_tokenizer", {{"type", "Whitespace"}}), "x.json"); },
               "pre_tokenizer Whitespace is not supported");
  expect_error([&] { HfTokenizer::from_json_text(with("decoder", {{"type", "CTC"}}), "x.json"); },
               "decoder CTC is not supported");
  expect_error([&] { HfTokenizer::from_json_text(with("model", {{"type", "Unigram"}}), "x.json"); },
               "model type Unigram is not supported");
  json bad_merge = base;
  bad_merge["model"]["merges"] = {"a q"};
  expect_error([&] { make(bad_merge); }, "merge 0 ('a', 'q') names a token that is not in the vocabulary");
  expect_error([&] { HfTokenizer::from_json_text(std::string(200, '[') + std::string(200, ']'), "deep.json"); },
               "nested more than");
  expect_error([&] { HfTokenizer::from_json_text("{\"model\": 3", "trunc.json"); }, "trunc.json: not valid JSON");
  json split = base;
  split["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_error([&] { make(split); }, "cannot compile the pattern '(unclosed'");
  expect_error([&] { make(base)->decode({7}); }, "id 7 is not a token");
}

}  // namespace
}  // namespace lwq
