// The kernel table (dispatch.h): the CPU checks, one table per level built once from them, and the level in use
// (LWQ_CPU, or set_level). The only place that chooses between implementations.
#include "dispatch.h"

#include <cpuid.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace lwq {
namespace kernels {

namespace {

constexpr const char* kLevelNames[kNumLevels] = {"ref", "avx2", "avx_vnni", "avx512"};

// The reference ignores the path: it computes every output on its own.
void woq_gemm_ref_path(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                       int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath) {
  woq_gemm_ref(w, x, M, ldx, bias, y, ldy, tile_begin, tile_end);
}

KernelTable build(Level level) {
  const bool avx2 = level >= Level::Avx2 && cpu_has_avx2_fma();
  const bool vnni = level >= Level::AvxVnni && cpu_has_avx_vnni();
  const bool avx512 = level >= Level::Avx512 && cpu_has_avx512();
  const bool avx512_vnni = avx512 && cpu_has_avx512_vnni();
  KernelTable t{};
  t.level = std::min(level, cpu_level());
  t.woq_gemm = avx512 ? woq_gemm_avx512_path : avx2 ? woq_gemm_avx2_path : woq_gemm_ref_path;
  t.woq_a8_quantize = avx2 ? woq_a8_quantize_acts_avx2 : woq_a8_quantize_acts_ref;
  t.woq_a8_gemm = avx512_vnni ? woq_a8_gemm_avx512 : avx2 ? woq_a8_gemm_avx2 : woq_a8_gemm_ref;
  t.w8a8_quantize = avx2 ? w8a8_quantize_acts_avx2 : w8a8_quantize_acts_ref;
  t.w8a8_gemm = vnni ? w8a8_gemm_avx_vnni : avx2 ? w8a8_gemm_avx2 : w8a8_gemm_ref;
  return t;
}

struct Tables {
  KernelTable of[kNumLevels];
  Tables() {
    for (int i = 0; i < kNumLevels; ++i) of[i] = build(static_cast<Level>(i));
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

// True when the environment variable is set to anything but "" or "0".
bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

// The level LWQ_CPU asks for (clamped, with a warning), default cpu_level(). Warns about the retired variables
// (once: the result is kept in a static).
Level level_from_env() {
  static const struct {
    const char* name;
    const char* replacement;
  } kRetired[] = {{"LWQ_FORCE_REF", "LWQ_CPU=ref"},
                  {"LWQ_NO_AVX512", "LWQ_CPU=avx_vnni"},
                  {"LWQ_NO_VNNI", "LWQ_CPU=avx2 (which also turns AVX-512 off)"}};
  const char* v = std::getenv("LWQ_CPU");
  const Level asked = v && *v ? parse_level(v) : cpu_level();  // throws first: no warnings before the error
  for (const auto& r : kRetired)
    if (env_set(r.name))
      std::fprintf(stderr, "lwq: %s is no longer read and has no effect; use %s\n", r.name, r.replacement);
  if (asked > cpu_level())
    std::fprintf(stderr, "lwq: LWQ_CPU=%s, but this CPU supports up to %s; using %s\n", v,
                 level_name(cpu_level()), level_name(cpu_level()));
  return std::min(asked, cpu_level());
}

// The level table() uses. Read from the environment the first time (a throw leaves it unread, so the next call
// throws the same error); set_level overrides it.
std::atomic<int> g_level{-1};

int resolved_level() {
  int l = g_level.load(std::memory_order_acquire);
  if (l >= 0) return l;
  static const int from_env = static_cast<int>(level_from_env());
  int expected = -1;
  g_level.compare_exchange_strong(expected, from_env, std::memory_order_acq_rel);
  return g_level.load(std::memory_order_acquire);
}

}  // namespace

// F16C and AVX-VNNI straight from CPUID: clang's __builtin_cpu_supports knows neither name (gcc's does).
static bool cpuid_bit(unsigned leaf, unsigned subleaf, int reg, unsigned bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}

bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpuid_bit(1, 0, 2, 29);  // ECX.F16C
  }();
  return ok;
}

bool cpu_has_avx_vnni() {
  static const bool ok = cpu_has_avx2_fma() && cpuid_bit(7, 1, 0, 4);  // CPUID.(7,1):EAX.AVX-VNNI
  return ok;
}

bool cpu_has_avx512() {
  static const bool ok = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vl");
  return ok;
}

bool cpu_has_avx512_vnni() {
  static const bool ok = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
  return ok;
}

Level cpu_level() {
  return cpu_has_avx512()     ? Level::Avx512
         : cpu_has_avx_vnni() ? Level::AvxVnni
         : cpu_has_avx2_fma() ? Level::Avx2
                              : Level::Ref;
}

const char* level_name(Level level) {
  const int i = static_cast<int>(level);
  return i >= 0 && i < kNumLevels ? kLevelNames[i] : "unknown";
}

Level parse_level(const char* name) {
  for (int i = 0; i < kNumLevels; ++i)
    if (std::strcmp(name, kLevelNames[i]) == 0) return static_cast<Level>(i);
  throw std::invalid_argument(std::string("LWQ_CPU must be one of ref, avx2, avx_vnni, avx512 (or unset for the "
                                          "CPU's own level), got \"") +
                              name + "\"");
}

const KernelTable& table_for(Level level) { return tables().of[static_cast<int>(std::min(level, cpu_level()))]; }

const KernelTable& table() { return tables().of[resolved_level()]; }

Level set_level(Level level) {
  const Level l = std::min(level, cpu_level());
  resolved_level();  // read the environment first, so that its warnings and errors are not lost or deferred
  g_level.store(static_cast<int>(l), std::memory_order_release);
  return l;
}

}  // namespace kernels
}  // namespace lwq
