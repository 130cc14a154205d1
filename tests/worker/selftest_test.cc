// RunSelftest on every rank of a plan, on threads over Gloo with an in-memory store: it passes,
// also through a buffer space, and names the group and ranks of a seed that is wrong.
#include "worker/selftest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "comm/in_memory_store.h"
#include "coordinator/spec_validation.h"
#include "tests/coordinator/test_server.h"
#include "tests/worker/plan_ranks.h"
#include "worker/group_specs.h"

namespace mimo::worker {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

// Host memory behind the BufferSpace interface, so that the staging path runs on Gloo.
class HostBufferSpace : public comm::BufferSpace {
 public:
  absl::StatusOr<void*> Allocate(size_t bytes) override { return std::malloc(bytes + 1); }
  void Free(void* buffer) override { std::free(buffer); }
  absl::Status CopyIn(void* buffer, const void* host, size_t bytes) override {
    std::memcpy(buffer, host, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyOut(void* host, const void* buffer, size_t bytes) override {
    std::memcpy(host, buffer, bytes);
    return absl::OkStatus();
  }
};

v1::JobSpec Spec() {
  v1::JobSpec spec = coordinator::testing::SmallSpec("selftest");
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  spec.mutable_modules(0)->mutable_parallelism()->set_tp(2);  // Vision tp=2 on ranks 0-1.
  spec.mutable_modules(0)->mutable_parallelism()->set_dp(1);
  return spec;
}

struct RankResult {
  absl::Status status;
  std::vector<std::string> log;
};

// Every rank's assignment of `spec`, passed through `mutate`, run on its own thread. The first
// failure aborts every rank's groups, as the coordinator's STOP would.
std::vector<RankResult> RunAll(const v1::JobSpec& spec,
                               const std::function<void(v1::Assignment&)>& mutate = nullptr,
                               comm::BufferSpace* space = nullptr) {
  std::vector<RankResult> results(spec.resources().workers());
  testing::PlanRanksOptions options;
  options.mutate = mutate;
  options.timeout = absl::Seconds(10);
  const std::vector<absl::Status> statuses = testing::RunPlanRanks(
      spec,
      [&](int r, const v1::Assignment& a, comm::ProcessGroups& groups, comm::KeyValueStore&) {
        return RunSelftest(a, groups, space, [&results, r](const std::string& line) {
          results[r].log.push_back(line);
        });
      },
      options);
  EXPECT_EQ(statuses.size(), results.size());
  for (size_t r = 0; r < statuses.size() && r < results.size(); ++r) {
    results[r].status = statuses[r];
  }
  return results;
}

bool Logged(const RankResult& result, const std::string& text) {
  for (const std::string& line : result.log) {
    if (absl::StrContains(line, text)) return true;
  }
  return false;
}

TEST(SelftestTest, EveryRankPasses) {
  const std::vector<RankResult> results = RunAll(Spec());
  ASSERT_EQ(results.size(), 4u);
  for (size_t r = 0; r < results.size(); ++r) {
    EXPECT_TRUE(results[r].status.ok()) << "rank " << r << ": " << results[r].status;
    EXPECT_TRUE(Logged(results[r], "selftest: passed")) << "rank " << r;
  }
  EXPECT_TRUE(Logged(results[0], "selftest: group tp [0,1] ok"));
  EXPECT_TRUE(Logged(results[3], "selftest: seeds over ep [2,3] ok"));
  // The links from the vision leader to both language replicas, checked on both ends.
  EXPECT_TRUE(Logged(results[0], "selftest: group link_vision_0_2 [0,2] ok"));
  EXPECT_TRUE(Logged(results[0], "selftest: group link_vision_0_3 [0,3] ok"));
  EXPECT_TRUE(Logged(results[3], "selftest: group link_vision_0_3 [0,3] ok"));
  EXPECT_FALSE(Logged(results[1], "link_"));
}

TEST(SelftestTest, EveryRankPassesThroughABufferSpace) {
  HostBufferSpace space;
  const std::vector<RankResult> results = RunAll(Spec(), nullptr, &space);
  for (size_t r = 0; r < results.size(); ++r) {
    EXPECT_TRUE(results[r].status.ok()) << "rank " << r << ": " << results[r].status;
  }
}

TEST(SelftestTest, IterationsRepeatTheCollectives) {
  v1::JobSpec spec = Spec();
  spec.mutable_selftest()->set_iterations(3);
  const std::vector<RankResult> results = RunAll(spec);
  for (size_t r = 0; r < results.size(); ++r) {
    EXPECT_TRUE(results[r].status.ok()) << "rank " << r << ": " << results[r].status;
    EXPECT_TRUE(Logged(results[r], "selftest: collectives round 3 of 3 ok")) << "rank " << r;
  }
}

TEST(SelftestTest, ARankOnAnotherJobSeedFailsNamingTheGroupAndRanks) {
  // Rank 3 holds seeds consistent with its coordinates but for job seed 1235.
  const std::vector<RankResult> results = RunAll(Spec(), [](v1::Assignment& a) {
    if (a.rank().rank() != 3) return;
    a.mutable_spec()->mutable_training()->set_seed(1235);
    v1::RankSeeds* s = a.mutable_rank()->mutable_seeds();
    s->set_base(s->base() + 1);
    s->set_tensor_parallel(s->tensor_parallel() + 1);
    s->set_data_parallel(s->data_parallel() + 1);
    s->set_expert(s->expert() + 1);
  });
  ASSERT_EQ(results.size(), 4u);
  // Ranks 0 and 1 share no group with ranks 2 and 3: they pass, unless the first failure aborts
  // them (as the coordinator's STOP would) before they finish: then they fail as aborted, or as
  // their peer's connection closes.
  for (int r : {0, 1}) {
    if (!results[r].status.ok()) {
      EXPECT_THAT(std::string(results[r].status.message()),
                  AnyOf(HasSubstr("aborted"), HasSubstr("Connection closed by peer")))
          << "rank " << r;
    }
  }
  // Both ranks of the group find the mismatch, unless the first to fail aborts its groups while
  // the other still completes the gather: that one then fails as aborted.
  constexpr char kMismatch[] =
      "selftest: seeds over group dp [2,3]: rank 2 (tp 0, dp 0, pp 0, ep 0, expt_tp 0) and rank 3 "
      "(tp 0, dp 1, pp 0, ep 1, expt_tp 0) share stage 0 but have different data_parallel seeds "
      "(1234, 1235)";
  int found = 0;
  for (int r : {2, 3}) {
    const std::string message(results[r].status.message());
    EXPECT_FALSE(results[r].status.ok()) << "rank " << r;
    if (message.find(kMismatch) != std::string::npos) {
      ++found;
    } else {
      EXPECT_THAT(message, AnyOf(HasSubstr("aborted"), HasSubstr("Connection closed by peer")))
          << "rank " << r;
    }
  }
  EXPECT_GE(found, 1);
}

TEST(SelftestTest, ASeedOffTheFormulaFailsOnItsRank) {
  const std::vector<RankResult> results = RunAll(Spec(), [](v1::Assignment& a) {
    if (a.rank().rank() != 1) return;
    a.mutable_rank()->mutable_seeds()->set_tensor_parallel(3000);
  });
  ASSERT_EQ(results.size(), 4u);
  EXPECT_THAT(std::string(results[1].status.message()),
              HasSubstr("selftest: seeds of rank 1 (tp 1, dp 0, pp 0): tensor_parallel seed is "
                        "3000, but job seed 1234 gives 3953"));
  // Its tp peer was blocked in a collective with it until the abort.
  EXPECT_FALSE(results[0].status.ok());
}

}  // namespace
}  // namespace mimo::worker
