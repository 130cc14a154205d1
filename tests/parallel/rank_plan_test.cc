// BuildRankPlan on hand-checked layouts: coordinates, every group kind, seeds.
#include "parallel/rank_plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mimo::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<int> G(const RankPlan& plan, int rank, GroupKind kind) {
  absl::Span<const int> g = plan.Group(rank, kind);
  return {g.begin(), g.end()};
}

// The self-test layout: vision tp=2 on 0-1, audio dp=2 on 2-3, language tp=2 dp=2 ep=2 on 4-7.
RankPlan SelfTestPlan() {
  LayoutSpec spec;
  spec.world_size = 8;
  spec.modules = {{.name = "vision", .tp = 2, .dp = 1, .rank_offset = 0},
                  {.name = "audio", .dp = 2, .rank_offset = 2},
                  {.name = "language", .tp = 2, .dp = 2, .ep = 2, .rank_offset = 4}};
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *std::move(plan);
}

TEST(RankPlanTest, SelfTestLayoutModulesAndCoordinates) {
  const RankPlan plan = SelfTestPlan();
  ASSERT_EQ(plan.world_size(), 8);
  EXPECT_EQ(plan.language().config().name, "language");
  EXPECT_EQ(plan.module_of(1).config().name, "vision");
  EXPECT_EQ(plan.module_of(3).config().name, "audio");
  EXPECT_EQ(plan.module_of(4).config().name, "language");
  EXPECT_EQ(plan.rank(1).dense, (DenseCoords{.tp = 1}));
  EXPECT_EQ(plan.rank(3).dense, (DenseCoords{.dp = 1}));
  EXPECT_FALSE(plan.rank(3).expert.has_value());
  // Language dense view [tp=2, cp=1, dp=2, pp=1]; expert view [etp=1, ep=2, expt_dp=2, pp=1].
  EXPECT_EQ(plan.rank(7).dense, (DenseCoords{.tp = 1, .dp = 1}));
  EXPECT_EQ(plan.rank(5).expert, (ExpertCoords{.ep = 1}));
  EXPECT_EQ(plan.rank(6).expert, (ExpertCoords{.expt_dp = 1}));
  EXPECT_EQ(plan.rank(7).expert, (ExpertCoords{.ep = 1, .expt_dp = 1}));
}

TEST(RankPlanTest, SelfTestLayoutGroups) {
  const RankPlan plan = SelfTestPlan();
  EXPECT_THAT(G(plan, 0, GroupKind::kTp), ElementsAre(0, 1));
  EXPECT_THAT(G(plan, 0, GroupKind::kDp), ElementsAre(0));
  EXPECT_THAT(G(plan, 1, GroupKind::kTpCpDpPp), ElementsAre(0, 1));
  EXPECT_THAT(G(plan, 2, GroupKind::kDp), ElementsAre(2, 3));
  EXPECT_THAT(G(plan, 3, GroupKind::kTp), ElementsAre(3));
  EXPECT_THAT(G(plan, 3, GroupKind::kEp), IsEmpty());
  EXPECT_THAT(G(plan, 6, GroupKind::kTp), ElementsAre(6, 7));
  EXPECT_THAT(G(plan, 6, GroupKind::kDp), ElementsAre(4, 6));
  EXPECT_THAT(G(plan, 7, GroupKind::kDpCp), ElementsAre(5, 7));
  EXPECT_THAT(G(plan, 7, GroupKind::kTpDpCp), ElementsAre(4, 5, 6, 7));
  EXPECT_THAT(G(plan, 5, GroupKind::kEp), ElementsAre(4, 5));
  EXPECT_THAT(G(plan, 6, GroupKind::kEp), ElementsAre(6, 7));
  EXPECT_THAT(G(plan, 5, GroupKind::kExptTp), ElementsAre(5));
  EXPECT_THAT(G(plan, 5, GroupKind::kExptDp), ElementsAre(5, 7));
  EXPECT_THAT(G(plan, 6, GroupKind::kExptTpEp), ElementsAre(6, 7));
  EXPECT_THAT(G(plan, 6, GroupKind::kExptTpEpPp), ElementsAre(6, 7));
  EXPECT_THAT(G(plan, 6, GroupKind::kEmbd), ElementsAre(6));
  EXPECT_THAT(G(plan, 6, GroupKind::kPosEmbd), ElementsAre(6));
}

TEST(RankPlanTest, SelfTestLayoutSeeds) {
  const RankPlan plan = SelfTestPlan();
  EXPECT_EQ(plan.rank(1).seeds, (RankSeeds{.base = 1234,
                                           .tensor_parallel = 1234 + 2718 + 1,
                                           .data_parallel = 1234,
                                           .expert = std::nullopt}));
  // Rank 7: tp_rank 1, ep_rank 1, expt_tp_rank 0.
  EXPECT_EQ(plan.rank(7).seeds, (RankSeeds{.base = 1234,
                                           .tensor_parallel = 1234 + 2718 + 1,
                                           .data_parallel = 1234,
                                           .expert = 1234 + 1024 + 100}));
}

// Language on 16 ranks: tp=2, cp=2, pp=2, dp=2; ep=4, etp=2 -> expt_dp = 1.
RankPlan DeepPlan() {
  LayoutSpec spec;
  spec.world_size = 16;
  spec.seed = 7;
  spec.modules = {{.name = "language", .tp = 2, .cp = 2, .pp = 2, .dp = 2, .ep = 2, .etp = 2}};
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *std::move(plan);
}

TEST(RankPlanTest, DenseGroupsWithEveryDim) {
  const RankPlan plan = DeepPlan();
  // Strides: tp 1, cp 2, dp 4, pp 8. Rank 13 = tp 1, cp 0, dp 1, pp 1.
  EXPECT_EQ(plan.rank(13).dense, (DenseCoords{.tp = 1, .cp = 0, .dp = 1, .pp = 1}));
  EXPECT_THAT(G(plan, 13, GroupKind::kTp), ElementsAre(12, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kCp), ElementsAre(13, 15));
  EXPECT_THAT(G(plan, 13, GroupKind::kDp), ElementsAre(9, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kPp), ElementsAre(5, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kDpCp), ElementsAre(9, 11, 13, 15));
  EXPECT_THAT(G(plan, 13, GroupKind::kTpCp), ElementsAre(12, 13, 14, 15));
  EXPECT_THAT(G(plan, 13, GroupKind::kTpPp), ElementsAre(4, 5, 12, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kTpDpCp), ElementsAre(8, 9, 10, 11, 12, 13, 14, 15));
  EXPECT_EQ(G(plan, 13, GroupKind::kTpCpDpPp).size(), 16u);
  EXPECT_EQ(plan.language().Groups(GroupKind::kDpCp).size(), 4u);
}

TEST(RankPlanTest, EmbeddingGroupsFollowThePipeline) {
  const RankPlan plan = DeepPlan();
  EXPECT_THAT(G(plan, 5, GroupKind::kEmbd), ElementsAre(5, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kEmbd), ElementsAre(5, 13));
  EXPECT_THAT(G(plan, 5, GroupKind::kPosEmbd), ElementsAre(5));
  EXPECT_THAT(G(plan, 13, GroupKind::kPosEmbd), IsEmpty());
}

TEST(RankPlanTest, MiddlePipelineStagesHaveNoEmbeddingGroup) {
  LayoutSpec spec;
  spec.world_size = 3;
  spec.modules = {{.name = "language", .pp = 3}};
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(G(*plan, 0, GroupKind::kEmbd), ElementsAre(0, 2));
  EXPECT_THAT(G(*plan, 1, GroupKind::kEmbd), IsEmpty());
  EXPECT_THAT(G(*plan, 2, GroupKind::kEmbd), ElementsAre(0, 2));
  EXPECT_THAT(G(*plan, 1, GroupKind::kPosEmbd), IsEmpty());
}

TEST(RankPlanTest, ExpertGroups) {
  const RankPlan plan = DeepPlan();
  // Expert view [expt_tp=2, ep=2, expt_dp=2, pp=2]: strides 1, 2, 4, 8.
  EXPECT_EQ(plan.rank(13).expert, (ExpertCoords{.expt_tp = 1, .ep = 0, .expt_dp = 1, .pp = 1}));
  EXPECT_THAT(G(plan, 13, GroupKind::kExptTp), ElementsAre(12, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kEp), ElementsAre(13, 15));
  EXPECT_THAT(G(plan, 13, GroupKind::kExptDp), ElementsAre(9, 13));
  EXPECT_THAT(G(plan, 13, GroupKind::kExptTpEp), ElementsAre(12, 13, 14, 15));
  EXPECT_THAT(G(plan, 13, GroupKind::kExptTpEpPp), ElementsAre(4, 5, 6, 7, 12, 13, 14, 15));
  EXPECT_EQ(plan.rank(13).seeds.expert, 7 + 100 + 1024 + 0 + 1);
}

TEST(RankPlanTest, DataParallelRandomInit) {
  LayoutSpec spec;
  spec.world_size = 16;
  spec.seed = 7;
  spec.data_parallel_random_init = true;
  spec.modules = {{.name = "language", .tp = 2, .cp = 2, .pp = 2, .dp = 2, .ep = 2, .etp = 2}};
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->rank(13).seeds.base, 7 + 100 + 10);
  EXPECT_EQ(plan->rank(13).seeds.tensor_parallel, 7 + 100 + 10 + 2718 + 1);
  EXPECT_EQ(plan->rank(5).seeds.base, 7 + 10);
}

TEST(RankPlanTest, InvalidLayoutReturnsViolations) {
  LayoutSpec spec;
  spec.world_size = 4;
  spec.modules = {{.name = "vision", .tp = 2, .dp = 1, .ep = 2, .rank_offset = 0},
                  {.name = "language", .tp = 2, .dp = 1, .rank_offset = 2}};
  std::vector<LayoutViolation> violations;
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec, &violations);
  ASSERT_FALSE(plan.ok());
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].module, 0);
  EXPECT_EQ(violations[0].field, "ep");
}

TEST(RankPlanTest, GroupKindNames) {
  std::vector<std::string> names;
  for (int k = 0; k < kNumGroupKinds; ++k) {
    names.emplace_back(GroupKindName(static_cast<GroupKind>(k)));
  }
  EXPECT_THAT(names, ElementsAre("tp", "cp", "dp", "pp", "dp_cp", "tp_cp", "tp_pp", "tp_dp_cp",
                                 "tp_cp_dp_pp", "embd", "pos_embd", "ep", "expt_tp", "expt_dp",
                                 "expt_tp_ep", "expt_tp_ep_pp"));
}

}  // namespace
}  // namespace mimo::parallel
