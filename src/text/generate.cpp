// Generation over the model's key/value cache (docs/model-contract.md), with run.c's stopping rules and sampler.
#include "lwq/text/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "lwq/text/llama2c_tokenizer.h"
#include "lwq/text/load_model.h"
#include "op_stats.h"

namespace lwq {
namespace text {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

torch::jit::Method method_of(torch::jit::Module& model, const std::string& name) {
  const auto m = model.find_method(name);
  TORCH_CHECK(m.has_value(), "the model has no method '", name, "': generation needs init_cache and forward_cached ",
              "(docs/model-contract.md; python3 -m lwq.export writes such models)");
  return *m;
}

at::Tensor cached_logits(torch::jit::Method& forward_cached, const at::Tensor& ids, int64_t start_pos,
                         const c10::IValue& cache) {
  const c10::IValue out = forward_cached({ids, start_pos, cache});
  TORCH_CHECK(out.isTensor(), "forward_cached must return logits [batch, length, vocab], got ", out.tagKind());
  const at::Tensor logits = out.toTensor();
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == 1 && logits.size(1) == ids.size(1),
              "forward_cached gave logits of shape ", logits.sizes(), " for tokens of shape ", ids.sizes());
  return logits;
}

std::vector<float> row_of(const at::Tensor& logits, int64_t t) {
  const at::Tensor row = logits[0][t].to(at::kFloat).contiguous();
  const float* p = row.data_ptr<float>();
  return std::vector<float>(p, p + row.numel());
}

}  // namespace

Sampler::Sampler(double temperature, int64_t top_k, double top_p, uint64_t seed)
    : temperature_(temperature), top_k_(top_k), top_p_(top_p), state_(seed) {
  TORCH_CHECK(temperature >= 0 && std::isfinite(temperature), "temperature must be >= 0, got ", temperature);
  TORCH_CHECK(top_k >= 0, "top-k must be >= 0 (0: all tokens), got ", top_k);
  TORCH_CHECK(std::isfinite(top_p), "top-p must be a number, got ", top_p);
  TORCH_CHECK(seed != 0, "the sampling seed must be nonzero (xorshift stays at 0 forever)");
}

uint32_t Sampler::random_u32() {
  // xorshift64*, as run.c's random_u32.
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return static_cast<uint32_t>((state_ * 0x2545F4914F6CDD1DULL) >> 32);
}

float Sampler::random_f32() { return static_cast<float>(random_u32() >> 8) / 16777216.0f; }

int64_t Sampler::argmax(const std::vector<float>& logits) {
  TORCH_CHECK(!logits.empty(), "argmax of empty logits");
  return std::max_element(logits.begin(), logits.end()) - logits.begin();  // first of equal maxima
}

int64_t Sampler::next(std::vector<float>& logits) {
  if (temperature_ == 0.0) return argmax(logits);
  const int64_t n = static_cast<int64_t>(logits.size());
  TORCH_CHECK(n > 0, "sampling from empty logits");
  if (top_k_ > 0 && top_k_ < n) return next_top_k(logits);
  // Softmax of logits / temperature, in float as run.c.
  const float inv_t = static_cast<float>(1.0 / temperature_);
  for (float& x : logits) x *= inv_t;
  const float top = *std::max_element(logits.begin(), logits.end());
  float sum = 0.0f;
  for (float& x : logits) {
    x = std::exp(x - top);
    sum += x;
  }
  for (float& x : logits) x /= sum;
  const float coin = random_f32();
  if (top_p_ <= 0.0 || top_p_ >= 1.0) {
    float cdf = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      cdf += logits[i];
      if (coin < cdf) return i;
    }
    return n - 1;  // rounding left the cdf below the coin
  }
  // Nucleus: the most probable tokens until their mass exceeds top_p. Tokens below (1 - top_p) / (n - 1) cannot
  // be among them, so they are dropped before sorting.
  const float cutoff = n > 1 ? static_cast<float>((1.0 - top_p_) / static_cast<double>(n - 1)) : 0.0f;
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    if (logits[i] >= cutoff) kept.push_back(i);
  }
  std::stable_sort(kept.begin(), kept.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  float mass = 0.0f;
  size_t last = kept.size() - 1;
  for (size_t i = 0; i < kept.size(); ++i) {
    mass += logits[kept[i]];
    if (mass > top_p_) {
      last = i;
      break;
    }
  }
  const float r = coin * mass;
  float cdf = 0.0f;
  for (size_t i = 0; i <= last; ++i) {
    cdf += logits[kept[i]];
    if (r < cdf) return kept[i];
  }
  return kept[last];
}

int64_t Sampler::next_top_k(std::vector<float>& logits) {
  // The k largest logits (ties: lower id, as argmax), so that top-k 1 is greedy whatever the temperature.
  std::vector<int64_t> kept(logits.size());
  std::iota(kept.begin(), kept.end(), 0);
  std::partial_sort(kept.begin(), kept.begin() + top_k_, kept.end(), [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  kept.resize(static_cast<size_t>(top_k_));
  // Softmax over the kept tokens (the renormalised top-k distribution), in float as run.c.
  const float inv_t = static_cast<float>(1.0 / temperature_);
  const float top = logits[kept[0]] * inv_t;
  std::vector<float> p(kept.size());
  float sum = 0.0f;
  for (size_t i = 0; i < kept.size(); ++i) {
    p[i] = std::exp(logits[kept[i]] * inv_t - top);
    sum += p[i];
  }
  for (float& x : p) x /= sum;
  const float coin = random_f32();
  // Nucleus of the kept tokens, already most probable first.
  size_t last = kept.size() - 1;
  float mass = 1.0f;
  if (top_p_ > 0.0 && top_p_ < 1.0) {
    mass = 0.0f;
    for (size_t i = 0; i < kept.size(); ++i) {
      mass += p[i];
      if (mass > top_p_) {
        last = i;
        break;
      }
    }
  }
  const float r = coin * mass;
  float cdf = 0.0f;
  for (size_t i = 0; i <= last; ++i) {
    cdf += p[i];
    if (r < cdf) return kept[i];
  }
  return kept[last];  // rounding left the cdf below r
}

GenerateResult generate(torch::jit::Module& model, const std::vector<int64_t>& prompt, int64_t max_seq_len,
                        const GenerateConfig& config, const std::function<void(int64_t, int64_t)>& on_token) {
  TORCH_CHECK(!prompt.empty(), "generate: the prompt needs at least one token (BOS)");
  int64_t steps = config.steps;
  if (max_seq_len > 0 && (steps <= 0 || steps > max_seq_len)) steps = max_seq_len;  // as run.c clamps
  TORCH_CHECK(steps > 0, "generate: give the number of steps: the model does not say its maximum sequence length");
  const int64_t n = static_cast<int64_t>(prompt.size());
  // run.c would print the first `steps` prompt tokens and stop: a cut the user would not see.
  const bool model_bound = max_seq_len > 0 && (config.steps <= 0 || config.steps >= max_seq_len);
  TORCH_CHECK(n <= steps, "generate: the prompt is ", n, " tokens long (BOS included), more than ",
              model_bound ? "the model's maximum of " : "--steps ", steps, " positions; shorten the prompt",
              model_bound ? "" : " or give more --steps");
  Sampler sampler(config.temperature, config.top_k, config.top_p, config.seed);
  torch::jit::Method init_cache = method_of(model, "init_cache");
  torch::jit::Method forward_cached = method_of(model, "forward_cached");
  const at::NoGradGuard no_grad;

  GenerateResult result;
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  const c10::IValue cache = init_cache({int64_t{1}, steps});
  TORCH_CHECK(cache.isList(), "init_cache must return a list of tensors, got ", cache.tagKind());

  // The prompt in one call (run.c feeds it one position at a time; the logits are the same up to rounding).
  at::Tensor ids = at::empty({1, n}, at::kLong);
  std::copy(prompt.begin(), prompt.end(), ids.data_ptr<int64_t>());
  auto t = Clock::now();
  at::Tensor logits = cached_logits(forward_cached, ids, 0, cache);
  result.prefill_seconds = seconds_since(t);
  result.positions = n;

  auto emit = [&](int64_t prev, int64_t token) {
    result.tokens.push_back(token);
    if (on_token) on_token(prev, token);
  };
  // Prompt tokens are forced at positions 0 .. n - 2.
  for (int64_t i = 1; i < n; ++i) {
    if (prompt[i] == config.special.bos) {
      result.stop = "bos";
      return result;
    }
    emit(prompt[i - 1], prompt[i]);
  }
  if (config.max_tokens == 0) {
    result.stop = "max_tokens";
    return result;
  }
  int64_t prev = prompt[n - 1];
  int64_t pos = n;
  std::vector<float> row = row_of(logits, n - 1);
  while (true) {
    const int64_t next = sampler.next(row);
    const bool eos = std::find(config.special.eos.begin(), config.special.eos.end(), next) != config.special.eos.end();
    if (next == config.special.bos || (config.stop_at_eos && eos)) {
      result.stop = next == config.special.bos ? "bos" : "eos";
      break;
    }
    emit(prev, next);
    ++result.generated;
    if (result.generated == config.max_tokens) {
      result.stop = "max_tokens";
      break;
    }
    if (pos >= steps) {
      result.stop = "steps";
      break;
    }
    ids = at::full({1, 1}, next, at::kLong);
    const LinearOpStats linear_before = linear_op_stats();
    t = Clock::now();
    logits = cached_logits(forward_cached, ids, pos, cache);
    result.decode_seconds += seconds_since(t);
    result.decode_linear_seconds += linear_op_stats().seconds - linear_before.seconds;
    ++result.decode_forwards;
    ++pos;
    prev = next;
    row = row_of(logits, 0);
  }
  result.positions = pos;
  return result;
}

GenerateResult generate_text(const GenerateTextConfig& config, std::ostream& out) {
  TORCH_CHECK(!config.model_path.empty(), "generate: no model given");
  TORCH_CHECK(!config.tokenizer_path.empty(), "generate: no tokenizer given");
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(config.tokenizer_path);
  torch::jit::Module model = load_model(config.model_path, config.weights_path);
  const std::vector<int64_t> prompt = tokenizer->encode(config.prompt, /*bos=*/true, /*eos=*/false);
  TORCH_CHECK(!prompt.empty(), "generate: the prompt is empty and the tokenizer has no BOS to start from");
  GenerateConfig generate_config = config.generate;
  generate_config.special = tokenizer->special();
  // llama2.c's tokenizer prints what run.c prints (piece by piece through safe_printf, which drops lone bytes);
  // every other format streams complete UTF-8 text.
  const auto* run_c = dynamic_cast<const Llama2cTokenizer*>(tokenizer.get());
  auto print = [&](int64_t prev, int64_t token, StreamDecoder& stream) {
    out << (run_c ? Llama2cTokenizer::printable(run_c->decode_piece(prev, token)) : stream.push(token));
    out.flush();
  };
  // generate() emits the tokens after the first: a first token that is not BOS (a tokenizer without one) is text
  // too, printed here.
  const bool starts_with_bos = prompt.front() == tokenizer->special().bos;
  StreamDecoder stream(*tokenizer, starts_with_bos ? std::vector<int64_t>{prompt.front()} : std::vector<int64_t>{});
  if (!starts_with_bos) print(prompt.front(), prompt.front(), stream);
  const GenerateResult result =
      generate(model, prompt, model_max_seq_len(model, config.model_path), generate_config,
               [&](int64_t prev, int64_t token) { print(prev, token, stream); });
  out << (run_c ? "" : stream.finish()) << "\n";
  out.flush();
  return result;
}

}  // namespace text
}  // namespace lwq
