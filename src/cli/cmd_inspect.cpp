// `lwq inspect`: a summary of a TorchScript archive's modules and linear layers, and what the files beside it say
// (model family, tokenizer), as text or JSON.
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>
#include <string>

#include "cli.h"
#include "lwq/model/inspect.h"
#include "lwq/text/model_info.h"

namespace lwq {
namespace cli {

namespace {

struct Inspect {
  std::string path, weights, tokenizer;
  bool json = false;
};

nlohmann::ordered_json to_json(const text::ModelInfo& m) {
  nlohmann::ordered_json j;
  j["family"] = m.family.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(m.family);
  j["config"] = m.config_path.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(m.config_path);
  if (!m.tokenizer.empty()) {
    j["tokenizer"] = {{"path", m.tokenizer_path},
                      {"describe", m.tokenizer},
                      {"bos", m.special.bos},
                      {"eos", m.special.eos},
                      {"add_bos", m.special.add_bos}};
  } else {
    j["tokenizer"] = nullptr;
  }
  if (!m.tokenizer_error.empty()) j["tokenizer_error"] = m.tokenizer_error;
  return j;
}

void print_info(std::ostream& out, const text::ModelInfo& m) {
  if (m.config_path.empty()) {
    out << "family: not found (no config.json in " << m.looked_in << ")\n";
  } else if (m.family.empty()) {
    out << "family: not said (" << m.config_path << " has no model_type or architecture)\n";
  } else {
    out << "family: " << m.family << " (" << m.config_path << ")\n";
  }
  if (!m.tokenizer.empty()) {
    out << "tokenizer: " << m.tokenizer << "; BOS " << (m.special.bos >= 0 ? std::to_string(m.special.bos) : "none")
        << (m.special.bos >= 0 && !m.special.add_bos ? " (not added)" : "") << ", EOS ";
    if (m.special.eos.empty()) out << "none";
    for (size_t k = 0; k < m.special.eos.size(); ++k) out << (k ? " " : "") << m.special.eos[k];
    out << "\n";
  } else if (!m.tokenizer_error.empty()) {
    out << "tokenizer: found in " << m.tokenizer_path << " but not read: " << m.tokenizer_error << "\n";
  } else {
    out << "tokenizer: none found (no tokenizer.json, tokenizer.model or tokenizer.bin in " << m.looked_in
        << "; give --tokenizer)\n";
  }
}

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
  const text::ModelInfo info = text::model_info(i.path, i.weights, i.tokenizer);
  if (i.json) {
    nlohmann::ordered_json j = to_json(summary);
    j.update(to_json(info));
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    model::print_summary(std::cout, summary);
    print_info(std::cout, info);
  }
  return 0;
}

}  // namespace

Command add_inspect(CLI::App& lwq) {
  auto i = std::make_shared<Inspect>();
  CLI::App* app = add_command(lwq, "inspect", "list the modules and linear layers of a TorchScript model",
                              "M.pt [--weights W] [--tokenizer TOK] [--json]",
                              "Lists the modules of a TorchScript archive and its linear layers: shape, float or "
                              "quantized (dtype, group\nsize) and the bytes they take; then the model family "
                              "(config.json's model_type, else its\narchitecture) and the tokenizer with its BOS/EOS "
                              "ids, looked for beside the archive, then beside\nthe weights. What is not found is "
                              "said, not an error.");
  app->add_option("model,--model", i->path, "the TorchScript archive")->type_name("M.pt")->required();
  app->add_option("--weights", i->weights, "safetensors file or directory: config.json and a tokenizer may be there")
      ->type_name("W");
  app->add_option("--tokenizer", i->tokenizer, "the tokenizer to describe (default: one found beside the model)")
      ->type_name("TOK");
  add_json_flag(*app, i->json,
                "{\"path\", \"modules\": [{\"name\", \"class\"}], \"linears\": [{\"name\", \"shape\", \"quantized\",\n"
                " \"dtype\", \"group_size\", \"sym\", \"act_order\" (these three when quantized), \"bytes\"}],\n"
                " \"totals\": {\"packed_bytes\", \"float_param_bytes\", \"meta_params\"}, \"family\", \"config\",\n"
                " \"tokenizer\": {\"path\", \"describe\", \"bos\", \"eos\", \"add_bos\"} (null when none),\n"
                " \"tokenizer_error\" (a tokenizer found but not read)}");
  return {app, [i] { return run(*i); }};
}

}  // namespace cli
}  // namespace lwq
