// Time spent inside lwq's packed linear operators (woq_linear, woq_linear_a8, w8a8_linear), so that a caller can
// tell how much of a model's forward is the quantized linears and how much everything else (`lwq generate`
// reports the share for its decode steps). Always on: two steady_clock reads and two relaxed atomic adds per call,
// about 50 ns against the >= 10 us of a real linear. Calls made concurrently from several threads all add up, so
// the sum can then exceed the wall time.
#pragma once

#include <chrono>
#include <cstdint>

namespace lwq {

struct LinearOpStats {
  int64_t calls = 0;
  double seconds = 0;
};

// Totals since the library was loaded; subtract two readings to time a stretch.
LinearOpStats linear_op_stats();

namespace detail {
void add_linear_op_time(int64_t nanoseconds);
}  // namespace detail

// Adds its lifetime to linear_op_stats() (one per operator call, at its top).
class LinearOpTimer {
 public:
  LinearOpTimer() : start_(std::chrono::steady_clock::now()) {}
  ~LinearOpTimer() {
    detail::add_linear_op_time(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count());
  }
  LinearOpTimer(const LinearOpTimer&) = delete;
  LinearOpTimer& operator=(const LinearOpTimer&) = delete;

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace lwq
