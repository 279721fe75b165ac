// The linear operators' thread pool (torch_ops/work_pool.h): every item exactly once whatever the chunking, thread
// count or concurrent callers, and the operators' results bit-identical for 1, 2 and 3 threads on shapes that cut
// into many chunks with ragged ends.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "ops.h"
#include "work_pool.h"

namespace lwq {
namespace {

class ThreadsGuard {
 public:
  ThreadsGuard() : saved_(at::get_num_threads()) {}
  ~ThreadsGuard() { at::set_num_threads(saved_); }

 private:
  int saved_;
};

// Runs [0, n) in chunks and checks that every item was visited once, by contiguous in-range chunks.
void expect_each_item_once(int64_t n, int64_t chunk, int64_t threads) {
  std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
  for (auto& s : seen) s = 0;
  std::atomic<int64_t> bad_range{0};
  parallel_chunks(n, chunk, threads, [&](int64_t b, int64_t e) {
    if (b < 0 || e > n || b >= e) ++bad_range;
    for (int64_t i = b; i < e; ++i) seen[static_cast<size_t>(i)]++;
  });
  EXPECT_EQ(bad_range.load(), 0);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(seen[static_cast<size_t>(i)].load(), 1) << "n " << n << " chunk " << chunk << " threads " << threads
                                                       << ": item " << i;
}

TEST(WorkPool, EveryItemExactlyOnce) {
  for (int64_t threads : {1, 2, 3, 5})
    for (int64_t n : {1, 2, 7, 8, 9, 63, 64, 65, 1000, 4097})
      for (int64_t chunk : {1, 3, 8, 64, 5000}) expect_each_item_once(n, chunk, threads);
  // More chunks than the claim word counts: the chunk grows, every item still once.
  expect_each_item_once(200000, 1, 2);
  // Many calls in a row (pool threads asleep, spinning, or late for a call that is over).
  for (int rep = 0; rep < 2000; ++rep) expect_each_item_once(37 + rep % 50, 4, 3);
}

TEST(WorkPool, ConcurrentAndNestedCallersEachGetAllTheirItems) {
  std::vector<std::thread> callers;
  std::atomic<int64_t> failures{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&, c] {
      for (int rep = 0; rep < 200; ++rep) {
        const int64_t n = 100 + 17 * c + rep;
        std::atomic<int64_t> sum{0};
        parallel_chunks(n, 7, 3, [&](int64_t b, int64_t e) {
          // A nested call runs on the calling thread.
          parallel_chunks(e - b, 2, 3, [&](int64_t bb, int64_t ee) {
            for (int64_t i = b + bb; i < b + ee; ++i) sum += i;
          });
        });
        if (sum.load() != n * (n - 1) / 2) ++failures;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(WorkPool, TileChunks) {
  EXPECT_EQ(tile_chunk(512, 2), 32);    // 4096 outputs: 16 chunks
  EXPECT_EQ(tile_chunk(10, 2), 8);      // at least 8 tiles
  EXPECT_EQ(tile_chunk(1792, 2) % 8, 0);
  EXPECT_LE((1000000 + tile_chunk(1000000, 1) - 1) / tile_chunk(1000000, 1), 0xFFFF);
}

struct OpCase {
  std::string what;
  at::Tensor x, bias;
  PackedWeightPtr w;
};

// Shapes whose tiles make many chunks with a ragged last tile (N % 8 != 0) and ragged K, at the decode path
// (M < 12), the blocked path, and few tiles with many rows (rows cut into chunks).
std::vector<OpCase> op_cases(const std::vector<std::string>& dtypes, int64_t group) {
  at::manual_seed(31337);
  const std::vector<std::array<int64_t, 3>> shapes = {{1, 1000, 300}, {1, 4100, 136}, {3, 777, 200},
                                                      {12, 520, 130}, {40, 24, 96},  {100, 2057, 64}};
  std::vector<OpCase> cases;
  for (const std::string& dtype : dtypes)
    for (const auto& s : shapes) {
      OpCase c;
      c.what = dtype + " M " + std::to_string(s[0]) + " N " + std::to_string(s[1]) + " K " + std::to_string(s[2]);
      const at::Tensor weight = at::randn({s[1], s[2]});
      c.w = quantize_weight(weight, dtype, dtype == "int8" ? -1 : group, dtype != "int4");
      c.x = at::randn({s[0], s[2]});
      c.bias = at::randn({s[1]});
      cases.push_back(c);
    }
  return cases;
}

template <class Op>
void expect_thread_invariant(const std::vector<OpCase>& cases, const Op& op) {
  const ThreadsGuard guard;
  for (const OpCase& c : cases) {
    at::set_num_threads(1);
    const at::Tensor y1 = op(c);
    for (int threads : {2, 3}) {
      at::set_num_threads(threads);
      for (int rep = 0; rep < 3; ++rep)
        EXPECT_TRUE(op(c).equal(y1)) << c.what << ": " << threads << " threads differ from 1";
    }
  }
}

TEST(WorkPool, WoqLinearIsThreadInvariantOnManyChunks) {
  expect_thread_invariant(op_cases({"int4", "int8", "int3", "nf4", "int2"}, 32),
                          [](const OpCase& c) { return woq_linear(c.x, c.w, c.bias); });
}

TEST(WorkPool, WoqLinearA8IsThreadInvariantOnManyChunks) {
  expect_thread_invariant(op_cases({"int4", "int8"}, 64),
                          [](const OpCase& c) { return woq_linear_a8(c.x, c.w, c.bias); });
}

TEST(WorkPool, W8a8LinearIsThreadInvariantOnManyChunks) {
  expect_thread_invariant(op_cases({"int8"}, -1), [](const OpCase& c) {
    return w8a8_linear(c.x, c.w, 0.05, 128, c.bias, "uint8");
  });
}

TEST(WorkPool, OperatorsCalledFromSeveralThreadsAtOnceGiveTheSingleThreadBits) {
  const ThreadsGuard guard;
  const std::vector<OpCase> cases = op_cases({"int4"}, 128);
  at::set_num_threads(1);
  std::vector<at::Tensor> want;
  for (const OpCase& c : cases) want.push_back(woq_linear(c.x, c.w, c.bias));
  at::set_num_threads(2);
  std::atomic<int64_t> mismatches{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t)
    callers.emplace_back([&] {
      at::set_num_threads(2);  // the intra-op setting is per thread on this libtorch
      for (int rep = 0; rep < 5; ++rep)
        for (size_t i = 0; i < cases.size(); ++i)
          if (!woq_linear(cases[i].x, cases[i].w, cases[i].bias).equal(want[i])) ++mismatches;
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace lwq
