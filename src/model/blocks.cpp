// Blocks of a TorchScript model: detection, chaining checks, capture of the first block's inputs, observation of
// linear inputs and the producer analysis for scale folding. All of it works on copies of graphs (or on private
// clones of modules), never on the graphs of the model being written.
#include "lwq/model/blocks.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "graph_walk.h"
#include "lwq/model/surgery.h"

namespace lwq {
namespace model {

namespace jit = torch::jit;

namespace {

// Type names without TorchScript's "___torch_mangle_N." parts: instances of one Python class compare equal.
std::string demangled_type(const jit::Module& m) {
  static const std::regex mangle(R"(___torch_mangle_\d+\.)");
  return std::regex_replace(m.type()->name()->qualifiedName(), mangle, "");
}

// The children of a module list, or empty when `m` is not one (children named "0".."n-1", all of one type).
std::vector<jit::Module> list_children(const jit::Module& m) {
  std::vector<jit::Module> out;
  std::string type;
  for (const auto& child : m.named_children()) {
    if (child.name != std::to_string(out.size())) return {};
    if (out.empty()) type = demangled_type(child.value);
    if (demangled_type(child.value) != type) return {};
    out.push_back(child.value);
  }
  return out;
}

// The graph that calls the blocks: a copy of root.forward with the calls on the way to the list inlined, and the
// call node of each block in it.
struct CallerGraph {
  std::shared_ptr<jit::Graph> graph;
  std::vector<jit::Node*> calls;  // calls[i]: prim::CallMethod forward on block i
};

CallerGraph caller_graph(const jit::Module& root, const BlockList& blocks) {
  CallerGraph cg;
  cg.graph = root.get_method("forward").graph()->copy();
  jit::Value* self = cg.graph->inputs().at(0);
  const std::vector<std::string> list_path = split_path(blocks.list);
  // Inline the calls on modules that lie on the path to the list (root.model.forward when the list is
  // model.layers), until the block calls themselves are in this graph.
  for (bool changed = true; changed;) {
    changed = false;
    std::vector<jit::Node*> nodes;
    all_nodes(cg.graph->block(), nodes);
    for (jit::Node* n : nodes) {
      if (n->kind() != c10::prim::CallMethod) continue;
      std::vector<std::string> path;
      if (!module_path(n->input(0), self, path) || path.size() >= list_path.size()) continue;
      if (!std::equal(path.begin(), path.end(), list_path.begin())) continue;
      const auto type = n->input(0)->type()->expect<c10::ClassType>();
      // false: the callee's own graph. The default inlines its optimized graph, where every call is inlined, the
      // block calls included, which leaves none to find when forward reaches them through self.hidden().
      jit::inlineCallTo(n, &jit::toGraphFunction(type->getMethod(n->s(c10::attr::name))), false);
      changed = true;
      break;
    }
  }
  std::vector<jit::Node*> nodes;
  all_nodes(cg.graph->block(), nodes);
  cg.calls.assign(blocks.blocks.size(), nullptr);
  for (jit::Node* n : nodes) {
    if (n->kind() != c10::prim::CallMethod || n->s(c10::attr::name) != "forward") continue;
    std::vector<std::string> path;
    if (!module_path(n->input(0), self, path)) continue;
    const std::string name = join_path("", path);
    for (size_t i = 0; i < blocks.blocks.size(); ++i) {
      if (name != blocks.blocks[i]) continue;
      TORCH_CHECK(cg.calls[i] == nullptr, "blocks: block '", name,
                  "' is called more than once by the model's forward; calibration block by block needs each block "
                  "called once (use --no-layer-wise or --blocks with another list)");
      cg.calls[i] = n;
    }
  }
  for (size_t i = 0; i < blocks.blocks.size(); ++i) {
    TORCH_CHECK(cg.calls[i] != nullptr, "blocks: block '", blocks.blocks[i],
                "' is not called by the model's forward (directly or through the modules above '", blocks.list,
                "'); name the blocks with --blocks");
  }
  return cg;
}

// Block i's hidden-state output as a value of the caller graph, and which tuple element it is (-1: the output).
jit::Value* hidden_of(jit::Node* call, jit::Value* next_input, int64_t& index) {
  jit::Value* out = call->output();
  if (next_input == out) {
    index = -1;
    return out;
  }
  jit::Node* n = next_input->node();
  if (n->kind() == c10::prim::TupleIndex && n->input(0) == out && jit::toIValue(n->input(1))) {
    index = jit::toIValue(n->input(1))->toInt();
    return next_input;
  }
  if (n->kind() == c10::prim::TupleUnpack && n->input(0) == out) {
    for (size_t k = 0; k < n->outputs().size(); ++k) {
      if (n->output(k) == next_input) {
        index = static_cast<int64_t>(k);
        return next_input;
      }
    }
  }
  return nullptr;
}

void check_chained(const CallerGraph& cg, BlockList& blocks) {
  const auto& calls = cg.calls;
  TORCH_CHECK(calls[0]->inputs().size() >= 2, "blocks: block '", blocks.blocks[0],
              "'.forward takes no input to calibrate on");
  blocks.output_index = calls[0]->output()->type()->cast<c10::TupleType>() ? 0 : -1;
  for (size_t i = 1; i < calls.size(); ++i) {
    TORCH_CHECK(calls[i]->inputs().size() == calls[0]->inputs().size(), "blocks: '", blocks.blocks[i],
                "' is called with a different number of arguments than '", blocks.blocks[0], "'");
    int64_t index = -1;
    TORCH_CHECK(hidden_of(calls[i - 1], calls[i]->input(1), index) != nullptr, "blocks: the first argument of '",
                blocks.blocks[i], "' is not the output of '", blocks.blocks[i - 1],
                "'; calibration block by block needs chained blocks (use --no-layer-wise is not enough either: "
                "name another list with --blocks)");
    TORCH_CHECK(i == 1 || index == blocks.output_index, "blocks: '", blocks.blocks[i],
                "' takes another element of its predecessor's output than the other blocks");
    blocks.output_index = index;
    for (size_t j = 2; j < calls[i]->inputs().size(); ++j) {
      TORCH_CHECK(calls[i]->input(j) == calls[0]->input(j), "blocks: argument ", j, " of '", blocks.blocks[i],
                  "' is not the same value as for '", blocks.blocks[0],
                  "'; only the first argument may change from block to block");
    }
  }
}

// The observer of the current ObserveLinearInputs scope (one pipeline at a time per process).
LinearInputObserver& current_observer() {
  static LinearInputObserver observer;
  return observer;
}

// Operations that change only the dtype or layout of a value: a scale passes through them unchanged.
bool is_cast(const jit::Node* n) {
  return n->kind() == c10::aten::to || n->kind() == c10::aten::type_as || n->kind() == c10::aten::contiguous;
}

// Uses that read a tensor's shape or type, not its values: scaling the values leaves them unchanged.
bool reads_metadata(const jit::Node* n) {
  return n->kind() == c10::aten::size || n->kind() == c10::aten::dim ||
         n->kind() == c10::prim::dtype || n->kind() == c10::prim::device ||
         n->kind() == c10::aten::len;
}

const c10::Symbol kObserveSymbol = c10::Symbol::fromQualString("lwq::_observe_linear_input");

}  // namespace

at::Tensor observe_linear_input(const at::Tensor& x, const at::Tensor& weight) {
  if (current_observer()) current_observer()(x, weight);
  return x;
}

BlockList find_blocks(const jit::Module& root, const std::string& list_name) {
  BlockList best;
  if (!list_name.empty()) {
    jit::Module list;
    try {
      list = submodule(root, list_name);
    } catch (const c10::Error&) {
      TORCH_CHECK(false, "blocks: the model has no module '", list_name, "' (--blocks)");
    }
    const std::vector<jit::Module> children = list_children(list);
    TORCH_CHECK(!children.empty(), "blocks: '", list_name,
                "' is not a list of blocks: its children must be named 0, 1, ... and be of one type");
    best.list = list_name;
    for (size_t i = 0; i < children.size(); ++i) best.blocks.push_back(list_name + "." + std::to_string(i));
  } else {
    for (const auto& item : root.named_modules()) {
      const size_t n = list_children(item.value).size();
      if (n == 0 || n <= best.blocks.size() || item.name.empty()) continue;
      best.list = item.name;
      best.blocks.clear();
      for (size_t i = 0; i < n; ++i) best.blocks.push_back(item.name + "." + std::to_string(i));
    }
  }
  if (best.blocks.empty()) {
    best.blocks = {""};
    best.output_index = -1;
    return best;
  }
  const CallerGraph cg = caller_graph(root, best);
  check_chained(cg, best);
  return best;
}

BlockInputCapture::BlockInputCapture(const jit::Module& root, const BlockList& blocks) : root_(root) {
  if (blocks.whole_model()) return;
  CallerGraph cg = caller_graph(root, blocks);
  jit::Graph& graph = *cg.graph;
  jit::Node* call = cg.calls[0];
  TORCH_CHECK(call->owningBlock() == graph.block(), "blocks: '", blocks.blocks[0],
              "' is called inside a branch or loop of the model's forward; cannot capture its inputs");
  std::vector<jit::Value*> args(call->inputs().begin() + 1, call->inputs().end());
  jit::WithInsertPoint guard(call);
  jit::Value* tuple = graph.insertNode(graph.createTuple(args))->output();
  while (!graph.outputs().empty()) graph.eraseOutput(0);
  graph.registerOutput(tuple);
  // Everything from the first block on goes (calls count as side effects, so dead-code elimination keeps them).
  for (jit::Node* n = graph.block()->return_node()->prev(); n != tuple->node();) {
    jit::Node* prev = n->prev();
    n->destroy();
    n = prev;
  }
  jit::EliminateDeadCode(cg.graph);
  function_ = std::make_unique<jit::GraphFunction>("lwq_capture_block_inputs", cg.graph, nullptr);
}

std::vector<c10::IValue> BlockInputCapture::operator()(const std::vector<c10::IValue>& inputs) {
  if (!function_) return inputs;  // the whole model is the block
  jit::Stack stack;
  stack.push_back(root_._ivalue());
  stack.insert(stack.end(), inputs.begin(), inputs.end());
  function_->run(stack);
  const auto elements = stack.back().toTupleRef().elements();
  return std::vector<c10::IValue>(elements.begin(), elements.end());
}

at::Tensor block_output(const c10::IValue& out, const BlockList& blocks) {
  if (blocks.output_index < 0) {
    TORCH_CHECK(out.isTensor(), "blocks: the block returned ", out.tagKind(), ", expected a Tensor");
    return out.toTensor();
  }
  TORCH_CHECK(out.isTuple(), "blocks: the block returned ", out.tagKind(), ", expected a tuple");
  return out.toTupleRef().elements().at(blocks.output_index).toTensor();
}

void instrument_linear_inputs(jit::Module& module) {
  std::set<jit::Graph*> done;
  for (const auto& item : module.named_modules()) {
    for (const auto& method : item.value.get_methods()) {
      const std::shared_ptr<jit::Graph> graph = method.graph();
      if (!done.insert(graph.get()).second) continue;
      std::vector<jit::Node*> nodes;
      all_nodes(graph->block(), nodes);
      for (jit::Node* n : nodes) {
        if (n->kind() != c10::aten::linear) continue;
        jit::WithInsertPoint guard(n);
        jit::Value* x = graph->insert(kObserveSymbol, {n->input(0), n->input(1)});
        n->replaceInput(0, x);
      }
    }
  }
}

ObserveLinearInputs::ObserveLinearInputs(LinearInputObserver observer) : previous_(std::move(current_observer())) {
  current_observer() = std::move(observer);
}

ObserveLinearInputs::~ObserveLinearInputs() { current_observer() = std::move(previous_); }

std::vector<ScaleFold> find_scale_folds(const jit::Module& module,
                                        const std::vector<std::vector<std::string>>& groups) {
  const std::shared_ptr<jit::Graph> graph = module.get_method("forward").graph()->copy();
  jit::Inline(*graph);
  jit::Value* self = graph->inputs().at(0);
  std::vector<jit::Node*> nodes;
  all_nodes(graph->block(), nodes);
  // An instrumented module: the observation calls are identities.
  for (jit::Node*& n : nodes) {
    if (n->kind() != kObserveSymbol) continue;
    n->output()->replaceAllUsesWith(n->input(0));
    n->destroy();
    n = nullptr;
  }
  nodes.erase(std::remove(nodes.begin(), nodes.end(), nullptr), nodes.end());
  // Linear call sites by layer name, and how often each tensor attribute is read.
  std::map<std::string, std::vector<jit::Node*>> linears;
  std::map<std::string, int> reads;
  for (jit::Node* n : nodes) {
    if (n->kind() == c10::prim::GetAttr && n->output()->type()->isSubtypeOf(*c10::TensorType::get())) {
      std::vector<std::string> path;
      if (module_path(n->input(), self, path)) {
        path.push_back(n->s(c10::attr::name));
        ++reads[join_path("", path)];
      }
    }
    if (n->kind() != c10::aten::linear || n->input(1)->node()->kind() != c10::prim::GetAttr) continue;
    std::vector<std::string> path;
    if (module_path(n->input(1)->node()->input(), self, path)) linears[join_path("", path)].push_back(n);
  }
  // A tensor attribute read exactly once, whose only use is `use` (through dtype casts: weight.float()).
  auto sole_param = [&](jit::Value* v, std::string& name) {
    while (is_cast(v->node()) && v->uses().size() == 1) v = v->node()->input(0);
    if (v->node()->kind() != c10::prim::GetAttr || v->uses().size() != 1) return false;
    std::vector<std::string> path;
    if (!module_path(v->node()->input(), self, path)) return false;
    path.push_back(v->node()->s(c10::attr::name));
    name = join_path("", path);
    return reads[name] == 1;
  };
  // The layer whose single-use linear output is v.
  auto sole_linear = [&](jit::Value* v, std::string& layer) {
    if (v->node()->kind() != c10::aten::linear || v->uses().size() != 1) return false;
    for (const auto& entry : linears) {
      if (entry.second.size() == 1 && entry.second[0] == v->node()) {
        layer = entry.first;
        return true;
      }
    }
    return false;
  };

  std::vector<ScaleFold> out;
  for (const auto& group : groups) {
    ScaleFold fold;
    std::set<jit::Node*> members;
    jit::Value* x = nullptr;
    for (const auto& name : group) {
      const auto it = linears.find(name);
      if (it == linears.end() || it->second.size() != 1) {
        fold.why_not = "'" + name + "' is not called exactly once by forward";
        break;
      }
      jit::Node* n = it->second[0];
      if (x && n->input(0) != x) {
        fold.why_not = "the group's layers do not read one value";
        break;
      }
      x = n->input(0);
      members.insert(n);
    }
    if (fold.why_not.empty() && x) {
      bool only_group = true;
      for (const jit::Use& use : x->uses()) {
        only_group &= (members.count(use.user) && use.offset == 0) || reads_metadata(use.user);
      }
      jit::Node* producer = x->node();
      if (!only_group) {
        fold.why_not = "the input of '" + group[0] + "' is also read by other operations";
      } else if (producer->kind() == c10::aten::mul) {
        for (size_t k = 0; k < 2 && fold.kind == ScaleFold::None; ++k) {
          if (sole_param(producer->input(k), fold.param)) {
            fold.kind = ScaleFold::NormWeight;
          } else if (sole_linear(producer->input(k), fold.layer)) {
            fold.kind = ScaleFold::LinearRows;
          }
        }
        if (fold.kind == ScaleFold::None) {
          fold.param.clear();
          fold.layer.clear();
          fold.why_not = "the input of '" + group[0] + "' is a product of neither a parameter nor a linear's output";
        }
      } else if (sole_linear(x, fold.layer)) {
        fold.kind = ScaleFold::LinearRows;
      } else {
        fold.why_not = "the input of '" + group[0] + "' is produced by " + producer->kind().toQualString();
      }
    }
    out.push_back(fold);
  }
  return out;
}

}  // namespace model
}  // namespace lwq
