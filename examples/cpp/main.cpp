// Runs a quantized TorchScript model from C++ with nothing but LibTorch and liblwq_ops.so (lwq::ops).
//
//   lwq_example MODEL.pt --shape 2,5,48            forward on a seeded random input; prints the output's shape,
//                                                 sum and first values
//   lwq_example MODEL.pt --generate 32 [--prompt 1,450,2411] [--threads N]
//                                                 greedy decoding with the model's key/value cache (the Llama
//                                                 models of scripts/export_llama.py: init_cache / forward_cached);
//                                                 prints the token ids
//
// The input of --shape is torch::randn after torch::manual_seed(0), the same values Python's torch.manual_seed(0);
// torch.randn(shape) gives, so a Python script can check the numbers.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_list(const std::string& text, const char* what) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    try {
      out.push_back(std::stoll(item, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) throw std::runtime_error(std::string(what) + ": not a list of integers: " + text);
  }
  if (out.empty()) throw std::runtime_error(std::string(what) + ": empty list");
  return out;
}

void run_forward(torch::jit::Module& model, const std::vector<int64_t>& shape) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn(shape);
  const at::Tensor y = model.forward({x}).toTensor();
  std::cout << "output shape:";
  for (int64_t d : y.sizes()) std::cout << " " << d;
  std::printf("\nsum: %.9g\nfirst:", y.sum().item<double>());
  const at::Tensor flat = y.reshape({-1});
  for (int64_t i = 0; i < std::min<int64_t>(4, flat.numel()); ++i) std::printf(" %.9g", flat[i].item<double>());
  std::printf("\n");
}

// Greedy decoding as llama2.c's run.c at temperature 0: the prompt one token at a time, then the argmax of each
// step, until `steps` positions have run or BOS comes out.
void run_generate(torch::jit::Module& model, int64_t steps, const std::vector<int64_t>& prompt) {
  constexpr int64_t kBos = 1;
  c10::IValue cache = model.run_method("init_cache", int64_t{1}, steps);
  auto step = [&](int64_t token, int64_t pos) {
    const at::Tensor ids = torch::tensor({token}, torch::kLong).view({1, 1});
    return model.run_method("forward_cached", ids, pos, cache).toTensor();
  };
  at::Tensor logits = step(prompt[0], 0);
  std::cout << "tokens:";
  for (int64_t pos = 0; pos < steps;) {
    const int64_t next = pos + 1 < static_cast<int64_t>(prompt.size()) ? prompt[pos + 1]
                                                                      : logits[0][-1].argmax().item<int64_t>();
    ++pos;
    if (next == kBos) break;
    std::cout << " " << next << std::flush;
    if (pos >= steps) break;
    logits = step(next, pos);
  }
  std::cout << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: lwq_example MODEL.pt --shape D0,D1,... | --generate STEPS [--prompt IDS] [--threads N]\n";
    return 1;
  }
  try {
    const std::string path = argv[1];
    std::vector<int64_t> shape, prompt{1};
    int64_t steps = 0;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      const std::string v = argv[++i];
      if (a == "--shape") {
        shape = parse_list(v, "--shape");
      } else if (a == "--generate") {
        steps = parse_list(v, "--generate").at(0);
      } else if (a == "--prompt") {
        prompt = parse_list(v, "--prompt");
      } else if (a == "--threads") {
        at::set_num_threads(static_cast<int>(parse_list(v, "--threads").at(0)));
      } else {
        throw std::runtime_error("unknown option " + a);
      }
    }
    const at::NoGradGuard no_grad;
    // The archive names torch.classes.lwq.PackedWeight and calls lwq::woq_linear: both were registered when
    // liblwq_ops.so was loaded with this program.
    torch::jit::Module model = torch::jit::load(path);
    model.eval();
    if (steps > 0) {
      run_generate(model, steps, prompt);
    } else if (!shape.empty()) {
      run_forward(model, shape);
    } else {
      throw std::runtime_error("give --shape or --generate");
    }
  } catch (const c10::Error& e) {
    std::cerr << "lwq_example: " << e.what_without_backtrace() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "lwq_example: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
