// JobManager on its own, with a clock the test sets (every call takes `now`): a drain that ends a
// job cancelled before it, a rank lost before it was fetched over and over, and the embedded
// coordinator's refusal of workers that are not its own (other slots, or other processes).
#include "coordinator/job_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/coordinator/test_server.h"

namespace mimo::coordinator {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(JobManager::Options()); }

  void Start(const JobManager::Options& options) {
    manager_.reset();
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open({.path = ":memory:"});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    manager_ = std::make_unique<JobManager>(store_.get(), options);
    ASSERT_TRUE(manager_->Recover(now_).ok());
  }

  static v1::WorkerInfo Info(const std::string& host, int local_index,
                             v1::DeviceKind device = v1::DEVICE_KIND_CPU) {
    v1::WorkerInfo info;
    info.set_host(host);
    info.set_local_index(local_index);
    info.set_device(device);
    info.set_pid(1000 + local_index);
    return info;
  }

  // Registers the CPU worker for device `local_index` of host "h"; returns its id.
  std::string Register(int local_index) {
    absl::StatusOr<std::string> id =
        manager_->RegisterWorker(Info("h", local_index), {}, [&] { return now_; });
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or("");
  }

  v1::Job Submit(const v1::JobSpec& spec) {
    std::vector<FieldViolation> violations;
    absl::StatusOr<v1::Job> job = manager_->SubmitJob(spec, "", &violations, now_);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.value_or(v1::Job());
  }

  v1::Job Get(const std::string& id) { return manager_->GetJob(id).value_or(v1::Job()); }

  v1::Assignment Fetch(const std::string& worker_id) {
    absl::StatusOr<std::optional<v1::Assignment>> a =
        manager_->WaitAssignment(worker_id, absl::Now());
    EXPECT_TRUE(a.ok() && a->has_value()) << worker_id << " got no assignment";
    return a.ok() && a->has_value() ? **a : v1::Assignment();
  }

  absl::Status Report(const std::string& worker_id, const v1::Assignment& a,
                      v1::WorkerState state) {
    v1::ReportStatusRequest request;
    request.set_worker_id(worker_id);
    request.set_job_id(a.job_id());
    request.set_attempt(a.attempt());
    request.set_rank(a.rank().rank());
    request.set_state(state);
    return manager_->ReportStatus(request, now_);
  }

  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<JobManager> manager_;
};

// A job cancelled just before the coordinator stops (a drain) ends as CANCELLED once its ranks
// confirm, by report or by their process's exit, instead of staying CANCELLING until the next
// start.
TEST_F(JobManagerTest, ADrainEndsAJobCancelledBeforeItOnceItsRanksConfirm) {
  const v1::Job job = Submit(testing::SmallSpec());
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(Register(i));
  std::vector<v1::Assignment> as;
  for (const std::string& id : ids) as.push_back(Fetch(id));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Report(ids[i], as[i], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(manager_->CancelJob(job.id(), "", now_).ok());
  manager_->BeginDrain();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Report(ids[i], as[i], v1::WORKER_STATE_STOPPED).ok());
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_CANCELLING);
  // The last one's process exits without a report.
  manager_->WorkerProcessExited("h", 1003, 0, "exited with code 0", {}, now_);
  const v1::Job cancelled = Get(job.id());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled.state_reason(), "cancelled by the user");
}

// The drain still decides nothing else: a running job whose rank stops (not after a checkpoint) is
// left to the next start.
TEST_F(JobManagerTest, ADrainLeavesARunningJobWhoseRankStopped) {
  const v1::Job job = Submit(testing::SmallSpec());
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(Register(i));
  std::vector<v1::Assignment> as;
  for (const std::string& id : ids) as.push_back(Fetch(id));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Report(ids[i], as[i], v1::WORKER_STATE_RUNNING).ok());
  manager_->BeginDrain();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Report(ids[i], as[i], v1::WORKER_STATE_STOPPED).ok());
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
}

// A worker that dies between registering and fetching its rank sends the job back to PENDING as
// the same attempt, but only three times per attempt: the fourth loss fails the attempt (here
// restarting the job, whose new attempt counts again).
TEST_F(JobManagerTest, ARankLostBeforeItWasFetchedOverAndOverFailsTheAttempt) {
  JobManager::Options options;  // Heartbeat every 2 s, dead after 10 s.
  Start(options);
  v1::JobSpec spec = testing::SmallSpec();
  spec.set_max_restarts(1);
  const v1::Job job = Submit(spec);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(Register(i));
  for (int loss = 1; loss <= 5; ++loss) {
    ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_SCHEDULED) << "loss " << loss;
    // Ranks 1-3 fetch and start; worker 0 (rank 0) is dead and falls silent.
    std::vector<v1::Assignment> as(4);
    for (int i = 1; i < 4; ++i) as[i] = Fetch(ids[i]);
    now_ += options.heartbeat_timeout + absl::Seconds(1);
    for (int i = 1; i < 4; ++i) manager_->Heartbeat(ids[i], false, [&] { return now_; });
    manager_->Tick(now_);
    const v1::Job pending = Get(job.id());
    ASSERT_EQ(pending.state(), v1::JOB_STATE_PENDING) << "loss " << loss;
    if (loss <= 3) {  // Back as is.
      EXPECT_EQ(pending.attempt(), 1);
      EXPECT_FALSE(pending.has_failure());
      EXPECT_THAT(pending.state_reason(), StartsWith("attempt 1: rank 0 (worker "));
    } else if (loss == 4) {  // The attempt failed and the job restarted.
      EXPECT_EQ(pending.attempt(), 2);
      EXPECT_THAT(pending.state_reason(),
                  AllOf(StartsWith("attempt 1 failed (HEARTBEAT_TIMEOUT: rank 0 (worker "),
                        HasSubstr("restarting as attempt 2 of 2")));
    } else {  // The new attempt's first loss: back as is.
      EXPECT_EQ(pending.attempt(), 2);
      EXPECT_THAT(pending.state_reason(), StartsWith("attempt 2: rank 0 (worker "));
    }
    // The started ranks confirm their stop, and worker 0 comes back.
    for (int i = 1; i < 4; ++i) ASSERT_TRUE(Report(ids[i], as[i], v1::WORKER_STATE_STOPPED).ok());
    ids[0] = Register(0);
  }
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SCHEDULED);
}

// Embedded mode: only the coordinator's own slots may register, the others are refused saying
// why.
TEST_F(JobManagerTest, AnEmbeddedCoordinatorTakesOnlyItsOwnWorkers) {
  JobManager::Options options;
  options.embedded = {.count = 2, .host = "own", .device = v1::DEVICE_KIND_CPU};
  Start(options);
  for (const v1::WorkerInfo& info :
       {Info("other", 0), Info("own", 2), Info("own", -1), Info("own", 0, v1::DEVICE_KIND_CUDA)}) {
    absl::StatusOr<std::string> id = manager_->RegisterWorker(info, {}, [&] { return now_; });
    EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << info.DebugString();
    EXPECT_THAT(id.status().message(),
                AllOf(HasSubstr("this coordinator runs its own 2 CPU workers on own "
                                "(--cpu-workers/--gpu-workers)"),
                      HasSubstr("start one without them to take workers from other hosts")));
  }
  for (int i = 0; i < 2; ++i) manager_->WorkerProcessStarted(i, Info("own", i).pid());
  for (int i = 0; i < 2; ++i)
    EXPECT_TRUE(manager_->RegisterWorker(Info("own", i), {}, [&] { return now_; }).ok());
}

// Embedded mode: a slot takes only the process started for it (by its pid), not another process
// on the coordinator's host, such as a worker started by hand; nor any while the slot's process
// is not running.
TEST_F(JobManagerTest, AnEmbeddedSlotTakesOnlyTheProcessStartedForIt) {
  JobManager::Options options;
  options.embedded = {.count = 2, .host = "own", .device = v1::DEVICE_KIND_CPU};
  Start(options);
  auto with_pid = [](int local_index, int pid) {
    v1::WorkerInfo info = Info("own", local_index);
    info.set_pid(pid);
    return info;
  };
  // Before its process started, a slot takes no worker.
  absl::StatusOr<std::string> early =
      manager_->RegisterWorker(with_pid(0, 4000), {}, [&] { return now_; });
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(early.status().message(),
              HasSubstr("slot 0 (CPU device 0 of own) belongs to the worker process this "
                        "coordinator started for it, none running now, and this worker is pid "
                        "4000: an embedded coordinator (--cpu-workers/--gpu-workers) takes no "
                        "worker started by hand"));
  manager_->WorkerProcessStarted(0, 4000);
  manager_->WorkerProcessStarted(1, 4001);
  for (const v1::WorkerInfo& info : {with_pid(1, 4000), with_pid(1, 5555), with_pid(1, 0)}) {
    absl::StatusOr<std::string> id = manager_->RegisterWorker(info, {}, [&] { return now_; });
    EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << info.DebugString();
    EXPECT_THAT(id.status().message(),
                HasSubstr(absl::StrCat("slot 1 (CPU device 1 of own) belongs to the worker process "
                                       "this coordinator started for it, pid 4001, and this worker "
                                       "is pid ",
                                       info.pid(), info.pid() == 0 ? " (none sent)" : "", ": ")));
  }
  EXPECT_EQ(manager_->num_workers(), 0);
  EXPECT_TRUE(manager_->RegisterWorker(with_pid(0, 4000), {}, [&] { return now_; }).ok());
  EXPECT_TRUE(manager_->RegisterWorker(with_pid(1, 4001), {}, [&] { return now_; }).ok());
  // Slot 0's process exits and is started again: its old pid (which another process may reuse)
  // no longer registers, the new one does.
  manager_->WorkerProcessExited("own", 4000, 1, "exited with code 1", {}, now_);
  EXPECT_EQ(manager_->num_workers(), 1);
  EXPECT_EQ(manager_->RegisterWorker(with_pid(0, 4000), {}, [&] { return now_; }).status().code(),
            absl::StatusCode::kFailedPrecondition);
  manager_->WorkerProcessStarted(0, 4002);
  EXPECT_EQ(manager_->RegisterWorker(with_pid(0, 4000), {}, [&] { return now_; }).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(manager_->RegisterWorker(with_pid(0, 4002), {}, [&] { return now_; }).ok());
  EXPECT_EQ(manager_->num_workers(), 2);
}

}  // namespace
}  // namespace mimo::coordinator
