// Finding linear call sites in TorchScript graphs and rewriting them to lwq::woq_linear. A call site lives in the
// graph of a class type, which all instances of that type share; decisions are made per instance (per layer) and
// then folded back onto the shared graph (see install_packed_weights).
#include "lwq/model/surgery.h"

#include <c10/util/StringUtil.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <deque>
#include <set>
#include <sstream>
#include <unordered_map>

#include "graph_walk.h"

namespace lwq {
namespace model {

namespace jit = torch::jit;

namespace {

// aten::linear whose weight is GetAttr(attr) on a module reached from the graph's self by a GetAttr chain.
struct CallSite {
  std::shared_ptr<jit::Graph> graph;
  jit::Node* linear = nullptr;
  std::vector<std::string> path;  // submodule attributes from self to the weight's owner (empty: self)
  std::string weight_attr;
  c10::ClassTypePtr owner_type;
};

// A module type together with one of its tensor attributes: the unit at which a weight's uses are checked.
using TypeAttr = std::pair<const c10::ClassType*, std::string>;

// Every graph of every distinct module type of the tree, with a representative instance.
struct TypeGraphs {
  torch::jit::Module representative;
  std::vector<std::shared_ptr<jit::Graph>> graphs;
};

std::vector<std::pair<const c10::ClassType*, TypeGraphs>> graphs_by_type(const jit::Module& root) {
  std::vector<std::pair<const c10::ClassType*, TypeGraphs>> out;
  std::set<const c10::ClassType*> seen;
  for (const auto& item : root.named_modules()) {
    const c10::ClassType* type = item.value.type().get();
    if (!seen.insert(type).second) continue;
    TypeGraphs tg{item.value, {}};
    for (const auto& method : item.value.get_methods()) tg.graphs.push_back(method.graph());
    out.emplace_back(type, std::move(tg));
  }
  return out;
}

struct Analysis {
  std::map<const c10::ClassType*, std::vector<CallSite>> sites;  // by the type whose graph holds them
  std::set<TypeAttr> other_uses;  // weights read other than as aten::linear's weight
};

Analysis analyze(const jit::Module& root) {
  Analysis a;
  for (auto& entry : graphs_by_type(root)) {
    for (const auto& graph : entry.second.graphs) {
      jit::Value* self = graph->inputs().at(0);
      std::vector<jit::Node*> nodes;
      all_nodes(graph->block(), nodes);
      for (jit::Node* n : nodes) {
        if (n->kind() != c10::prim::GetAttr) continue;
        const auto owner_type = n->input()->type()->cast<c10::ClassType>();
        if (!owner_type || !owner_type->is_module() || !n->output()->type()->isSubtypeOf(*c10::TensorType::get()))
          continue;
        const std::string attr = n->s(c10::attr::name);
        std::vector<std::string> path;
        const bool reachable = module_path(n->input(), self, path);
        bool only_linear_weight = true;
        for (const jit::Use& use : n->output()->uses()) {
          if (use.user->kind() == c10::aten::linear && use.offset == 1 && reachable) {
            a.sites[entry.first].push_back(CallSite{graph, use.user, path, attr, owner_type});
          } else {
            only_linear_weight = false;
          }
        }
        // Records every tensor attribute read other than as a linear weight (biases too); only weights matter.
        if (!only_linear_weight) a.other_uses.insert({owner_type.get(), attr});
      }
    }
  }
  return a;
}

}  // namespace

std::string LinearLayer::packed_attr_for(const std::string& weight_attr) {
  return weight_attr == "weight" ? "packed" : weight_attr + "_packed";
}

std::vector<LinearLayer> find_linear_layers(const jit::Module& root) {
  const Analysis a = analyze(root);
  std::map<std::string, LinearLayer> by_key;  // "<module>\n<attr>" -> layer
  for (const auto& item : root.named_modules()) {
    const auto found = a.sites.find(item.value.type().get());
    if (found == a.sites.end()) continue;
    for (const CallSite& site : found->second) {
      LinearLayer layer;
      layer.name = join_path(item.name, site.path);
      layer.weight_attr = site.weight_attr;
      const std::string key = layer.name + "\n" + layer.weight_attr;
      if (by_key.count(key)) continue;
      layer.module = follow(item.value, site.path);
      const at::Tensor w = layer.module.attr(site.weight_attr).toTensor();
      layer.shape = w.sizes().vec();
      if (w.dim() != 2) {
        layer.quantizable = false;
        layer.why_not = "weight is not 2-D";
      } else if (a.other_uses.count({site.owner_type.get(), site.weight_attr})) {
        layer.quantizable = false;
        layer.why_not = "weight '" + site.weight_attr + "' of this module type is also read outside aten::linear";
      }
      by_key.emplace(key, std::move(layer));
    }
  }
  // Report in module-tree order, not in name order ("layers.10" after "layers.9").
  std::vector<LinearLayer> out;
  for (const auto& item : root.named_modules()) {
    for (auto it = by_key.begin(); it != by_key.end();) {
      if (it->second.name == item.name) {
        out.push_back(std::move(it->second));
        it = by_key.erase(it);
      } else {
        ++it;
      }
    }
  }
  TORCH_INTERNAL_ASSERT(by_key.empty(), "find_linear_layers: a layer outside the module tree: ",
                        by_key.begin()->first);
  return out;
}

bool is_quantized(const jit::Module& root) {
  const auto packed_type = c10::getCustomClassType<PackedWeightPtr>();
  for (const auto& item : root.named_modules()) {
    for (const auto& attr : item.value.type()->getAttributes()) {
      const c10::TypePtr t = attr.getType();
      if (t == packed_type) return true;
      if (const auto opt = t->cast<c10::OptionalType>()) {
        if (opt->getElementType() == packed_type) return true;
      }
    }
  }
  return false;
}

void install_packed_weights(jit::Module& root, const std::vector<LinearLayer>& layers,
                            const std::map<std::string, PackedWeightPtr>& packed) {
  std::map<std::string, PackedLinear> linears;
  for (const auto& entry : packed) linears[entry.first].weight = entry.second;
  install_packed_linears(root, layers, linears);
}

namespace {

// How the call sites of one (owner type, weight attribute) are rewritten: decided over all its instances.
struct CallPlan {
  std::set<const c10::ivalue::Object*> quantized;  // the quantized instances
  bool all_quantized = false;       // else the packed attribute is Optional and float instances keep aten::linear
  bool any_input_scale = false;
  bool all_input_scale = false;     // every instance has a scale: a plain Tensor attribute, no branch
  c10::optional<std::string> w8a8;  // the activation dtype when the instances are W8A8
  bool int8_activations = false;    // weight-only through lwq::woq_linear_a8
  std::string first_layer;          // for messages
};

// x -> x * scale (or x unchanged on instances without a scale, when the attribute is Optional).
jit::Value* insert_input_scale(jit::Graph& graph, jit::Value* owner, jit::Value* x, const std::string& attr,
                               bool optional) {
  jit::Value* s = graph.insertGetAttr(owner, attr);
  if (!optional) return graph.insert(c10::aten::mul, {x, s});
  jit::Value* none = graph.insertConstant(c10::IValue());
  jit::Value* has = graph.insert(c10::aten::__isnot__, {s, none});
  jit::Node* branch = graph.insertNode(graph.create(c10::prim::If, {has}, 1));
  branch->output()->setType(c10::TensorType::get());
  jit::Block* then_block = branch->addBlock();
  jit::Block* else_block = branch->addBlock();
  {
    jit::WithInsertPoint in_then(then_block);
    jit::Value* unwrapped = graph.insertUncheckedCast(s, c10::TensorType::get());
    then_block->registerOutput(graph.insert(c10::aten::mul, {x, unwrapped}));
  }
  else_block->registerOutput(x);
  return branch->output();
}

}  // namespace

void install_packed_linears(jit::Module& root, const std::vector<LinearLayer>& layers,
                            const std::map<std::string, PackedLinear>& packed) {
  const auto packed_type = c10::getCustomClassType<PackedWeightPtr>();
  // 1. Check every layer and decide, per shared type, how its call sites are rewritten.
  std::map<std::string, const LinearLayer*> by_name;
  for (const auto& layer : layers) by_name[layer.name] = &layer;
  std::map<TypeAttr, CallPlan> plans;
  for (const auto& entry : packed) {
    const auto it = by_name.find(entry.first);
    TORCH_CHECK(it != by_name.end(), "install_packed_weights: '", entry.first, "' is not a linear layer of the model");
    const LinearLayer& layer = *it->second;
    const PackedLinear& p = entry.second;
    TORCH_CHECK(layer.quantizable, "install_packed_weights: layer '", layer.name, "' cannot be quantized: ",
                layer.why_not);
    TORCH_CHECK(p.weight, "install_packed_weights: layer '", layer.name, "' has no packed weight");
    const auto& w = layer.shape;
    TORCH_CHECK(p.weight->out_features() == w[0] && p.weight->in_features() == w[1],
                "install_packed_weights: layer '", layer.name, "' has a weight of shape [", w[0], ", ", w[1],
                "] but its packed weight is [", p.weight->out_features(), ", ", p.weight->in_features(), "]");
    TORCH_CHECK(!p.input_scale.defined() || (p.input_scale.dim() == 1 && p.input_scale.size(0) == w[1]),
                "install_packed_weights: layer '", layer.name, "' has an input scale of shape ",
                p.input_scale.sizes(), ", expected [", w[1], "]");
    TORCH_CHECK(!layer.module.type()->hasAttribute(layer.packed_attr()), "install_packed_weights: layer '",
                layer.name, "' already has an attribute '", layer.packed_attr(), "'");
    TORCH_CHECK(!p.int8_activations || !p.activation, "install_packed_weights: layer '", layer.name,
                "' is W8A8; int8 activations apply to weight-only layers");
    TORCH_CHECK(!p.int8_activations || p.weight->supports_int8_activations(), "install_packed_weights: layer '",
                layer.name, "' has dtype ", p.weight->dtype(),
                "; int8 activations (lwq::woq_linear_a8) need one of ", c10::Join(", ", int8_activation_dtype_names()));
    CallPlan& plan = plans[{layer.module.type().get(), layer.weight_attr}];
    const c10::optional<std::string> w8a8 =
        p.activation ? c10::optional<std::string>(p.activation->dtype) : c10::nullopt;
    if (plan.quantized.empty()) {
      plan.w8a8 = w8a8;
      plan.int8_activations = p.int8_activations;
      plan.first_layer = layer.name;
    }
    TORCH_CHECK(plan.w8a8 == w8a8 && plan.int8_activations == p.int8_activations, "install_packed_weights: layers '",
                plan.first_layer, "' and '", layer.name,
                "' share one module type (one forward graph) but not one kind of call (weight-only, weight-only "
                "with int8 activations, or W8A8 with one activation dtype); quantize them alike or exclude one of "
                "them");
    plan.any_input_scale |= p.input_scale.defined();
    plan.quantized.insert(layer.module._ivalue().get());
  }
  // Nothing is modified above this line, so a refused call leaves the module as it was.

  // 2. Attributes on every instance of an affected type. Float instances (and instances without a scale) get
  // None in Optional attributes; their call keeps the float path.
  const auto modules = root.named_modules();
  for (auto& entry : plans) {
    CallPlan& plan = entry.second;
    std::vector<jit::Module> instances;
    std::set<const c10::ivalue::Object*> distinct;
    for (const auto& item : modules) {
      if (item.value.type().get() != entry.first.first) continue;
      if (distinct.insert(item.value._ivalue().get()).second) instances.push_back(item.value);
    }
    plan.all_quantized = distinct.size() == plan.quantized.size();
    plan.all_input_scale = plan.all_quantized;
    for (const auto& e : packed) {
      const LinearLayer& layer = *by_name.at(e.first);
      if (layer.module.type().get() == entry.first.first && layer.weight_attr == entry.first.second &&
          !e.second.input_scale.defined())
        plan.all_input_scale = false;
    }
    const std::string attr = LinearLayer::packed_attr_for(entry.first.second);
    const c10::TypePtr weight_type =
        plan.all_quantized ? c10::TypePtr(packed_type) : c10::OptionalType::create(packed_type);
    for (auto& m : instances) {
      m.register_attribute(attr, weight_type, c10::IValue());
      if (plan.any_input_scale) {
        const c10::TypePtr t = plan.all_input_scale ? c10::TypePtr(c10::TensorType::get())
                                                    : c10::OptionalType::create(c10::TensorType::get());
        m.register_attribute(attr + "_input_scale", t, c10::IValue());
      }
      if (plan.w8a8) {
        m.register_attribute(attr + "_act_scale", c10::FloatType::get(), c10::IValue(1.0));
        m.register_attribute(attr + "_act_zero_point", c10::IntType::get(), c10::IValue(int64_t{0}));
      }
    }
  }
  for (const auto& entry : packed) {
    const LinearLayer& layer = *by_name.at(entry.first);
    const PackedLinear& p = entry.second;
    jit::Module m = layer.module;
    const std::string attr = layer.packed_attr();
    m.setattr(attr, c10::IValue(p.weight));
    if (p.input_scale.defined()) m.setattr(attr + "_input_scale", p.input_scale.to(at::kFloat).contiguous());
    if (p.activation) {
      m.setattr(attr + "_act_scale", p.activation->scale);
      m.setattr(attr + "_act_zero_point", p.activation->zero_point);
    }
    const at::Tensor old = m.attr(layer.weight_attr).toTensor();
    // No float copy remains in the quantized module: the weight becomes an empty tensor.
    m.setattr(layer.weight_attr, at::empty({0}, at::kFloat).set_requires_grad(old.requires_grad()));
  }

  // 3. Rewrite the call sites, once per shared graph.
  const Analysis a = analyze(root);
  const c10::Symbol woq_linear = c10::Symbol::fromQualString("lwq::woq_linear");
  const c10::Symbol woq_linear_a8 = c10::Symbol::fromQualString("lwq::woq_linear_a8");
  const c10::Symbol w8a8_linear = c10::Symbol::fromQualString("lwq::w8a8_linear");
  std::set<jit::Graph*> touched;
  for (const auto& entry : a.sites) {  // each shared graph once, whatever the number of instances
    for (const CallSite& site : entry.second) {
      const auto found = plans.find({site.owner_type.get(), site.weight_attr});
      if (found == plans.end()) continue;
      const CallPlan& plan = found->second;
      jit::Graph& graph = *site.graph;
      jit::Node* linear = site.linear;
      jit::Value* x = linear->input(0);
      jit::Value* weight = linear->input(1);
      jit::Value* bias = linear->input(2);
      jit::Value* owner = weight->node()->input();
      const std::string attr = LinearLayer::packed_attr_for(site.weight_attr);
      jit::WithInsertPoint guard(linear);
      // The quantized call on packed weight p (inserted at the current insertion point).
      auto quantized_call = [&](jit::Value* p) {
        jit::Value* xq = plan.any_input_scale
                             ? insert_input_scale(graph, owner, x, attr + "_input_scale", !plan.all_input_scale)
                             : x;
        if (!plan.w8a8) return graph.insert(plan.int8_activations ? woq_linear_a8 : woq_linear, {xq, p, bias});
        jit::Value* act_scale = graph.insertGetAttr(owner, attr + "_act_scale");
        jit::Value* act_zero_point = graph.insertGetAttr(owner, attr + "_act_zero_point");
        jit::Value* act_dtype = graph.insertConstant(c10::IValue(*plan.w8a8));
        return graph.insert(w8a8_linear, {xq, p, act_scale, act_zero_point, bias, act_dtype});
      };
      jit::Value* p = graph.insertGetAttr(owner, attr);
      jit::Value* y = nullptr;
      if (plan.all_quantized) {
        y = quantized_call(p);
      } else {
        jit::Value* none = graph.insertConstant(c10::IValue());
        jit::Value* is_packed = graph.insert(c10::aten::__isnot__, {p, none});
        jit::Node* branch = graph.insertNode(graph.create(c10::prim::If, {is_packed}, 1));
        branch->output()->setType(c10::TensorType::get());
        jit::Block* then_block = branch->addBlock();
        jit::Block* else_block = branch->addBlock();
        {
          jit::WithInsertPoint in_then(then_block);
          then_block->registerOutput(quantized_call(graph.insertUncheckedCast(p, packed_type)));
        }
        {
          jit::WithInsertPoint in_else(else_block);
          else_block->registerOutput(graph.insert(c10::aten::linear, {x, weight, bias}));
        }
        y = branch->output();
      }
      linear->output()->replaceAllUsesWith(y);
      linear->destroy();
      touched.insert(&graph);
    }
  }
  // The float weight's GetAttr is dead where the call became unconditional.
  for (const auto& entry : graphs_by_type(root)) {
    for (const auto& graph : entry.second.graphs) {
      if (touched.count(graph.get())) jit::EliminateDeadCode(graph);
    }
  }
}

std::vector<NamedTensorSlot> parameter_slots(const jit::Module& root) {
  std::vector<NamedTensorSlot> out;
  for (const auto& item : root.named_modules()) {
    const std::string prefix = item.name.empty() ? "" : item.name + ".";
    for (const auto& p : item.value.named_parameters(/*recurse=*/false)) {
      out.push_back(NamedTensorSlot{prefix + p.name, item.value, p.name, false});
    }
    for (const auto& b : item.value.named_buffers(/*recurse=*/false)) {
      out.push_back(NamedTensorSlot{prefix + b.name, item.value, b.name, true});
    }
  }
  return out;
}

namespace {

// Rewrites the meta Device constants of `block` and its sub-blocks; `where` names the method for errors.
int64_t rewrite_meta_constants(torch::jit::Block* block, const std::string& where) {
  int64_t n = 0;
  for (torch::jit::Node* node : block->nodes()) {
    for (torch::jit::Block* sub : node->blocks()) n += rewrite_meta_constants(sub, where);
    if (node->kind() != c10::prim::Constant || !node->hasAttribute(c10::attr::value)) continue;
    const c10::TypePtr type = node->output()->type();
    if (type->kind() == c10::DeviceObjType::Kind) {
      if (node->s(c10::attr::value) == "meta") {
        node->s_(c10::attr::value, "cpu");
        ++n;
      }
    } else if (type->kind() == c10::TensorType::Kind && node->kindOf(c10::attr::value) == torch::jit::AttributeKind::t) {
      const at::Tensor t = node->t(c10::attr::value);
      std::ostringstream at_line;
      if (node->sourceRange().source()) node->sourceRange().highlight(at_line);
      TORCH_CHECK(!t.is_meta(), where, " holds a tensor constant on the meta device ", t.sizes(),
                  " (traced on meta, it has no values):\n", at_line.str(),
                  "trace the model on CPU (with any weights), or script it, then load its weights with --weights");
    }
  }
  return n;
}

}  // namespace

int64_t rewrite_meta_device_constants(torch::jit::Module& root, const std::string& what) {
  int64_t n = 0;
  for (const auto& item : root.named_modules()) {
    for (const auto& method : item.value.get_methods()) {
      const std::string where = what + ": " + (item.name.empty() ? std::string("the root module") : "module '" +
                                item.name + "'") + ", method " + method.name();
      n += rewrite_meta_constants(method.graph()->block(), where);
    }
  }
  return n;
}

}  // namespace model
}  // namespace lwq
