// TorchScript surgery on the models of tests/python/fixtures/make_test_models.py (a scripted model with meta
// parameters and a traced one with real weights) and on small modules defined here: finding linears, swapping in packed weights,
// per-instance behaviour of a shared class type, and the archive round trip.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "lwq/io/safetensors.h"
#include "lwq/model/surgery.h"
#include "test_util.h"

namespace lwq {
namespace {

namespace fs = std::filesystem;
using model::LinearLayer;

class Surgery : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((fs::temp_directory_path() / ("lwq_surgery_" + std::to_string(::getpid()))).string());
    ok_ = test::run_python_fixture("make_test_models.py", 5, *dir_);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
  }
  void SetUp() override {
    ASSERT_TRUE(ok_) << "tests/python/fixtures/make_test_models.py did not run (" LWQ_PYTHON " with torch needed)";
  }
  static std::string path(const std::string& name) { return *dir_ + "/" + name; }
  static at::Tensor reference_input(const std::string& model) {
    // The references are torch.save'd dicts; only their shape matters here, so draw a seeded input instead.
    at::manual_seed(11);
    return model == "scripted" ? at::randn({2, 5, 48}) : at::randn({3, 7, 40});
  }
  // The scripted model with every meta parameter filled from its safetensors file.
  static torch::jit::Module load_filled_scripted() {
    torch::jit::Module m = torch::jit::load(path("scripted.pt"));
    const io::WeightStore store(path("scripted.safetensors"));
    for (auto& slot : model::parameter_slots(m)) slot.set(store.load(slot.name));
    return m;
  }
  static at::Tensor run(torch::jit::Module& m, const at::Tensor& x) { return m.forward({x}).toTensor(); }

  static std::string* dir_;
  static bool ok_;
};
std::string* Surgery::dir_ = nullptr;
bool Surgery::ok_ = false;

std::vector<std::string> names_of(const std::vector<LinearLayer>& layers) {
  std::vector<std::string> out;
  for (const auto& l : layers) out.push_back(l.name);
  return out;
}

// Quantizes the layers not in `skip` (int4, group 32, asym); `reference` gets the dequantized weights in place of the float ones,
// so it computes what the packed module should compute (up to kernel rounding).
std::map<std::string, PackedWeightPtr> quantize_layers(const std::vector<LinearLayer>& layers,
                                                       const std::set<std::string>& skip,
                                                       torch::jit::Module& reference) {
  std::map<std::string, PackedWeightPtr> packed;
  auto ref_layers = model::find_linear_layers(reference);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (skip.count(layers[i].name)) continue;
    const at::Tensor w = layers[i].module.attr(layers[i].weight_attr).toTensor();
    packed[layers[i].name] = quantize_weight(w, "int4", 32, false);
    ref_layers[i].module.setattr(ref_layers[i].weight_attr, packed[layers[i].name]->dequantize());
  }
  return packed;
}

TEST_F(Surgery, FindsEveryLinearOfTheScriptedModelInTreeOrder) {
  const torch::jit::Module m = torch::jit::load(path("scripted.pt"));
  const auto layers = model::find_linear_layers(m);
  std::vector<std::string> expected;
  for (int b = 0; b < 3; ++b) {
    for (const char* p : {"up", "gate", "down"}) expected.push_back("layers." + std::to_string(b) + "." + p);
  }
  expected.push_back("lm_head");
  EXPECT_EQ(names_of(layers), expected);
  EXPECT_EQ(layers[0].shape, (std::vector<int64_t>{80, 48}));
  EXPECT_EQ(layers[2].shape, (std::vector<int64_t>{48, 80}));
  EXPECT_EQ(layers[2].weight_name(), "layers.0.down.weight");
  for (const auto& l : layers) EXPECT_TRUE(l.quantizable) << l.name << ": " << l.why_not;
  // The archive is the "empty parameter" model: nothing but meta tensors.
  for (const auto& slot : model::parameter_slots(m)) EXPECT_TRUE(slot.value().is_meta()) << slot.name;
  EXPECT_FALSE(model::is_quantized(m));
}

TEST_F(Surgery, FindsAWeightReachedThroughAGetAttrChain) {
  const torch::jit::Module m = torch::jit::load(path("traced.pt"));
  const auto layers = model::find_linear_layers(m);
  // "head" has no forward of its own: the root's graph reads self.head.weight.
  EXPECT_EQ(names_of(layers), (std::vector<std::string>{"fc1", "fc2", "head"}));
  EXPECT_EQ(layers[2].shape, (std::vector<int64_t>{24, 40}));
}

TEST_F(Surgery, PackedModuleComputesWithTheDequantizedWeights) {
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    torch::jit::Module m = torch::jit::load(path("traced.pt"));
    torch::jit::Module reference = torch::jit::load(path("traced.pt"));
    torch::jit::Module original = torch::jit::load(path("traced.pt"));
    const at::Tensor x = reference_input("traced");
    const at::Tensor y_float = run(original, x);  // not `m`: surgery needs a module that has never run
    const auto layers = model::find_linear_layers(m);
    model::install_packed_weights(m, layers, quantize_layers(layers, {}, reference));
    EXPECT_TRUE(model::is_quantized(m));
    for (const auto& l : layers) EXPECT_EQ(l.module.attr("weight").toTensor().numel(), 0) << l.name;
    const at::Tensor y = run(m, x), y_ref = run(reference, x);
    EXPECT_TRUE(at::allclose(y, y_ref, 1e-4, 1e-4)) << (y - y_ref).abs().max().item<double>();
    // int4 is not exact: the packed model really computes with quantized weights.
    EXPECT_GT((y - y_float).abs().max().item<double>(), 1e-4);
  }
  at::set_num_threads(1);
}

TEST_F(Surgery, InstancesOfASharedTypeKeepTheirOwnBehaviour) {
  torch::jit::Module m = load_filled_scripted();
  torch::jit::Module reference = load_filled_scripted();
  const auto layers = model::find_linear_layers(m);
  ASSERT_EQ(layers[0].module.type(), layers[3].module.type()) << "layers.0.up and layers.1.up should share a type";
  // layers.1.up stays float while layers.0.up and layers.2.up (same class, same forward graph) are packed.
  model::install_packed_weights(m, layers, quantize_layers(layers, {"layers.1.up", "lm_head"}, reference));
  EXPECT_EQ(layers[3].module.attr("weight").toTensor().numel(), 80 * 48);
  EXPECT_TRUE(layers[3].module.attr("packed").isNone());
  EXPECT_EQ(layers[0].module.attr("weight").toTensor().numel(), 0);
  const at::Tensor x = reference_input("scripted");
  const at::Tensor y_ref = run(reference, x);
  EXPECT_TRUE(at::allclose(run(m, x), y_ref, 1e-4, 1e-4));

  // The archive round trip keeps the per-instance behaviour.
  std::stringstream archive;
  m.save(archive);
  torch::jit::Module loaded = torch::jit::load(archive);
  EXPECT_TRUE(at::allclose(run(loaded, x), y_ref, 1e-4, 1e-4));
  EXPECT_TRUE(model::is_quantized(loaded));
}

TEST_F(Surgery, RefusesWrongLayersAndShapes) {
  torch::jit::Module m = load_filled_scripted();
  const auto layers = model::find_linear_layers(m);
  const auto packed = quantize_weight(at::randn({80, 48}), "int8", -1, true);
  test::expect_error([&] { model::install_packed_weights(m, layers, {{"layers.9.up", packed}}); }, "layers.9.up");
  test::expect_error([&] { model::install_packed_weights(m, layers, {{"layers.0.down", packed}}); },
                     "layers.0.down");
  EXPECT_FALSE(model::is_quantized(m)) << "a refused install must not leave attributes behind";
}

TEST_F(Surgery, Int8ActivationsCallWoqLinearA8AndAreRefusedWhereTheyCannotApply) {
  torch::jit::Module m = load_filled_scripted();
  torch::jit::Module reference = load_filled_scripted();
  const auto layers = model::find_linear_layers(m);
  const auto weights = quantize_layers(layers, {"lm_head"}, reference);
  std::map<std::string, model::PackedLinear> packed;
  for (const auto& [name, w] : weights) packed[name] = {w, at::Tensor(), c10::nullopt, true};
  {
    // An nf4 layer cannot take int8 activations; instances of one type must agree on the call.
    auto bad = packed;
    bad["layers.1.up"].weight = quantize_weight(at::randn({80, 48}), "nf4", 16, true);
    test::expect_error([&] { model::install_packed_linears(m, layers, bad); }, "'layers.1.up' has dtype nf4");
    auto mixed = packed;
    mixed["layers.2.up"].int8_activations = false;
    test::expect_error([&] { model::install_packed_linears(m, layers, mixed); },
                       "and 'layers.2.up' share one module type");
    EXPECT_FALSE(model::is_quantized(m)) << "a refused install must not leave attributes behind";
  }
  model::install_packed_linears(m, layers, packed);
  const at::Tensor x = reference_input("scripted");
  const at::Tensor y = run(m, x), y_ref = run(reference, x);
  // int8 activations: close to the dequantized reference, but not exact.
  EXPECT_LT(((y - y_ref).norm() / y_ref.norm()).item<double>(), 0.02);
  EXPECT_GT((y - y_ref).abs().max().item<double>(), 1e-6);
  int a8_calls = 0;
  for (const auto& sub : m.modules()) {
    if (!sub.find_method("forward")) continue;
    for (const torch::jit::Node* n : sub.get_method("forward").graph()->nodes()) {
      EXPECT_NE(n->kind().toQualString(), std::string("lwq::woq_linear"));
      a8_calls += n->kind().toQualString() == std::string("lwq::woq_linear_a8");
    }
  }
  EXPECT_EQ(a8_calls, 9) << "one call in the forward of each quantized linear (3 blocks x up, gate, down)";
  std::stringstream archive;
  m.save(archive);
  torch::jit::Module loaded = torch::jit::load(archive);
  EXPECT_TRUE(at::equal(run(loaded, x), y));
}

// A module defined from TorchScript source here: its weight feeds aten::linear and is also read directly, so it
// must keep its float values.
TEST(SurgeryDefined, WeightReadOutsideLinearIsNotQuantizable) {
  torch::jit::Module inner("Inner");
  inner.register_parameter("weight", at::randn({6, 4}), false);
  inner.define(R"(
def forward(self, x):
    return torch.linear(x, self.weight) + self.weight.sum()
)");
  torch::jit::Module outer("Outer");
  outer.register_parameter("weight", at::randn({3, 6}), false);
  outer.register_module("inner", inner);
  outer.define(R"(
def forward(self, x):
    return torch.linear(self.inner.forward(x), self.weight)
)");
  const auto layers = model::find_linear_layers(outer);
  ASSERT_EQ(names_of(layers), (std::vector<std::string>{"", "inner"}));
  EXPECT_TRUE(layers[0].quantizable);
  EXPECT_FALSE(layers[1].quantizable);
  EXPECT_NE(layers[1].why_not.find("outside aten::linear"), std::string::npos) << layers[1].why_not;
  test::expect_error(
      [&] {
        model::install_packed_weights(outer, layers,
                                      {{"inner", quantize_weight(at::randn({6, 4}), "int8", -1, true)}});
      },
      "outside aten::linear");
  // The root module itself can be a linear layer; its packed attribute is "packed" like any other.
  const at::Tensor x = at::randn({5, 4});
  const at::Tensor w = outer.attr("weight").toTensor();
  const auto packed = quantize_weight(w, "int8", -1, true);
  const at::Tensor expected = at::linear(inner.forward({x}).toTensor(), packed->dequantize());
  model::install_packed_weights(outer, layers, {{"", packed}});
  EXPECT_TRUE(at::allclose(outer.forward({x}).toTensor(), expected, 1e-4, 1e-4));
}

}  // namespace
}  // namespace lwq
