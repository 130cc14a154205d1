// BridgeLinks on hand-checked layouts (fan-in, fan-out, pipelines, several encoders) and, on random
// layouts, the per-rank lookup against the global list and every sample reaching one language
// replica.
#include "parallel/bridge.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <tuple>

namespace mimo::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

RankPlan Plan(std::vector<ModuleParallelism> modules) {
  LayoutSpec spec;
  spec.modules = std::move(modules);
  absl::StatusOr<RankPlan> plan = BuildRankPlan(spec);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *std::move(plan);
}

// (encoder rank, language rank) pairs.
std::vector<std::pair<int, int>> Pairs(const std::vector<BridgeLink>& links) {
  std::vector<std::pair<int, int>> out;
  for (const BridgeLink& l : links) out.emplace_back(l.encoder_rank, l.language_rank);
  return out;
}

using P = std::pair<int, int>;

TEST(BridgeTest, SelfTestLayout) {
  // vision tp=2 on 0-1, audio dp=2 on 2-3, language tp=2 dp=2 ep=2 on 4-7 (replica leaders 4, 6).
  const RankPlan plan = Plan({{.name = "vision", .tp = 2, .dp = 1, .rank_offset = 0},
                              {.name = "audio", .dp = 2, .rank_offset = 2},
                              {.name = "language", .tp = 2, .dp = 2, .ep = 2, .rank_offset = 4}});
  const std::vector<BridgeLink> links = BridgeLinks(plan);
  EXPECT_THAT(Pairs(links), ElementsAre(P(0, 4), P(0, 6), P(2, 4), P(3, 6)));
  EXPECT_EQ(links[0].encoder, 0);
  EXPECT_EQ(links[2].encoder, 1);
  EXPECT_EQ(BridgeLinkKind(plan, links[0]), "link_vision_0_4");
  EXPECT_EQ(BridgeLinkKind(plan, links[3]), "link_audio_3_6");
  EXPECT_THAT(Pairs(BridgeLinksOf(plan, 4)), ElementsAre(P(0, 4), P(2, 4)));
  EXPECT_THAT(Pairs(BridgeLinksOf(plan, 6)), ElementsAre(P(0, 6), P(3, 6)));
  EXPECT_THAT(Pairs(BridgeLinksOf(plan, 0)), ElementsAre(P(0, 4), P(0, 6)));
  // Tensor-parallel peers of a leader hold no link.
  EXPECT_THAT(BridgeLinksOf(plan, 1), IsEmpty());
  EXPECT_THAT(BridgeLinksOf(plan, 5), IsEmpty());
  EXPECT_THAT(BridgeLinksOf(plan, 7), IsEmpty());
}

TEST(BridgeTest, FanInFromMoreEncoderReplicas) {
  // vision dp=4 on 0-3 feeds language dp=2 on 4-5: two encoder replicas per language replica.
  const RankPlan plan = Plan({{.name = "vision", .dp = 4, .rank_offset = 0},
                              {.name = "language", .dp = 2, .rank_offset = 4}});
  EXPECT_THAT(Pairs(BridgeLinks(plan)), ElementsAre(P(0, 4), P(1, 4), P(2, 5), P(3, 5)));
  EXPECT_THAT(Pairs(BridgeLinksOf(plan, 5)), ElementsAre(P(2, 5), P(3, 5)));
  EXPECT_THAT(Pairs(BridgeLinksOf(plan, 1)), ElementsAre(P(1, 4)));
}

TEST(BridgeTest, PipelinesLinkTheEncodersLastStageToTheLanguagesFirst) {
  // vision tp=2 pp=2 dp=1 on 0-3 (last stage: 2-3); language tp=1 pp=2 dp=2 on 4-7, dense view
  // (tp, cp, dp, pp): stage 0 holds 4 (dp 0) and 5 (dp 1), stage 1 holds 6 and 7.
  const RankPlan plan = Plan({{.name = "vision", .tp = 2, .pp = 2, .dp = 1, .rank_offset = 0},
                              {.name = "language", .pp = 2, .dp = 2, .rank_offset = 4}});
  EXPECT_THAT(Pairs(BridgeLinks(plan)), ElementsAre(P(2, 4), P(2, 5)));
  EXPECT_THAT(BridgeLinksOf(plan, 0), IsEmpty());
  EXPECT_THAT(BridgeLinksOf(plan, 6), IsEmpty());
}

TEST(BridgeTest, ALanguageOnlyPlanHasNoLinks) {
  const RankPlan plan = Plan({{.name = "language", .tp = 2, .dp = 2, .rank_offset = 0}});
  EXPECT_THAT(BridgeLinks(plan), IsEmpty());
  for (int r = 0; r < 4; ++r) EXPECT_THAT(BridgeLinksOf(plan, r), IsEmpty());
}

// Random valid layouts: every rank's links are exactly its share of the global list, in the same
// order, and for every sample of a batch split into contiguous blocks per replica, the encoder
// replica holding it is linked to the language replica holding it (and to no other that would
// take it twice).
TEST(BridgeTest, RandomLayoutsAgreeAndRouteEverySampleOnce) {
  std::mt19937 random(77);
  auto pick = [&](std::initializer_list<int> values) {
    return *(values.begin() + random() % values.size());
  };
  for (int trial = 0; trial < 200; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    const int language_dp = pick({1, 2, 4, 8});
    std::vector<ModuleParallelism> modules;
    int offset = 0;
    const int encoders = random() % 3;
    for (int e = 0; e < encoders; ++e) {
      ModuleParallelism m{.name = "enc" + std::to_string(e),
                          .tp = pick({1, 2}),
                          .cp = pick({1, 3}),
                          .pp = pick({1, 2}),
                          .dp = pick({1, 2, 4, 8, 16}),
                          .rank_offset = offset};
      offset += m.tp * m.cp * m.pp * *m.dp;
      modules.push_back(m);
    }
    ModuleParallelism language{.name = "language",
                               .tp = pick({1, 2}),
                               .pp = pick({1, 3}),
                               .dp = language_dp,
                               .rank_offset = offset};
    modules.push_back(language);
    const RankPlan plan = Plan(modules);
    const std::vector<BridgeLink> all = BridgeLinks(plan);
    for (int r = 0; r < plan.world_size(); ++r) {
      std::vector<BridgeLink> expected;
      for (const BridgeLink& l : all) {
        if (l.encoder_rank == r || l.language_rank == r) expected.push_back(l);
      }
      ASSERT_EQ(BridgeLinksOf(plan, r), expected) << "rank " << r;
    }
    std::set<std::tuple<int, int, int>> linked;
    for (const BridgeLink& l : all) {
      EXPECT_TRUE(linked.insert({l.encoder, l.encoder_rank, l.language_rank}).second);
      const ModulePlan& e = plan.modules()[l.encoder];
      EXPECT_EQ(e.dense_view().Coordinate(l.encoder_rank, 3), e.config().pp - 1);
      EXPECT_EQ(plan.language().dense_view().Coordinate(l.language_rank, 3), 0);
    }
    const GridView& lv = plan.language().dense_view();
    for (int m = 0; m < encoders; ++m) {
      const ModulePlan& e = plan.modules()[m];
      const int edp = e.config().dp;
      const int batch = std::max(edp, language_dp) * 3;
      int links_of_module = 0;
      for (const BridgeLink& l : all) links_of_module += l.encoder == m;
      EXPECT_EQ(links_of_module, std::max(edp, language_dp));
      for (int s = 0; s < batch; ++s) {
        const int er = s / (batch / edp);
        const int lr = s / (batch / language_dp);
        const int from = e.dense_view().RankAt(std::vector<int>{0, 0, er, e.config().pp - 1});
        const int to = lv.RankAt(std::vector<int>{0, 0, lr, 0});
        EXPECT_TRUE(linked.contains({m, from, to})) << "sample " << s;
      }
    }
  }
}

}  // namespace
}  // namespace mimo::parallel
