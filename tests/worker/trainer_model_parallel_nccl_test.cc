// Model parallelism of the trainer on two GPUs over NCCL (ranks as threads, one device each,
// the gradient reduction after the backward): the language model tensor parallel (tp = 2, the
// experts whole on both members, summed over expt_dp), in two pipeline stages (pp = 2, 1F1B over
// two micro-batches; "vpp": four layers in two interleaved chunks a stage), and context parallel
// (cp = 2, ring attention; seq_length 24 so that no sequence needs padding) trains like one GPU:
// losses, auxiliary losses, norms and expert loads at every step, each rank's parameters (its
// slices, its stage's) after three AdamW steps (relative error < 1e-4: fp32 on both sides, the
// attention backward's dQ atomics make CUDA runs differ in the last bits). Skips without two CUDA
// devices.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "kernels/cuda_ops.h"
#include "tests/comm/run_ranks.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/mimo/model_test_util.h"
#include "tests/worker/trainer_dp_util.h"

namespace mimo::worker {
namespace {

// DpTestModel widened to sizes the CUDA kernels take (head dims of 16); `layers` language layers.
MimoModelConfig Model(int layers = 2) {
  MimoModelConfig c = DpTestModel();
  c.language.transformer.num_layers = layers;
  c.language.transformer.hidden_size = 32;
  c.language.transformer.ffn_hidden_size = 64;
  TransformerConfig& e = c.vision->transformer;
  e.hidden_size = 32;
  e.ffn_hidden_size = 64;
  c.vision->output_size = 32;
  return c;
}

TrainerOptions Options() {
  TrainerOptions o = TestOptions(2, nullptr);
  o.seq_length = 24;
  o.overlap_grad_reduce = false;
  return o;
}

class TrainerModelParallelNcclTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    const std::string missing = kernels::testing::MissingCudaDevices(2);
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
};

TEST_P(TrainerModelParallelNcclTest, TwoGpusTrainLikeOne) {
  const std::string param = GetParam();
  const bool interleaved = param == "vpp";
  const std::string split = interleaved ? "pp" : param;
  const MimoModelConfig model = Model(interleaved ? 4 : 2);
  auto one = kernels::NewCudaOps({.device = 0});
  ASSERT_TRUE(one.ok()) << one.status();
  const TrainRun want = TrainWith(**one, model, Options());
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    std::vector<comm::GroupSpec> specs = {{.kind = split, .members = {0, 1}}};
    if (split == "tp") specs.push_back({.kind = "expt_dp", .members = {0, 1}});
    if (split == "cp") {
      specs.push_back({.kind = "dp_cp", .members = {0, 1}});
      specs.push_back({.kind = "tp_cp", .members = {0, 1}});
    }
    auto groups = comm::ProcessGroups::CreateNccl(
        specs, store, {.rank = rank, .timeout = absl::Seconds(30), .cuda_device = rank});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCudaOps({.device = rank});
    ASSERT_TRUE(ops.ok()) << ops.status();
    TrainerOptions o = Options();
    o.groups = ModelGroupsOf(**groups);
    o.expt_dp = (*groups)->Get("expt_dp");
    o.pp = (*groups)->Get("pp");
    o.dp_cp = (*groups)->Get("dp_cp");
    o.virtual_stages = interleaved ? 2 : 1;
    got[rank] = TrainWith(**ops, model, o);
  });
  constexpr double kBound = 1e-4;
  ASSERT_EQ(want.steps.size(), 3u);
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(::testing::Message() << param << " rank " << r);
    ASSERT_EQ(got[r].steps.size(), 3u);
    for (int i = 0; i < 3; ++i) {
      const StepMetrics &g = got[r].steps[i], &w = want.steps[i];
      EXPECT_NEAR(g.loss, w.loss, kBound * w.loss) << "step " << i;
      EXPECT_NEAR(g.aux_loss, w.aux_loss, kBound * w.aux_loss) << "step " << i;
      EXPECT_NEAR(g.grad_norm, w.grad_norm, kBound * w.grad_norm) << "step " << i;
      EXPECT_EQ(g.expert_load, w.expert_load) << "step " << i;
      EXPECT_EQ(g.expert_load_imbalance, w.expert_load_imbalance) << "step " << i;
    }
    for (const auto& [name, values] : got[r].params) {
      ASSERT_TRUE(want.params.contains(name)) << name;
      EXPECT_LT(
          RelativeError(values, testing::SliceOf(want.params.at(name), got[r].specs.at(name))),
          kBound)
          << name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Splits, TrainerModelParallelNcclTest,
                         ::testing::Values("tp", "pp", "vpp", "cp"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace mimo::worker
