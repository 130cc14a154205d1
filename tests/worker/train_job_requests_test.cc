// RunTraining's checkpoint requests on 4 CPU ranks (threads, Gloo groups, an in-memory store):
// whichever rank hears of a request, every rank saves after the same step; a stop request ends
// every rank's run there; one heard on the last step ends the run as usual. Reports come every
// log_interval (2) steps, after the last one and after a stop, each over the steps since the
// previous one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "comm/in_memory_store.h"
#include "coordinator/spec_validation.h"
#include "kernels/ops.h"
#include "tests/coordinator/test_server.h"
#include "tests/worker/plan_ranks.h"
#include "worker/train_job.h"

namespace mimo::worker {
namespace {

namespace fs = std::filesystem;

constexpr int kSteps = 5;

struct RankRun {
  absl::StatusOr<TrainingEnd> end = absl::UnknownError("not run");
  std::vector<std::string> log;
  std::vector<v1::Metrics> reports;
  bool ran = false;  // Else `end` is its groups' error.
};

// A request that rank `rank` alone hears of, from its `from_step`-th step on.
struct Heard {
  int rank = 0;
  int from_step = 0;
  bool stop = false;
};

// SmallSpec (vision dp 2 on ranks 0-1, MoE language dp 2 ep 2 on ranks 2-3) for kSteps steps,
// saving only at the end (and when asked) into `dir`, reporting every 2 steps, run on every rank
// with `heard`.
std::vector<RankRun> TrainAll(const std::string& dir, const Heard& heard) {
  v1::JobSpec spec = coordinator::testing::SmallSpec("requests");
  spec.mutable_training()->set_steps(kSteps);
  spec.mutable_training()->set_log_interval(2);
  spec.mutable_checkpointing()->set_dir(dir);
  absl::Mutex mu;
  std::vector<RankRun> runs(spec.resources().workers());
  auto body = [&](int r, const v1::Assignment& a, comm::ProcessGroups& groups,
                  comm::KeyValueStore& store) -> absl::Status {
    std::unique_ptr<kernels::Ops> ops = kernels::NewCpuOps();
    int calls = 0;
    TrainJobHooks hooks{.log =
                            [&runs, &mu, r](const std::string& line) {
                              absl::MutexLock lock(&mu);
                              runs[r].log.push_back(line);
                            },
                        .report =
                            [&runs, &mu, r](const v1::Metrics& m) {
                              absl::MutexLock lock(&mu);
                              runs[r].reports.push_back(m);
                            },
                        .checkpoint_request =
                            [&heard, &calls, r] {
                              v1::CheckpointRequest request;
                              if (r == heard.rank && ++calls >= heard.from_step) {
                                request.set_sequence(1);
                                request.set_stop(heard.stop);
                              }
                              return request;
                            },
                        .store = &store,
                        .store_timeout = absl::Seconds(30)};
    runs[r].ran = true;
    runs[r].end = RunTraining(a, groups, *ops, false, "cpu", "test", hooks);
    return runs[r].end.status();
  };
  testing::PlanRanksOptions options;
  options.group_specs = [](const v1::Assignment& a) {
    absl::StatusOr<std::vector<comm::GroupSpec>> specs = TrainingGroupSpecs(a);
    if (specs.ok()) {
      EXPECT_EQ((*specs)[0].kind, kWorldGroup);
    }
    return specs;
  };
  const std::vector<absl::Status> statuses = testing::RunPlanRanks(spec, body, options);
  EXPECT_EQ(statuses.size(), runs.size());
  for (size_t r = 0; r < statuses.size() && r < runs.size(); ++r) {
    if (!runs[r].ran) runs[r].end = statuses[r];
  }
  return runs;
}

// (step, steps it covers) of each report; one rank (the language module's first) reports.
std::vector<std::pair<int64_t, double>> Reports(const std::vector<RankRun>& runs) {
  std::vector<std::pair<int64_t, double>> out;
  int reporting = 0;
  for (const RankRun& run : runs) {
    if (run.reports.empty()) continue;
    ++reporting;
    for (const v1::Metrics& m : run.reports) {
      out.emplace_back(m.step(), m.values().at("interval_steps"));
    }
  }
  EXPECT_EQ(reporting, 1);
  return out;
}

class TrainJobRequestsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("train_job_requests_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Iter(int i) const { return (dir_ / absl::StrCat("iter_000000", i)).string(); }
  std::string Latest() const {
    std::string latest;
    std::ifstream(dir_ / "latest_checkpointed_iteration.txt") >> latest;
    return latest;
  }
  fs::path dir_;
};

TEST_F(TrainJobRequestsTest, ARequestOneRankHeardIsSavedByAllAfterTheSameStepAndTrainingGoesOn) {
  const std::vector<RankRun> runs = TrainAll(dir_.string(), {.rank = 3, .from_step = 2});
  ASSERT_EQ(runs.size(), 4u);
  for (size_t r = 0; r < runs.size(); ++r) {
    ASSERT_TRUE(runs[r].end.ok()) << r << ": " << runs[r].end.status();
    EXPECT_EQ(runs[r].end->iteration, kSteps);
    EXPECT_EQ(runs[r].end->checkpoint, Iter(kSteps));
  }
  EXPECT_TRUE(fs::exists(fs::path(Iter(2)) / "metadata.json"));  // Asked for, after step 2.
  EXPECT_FALSE(fs::exists(Iter(3)));
  EXPECT_EQ(Latest(), absl::StrCat(kSteps));
  EXPECT_THAT(runs[0].log,
              ::testing::Contains("saving a checkpoint after iteration 2 as requested"));
  using Report = std::pair<int64_t, double>;
  EXPECT_EQ(Reports(runs), (std::vector<Report>{{2, 2}, {4, 2}, {5, 1}}));
}

TEST_F(TrainJobRequestsTest, AStopRequestEndsEveryRanksRunAfterItsSave) {
  const std::vector<RankRun> runs =
      TrainAll(dir_.string(), {.rank = 1, .from_step = 3, .stop = true});
  ASSERT_EQ(runs.size(), 4u);
  for (size_t r = 0; r < runs.size(); ++r) {
    ASSERT_TRUE(runs[r].end.ok()) << r << ": " << runs[r].end.status();
    EXPECT_EQ(runs[r].end->iteration, 3) << r;
    EXPECT_EQ(runs[r].end->checkpoint, Iter(3)) << r;
  }
  EXPECT_EQ(Latest(), "3");
  EXPECT_FALSE(fs::exists(Iter(4)));
  using Report = std::pair<int64_t, double>;
  EXPECT_EQ(Reports(runs), (std::vector<Report>{{2, 2}, {3, 1}}));
}

TEST_F(TrainJobRequestsTest, AStopHeardOnTheLastStepEndsTheRunAsUsual) {
  const std::vector<RankRun> runs =
      TrainAll(dir_.string(), {.rank = 2, .from_step = kSteps, .stop = true});
  ASSERT_EQ(runs.size(), 4u);
  for (size_t r = 0; r < runs.size(); ++r) {
    ASSERT_TRUE(runs[r].end.ok()) << r << ": " << runs[r].end.status();
    EXPECT_EQ(runs[r].end->iteration, kSteps) << r;
  }
  EXPECT_EQ(Latest(), absl::StrCat(kSteps));
}

TEST_F(TrainJobRequestsTest, AFolderThatCannotHoldCheckpointsFailsEveryRankBeforeTraining) {
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "not a folder";
  const std::vector<RankRun> runs = TrainAll((dir_ / "file" / "ckpt").string(), {.rank = -1});
  ASSERT_EQ(runs.size(), 4u);
  for (size_t r = 0; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].end.status().code(), absl::StatusCode::kFailedPrecondition)
        << r << ": " << runs[r].end.status();
    EXPECT_THAT(std::string(runs[r].end.status().message()),
                ::testing::HasSubstr("cannot hold checkpoints"))
        << r;
    EXPECT_TRUE(runs[r].reports.empty()) << r;  // No step ran.
  }
}

}  // namespace
}  // namespace mimo::worker
