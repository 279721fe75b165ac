#include "graph_walk.h"

#include <sstream>

#include "lwq/model/surgery.h"

namespace lwq {
namespace model {

namespace jit = torch::jit;

void all_nodes(jit::Block* block, std::vector<jit::Node*>& out) {
  for (jit::Node* n : block->nodes()) {
    out.push_back(n);
    for (jit::Block* b : n->blocks()) all_nodes(b, out);
  }
}

bool module_path(jit::Value* v, jit::Value* self, std::vector<std::string>& path) {
  std::vector<std::string> rev;
  while (v != self) {
    if (v->node()->kind() != c10::prim::GetAttr) return false;
    rev.push_back(v->node()->s(c10::attr::name));
    v = v->node()->input();
  }
  path.assign(rev.rbegin(), rev.rend());
  return true;
}

std::string join_path(const std::string& prefix, const std::vector<std::string>& parts) {
  std::string out = prefix;
  for (const auto& p : parts) out += (out.empty() ? "" : ".") + p;
  return out;
}

jit::Module follow(jit::Module m, const std::vector<std::string>& path) {
  for (const auto& p : path) m = m.attr(p).toModule();
  return m;
}

std::vector<std::string> split_path(const std::string& name) {
  std::vector<std::string> out;
  std::stringstream ss(name);
  std::string part;
  while (std::getline(ss, part, '.')) out.push_back(part);
  return out;
}

jit::Module submodule(const jit::Module& root, const std::string& name) { return follow(root, split_path(name)); }

}  // namespace model
}  // namespace lwq
