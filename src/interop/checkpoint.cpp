// Export of quantized TorchScript archives to GPTQ directories and plain safetensors files, and import back into a
// runnable archive. Tensor conversions are in gptq.cpp; all file I/O goes through the io layer (safetensors
// reader/writer, atomic_write), the TorchScript side through model/surgery.h.
#include "lwq/interop/checkpoint.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include "lwq/io/json.h"
#include "lwq/io/module_file.h"
#include "lwq/io/output_path.h"
#include "lwq/model/surgery.h"
#include "qscheme.h"  // check_finite

#include <torch/csrc/jit/ir/constants.h>

namespace lwq {
namespace interop {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Metadata keys of the plain safetensors format.
constexpr const char* kPlainFormatKey = "lwq_format";
constexpr const char* kPlainFormatValue = "packed_weight_state";
constexpr const char* kPlainVersionKey = "lwq_state_version";
constexpr const char* kPlainLayersKey = "lwq_layers";
// quantize_config.json key for lwq dtypes that "bits" alone does not name (int4_fullrange); readers ignore it.
constexpr const char* kGptqDtypesKey = "lwq_dtypes";

std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : b.empty() ? a : a + "." + b; }

// Where a linear's tensors live in a checkpoint: the module's name for the usual "weight" attribute, else
// "<module>.<attribute>" (a module may call aten::linear on several of its tensors).
std::string layer_prefix(const std::string& module_name, const std::string& weight_attr) {
  return weight_attr == "weight" ? module_name : join(module_name, weight_attr);
}

torch::jit::Module load_archive(const std::string& path, const char* what) {
  TORCH_CHECK(fs::is_regular_file(path), what, ": model ", path, " is not a readable file");
  return io::load_module(path, std::string(what) + ": ");
}

// How an archive's graphs call one packed weight attribute.
enum class CallKind { Woq, WoqA8, W8a8 };

// One packed linear of a quantized archive, with what its call site adds to the packed weight.
struct PackedLayer {
  std::string module_name;
  std::string weight_attr;  // the emptied float weight's attribute
  std::string prefix;       // name in checkpoints
  PackedWeightPtr weight;
  CallKind call = CallKind::Woq;
  at::Tensor input_scale;  // fp32 [in]: AWQ/TEQ/SmoothQuant scales that were not folded; else undefined
  c10::optional<model::ActivationQuant> activation;  // W8A8 layers
};

// The call of each (owner type, packed attribute) in the graphs of `root`: lwq::woq_linear, woq_linear_a8 or
// w8a8_linear (with its activation dtype, a constant of the graph), found by following the op's weight input back
// to its prim::GetAttr (through the unchecked cast of an Optional attribute).
struct TypeCall {
  CallKind kind = CallKind::Woq;
  std::string act_dtype;
  bool woq_and_a8 = false;  // both woq_linear and woq_linear_a8, chosen at run time (lwq.QuantLinear's forward)
};
using TypeAttr = std::pair<const c10::ClassType*, std::string>;

std::map<TypeAttr, TypeCall> packed_calls(const torch::jit::Module& root, const std::string& path) {
  const c10::Symbol woq = c10::Symbol::fromQualString("lwq::woq_linear");
  const c10::Symbol woq_a8 = c10::Symbol::fromQualString("lwq::woq_linear_a8");
  const c10::Symbol w8a8 = c10::Symbol::fromQualString("lwq::w8a8_linear");
  std::map<TypeAttr, TypeCall> calls;
  std::set<const c10::ClassType*> seen_types;
  for (const auto& item : root.named_modules()) {
    if (!seen_types.insert(item.value.type().get()).second) continue;
    for (const auto& method : item.value.get_methods()) {
      std::vector<torch::jit::Block*> blocks{method.graph()->block()};  // if/loop bodies included
      while (!blocks.empty()) {
        torch::jit::Block* b = blocks.back();
        blocks.pop_back();
        for (torch::jit::Node* n : b->nodes()) {
          for (torch::jit::Block* sub : n->blocks()) blocks.push_back(sub);
          if (n->kind() != woq && n->kind() != woq_a8 && n->kind() != w8a8) continue;
          const torch::jit::Node* src = n->input(1)->node();
          while (src->kind() == c10::prim::unchecked_cast) src = src->input(0)->node();
          TORCH_CHECK(src->kind() == c10::prim::GetAttr, "export: module '", item.name, "' of ", path, " calls ",
                      n->kind().toQualString(), " on a packed weight that is not a module attribute; only archives "
                      "written by lwq quantize or lwq import can be exported");
          const auto owner = src->input(0)->type()->cast<c10::ClassType>();
          TORCH_CHECK(owner, "export: module '", item.name, "' of ", path, ": a packed weight read from a ",
                      src->input(0)->type()->repr_str());
          TypeCall call;
          call.kind = n->kind() == woq ? CallKind::Woq : n->kind() == woq_a8 ? CallKind::WoqA8 : CallKind::W8a8;
          if (call.kind == CallKind::W8a8) {
            const c10::optional<c10::IValue> dtype = torch::jit::toIValue(n->input(5));
            TORCH_CHECK(dtype && dtype->isString(), "export: module '", item.name, "' of ", path,
                        " calls lwq::w8a8_linear with an activation dtype that is not a constant");
            call.act_dtype = dtype->toStringRef();
          }
          const TypeAttr key{owner.get(), src->s(c10::attr::name)};
          const auto found = calls.emplace(key, call);
          TypeCall& known = found.first->second;
          if (found.second || (known.kind == call.kind && known.act_dtype == call.act_dtype)) continue;
          const bool both_woq = (known.kind == CallKind::Woq || known.kind == CallKind::WoqA8) &&
                                (call.kind == CallKind::Woq || call.kind == CallKind::WoqA8);
          TORCH_CHECK(both_woq, "export: module '", item.name, "' of ", path, " calls its packed weight '",
                      key.second, "' both as W8A8 and otherwise; the export cannot tell which call a layer makes");
          known.woq_and_a8 = true;
        }
      }
    }
  }
  return calls;
}

// The packed layers of `root`: every attribute typed PackedWeight or Optional[PackedWeight] that holds a value,
// with its input scale and, for W8A8 layers, its activation parameters.
std::vector<PackedLayer> packed_layers(const torch::jit::Module& root, const std::string& path) {
  const auto packed_type = c10::getCustomClassType<PackedWeightPtr>();
  const std::map<TypeAttr, TypeCall> calls = packed_calls(root, path);
  std::vector<PackedLayer> out;
  for (const auto& item : root.named_modules()) {
    for (const auto& attr : item.value.type()->getAttributes()) {
      const c10::TypePtr t = attr.getType();
      const auto opt = t->cast<c10::OptionalType>();
      if (t != packed_type && !(opt && opt->getElementType() == packed_type)) continue;
      const c10::IValue v = item.value.attr(attr.getName());
      if (v.isNone()) continue;
      const std::string& name = attr.getName();
      PackedLayer layer;
      layer.module_name = item.name;
      const std::string suffix = "_packed";
      if (name == "packed") {
        layer.weight_attr = "weight";
      } else if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        layer.weight_attr = name.substr(0, name.size() - suffix.size());
      } else {
        layer.weight_attr = name;
      }
      layer.prefix = layer_prefix(item.name, layer.weight_attr);
      layer.weight = v.toCustomClass<PackedWeight>();
      const auto call = calls.find({item.value.type().get(), name});
      if (call != calls.end()) layer.call = call->second.kind;
      if (call != calls.end() && call->second.woq_and_a8) {
        // The branch is taken on the instance's "int8_activations" flag (lwq.QuantLinear); anything else is unknown.
        TORCH_CHECK(item.value.hasattr("int8_activations") && item.value.attr("int8_activations").isBool(),
                    "export: module '", item.name, "' of ", path, " calls its packed weight '", name,
                    "' both with and without int8 activations, on a condition the export cannot read");
        layer.call = item.value.attr("int8_activations").toBool() ? CallKind::WoqA8 : CallKind::Woq;
      }
      const std::string input_scale = name + "_input_scale";
      if (item.value.hasattr(input_scale) && item.value.attr(input_scale).isTensor()) {
        layer.input_scale = item.value.attr(input_scale).toTensor().to(at::kFloat).contiguous();
      }
      if (layer.call == CallKind::W8a8) {
        model::ActivationQuant a;
        a.dtype = call->second.act_dtype;
        a.scale = item.value.attr(name + "_act_scale").toDouble();
        a.zero_point = item.value.attr(name + "_act_zero_point").toInt();
        layer.activation = a;
      }
      out.push_back(std::move(layer));
    }
  }
  return out;
}

// The output directory of a GPTQ export: missing (created when writing), or holding only the files of a previous
// export (they are replaced), so no stray shard or index is left next to the new weights. Checked before any work.
void check_gptq_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  TORCH_CHECK(fs::is_directory(dir, ec), "export: ", dir, " exists and is not a directory (the gptq format writes a "
              "directory)");
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    TORCH_CHECK(name == kGptqWeightsFile || name == kGptqConfigFile, "export: the directory ", dir, " holds '", name,
                "'; write to a new or empty directory (only a previous export's ", kGptqWeightsFile, " and ",
                kGptqConfigFile, " are replaced)");
  }
}

void create_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  TORCH_CHECK(!ec, "export: cannot create the directory ", dir, ": ", ec.message());
}

void write_text(const std::string& path, const std::string& text) {
  io::atomic_write(path, [&](const std::string& tmp) {
    std::ofstream out(tmp);
    out << text << "\n";
    out.close();
    TORCH_CHECK(out, "cannot write ", tmp);
  });
}

// The other tensors of the archive (parameters and buffers) under their own names; the emptied float weights of
// packed layers are left out.
int64_t add_other_tensors(const torch::jit::Module& root, const std::vector<PackedLayer>& layers,
                          const std::string& path, std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::set<std::string> emptied;
  for (const auto& l : layers) emptied.insert(join(l.module_name, l.weight_attr));
  int64_t count = 0;
  for (const auto& slot : model::parameter_slots(root)) {
    if (emptied.count(slot.name)) continue;
    const at::Tensor v = slot.value();
    TORCH_CHECK(!v.is_meta(), "export: parameter '", slot.name, "' of ", path,
                " is empty (meta); export a model whose parameters all hold values");
    tensors.emplace_back(slot.name, v.detach().contiguous());
    ++count;
  }
  return count;
}

ExportResult export_gptq(const ExportConfig& config, const torch::jit::Module& module,
                         const std::vector<PackedLayer>& layers) {
  ExportResult result;
  TORCH_CHECK(!layers.empty(), "export: the model ", config.model_path, " has no quantized layers");
  check_gptq_dir(config.out_path);
  // quantize_config.json has one bits and one group_size for the whole model.
  const PackedLayer& first = layers.front();
  GptqScheme& s = result.scheme;
  s.bits = first.weight->info().bits;
  s.group_size = first.weight->group_size();
  s.sym = true;
  s.desc_act = false;
  s.zero_format = config.zero_format;
  json dtypes = json::object();
  for (const auto& l : layers) {
    const PackedWeight& w = *l.weight;
    const std::string what = "layer '" + l.prefix + "'";
    TORCH_CHECK(!l.activation, "export: ", what, " of ", config.model_path, " is static W8A8 (lwq::w8a8_linear, "
                "int8 activations with a calibrated scale and zero point), which a GPTQ checkpoint cannot carry; "
                "--format safetensors holds it");
    TORCH_CHECK(!l.input_scale.defined(), "export: ", what, " of ", config.model_path, " multiplies its input by a "
                "per-channel scale (AWQ/TEQ/SmoothQuant scales that could not be folded into the graph), which a GPTQ "
                "checkpoint cannot carry: its weights alone would compute something else; --format safetensors "
                "holds it");
    if (l.call == CallKind::WoqA8) ++result.int8_activation_layers;
    TORCH_CHECK(w.info().is_int(), "export: ", what, ": dtype ", w.dtype(),
                " has no GPTQ form (GPTQ stores integer codes: int8, int4, int4_fullrange, int3, int2)");
    TORCH_CHECK(w.info().bits == s.bits && w.group_size() == s.group_size, "export: layers '", first.prefix, "' (",
                first.weight->dtype(), ", group size ", s.group_size, ") and '", l.prefix, "' (", w.dtype(),
                ", group size ", w.group_size(), ") differ; quantize_config.json holds one bits and one group_size "
                "for the whole model");
    s.sym = s.sym && w.sym();
    s.desc_act = s.desc_act || w.has_g_idx();
    if (w.dtype() != "int" + std::to_string(s.bits)) dtypes[l.prefix] = w.dtype();
  }

  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& l : layers) {
    const GptqTensors t =
        to_gptq(*l.weight, config.zero_format, config.round_scales, "layer '" + l.prefix + "'", &result.rounding);
    tensors.emplace_back(join(l.prefix, "qweight"), t.qweight);
    tensors.emplace_back(join(l.prefix, "qzeros"), t.qzeros);
    tensors.emplace_back(join(l.prefix, "scales"), t.scales);
    tensors.emplace_back(join(l.prefix, "g_idx"), t.g_idx);
    ++result.quantized_layers;
  }
  result.other_tensors = add_other_tensors(module, layers, config.model_path, tensors);

  json cfg = {{"bits", s.bits},
              {"group_size", s.group_size},
              {"desc_act", s.desc_act},
              {"sym", s.sym},
              {"static_groups", false},
              {"true_sequential", true},
              {"quant_method", "gptq"},
              {"checkpoint_format", gptq_zero_format_name(config.zero_format)},
              {"model_file_base_name", "model"}};
  if (!dtypes.empty()) cfg[kGptqDtypesKey] = dtypes;

  create_dir(config.out_path);
  const std::string weights = (fs::path(config.out_path) / kGptqWeightsFile).string();
  const std::string cfg_path = (fs::path(config.out_path) / kGptqConfigFile).string();
  // Two files cannot be replaced at once: the config goes first and comes back last, so an export stopped in between
  // (a full disk, a kill) leaves a directory that import refuses (no quantize_config.json), never new weights read
  // with an earlier export's bits and group size.
  std::error_code ec;
  fs::remove(cfg_path, ec);
  TORCH_CHECK(!ec, "export: cannot replace ", cfg_path, ": ", ec.message());
  io::write_safetensors(weights, tensors, {{"format", "pt"}});
  write_text(cfg_path, cfg.dump(2));
  result.files = {weights, cfg_path};
  return result;
}

ExportResult export_plain(const ExportConfig& config, const torch::jit::Module& module,
                          const std::vector<PackedLayer>& layers) {
  ExportResult result;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json meta = json::object();
  for (const auto& l : layers) {
    const PackedWeight& w = *l.weight;
    const PackedWeight::State st = w.state();
    meta[l.prefix] = {{"module", l.module_name},        {"weight_attr", l.weight_attr},
                      {"dtype", w.dtype()},              {"out_features", w.out_features()},
                      {"in_features", w.in_features()},  {"group_size", w.group_size()},
                      {"sym", w.sym()}};
    // What the call adds to the weight; absent for plain weight-only layers, so their files read as before.
    if (l.call == CallKind::WoqA8) meta[l.prefix]["compute"] = "int8";
    if (l.activation) {
      meta[l.prefix]["activation"] = {
          {"dtype", l.activation->dtype}, {"scale", l.activation->scale}, {"zero_point", l.activation->zero_point}};
    }
    if (l.input_scale.defined()) {
      meta[l.prefix]["input_scale"] = true;
      tensors.emplace_back(join(l.prefix, "input_scale"), l.input_scale);
    }
    tensors.emplace_back(join(l.prefix, "qweight"), std::get<6>(st));
    tensors.emplace_back(join(l.prefix, "scales"), std::get<7>(st));
    if (std::get<8>(st)) tensors.emplace_back(join(l.prefix, "zeros"), *std::get<8>(st));
    if (std::get<9>(st)) tensors.emplace_back(join(l.prefix, "g_idx"), *std::get<9>(st));
    ++result.quantized_layers;
  }
  result.other_tensors = add_other_tensors(module, layers, config.model_path, tensors);
  io::write_safetensors(config.out_path, tensors,
                        {{kPlainFormatKey, kPlainFormatValue},
                         {kPlainVersionKey, std::to_string(PackedWeight::kStateVersion)},
                         {kPlainLayersKey, meta.dump()}});
  result.files = {config.out_path};
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Import

std::string mapped(const io::NameMap& name_map, const std::string& name) {
  for (const auto& rule : name_map)
    if (name.compare(0, rule.first.size(), rule.first) == 0) return rule.second + name.substr(rule.first.size());
  return name;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "import: cannot open ", path);
  try {
    return io::parse_json("import: " + path, in);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "import: ", path, " is not valid JSON: ", e.what());
  }
}

template <typename T>
T json_field(const json& j, const char* key, const T& fallback, bool required, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    TORCH_CHECK(!required, where, ": missing \"", key, "\"");
    return fallback;
  }
  if constexpr (std::is_integral<T>::value && !std::is_same<T, bool>::value) {
    return io::json_integer<T>(*it, where + ": \"" + key + "\"");
  }
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    TORCH_CHECK(false, where, ": \"", key, "\" has the wrong type: ", it->dump());
  }
}

}  // namespace

GptqCheckpointConfig read_gptq_config(const std::string& checkpoint_path) {
  const fs::path dir = fs::is_directory(checkpoint_path) ? fs::path(checkpoint_path) : fs::path(checkpoint_path).parent_path();
  const std::string path = (dir / kGptqConfigFile).string();
  TORCH_CHECK(fs::is_regular_file(path), "import: the GPTQ checkpoint ", checkpoint_path, " has no ", kGptqConfigFile,
              " (looked for ", path, ")");
  const json j = read_json_file(path);
  TORCH_CHECK(j.is_object(), "import: ", path, " must hold a JSON object");
  const std::string method = json_field<std::string>(j, "quant_method", "gptq", false, path);
  TORCH_CHECK(method == "gptq", "import: ", path, " has quant_method \"", method, "\", expected \"gptq\"");
  GptqCheckpointConfig c;
  GptqScheme& s = c.scheme;
  s.bits = json_field<int>(j, "bits", 4, true, path);
  s.group_size = json_field<int64_t>(j, "group_size", -1, true, path);
  s.desc_act = json_field<bool>(j, "desc_act", false, false, path);
  s.sym = json_field<bool>(j, "sym", true, false, path);
  const std::string format = json_field<std::string>(j, "checkpoint_format", "gptq", false, path);
  try {
    s.zero_format = parse_gptq_zero_format(format);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "import: ", path, ": ", e.what_without_backtrace());
  }
  TORCH_CHECK(s.bits == 2 || s.bits == 3 || s.bits == 4 || s.bits == 8, "import: ", path,
              ": bits must be 2, 3, 4 or 8, got ", s.bits);
  TORCH_CHECK(s.group_size == -1 || s.group_size > 0, "import: ", path, ": group_size must be -1 or positive, got ",
              s.group_size);
  if (j.contains(kGptqDtypesKey)) {
    c.dtypes = json_field<std::map<std::string, std::string>>(j, kGptqDtypesKey, {}, true, path);
  }
  return c;
}

namespace {

// Plain-format layer metadata, by prefix.
struct PlainLayerInfo {
  std::string dtype;
  int64_t out_features = 0, in_features = 0, group_size = -1;
  bool sym = true;
  bool int8_activations = false;  // "compute": "int8"
  bool input_scale = false;       // the file holds <prefix>.input_scale
  c10::optional<model::ActivationQuant> activation;  // W8A8
};

model::ActivationQuant read_activation(const json& j, const std::string& where) {
  TORCH_CHECK(j.is_object(), where, ": \"activation\" must be a JSON object, got ", j.dump());
  model::ActivationQuant a;
  a.dtype = json_field<std::string>(j, "dtype", "", true, where + ": \"activation\"");
  a.scale = json_field<double>(j, "scale", 0.0, true, where + ": \"activation\"");
  a.zero_point = json_field<int64_t>(j, "zero_point", 0, true, where + ": \"activation\"");
  const int64_t qmin = a.dtype == "int8" ? -128 : 0, qmax = a.dtype == "int8" ? 127 : 255;
  TORCH_CHECK(a.dtype == "uint8" || a.dtype == "int8", where, ": activation dtype must be \"uint8\" or \"int8\", got \"",
              a.dtype, "\"");
  const float scale_f = static_cast<float>(a.scale);
  TORCH_CHECK(std::isfinite(scale_f) && scale_f > 0, where, ": activation scale must be a positive finite float, got ",
              a.scale);
  TORCH_CHECK(a.zero_point >= qmin && a.zero_point <= qmax, where, ": activation zero point must be in [", qmin, ", ",
              qmax, "] for ", a.dtype, ", got ", a.zero_point);
  return a;
}

std::map<std::string, PlainLayerInfo> read_plain_metadata(const std::string& path) {
  const auto file = io::SafetensorsFile::open(path);
  const auto& meta = file->metadata();
  const auto format = meta.find(kPlainFormatKey);
  TORCH_CHECK(format != meta.end() && format->second == kPlainFormatValue, "import: ", path,
              " is not an lwq safetensors export (its metadata has no \"", kPlainFormatKey, "\": \"", kPlainFormatValue,
              "\")");
  const auto version = meta.find(kPlainVersionKey);
  TORCH_CHECK(version != meta.end() && version->second == std::to_string(PackedWeight::kStateVersion), "import: ", path,
              " holds packed weight state version ", version == meta.end() ? "(none)" : version->second,
              "; this build reads version ", PackedWeight::kStateVersion);
  const auto layers = meta.find(kPlainLayersKey);
  TORCH_CHECK(layers != meta.end(), "import: ", path, " has no \"", kPlainLayersKey, "\" metadata");
  json j;
  try {
    j = io::parse_json("import: " + path + ": \"" + kPlainLayersKey + "\"", layers->second);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "import: ", path, ": \"", kPlainLayersKey, "\" is not valid JSON: ", e.what());
  }
  TORCH_CHECK(j.is_object(), "import: ", path, ": \"", kPlainLayersKey, "\" must be a JSON object");
  std::map<std::string, PlainLayerInfo> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string where = "import: " + path + ": layer '" + it.key() + "'";
    PlainLayerInfo info;
    info.dtype = json_field<std::string>(*it, "dtype", "", true, where);
    info.out_features = json_field<int64_t>(*it, "out_features", 0, true, where);
    info.in_features = json_field<int64_t>(*it, "in_features", 0, true, where);
    info.group_size = json_field<int64_t>(*it, "group_size", -1, true, where);
    info.sym = json_field<bool>(*it, "sym", true, true, where);
    const std::string compute = json_field<std::string>(*it, "compute", "fp32", false, where);
    TORCH_CHECK(compute == "fp32" || compute == "int8", where, ": \"compute\" must be \"fp32\" or \"int8\", got \"",
                compute, "\"");
    info.int8_activations = compute == "int8";
    info.input_scale = json_field<bool>(*it, "input_scale", false, false, where);
    if (it->contains("activation")) info.activation = read_activation((*it)["activation"], where);
    TORCH_CHECK(!(info.activation && info.int8_activations), where, ": a W8A8 layer (\"activation\") has no \"compute\"");
    out.emplace(it.key(), info);
  }
  return out;
}

}  // namespace

CheckpointFormat parse_checkpoint_format(const std::string& name) {
  if (name == "gptq") return CheckpointFormat::Gptq;
  if (name == "safetensors") return CheckpointFormat::Safetensors;
  TORCH_CHECK(false, "unknown checkpoint format '", name, "': expected gptq or safetensors");
}

ExportResult export_checkpoint(const ExportConfig& config) {
  const at::NoGradGuard no_grad;
  const std::vector<io::NamedInput> inputs = {{"model", config.model_path}};
  if (config.format == CheckpointFormat::Gptq) {
    io::check_output_dir("export", "directory", config.out_path, {kGptqWeightsFile, kGptqConfigFile}, inputs);
  } else {
    io::check_output_file("export", "file", config.out_path, inputs);
  }
  const torch::jit::Module module = load_archive(config.model_path, "export");
  const std::vector<PackedLayer> layers = packed_layers(module, config.model_path);
  return config.format == CheckpointFormat::Gptq ? export_gptq(config, module, layers)
                                                 : export_plain(config, module, layers);
}

ImportResult import_checkpoint(const ImportConfig& config) {
  const at::NoGradGuard no_grad;
  TORCH_CHECK(fs::exists(config.checkpoint_path), "import: checkpoint ", config.checkpoint_path,
              ": no such file or directory");
  io::check_output_file("import", "--out", config.out_path,
                        {{"--model", config.model_path}, {"checkpoint", config.checkpoint_path}});
  torch::jit::Module module = load_archive(config.model_path, "import");
  TORCH_CHECK(!model::is_quantized(module), "import: the model ", config.model_path,
              " already holds packed weights; give the float model");
  const io::WeightStore store(config.checkpoint_path, config.name_map);
  const std::string& ckpt = config.checkpoint_path;

  const std::vector<model::LinearLayer> layers = model::find_linear_layers(module);
  // Every quantized layer of the checkpoint must be a linear layer of the model that can hold a packed weight.
  auto check_all_layers_known = [&](const std::set<std::string>& prefixes) {
    std::set<std::string> known;
    for (const auto& l : layers) known.insert(layer_prefix(l.name, l.weight_attr));
    std::vector<std::string> unknown;
    for (const auto& p : prefixes)
      if (!known.count(p)) unknown.push_back(p);
    if (unknown.empty()) return;
    std::string listed;
    for (size_t i = 0; i < unknown.size() && i < 4; ++i) listed += (i ? ", '" : "'") + unknown[i] + "'";
    TORCH_CHECK(false, "import: ", unknown.size(), " quantized layer(s) of the checkpoint ", ckpt,
                " are not linear layers of the model ", config.model_path, ": ", listed, unknown.size() > 4 ? ", ..." : "",
                " (names differ? see --rename)");
  };
  auto check_quantizable = [&](const model::LinearLayer& layer, const std::string& prefix) {
    TORCH_CHECK(layer.quantizable, "import: layer '", prefix, "' of ", config.model_path,
                " cannot hold a packed weight: ", layer.why_not);
  };

  ImportResult result;
  std::set<std::string> used;
  std::map<std::string, model::PackedLinear> packed;  // by layer name
  std::set<std::string> emptied;                  // float weights replaced by packed ones
  auto take = [&](const std::string& name) {
    used.insert(name);
    return store.load_raw(name);
  };
  auto take_optional = [&](const std::string& name) { return store.contains(name) ? take(name) : at::Tensor(); };
  auto add_packed = [&](const model::LinearLayer& layer, const std::string& prefix, const model::PackedLinear& p) {
    const PackedWeightPtr& w = p.weight;
    TORCH_CHECK(w->out_features() == layer.shape[0] && w->in_features() == layer.shape[1], "import: layer '", prefix,
                "' is [", w->out_features(), ", ", w->in_features(), "] in the checkpoint ", ckpt, " but its weight is ",
                c10::IntArrayRef(layer.shape), " in the model ", config.model_path);
    packed[layer.name] = p;
    emptied.insert(layer.weight_name());
    ++result.quantized_layers;
  };

  if (config.format == CheckpointFormat::Gptq) {
    const GptqCheckpointConfig gc = read_gptq_config(ckpt);
    // Quantized layers: every "<prefix>.qweight" of the checkpoint, taken in the model's layer order.
    const std::string suffix = ".qweight";
    std::set<std::string> prefixes;
    for (const std::string& name : store.names()) {
      if (name == "qweight") prefixes.insert("");
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        prefixes.insert(name.substr(0, name.size() - suffix.size()));
    }
    check_all_layers_known(prefixes);
    for (const auto& layer : layers) {
      const std::string prefix = layer_prefix(layer.name, layer.weight_attr);
      if (!prefixes.count(prefix)) continue;
      check_quantizable(layer, prefix);
      GptqTensors t;
      t.qweight = take(join(prefix, "qweight"));
      for (const char* part : {"qzeros", "scales"}) {
        TORCH_CHECK(store.contains(join(prefix, part)), "import: the checkpoint ", ckpt, " has '",
                    join(prefix, "qweight"), "' but no '", join(prefix, part), "'");
      }
      t.qzeros = take(join(prefix, "qzeros"));
      t.scales = take(join(prefix, "scales"));
      t.g_idx = take_optional(join(prefix, "g_idx"));
      const auto dtype = gc.dtypes.find(prefix);
      model::PackedLinear p;
      p.weight = from_gptq(t, gc.scheme, dtype == gc.dtypes.end() ? "" : dtype->second,
                           "import: " + ckpt + ": layer '" + prefix + "'");
      add_packed(layer, prefix, p);
    }
  } else {
    std::map<std::string, PlainLayerInfo> infos;
    for (const auto& entry : read_plain_metadata(ckpt)) infos.emplace(mapped(config.name_map, entry.first), entry.second);
    std::set<std::string> prefixes;
    for (const auto& entry : infos) prefixes.insert(entry.first);
    check_all_layers_known(prefixes);
    for (const auto& layer : layers) {
      const std::string prefix = layer_prefix(layer.name, layer.weight_attr);
      const auto found = infos.find(prefix);
      if (found == infos.end()) continue;
      const PlainLayerInfo& info = found->second;
      check_quantizable(layer, prefix);
      TORCH_CHECK(store.contains(join(prefix, "qweight")) && store.contains(join(prefix, "scales")), "import: ", ckpt,
                  ": layer '", prefix, "' is listed in the metadata but its qweight or scales tensor is missing");
      const at::Tensor zeros = take_optional(join(prefix, "zeros")), g_idx = take_optional(join(prefix, "g_idx"));
      const PackedWeight::State state(
          PackedWeight::kStateVersion, info.dtype, info.out_features, info.in_features, info.group_size, info.sym,
          take(join(prefix, "qweight")), take(join(prefix, "scales")),
          zeros.defined() ? c10::optional<at::Tensor>(zeros) : c10::nullopt,
          g_idx.defined() ? c10::optional<at::Tensor>(g_idx) : c10::nullopt);
      model::PackedLinear p;
      try {
        p.weight = PackedWeight::from_state(state);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "import: ", ckpt, ": layer '", prefix, "': ", e.what_without_backtrace());
      }
      const std::string scale_name = join(prefix, "input_scale");
      if (info.input_scale) {
        TORCH_CHECK(store.contains(scale_name), "import: ", ckpt, ": layer '", prefix,
                    "' has an input scale in the metadata but no tensor '", scale_name, "'");
        p.input_scale = take(scale_name).to(at::kFloat).contiguous();
        TORCH_CHECK(p.input_scale.dim() == 1 && p.input_scale.size(0) == info.in_features, "import: ", ckpt,
                    ": tensor '", scale_name, "' has shape ", p.input_scale.sizes(), ", expected [", info.in_features,
                    "]");
        check_finite(p.input_scale, "import: " + ckpt + ": tensor '" + scale_name + "'");
      } else {
        TORCH_CHECK(!store.contains(scale_name), "import: ", ckpt, ": the file has '", scale_name, "' but layer '",
                    prefix, "' has no \"input_scale\" in the metadata (an edited file?)");
      }
      TORCH_CHECK(!info.activation || (info.dtype == "int8" && info.sym && info.group_size == -1), "import: ", ckpt,
                  ": layer '", prefix, "' is W8A8 (\"activation\") but its weight is ", info.dtype,
                  info.sym ? " sym" : " asym", " group size ", info.group_size,
                  "; W8A8 weights are int8, symmetric, one group per output channel");
      p.activation = info.activation;
      p.int8_activations = info.int8_activations;
      add_packed(layer, prefix, p);
    }
  }
  TORCH_CHECK(!packed.empty(), "import: the checkpoint ", ckpt, " has no quantized layers");

  // Every other parameter: from the checkpoint when it has it, else the model archive must hold its value.
  for (auto& slot : model::parameter_slots(module)) {
    if (emptied.count(slot.name)) continue;
    const at::Tensor current = slot.value();
    if (store.contains(slot.name)) {
      const std::vector<int64_t> stored = store.shape(slot.name);
      TORCH_CHECK(stored == current.sizes().vec(), "import: parameter '", slot.name, "' has shape ", current.sizes(),
                  " in the model ", config.model_path, " but ", c10::IntArrayRef(stored), " in the checkpoint ", ckpt);
      slot.set(take(slot.name).to(current.scalar_type()).set_requires_grad(current.requires_grad()));
      ++result.params_from_checkpoint;
    } else {
      TORCH_CHECK(!model::is_empty_in_archive(current), "import: parameter '", slot.name, "' is empty (",
                  current.is_meta() ? "meta" : "0 elements", ") in the model ", config.model_path,
                  " and the checkpoint ", ckpt, " has no tensor of that name");
      ++result.params_from_model;
    }
  }
  for (const auto& name : store.names())
    if (!used.count(name)) result.unused.push_back(name);

  try {
    model::install_packed_linears(module, layers, packed);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "import: ", ckpt, ": ", e.what_without_backtrace());
  }
  io::atomic_write(config.out_path, [&](const std::string& tmp) { io::save_module(module, tmp); });
  return result;
}

}  // namespace interop
}  // namespace lwq
