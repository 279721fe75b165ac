// The thread pool of lwq's linear operators (torch-free): chunks of one range of work handed out one at a time
// from a shared counter, to the calling thread and to pool threads that are running.
//
// Why not at::parallel_for: on this libtorch it is an OpenMP region with a static split of the range and a barrier
// at its end, so a region lasts as long as its slowest thread. On a machine whose cores are shared with other
// processes a thread is often not running when a region starts or is preempted in it; the whole call then waits
// for the scheduler to give it a core back (milliseconds, for a call that should take 0.2 ms). Here the caller
// starts on the work at once; a pool thread that wakes late finds the chunks taken and the call already over, and
// the caller never waits for a thread that has not claimed a chunk. It waits only for chunks in progress.
// Pool threads spin briefly after a call (the next linear of a forward usually comes within tens of microseconds)
// and then sleep on a condition variable, so an idle pool costs no CPU.
//
// Results must not depend on which thread runs a chunk (the kernels' outputs are computed in a fixed order per
// output, whatever the split). fn must not throw: an exception escaping it terminates the process.
#pragma once

#include <cstdint>

namespace lwq {

// The number of threads the linear operators use: the last set_linear_op_threads(n > 0), else
// at::get_num_threads() (the intra-op setting, which torch.set_num_threads sets); at most 64.
int64_t linear_op_threads();
// n > 0: the linear operators use n threads whatever libtorch's own setting (`lwq generate` runs libtorch's small
// ops on fewer threads than the linears); 0: follow at::get_num_threads() again. For the whole process.
void set_linear_op_threads(int64_t n);

using ChunkFn = void (*)(void* ctx, int64_t begin, int64_t end);

// Calls fn(ctx, b, e) for consecutive chunks [b, e) of [0, n), each of `chunk` items (the last may be shorter),
// on the calling thread and at most threads - 1 pool threads, and returns when every chunk is done. Runs
// everything on the calling thread when threads <= 1, there is one chunk, the call is made from inside an
// at::parallel_for region or a pool thread, or another thread is using the pool at the time.
void run_chunks(int64_t n, int64_t chunk, int64_t threads, ChunkFn fn, void* ctx);

// The same with a callable f(begin, end).
template <class F>
void parallel_chunks(int64_t n, int64_t chunk, int64_t threads, const F& f) {
  run_chunks(
      n, chunk, threads, [](void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// The chunk size (in tiles) for a split of n_tiles over `threads`: about 8 chunks per thread, so that a thread that
// falls behind leaves little to wait for, but at least `min_chunk` tiles (the kernels' fast loops work on groups of
// tiles, and each claim costs a contended atomic), and a multiple of min_chunk.
int64_t tile_chunk(int64_t n_tiles, int64_t threads, int64_t min_chunk = 8);

}  // namespace lwq
