// Internal to model/: walking TorchScript graphs and module trees, shared by the surgery and the block analysis.
#pragma once

#include <torch/script.h>

#include <string>
#include <vector>

namespace lwq {
namespace model {

// Every node of `block` and of the blocks nested in its nodes (if/loop bodies), in order.
void all_nodes(torch::jit::Block* block, std::vector<torch::jit::Node*>& out);

// The submodule path from the graph's `self` to `v` when v is self or a GetAttr chain on it; false otherwise.
bool module_path(torch::jit::Value* v, torch::jit::Value* self, std::vector<std::string>& path);

// "a.b.c" -> {"a", "b", "c"}; "" -> {}.
std::vector<std::string> split_path(const std::string& name);

// "prefix.a.b" from a prefix (possibly empty) and path parts.
std::string join_path(const std::string& prefix, const std::vector<std::string>& parts);

// The submodule at a path of attribute names.
torch::jit::Module follow(torch::jit::Module m, const std::vector<std::string>& path);

}  // namespace model
}  // namespace lwq
