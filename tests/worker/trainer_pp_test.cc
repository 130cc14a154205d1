// The trainer with the language model pipeline parallel (pp = 2: one layer a stage, the vision
// encoder on the first stage) over Gloo against one rank on the same data, in the 1F1B schedule
// with 1, 2 and 4 micro-batches: the same losses, auxiliary losses, expert loads and gradient
// norms at every step, and each stage's parameters (its part of the model, under the whole
// model's names) those of the one-rank run after three AdamW steps; with dp = 2 and the
// distributed optimizer, with tp = 2 (MoE layers sequence parallel, experts split over tp), and
// with the word embeddings shared between the first and last stage.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"
#include "tests/worker/trainer_dp_util.h"

namespace mimo::worker {
namespace {

// Every rank against the one-rank run: metrics, and its parameters (slices under tp).
void ExpectMatchesOneRank(const std::vector<TrainRun>& got, const TrainRun& want) {
  ASSERT_EQ(want.steps.size(), 3u);
  std::set<std::string> held;
  for (size_t r = 0; r < got.size(); ++r) {
    SCOPED_TRACE(::testing::Message() << "rank " << r);
    ExpectStepsMatch(got[r], want);
    for (const auto& [name, values] : got[r].params) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(want.params.contains(name));
      held.insert(name);
      const ParameterSpec& spec = got[r].specs.at(name);
      EXPECT_LT(RelativeError(values, testing::SliceOf(want.params.at(name), spec)), 1e-5);
    }
  }
  EXPECT_EQ(held.size(), want.params.size());  // Every parameter on some stage.
}

// Two stages (ranks 0 and 1), the vision encoder on the first: 1 micro-batch (warm-up and
// cool-down only), 2, and 4 (a steady state of forwards and backwards alternating).
TEST(TrainerPipelineParallelTest, TwoStagesEqualOneRank) {
  const MimoModelConfig model = DpTestModel();
  for (const int micro_batches : {1, 2, 4}) {
    SCOPED_TRACE(::testing::Message() << micro_batches << " micro-batches");
    auto one = kernels::NewCpuOps();
    const TrainRun want = TrainOn(*one, model, micro_batches, nullptr);
    std::vector<TrainRun> got(2);
    comm::InMemoryStore store;
    comm::RunRanks(2, [&](int rank) {
      auto groups = comm::ProcessGroups::CreateGloo(
          {{.kind = "pp", .members = {0, 1}}}, store,
          {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
      ASSERT_TRUE(groups.ok()) << groups.status();
      auto ops = kernels::NewCpuOps();
      got[rank] = TrainOn(*ops, model, micro_batches, nullptr, {}, false, nullptr, true,
                          (*groups)->Get("pp"));
    });
    ExpectMatchesOneRank(got, want);
    EXPECT_TRUE(got[0].params.contains("language.embedding.word_embeddings.weight"));
    EXPECT_FALSE(got[1].params.contains("language.embedding.word_embeddings.weight"));
    EXPECT_TRUE(got[1].params.contains("language.output_layer.weight"));
  }
}

// Four ranks: stage s, replica d at rank 2 s + d (dp groups {0, 1} and {2, 3}, pp groups {0, 2}
// and {1, 3}); each replica one of the one-rank run's two micro-batches per step; the
// distributed optimizer shards each stage's parameters over its replicas.
TEST(TrainerPipelineParallelTest, WithDataParallelReplicasAndTheDistributedOptimizer) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 4, nullptr);
  std::vector<TrainRun> got(4);
  comm::InMemoryStore store;
  comm::RunRanks(4, [&](int rank) {
    const int stage = rank / 2, replica = rank % 2;
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {2 * stage, 2 * stage + 1}},
         {.kind = "pp", .members = {replica, replica + 2}}},
        store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] = TrainOn(*ops, model, 2, (*groups)->Get("dp"), {}, true, nullptr, true,
                        (*groups)->Get("pp"));
  });
  ExpectMatchesOneRank(got, want);
}

// Four ranks: stage s, tp member t at rank 2 s + t (tp and ep groups {0, 1} and {2, 3}, pp groups
// {0, 2} and {1, 3}): tensor + sequence parallel stages, each stage's MoE layer with its experts
// split over the tp members, the activations sent member to member.
TEST(TrainerPipelineParallelTest, WithTensorAndExpertParallelStages) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 3, nullptr);
  std::vector<TrainRun> got(4);
  comm::InMemoryStore store;
  comm::RunRanks(4, [&](int rank) {
    const int stage = rank / 2, member = rank % 2;
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {2 * stage, 2 * stage + 1}},
         {.kind = "pp", .members = {member, member + 2}},
         {.kind = "ep", .members = {2 * stage, 2 * stage + 1}}},
        store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] = TrainOn(*ops, model, 3, nullptr, ModelGroupsOf(**groups), false, nullptr, true,
                        (*groups)->Get("pp"));
  });
  ExpectMatchesOneRank(got, want);
}

// Shared word embeddings over the two stages: each holds a copy, summed over its replicas and
// then over the embedding group (the first and last stage) before the update, the last stage's
// copy left out of the norm; three replicas a stage (sums in several orders), plain AdamW and
// the distributed optimizer: like one rank, the two copies bitwise equal. Without the group the
// trainer refuses to start.
TEST(TrainerPipelineParallelTest, SharedWordEmbeddingsStayOneParameter) {
  constexpr int kReplicas = 3;
  MimoModelConfig model = DpTestModel();
  model.language.share_embeddings_and_output_weights = true;
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2 * kReplicas, nullptr);
  ASSERT_FALSE(want.params.contains("language.output_layer.weight"));
  const std::string kShared = "language.embedding.word_embeddings.weight";
  for (const bool distributed : {false, true}) {
    SCOPED_TRACE(distributed ? "distributed optimizer" : "AdamW");
    std::vector<TrainRun> got(2 * kReplicas);
    comm::InMemoryStore store;
    comm::RunRanks(2 * kReplicas, [&](int rank) {
      const int stage = rank / kReplicas, replica = rank % kReplicas;
      std::vector<int> dp;
      for (int d = 0; d < kReplicas; ++d) dp.push_back(stage * kReplicas + d);
      auto groups = comm::ProcessGroups::CreateGloo(
          {{.kind = "dp", .members = dp},
           {.kind = "pp", .members = {replica, replica + kReplicas}},
           {.kind = "embd", .members = {replica, replica + kReplicas}}},
          store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
      ASSERT_TRUE(groups.ok()) << groups.status();
      auto ops = kernels::NewCpuOps();
      TrainerOptions options = TestOptions(2, (*groups)->Get("dp"), {}, distributed, nullptr, true,
                                           (*groups)->Get("pp"));
      // The group is required.
      EXPECT_EQ(Trainer::Create(*ops, model, options).status().code(),
                absl::StatusCode::kInvalidArgument);
      options.embd = (*groups)->Get("embd");
      got[rank] = TrainWith(*ops, model, options);
    });
    ExpectMatchesOneRank(got, want);
    for (int r = 0; r < kReplicas; ++r) {
      ASSERT_TRUE(got[r].params.contains(kShared));
      ASSERT_TRUE(got[r + kReplicas].params.contains(kShared));
      EXPECT_EQ(got[r].params.at(kShared), got[r + kReplicas].params.at(kShared)) << r;
    }
    // The shared weight's bucket does not hold the others back: some start during the backward.
    for (int r = 0; r < 2 * kReplicas; ++r) EXPECT_GT(got[r].steps[2].overlapped_buckets, 0) << r;
  }
}

}  // namespace
}  // namespace mimo::worker
