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

// Runs tests/python/fixtures/<script> --seed SEED --out DIR with CMake's LWQ_PYTHON (Debian's, with torch);
// true when it succeeded. Not a reason to skip: the fixtures need only what scripts/setup.sh installs.
inline bool run_python_fixture(const std::string& script, int seed, const std::string& dir) {
  const std::string cmd = std::string(LWQ_PYTHON) + " " LWQ_SOURCE_DIR "/tests/python/fixtures/" + script +
                          " --seed " + std::to_string(seed) + " --out " + dir + " > /dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

}  // namespace test
}  // namespace lwq
