// The --config file of `lwq quantize` and the per-layer plan it gives.
#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <regex>
#include <set>

#include "lwq/io/json.h"
#include "lwq/pipeline/quantize.h"

namespace lwq {
namespace pipeline {

using nlohmann::json;

namespace {

template <typename T>
T get(const json& j, const std::string& key, const std::string& where) {
  if constexpr (std::is_integral<T>::value && !std::is_same<T, bool>::value) {
    return io::json_integer<T>(j.at(key), where + ": '" + key + "'");
  }
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    TORCH_CHECK(false, where, ": '", key, "' has the wrong type (", j.at(key).dump(), ")");
  }
}

void check_keys(const json& j, const std::set<std::string>& known, const std::string& where) {
  TORCH_CHECK(j.is_object(), where, " must be a JSON object, got ", j.dump());
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    TORCH_CHECK(known.count(it.key()), where, ": unknown key '", it.key(), "' (known: ", list, ")");
  }
}

void check_regex(const std::string& pattern, const std::string& where) {
  try {
    std::regex re(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    TORCH_CHECK(false, where, ": '", pattern, "' is not a valid regular expression: ", e.what());
  }
}

}  // namespace

void load_config_file(const std::string& path, QuantizeConfig& config) {
  std::ifstream in(path);
  TORCH_CHECK(in, "config ", path, ": cannot open the file");
  json j;
  try {
    j = io::parse_json("config " + path, in);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "config ", path, ": not valid JSON: ", e.what());
  }
  const std::string where = "config " + path;
  check_keys(j, {"algorithm", "dtype", "group_size", "sym", "include", "exclude", "layers"}, where);
  if (j.contains("algorithm")) config.algorithm = get<std::string>(j, "algorithm", where);
  if (j.contains("dtype")) config.spec.dtype = get<std::string>(j, "dtype", where);
  if (j.contains("group_size")) config.spec.group_size = get<int64_t>(j, "group_size", where);
  if (j.contains("sym")) config.spec.sym = get<bool>(j, "sym", where);
  for (const char* key : {"include", "exclude"}) {
    if (!j.contains(key)) continue;
    auto patterns = get<std::vector<std::string>>(j, key, where);
    for (const auto& p : patterns) check_regex(p, where + " " + key);
    (std::string(key) == "include" ? config.include : config.exclude) = patterns;
  }
  if (j.contains("layers")) {
    TORCH_CHECK(j["layers"].is_array(), where, ": 'layers' must be an array of rules");
    config.rules.clear();
    for (size_t i = 0; i < j["layers"].size(); ++i) {
      const json& r = j["layers"][i];
      const std::string rw = where + " layers[" + std::to_string(i) + "]";
      check_keys(r, {"match", "dtype", "group_size", "sym", "algorithm"}, rw);
      TORCH_CHECK(r.contains("match"), rw, ": a rule needs 'match' (a regex searched in layer names)");
      LayerRule rule;
      rule.match = get<std::string>(r, "match", rw);
      check_regex(rule.match, rw);
      if (r.contains("dtype")) rule.dtype = get<std::string>(r, "dtype", rw);
      if (r.contains("group_size")) rule.group_size = get<int64_t>(r, "group_size", rw);
      if (r.contains("sym")) rule.sym = get<bool>(r, "sym", rw);
      if (r.contains("algorithm")) rule.algorithm = get<std::string>(r, "algorithm", rw);
      config.rules.push_back(rule);
    }
  }
}

LayerPlan plan_for(const QuantizeConfig& config, const std::string& layer) {
  LayerPlan plan{config.spec, config.algorithm};
  for (const auto& rule : config.rules) {
    if (!std::regex_search(layer, std::regex(rule.match, std::regex::ECMAScript))) continue;
    if (rule.dtype) plan.spec.dtype = *rule.dtype;
    if (rule.group_size) plan.spec.group_size = *rule.group_size;
    if (rule.sym) plan.spec.sym = *rule.sym;
    if (rule.algorithm) plan.algorithm = *rule.algorithm;
    break;
  }
  return plan;
}

}  // namespace pipeline
}  // namespace lwq
