// `lwq inspect`: reads an archive (float, meta or quantized) and lists what it holds.
#include "lwq/model/inspect.h"

#include <algorithm>
#include <iomanip>
#include <map>

#include "lwq/io/module_file.h"
#include "lwq/model/surgery.h"

namespace lwq {
namespace model {

namespace {

// The PackedWeight held by `m` in `attr`, or null (attribute absent or None).
PackedWeightPtr packed_of(const torch::jit::Module& m, const std::string& attr) {
  if (!m.hasattr(attr)) return {};
  const c10::IValue v = m.attr(attr);
  if (v.isNone() || !v.isCustomClass()) return {};
  return v.toCustomClass<PackedWeight>();
}

}  // namespace

ModelSummary inspect_model(const std::string& path) {
  const torch::jit::Module module = io::load_module(path, "inspect: ");
  ModelSummary s;
  s.path = path;
  const auto packed_type = c10::getCustomClassType<PackedWeightPtr>();
  std::map<std::string, size_t> index;  // layer name -> position in s.linears
  for (const auto& item : module.named_modules()) {
    s.modules.emplace_back(item.name, item.value.type()->name() ? item.value.type()->name()->qualifiedName() : "?");
    // Packed layers: any attribute typed PackedWeight or Optional[PackedWeight] that holds a value.
    for (const auto& attr : item.value.type()->getAttributes()) {
      const c10::TypePtr t = attr.getType();
      const auto opt = t->cast<c10::OptionalType>();
      if (t != packed_type && !(opt && opt->getElementType() == packed_type)) continue;
      const PackedWeightPtr w = packed_of(item.value, attr.getName());
      if (!w) continue;
      LinearSummary l;
      l.name = item.name;
      l.shape = {w->out_features(), w->in_features()};
      l.quantized = true;
      l.dtype = w->dtype();
      l.group_size = w->group_size();
      l.sym = w->sym();
      l.act_order = w->has_g_idx();
      l.bytes = w->nbytes();
      s.packed_bytes += l.bytes;
      index[l.name] = s.linears.size();
      s.linears.push_back(l);
    }
  }
  for (const auto& layer : model::find_linear_layers(module)) {
    if (index.count(layer.name)) continue;  // a quantized instance of a type with float ones
    const at::Tensor w = layer.module.attr(layer.weight_attr).toTensor();
    LinearSummary l;
    l.name = layer.name;
    l.shape = layer.shape;
    l.dtype = w.is_meta() ? "meta" : std::string(c10::toString(w.scalar_type()));
    l.bytes = w.is_meta() ? 0 : w.numel() * static_cast<int64_t>(w.element_size());
    s.linears.push_back(l);
  }
  // Module-tree order for the listing.
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < s.modules.size(); ++i) order.emplace(s.modules[i].first, i);
  std::stable_sort(s.linears.begin(), s.linears.end(), [&](const LinearSummary& a, const LinearSummary& b) {
    return order[a.name] < order[b.name];
  });
  for (const auto& slot : model::parameter_slots(module)) {
    const at::Tensor t = slot.value();
    if (t.is_meta()) {
      ++s.meta_params;
    } else {
      s.float_param_bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
  }
  return s;
}

void print_summary(std::ostream& out, const ModelSummary& s) {
  out << s.path << ": " << s.modules.size() << " modules, " << s.linears.size() << " linear layers\n";
  out << "modules:\n";
  for (const auto& m : s.modules) out << "  " << (m.first.empty() ? "<root>" : m.first) << "  " << m.second << "\n";
  out << "linear layers:\n";
  for (const auto& l : s.linears) {
    std::string shape = "[";
    for (size_t i = 0; i < l.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(l.shape[i]);
    out << "  " << std::left << std::setw(28) << (l.name.empty() ? "<root>" : l.name) << " " << std::setw(12)
        << shape + "]" << std::right << " ";
    if (l.quantized) {
      out << "quantized " << l.dtype << " group " << l.group_size << (l.sym ? " sym" : " asym")
          << (l.act_order ? " act-order" : "") << ", packed " << l.bytes << " bytes";
    } else {
      out << "float " << l.dtype << ", " << l.bytes << " bytes";
    }
    out << "\n";
  }
  out << "totals: packed " << s.packed_bytes << " bytes, float parameters " << s.float_param_bytes << " bytes";
  if (s.meta_params) out << ", " << s.meta_params << " empty (meta) parameters";
  out << "\n";
}

}  // namespace model
}  // namespace lwq
