// Evaluation and generation on the tiny contract Llama of tests/python/fixtures/tiny_llama.py (whose reference.json holds
// what the eager Python model gives), plus batching, sampling, step semantics and error paths.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>

#include "lwq/io/safetensors.h"
#include "lwq/text/evaluate.h"
#include "lwq/text/llama2c_tokenizer.h"
#include "lwq/text/generate.h"
#include "lwq/text/load_model.h"
#include "test_util.h"

namespace lwq {
namespace {

namespace fs = std::filesystem;
using text::GenerateConfig;
using text::Sampler;
using test::expect_error;
using text::Llama2cTokenizer;
using Tokenizer = text::Llama2cTokenizer;

class TinyLlama : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((fs::temp_directory_path() / ("lwq_eval_" + std::to_string(::getpid()))).string());
    ok_ = test::run_python_fixture("tiny_llama.py", 4, *dir_);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
  }
  void SetUp() override {
    ASSERT_TRUE(ok_) << "tests/python/fixtures/tiny_llama.py did not run (" LWQ_PYTHON " with torch needed)";
    std::ifstream in(path("reference.json"));
    ref_ = nlohmann::json::parse(in);
  }
  static std::string path(const std::string& name) { return *dir_ + "/" + name; }
  static torch::jit::Module model() { return text::load_model(path("model.pt"), path("model.safetensors")); }
  static Tokenizer tokenizer() { return Tokenizer::load(path("tokenizer.bin")); }
  text::EvalConfig eval_config() const {
    text::EvalConfig c;
    c.model_path = path("model.pt");
    c.weights_path = path("model.safetensors");
    c.tokenizer_path = path("tokenizer.bin");
    c.text_path = path("text.txt");
    return c;
  }

  static std::string* dir_;
  static bool ok_;
  nlohmann::json ref_;
};
std::string* TinyLlama::dir_ = nullptr;
bool TinyLlama::ok_ = false;

TEST_F(TinyLlama, ReadsSegmentsAsThePythonReference) {
  // CRLF line ends, a separator line holding spaces and a tab, runs of blank lines, non-ASCII text.
  const auto segments = text::read_segments(path("text.txt"));
  EXPECT_EQ(segments, ref_["segments"].get<std::vector<std::string>>());
  EXPECT_EQ(text::read_segments(path("text.txt"), 2),
            std::vector<std::string>(segments.begin(), segments.begin() + 2));
  std::ofstream(path("bad.txt"), std::ios::binary) << "fine\n\nbad \xC3\x28 byte\n";
  expect_error([&] { text::read_segments(path("bad.txt")); }, "bad.txt: not valid UTF-8 at byte 10 (line 3)");
  expect_error([&] { text::read_segments(path("absent.txt")); }, "absent.txt: cannot open");
}

TEST_F(TinyLlama, MeanNllMatchesTheEagerPythonModel) {
  for (const int64_t seq_len : {0, 8}) {  // 0: the model's max_seq_len (64)
    text::EvalConfig c = eval_config();
    c.seq_len = seq_len;
    const auto r = text::evaluate_text(c);
    const std::string key = std::to_string(seq_len == 0 ? 64 : seq_len);
    EXPECT_EQ(r.seq_len, seq_len == 0 ? 64 : seq_len);
    EXPECT_EQ(r.segments, 4);
    EXPECT_EQ(r.tokens, ref_["tokens_seq_len_" + key].get<int64_t>());
    EXPECT_NEAR(r.nll, ref_["nll_seq_len_" + key].get<double>(), 1e-5 * r.nll) << "seq_len " << key;
    EXPECT_NEAR(r.total_nll / r.tokens, r.nll, 1e-12);
  }
}

TEST_F(TinyLlama, BatchingAndPaddingDoNotChangeTheResult) {
  const Tokenizer tok = tokenizer();
  auto sequences = text::eval_sequences(tok, text::read_segments(path("text.txt")), 64);
  sequences.push_back({Tokenizer::kBos});  // predicts nothing
  sequences.push_back({});
  torch::jit::Module m = model();
  const auto alone = text::evaluate_nll(m, sequences, 1);  // one sequence per batch
  const auto together = text::evaluate_nll(m, sequences, 1 << 20);  // one padded batch
  EXPECT_EQ(alone.batches, 4);  // the two that predict nothing are skipped
  EXPECT_EQ(together.batches, 1);
  EXPECT_EQ(alone.tokens, together.tokens);
  EXPECT_EQ(alone.sequences, 6);
  EXPECT_NEAR(alone.nll, together.nll, 1e-5 * alone.nll);
  EXPECT_EQ(text::evaluate_nll(m, {{Tokenizer::kBos}}, 16).tokens, 0);
  // The embedding refuses the id inside the model; the message says which batch and ids.
  expect_error([&] { text::evaluate_nll(m, {{1, 5, 100000}}, 16); }, "shape [1, 3] (ids 1..100000)");
}

TEST(ChunkedWindows, CutsTheStreamIntoWholeWindowsWithBosFirst) {
  std::vector<int64_t> tokens(10);
  std::iota(tokens.begin(), tokens.end(), 100);
  auto c = text::chunked_windows(tokens, 4, 1);  // BOS + 3 text tokens each
  EXPECT_EQ(c.windows, (std::vector<std::vector<int64_t>>{{1, 100, 101, 102}, {1, 103, 104, 105}, {1, 106, 107, 108}}));
  EXPECT_EQ(c.tail_tokens, 1);
  c = text::chunked_windows(tokens, 4, -1);  // no BOS: 4 text tokens each
  EXPECT_EQ(c.windows, (std::vector<std::vector<int64_t>>{{100, 101, 102, 103}, {104, 105, 106, 107}}));
  EXPECT_EQ(c.tail_tokens, 2);
  c = text::chunked_windows({100, 101}, 4, 1);  // shorter than a window: none
  EXPECT_TRUE(c.windows.empty());
  EXPECT_EQ(c.tail_tokens, 2);
  EXPECT_EQ(text::chunked_score_from(7), 3);
  expect_error([] { text::chunked_windows({1, 2}, 1, -1); }, "window length must be at least 2");
}

TEST_F(TinyLlama, ScoringFromAnIndexLeavesOutTheEarlierPredictions) {
  torch::jit::Module m = model();
  const std::vector<int64_t> w = {1, 270, 280, 290, 300, 261, 275, 285};
  const auto all = text::evaluate_nll(m, {w}, 64);
  const auto head = text::evaluate_nll(m, {std::vector<int64_t>(w.begin(), w.begin() + 4)}, 64);
  const auto tail = text::evaluate_nll(m, {w, w}, 64, /*score_from=*/4);  // causal: the head's logits are the same
  EXPECT_EQ(tail.tokens, 2 * 4);
  EXPECT_NEAR(tail.total_nll, 2 * (all.total_nll - head.total_nll), 1e-4 * all.total_nll);
  int64_t calls = 0, last = -1;
  text::evaluate_nll(m, {w, {1, 2, 3}}, 8, 1, [&](int64_t done, int64_t total) {
    EXPECT_EQ(total, 2);
    last = done;
    ++calls;
  });
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(last, 2);
}

TEST(LengthBatches, GroupsShortestFirstWithinTheTokenBudget) {
  const std::vector<std::vector<int64_t>> seqs = {{1, 2, 3, 4, 5}, {1, 2, 3}, {1, 2, 3, 4, 5}, {1, 2}};
  // Sorted: 3 (2), 1 (3), 0 (5), 2 (5); padded sizes 2*3 = 6 fit in 10, 3*5 does not, 2*5 = 10 does.
  EXPECT_EQ(text::length_batches(seqs, 10), (std::vector<std::vector<size_t>>{{3, 1}, {0, 2}}));
  EXPECT_EQ(text::length_batches(seqs, 1).size(), 4u);  // longer than the budget: alone
  expect_error([&] { text::length_batches(seqs, 0); }, "tokens per batch must be positive");
}

TEST_F(TinyLlama, GreedyGenerationMatchesRunCLoopInPython) {
  const Tokenizer tok = tokenizer();
  torch::jit::Module m = model();
  const auto& g = ref_["greedy"];
  GenerateConfig config;
  config.steps = g["steps"].get<int64_t>();
  config.stop_at_eos = false;  // the Python loop is run.c's, which stops only at BOS
  const auto prompt = tok.encode(g["prompt"].get<std::string>(), true, false);
  const auto r = text::generate(m, prompt, text::model_max_seq_len(m, path("model.pt")), config);
  EXPECT_EQ(r.tokens, g["tokens"].get<std::vector<int64_t>>());
  EXPECT_EQ(r.prompt_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(r.stop, "steps");
  EXPECT_EQ(r.positions, config.steps);
  EXPECT_EQ(static_cast<int64_t>(r.tokens.size()), config.steps);
  EXPECT_EQ(r.generated, config.steps - r.prompt_tokens + 1);
  EXPECT_EQ(r.decode_forwards, config.steps - r.prompt_tokens);

  // The whole `lwq generate`: what run.c would print.
  text::GenerateTextConfig text_config;
  text_config.model_path = path("model.pt");
  text_config.weights_path = path("model.safetensors");
  text_config.tokenizer_path = path("tokenizer.bin");
  text_config.prompt = g["prompt"].get<std::string>();
  text_config.generate = config;
  std::ostringstream out;
  text::generate_text(text_config, out);
  EXPECT_EQ(out.str(), g["printed"].get<std::string>());
}

TEST_F(TinyLlama, StepsCountPositionsPromptIncluded) {
  torch::jit::Module m = model();
  const std::vector<int64_t> prompt = {1, 270, 280, 290, 300, 261};
  GenerateConfig config;
  // Fewer steps than the prompt (run.c would print prompt[1..3] and stop) or a prompt longer than the model's
  // positions: refused, naming both lengths, never cut.
  config.steps = 3;
  expect_error([&] { text::generate(m, prompt, 64, config); },
               "the prompt is 6 tokens long (BOS included), more than --steps 3 positions");
  config.steps = 0;
  expect_error([&] { text::generate(m, prompt, 5, config); }, "more than the model's maximum of 5 positions");
  config.steps = 6;  // exactly the prompt: its tokens after BOS, then one chosen token
  auto r = text::generate(m, prompt, 64, config);
  ASSERT_GE(r.tokens.size(), 5u);
  EXPECT_EQ(std::vector<int64_t>(r.tokens.begin(), r.tokens.begin() + 5), (std::vector<int64_t>{270, 280, 290, 300, 261}));
  EXPECT_LE(r.tokens.size(), 6u);
  // A BOS inside the prompt ends the text there, as in run.c.
  r = text::generate(m, {1, 270, 1, 280}, 64, config);
  EXPECT_EQ(r.tokens, std::vector<int64_t>{270});
  EXPECT_EQ(r.stop, "bos");
  // More steps than the model's maximum: clamped to it.
  config.steps = 1000;
  config.stop_at_eos = false;
  r = text::generate(m, {1}, 64, config);
  EXPECT_EQ(r.stop, "steps");  // this model happens never to choose BOS here
  EXPECT_EQ(r.positions, 64);
  EXPECT_EQ(r.tokens.size(), 64u);
  expect_error([&] { text::generate(m, {}, 64, config); }, "at least one token");
  // max_tokens counts chosen tokens after the prompt; the first limit reached ends generation.
  config.max_tokens = 4;
  r = text::generate(m, prompt, 64, config);
  EXPECT_EQ(r.generated, 4);
  EXPECT_EQ(r.stop, "max_tokens");
  EXPECT_EQ(r.tokens.size(), 5u + 4u);
  EXPECT_EQ(r.positions, 6 + 3);  // the last chosen token is not run
  config.steps = 8;
  r = text::generate(m, prompt, 64, config);
  EXPECT_EQ(r.generated, 3);  // positions 6, 7, 8 choose three tokens
  EXPECT_EQ(r.stop, "steps");
  config.max_tokens = 0;
  r = text::generate(m, prompt, 64, config);
  EXPECT_EQ(r.generated, 0);
  EXPECT_EQ(r.stop, "max_tokens");
  EXPECT_EQ(r.tokens.size(), 5u);
}

TEST_F(TinyLlama, SamplingIsSeededAndNarrowTopPIsGreedy) {
  torch::jit::Module m = model();
  const std::vector<int64_t> prompt = {1, 270};
  GenerateConfig greedy;
  greedy.steps = 24;
  greedy.stop_at_eos = false;
  const auto g = text::generate(m, prompt, 64, greedy);
  GenerateConfig sampled = greedy;
  sampled.temperature = 1.0;
  sampled.top_p = 1.0;
  sampled.seed = 42;
  const auto a = text::generate(m, prompt, 64, sampled);
  const auto b = text::generate(m, prompt, 64, sampled);
  EXPECT_EQ(a.tokens, b.tokens);
  sampled.seed = 43;
  EXPECT_NE(text::generate(m, prompt, 64, sampled).tokens, a.tokens);
  sampled.top_p = 1e-6;  // the nucleus holds the most probable token only
  EXPECT_EQ(text::generate(m, prompt, 64, sampled).tokens, g.tokens);
}

TEST(Sampler, FollowsTheDistributionAndValidatesItsSettings) {
  Sampler s(1.0, 0, 1.0, 7);
  int ones = 0;
  const int draws = 4000;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
    ones += s.next(logits) == 1;
  }
  EXPECT_NEAR(ones / static_cast<double>(draws), 0.75, 0.03);
  // Top-p 0.5 keeps only the 0.75 token.
  Sampler nucleus(1.0, 0, 0.5, 7);
  for (int i = 0; i < 100; ++i) {
    std::vector<float> logits = {0.0f, std::log(3.0f)};
    ASSERT_EQ(nucleus.next(logits), 1);
  }
  EXPECT_EQ(Sampler::argmax({1.0f, 3.0f, 3.0f, 2.0f}), 1);  // the first of equal maxima
  expect_error([] { Sampler(1.0, 0, 0.9, 0); }, "seed must be nonzero");
  expect_error([] { Sampler(-1.0, 0, 0.9, 1); }, "temperature must be >= 0");
  expect_error([] { Sampler(1.0, -1, 0.9, 1); }, "top-k must be >= 0");
}

TEST(Sampler, TopKKeepsTheMostProbableThenTopP) {
  std::vector<float> base(50);
  for (size_t i = 0; i < base.size(); ++i) base[i] = std::sin(static_cast<float>(i) * 1.7f) * 3.0f;
  const int64_t best = Sampler::argmax(base);
  // Top-k 1 is greedy at any temperature; top-k of the whole vocabulary (or more) is run.c's sampler, draw for draw.
  Sampler one(1.5, 1, 0.9, 5), all(0.8, 50, 0.9, 5), more(0.8, 1000, 0.9, 5), run_c(0.8, 0, 0.9, 5);
  std::vector<int64_t> top3(base.size());
  std::iota(top3.begin(), top3.end(), 0);
  std::sort(top3.begin(), top3.end(), [&](int64_t a, int64_t b) { return base[a] > base[b]; });
  top3.resize(3);
  Sampler three(1.0, 3, 1.0, 9);
  std::set<int64_t> seen;
  for (int i = 0; i < 300; ++i) {
    std::vector<float> a = base, b = base, c = base, d = base, e = base;
    ASSERT_EQ(one.next(a), best);
    const int64_t x = all.next(b);
    ASSERT_EQ(x, more.next(c));
    ASSERT_EQ(x, run_c.next(d));
    seen.insert(three.next(e));
  }
  EXPECT_EQ(seen, std::set<int64_t>(top3.begin(), top3.end()));  // all three drawn, nothing else
  // Top-p after top-k, on the renormalised k: p = 0.25, 0.75 of the two kept; 0.5 keeps only the larger.
  Sampler narrowed(1.0, 2, 0.5, 7);
  for (int i = 0; i < 100; ++i) {
    std::vector<float> logits = {0.0f, std::log(3.0f), -30.0f, -31.0f};
    ASSERT_EQ(narrowed.next(logits), 1);
  }
}

TEST_F(TinyLlama, LoadingRefusesMissingOrMisshapenWeights) {
  expect_error([&] { text::load_model(path("model.pt"), ""); },
               "parameter 'embed_tokens.weight' is empty (meta) in the model");
  expect_error([&] { text::load_model(path("nothing.pt"), ""); }, "nothing.pt is not a readable file");
  const io::WeightStore store(path("model.safetensors"));
  std::vector<std::pair<std::string, at::Tensor>> missing, misshapen;
  for (const auto& name : store.names()) {
    if (name != "layers.1.mlp.up_proj.weight") missing.emplace_back(name, store.load(name));
    misshapen.emplace_back(name, name == "norm.weight" ? at::ones({3}) : store.load(name));
  }
  io::write_safetensors(path("missing.safetensors"), missing);
  io::write_safetensors(path("misshapen.safetensors"), misshapen);
  expect_error([&] { text::load_model(path("model.pt"), path("missing.safetensors")); },
               "parameter 'layers.1.mlp.up_proj.weight' is empty (meta) in the model");
  expect_error([&] { text::load_model(path("model.pt"), path("misshapen.safetensors")); },
               "parameter 'norm.weight' has shape [32] in the model");
  torch::jit::Module m = model();
  EXPECT_EQ(text::model_max_seq_len(m, path("model.pt")), 64);
}

TEST(GenerateErrors, ModelsOutsideTheContractAreNamed) {
  torch::jit::Module m("NoCache");
  m.define(R"(
    def forward(self, input_ids: Tensor) -> Tensor:
        return input_ids.float()
  )");
  expect_error([&] { text::generate(m, {1}, 0, GenerateConfig{}); }, "the model has no method 'init_cache'");
  expect_error([&] { text::evaluate_nll(m, {{1, 2, 3}}, 16); }, "expected [batch, length, vocab]");
}

}  // namespace
}  // namespace lwq
