// The block structure of a model, for calibration block by block: which submodules are the repeated blocks, how
// to compute the inputs of the first block from the model's inputs, and how to watch the inputs of every linear
// layer while a block runs.
//
// Blocks: the children "0".."n-1" of a module list (a module whose children are all named by their index), all of
// one type; without --blocks the list with the most children is taken. The blocks must be chained in the graph
// of the module that calls them: block i+1's first argument is block i's output (or its first element when it
// returns a tuple), and every other argument is the same value for all blocks (rotary tables, masks...). A model
// without such a list is one block: the model itself, whose inputs are the calibration inputs.
#pragma once

#include <torch/script.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace lwq {
namespace model {

struct BlockList {
  std::string list;                 // qualified name of the module list ("layers", "model.layers"); "" = whole model
  std::vector<std::string> blocks;  // qualified block names ("layers.0", ...); {""} for the whole model
  int64_t output_index = -1;        // -1: a block returns the hidden state; else the tuple element holding it
  bool whole_model() const { return list.empty(); }
};

// Finds the blocks of `root` (`list_name` = --blocks, or "" to detect them) and checks that they are chained.
// Throws naming the list and the block when a named list does not exist or the blocks are not chained.
BlockList find_blocks(const torch::jit::Module& root, const std::string& list_name);

// Computes the arguments of the first block's forward from the model's forward inputs, by running the model's
// forward graph up to that call (the calls on the way to the module list are inlined; what follows is dropped).
// Only parameters the graph reads before the first block must hold values.
class BlockInputCapture {
 public:
  BlockInputCapture(const torch::jit::Module& root, const BlockList& blocks);
  // The arguments (without the module) of blocks[0].forward for one call of root.forward(inputs).
  std::vector<c10::IValue> operator()(const std::vector<c10::IValue>& inputs);

 private:
  torch::jit::Module root_;
  std::unique_ptr<torch::jit::GraphFunction> function_;
};

// The block's hidden state out of its forward's return value.
at::Tensor block_output(const c10::IValue& out, const BlockList& blocks);

// Observation of linear inputs: instrument_linear_inputs(module) rewrites every aten::linear call site of the
// module's graphs (module must be a private copy, e.g. from clone(): its graphs change) so that its input first
// passes through lwq::_observe_linear_input(x, weight), which hands (x, weight) to the observer installed by the
// current ObserveLinearInputs scope. The weight tensor identifies the layer. Without a scope the op does nothing.
void instrument_linear_inputs(torch::jit::Module& module);

using LinearInputObserver = std::function<void(const at::Tensor& x, const at::Tensor& weight)>;

class ObserveLinearInputs {
 public:
  explicit ObserveLinearInputs(LinearInputObserver observer);
  ~ObserveLinearInputs();
  ObserveLinearInputs(const ObserveLinearInputs&) = delete;
  ObserveLinearInputs& operator=(const ObserveLinearInputs&) = delete;

 private:
  LinearInputObserver previous_;
};

// The kernel of lwq::_observe_linear_input (registered with the core library's schemas, src/bindings/): hands
// (x, weight) to the current scope's observer and returns x.
at::Tensor observe_linear_input(const at::Tensor& x, const at::Tensor& weight);

// Where the input of a group of linears (layers reading one value) comes from, for folding per-input-channel
// scales s into it (x / s computed by the producer instead of a multiply before each linear).
struct ScaleFold {
  enum Kind { None, NormWeight, LinearRows } kind = None;
  std::string param;  // NormWeight: qualified name (in the module analysed) of the 1-D tensor x is multiplied by
  std::string layer;  // LinearRows: the linear whose output rows scale x (its weight rows and bias divided by s)
  std::string why_not;  // None: why not
};

// For each group of layer names (relative to `module`), how its scales can be folded. Works on an inlined copy of
// module.forward's graph; a group can be folded only if its layers read the same value and nothing else reads it.
std::vector<ScaleFold> find_scale_folds(const torch::jit::Module& module,
                                        const std::vector<std::vector<std::string>>& groups);

}  // namespace model
}  // namespace lwq
