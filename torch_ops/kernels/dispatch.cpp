// Runtime CPU feature checks: AVX2 (and AVX-VNNI, AVX-512) kernels are compiled into every build and chosen only
// where they can run.
#include "format.h"
#include "woq_a8.h"
#include "woq_gemm_avx2.h"

#include <cstdlib>

namespace lwq {
namespace kernels {

namespace {

// True when the environment variable is set to anything but "" or "0".
bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && *v != '0';
}

}  // namespace

bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    if (env_set("LWQ_FORCE_REF")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return ok;
}

bool cpu_has_avx_vnni() {
  static const bool ok =
      cpu_has_avx2_fma() && !env_set("LWQ_NO_VNNI") && __builtin_cpu_supports("avxvnni") != 0;
  return ok;
}

// __builtin_cpu_supports also checks that the OS saves the 512-bit state (XCR0).
bool cpu_has_avx512() {
  static const bool ok = cpu_has_avx2_fma() && !env_set("LWQ_NO_AVX512") && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vl");
  return ok;
}

bool cpu_has_avx512_vnni() {
  static const bool ok = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
  return ok;
}

}  // namespace kernels
}  // namespace lwq
