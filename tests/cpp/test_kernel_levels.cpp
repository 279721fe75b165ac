// The kernel table (kernels/dispatch.h): one parameterised test runs every kernel at every ISA level in this one
// process (kernel x level here, dtype x shape x threads inside each check, kernel_levels.h) against the scalar
// references; levels the CPU lacks, and levels that hold no version of their own of a kernel on this CPU, are
// skipped with a message. Then the level names, the clamping, set_level / ScopedLevel, and LWQ_CPU in a child
// process.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <ostream>
#include <vector>

#include "kernel_levels.h"
#include "kernels/dispatch.h"

namespace lwq {
namespace {

using kernels::KernelTable;
using kernels::Level;

const Level kLevels[] = {Level::Ref, Level::Avx2, Level::AvxVnni, Level::Avx512};

struct Kernel {
  const char* name;
  void (*check)(Level);
  // The table entries the kernel runs: a level whose entries equal the level below's has nothing new to test.
  std::vector<const void*> (*entries)(const KernelTable&);
};

template <typename... F>
std::vector<const void*> ptrs(F... f) {
  return {reinterpret_cast<const void*>(f)...};
}

const Kernel kKernels[] = {
    {"woq_gemm", test::check_woq_gemm, [](const KernelTable& t) { return ptrs(t.woq_gemm); }},
    {"woq_a8_quantize", test::check_woq_a8_quantize, [](const KernelTable& t) { return ptrs(t.woq_a8_quantize); }},
    {"woq_a8_gemm", test::check_woq_a8_gemm, [](const KernelTable& t) { return ptrs(t.woq_a8_gemm); }},
    {"w8a8_quantize", test::check_w8a8_quantize, [](const KernelTable& t) { return ptrs(t.w8a8_quantize); }},
    {"w8a8_gemm", test::check_w8a8_gemm, [](const KernelTable& t) { return ptrs(t.w8a8_gemm); }},
    {"woq_linear", test::check_woq_linear_op, [](const KernelTable& t) { return ptrs(t.woq_gemm); }},
    {"woq_linear_a8", test::check_woq_linear_a8_op,
     [](const KernelTable& t) { return ptrs(t.woq_a8_quantize, t.woq_a8_gemm); }},
    {"w8a8_linear", test::check_w8a8_linear_op,
     [](const KernelTable& t) { return ptrs(t.w8a8_quantize, t.w8a8_gemm); }},
};
constexpr int kNumKernels = sizeof(kKernels) / sizeof(kKernels[0]);

struct Param {
  int kernel;
  Level level;
};
void PrintTo(const Param& p, std::ostream* os) {
  *os << kKernels[p.kernel].name << " at " << kernels::level_name(p.level);
}
std::vector<Param> all_params() {
  std::vector<Param> v;
  for (int k = 0; k < kNumKernels; ++k)
    for (Level l : kLevels) v.push_back({k, l});
  return v;
}

class KernelLevels : public ::testing::TestWithParam<Param> {};

TEST_P(KernelLevels, EqualsReference) {
  const Kernel& k = kKernels[GetParam().kernel];
  const Level level = GetParam().level;
  if (level > kernels::cpu_level())
    GTEST_SKIP() << "this CPU lacks " << kernels::level_name(level) << " (it has up to "
                 << kernels::level_name(kernels::cpu_level()) << ")";
  if (level != Level::Ref) {
    // The lowest level with the same entries is where they are tested.
    int same = static_cast<int>(level);
    const auto mine = k.entries(kernels::table_for(level));
    while (same > 0 && k.entries(kernels::table_for(static_cast<Level>(same - 1))) == mine) --same;
    if (same != static_cast<int>(level))
      GTEST_SKIP() << k.name << " has no " << kernels::level_name(level) << " version on this CPU: the table holds "
                   << "the " << kernels::level_name(static_cast<Level>(same)) << " one, tested at that level";
  }
  kernels::ScopedLevel guard(level);
  ASSERT_EQ(guard.level(), level);
  ASSERT_EQ(kernels::table().level, level);
  k.check(level);
}

INSTANTIATE_TEST_SUITE_P(AllKernels, KernelLevels, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return std::string(kKernels[info.param.kernel].name) + "_" +
                                  kernels::level_name(info.param.level);
                         });

TEST(KernelTable, LevelNamesParseAndUnknownNamesAreRefused) {
  for (Level l : kLevels) EXPECT_EQ(kernels::parse_level(kernels::level_name(l)), l);
  for (const char* bad : {"AVX2", "avx512f", "native", "1", ""}) {
    try {
      kernels::parse_level(bad);
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("LWQ_CPU must be one of ref, avx2, avx_vnni, avx512"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string("got \"") + bad + "\""), std::string::npos) << e.what();
    }
  }
}

TEST(KernelTable, LevelsAreCappedByTheCpuAndSetLevelIsScoped) {
  const Level cpu = kernels::cpu_level();
  EXPECT_EQ(cpu >= Level::Avx2, kernels::cpu_has_avx2_fma());
  EXPECT_EQ(cpu == Level::Avx512, kernels::cpu_has_avx512());
  for (Level l : kLevels) EXPECT_EQ(kernels::table_for(l).level, std::min(l, cpu)) << kernels::level_name(l);
  // The reference level holds the scalar references.
  const KernelTable& ref = kernels::table_for(Level::Ref);
  EXPECT_EQ(ref.woq_a8_quantize, &kernels::woq_a8_quantize_acts_ref);
  EXPECT_EQ(ref.woq_a8_gemm, &kernels::woq_a8_gemm_ref);
  EXPECT_EQ(ref.w8a8_quantize, &kernels::w8a8_quantize_acts_ref);
  EXPECT_EQ(ref.w8a8_gemm, &kernels::w8a8_gemm_ref);
  if (kernels::cpu_has_avx2_fma()) {
    EXPECT_EQ(kernels::table_for(Level::Avx2).woq_gemm, &kernels::woq_gemm_avx2_path);
  }
  if (kernels::cpu_has_avx_vnni()) {
    EXPECT_EQ(kernels::table_for(Level::AvxVnni).w8a8_gemm, &kernels::w8a8_gemm_avx_vnni);
  }
  if (kernels::cpu_has_avx512()) {
    EXPECT_EQ(kernels::table_for(Level::Avx512).woq_gemm, &kernels::woq_gemm_avx512_path);
  }

  const Level before = kernels::table().level;
  {
    kernels::ScopedLevel a(Level::Ref);
    EXPECT_EQ(&kernels::table(), &kernels::table_for(Level::Ref));
    {
      kernels::ScopedLevel b(Level::Avx512);  // clamped
      EXPECT_EQ(b.level(), cpu);
      EXPECT_EQ(&kernels::table(), &kernels::table_for(cpu));
    }
    EXPECT_EQ(kernels::table().level, Level::Ref);
  }
  EXPECT_EQ(kernels::table().level, before);
}

// Run by the next test in a child process with LWQ_CPU (and the retired variables) set: the process's level is
// LWQ_CPU's, clamped; an unknown value makes table() throw. Passes trivially in a plain run.
TEST(KernelTable, LevelFollowsLwqCpu) {
  const char* v = std::getenv("LWQ_CPU");
  if (!v || !*v) {
    EXPECT_EQ(kernels::table().level, kernels::cpu_level());
    return;
  }
  try {
    const Level want = std::min(kernels::parse_level(v), kernels::cpu_level());
    EXPECT_EQ(kernels::table().level, want);
  } catch (const std::invalid_argument&) {
    EXPECT_THROW(kernels::table(), std::invalid_argument);
    EXPECT_THROW(kernels::table(), std::invalid_argument);  // every call, not only the first
  }
}

std::string self_path() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(KernelTable, LwqCpuInAChildProcess) {
  const std::string self = self_path();
  ASSERT_FALSE(self.empty());
  const std::string err = ::testing::TempDir() + "lwq_cpu_child.err";
  struct Run {
    std::string env, stderr_needle;
  };
  const std::string cpu = kernels::level_name(kernels::cpu_level());
  std::vector<Run> runs = {{"LWQ_CPU=ref", ""},
                           {"LWQ_CPU=avx2", kernels::cpu_level() < Level::Avx2 ? "using " + cpu : ""},
                           {"LWQ_CPU=avx_vnni", kernels::cpu_level() < Level::AvxVnni ? "using " + cpu : ""},
                           {"LWQ_CPU=avx512", kernels::cpu_level() < Level::Avx512 ? "using " + cpu : ""},
                           {"LWQ_CPU=fast", ""},
                           {"LWQ_NO_AVX512=1", "LWQ_NO_AVX512 is no longer read and has no effect; use "
                                               "LWQ_CPU=avx_vnni"},
                           {"LWQ_FORCE_REF=1", "LWQ_FORCE_REF is no longer read and has no effect; use LWQ_CPU=ref"},
                           {"LWQ_NO_VNNI=1", "LWQ_NO_VNNI is no longer read and has no effect; use LWQ_CPU=avx2"}};
  for (const Run& r : runs) {
    const std::string cmd = "env -u LWQ_CPU -u LWQ_NO_AVX512 -u LWQ_FORCE_REF -u LWQ_NO_VNNI " + r.env + " '" +
                            self + "' --gtest_filter=KernelTable.LevelFollowsLwqCpu > /dev/null 2> '" + err + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << read_file(err);
    if (!r.stderr_needle.empty()) {
      EXPECT_NE(read_file(err).find(r.stderr_needle), std::string::npos) << r.env << ": " << read_file(err);
    }
  }
  std::remove(err.c_str());
}

}  // namespace
}  // namespace lwq
