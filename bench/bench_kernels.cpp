// Kernel benchmark: lwq::woq_linear (int4 g128 / g32 / per-channel, int8 per-channel), lwq::woq_linear_a8
// (int4 g128 with dynamically int8-quantized activations) and lwq::w8a8_linear against fp32 at::linear
// (OpenBLAS) on Llama-7B linear shapes, plus the machine's DRAM read bandwidth, all in
// one run so the ratios are measured under the same conditions. Every timed call uses the next of several copies
// of its weight (fp32 included), so weights come from DRAM. Prints a table (median and best ms of the repeats;
// speedups use the median) or one JSON object with --json, and PASS/MISS lines for the project's speed targets;
// the exit code does not depend on them. At M = 1 the DRAM read bandwidth is measured again right before the
// kernels of each shape and thread count, and each kernel's rate (packed bytes / time) is given as a share of it
// twice, statistic for statistic: median time against the median read pass, best time against the best pass.
//
//   lwq_bench_kernels [--threads 1,2] [--m 1,4,16,64,512] [--shapes 4096x4096,11008x4096,4096x11008]
//                     [--formats int4_g128,int4_g32,int4_pc,int8,w8a8,int4_g128_a8] [--quick] [--json]
//   lwq_bench_kernels --bandwidth [--threads 1,2] [--json]   the DRAM read bandwidth only (bench/bench_decode.py)
//
// The kernels are those of the table in use (kernels/dispatch.h): the CPU's level, or LWQ_CPU's cap (e.g.
// LWQ_CPU=avx2 for the plain AVX2 kernels on a CPU that has more); the level is printed first.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/dispatch.h"
#include "ops.h"
#include "work_pool.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t out, in;
  std::string name() const { return std::to_string(out) + "x" + std::to_string(in); }
};

struct Format {
  std::string name;   // as printed
  std::string dtype;  // quantize_weight dtype
  int64_t group_size;
  bool w8a8;
  bool a8;  // woq_linear_a8 (int8 activations) instead of woq_linear
};

const std::vector<Format> kFormats = {
    {"int4_g128", "int4", 128, false, false}, {"int4_g32", "int4", 32, false, false},
    {"int4_pc", "int4", -1, false, false},    {"int8", "int8", -1, false, false},
    {"w8a8", "int8", -1, true, false},        {"int4_g128_a8", "int4", 128, false, true},
};

struct Options {
  std::vector<int64_t> threads = {1, 2};
  std::vector<int64_t> ms = {1, 4, 16, 64, 512};
  std::vector<Shape> shapes = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  std::vector<std::string> formats;
  bool json = false;
  bool bandwidth_only = false;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) parts.push_back(item);
  }
  return parts;
}

std::vector<int64_t> parse_ints(const std::string& s, const char* what) {
  std::vector<int64_t> v;
  for (const auto& p : split(s)) {
    char* end = nullptr;
    const long long x = std::strtoll(p.c_str(), &end, 10);
    if (*end != '\0' || x <= 0) {
      std::cerr << "bad " << what << " value: " << p << "\n";
      std::exit(2);
    }
    v.push_back(x);
  }
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (const auto& f : kFormats) o.formats.push_back(f.name);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      o.threads = parse_ints(value(), "--threads");
    } else if (a == "--m") {
      o.ms = parse_ints(value(), "--m");
    } else if (a == "--shapes") {
      o.shapes.clear();
      for (const auto& p : split(value())) {
        const auto x = p.find('x');
        if (x == std::string::npos) {
          std::cerr << "bad --shapes entry (want OUTxIN): " << p << "\n";
          std::exit(2);
        }
        o.shapes.push_back({parse_ints(p.substr(0, x), "--shapes")[0], parse_ints(p.substr(x + 1), "--shapes")[0]});
      }
    } else if (a == "--formats") {
      o.formats = split(value());
      for (const auto& f : o.formats) {
        if (std::none_of(kFormats.begin(), kFormats.end(), [&](const Format& k) { return k.name == f; })) {
          std::cerr << "unknown format " << f << "\n";
          std::exit(2);
        }
      }
    } else if (a == "--quick") {
      o.ms = {1, 64};
      o.shapes = {{4096, 4096}};
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--bandwidth") {
      o.bandwidth_only = true;
    } else {
      std::cerr << "usage: " << argv[0]
                << " [--threads 1,2] [--m 1,4,...] [--shapes 4096x4096,...] [--formats int4_g128,...] [--quick]"
                   " [--json]\n       " << argv[0] << " --bandwidth [--threads 1,2] [--json]   (the DRAM read bandwidth only)\n";
      std::exit(a == "--help" || a == "-h" ? 0 : 2);
    }
  }
  return o;
}

struct Timing {
  double median, best;  // seconds
};

// Median and best wall time of fn after a warm-up; repeats until ~0.4 s are spent (at least 5, at most 200).
// The median is what the table compares; the best shows how much a loaded machine inflated it.
Timing time_calls(const std::function<void()>& fn) {
  fn();
  fn();
  std::vector<double> t;
  double total = 0;
  while ((t.size() < 5 || total < 0.4) && t.size() < 200) {
    const auto t0 = Clock::now();
    fn();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    t.push_back(s);
    total += s;
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front()};
}

// Sum of n floats (n a multiple of 32) with AVX2 loads; 4 independent accumulators so that loads, not the add
// latency, bound the loop.
__attribute__((target("avx2"))) float stream_sum(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = 0;
  for (float v : lanes) s += v;
  return s;
}

struct Bandwidth {
  double median, best;  // bytes/s
};

// Streaming read bandwidth with the current threads: median and best of 16 reads of 64 MiB segments (twice the
// 32 MiB L3) taken in turn from a 512 MiB buffer, after one pass over it, so every segment is cold. Short
// segments keep the best one meaningful when the machine is shared (a long single pass is almost always
// preempted somewhere).
Bandwidth dram_read_bandwidth(const at::Tensor& buf) {
  const float* p = buf.data_ptr<float>();
  constexpr int64_t kSegment = int64_t{16} << 20;  // floats: 64 MiB
  constexpr int64_t kChunk = 1 << 16;              // floats per parallel_for grain: 256 KiB
  const int64_t n_segments = buf.numel() / kSegment;
  std::vector<double> rates;
  volatile float sink = 0;
  std::vector<float> partial(static_cast<size_t>(kSegment / kChunk));
  for (int64_t rep = 0; rep < 3 * n_segments; ++rep) {
    const float* seg = p + (rep % n_segments) * kSegment;
    const auto t0 = Clock::now();
    // The operators' pool (dynamic chunks), as the kernels run: a statically split OpenMP region measured the
    // scheduler, not the memory, at 2 threads on a shared machine (8.4 GB/s against 20-31 GB/s at 1 thread).
    lwq::parallel_chunks(kSegment / kChunk, 4, at::get_num_threads(), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) partial[c] = stream_sum(seg + c * kChunk, kChunk);
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    float total = 0;
    for (float v : partial) total += v;
    sink = sink + total;  // the sums are used, so the reads cannot be elided
    if (rep >= n_segments) rates.push_back(static_cast<double>(kSegment) * sizeof(float) / s);
  }
  (void)sink;
  std::sort(rates.begin(), rates.end());
  return {rates[rates.size() / 2], rates.back()};
}

// 512 MiB: with 128 MiB (4x a 32 MiB L3) a torch-free loop over cold int4 copies still ran ~10 % faster than
// over 512 MiB on this EPYC, so part of the set was cached (its last-level cache looks larger than 32 MiB).
constexpr size_t kColdBytes = size_t{512} << 20;

size_t copies_needed(int64_t bytes) {
  return std::min<size_t>(64, std::max<size_t>(1, (kColdBytes + bytes - 1) / static_cast<size_t>(bytes)));
}

std::vector<at::Tensor> copies_of(const at::Tensor& t, int64_t bytes) {
  std::vector<at::Tensor> v;
  for (size_t i = 0; i < copies_needed(bytes); ++i) v.push_back(t.clone());
  return v;
}

lwq::PackedWeightPtr deep_copy(const lwq::PackedWeightPtr& w) {
  auto st = w->state();
  std::get<6>(st) = std::get<6>(st).clone();
  std::get<7>(st) = std::get<7>(st).clone();
  if (std::get<8>(st)) std::get<8>(st) = std::get<8>(st)->clone();
  if (std::get<9>(st)) std::get<9>(st) = std::get<9>(st)->clone();
  return lwq::PackedWeight::from_state(st);
}

struct Row {
  std::string shape, format;
  int64_t m, threads;
  double ms, best_ms, gflops, speedup;
  double bw_pct, bw_pct_best;  // median/median and best/best share of the DRAM read rate; < 0 when not measured
                                // (M > 1 or fp32)
};

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  at::manual_seed(20261123);

  std::map<int64_t, Bandwidth> dram_bw;
  const at::Tensor bw_buf = at::empty({int64_t{128} << 20}, at::kFloat);  // 512 MiB, 32-byte aligned
  at::set_num_threads(*std::max_element(opt.threads.begin(), opt.threads.end()));
  bw_buf.fill_(1.0f);  // touch every page before timing
  for (int64_t t : opt.threads) {
    at::set_num_threads(t);
    dram_bw[t] = dram_read_bandwidth(bw_buf);
  }
  if (opt.bandwidth_only) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    for (const auto& [t, bw] : dram_bw) {
      if (opt.json) {
        j[std::to_string(t)] = {{"median_gbs", bw.median / 1e9}, {"best_gbs", bw.best / 1e9}};
      } else {
        std::printf("DRAM read bandwidth, %lld thread(s): %.1f GB/s median, %.1f GB/s best\n",
                    static_cast<long long>(t), bw.median / 1e9, bw.best / 1e9);
      }
    }
    if (opt.json) std::printf("%s\n", nlohmann::ordered_json{{"dram_read_bandwidth", j}}.dump().c_str());
    return 0;
  }
  const char* level = lwq::kernels::level_name(lwq::kernels::table().level);
  const char* cpu_level = lwq::kernels::level_name(lwq::kernels::cpu_level());
  if (!opt.json) {
    std::printf("Kernel level: %s (this CPU: up to %s; LWQ_CPU caps it)\n", level, cpu_level);
    for (const auto& [t, bw] : dram_bw)
      std::printf("DRAM read bandwidth, %lld thread(s): %.1f GB/s median, %.1f GB/s best\n",
                  static_cast<long long>(t), bw.median / 1e9, bw.best / 1e9);
    std::printf("(at M = 1 measured again before each shape and thread count; the %%BW columns use that)\n");
    std::printf("\n%-11s %5s %-12s %3s %10s %10s %9s %8s %7s %8s\n", "shape", "M", "format", "thr", "ms",
                "best ms", "GFLOP/s", "vs fp32", "%BW med", "%BW best");
  }

  std::vector<Row> rows;
  auto emit = [&](const Row& r) {
    rows.push_back(r);
    if (opt.json) return;
    char bw[16] = "", bwb[16] = "";
    if (r.bw_pct >= 0) std::snprintf(bw, sizeof(bw), "%.0f%%", r.bw_pct);
    if (r.bw_pct_best >= 0) std::snprintf(bwb, sizeof(bwb), "%.0f%%", r.bw_pct_best);
    std::printf("%-11s %5lld %-12s %3lld %10.3f %10.3f %9.1f %7.2fx %7s %8s\n", r.shape.c_str(),
                static_cast<long long>(r.m), r.format.c_str(), static_cast<long long>(r.threads), r.ms, r.best_ms,
                r.gflops, r.speedup, bw, bwb);
    std::fflush(stdout);
  };

  for (const Shape& shape : opt.shapes) {
    const at::Tensor weight = at::randn({shape.out, shape.in}) * 0.02;
    const at::Tensor bias = at::randn({shape.out}) * 0.01;
    // Each measured call uses the next of several copies of its weight (>= 512 MiB in all, at most 64), so
    // weight reads come from DRAM as in a model whose layers do not fit the cache.
    const std::vector<at::Tensor> weights = copies_of(weight, weight.nbytes());
    std::vector<std::pair<Format, std::vector<lwq::PackedWeightPtr>>> packed;
    for (const auto& f : kFormats) {
      if (std::find(opt.formats.begin(), opt.formats.end(), f.name) == opt.formats.end()) continue;
      const auto w = lwq::quantize_weight(weight, f.dtype, f.group_size, /*sym=*/true);
      std::vector<lwq::PackedWeightPtr> ws;
      for (size_t i = 0; i < copies_needed(w->nbytes()); ++i) ws.push_back(deep_copy(w));
      packed.emplace_back(f, std::move(ws));
    }
    for (int64_t m : opt.ms) {
      const at::Tensor x = at::randn({m, shape.in});
      // Static activation range of x itself, uint8 with the zero point in the middle.
      const double act_scale = (x.max().item<double>() - x.min().item<double>()) / 255.0;
      const int64_t act_zp = std::clamp<int64_t>(std::llround(-x.min().item<double>() / act_scale), 0, 255);
      const double flop = 2.0 * static_cast<double>(m) * shape.out * shape.in;
      for (int64_t t : opt.threads) {
        at::set_num_threads(t);
        size_t next = 0;
        const Timing fp32 = time_calls([&] { at::linear(x, weights[next++ % weights.size()], bias); });
        const double fp32_s = fp32.median;
        emit({shape.name(), "fp32", m, t, fp32_s * 1e3, fp32.best * 1e3, flop / fp32_s / 1e9, 1.0, -1.0, -1.0});
        const Bandwidth bw = m == 1 ? dram_read_bandwidth(bw_buf) : Bandwidth{0, 0};
        for (const auto& [f, ws] : packed) {
          const auto& w = ws;  // structured bindings cannot be captured in C++17
          const bool w8a8 = f.w8a8, a8 = f.a8;
          const Timing tm = time_calls([&] {
            const auto& wi = w[next++ % w.size()];
            if (w8a8)
              lwq::w8a8_linear(x, wi, act_scale, act_zp, bias, "uint8");
            else if (a8)
              lwq::woq_linear_a8(x, wi, bias);
            else
              lwq::woq_linear(x, wi, bias);
          });
          const double s = tm.median;
          const double bytes = static_cast<double>(w[0]->nbytes());
          const double bw_pct = m == 1 ? 100.0 * bytes / s / bw.median : -1.0;
          const double bw_pct_best = m == 1 ? 100.0 * bytes / tm.best / bw.best : -1.0;
          emit({shape.name(), f.name, m, t, s * 1e3, tm.best * 1e3, flop / s / 1e9, fp32_s / s, bw_pct,
                bw_pct_best});
        }
      }
    }
  }

  // Targets (informational): each check holds for every matching row; the worst row is shown.
  struct Check {
    std::string what;
    double need;
    std::function<bool(const Row&)> applies;
    std::function<double(const Row&)> value;
  };
  auto speedup = [](const Row& r) { return r.speedup; };
  const std::vector<Check> targets = {
      {"int4_g128 M=1 2T: % of DRAM BW >= 80 (median/median)", 80.0,
       [](const Row& r) { return r.format == "int4_g128" && r.m == 1 && r.threads == 2; },
       [](const Row& r) { return r.bw_pct; }},
      {"int4_g128 M=1 2T: % of DRAM BW >= 80 (best/best)", 80.0,
       [](const Row& r) { return r.format == "int4_g128" && r.m == 1 && r.threads == 2; },
       [](const Row& r) { return r.bw_pct_best; }},
      {"int4_g128_a8 (int8 activations) M=1 2T: % of DRAM BW >= 80 (median/median)", 80.0,
       [](const Row& r) { return r.format == "int4_g128_a8" && r.m == 1 && r.threads == 2; },
       [](const Row& r) { return r.bw_pct; }},
      {"int4_g128_a8 (int8 activations) M=1 2T: % of DRAM BW >= 80 (best/best)", 80.0,
       [](const Row& r) { return r.format == "int4_g128_a8" && r.m == 1 && r.threads == 2; },
       [](const Row& r) { return r.bw_pct_best; }},
      {"int4_g128 M=1 2T: speedup vs fp32 >= 5", 5.0,
       [](const Row& r) { return r.format == "int4_g128" && r.m == 1 && r.threads == 2; }, speedup},
      {"int8 M=1: speedup vs fp32 >= 2.8", 2.8, [](const Row& r) { return r.format == "int8" && r.m == 1; },
       speedup},
      {"int4 M>=64: speedup vs fp32 >= 0.8", 0.8,
       [](const Row& r) { return r.format.rfind("int4", 0) == 0 && r.m >= 64; }, speedup},
      {"w8a8 M>=64: speedup vs fp32 >= 1.3", 1.3, [](const Row& r) { return r.format == "w8a8" && r.m >= 64; },
       speedup},
      {"every format, M in 1..64: not slower than fp32 (speedup >= 1)", 1.0,
       [](const Row& r) { return r.format != "fp32" && r.m <= 64; }, speedup},
  };
  std::vector<std::string> checks;
  for (const Check& c : targets) {
    const Row* worst = nullptr;
    for (const Row& r : rows) {
      if (c.applies(r) && (!worst || c.value(r) < c.value(*worst))) worst = &r;
    }
    if (!worst) continue;
    char line[256];
    std::snprintf(line, sizeof(line), "%s %s; worst %.2f at %s M=%lld %lldT %s",
                  c.value(*worst) >= c.need ? "PASS" : "MISS", c.what.c_str(), c.value(*worst), worst->shape.c_str(),
                  static_cast<long long>(worst->m), static_cast<long long>(worst->threads), worst->format.c_str());
    checks.push_back(line);
  }

  if (opt.json) {
    nlohmann::json j;
    j["kernel_level"] = level;
    j["cpu_level"] = cpu_level;
    for (const auto& [t, bw] : dram_bw)
      j["dram_read_gbps"][std::to_string(t)] = {{"median", bw.median / 1e9}, {"best", bw.best / 1e9}};
    for (const Row& r : rows) {
      nlohmann::json e = {{"shape", r.shape}, {"m", r.m},           {"format", r.format},
                          {"threads", r.threads}, {"ms", r.ms}, {"best_ms", r.best_ms},     {"gflops", r.gflops},
                          {"speedup_vs_fp32", r.speedup}};
      if (r.bw_pct >= 0) e["dram_bw_pct"] = r.bw_pct;
      if (r.bw_pct_best >= 0) e["dram_bw_pct_best"] = r.bw_pct_best;
      j["results"].push_back(e);
    }
    j["checks"] = checks;
    std::cout << j.dump(1) << "\n";
  } else {
    int misses = 0;
    std::printf("\nTargets:\n");
    for (const auto& c : checks) {
      std::printf("%s\n", c.c_str());
      misses += c.rfind("MISS", 0) == 0;
    }
    std::printf("%zu checks, %d missed (informational)\n", checks.size(), misses);
  }
  return 0;
}
