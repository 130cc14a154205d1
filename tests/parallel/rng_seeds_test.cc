// Megatron's seed formulas, and RNG streams keyed by (seed, kind).
#include "parallel/rng_seeds.h"

#include <gtest/gtest.h>

#include "parallel/rank_plan.h"

namespace mimo::parallel {
namespace {

TEST(ComputeRankSeedsTest, MegatronFormulas) {
  const RankSeeds seeds =
      ComputeRankSeeds(1000, false, DenseCoords{.tp = 3, .cp = 1, .dp = 5, .pp = 2},
                       ExpertCoords{.expt_tp = 1, .ep = 4, .expt_dp = 0, .pp = 2});
  EXPECT_EQ(seeds.base, 1200);
  EXPECT_EQ(seeds.data_parallel, 1200);
  EXPECT_EQ(seeds.tensor_parallel, 1200 + 2718 + 3);
  EXPECT_EQ(seeds.expert, 1200 + 1024 + 400 + 1);
}

TEST(ComputeRankSeedsTest, DataParallelRandomInitAddsTenPerDpRank) {
  const RankSeeds seeds = ComputeRankSeeds(1000, true, DenseCoords{.dp = 5, .pp = 2}, std::nullopt);
  EXPECT_EQ(seeds.base, 1250);
  EXPECT_EQ(seeds.data_parallel, 1250);
  EXPECT_FALSE(seeds.expert.has_value());
}

TEST(RngStreamTest, DeterministicAndDistinctAcrossIndicesAndSubstreams) {
  const RngStream a(42, RngStreamKind::kTensorParallel);
  EXPECT_EQ(a.Block(0), RngStream(42, RngStreamKind::kTensorParallel).Block(0));
  EXPECT_NE(a.Block(0), a.Block(1));
  EXPECT_NE(a.Block(0), RngStream(42, RngStreamKind::kTensorParallel, 1).Block(0));
  EXPECT_NE(a.Block(0), RngStream(43, RngStreamKind::kTensorParallel).Block(0));
  // The high half of the seed matters too.
  EXPECT_NE(RngStream(int64_t{1} << 40, RngStreamKind::kExpert).Block(0),
            RngStream(0, RngStreamKind::kExpert).Block(0));
}

// tp = 8 with ep >= 18: Megatron's tensor-parallel seed of tp_rank 6 equals the expert seed of
// ep_rank 17, expt_tp_rank 0 (base + 2724 both). Keyed by (seed, kind), the streams differ.
TEST(RngStreamTest, EqualSeedValuesOfDifferentKindsGiveDifferentStreams) {
  LayoutSpec spec;
  spec.world_size = 144;
  spec.modules = {{.name = "language", .tp = 8, .dp = 18, .ep = 18}};
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  int tp_rank6 = -1, ep_rank17 = -1;
  for (int r = 0; r < plan->world_size(); ++r) {
    const RankAssignment& a = plan->rank(r);
    if (tp_rank6 < 0 && a.dense.tp == 6) tp_rank6 = r;
    if (ep_rank17 < 0 && a.expert->ep == 17 && a.expert->expt_tp == 0) ep_rank17 = r;
  }
  ASSERT_GE(tp_rank6, 0);
  ASSERT_GE(ep_rank17, 0);
  const int64_t seed = plan->rank(tp_rank6).seeds.tensor_parallel;
  ASSERT_EQ(seed, plan->rank(ep_rank17).seeds.expert);  // The collision Megatron has.
  ASSERT_EQ(seed, 1234 + 2724);
  const RngStream tensor(seed, RngStreamKind::kTensorParallel);
  const RngStream expert(*plan->rank(ep_rank17).seeds.expert, RngStreamKind::kExpert);
  for (uint64_t i = 0; i < 64; ++i) EXPECT_NE(tensor.Block(i), expert.Block(i)) << i;
  // Not merely shifted copies of one another either.
  for (uint64_t i = 0; i < 64; ++i) EXPECT_NE(tensor.Block(i), expert.Block(0)) << i;
}

}  // namespace
}  // namespace mimo::parallel
