// ProcessGroups::CreateGloo: every group of a real plan over 8 ranks, bad specs, missing peers.
#include "comm/process_groups.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "comm/collective_check.h"
#include "comm/in_memory_store.h"
#include "parallel/rank_plan.h"
#include "tests/comm/run_ranks.h"

namespace mimo::comm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

ProcessGroupsOptions Options(int rank, absl::Duration timeout = absl::Seconds(30)) {
  return {.rank = rank, .timeout = timeout, .hostname = "127.0.0.1"};
}

// The self-test layout: vision tp=2 on 0-1, audio dp=2 on 2-3, language tp=2 dp=2 ep=2 on 4-7.
parallel::RankPlan SelfTestPlan() {
  parallel::LayoutSpec spec;
  spec.world_size = 8;
  spec.modules = {{.name = "vision", .tp = 2, .dp = 1, .rank_offset = 0},
                  {.name = "audio", .dp = 2, .rank_offset = 2},
                  {.name = "language", .tp = 2, .dp = 2, .ep = 2, .rank_offset = 4}};
  absl::StatusOr<parallel::RankPlan> plan = parallel::BuildRankPlan(spec);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *std::move(plan);
}

// The rank's non-empty groups in GroupKind order, as the worker builds them.
std::vector<GroupSpec> GroupsOf(const parallel::RankPlan& plan, int rank) {
  std::vector<GroupSpec> groups;
  for (int k = 0; k < parallel::kNumGroupKinds; ++k) {
    const auto kind = static_cast<parallel::GroupKind>(k);
    absl::Span<const int> members = plan.Group(rank, kind);
    if (members.empty()) continue;
    groups.push_back({.kind = std::string(parallel::GroupKindName(kind)),
                      .members = std::vector<int>(members.begin(), members.end())});
  }
  return groups;
}

TEST(ProcessGroupsTest, EveryGroupOfTheSelfTestPlanPassesTheCheck) {
  constexpr int kWorld = 8;
  const parallel::RankPlan plan = SelfTestPlan();
  InMemoryStore store;
  std::vector<std::unique_ptr<ProcessGroups>> groups(kWorld);
  std::vector<std::vector<absl::Status>> statuses(kWorld);
  RunRanks(kWorld, [&](int rank) {
    absl::StatusOr<std::unique_ptr<ProcessGroups>> created =
        ProcessGroups::CreateGloo(GroupsOf(plan, rank), store, Options(rank));
    if (!created.ok()) {
      statuses[rank].push_back(created.status());
      return;
    }
    groups[rank] = *std::move(created);
    for (const GroupSpec& group : groups[rank]->groups()) {
      statuses[rank].push_back(CheckCollectives(*groups[rank]->Get(group.kind), rank, group.kind));
    }
  });
  int checked = 0;
  for (int rank = 0; rank < kWorld; ++rank) {
    SCOPED_TRACE(rank);
    ASSERT_NE(groups[rank], nullptr) << statuses[rank][0];
    const std::vector<GroupSpec> expected = GroupsOf(plan, rank);
    ASSERT_EQ(groups[rank]->groups().size(), expected.size());
    for (size_t g = 0; g < expected.size(); ++g) {
      EXPECT_EQ(groups[rank]->groups()[g].kind, expected[g].kind);
      Communicator* comm = groups[rank]->Get(expected[g].kind);
      ASSERT_NE(comm, nullptr);
      EXPECT_EQ(comm->size(), static_cast<int>(expected[g].members.size()));
      EXPECT_TRUE(statuses[rank][g].ok()) << statuses[rank][g];
      ++checked;
    }
  }
  // Encoders have no expert groups; middle pipeline stages would have no embd group.
  EXPECT_EQ(groups[0]->Get("ep"), nullptr);
  EXPECT_NE(groups[4]->Get("ep"), nullptr);
  EXPECT_EQ(groups[5]->Get("tp_dp_cp")->size(), 4);
  EXPECT_GT(checked, 80);
}

TEST(ProcessGroupsTest, MissingPeerFailsWithinTheTimeout) {
  InMemoryStore store;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups =
      ProcessGroups::CreateGloo({{.kind = "dp", .members = {0}}, {.kind = "tp", .members = {0, 1}}},
                                store, Options(0, absl::Seconds(1)));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kDeadlineExceeded) << groups.status();
  EXPECT_THAT(groups.status().message(),
              AllOf(HasSubstr("connecting group tp [0,1] as member 0"), HasSubstr("comm/tp/0,1/")));
  EXPECT_GE(waited, absl::Milliseconds(900));
  EXPECT_LT(waited, absl::Seconds(4));
}

TEST(ProcessGroupsTest, MissingLowerRankFailsWithinTheTimeout) {
  InMemoryStore store;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateGloo(
      {{.kind = "tp", .members = {0, 1, 2}}}, store, Options(2, absl::Milliseconds(500)));
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kDeadlineExceeded) << groups.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST(ProcessGroupsTest, StoreGoingAwayIsUnavailable) {
  InMemoryStore store;
  store.Shutdown();
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateGloo(
      {{.kind = "tp", .members = {0, 1}}}, store, Options(0, absl::Seconds(1)));
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kUnavailable) << groups.status();
}

TEST(ProcessGroupsTest, RankOutsideAGroupIsInvalid) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateGloo(
      {{.kind = "tp", .members = {0, 1}}, {.kind = "dp", .members = {1, 3}}}, store, Options(0));
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(groups.status().message(), HasSubstr("group dp [1,3] does not contain"));
}

TEST(ProcessGroupsTest, DuplicateKindIsInvalid) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateGloo(
      {{.kind = "tp", .members = {0}}, {.kind = "tp", .members = {0, 1}}}, store, Options(0));
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(groups.status().message(), HasSubstr("tp is listed twice"));
}

TEST(ProcessGroupsTest, MalformedSpecsAreInvalid) {
  InMemoryStore store;
  for (const std::vector<GroupSpec>& specs :
       std::vector<std::vector<GroupSpec>>{{{.kind = "", .members = {0}}},
                                           {{.kind = "tp", .members = {}}},
                                           {{.kind = "tp", .members = {0, 0}}},
                                           {{.kind = "tp", .members = {-1, 0}}}}) {
    EXPECT_EQ(ProcessGroups::CreateGloo(specs, store, Options(0)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(ProcessGroups::CreateGloo({}, store, Options(-1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ProcessGroups::CreateGloo({}, store, Options(0, absl::ZeroDuration())).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ProcessGroupsTest, OneMemberGroupsNeedNoPeersAndAbortAllCancelsThem) {
  InMemoryStore store;
  absl::StatusOr<std::unique_ptr<ProcessGroups>> groups = ProcessGroups::CreateGloo(
      {{.kind = "tp", .members = {5}}, {.kind = "dp", .members = {5}}}, store, Options(5));
  ASSERT_TRUE(groups.ok()) << groups.status();
  EXPECT_EQ((*groups)->Get("pp"), nullptr);
  ASSERT_NE((*groups)->Get("dp"), nullptr);
  EXPECT_TRUE(CheckCollectives(*(*groups)->Get("dp"), 5, "dp").ok());
  (*groups)->AbortAll();
  EXPECT_EQ((*groups)->Get("tp")->Barrier().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*groups)->Get("dp")->Barrier().code(), absl::StatusCode::kCancelled);
}

TEST(ProcessGroupsTest, StorePrefixNamesKindAndMembers) {
  EXPECT_EQ(GroupStorePrefix("expt_dp", {5, 7}), "comm/expt_dp/5,7/");
}

}  // namespace
}  // namespace mimo::comm
