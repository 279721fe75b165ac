// TorchScript surgery: find the linear layers of a scripted or traced module, fill its empty (meta) parameters from
// a weight store, and swap float linears for lwq::woq_linear on packed weights.
//
// What counts as a linear layer: a module M whose tensor attribute W (usually "weight", 2-D) is the weight input of
// an aten::linear node, reached from the graph's `self` by prim::GetAttr — either directly (the forward of a scripted
// or traced nn.Linear: aten::linear(x, self.weight, self.bias)) or through a chain of submodule GetAttrs (a parent
// calling F.linear(x, self.head.weight), as tracing records it). Linears whose weight is a constant (frozen
// modules), a computed value, or a loop-carried module are not found; they stay as they are.
//
// A weight read anywhere else than as aten::linear's weight (tied embeddings, weight.t(), ...) must keep its float
// values, so every layer of that module type and attribute is reported as not quantizable.
#pragma once

#include <torch/script.h>

#include <map>
#include <string>
#include <vector>

#include "ops.h"

namespace lwq {
namespace model {

struct LinearLayer {
  std::string name;         // qualified module name, e.g. "layers.0.up" ("" for the root module)
  std::string weight_attr;  // the attribute holding the float weight, usually "weight"
  torch::jit::Module module;
  std::vector<int64_t> shape;  // of the weight in the archive (meta tensors keep their shape)
  bool quantizable = true;
  std::string why_not;  // when !quantizable

  // Qualified parameter name of the float weight, e.g. "layers.0.up.weight".
  std::string weight_name() const { return name.empty() ? weight_attr : name + "." + weight_attr; }
  // The attribute that holds the packed weight after quantization: "packed" for "weight", else "<attr>_packed".
  std::string packed_attr() const { return packed_attr_for(weight_attr); }
  static std::string packed_attr_for(const std::string& weight_attr);
};

// The linear layers of `root`, in named_modules() order (the order of the module tree, blocks first to last).
std::vector<LinearLayer> find_linear_layers(const torch::jit::Module& root);

// A value an archive cannot provide: a meta tensor, or an empty one standing for a missing parameter.
inline bool is_empty_in_archive(const at::Tensor& t) { return t.is_meta() || (t.numel() == 0 && t.dim() > 0); }

// The submodule of `root` at a qualified name ("layers.3.attn"; "" is root itself).
torch::jit::Module submodule(const torch::jit::Module& root, const std::string& name);

// True when a module of `root` already holds a packed weight attribute (the archive was quantized before).
bool is_quantized(const torch::jit::Module& root);

// Swaps in packed weights: `packed` maps layer names (LinearLayer::name) to their PackedWeight. For each layer in
// it, the module gets the packed attribute, its float weight is replaced by an empty tensor, and every aten::linear
// call site of it becomes lwq::woq_linear(x, packed, bias). Module instances share one class type and one forward
// graph: when some instances of a type are quantized and others not, the attribute is Optional[PackedWeight]
// (None on float instances) and the call site branches on it, so every instance keeps its own behaviour.
// Throws (naming the layer) when a name in `packed` is not a quantizable layer of `layers`; nothing is modified then.
// `root` must not have been run before: LibTorch 1.13 caches each method's execution plan on first run and offers no
// way to drop it, so a module that already ran would keep executing its old float graph (load a fresh copy to run).
void install_packed_weights(torch::jit::Module& root, const std::vector<LinearLayer>& layers,
                            const std::map<std::string, PackedWeightPtr>& packed);

// Static per-tensor activation quantization of a W8A8 layer (lwq::w8a8_linear's arguments).
struct ActivationQuant {
  double scale = 1.0;
  int64_t zero_point = 0;
  std::string dtype = "uint8";
};

// What replaces one float linear.
struct PackedLinear {
  PackedWeightPtr weight;
  // fp32 [in] or undefined: the input is multiplied by it before the packed op. Set when per-input-channel
  // scales (AWQ, TEQ, SmoothQuant) could not be folded into the producer of the input.
  at::Tensor input_scale;
  // Set: the call becomes lwq::w8a8_linear with these static activation parameters; unset: lwq::woq_linear.
  c10::optional<ActivationQuant> activation;
  // Weight-only layers: the call becomes lwq::woq_linear_a8 (x rounded to int8 per 32-column block at run time;
  // dtypes int8, int4 and int4_fullrange) instead of lwq::woq_linear.
  bool int8_activations = false;
};

// As above, with input scales and W8A8 layers. Per instance the module gets "<packed>" (the PackedWeight),
// "<packed>_input_scale" (Tensor, or Optional[Tensor] when instances of the type differ), and for W8A8
// "<packed>_act_scale" (float) and "<packed>_act_zero_point" (int). Instances of one type must agree on the call
// (woq, woq with int8 activations, or w8a8 with one activation dtype): a type mixing them is refused, naming the
// layers.
void install_packed_linears(torch::jit::Module& root, const std::vector<LinearLayer>& layers,
                            const std::map<std::string, PackedLinear>& packed);

// A parameter or buffer of the module tree, addressed by its qualified name.
struct NamedTensorSlot {
  std::string name;  // "layers.0.norm.weight"
  torch::jit::Module owner;
  std::string attr;  // "weight"
  bool is_buffer = false;
  at::Tensor value() const { return owner.attr(attr).toTensor(); }
  void set(const at::Tensor& t) { owner.setattr(attr, t); }
};
std::vector<NamedTensorSlot> parameter_slots(const torch::jit::Module& root);

// A model traced on the meta device (to export it without its weights) records `device=meta` as constants of its
// graphs: positions from arange, masks from ones/triu. Run on CPU, such a graph mixes meta and CPU tensors and
// fails ("Expected all tensors to be on the same device"). Every Device constant "meta" in every method of every
// module of `root` becomes "cpu"; returns how many were rewritten. A tensor constant on the meta device (data the
// trace never had) cannot be rewritten: throws naming the module, method and the source line of the node.
int64_t rewrite_meta_device_constants(torch::jit::Module& root, const std::string& what);

}  // namespace model
}  // namespace lwq
