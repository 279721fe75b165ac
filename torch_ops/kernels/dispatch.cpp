// Runtime CPU feature checks: AVX2 (and AVX-VNNI, AVX-512) kernels are compiled into every build and chosen only
// where they can run.
#include "format.h"
#include "woq_a8.h"
#include "woq_gemm_avx2.h"

#include <cstdlib>

namespace lwq {
namespace kernels {

bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    const char* force_ref = std::getenv("LWQ_FORCE_REF");
    if (force_ref && *force_ref && *force_ref != '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return ok;
}

bool cpu_has_avx_vnni() {
  static const bool ok = [] {
    if (!cpu_has_avx2_fma()) return false;
    const char* no_vnni = std::getenv("LWQ_NO_VNNI");
    if (no_vnni && *no_vnni && *no_vnni != '0') return false;
    return __builtin_cpu_supports("avxvnni") != 0;
  }();
  return ok;
}

bool cpu_has_avx512() {
  static const bool ok = [] {
    if (!cpu_has_avx2_fma()) return false;
    const char* no = std::getenv("LWQ_NO_AVX512");
    if (no && *no && *no != '0') return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }();
  return ok;
}

bool cpu_has_avx512_vnni() {
  static const bool ok = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
  return ok;
}

}  // namespace kernels
}  // namespace lwq
