// io::PackedSpill: a spilled weight equals the original in every serialized tensor and in the kernels' output,
// also after its pages were dropped from the process; nothing is left on disk; freed weights leave the registry.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "lwq/io/packed_spill.h"
#include "packed_weight.h"

namespace lwq {
namespace {

namespace fs = std::filesystem;

// Resident size of this process's mappings of the (unlinked) spill files, from /proc/self/smaps.
int64_t spill_rss_bytes() {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_spill = false;
  int64_t total = 0;
  while (std::getline(smaps, line)) {
    if (line.find('-') != std::string::npos && line.find(' ') != std::string::npos &&
        line.find(':') > line.find(' ')) {  // a mapping header: "start-end perms offset dev inode path"
      in_spill = line.find(".lwq-spill.") != std::string::npos;
    } else if (in_spill && line.rfind("Rss:", 0) == 0) {
      total += std::stoll(line.substr(4)) * 1024;
    }
  }
  return total;
}

TEST(PackedSpill, SpilledWeightsEqualTheOriginalAndSurviveDroppedPages) {
  const fs::path dir = fs::temp_directory_path() / ("lwq_spill_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  at::manual_seed(5);
  {
    io::PackedSpill spill((dir / "out.pt").string());
    // 64 rows: the kernels read the spilled scales directly; 13 rows: they read a padded heap copy.
    for (int64_t n : {int64_t(64), int64_t(13)}) {
      for (bool act_order : {false, true}) {
        const int64_t k = 1000, gs = 128;
        const at::Tensor w = at::randn({n, k});
        PackedWeightPtr p = quantize_weight(w, "int4", gs, /*sym=*/false);
        if (act_order) {
          auto parts = p->unpack();
          const at::Tensor g_idx = at::randint(0, (k + gs - 1) / gs, {k}, at::kInt);
          p = PackedWeight::pack(std::get<0>(parts), std::get<1>(parts), std::get<2>(parts), "int4", gs, g_idx);
        }
        const PackedWeightPtr s = spill.spill(p);
        const auto a = p->state(), b = s->state();
        EXPECT_TRUE(std::get<6>(a).equal(std::get<6>(b)));
        EXPECT_TRUE(std::get<7>(a).equal(std::get<7>(b)));
        EXPECT_TRUE(std::get<8>(a)->equal(*std::get<8>(b)));
        EXPECT_EQ(std::get<9>(a).has_value(), std::get<9>(b).has_value());
        if (std::get<9>(a)) {
          EXPECT_TRUE(std::get<9>(a)->equal(*std::get<9>(b)));
        }
        const at::Tensor x = at::randn({3, k});
        const at::Tensor ref = woq_linear(x, p, c10::nullopt);
        EXPECT_TRUE(woq_linear(x, s, c10::nullopt).equal(ref)) << n << " rows, act_order " << act_order;
        spill.drop_resident();
        EXPECT_EQ(spill_rss_bytes(), 0);  // nothing spilled stays mapped in after a drop
        EXPECT_TRUE(woq_linear(x, s, c10::nullopt).equal(ref)) << "after drop_resident";
        EXPECT_GT(spill_rss_bytes(), 0);  // read again from the page cache
      }
    }
    spill.drop_resident();
    EXPECT_EQ(spill_rss_bytes(), 0);
  }
  EXPECT_TRUE(fs::is_empty(dir)) << "the spill file is unlinked at creation";
  fs::remove_all(dir);
}

TEST(PackedSpill, FreedWeightsLeaveTheRegistry) {
  const fs::path dir = fs::temp_directory_path() / ("lwq_spill_free_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  io::PackedSpill spill((dir / "out.pt").string());
  PackedWeightPtr keep = spill.spill(quantize_weight(at::randn({32, 256}), "int8", -1, true));
  spill.spill(quantize_weight(at::randn({32, 256}), "int4", 64, true));  // freed at once: unmapped
  // New memory may now occupy the freed range; a drop must touch only live spilled mappings.
  std::vector<at::Tensor> fillers;
  for (int i = 0; i < 16; ++i) fillers.push_back(at::full({8192}, static_cast<float>(i)));
  spill.drop_resident();
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(fillers[i].eq(static_cast<float>(i)).all().item<bool>()) << i;
  EXPECT_EQ(keep->dequantize().size(0), 32);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lwq
