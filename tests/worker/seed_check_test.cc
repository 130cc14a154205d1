// The selftest's seed properties and group order on real plans: every plan passes, and each kind
// of corrupted seed is caught and named precisely.
#include "worker/seed_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/plan_proto.h"
#include "coordinator/spec_validation.h"
#include "tests/coordinator/test_server.h"
#include "tests/worker/worker_test_util.h"
#include "worker/group_specs.h"

namespace mimo::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::JobSpec Spec(bool random_init = false) {
  v1::JobSpec spec = coordinator::testing::SmallSpec("seeds");
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  spec.mutable_training()->set_data_parallel_random_init(random_init);
  return spec;
}

// The example layout (worker_test_util.h), with or without data-parallel random init.
v1::JobSpec ExampleSpec(bool random_init = false) {
  v1::JobSpec spec = testing::ExampleSelftestSpec();
  spec.mutable_training()->set_data_parallel_random_init(random_init);
  return spec;
}

// The language module alone with the given sizes (world = tp*cp*pp*dp).
v1::JobSpec LanguageSpec(int tp, int cp, int pp, int dp, int ep, int etp, bool random_init) {
  v1::JobSpec spec = Spec(random_init);
  v1::Module language = spec.modules(1);
  spec.clear_modules();
  v1::Parallelism* p = language.mutable_parallelism();
  p->set_tp(tp);
  p->set_cp(cp);
  p->set_pp(pp);
  p->set_dp(dp);
  p->set_ep(ep);
  p->set_etp(etp);
  p->set_rank_offset(0);
  *spec.add_modules() = language;
  spec.mutable_resources()->set_workers(tp * cp * pp * dp);
  return spec;
}

// Every rank's assignment, as the coordinator sends it.
std::vector<v1::RankAssignment> Ranks(const v1::JobSpec& spec) {
  absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(spec, nullptr);
  EXPECT_TRUE(plan.ok()) << plan.status();
  std::vector<v1::RankAssignment> ranks;
  if (!plan.ok()) return ranks;
  for (int r = 0; r < plan->world_size(); ++r) ranks.push_back(coordinator::RankToProto(*plan, r));
  return ranks;
}

// The records of a group's members.
std::vector<SeedRecord> Records(const std::vector<v1::RankAssignment>& ranks,
                                const std::vector<int>& members) {
  std::vector<SeedRecord> out;
  for (int m : members) out.push_back(SeedRecordOf(ranks[m]));
  return out;
}

// What the selftest checks on every rank, without communicators.
absl::Status CheckAll(const v1::JobSpec& spec, const std::vector<v1::RankAssignment>& ranks) {
  const bool random_init = spec.training().data_parallel_random_init();
  for (const v1::RankAssignment& rank : ranks) {
    absl::Status s = CheckOwnSeeds(rank, JobSeed(spec), random_init);
    if (!s.ok()) return s;
    absl::StatusOr<std::vector<comm::GroupSpec>> groups = GroupSpecsOf(rank);
    if (!groups.ok()) return groups.status();
    for (const comm::GroupSpec& g : *groups) {
      if (absl::StartsWith(g.kind, "link_")) continue;  // Links join modules: no seed property.
      s = CheckGroupSeeds(g.kind, g.members, Records(ranks, g.members), random_init);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

TEST(SeedCheckTest, EveryPlannedLayoutPasses) {
  for (bool random_init : {false, true}) {
    SCOPED_TRACE(random_init ? "data-parallel random init" : "no random init");
    for (const v1::JobSpec& spec :
         {Spec(random_init), ExampleSpec(random_init), LanguageSpec(2, 1, 2, 2, 2, 1, random_init),
          LanguageSpec(1, 2, 2, 2, 2, 1, random_init), LanguageSpec(2, 1, 1, 4, 2, 2, random_init),
          LanguageSpec(1, 1, 2, 12, 4, 1, random_init)}) {
      const std::vector<v1::RankAssignment> ranks = Ranks(spec);
      ASSERT_FALSE(ranks.empty());
      EXPECT_TRUE(CheckAll(spec, ranks).ok()) << CheckAll(spec, ranks);
    }
  }
}

TEST(SeedCheckTest, EqualTensorParallelSeedsAcrossTpRanksAreNamed) {
  std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec());
  ranks[5].mutable_seeds()->set_tensor_parallel(ranks[4].seeds().tensor_parallel());
  const absl::Status s = CheckGroupSeeds("tp", {4, 5}, Records(ranks, {4, 5}), false);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("seeds over group tp [4,5]: rank 4 (tp 0, dp 0, pp 0, ep 0, expt_tp 0) "
                        "and rank 5 (tp 1, dp 0, pp 0"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("share stage 0 but not the tp rank, yet have "
                                                  "equal tensor_parallel seeds (3952, 3952)"));
}

TEST(SeedCheckTest, DifferentDataParallelSeedsAcrossDpRanksAreNamed) {
  std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec());
  ranks[3].mutable_seeds()->set_data_parallel(ranks[3].seeds().data_parallel() + 10);
  const absl::Status s = CheckGroupSeeds("dp", {2, 3}, Records(ranks, {2, 3}), false);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("group dp [2,3]: rank 2 (tp 0, dp 0, pp 0) and rank 3 (tp 0, dp 1, pp 0) "
                        "share stage 0 but have different data_parallel seeds (1234, 1244)"));
}

TEST(SeedCheckTest, WithRandomInitEqualDataParallelSeedsAcrossDpRanksAreNamed) {
  std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec(/*random_init=*/true));
  ranks[3].mutable_seeds()->set_data_parallel(ranks[2].seeds().data_parallel());
  const absl::Status s = CheckGroupSeeds("dp", {2, 3}, Records(ranks, {2, 3}), true);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("differ in dp rank with data-parallel random init but share the "
                        "data_parallel seed 1234"));
}

TEST(SeedCheckTest, EqualExpertSeedsOfDifferentShardsAreNamed) {
  const v1::JobSpec spec = ExampleSpec();
  std::vector<v1::RankAssignment> ranks = Ranks(spec);
  const std::vector<int> ep(ranks[4].groups().at("ep").ranks().begin(),
                            ranks[4].groups().at("ep").ranks().end());
  ASSERT_EQ(ep.size(), 2u);
  ranks[ep[1]].mutable_seeds()->set_expert(ranks[ep[0]].seeds().expert());
  const absl::Status s = CheckGroupSeeds("ep", ep, Records(ranks, ep), false);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(absl::StrCat("seeds over group ep [", ep[0], ",", ep[1], "]")));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("but hold different expert shards, yet have equal expert seeds"));
}

TEST(SeedCheckTest, EqualDataParallelSeedsAcrossStagesAreNamed) {
  const v1::JobSpec spec = LanguageSpec(1, 1, 2, 2, 2, 1, false);
  std::vector<v1::RankAssignment> ranks = Ranks(spec);
  const std::vector<int> pp(ranks[0].groups().at("pp").ranks().begin(),
                            ranks[0].groups().at("pp").ranks().end());
  ASSERT_EQ(pp.size(), 2u);
  ranks[pp[1]].mutable_seeds()->set_data_parallel(ranks[pp[0]].seeds().data_parallel());
  ranks[pp[1]].mutable_seeds()->set_base(ranks[pp[0]].seeds().base());
  const absl::Status s = CheckGroupSeeds("pp", pp, Records(ranks, pp), false);
  EXPECT_THAT(std::string(s.message()), HasSubstr("differ in stage but share the data_parallel"));
}

TEST(SeedCheckTest, MembersOutOfOrderAreNamed) {
  const std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec());
  const absl::Status s = CheckGroupSeeds("tp", {4, 5}, Records(ranks, {5, 4}), false);
  EXPECT_THAT(std::string(s.message()), HasSubstr("member 0 is rank 4 but rank 5 answered"));
}

TEST(SeedCheckTest, OwnSeedsAgainstTheFormula) {
  std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec());
  // Rank 7: tp 1, dp 1, ep 1 (expert view [etp=1, ep=2, expt_dp=2]).
  EXPECT_TRUE(CheckOwnSeeds(ranks[7], 1234, false).ok());
  ranks[7].mutable_seeds()->set_expert(ranks[7].seeds().expert() + 1);
  const absl::Status s = CheckOwnSeeds(ranks[7], 1234, false);
  EXPECT_THAT(std::string(s.message()), HasSubstr("seeds of rank 7"));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(absl::StrCat("expert seed is ", ranks[7].seeds().expert(),
                                     ", but job seed 1234 gives ", ranks[7].seeds().expert() - 1)));
  EXPECT_FALSE(CheckOwnSeeds(ranks[0], 99, false).ok());
}

TEST(SeedCheckTest, RecordsSurvivePacking) {
  const std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec());
  for (int r : {0, 7}) {
    const SeedRecord record = SeedRecordOf(ranks[r]);
    const auto packed = record.Pack();
    const SeedRecord back = SeedRecord::Unpack(packed);
    EXPECT_EQ(back.rank, record.rank);
    EXPECT_EQ(back.tensor_parallel, record.tensor_parallel);
    EXPECT_EQ(back.expert, record.expert);
    EXPECT_EQ(back.ep, record.ep);
    EXPECT_EQ(back.expt_tp, record.expt_tp);
  }
}

std::vector<std::string> Kinds(const std::vector<comm::GroupSpec>& groups) {
  std::vector<std::string> kinds;
  for (const comm::GroupSpec& g : groups) kinds.push_back(g.kind);
  return kinds;
}

TEST(GroupSpecsTest, InTheGlobalKindOrderWithoutEmptyGroups) {
  const std::vector<v1::RankAssignment> ranks = Ranks(ExampleSpec());
  absl::StatusOr<std::vector<comm::GroupSpec>> language = GroupSpecsOf(ranks[4]);
  ASSERT_TRUE(language.ok()) << language.status();
  // Then its links: language rank 4 leads replica 0, fed by vision rank 0 and audio rank 2.
  EXPECT_THAT(Kinds(*language),
              ElementsAre("tp", "cp", "dp", "pp", "dp_cp", "tp_cp", "tp_pp", "tp_dp_cp",
                          "tp_cp_dp_pp", "embd", "pos_embd", "ep", "expt_tp", "expt_dp",
                          "expt_tp_ep", "expt_tp_ep_pp", "link_vision_0_4", "link_audio_2_4"));
  EXPECT_THAT((*language)[0].members, ElementsAre(4, 5));
  EXPECT_THAT(language->back().members, ElementsAre(2, 4));
  absl::StatusOr<std::vector<comm::GroupSpec>> vision = GroupSpecsOf(ranks[0]);
  ASSERT_TRUE(vision.ok());
  EXPECT_THAT(Kinds(*vision),
              ElementsAre("tp", "cp", "dp", "pp", "dp_cp", "tp_cp", "tp_pp", "tp_dp_cp",
                          "tp_cp_dp_pp", "embd", "pos_embd", "link_vision_0_4", "link_vision_0_6"));
  // Tensor-parallel peers of a leader hold no link.
  absl::StatusOr<std::vector<comm::GroupSpec>> peer = GroupSpecsOf(ranks[5]);
  ASSERT_TRUE(peer.ok());
  EXPECT_EQ(peer->size(), 16u);
  // The last of two stages has embd but no pos_embd.
  const std::vector<v1::RankAssignment> staged = Ranks(LanguageSpec(1, 1, 2, 1, 1, 1, false));
  absl::StatusOr<std::vector<comm::GroupSpec>> last = GroupSpecsOf(staged[1]);
  ASSERT_TRUE(last.ok());
  EXPECT_THAT(Kinds(*last), ::testing::Contains("embd"));
  EXPECT_THAT(Kinds(*last), ::testing::Not(::testing::Contains("pos_embd")));
}

TEST(GroupSpecsTest, UnknownKindsAndForeignGroupsAreRefused) {
  v1::RankAssignment rank = Ranks(ExampleSpec())[4];
  v1::RankAssignment unknown = rank;
  (*unknown.mutable_groups())["zz"].add_ranks(4);
  EXPECT_THAT(std::string(GroupSpecsOf(unknown).status().message()), HasSubstr("'zz'"));
  v1::RankAssignment foreign = rank;
  (*foreign.mutable_groups())["tp"].clear_ranks();
  (*foreign.mutable_groups())["tp"].add_ranks(6);
  (*foreign.mutable_groups())["tp"].add_ranks(7);
  EXPECT_THAT(std::string(GroupSpecsOf(foreign).status().message()),
              HasSubstr("group tp does not contain rank 4"));
}

TEST(GroupSpecsTest, ForeignAndRepeatedLinksAreRefused) {
  const v1::RankAssignment rank = Ranks(ExampleSpec())[4];
  ASSERT_EQ(rank.links_size(), 2);
  v1::RankAssignment foreign = rank;
  foreign.mutable_links(0)->set_language_rank(6);
  EXPECT_THAT(std::string(GroupSpecsOf(foreign).status().message()),
              HasSubstr("link link_vision_0_4 between ranks 0 and 6 does not connect rank 4"));
  v1::RankAssignment repeated = rank;
  *repeated.add_links() = rank.links(0);
  EXPECT_THAT(std::string(GroupSpecsOf(repeated).status().message()),
              HasSubstr("a link kind starts with 'link_' and is given once"));
  v1::RankAssignment named_like_a_group = rank;
  named_like_a_group.mutable_links(0)->set_kind("tp");
  EXPECT_FALSE(GroupSpecsOf(named_like_a_group).ok());
}

}  // namespace
}  // namespace mimo::worker
