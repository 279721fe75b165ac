#include "resume.h"

#include <ATen/Parallel.h>
#include <torch/serialize.h>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <regex>
#include <sstream>

#include "lwq/io/safetensors.h"
#include "report.h"

namespace lwq {
namespace pipeline {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A file as the fingerprint sees it: path, size and modification time (a changed input invalidates the state).
json file_identity(const std::string& path) {
  if (path.empty()) return nullptr;
  std::error_code ec;
  fs::path p(path);
  if (fs::is_directory(p, ec)) {
    json files = json::object();
    for (const auto& entry : fs::directory_iterator(p, ec)) {
      if (entry.is_regular_file(ec)) files[entry.path().filename().string()] = file_identity(entry.path().string());
    }
    return {{"path", fs::absolute(p, ec).string()}, {"files", files}};
  }
  const auto size = fs::file_size(p, ec);
  const auto mtime = fs::last_write_time(p, ec).time_since_epoch().count();
  return {{"path", fs::absolute(p, ec).string()}, {"size", static_cast<int64_t>(size)}, {"mtime", mtime}};
}

json fingerprint_of(const QuantizeConfig& c) {
  return {{"model", file_identity(c.model_path)},
          {"weights", file_identity(c.weights_path)},
          {"calibration", file_identity(c.calib_tensors)},
          {"calibration_text", {file_identity(c.calib_text), file_identity(c.tokenizer_path), c.seqlen}},
          {"algorithm", c.algorithm},
          // fp16_scales only when set: states of runs without it keep their fingerprint.
          {"spec", c.spec.fp16_scales ? json{c.spec.dtype, c.spec.group_size, c.spec.sym, "fp16"}
                                      : json{c.spec.dtype, c.spec.group_size, c.spec.sym}},
          {"mse_search", c.mse_search},
          {"exclude", c.exclude},
          {"blocks", c.blocks},
          {"nsamples", c.nsamples},
          {"true_sequential", c.true_sequential},
          {"gptq", {c.gptq.percdamp, c.gptq.block_size, c.gptq.act_order, c.gptq.static_groups}},
          {"awq", {c.awq.n_grid, c.awq.duo_scaling, c.awq.clip_search, c.awq.clip_grid, c.awq.max_shrink,
                   c.awq.clip_max_rows}},
          {"teq", {c.teq.steps, c.teq.lr, c.teq.beta1, c.teq.beta2, c.teq.warmup_ratio, c.teq.batch_size,
                   c.teq.eval_every, c.teq.seed, c.teq.normalise_scales}},
          {"w8a8", {c.observer, c.act_dtype, c.smoothquant_alpha}},
          // Results are reproducible for a given thread count (GPTQ for any), so it is part of the identity.
          {"threads", at::get_num_threads()}};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  io::atomic_write(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    TORCH_CHECK(out, "resume state: cannot write ", tmp);
  });
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "resume state: cannot read ", path, " (delete the directory and run without --resume)");
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string unit_path(const std::string& dir, int64_t k) { return dir + "/unit-" + std::to_string(k) + ".pt"; }

std::string activation_path(const std::string& dir, int64_t k, size_t sample) {
  return dir + "/activations-" + std::to_string(k) + "-" + std::to_string(sample) + ".pt";
}

}  // namespace

namespace {

// Names the state directory may hold: its own files and atomic_write's temporaries of them.
bool is_state_file(const std::string& name) {
  static const std::regex pattern(R"((state\.json|unit-\d+\.pt|activations-\d+-\d+\.pt)(\.tmp\..*)?)");
  return std::regex_match(name, pattern);
}

}  // namespace

ResumeState::ResumeState(const QuantizeConfig& config, bool resume)
    : dir_(config.out_path + ".lwq-resume"), fingerprint_(fingerprint_of(config).dump()) {
  std::error_code ec;
  TORCH_CHECK(!fs::exists(fs::symlink_status(dir_, ec)) || fs::is_directory(fs::symlink_status(dir_, ec)),
              "quantize: the resume state's path ", dir_, " is taken by something that is not a directory; move it "
              "away (lwq keeps its resume state there, next to the output)");
  if (fs::exists(dir_, ec)) {
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
      const std::string name = entry.path().filename().string();
      TORCH_CHECK(is_state_file(name), "quantize: the resume state directory ", dir_, " holds '", name,
                  "', which is not lwq resume state; move it away rather than have lwq delete it");
    }
  }
  fs::create_directories(dir_, ec);
  TORCH_CHECK(!ec, "resume state: cannot create ", dir_, ": ", ec.message());
  lock_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  TORCH_CHECK(lock_fd_ >= 0, "resume state: cannot open ", dir_, ": ", std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    TORCH_CHECK(false, "quantize: another lwq run is writing ", config.out_path, " (its resume state ", dir_,
                " is locked); wait for it to end or choose another --out");
  }
  try {
    open_state(resume);
  } catch (...) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw;
  }
}

void ResumeState::open_state(bool resume) {
  std::error_code ec;
  const std::string state = dir_ + "/state.json";
  if (resume && fs::exists(state, ec)) {
    json j;
    try {
      j = json::parse(std::ifstream(state));
    } catch (const json::exception& e) {
      TORCH_CHECK(false, "resume state ", state, " is not valid JSON (", e.what(),
                  "); delete ", dir_, " and run without --resume");
    }
    const json saved = j.value("fingerprint", json());
    const json now = json::parse(fingerprint_);
    for (auto it = now.begin(); it != now.end(); ++it) {
      TORCH_CHECK(saved.contains(it.key()) && saved[it.key()] == it.value(), "resume state ", dir_,
                  " was made by another run: '", it.key(), "' differs (then ", saved.value(it.key(), json()).dump(),
                  ", now ", it.value().dump(), "); run the same command, or delete the directory");
    }
    done_ = j.at("done").get<int64_t>();
    samples_ = j.value("samples", size_t{0});
    return;
  }
  for (const auto& entry : fs::directory_iterator(dir_, ec)) fs::remove(entry.path(), ec);
  TORCH_CHECK(!ec, "resume state: cannot clear ", dir_, ": ", ec.message());
}

void ResumeState::save_unit(int64_t k, const UnitState& unit, size_t samples, const ActivationSource& activation) {
  TORCH_INTERNAL_ASSERT(k == done_, "resume state: unit ", k, " saved after ", done_);
  c10::impl::GenericDict packed(c10::StringType::get(), c10::AnyType::get());
  for (const auto& entry : unit.packed) {
    const model::PackedLinear& p = entry.second;
    c10::IValue act;
    if (p.activation) act = std::make_tuple(p.activation->scale, p.activation->zero_point, p.activation->dtype);
    packed.insert(entry.first, c10::ivalue::Tuple::create({c10::IValue(p.weight->state()),
                                                           p.input_scale.defined() ? c10::IValue(p.input_scale)
                                                                                   : c10::IValue(),
                                                           act}));
  }
  c10::impl::GenericDict params(c10::StringType::get(), c10::TensorType::get());
  for (const auto& entry : unit.params) params.insert(entry.first, entry.second);
  json report = {{"layers", json::array()}, {"folds", json::array()}};
  for (const auto& q : unit.layers) report["layers"].push_back(layer_to_json(q));
  for (const auto& f : unit.folds) report["folds"].push_back(fold_to_json(f));
  // A failed write (a full disk) keeps the units recorded before: state.json, written last, still names them.
  write_bytes(unit_path(dir_, k),
              torch::pickle_save(c10::ivalue::Tuple::create({packed, params, report.dump()})));
  for (size_t i = 0; i < samples; ++i) {
    c10::impl::GenericList one(c10::AnyType::get());
    for (const auto& a : activation(i)) one.push_back(a);
    write_bytes(activation_path(dir_, k, i), torch::pickle_save(one));
  }
  const json state = {{"fingerprint", json::parse(fingerprint_)}, {"done", k + 1}, {"samples", samples}};
  const std::string text = state.dump(2);
  write_bytes(dir_ + "/state.json", std::vector<char>(text.begin(), text.end()));
  // The activations of the unit before are no longer needed.
  std::error_code ec;
  for (size_t i = 0; k > 0 && fs::exists(activation_path(dir_, k - 1, i), ec); ++i) {
    fs::remove(activation_path(dir_, k - 1, i), ec);
  }
  done_ = k + 1;
  samples_ = samples;
  // For the kill-and-resume test: a real SIGKILL at a chosen point of the run.
  const char* kill_after = std::getenv("LWQ_TEST_KILL_AFTER_UNITS");
  if (kill_after && std::atoll(kill_after) == done_) std::raise(SIGKILL);
}

UnitState ResumeState::load_unit(int64_t k) const {
  const c10::IValue v = torch::pickle_load(read_bytes(unit_path(dir_, k)));
  const auto& elements = v.toTupleRef().elements();
  UnitState unit;
  for (const auto& entry : elements.at(0).toGenericDict()) {
    const auto& t = entry.value().toTupleRef().elements();
    model::PackedLinear p;
    p.weight = PackedWeight::from_state(t.at(0).to<PackedWeight::State>());
    if (!t.at(1).isNone()) p.input_scale = t.at(1).toTensor();
    if (!t.at(2).isNone()) {
      const auto& a = t.at(2).toTupleRef().elements();
      p.activation = model::ActivationQuant{a.at(0).toDouble(), a.at(1).toInt(), a.at(2).toStringRef()};
    }
    unit.packed.emplace(entry.key().toStringRef(), std::move(p));
  }
  for (const auto& entry : elements.at(1).toGenericDict()) {
    unit.params.emplace(entry.key().toStringRef(), entry.value().toTensor());
  }
  const json report = json::parse(elements.at(2).toStringRef());
  for (const auto& q : report.at("layers")) unit.layers.push_back(layer_from_json(q));
  for (const auto& f : report.at("folds")) unit.folds.push_back(fold_from_json(f));
  return unit;
}

std::vector<std::vector<c10::IValue>> ResumeState::load_activations() const {
  std::vector<std::vector<c10::IValue>> out;
  for (size_t i = 0; i < samples_; ++i) {
    const c10::IValue v = torch::pickle_load(read_bytes(activation_path(dir_, done_ - 1, i)));
    const auto list = v.toListRef();
    out.emplace_back(list.begin(), list.end());
  }
  return out;
}

ResumeState::~ResumeState() {
  if (!finished_ && done_ > 0) {
    std::cerr << "lwq: the resume state of " << done_ << " finished units is kept in " << dir_
              << ": run the same command with --resume to continue" << std::endl;
  } else if (!finished_) {
    finish();
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void ResumeState::finish() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
  finished_ = true;
}

}  // namespace pipeline
}  // namespace lwq
