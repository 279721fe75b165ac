// The model family and tokenizer beside an archive (model_info.h).
#include "lwq/text/model_info.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <vector>

#include "lwq/io/json.h"

namespace lwq {
namespace text {

namespace {

namespace fs = std::filesystem;

// The directories to search: the archive's, then the weights' (a shard directory, or a file's directory).
std::vector<fs::path> search_dirs(const std::string& model_path, const std::string& weights_path) {
  std::vector<fs::path> dirs;
  auto add = [&](fs::path d) {
    if (d.empty()) d = ".";
    std::error_code ec;
    for (const fs::path& seen : dirs) {
      if (fs::equivalent(seen, d, ec)) return;
    }
    if (fs::is_directory(d, ec)) dirs.push_back(d);
  };
  add(fs::path(model_path).parent_path());
  if (!weights_path.empty()) {
    std::error_code ec;
    add(fs::is_directory(weights_path, ec) ? fs::path(weights_path) : fs::path(weights_path).parent_path());
  }
  return dirs;
}

// model_type, else architecture, of a config.json; "" when it has neither (or is not a JSON object).
std::string family_of(const fs::path& config) {
  std::ifstream in(config);
  nlohmann::json j;
  try {
    j = io::parse_json(config.string(), in);
  } catch (const std::exception&) {
    return "";
  }
  if (!j.is_object()) return "";
  for (const char* key : {"model_type", "architecture"}) {
    if (j.contains(key) && j[key].is_string()) return j[key].get<std::string>();
  }
  return "";
}

// The files load_tokenizer reads in a directory.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer.bin"};

}  // namespace

ModelInfo model_info(const std::string& model_path, const std::string& weights_path,
                     const std::string& tokenizer_path) {
  ModelInfo info;
  const std::vector<fs::path> dirs = search_dirs(model_path, weights_path);
  for (const fs::path& d : dirs) info.looked_in += (info.looked_in.empty() ? "" : ", ") + d.string();
  std::error_code ec;
  for (const fs::path& d : dirs) {
    const fs::path config = d / "config.json";
    if (!fs::is_regular_file(config, ec)) continue;
    info.config_path = config.string();
    info.family = family_of(config);
    break;
  }
  auto read = [&](const std::string& path) {
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(path);
    info.tokenizer_path = path;
    info.tokenizer = tok->describe();
    info.special = tok->special();
  };
  if (!tokenizer_path.empty()) {
    read(tokenizer_path);
    return info;
  }
  for (const fs::path& d : dirs) {
    bool present = false;
    for (const char* name : kTokenizerFiles) present = present || fs::is_regular_file(d / name, ec);
    if (!present) continue;
    try {
      read(d.string());
    } catch (const c10::Error& e) {
      info.tokenizer_path = d.string();
      info.tokenizer_error = e.what_without_backtrace();
    }
    break;
  }
  return info;
}

}  // namespace text
}  // namespace lwq
