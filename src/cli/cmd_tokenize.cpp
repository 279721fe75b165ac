// `lwq tokenize`: the ids a tokenizer gives a text, or the text of ids, so that the tool's tokenization can be
// checked from outside (tests/python/test_tokenizers.py compares it with `tokenizers` and `sentencepiece`).
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "cli.h"
#include "lwq/text/tokenizer.h"

namespace lwq {
namespace cli {

namespace {

const char* kDescription =
    "Prints the ids of a text as TOK encodes it: plain text, without BOS or EOS; the spelling of a special\n"
    "token in the text is text, not the special id. One line of space-separated ids per text on stdout, and\n"
    "the tokenizer read, the byte and id counts and the encoding time on stderr. --decode prints the text\n"
    "of ids instead (special ids such as BOS and EOS give no text).";

struct Tokenize {
  std::string tokenizer, text, file, decode;
  bool null = false, json = false, text_given = false;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("--file " + path + ": cannot open the file");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ' ' || s[i] == ',' || s[i] == '\n' || s[i] == '\t') {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < s.size() && s[end] >= '0' && s[end] <= '9') ++end;
    if (end == i || end - i > 18 || (end < s.size() && s.find_first_of(" ,\n\t", end) != end)) {
      throw UsageError("--decode needs ids separated by spaces or commas, got '" + s + "'");
    }
    ids.push_back(std::stoll(s.substr(i, end - i)));
    i = end;
  }
  return ids;
}

nlohmann::ordered_json describe_json(const text::Tokenizer& t) {
  const text::SpecialTokens& s = t.special();
  return {{"tokenizer", t.describe()}, {"vocab_size", t.vocab_size()}, {"bos", s.bos}, {"eos", s.eos},
          {"add_bos", s.add_bos}};
}

int run(Tokenize& k) {
  const std::unique_ptr<text::Tokenizer> tok = text::load_tokenizer(k.tokenizer);
  const auto dump = [](const nlohmann::ordered_json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); };
  if (!k.decode.empty()) {
    const std::string text = tok->decode(parse_ids(k.decode));
    if (k.json) {
      nlohmann::ordered_json j = describe_json(*tok);
      j["text"] = text;  // invalid UTF-8 shows as U+FFFD here; without --json the bytes are printed as they are
      std::cout << dump(j) << std::endl;
    } else {
      std::cout << text << std::flush;
    }
    return 0;
  }
  if (k.null && k.file.empty()) throw UsageError("--null applies to --file only");
  if (k.file.empty() && !k.text_given) throw UsageError("give --text S, --file F or --decode IDS");
  const std::string input = k.file.empty() ? k.text : read_file(k.file);
  std::vector<std::string> texts;
  if (k.null) {
    for (size_t at = 0; at <= input.size();) {
      size_t end = input.find('\0', at);
      if (end == std::string::npos) end = input.size();
      if (end > at || end < input.size()) texts.push_back(input.substr(at, end - at));
      at = end + 1;
    }
  } else {
    texts.push_back(input);
  }
  std::vector<std::vector<int64_t>> ids(texts.size());
  const auto start = std::chrono::steady_clock::now();
  size_t count = 0;
  for (size_t n = 0; n < texts.size(); ++n) {
    ids[n] = tok->encode_text(texts[n]);
    count += ids[n].size();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << tok->describe() << "\n"
            << input.size() << " bytes, " << texts.size() << " text(s) -> " << count << " ids in " << seconds
            << " s" << std::endl;
  if (k.json) {
    nlohmann::ordered_json j = describe_json(*tok);
    j["encode_seconds"] = seconds;
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (size_t n = 0; n < texts.size(); ++n) {
      const std::string back = tok->decode(ids[n]);
      list.push_back({{"ids", ids[n]}, {"decoded", back}, {"round_trip", back == texts[n]}});
    }
    j["texts"] = list;
    std::cout << dump(j) << std::endl;
    return 0;
  }
  std::string out;
  for (const auto& line : ids) {
    for (size_t i = 0; i < line.size(); ++i) out += (i ? " " : "") + std::to_string(line[i]);
    out += "\n";
  }
  std::cout << out << std::flush;
  return 0;
}

}  // namespace

Command add_tokenize(CLI::App& lwq) {
  auto k = std::make_shared<Tokenize>();
  CLI::App* app = add_command(lwq, "tokenize", "print the ids a tokenizer gives a text (or the text of ids)",
                              "--tokenizer TOK (--text S | --file F [--null] | --decode IDS) [--json]", kDescription);
  app->add_option("--tokenizer", k->tokenizer,
                  "tokenizer.json, tokenizer.model, llama2.c tokenizer.bin, or a model directory\n"
                  "holding one (its tokenizer_config.json / generation_config.json set BOS and EOS)")
      ->type_name("TOK")
      ->required();
  CLI::Option* text = app->add_option_function<std::string>(
                             "--text",
                             [k](const std::string& s) {
                               k->text = s;
                               k->text_given = true;
                             },
                             "the text to encode")
                          ->type_name("S");
  CLI::Option* file = app->add_option("--file", k->file, "encode the bytes of file F")->type_name("F")->excludes(text);
  app->add_flag("--null", k->null, "with --file: F holds texts separated by NUL bytes, each encoded alone\n"
                                   "(one line of ids each)");
  app->add_option("--decode", k->decode, "print the text of IDS (separated by spaces or commas)")
      ->type_name("IDS")
      ->excludes(text)
      ->excludes(file);
  add_json_flag(*app, k->json,
                "tokenizer, vocab_size, bos, eos, add_bos, encode_seconds and texts: [{ids, decoded,\n"
                "round_trip}] (with --decode: text instead of texts)");
  return {app, [k] { return run(*k); }};
}

}  // namespace cli
}  // namespace lwq
