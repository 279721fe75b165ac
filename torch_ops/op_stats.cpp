#include "op_stats.h"

#include <atomic>

namespace lwq {

namespace {
std::atomic<int64_t> g_calls{0};
std::atomic<int64_t> g_nanoseconds{0};
}  // namespace

LinearOpStats linear_op_stats() {
  LinearOpStats s;
  s.calls = g_calls.load(std::memory_order_relaxed);
  s.seconds = static_cast<double>(g_nanoseconds.load(std::memory_order_relaxed)) * 1e-9;
  return s;
}

namespace detail {
void add_linear_op_time(int64_t nanoseconds) {
  g_calls.fetch_add(1, std::memory_order_relaxed);
  g_nanoseconds.fetch_add(nanoseconds, std::memory_order_relaxed);
}
}  // namespace detail

}  // namespace lwq
