#include "calibration.h"

#include <torch/serialize.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "lwq/io/safetensors.h"
#include "lwq/text/evaluate.h"
#include "lwq/text/tokenizer.h"

namespace lwq {
namespace pipeline {

namespace {

// Token windows of a text (calibration.h).
std::vector<Args> text_calibration(const QuantizeConfig& config) {
  TORCH_CHECK(!config.tokenizer_path.empty(), "quantize: --calib ", config.calib_text,
              " needs --tokenizer (tokenizer.bin, tokenizer.model, tokenizer.json or a model directory)");
  TORCH_CHECK(config.seqlen >= 2, "quantize: --seq-len must be at least 2, got ", config.seqlen);
  const std::unique_ptr<text::Tokenizer> tokenizer = text::load_tokenizer(config.tokenizer_path);
  const int64_t n = config.nsamples > 0 ? config.nsamples : 64;
  const std::vector<std::string> paragraphs = text::read_segments(config.calib_text);
  TORCH_CHECK(!paragraphs.empty(), "quantize: the calibration text ", config.calib_text,
              " has no paragraphs (it is empty or only whitespace)");
  std::vector<int64_t> ids;
  for (const std::string& paragraph : paragraphs) {
    // BOS before each paragraph where the tokenizer uses one (encode leaves it out otherwise).
    const std::vector<int64_t> t = tokenizer->encode(paragraph, /*bos=*/true, /*eos=*/false);
    ids.insert(ids.end(), t.begin(), t.end());
    if (static_cast<int64_t>(ids.size()) >= n * config.seqlen) break;
  }
  TORCH_CHECK(static_cast<int64_t>(ids.size()) >= n * config.seqlen, "quantize: the calibration text ",
              config.calib_text, " gives ", ids.size(), " tokens, fewer than --nsamples ", n, " x --seq-len ",
              config.seqlen, "; use a longer text or fewer/shorter samples");
  std::vector<Args> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back({at::tensor(std::vector<int64_t>(ids.begin() + i * config.seqlen,
                                                   ids.begin() + (i + 1) * config.seqlen))
                       .unsqueeze(0)});
  }
  return out;
}

// The first id of `t` [N, L...] outside [0, vocab) as "sample i, position j: id", or "".
std::string first_bad_id(const at::Tensor& t, int64_t vocab) {
  const at::Tensor bad = vocab > 0 ? (t < 0).logical_or(t >= vocab) : (t < 0);
  if (!bad.any().item<bool>()) return "";
  const at::Tensor where = bad.reshape({t.size(0), -1}).nonzero()[0];
  const int64_t i = where[0].item<int64_t>(), j = where[1].item<int64_t>();
  return "sample " + std::to_string(i) + ", position " + std::to_string(j) + ": id " +
         std::to_string(t.reshape({t.size(0), -1})[i][j].item<int64_t>());
}

}  // namespace

std::vector<Args> calibration_inputs(const QuantizeConfig& config, int64_t vocab) {
  if (!config.calib_text.empty()) {
    std::vector<Args> windows = text_calibration(config);
    std::vector<at::Tensor> rows;
    for (const Args& a : windows) rows.push_back(a[0].toTensor());
    const std::string bad = first_bad_id(at::cat(rows), vocab);  // "sample i" is window i
    TORCH_CHECK(bad.empty(), "quantize: the tokenizer ", config.tokenizer_path, " gives token ids the model does ",
                "not have (its embedding has ", vocab, " rows) on ", config.calib_text, ": window", bad.substr(6),
                "; is it the model's tokenizer?");
    return windows;
  }
  TORCH_CHECK(!config.calib_tensors.empty(), "quantize: --algo ", config.algorithm,
              " needs calibration inputs: --calib-tensors FILE (safetensors holding input_ids [N, L]) or --calib "
              "TEXT --tokenizer TOK");
  const auto file = io::SafetensorsFile::open(config.calib_tensors);
  const std::string name = file->contains("input_ids") ? "input_ids" : file->contains("inputs") ? "inputs" : "";
  TORCH_CHECK(!name.empty(), "quantize: the calibration file ", config.calib_tensors,
              " has no tensor named input_ids (token ids [N, L]) or inputs (model inputs [N, ...])");
  at::Tensor t = file->load_raw(name);
  t = at::isIntegralType(t.scalar_type(), /*includeBool=*/false) ? t.to(at::kLong) : t.to(at::kFloat);
  TORCH_CHECK(t.dim() >= 2 && t.size(0) > 0 && t.numel() > 0, "quantize: calibration tensor '", name, "' in ",
              config.calib_tensors, " must be [N, ...] with N >= 1 samples, got ", t.sizes());
  if (t.is_floating_point()) {
    check_finite(t, "calibration tensor '" + name + "' in " + config.calib_tensors);
  } else {
    const std::string bad = first_bad_id(t, vocab);
    TORCH_CHECK(bad.empty(), "quantize: calibration tensor '", name, "' in ", config.calib_tensors,
                " holds a token id outside the model's vocabulary [0, ",
                vocab > 0 ? std::to_string(vocab) : std::string("..."), "): ", bad);
  }
  TORCH_CHECK(config.nsamples <= t.size(0), "quantize: --nsamples ", config.nsamples, " but ",
              config.calib_tensors, " holds ", t.size(0), " samples");
  const int64_t n = config.nsamples > 0 ? config.nsamples : t.size(0);
  std::vector<Args> out;
  for (int64_t i = 0; i < n; ++i) out.push_back({t.slice(0, i, i + 1).contiguous()});
  return out;
}

ActivationCache::ActivationCache(std::vector<Args> args, const std::string& offload_dir) : args_(std::move(args)) {
  if (offload_dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(offload_dir, ec);
  TORCH_CHECK(!ec, "quantize: cannot create the offload directory ", offload_dir, ": ", ec.message());
  // A fresh directory of a random name (mkdtemp), never one planted at a predictable name.
  std::string dir = offload_dir + "/lwq-activations.XXXXXX";
  TORCH_CHECK(::mkdtemp(dir.data()), "quantize: cannot create a directory in the offload directory ", offload_dir,
              ": ", std::strerror(errno));
  dir_ = dir;
  for (size_t s = 0; s < args_.size(); ++s) set_hidden(s, args_[s][0].toTensor());
}

ActivationCache::~ActivationCache() {
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

Args ActivationCache::get(size_t s) const {
  Args a = args_[s];
  if (!dir_.empty()) {
    std::ifstream in(path(s), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    TORCH_CHECK(in.good() || in.eof(), "quantize: cannot read the offloaded activations ", path(s));
    a[0] = torch::pickle_load(bytes);
  }
  return a;
}

void ActivationCache::set_hidden(size_t s, const at::Tensor& h) {
  if (dir_.empty()) {
    args_[s][0] = h;
    return;
  }
  const std::vector<char> bytes = torch::pickle_save(h);
  std::ofstream out(path(s), std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  TORCH_CHECK(out, "quantize: cannot write the offloaded activations ", path(s), " (disk full?)");
  args_[s][0] = at::Tensor();  // the file holds it
}

}  // namespace pipeline
}  // namespace lwq
