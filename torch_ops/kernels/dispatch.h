// The kernel table (torch-free): which implementation of each kernel runs, chosen in one place.
//
// Every kernel has a scalar `_ref` twin and up to three SIMD versions. An ISA *level* is a ceiling: the table of
// a level holds, for each kernel, the best implementation that the level allows and the CPU can run.
//
//   level     allows                                                   kernels it adds where the CPU has them
//   ref       the scalar references only
//   avx2      AVX2 + FMA + F16C (x86-64-v3)                            every *_avx2.cpp kernel
//   avx_vnni  avx2 + AVX-VNNI (VEX vpdpbusd: Alder Lake, Zen 5, SPR)   w8a8_gemm_avx_vnni (W8A8, M >= 2)
//   avx512    avx_vnni + AVX-512 F/BW/DQ/VL (+ AVX512-VNNI)            woq_gemm_avx512_path (decode row loop,
//                                                                      blocked micro-kernel); woq_a8_gemm_avx512
//                                                                      (M = 1, 4-bit; needs AVX512-VNNI)
//
// AVX-VNNI sits between avx2 and avx512 because it is a 256-bit extension that CPUs without AVX-512 have; a CPU
// with AVX-512 but without AVX-VNNI (Zen 4, Ice Lake) simply runs the AVX2 W8A8 kernel at avx_vnni and above.
// The default is the CPU's own level (cpu_level()). Every SIMD version gives the same bits as the AVX2 version it
// replaces, and every AVX2 version of an integer kernel the same bits as its reference (tests/cpp/
// test_kernel_levels.cpp); only the fp32 weight-only GEMM differs from its reference, within a tested bound.
//
// Selection. The environment variable LWQ_CPU=ref|avx2|avx_vnni|avx512 caps the level for the process; it is read
// once, the first time table() is called (the first operator call). A value above cpu_level() is clamped to it
// with one warning on stderr; any other value makes table() throw std::invalid_argument naming the accepted
// values. The variables of earlier versions (LWQ_FORCE_REF, LWQ_NO_AVX512, LWQ_NO_VNNI) are no longer read: when
// one is set, table() warns once and names its LWQ_CPU replacement. Inside a process, set_level / ScopedLevel
// switch the table (tests run every level in one process); callers read table() once per operator call.
#pragma once

#include <cstdint>
#include <vector>

#include "format.h"
#include "w8a8.h"
#include "woq_a8.h"
#include "woq_gemm_avx2.h"

namespace lwq {
namespace kernels {

enum class Level : int32_t { Ref = 0, Avx2 = 1, AvxVnni = 2, Avx512 = 3 };
constexpr int kNumLevels = 4;

const char* level_name(Level level);  // "ref", "avx2", "avx_vnni", "avx512"
// The level named by an LWQ_CPU value; throws std::invalid_argument (naming the accepted values) otherwise.
Level parse_level(const char* name);

// What the CPU and the OS support (__builtin_cpu_supports, which also checks that the OS saves the vector state).
// Environment variables do not change these; they only cap the table's level.
bool cpu_has_avx2_fma();     // AVX2, FMA and F16C
bool cpu_has_avx_vnni();     // cpu_has_avx2_fma() and AVX-VNNI
bool cpu_has_avx512();       // cpu_has_avx2_fma() and AVX-512 F, BW, DQ and VL
bool cpu_has_avx512_vnni();  // cpu_has_avx512() and AVX512-VNNI
// The highest level whose own instructions the CPU has: avx512, else avx_vnni, else avx2, else ref.
Level cpu_level();

// y = x W^T over tiles [tile_begin, tile_end) with the path of the caller's whole M (woq_path_for), so that no
// split of rows or tiles changes an output (the reference ignores the path).
using WoqGemmFn = void (*)(const WeightView& w, const float* x, int64_t M, int64_t ldx, const float* bias, float* y,
                           int64_t ldy, int64_t tile_begin, int64_t tile_end, WoqPath path);
using WoqA8QuantizeFn = bool (*)(const WeightView& w, const std::vector<A8Block>& blocks, const float* x, int64_t M,
                                 int64_t ldx, int8_t* xq, float* d, int32_t* xsum);
using WoqA8GemmFn = void (*)(const WeightView& w, const std::vector<A8Block>& blocks, const A8Acts& acts, int64_t M,
                             const float* bias, float* y, int64_t ldy, int64_t tile_begin, int64_t tile_end);
using W8a8QuantizeFn = bool (*)(const float* x, int64_t M, int64_t K, int64_t ldx, float act_scale, int32_t zp,
                                int32_t qmin, int32_t qmax, int16_t* d, int64_t ldd, int32_t* row_sum);
using W8a8GemmFn = void (*)(const WeightView& w, const int16_t* d, const int32_t* row_sum, int64_t M, int64_t ldd,
                            float act_scale, const float* bias, float* y, int64_t ldy, int64_t tile_begin,
                            int64_t tile_end);

// One implementation per kernel (the signatures and semantics are those of format.h, woq_a8.h and w8a8.h).
struct KernelTable {
  Level level;  // the level the table was built for, after clamping to cpu_level()
  WoqGemmFn woq_gemm;              // lwq::woq_linear
  WoqA8QuantizeFn woq_a8_quantize;  // lwq::woq_linear_a8: activations
  WoqA8GemmFn woq_a8_gemm;          //                     GEMM
  W8a8QuantizeFn w8a8_quantize;     // lwq::w8a8_linear: activations
  W8a8GemmFn w8a8_gemm;             //                   GEMM
};

// The table of `level` (clamped to cpu_level()), built once from the CPU checks.
const KernelTable& table_for(Level level);
// The table in use: LWQ_CPU's level (default cpu_level()) or the last set_level.
const KernelTable& table();
// Makes `level` (clamped to cpu_level()) the one table() uses and returns the level now in effect.
Level set_level(Level level);

// Sets a level for the lifetime of the guard and restores the previous one after (tests).
class ScopedLevel {
 public:
  explicit ScopedLevel(Level level) : previous_(table().level) { level_ = set_level(level); }
  ~ScopedLevel() { set_level(previous_); }
  ScopedLevel(const ScopedLevel&) = delete;
  ScopedLevel& operator=(const ScopedLevel&) = delete;
  Level level() const { return level_; }  // the level in effect (after clamping)

 private:
  Level previous_, level_;
};

}  // namespace kernels
}  // namespace lwq
