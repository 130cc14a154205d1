// The trainer with the language model context parallel over Gloo against one rank on the same
// data: cp = 2 alone (the vision encoder computed whole by both members; no encoders), cp = 3, cp 2
// x dp 2 with expert parallelism and the distributed optimizer, tp 2 x cp 2 (MoE layers sequence
// and context parallel), and cp 2 x pp 2 with shared word embeddings. The same losses, auxiliary
// losses, expert loads and gradient norms at every step, each rank's parameters (slices under tp,
// its stage's under pp) those of the one-rank run after three AdamW steps, the cp members' bitwise
// equal. With seq_length 24 every sample fills it (its caption is cut), a multiple of 2 cp tp:
// no padding, so MoE models match exactly; with longer sequences each is padded after its EOS,
// which a dense model's loss and gradients do not see.
#include <gtest/gtest.h>

#include <algorithm>
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

// Ranks of tp x cp x dp x pp, tp fastest (Megatron's order), and each rank's groups: dense ones,
// and with `ep` the expert view (ep over consecutive ranks, expt_dp over the rest).
struct Grid {
  int tp = 1, cp = 2, dp = 1, pp = 1;
  int ep = 1;
  int ranks() const { return tp * cp * dp * pp; }
  // rank's coordinate along dimension i (0 tp, 1 cp, 2 dp, 3 pp).
  int Coord(int rank, int i) const {
    const int sizes[4] = {tp, cp, dp, pp};
    for (int j = 0; j < i; ++j) rank /= sizes[j];
    return rank % sizes[i];
  }
  // The ranks that share `rank`'s coordinates but along `vary`.
  std::vector<int> Members(int rank, std::set<int> vary) const {
    std::vector<int> members;
    for (int r = 0; r < ranks(); ++r) {
      bool same = true;
      for (int i = 0; i < 4; ++i)
        same = same && (vary.contains(i) || Coord(r, i) == Coord(rank, i));
      if (same) members.push_back(r);
    }
    return members;
  }
  // ep over consecutive ranks of a stage's tp x cp x dp, expt_dp across them.
  std::vector<int> ExpertMembers(int rank, bool ep_group) const {
    const int per_stage = tp * cp * dp, first = rank / per_stage * per_stage, i = rank % per_stage;
    std::vector<int> members;
    for (int j = 0; j < per_stage; ++j) {
      if (ep_group ? j / ep == i / ep : j % ep == i % ep) members.push_back(first + j);
    }
    return members;
  }
  std::vector<comm::GroupSpec> Specs(int rank) const {
    std::vector<comm::GroupSpec> specs = {
        {.kind = "tp", .members = Members(rank, {0})},
        {.kind = "cp", .members = Members(rank, {1})},
        {.kind = "dp", .members = Members(rank, {2})},
        {.kind = "pp", .members = Members(rank, {3})},
        {.kind = "dp_cp", .members = Members(rank, {1, 2})},
        {.kind = "tp_cp", .members = Members(rank, {0, 1})},
        {.kind = "ep", .members = ExpertMembers(rank, true)},
        {.kind = "expt_dp", .members = ExpertMembers(rank, false)}};
    if (pp > 1) specs.push_back({.kind = "embd", .members = Members(rank, {3})});
    return specs;
  }
};

TrainerOptions Options(int micro_batches, int64_t seq_length) {
  TrainerOptions o = TestOptions(micro_batches, nullptr);
  o.seq_length = seq_length;
  return o;
}

std::vector<TrainRun> TrainGrid(const Grid& g, const MimoModelConfig& model, int micro_batches,
                                int64_t seq_length, bool distributed_optimizer = false,
                                ModelPart part = ModelPart::kWhole) {
  std::vector<TrainRun> got(g.ranks());
  comm::InMemoryStore store;
  comm::RunRanks(g.ranks(), [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        g.Specs(rank), store,
        {.rank = rank, .timeout = absl::Seconds(60), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    TrainerOptions o = Options(micro_batches, seq_length);
    o.dp = (*groups)->Get("dp");
    o.dp_cp = (*groups)->Get("dp_cp");
    o.groups = ModelGroupsOf(**groups);
    o.expt_dp = (*groups)->Get("expt_dp");
    o.pp = (*groups)->Get("pp");
    o.embd = (*groups)->Get("embd");
    o.distributed_optimizer = distributed_optimizer;
    o.part = part;
    got[rank] = TrainWith(*ops, model, o);
  });
  return got;
}

// Every rank against the one-rank run: metrics and parameters; the cp members' parameters
// bitwise equal.
void ExpectMatchesOneRank(const std::vector<TrainRun>& got, const TrainRun& want, const Grid& g) {
  ASSERT_EQ(want.steps.size(), 3u);
  std::set<std::string> held;
  for (size_t r = 0; r < got.size(); ++r) {
    SCOPED_TRACE(::testing::Message() << "rank " << r);
    ExpectStepsMatch(got[r], want);
    // The next cp member: the same tp, dp and pp coordinates.
    const int c = g.Coord(static_cast<int>(r), 1);
    const size_t peer = r + ((c + 1) % g.cp - c) * g.tp;
    for (const auto& [name, values] : got[r].params) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(want.params.contains(name));
      held.insert(name);
      const ParameterSpec& spec = got[r].specs.at(name);
      EXPECT_LT(RelativeError(values, testing::SliceOf(want.params.at(name), spec)), 1e-5);
      // The same slice (not the experts, split over ep): bitwise equal.
      if (got[peer].params.contains(name) &&
          testing::SliceOf(want.params.at(name), got[peer].specs.at(name)) ==
              testing::SliceOf(want.params.at(name), spec)) {
        EXPECT_EQ(values, got[peer].params.at(name));
      }
    }
  }
  EXPECT_EQ(held.size(), want.params.size());
}

TEST(TrainerContextParallelTest, TwoMembersEqualOneRank) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(2, 24));
  ASSERT_GT(want.steps[0].aux_loss, 0.0);
  const Grid g{.cp = 2};
  const std::vector<TrainRun> got = TrainGrid(g, model, 2, 24);
  ExpectMatchesOneRank(got, want, g);
  // The reduction over dp_cp started during the backward, beside the ring's calls over cp.
  for (const TrainRun& run : got) EXPECT_GT(run.steps[2].overlapped_buckets, 0);
}

TEST(TrainerContextParallelTest, ThreeMembersEqualOneRank) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(2, 24));
  const Grid g{.cp = 3};
  ExpectMatchesOneRank(TrainGrid(g, model, 2, 24), want, g);
}

// A job's language module alone (the language part, no encoder modules to link to): no
// placeholder rows to share over cp (a broadcast of none failed on every rank).
TEST(TrainerContextParallelTest, ALanguageModuleWithoutEncodersEqualsOneRank) {
  MimoModelConfig model = DpTestModel();
  model.vision.reset();
  model.audio.reset();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(2, 24));
  const Grid g{.cp = 2};
  ExpectMatchesOneRank(TrainGrid(g, model, 2, 24, false, ModelPart::kLanguage), want, g);
}

// Each sequence padded after its EOS to a multiple of 4 (seq_length 64: the samples' own lengths
// vary): a dense model's losses and gradients are those of the unpadded one-rank run.
TEST(TrainerContextParallelTest, PaddedSequencesOfADenseModelEqualOneRank) {
  MimoModelConfig model = DpTestModel();
  model.language.moe.reset();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(2, 64));
  const Grid g{.cp = 2};
  const std::vector<TrainRun> got = TrainGrid(g, model, 2, 64);
  ExpectMatchesOneRank(got, want, g);
  // The padding is not counted as tokens.
  EXPECT_EQ(got[0].steps[0].tokens, want.steps[0].tokens);
}

// cp 2 x dp 2 (dp_cp of all four ranks) with ep 2 over consecutive ranks (each cp pair) and the
// distributed optimizer sharding over dp_cp; each replica one of the two micro-batches.
TEST(TrainerContextParallelTest, WithDataAndExpertParallelismAndTheDistributedOptimizer) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(2, 24));
  const Grid g{.cp = 2, .dp = 2, .ep = 2};
  ExpectMatchesOneRank(TrainGrid(g, model, 1, 24, true), want, g);
}

// tp 2 x cp 2: sequences of 24 split into 4 chunks of 6 rows, 3 per tp member; the routed
// experts whole on every rank (expt_dp of all four).
TEST(TrainerContextParallelTest, WithTensorParallelism) {
  const MimoModelConfig model = DpTestModel();
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(2, 24));
  const Grid g{.tp = 2, .cp = 2};
  ExpectMatchesOneRank(TrainGrid(g, model, 2, 24), want, g);
}

// cp 2 x pp 2 in the 1F1B schedule, the word embeddings shared between the stages.
TEST(TrainerContextParallelTest, WithPipelineStagesAndSharedEmbeddings) {
  MimoModelConfig model = DpTestModel();
  model.language.share_embeddings_and_output_weights = true;
  auto one = kernels::NewCpuOps();
  const TrainRun want = TrainWith(*one, model, Options(3, 24));
  const Grid g{.cp = 2, .pp = 2};
  ExpectMatchesOneRank(TrainGrid(g, model, 3, 24), want, g);
}

TEST(TrainerContextParallelTest, RefusesAMissingDpCpGroup) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "cp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    TrainerOptions o = Options(1, 24);
    o.groups = ModelGroupsOf(**groups);
    const auto trainer = Trainer::Create(*ops, DpTestModel(), o);
    EXPECT_EQ(trainer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(trainer.status().message().find("needs dp_cp"), std::string::npos)
        << trainer.status();
    o.part = ModelPart::kVision;
    const auto encoder = Trainer::Create(*ops, DpTestModel(), o);
    EXPECT_NE(encoder.status().message().find("needs dp_cp"), std::string::npos)
        << encoder.status();
  });
}

}  // namespace
}  // namespace mimo::worker
