// RankPlanToProto / RankToProto: a hand-checked plan's coordinates, seeds and groups, groups left
// out on request, the embedding groups empty off the first and last stages.
#include "coordinator/plan_proto.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "coordinator/spec_validation.h"
#include "tests/coordinator/spec_test_util.h"

namespace mimo::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using testing::TpLayoutSpec;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;

std::vector<int> Members(const v1::RankAssignment& a, const std::string& kind) {
  const auto it = a.groups().find(kind);
  if (it == a.groups().end()) {
    ADD_FAILURE() << "rank " << a.rank() << " has no group " << kind;
    return {};
  }
  return {it->second.ranks().begin(), it->second.ranks().end()};
}

std::vector<std::string> GroupKeys(const v1::RankAssignment& a) {
  std::vector<std::string> keys;
  for (const auto& [key, group] : a.groups()) keys.push_back(key);
  return keys;
}

TEST(RankPlanToProtoTest, MatchesHandCheckedPlan) {
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(TpLayoutSpec(), nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const v1::RankPlan proto = RankPlanToProto(*plan);
  EXPECT_EQ(proto.world_size(), 8);
  EXPECT_EQ(proto.seed(), 1234);

  ASSERT_EQ(proto.modules_size(), 3);
  const v1::ModulePlan& vision = proto.modules(0);
  EXPECT_EQ(vision.name(), "vision");
  EXPECT_FALSE(vision.language());
  EXPECT_EQ(
      std::vector<int>({vision.tp(), vision.cp(), vision.pp(), vision.dp(), vision.ep(),
                        vision.etp(), vision.expt_dp(), vision.rank_offset(), vision.rank_count()}),
      std::vector<int>({2, 1, 1, 1, 1, 1, 0, 0, 2}));
  const v1::ModulePlan& audio = proto.modules(1);
  EXPECT_EQ(audio.name(), "audio");
  EXPECT_EQ(
      std::vector<int>({audio.tp(), audio.cp(), audio.pp(), audio.dp(), audio.ep(), audio.etp(),
                        audio.expt_dp(), audio.rank_offset(), audio.rank_count()}),
      std::vector<int>({1, 1, 1, 2, 1, 1, 0, 2, 2}));
  const v1::ModulePlan& lang = proto.modules(2);
  EXPECT_EQ(lang.name(), "language");
  EXPECT_TRUE(lang.language());
  EXPECT_EQ(std::vector<int>({lang.tp(), lang.cp(), lang.pp(), lang.dp(), lang.ep(), lang.etp(),
                              lang.expt_dp(), lang.rank_offset(), lang.rank_count()}),
            std::vector<int>({2, 1, 1, 2, 2, 1, 2, 4, 4}));

  ASSERT_EQ(proto.ranks_size(), 8);
  for (int r = 0; r < 8; ++r) EXPECT_EQ(proto.ranks(r).rank(), r);
  const std::vector<std::string> dense_keys = {"cp",          "dp",       "dp_cp", "embd",
                                               "pos_embd",    "pp",       "tp",    "tp_cp",
                                               "tp_cp_dp_pp", "tp_dp_cp", "tp_pp"};
  std::vector<std::string> language_keys = dense_keys;
  language_keys.insert(language_keys.end(),
                       {"ep", "expt_dp", "expt_tp", "expt_tp_ep", "expt_tp_ep_pp"});

  // Rank 1: vision, tp rank 1.
  const v1::RankAssignment& r1 = proto.ranks(1);
  EXPECT_EQ(r1.module(), "vision");
  EXPECT_EQ(r1.dense().tp(), 1);
  EXPECT_EQ(r1.dense().dp(), 0);
  EXPECT_FALSE(r1.has_expert());
  EXPECT_EQ(r1.seeds().base(), 1234);
  EXPECT_EQ(r1.seeds().tensor_parallel(), 1234 + 2718 + 1);
  EXPECT_EQ(r1.seeds().data_parallel(), 1234);
  EXPECT_FALSE(r1.seeds().has_expert());
  EXPECT_THAT(GroupKeys(r1), UnorderedElementsAreArray(dense_keys));
  EXPECT_THAT(Members(r1, "tp"), ElementsAre(0, 1));
  EXPECT_THAT(Members(r1, "dp"), ElementsAre(1));
  EXPECT_THAT(Members(r1, "tp_cp_dp_pp"), ElementsAre(0, 1));
  EXPECT_THAT(Members(r1, "embd"), ElementsAre(1));
  EXPECT_THAT(Members(r1, "pos_embd"), ElementsAre(1));

  // Rank 3: audio, dp rank 1.
  const v1::RankAssignment& r3 = proto.ranks(3);
  EXPECT_EQ(r3.module(), "audio");
  EXPECT_EQ(r3.dense().tp(), 0);
  EXPECT_EQ(r3.dense().dp(), 1);
  EXPECT_THAT(GroupKeys(r3), UnorderedElementsAreArray(dense_keys));
  EXPECT_THAT(Members(r3, "tp"), ElementsAre(3));
  EXPECT_THAT(Members(r3, "dp"), ElementsAre(2, 3));
  EXPECT_THAT(Members(r3, "dp_cp"), ElementsAre(2, 3));
  EXPECT_EQ(r3.seeds().tensor_parallel(), 1234 + 2718);

  // Rank 6: language, tp 0, dp 1, ep 0, expt_dp 1.
  const v1::RankAssignment& r6 = proto.ranks(6);
  EXPECT_EQ(r6.module(), "language");
  EXPECT_EQ(r6.dense().tp(), 0);
  EXPECT_EQ(r6.dense().dp(), 1);
  ASSERT_TRUE(r6.has_expert());
  EXPECT_EQ(r6.expert().expt_tp(), 0);
  EXPECT_EQ(r6.expert().ep(), 0);
  EXPECT_EQ(r6.expert().expt_dp(), 1);
  EXPECT_EQ(r6.expert().pp(), 0);
  EXPECT_THAT(GroupKeys(r6), UnorderedElementsAreArray(language_keys));
  EXPECT_THAT(Members(r6, "tp"), ElementsAre(6, 7));
  EXPECT_THAT(Members(r6, "dp"), ElementsAre(4, 6));
  EXPECT_THAT(Members(r6, "tp_dp_cp"), ElementsAre(4, 5, 6, 7));
  EXPECT_THAT(Members(r6, "ep"), ElementsAre(6, 7));
  EXPECT_THAT(Members(r6, "expt_dp"), ElementsAre(4, 6));
  EXPECT_THAT(Members(r6, "expt_tp"), ElementsAre(6));
  EXPECT_THAT(Members(r6, "expt_tp_ep_pp"), ElementsAre(6, 7));
  ASSERT_TRUE(r6.seeds().has_expert());
  EXPECT_EQ(r6.seeds().expert(), 1234 + 1024);

  // Rank 5: language, tp 1, dp 0, ep 1.
  const v1::RankAssignment& r5 = proto.ranks(5);
  EXPECT_EQ(r5.expert().ep(), 1);
  EXPECT_EQ(r5.expert().expt_dp(), 0);
  EXPECT_THAT(Members(r5, "ep"), ElementsAre(4, 5));
  EXPECT_THAT(Members(r5, "expt_dp"), ElementsAre(5, 7));
  EXPECT_EQ(r5.seeds().tensor_parallel(), 1234 + 2718 + 1);
  EXPECT_EQ(r5.seeds().expert(), 1234 + 1024 + 100);
}

TEST(RankPlanToProtoTest, GroupMembersCanBeLeftOut) {
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(TpLayoutSpec(), nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const v1::RankPlan full = RankPlanToProto(*plan, GroupMembers::kInclude);
  v1::RankPlan lean = RankPlanToProto(*plan, GroupMembers::kOmit);
  for (const v1::RankAssignment& rank : lean.ranks()) {
    EXPECT_EQ(rank.groups_size(), 0);
    EXPECT_EQ(rank.links_size(), 0);
  }
  // The example layout's leaders hold links: vision 0 and audio 2, 3 to language 4 and 6.
  EXPECT_EQ(full.ranks(0).links_size(), 2);
  EXPECT_EQ(full.ranks(0).links(1).kind(), "link_vision_0_6");
  EXPECT_EQ(full.ranks(0).links(1).encoder(), "vision");
  EXPECT_EQ(full.ranks(0).links(1).language_rank(), 6);
  EXPECT_EQ(full.ranks(4).links_size(), 2);
  EXPECT_EQ(full.ranks(4).links(1).kind(), "link_audio_2_4");
  EXPECT_EQ(full.ranks(5).links_size(), 0);
  // Everything else is the same.
  v1::RankPlan stripped = full;
  for (v1::RankAssignment& rank : *stripped.mutable_ranks()) {
    rank.clear_groups();
    rank.clear_links();
  }
  EXPECT_EQ(stripped.SerializeAsString(), lean.SerializeAsString());
  v1::RankPlan modules_only;
  ModulesToProto(*plan, modules_only.mutable_modules());
  ASSERT_EQ(modules_only.modules_size(), 3);
  EXPECT_EQ(modules_only.modules(2).SerializeAsString(), full.modules(2).SerializeAsString());
}

TEST(RankPlanToProtoTest, EmbeddingGroupsAreEmptyOnMiddleStages) {
  v1::JobSpec spec = TpLayoutSpec();
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  v1::Module language = spec.modules(2);  // The language module.
  language.mutable_parallelism()->Clear();
  language.mutable_parallelism()->set_pp(3);
  language.mutable_language()->clear_moe();
  spec.clear_modules();
  *spec.add_modules() = language;
  spec.mutable_resources()->set_workers(3);
  absl::StatusOr<parallel::RankPlan> plan = ValidateJobSpec(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const v1::RankAssignment first = RankToProto(*plan, 0);
  const v1::RankAssignment middle = RankToProto(*plan, 1);
  const v1::RankAssignment last = RankToProto(*plan, 2);
  EXPECT_THAT(Members(first, "embd"), ElementsAre(0, 2));
  EXPECT_THAT(Members(first, "pos_embd"), ElementsAre(0));
  EXPECT_THAT(Members(middle, "embd"), IsEmpty());
  EXPECT_THAT(Members(middle, "pos_embd"), IsEmpty());
  EXPECT_THAT(Members(last, "embd"), ElementsAre(0, 2));
  EXPECT_THAT(Members(last, "pos_embd"), IsEmpty());
  EXPECT_EQ(middle.seeds().base(), 1234 + 100);
  EXPECT_THAT(Members(middle, "pp"), ElementsAre(0, 1, 2));
}

}  // namespace
}  // namespace mimo::coordinator
