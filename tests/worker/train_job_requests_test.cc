// RunTraining's checkpoint requests on 4 CPU ranks (threads, Gloo groups, an in-memory store):
// whichever rank hears of a request, every rank saves after the same step; a stop request ends
// every rank's run there; one heard on the last step ends the run as usual.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "comm/in_memory_store.h"
#include "coordinator/spec_validation.h"
#include "kernels/ops.h"
#include "tests/coordinator/test_server.h"
#include "worker/train_job.h"

namespace mimo::worker {
namespace {

namespace fs = std::filesystem;

constexpr int kSteps = 5;

struct RankRun {
  absl::StatusOr<TrainingEnd> end = absl::UnknownError("not run");
  std::vector<std::string> log;
};

// A request that rank `rank` alone hears of, from its `from_step`-th step on.
struct Heard {
  int rank = 0;
  int from_step = 0;
  bool stop = false;
};

// SmallSpec (vision dp 2 on ranks 0-1, MoE language dp 2 ep 2 on ranks 2-3) for kSteps steps,
// saving only at the end (and when asked) into `dir`, run on every rank with `heard`.
std::vector<RankRun> TrainAll(const std::string& dir, const Heard& heard) {
  v1::JobSpec spec = coordinator::testing::SmallSpec("requests");
  spec.mutable_training()->set_steps(kSteps);
  spec.mutable_checkpointing()->set_dir(dir);
  absl::StatusOr<parallel::RankPlan> plan = coordinator::ValidateJobSpec(spec, nullptr);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return {};
  const int world = plan->world_size();
  comm::InMemoryStore store;
  absl::Mutex mu;
  std::vector<comm::ProcessGroups*> live(world, nullptr);
  int finished = 0;
  std::vector<RankRun> runs(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      v1::Assignment a;
      a.set_job_id("j-test");
      a.set_attempt(1);
      *a.mutable_spec() = spec;
      a.set_world_size(world);
      *a.mutable_rank() = coordinator::RankToProto(*plan, r);
      coordinator::ModulesToProto(*plan, a.mutable_modules());
      absl::StatusOr<std::vector<comm::GroupSpec>> specs = TrainingGroupSpecs(a);
      ASSERT_TRUE(specs.ok()) << specs.status();
      ASSERT_EQ((*specs)[0].kind, kWorldGroup);
      comm::ProcessGroupsOptions options;
      options.rank = r;
      options.timeout = absl::Seconds(30);
      options.hostname = "127.0.0.1";
      absl::StatusOr<std::unique_ptr<comm::ProcessGroups>> groups =
          comm::ProcessGroups::CreateGloo(*specs, store, options);
      if (!groups.ok()) {
        runs[r].end = groups.status();
      } else {
        {
          absl::MutexLock lock(&mu);
          live[r] = groups->get();
        }
        std::unique_ptr<kernels::Ops> ops = kernels::NewCpuOps();
        int calls = 0;
        TrainJobHooks hooks{.log =
                                [&runs, &mu, r](const std::string& line) {
                                  absl::MutexLock lock(&mu);
                                  runs[r].log.push_back(line);
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
        runs[r].end = RunTraining(a, **groups, *ops, false, "cpu", "test", hooks);
        if (!runs[r].end.ok()) {
          absl::MutexLock lock(&mu);
          for (comm::ProcessGroups* g : live) {
            if (g != nullptr) g->AbortAll();
          }
        }
      }
      // The groups outlive every rank's run: another rank's failure may still abort them.
      absl::MutexLock lock(&mu);
      ++finished;
      auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return finished == world; };
      mu.Await(absl::Condition(&all));
      live[r] = nullptr;
    });
  }
  for (std::thread& t : threads) t.join();
  return runs;
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

}  // namespace
}  // namespace mimo::worker
