// Small helpers shared by the C++ tests.
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace lwq {
namespace test {

// Runs f and expects a c10::Error whose message contains `needle`.
template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing: " << needle;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(needle), std::string::npos) << "error message: " << msg << "\nexpected to contain: " << needle;
  }
}

// ../shared/data next to the source tree, or "" when it is absent.
inline std::string shared_data_dir() {
  const std::string dir = std::string(LWQ_SOURCE_DIR) + "/../shared/data";
  return std::getenv("LWQ_NO_SHARED_DATA") ? "" : dir;
}

}  // namespace test
}  // namespace lwq
