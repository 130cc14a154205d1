// The trainer with the language model pipeline parallel (pp = 2: one layer a stage, the vision
// encoder on the first stage) over Gloo against one rank on the same data, in the 1F1B schedule
// with 1, 2 and 4 micro-batches: the same losses, auxiliary losses, expert loads and gradient
// norms at every step, and each stage's parameters (its part of the model, under the whole
// model's names) those of the one-rank run after three AdamW steps; with dp = 2 and the
// distributed optimizer, with tp = 2 (MoE layers sequence parallel, experts split over tp), and
// with the word embeddings shared between the first and last stage. Interleaved stages (pp 2 x 2
// or 3 x 2 model chunks a rank, Megatron's virtual pipeline) likewise, alone and with dp, tp,
// the distributed optimizer and shared word embeddings.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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

// Interleaved stages: `stages` ranks of `chunks` model chunks each (one layer a chunk), with
// `replicas` data-parallel replicas of `members` tp members each (rank ((s * replicas) + d) *
// members + t; experts split over tp), against one rank with all the micro-batches.
struct Interleaved {
  int stages = 2, chunks = 2, replicas = 1, members = 1;
  int micro_batches = 2;  // Per replica.
  bool distributed = false, shared = false;
};

void ExpectInterleavedLikeOneRank(const Interleaved& v) {
  SCOPED_TRACE(::testing::Message() << v.stages << " stages x " << v.chunks << " chunks, "
                                    << v.replicas << " replicas of " << v.members << " members, "
                                    << v.micro_batches << " micro-batches");
  MimoModelConfig model = DpTestModel();
  model.language.transformer.num_layers = v.stages * v.chunks;
  model.language.share_embeddings_and_output_weights = v.shared;
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, v.micro_batches * v.replicas, nullptr);
  const int per_stage = v.replicas * v.members, world = v.stages * per_stage;
  std::vector<TrainRun> got(world);
  comm::InMemoryStore store;
  comm::RunRanks(world, [&](int rank) {
    const int s = rank / per_stage, d = rank % per_stage / v.members, t = rank % v.members;
    std::vector<comm::GroupSpec> specs;
    comm::GroupSpec pp{.kind = "pp"}, dp{.kind = "dp"}, tp{.kind = "tp"};
    for (int x = 0; x < v.stages; ++x) pp.members.push_back(rank + (x - s) * per_stage);
    for (int x = 0; x < v.replicas; ++x) dp.members.push_back(rank + (x - d) * v.members);
    for (int x = 0; x < v.members; ++x) tp.members.push_back(rank + x - t);
    specs.push_back(pp);
    if (v.replicas > 1) specs.push_back(dp);
    if (v.members > 1) {
      specs.push_back(tp);
      specs.push_back({.kind = "ep", .members = tp.members});
    }
    if (v.shared)
      specs.push_back({.kind = "embd", .members = {pp.members.front(), pp.members.back()}});
    auto groups = comm::ProcessGroups::CreateGloo(
        specs, store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    TrainerOptions o = TestOptions(v.micro_batches, (*groups)->Get("dp"), ModelGroupsOf(**groups),
                                   v.distributed, nullptr, true, (*groups)->Get("pp"));
    o.virtual_stages = v.chunks;
    o.embd = (*groups)->Get("embd");
    got[rank] = TrainWith(*ops, model, o);
  });
  ExpectMatchesOneRank(got, want);
  // Rank s holds layers s, s + stages, ...: chunk c of stage s is layer c * stages + s.
  for (int rank = 0; rank < world; ++rank) {
    const int s = rank / per_stage;
    for (int layer = 0; layer < v.stages * v.chunks; ++layer) {
      const bool here = got[rank].params.contains(
          absl::StrCat("language.decoder.layers.", layer, ".input_layernorm.weight"));
      EXPECT_EQ(here, layer % v.stages == s) << "rank " << rank << " layer " << layer;
    }
  }
}

TEST(TrainerPipelineParallelTest, InterleavedStagesEqualOneRank) {
  for (const int micro_batches : {2, 4, 6}) {
    ExpectInterleavedLikeOneRank({.micro_batches = micro_batches});
  }
  ExpectInterleavedLikeOneRank({.stages = 3, .chunks = 2, .micro_batches = 6});
  ExpectInterleavedLikeOneRank({.chunks = 3, .micro_batches = 4});
}

TEST(TrainerPipelineParallelTest,
     InterleavedStagesWithReplicasTensorParallelismAndSharedEmbeddings) {
  ExpectInterleavedLikeOneRank(
      {.replicas = 2, .micro_batches = 2, .distributed = true, .shared = true});
  ExpectInterleavedLikeOneRank({.members = 2, .micro_batches = 4, .shared = true});
}

TEST(TrainerPipelineParallelTest, InterleavedStagesRefuseWhatTheScheduleCannotRun) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "pp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    MimoModelConfig model = DpTestModel();
    model.language.transformer.num_layers = 4;
    TrainerOptions o = TestOptions(3, nullptr, {}, false, nullptr, true, (*groups)->Get("pp"));
    o.virtual_stages = 2;  // 3 micro-batches over 2 stages.
    auto odd = Trainer::Create(*ops, model, o);
    EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(odd.status().message().find("a multiple of them"), std::string::npos) << odd.status();
    o.micro_batches = 2;
    o.virtual_stages = 3;  // 4 layers in 6 chunks.
    auto layers = Trainer::Create(*ops, model, o);
    EXPECT_EQ(layers.status().code(), absl::StatusCode::kInvalidArgument) << layers.status();
  });
}

}  // namespace
}  // namespace mimo::worker
