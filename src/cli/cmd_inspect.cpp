// `lwq inspect`: a summary of a TorchScript archive's modules and linear layers, as text or JSON.
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>
#include <string>

#include "cli.h"
#include "lwq/model/inspect.h"

namespace lwq {
namespace cli {

namespace {

struct Inspect {
  std::string path;
  bool json = false;
};

nlohmann::ordered_json to_json(const model::ModelSummary& s) {
  nlohmann::ordered_json modules = nlohmann::ordered_json::array(), linears = nlohmann::ordered_json::array();
  for (const auto& m : s.modules) modules.push_back({{"name", m.first}, {"class", m.second}});
  for (const auto& l : s.linears) {
    nlohmann::ordered_json j = {{"name", l.name}, {"shape", l.shape}, {"quantized", l.quantized}, {"dtype", l.dtype}};
    if (l.quantized) {
      j["group_size"] = l.group_size;
      j["sym"] = l.sym;
      j["act_order"] = l.act_order;
    }
    j["bytes"] = l.bytes;
    linears.push_back(j);
  }
  return {{"path", s.path},
          {"modules", modules},
          {"linears", linears},
          {"totals",
           {{"packed_bytes", s.packed_bytes}, {"float_param_bytes", s.float_param_bytes}, {"meta_params", s.meta_params}}}};
}

int run(const Inspect& i) {
  const model::ModelSummary summary = model::inspect_model(i.path);
  if (i.json) {
    std::cout << to_json(summary).dump() << std::endl;
  } else {
    model::print_summary(std::cout, summary);
  }
  return 0;
}

}  // namespace

Command add_inspect(CLI::App& lwq) {
  auto i = std::make_shared<Inspect>();
  CLI::App* app = add_command(lwq, "inspect", "list the modules and linear layers of a TorchScript model",
                              "M.pt [--json]",
                              "Lists the modules of a TorchScript archive and its linear layers: shape, float or "
                              "quantized (dtype, group\nsize) and the bytes they take.");
  app->add_option("model,--model", i->path, "the TorchScript archive")->type_name("M.pt")->required();
  add_json_flag(*app, i->json,
                "{\"path\", \"modules\": [{\"name\", \"class\"}], \"linears\": [{\"name\", \"shape\", \"quantized\",\n"
                " \"dtype\", \"group_size\", \"sym\", \"act_order\" (these three when quantized), \"bytes\"}],\n"
                " \"totals\": {\"packed_bytes\", \"float_param_bytes\", \"meta_params\"}}");
  return {app, [i] { return run(*i); }};
}

}  // namespace cli
}  // namespace lwq
