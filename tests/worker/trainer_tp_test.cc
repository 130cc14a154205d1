// The trainer with the language model tensor + sequence + vocabulary parallel (tp = 2, alone and
// with dp = 2) over Gloo against one rank on the same data: the same losses, label counts and
// gradient norms at every step, each member's parameters its slices of the one-rank parameters
// after three AdamW steps (plain, or the distributed optimizer over dp), the replicated ones
// bitwise equal across the members; an expt_tp group with tp's members changes nothing. MoE
// layers under tp (sequence parallel) give the same auxiliary losses and expert loads too, with
// the experts replicated over tp (summed over expt_dp) or split over it (ep = tp's members).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "tests/comm/run_ranks.h"
#include "tests/mimo/model_test_util.h"
#include "tests/worker/trainer_dp_util.h"

namespace mimo::worker {
namespace {

MimoModelConfig DenseModel() {
  MimoModelConfig c = DpTestModel();
  c.language.moe.reset();
  return c;
}

// Every member against the one-rank run: metrics and parameter slices.
void ExpectMatchesOneRank(const std::vector<TrainRun>& got, const TrainRun& want, int tp) {
  ASSERT_EQ(want.steps.size(), 3u);
  for (size_t r = 0; r < got.size(); ++r) {
    SCOPED_TRACE(::testing::Message() << "rank " << r);
    ExpectStepsMatch(got[r], want);
    ASSERT_EQ(got[r].params.size(), want.params.size());
    int sharded = 0;
    for (const auto& [name, values] : got[r].params) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(want.params.contains(name));
      const ParameterSpec& spec = got[r].specs.at(name);
      sharded += spec.shards.empty() ? 0 : 1;
      EXPECT_LT(RelativeError(values, testing::SliceOf(want.params.at(name), spec)), 1e-5);
      // The tp peer (same replica): replicated parameters bitwise equal.
      const size_t peer = r ^ 1;
      if (tp > 1 && spec.shards.empty()) {
        EXPECT_EQ(values, got[peer].params.at(name));
      }
    }
    EXPECT_GE(sharded, tp > 1 ? 6 : 0);  // Embedding, output layer, 2 x (qkv, proj, fc1, fc2).
  }
}

TEST(TrainerTensorParallelTest, TwoMembersEqualOneRank) {
  const MimoModelConfig model = DenseModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2, nullptr);
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] = TrainOn(*ops, model, 2, nullptr, ModelGroupsOf(**groups));
  });
  ExpectMatchesOneRank(got, want, 2);
}

// Megatron's default etp = tp on a dense model: an expt_tp group with tp's members must not
// count the tensor-parallel slices' norms twice.
TEST(TrainerTensorParallelTest, AnExpertTensorGroupLikeTpChangesNothing) {
  const MimoModelConfig model = DenseModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2, nullptr);
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}, {.kind = "expt_tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    const ModelGroups model_groups = ModelGroupsOf(**groups);
    ASSERT_NE(model_groups.expt_tp, nullptr);
    got[rank] = TrainOn(*ops, model, 2, nullptr, model_groups);
  });
  ExpectMatchesOneRank(got, want, 2);
}

// Ranks (replica, member): 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1); one micro-batch each,
// so the two replicas together take the one-rank run's two. With `expert_parallel` (an MoE
// model), the expert view Megatron builds for ep 2 (expt_tp 1): ep groups with tp's members,
// expt_dp groups with dp's.
std::vector<TrainRun> TrainDpTimesTp(const MimoModelConfig& model, bool distributed_optimizer,
                                     bool expert_parallel = false) {
  std::vector<TrainRun> got(4);
  comm::InMemoryStore store;
  comm::RunRanks(4, [&](int rank) {
    const int member = rank % 2, replica0 = rank / 2 * 2;
    std::vector<comm::GroupSpec> specs = {{.kind = "dp", .members = {member, member + 2}},
                                          {.kind = "tp", .members = {replica0, replica0 + 1}}};
    if (expert_parallel) {
      specs.push_back({.kind = "ep", .members = {replica0, replica0 + 1}});
      specs.push_back({.kind = "expt_dp", .members = {member, member + 2}});
    }
    auto groups = comm::ProcessGroups::CreateGloo(
        specs, store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] = TrainOn(*ops, model, 1, (*groups)->Get("dp"), ModelGroupsOf(**groups),
                        distributed_optimizer, (*groups)->Get("expt_dp"));
  });
  return got;
}

TEST(TrainerTensorParallelTest, WithDataParallelReplicasEqualOneRank) {
  const MimoModelConfig model = DenseModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2, nullptr);
  ExpectMatchesOneRank(TrainDpTimesTp(model, false), want, 2);
}

// The distributed optimizer over dp beside tp: the slices' and the whole parameters' shards in
// their own sets (the slices' norms summed over tp).
TEST(TrainerTensorParallelTest, DistributedOptimizerWithDataParallelReplicasEqualsOneRank) {
  const MimoModelConfig model = DenseModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2, nullptr);
  ExpectMatchesOneRank(TrainDpTimesTp(model, true), want, 2);
}

// MoE layers under tp are sequence parallel: each member routes its rows; the experts,
// replicated over the two members, get their gradients summed over expt_dp (the members).
TEST(TrainerTensorParallelTest, SequenceParallelMoeLayersEqualOneRank) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2, nullptr);
  ASSERT_GT(want.steps[0].aux_loss, 0.0);
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}, {.kind = "expt_dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] =
        TrainOn(*ops, model, 2, nullptr, ModelGroupsOf(**groups), false, (*groups)->Get("expt_dp"));
  });
  ExpectMatchesOneRank(got, want, 2);
  // The experts' reduction over expt_dp started during the backward, beside the layers' tp calls.
  for (const TrainRun& run : got) EXPECT_GT(run.steps[2].overlapped_buckets, 0);
}

// With every expert whole on both tp members, their gradients must be summed over tp too: without
// an expt_dp group naming the members the trainer refuses to start (dp alone would miss them).
TEST(TrainerTensorParallelTest, WholeExpertsUnderTpNeedTheirExpertDataParallelGroup) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "tp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    auto trainer = Trainer::Create(*ops, DpTestModel(),
                                   {.micro_batch_size = 2,
                                    .seq_length = 48,
                                    .data = {.num_samples = 100, .seed = 5},
                                    .groups = ModelGroupsOf(**groups)});
    EXPECT_EQ(trainer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(trainer.status().message().find("need expt_dp"), std::string::npos)
        << trainer.status();
  });
}

// dp 2 x tp 2 with the experts split over each replica's tp members (ep 2) and the distributed
// optimizer: dense parameters sharded over dp, experts over expt_dp.
TEST(TrainerTensorParallelTest, ExpertParallelMoeWithDataParallelReplicasEqualsOneRank) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainOn(*one, model, 2, nullptr);
  ExpectMatchesOneRank(TrainDpTimesTp(model, true, /*expert_parallel=*/true), want, 2);
}

}  // namespace
}  // namespace mimo::worker
