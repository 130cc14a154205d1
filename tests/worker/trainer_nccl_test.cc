// Data and expert parallelism of the trainer on two GPUs over NCCL (ranks as threads, one device
// each): two replicas with one micro-batch each train like one GPU with both micro-batches
// (losses, norms, loads, parameters), with AdamW and with the distributed optimizer, the gradient
// reduction overlapped with the backward; and with the experts split over ep = 2, the reduction
// after the backward (overlapping it is refused on GPUs with ep); the replicas' dense parameters
// stay bitwise identical. Skips without two CUDA devices.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "kernels/cuda_ops.h"
#include "tests/comm/run_ranks.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/worker/trainer_dp_util.h"

namespace mimo::worker {
namespace {

// DpTestModel widened to sizes the CUDA kernels take (head dims of 16).
MimoModelConfig Model() {
  MimoModelConfig c = DpTestModel();
  c.language.transformer.hidden_size = 32;
  c.language.transformer.ffn_hidden_size = 64;
  TransformerConfig& e = c.vision->transformer;
  e.hidden_size = 32;
  e.ffn_hidden_size = 64;
  c.vision->output_size = 32;
  return c;
}

class TrainerNcclTest : public ::testing::TestWithParam<std::tuple<bool, const char*>> {
 protected:
  void SetUp() override {
    const std::string missing = kernels::testing::MissingCudaDevices(2);
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
};

TEST_P(TrainerNcclTest, TwoGpusTrainLikeOneWithBothMicroBatches) {
  const auto& [distributed, split] = GetParam();
  const bool ep = std::string(split) == "ep";
  auto one = kernels::NewCudaOps({.device = 0});
  ASSERT_TRUE(one.ok()) << one.status();
  const TrainRun want = TrainOn(**one, Model(), 2, nullptr);
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    std::vector<comm::GroupSpec> specs = {{.kind = "dp", .members = {0, 1}}};
    if (ep) specs.push_back({.kind = "ep", .members = {0, 1}});
    auto groups = comm::ProcessGroups::CreateNccl(
        specs, store, {.rank = rank, .timeout = absl::Seconds(30), .cuda_device = rank});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCudaOps({.device = rank});
    ASSERT_TRUE(ops.ok()) << ops.status();
    // With ep the backward's all-to-alls would run beside the reduction: not on GPUs yet.
    got[rank] = TrainOn(**ops, Model(), 1, (*groups)->Get("dp"), ModelGroupsOf(**groups),
                        distributed, nullptr, /*overlap_grad_reduce=*/!ep);
  });
  // fp32 on both sides; the attention backward's dQ atomics make CUDA runs differ in the last
  // bits, so not bitwise.
  constexpr double kBound = 1e-4;
  ASSERT_EQ(want.steps.size(), 3u);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].steps.size(), 3u) << r;
    for (int i = 0; i < 3; ++i) {
      const StepMetrics &g = got[r].steps[i], &w = want.steps[i];
      EXPECT_NEAR(g.loss, w.loss, kBound * w.loss) << "rank " << r << " step " << i;
      EXPECT_NEAR(g.grad_norm, w.grad_norm, kBound * w.grad_norm) << "rank " << r << " step " << i;
      EXPECT_EQ(g.expert_load, w.expert_load) << "rank " << r << " step " << i;
      EXPECT_EQ(g.expert_load_imbalance, w.expert_load_imbalance) << "rank " << r << " step " << i;
      if (ep) {
        EXPECT_EQ(g.overlapped_buckets, 0) << "rank " << r << " step " << i;
      } else {
        EXPECT_GT(g.overlapped_buckets, 0) << "rank " << r << " step " << i;
      }
    }
    for (const auto& [name, values] : want.params) {
      if (ep && name.find(".mlp.experts.") != std::string::npos) {
        const size_t half = values.size() / 2;  // Experts [2r, 2r + 2) of 4.
        const std::vector<float> slice(values.begin() + r * half, values.begin() + (r + 1) * half);
        EXPECT_LT(RelativeError(got[r].params.at(name), slice), kBound) << name << " rank " << r;
        continue;
      }
      EXPECT_LT(RelativeError(got[r].params.at(name), values), kBound) << name << " rank " << r;
      EXPECT_EQ(got[0].params.at(name), got[1].params.at(name)) << name;  // Replicas identical.
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, TrainerNcclTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Values("dp", "ep")),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "DistributedOptimizer_"
                                                                      : "AdamW_") +
                                  std::get<1>(info.param);
                         });

}  // namespace
}  // namespace mimo::worker
