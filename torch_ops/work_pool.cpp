#include "work_pool.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>

namespace lwq {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kMaxThreads = 64;
// How long a pool thread spins for the next call before it sleeps, and how long the caller spins for chunks in
// progress before it yields its core between checks.
constexpr auto kWorkerSpin = std::chrono::microseconds(100);
constexpr auto kCallerSpin = std::chrono::microseconds(50);

// The claim word: generation (32 bits) | number of chunks (16 bits) | next chunk (16 bits). One compare-and-swap
// claims a chunk of the current call; a thread holding an older generation cannot claim anything.
constexpr int64_t kMaxChunks = 0xFFFF;
uint64_t pack(uint32_t gen, int64_t n_chunks, int64_t next) {
  return (uint64_t{gen} << 32) | (static_cast<uint64_t>(n_chunks) << 16) | static_cast<uint64_t>(next);
}
uint32_t gen_of(uint64_t w) { return static_cast<uint32_t>(w >> 32); }
int64_t chunks_of(uint64_t w) { return static_cast<int64_t>((w >> 16) & 0xFFFF); }
int64_t next_of(uint64_t w) { return static_cast<int64_t>(w & 0xFFFF); }

thread_local bool t_in_pool = false;

class Pool {
 public:
  // false when another thread holds the pool (the caller then runs the work itself).
  bool run(int64_t n, int64_t chunk, int64_t threads, ChunkFn fn, void* ctx) {
    std::unique_lock<std::mutex> call(call_mu_, std::try_to_lock);
    if (!call.owns_lock()) return false;
    ensure_threads(threads - 1);
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    chunk_ = chunk;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    helpers_ = threads - 1;
    done_.store(0, std::memory_order_relaxed);
    const uint32_t gen = ++gen_;
    claim_.store(pack(gen, n_chunks, 0), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(sleep_mu_);
      sleep_cv_.notify_all();
    }
    work(gen);
    // Only chunks that were claimed and are still running are waited for.
    const auto t0 = Clock::now();
    for (int64_t spins = 0; done_.load(std::memory_order_acquire) != n_chunks; ++spins) {
      if ((spins & 63) == 63 && Clock::now() - t0 > kCallerSpin) {
        sched_yield();
      } else {
        _mm_pause();
      }
    }
    return true;
  }

 private:
  // Claims and runs chunks of generation gen until none is left.
  void work(uint32_t gen) noexcept {
    uint64_t w = claim_.load(std::memory_order_acquire);
    while (gen_of(w) == gen && next_of(w) < chunks_of(w)) {
      if (!claim_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      // The chunk is ours: the call cannot end (nor the fields change) before done_ counts it.
      const int64_t b = next_of(w) * chunk_;
      fn_(ctx_, b, std::min(n_, b + chunk_));
      done_.fetch_add(1, std::memory_order_acq_rel);
      w = claim_.load(std::memory_order_acquire);
    }
  }

  void ensure_threads(int64_t helpers) {
    while (static_cast<int64_t>(threads_.size()) < helpers) {
      const int64_t index = static_cast<int64_t>(threads_.size());
      threads_.emplace_back([this, index] { loop(index); });
    }
  }

  void loop(int64_t index) {
    t_in_pool = true;
    uint32_t seen = gen_of(claim_.load(std::memory_order_acquire));
    while (true) {
      uint32_t gen = gen_of(claim_.load(std::memory_order_acquire));
      const auto t0 = Clock::now();
      for (int64_t spins = 0; gen == seen; ++spins) {
        if ((spins & 63) == 63 && Clock::now() - t0 > kWorkerSpin) {
          std::unique_lock<std::mutex> lk(sleep_mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          sleep_cv_.wait(lk, [&] {
            return gen_of(claim_.load(std::memory_order_seq_cst)) != seen;
          });
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        } else {
          _mm_pause();
        }
        gen = gen_of(claim_.load(std::memory_order_acquire));
      }
      seen = gen;
      // helpers_ belongs to generation gen only while a chunk of it is unclaimed; work() re-checks the generation
      // on each claim, so a stale read here can only make this thread skip a call or look at one that is over.
      if (index < helpers_.load(std::memory_order_relaxed)) work(gen);
    }
  }

  std::mutex call_mu_;
  std::vector<std::thread> threads_;
  ChunkFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> helpers_{0};
  uint32_t gen_ = 0;
  alignas(64) std::atomic<uint64_t> claim_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<int64_t> sleepers_{0};
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
};

Pool& pool() {
  // Never destroyed, its threads never joined: they may be spinning or asleep when the process exits.
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

std::atomic<int64_t> g_linear_threads{0};

void set_linear_op_threads(int64_t n) { g_linear_threads.store(std::max<int64_t>(0, n), std::memory_order_relaxed); }

int64_t linear_op_threads() {
  int64_t n = g_linear_threads.load(std::memory_order_relaxed);
  if (n == 0) n = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(kMaxThreads, n));
}

int64_t tile_chunk(int64_t n_tiles, int64_t threads, int64_t min_chunk) {
  const int64_t target = (n_tiles + 8 * threads - 1) / (8 * threads);
  int64_t chunk = std::max(min_chunk, (target + min_chunk - 1) / min_chunk * min_chunk);
  // The claim word counts at most kMaxChunks chunks.
  while ((n_tiles + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  return chunk;
}

void run_chunks(int64_t n, int64_t chunk, int64_t threads, ChunkFn fn, void* ctx) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  while ((n + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  threads = std::min(threads, (n + chunk - 1) / chunk);
  threads = std::min(threads, kMaxThreads);
  if (threads <= 1 || t_in_pool || at::in_parallel_region() || !pool().run(n, chunk, threads, fn, ctx)) {
    fn(ctx, 0, n);
  }
}

}  // namespace lwq
