// Data parallelism of the trainer on CPU workers (ranks as threads, Gloo over loopback): two
// replicas with one micro-batch each train exactly like one rank with two micro-batches on the
// same samples (losses, gradient norms, expert loads and parameters after every step), and the
// replicas stay identical; so do two expert-parallel ranks and two expert-tensor-parallel ranks
// (each with its slice of the experts), and so do replicas with the distributed optimizer.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "comm/in_memory_store.h"
#include "comm/process_groups.h"
#include "data/byte_tokenizer.h"
#include "tests/comm/run_ranks.h"
#include "tests/worker/trainer_dp_util.h"
#include "worker/trainer.h"

namespace mimo::worker {
namespace {

TrainRun Train(int micro_batches, comm::Communicator* dp, ModelGroups groups = {},
               bool distributed_optimizer = false, comm::Communicator* expt_dp = nullptr,
               bool overlap_grad_reduce = true) {
  auto ops = kernels::NewCpuOps();
  return TrainOn(*ops, DpTestModel(), micro_batches, dp, groups, distributed_optimizer, expt_dp,
                 overlap_grad_reduce);
}

MimoModelConfig Model() { return DpTestModel(); }

void ExpectReplicasLikeOneRank(bool distributed_optimizer, int micro_batches = 1) {
  const TrainRun want = Train(2 * micro_batches, nullptr);
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    got[rank] = Train(micro_batches, (*groups)->Get("dp"), {}, distributed_optimizer);
  });
  ASSERT_EQ(want.steps.size(), 3u);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].steps.size(), 3u) << r;
    for (int i = 0; i < 3; ++i) {
      const StepMetrics &g = got[r].steps[i], &w = want.steps[i];
      EXPECT_EQ(g.labelled, w.labelled);
      EXPECT_EQ(g.tokens, w.tokens);
      EXPECT_NEAR(g.loss, w.loss, 1e-5 * w.loss) << "step " << i;
      EXPECT_NEAR(g.aux_loss, w.aux_loss, 1e-5 * w.aux_loss) << "step " << i;
      EXPECT_NEAR(g.grad_norm, w.grad_norm, 1e-4 * w.grad_norm) << "step " << i;
      EXPECT_EQ(g.expert_load, w.expert_load) << "step " << i;
      EXPECT_EQ(g.expert_load_imbalance, w.expert_load_imbalance) << "step " << i;
      // The buckets of the layers the backward finishes first start during it.
      EXPECT_GT(g.overlapped_buckets, 0) << "step " << i;
      EXPECT_EQ(w.overlapped_buckets, 0) << "step " << i;  // One rank: nothing to reduce.
    }
    for (const auto& [name, values] : want.params) {
      EXPECT_LT(RelativeError(got[r].params.at(name), values), 1e-5) << name;
    }
  }
  EXPECT_EQ(got[0].params, got[1].params);  // The replicas stay bitwise identical.
}

TEST(TrainerDataParallelTest, TwoReplicasTrainLikeOneRankWithTheirMicroBatches) {
  ExpectReplicasLikeOneRank(false);
}

// Megatron's distributed optimizer: each replica updates half of every bucket, the weights are
// all-gathered; the training is the one rank's all the same.
TEST(TrainerDataParallelTest, DistributedOptimizerReplicasTrainLikeOneRank) {
  ExpectReplicasLikeOneRank(true);
}

// Gradient accumulation with the overlap: only the last micro-batch's backward reports, the
// earlier ones' gradients accumulate first.
TEST(TrainerDataParallelTest, ReplicasWithTwoMicroBatchesEachTrainLikeOneRankWithFour) {
  ExpectReplicasLikeOneRank(false, 2);
  ExpectReplicasLikeOneRank(true, 2);
}

// The reductions started during the backward sum the same gradients as those started after it:
// bitwise the same training, with either optimizer.
TEST(TrainerDataParallelTest, OverlappedReductionTrainsBitwiseLikeReductionAfterTheBackward) {
  for (const bool distributed : {false, true}) {
    std::vector<TrainRun> got[2];
    for (const bool overlap : {true, false}) {
      got[overlap].resize(2);
      comm::InMemoryStore store;
      comm::RunRanks(2, [&](int rank) {
        auto groups = comm::ProcessGroups::CreateGloo(
            {{.kind = "dp", .members = {0, 1}}}, store,
            {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
        ASSERT_TRUE(groups.ok()) << groups.status();
        got[overlap][rank] = Train(1, (*groups)->Get("dp"), {}, distributed, nullptr, overlap);
      });
    }
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(got[1][r].steps.size(), 3u);
      ASSERT_EQ(got[0][r].steps.size(), 3u);
      for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(got[1][r].steps[i].loss, got[0][r].steps[i].loss);
        EXPECT_EQ(got[1][r].steps[i].grad_norm, got[0][r].steps[i].grad_norm);
        EXPECT_GT(got[1][r].steps[i].overlapped_buckets, 0);
        EXPECT_EQ(got[0][r].steps[i].overlapped_buckets, 0);
      }
      EXPECT_EQ(got[1][r].params, got[0][r].params) << "distributed " << distributed;
    }
  }
}

// Shared word embeddings (the output layer's weight, listed where the word embeddings finish in
// the backward) under dp with the overlapped reduction: the replicas stay bitwise equal and
// buckets still start during the backward.
TEST(TrainerDataParallelTest, SharedWordEmbeddingsLeaveTheOverlapAlone) {
  MimoModelConfig model = DpTestModel();
  model.language.share_embeddings_and_output_weights = true;
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    auto ops = kernels::NewCpuOps();
    got[rank] = TrainOn(*ops, model, 1, (*groups)->Get("dp"));
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].steps.size(), 3u);
    EXPECT_GT(got[r].steps[2].overlapped_buckets, 0) << r;
    EXPECT_EQ(got[r].params, got[1 - r].params);
  }
}

// The overlap's communication thread reduces over dp while the backward dispatches over ep: one
// communicator for both is refused.
TEST(TrainerDataParallelTest, RefusesADataParallelGroupThatIsAlsoTheExpertGroup) {
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    comm::Communicator* dp = (*groups)->Get("dp");
    auto ops = kernels::NewCpuOps();
    auto trainer = Trainer::Create(
        *ops, Model(), {.micro_batch_size = 2, .seq_length = 48, .dp = dp, .groups = {.ep = dp}});
    EXPECT_EQ(trainer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(trainer.status().message().find("ep shares its communicator"), std::string::npos)
        << trainer.status();
  });
}

// Expert parallelism inside the training step: two ranks, each its own samples and half of
// every MoE layer's experts (ep = dp = 2, expt_dp 1), train like one rank with both micro-batches:
// the same losses, norms and loads; the same dense parameters on both; each rank's experts equal
// its slice of the one rank's.
// Rank r's slice of a full expert tensor (experts outermost): with ep, experts [2r, 2r + 2) of 4;
// with expt_tp, part r of each expert's width F (fc1 (E, 2F, C): in the gate and the up rows;
// fc2 (E, C, F): the columns).
std::vector<float> ExpertSlice(const std::string& name, const std::vector<float>& full, int r,
                               bool expt_tp) {
  if (!expt_tp) {
    const size_t half = full.size() / 2;
    return {full.begin() + r * half, full.begin() + (r + 1) * half};
  }
  constexpr int64_t kExperts = 4, kHidden = 16, kFfn = 32, kPart = kFfn / 2;
  std::vector<float> out;
  const bool fc1 = name.find("linear_fc1") != std::string::npos;
  for (int64_t x = 0; x < kExperts; ++x) {
    if (fc1) {
      for (int b = 0; b < 2; ++b) {
        for (int64_t w = 0; w < kPart; ++w) {
          const int64_t row = x * 2 * kFfn + b * kFfn + r * kPart + w;
          out.insert(out.end(), full.begin() + row * kHidden, full.begin() + (row + 1) * kHidden);
        }
      }
    } else {
      for (int64_t c = 0; c < kHidden; ++c) {
        const int64_t at = (x * kHidden + c) * kFfn + r * kPart;
        out.insert(out.end(), full.begin() + at, full.begin() + at + kPart);
      }
    }
  }
  return out;
}

// Two ranks, each its own samples, with the experts split over them (`kind`: "ep": half of every
// MoE layer's experts each; "expt_tp": half of every expert's width each), train like one rank
// with both micro-batches: the same losses, norms and loads; the same dense parameters on both;
// each rank's experts equal its slice of the one rank's.
void ExpectExpertSplitLikeOneRank(const std::string& kind, bool distributed_optimizer = false) {
  const TrainRun want = Train(2, nullptr);
  std::vector<TrainRun> got(2);
  comm::InMemoryStore store;
  comm::RunRanks(2, [&](int rank) {
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1}}, {.kind = kind, .members = {0, 1}}}, store,
        {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    got[rank] = Train(1, (*groups)->Get("dp"), ModelGroupsOf(**groups), distributed_optimizer);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[r].steps.size(), 3u) << r;
    for (int i = 0; i < 3; ++i) {
      const StepMetrics &g = got[r].steps[i], &w = want.steps[i];
      EXPECT_NEAR(g.loss, w.loss, 1e-5 * w.loss) << "step " << i;
      EXPECT_NEAR(g.aux_loss, w.aux_loss, 1e-5 * w.aux_loss) << "step " << i;
      EXPECT_NEAR(g.grad_norm, w.grad_norm, 1e-4 * w.grad_norm) << "step " << i;
      EXPECT_EQ(g.expert_load, w.expert_load) << "step " << i;
      EXPECT_EQ(g.expert_load_imbalance, w.expert_load_imbalance) << "step " << i;
    }
    int experts = 0;
    for (const auto& [name, values] : want.params) {
      std::vector<float> slice = values;
      if (name.find(".mlp.experts.") != std::string::npos) {
        ++experts;
        slice = ExpertSlice(name, values, r, kind == "expt_tp");
      }
      EXPECT_LT(RelativeError(got[r].params.at(name), slice), 1e-5) << name << " on rank " << r;
    }
    EXPECT_EQ(experts, 4);  // fc1 and fc2 of 2 layers.
  }
}

TEST(TrainerDataParallelTest, ExpertParallelRanksTrainLikeOneRank) {
  ExpectExpertSplitLikeOneRank("ep");
}

TEST(TrainerDataParallelTest, ExpertTensorParallelRanksTrainLikeOneRank) {
  ExpectExpertSplitLikeOneRank("expt_tp");
}

// The distributed optimizer shards the dense parameters over dp; the experts, with no replica
// (expt_dp 1), stay with AdamW: the two share the norm and the update's decisions.
TEST(TrainerDataParallelTest, DistributedOptimizerWithUnreplicatedExpertsTrainsLikeOneRank) {
  ExpectExpertSplitLikeOneRank("ep", true);
}

// Four ranks, data parallel with two expert-parallel groups ({0, 1}, {2, 3}: each rank half of
// the experts) and the distributed optimizer: the dense parameters sharded over all four, the
// experts over the two ranks holding the same ones (expt_dp {0, 2}, {1, 3}); they train like one
// rank with the four micro-batches.
TEST(TrainerDataParallelTest, DistributedOptimizerWithExpertParallelismTrainsLikeOneRank) {
  const TrainRun want = Train(4, nullptr);
  std::vector<TrainRun> got(4);
  comm::InMemoryStore store;
  comm::RunRanks(4, [&](int rank) {
    const int ep = rank / 2 * 2, expt_dp = rank % 2;
    auto groups = comm::ProcessGroups::CreateGloo(
        {{.kind = "dp", .members = {0, 1, 2, 3}},
         {.kind = "ep", .members = {ep, ep + 1}},
         {.kind = "expt_dp", .members = {expt_dp, expt_dp + 2}}},
        store, {.rank = rank, .timeout = absl::Seconds(30), .hostname = "127.0.0.1"});
    ASSERT_TRUE(groups.ok()) << groups.status();
    got[rank] =
        Train(1, (*groups)->Get("dp"), ModelGroupsOf(**groups), true, (*groups)->Get("expt_dp"));
  });
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(got[r].steps.size(), 3u) << r;
    for (int i = 0; i < 3; ++i) {
      const StepMetrics &g = got[r].steps[i], &w = want.steps[i];
      EXPECT_NEAR(g.loss, w.loss, 1e-5 * w.loss) << "step " << i;
      EXPECT_NEAR(g.grad_norm, w.grad_norm, 1e-4 * w.grad_norm) << "step " << i;
      EXPECT_EQ(g.expert_load, w.expert_load) << "step " << i;
      EXPECT_EQ(g.expert_load_imbalance, w.expert_load_imbalance) << "step " << i;
    }
    for (const auto& [name, values] : want.params) {
      const bool expert = name.find(".mlp.experts.") != std::string::npos;
      const std::vector<float> slice = expert ? ExpertSlice(name, values, r % 2, false) : values;
      EXPECT_LT(RelativeError(got[r].params.at(name), slice), 1e-5) << name << " on rank " << r;
      // The dense parameters stay bitwise identical over the four replicas.
      if (!expert) {
        EXPECT_EQ(got[r].params.at(name), got[0].params.at(name)) << name;
      }
    }
  }
}

}  // namespace
}  // namespace mimo::worker
