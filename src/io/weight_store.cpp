// WeightStore: a model's weights in one safetensors file or a Hugging Face sharded directory, under model names.
#include <c10/util/Exception.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lwq/io/json.h"
#include "lwq/io/safetensors.h"

namespace lwq {
namespace io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Entries = std::vector<std::pair<std::shared_ptr<SafetensorsFile>, std::string>>;  // (file, name in file)

constexpr const char* kIndexName = "model.safetensors.index.json";

Entries all_tensors(const std::shared_ptr<SafetensorsFile>& file) {
  Entries out;
  for (const auto& name : file->names()) out.emplace_back(file, name);
  return out;
}

// The index's weight_map, each name checked against the shard it points to.
Entries read_index(const fs::path& index) {
  const std::string where = "WeightStore index " + index.string();
  std::ifstream in(index);
  TORCH_CHECK(in.good(), where, ": cannot open");
  json j;
  try {
    j = parse_json(where, in);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, where, ": not valid JSON: ", e.what());
  }
  TORCH_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), where,
              ": expected an object with a \"weight_map\" object of tensor name -> shard file");

  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  Entries out;
  const json& weight_map = j["weight_map"];
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    const std::string& name = it.key();
    TORCH_CHECK(it->is_string(), where, ": tensor '", name, "': the shard must be a file name, got ", it->dump());
    const std::string shard = it->get<std::string>();
    // Shards live next to the index; a path elsewhere is a broken or hostile index.
    TORCH_CHECK(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..", where,
                ": tensor '", name, "': shard \"", shard, "\" must be a file name in the index's directory");
    auto found = shards.find(shard);
    if (found == shards.end()) {
      const fs::path shard_path = index.parent_path() / shard;
      std::error_code ec;
      TORCH_CHECK(fs::is_regular_file(shard_path, ec), where, ": tensor '", name, "' is mapped to shard ", shard,
                  ", which does not exist (", shard_path.string(), ")");
      found = shards.emplace(shard, SafetensorsFile::open(shard_path.string())).first;
    }
    TORCH_CHECK(found->second->contains(name), where, ": tensor '", name, "' is mapped to shard ", shard,
                ", which does not hold it");
    out.emplace_back(found->second, name);
  }
  return out;
}

// A directory without an index: it must hold exactly one .safetensors file.
Entries read_single_file_dir(const fs::path& dir) {
  std::error_code ec;
  fs::directory_iterator entries(dir, ec);
  TORCH_CHECK(!ec, "WeightStore ", dir.string(), ": cannot list the directory: ", ec.message());
  std::vector<std::string> files;
  for (const auto& e : entries)
    if (e.is_regular_file(ec) && e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  std::string listed;
  for (const auto& f : files) listed += (listed.empty() ? "" : ", ") + f;
  TORCH_CHECK(files.size() == 1, "WeightStore ", dir.string(), ": a directory without ", kIndexName,
              " must hold exactly one .safetensors file, found ", files.size(), files.empty() ? "" : ": ", listed);
  return all_tensors(SafetensorsFile::open((dir / files[0]).string()));
}

std::string model_name(const NameMap& name_map, const std::string& file_name) {
  for (const auto& rule : name_map)
    if (file_name.compare(0, rule.first.size(), rule.first) == 0)
      return rule.second + file_name.substr(rule.first.size());
  return file_name;
}

}  // namespace

WeightStore::WeightStore(const std::string& path, NameMap name_map) : path_(path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  TORCH_CHECK(fs::exists(st), "WeightStore ", path, ": no such file or directory");
  Entries entries;
  if (fs::is_directory(st)) {
    const fs::path index = fs::path(path) / kIndexName;
    entries = fs::exists(index, ec) ? read_index(index) : read_single_file_dir(path);
  } else {
    entries = all_tensors(SafetensorsFile::open(path));
  }
  for (auto& e : entries) {
    const std::string name = model_name(name_map, e.second);
    const auto inserted = where_.emplace(name, e);
    const auto& other = inserted.first->second;
    TORCH_CHECK(inserted.second, "WeightStore ", path, ": tensors '", other.second, "' (", other.first->path(),
                ") and '", e.second, "' (", e.first->path(), ") both map to the model name '", name, "'");
  }
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

bool WeightStore::contains(const std::string& name) const { return where_.count(name) != 0; }

at::Tensor WeightStore::load(const std::string& name) const {
  const auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "WeightStore ", path_, " has no tensor '", name, "'");
  return it->second.first->load(it->second.second);
}

at::Tensor WeightStore::load_raw(const std::string& name) const {
  const auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "WeightStore ", path_, " has no tensor '", name, "'");
  return it->second.first->load_raw(it->second.second);
}

std::vector<int64_t> WeightStore::shape(const std::string& name) const {
  const auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "WeightStore ", path_, " has no tensor '", name, "'");
  return it->second.first->info(it->second.second).shape;
}

}  // namespace io
}  // namespace lwq
