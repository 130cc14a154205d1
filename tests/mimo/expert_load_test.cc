// Tests of mimo/expert_load.h over Gloo (ranks as threads): the step's per-expert loads of every
// MoE layer summed over the group in one all-reduce, equal on every rank and to the sum of the
// ranks' own loads; the biases of the layers with expert_bias moved towards balance from those
// global loads, the others untouched; the counts restarted.
#include "mimo/expert_load.h"

#include <memory>
#include <random>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "gtest/gtest.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"

namespace mimo {
namespace {

using kernels::DType;
using testing::Download;
using testing::RandomFloats;
using testing::Upload;

constexpr int64_t kHidden = 8;
constexpr float kRate = 0.25f;

TransformerConfig Config() {
  TransformerConfig c;
  c.num_layers = 2;
  c.hidden_size = kHidden;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 6;
  c.add_bias_linear = false;
  c.init_std = 0.5f;
  c.dtype = DType::kF32;
  return c;
}

// Rank r's two MoE layers (the first with aux-loss-free balancing) after forwards over its
// micro-batches, then the step finished over `group`: the returned loads and the layers' biases.
struct StepResult {
  ExpertLoads loads, again;
  std::vector<std::vector<double>> bias;
};

StepResult RunStep(int rank, comm::Communicator* group) {
  StepResult out;
  auto ops = kernels::NewCpuOps();
  const TransformerConfig config = Config();
  std::vector<std::unique_ptr<MoeLayer>> layers;
  for (int l = 0; l < 2; ++l) {
    MoeConfig moe;
    moe.router = {.experts = 4, .top_k = 2};
    moe.expert_bias = l == 0;
    moe.expert_bias_update_rate = kRate;
    BuildContext build{.ops = ops.get(),
                       .config = &config,
                       .seed = 6,
                       .prefix = "decoder.layers." + std::to_string(l) + ".mlp",
                       .layer_number = l};
    auto layer = MoeLayer::Create(build, moe);
    EXPECT_TRUE(layer.ok()) << layer.status();
    if (!layer.ok()) return out;
    layers.push_back(*std::move(layer));
  }
  // Rank 0: two micro-batches of 9 tokens; rank 1: one of 20.
  std::mt19937 random(40 + rank);
  const StepContext ctx{.ops = ops.get()};
  for (int64_t tokens : rank == 0 ? std::vector<int64_t>{9, 9} : std::vector<int64_t>{20}) {
    const auto x =
        Upload(*ops, RandomFloats(tokens * kHidden, random), {tokens, kHidden}, DType::kF32);
    for (auto& layer : layers) EXPECT_TRUE(layer->Forward(ctx, x).ok());
  }
  std::vector<MoeLayer*> raw = {layers[0].get(), layers[1].get()};
  auto loads = FinishExpertLoadStep(*ops, raw, {group});
  EXPECT_TRUE(loads.ok()) << loads.status();
  if (!loads.ok()) return out;
  out.loads = *loads;
  for (auto& layer : layers) out.bias.push_back(Download(*ops, layer->expert_bias()));
  auto again = FinishExpertLoadStep(*ops, raw, {group});
  EXPECT_TRUE(again.ok()) << again.status();
  if (again.ok()) out.again = *again;
  return out;
}

TEST(ExpertLoadTest, SumsTheStepsLoadsOverTheGroupAndUpdatesTheBiases) {
  // Each rank's own loads, without a group.
  const StepResult alone[2] = {RunStep(0, nullptr), RunStep(1, nullptr)};
  std::vector<StepResult> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    got[rank] = RunStep(rank, (*groups)->Get("dp"));
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].loads.size(), 2u);
    for (int l = 0; l < 2; ++l) {
      std::vector<int64_t> sum(4);
      int64_t total = 0;
      for (int e = 0; e < 4; ++e) {
        sum[e] = alone[0].loads[l][e] + alone[1].loads[l][e];
        total += sum[e];
      }
      EXPECT_EQ(total, (9 + 9 + 20) * 2);  // Every (token, choice) pair counted once.
      EXPECT_EQ(got[r].loads[l], sum) << "rank " << r << " layer " << l;
      EXPECT_EQ(got[r].again[l], std::vector<int64_t>(4, 0));
      // Layer 0 moves its bias by the rate towards the mean load; layer 1 keeps zeros.
      std::vector<double> want(4, 0.0);
      for (int e = 0; e < 4 && l == 0; ++e) {
        const double offset = total / 4.0 - static_cast<double>(sum[e]);
        want[e] = offset > 0 ? kRate : (offset < 0 ? -kRate : 0.0);
      }
      EXPECT_EQ(got[r].bias[l], want) << "rank " << r << " layer " << l;
    }
  }
}

}  // namespace
}  // namespace mimo
