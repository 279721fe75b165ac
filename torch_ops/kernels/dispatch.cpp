// Runtime CPU feature check: AVX2 kernels are compiled into every build and chosen only where they can run.
#include "format.h"

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

}  // namespace kernels
}  // namespace lwq
