// The job lifecycle through the real server: schedule, run, metrics, logs, watch, succeed; cancel;
// checkpoint requests; worker failure, restarts, heartbeat loss, deadlines; restart of the
// coordinator.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "coordinator/job_state.h"
#include "google/protobuf/util/time_util.h"
#include "tests/coordinator/test_server.h"

namespace mimo::coordinator::testing {
namespace {

using google::protobuf::util::TimeUtil;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class LifecycleTest : public CoordinatorFixture {
 protected:
  void SetUp() override { StartServer(); }

  // The states of the job's events, in order.
  std::vector<std::string> StateHistory(const std::string& id) {
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto context = Context();
    auto reader = jobs_->WatchJob(context.get(), request);
    std::vector<std::string> states;
    v1::WatchJobResponse response;
    // A finished job's watch returns its current state only; history comes from the events.
    while (reader->Read(&response)) {
      if (response.has_event() && response.event().has_state()) {
        states.push_back(v1::JobState_Name(response.event().state()));
      }
    }
    EXPECT_TRUE(reader->Finish().ok());
    return states;
  }

  // Cancels the job with `reason` ("" for the default).
  grpc::Status Cancel(const std::string& id, v1::CancelJobResponse* response,
                      const std::string& reason = "") {
    v1::CancelJobRequest request;
    request.set_job_id(id);
    request.set_reason(reason);
    return jobs_->CancelJob(Context().get(), request, response);
  }

  grpc::Status Checkpoint(const std::string& id, bool stop, const std::string& reason,
                          v1::CheckpointJobResponse* response) {
    v1::CheckpointJobRequest request;
    request.set_job_id(id);
    request.set_stop(stop);
    request.set_reason(reason);
    return jobs_->CheckpointJob(Context().get(), request, response);
  }

  // "STATE: message" of each of the job's state events so far; works while the job runs.
  std::vector<std::string> StateEvents(const std::string& id) {
    v1::ListJobEventsRequest request;
    request.set_job_id(id);
    request.set_page_size(1000);
    v1::ListJobEventsResponse response;
    EXPECT_TRUE(jobs_->ListJobEvents(Context().get(), request, &response).ok());
    std::vector<std::string> out;
    for (const v1::JobEvent& e : response.events()) {
      if (e.has_state()) out.push_back(absl::StrCat(StateName(e.state()), ": ", e.message()));
    }
    return out;
  }
};

TEST_F(LifecycleTest, PendingUntilEnoughWorkersThenRunsToSuccess) {
  const v1::Job submitted = Submit(SmallSpec());
  EXPECT_EQ(submitted.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(submitted.attempt(), 1);
  EXPECT_THAT(submitted.id(), ::testing::StartsWith("j-"));

  // A watcher started while the job is PENDING sees every later change.
  std::vector<std::string> watched;
  std::thread watcher([&] {
    v1::WatchJobRequest request;
    request.set_job_id(submitted.id());
    auto context = Context("", absl::Seconds(20));
    auto reader = jobs_->WatchJob(context.get(), request);
    v1::WatchJobResponse response;
    bool first = true;
    while (reader->Read(&response)) {
      if (first) {
        EXPECT_FALSE(response.has_event());
        watched.push_back(v1::JobState_Name(response.job().state()));
        first = false;
      } else if (response.event().has_state()) {
        watched.push_back(v1::JobState_Name(response.event().state()));
      } else {
        watched.push_back(absl::StrCat("metrics@", response.event().metrics().step()));
      }
    }
    EXPECT_TRUE(reader->Finish().ok());
  });

  auto workers = Workers(3);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(Get(submitted.id()).state(), v1::JOB_STATE_PENDING);  // 3 of 4 workers.
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "h", 3));
  AwaitState(submitted.id(), v1::JOB_STATE_SCHEDULED);

  std::vector<v1::Assignment> as = Assignments(workers);
  ASSERT_EQ(as.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(as[r].world_size(), 4);
    EXPECT_EQ(as[r].attempt(), 1);
    EXPECT_EQ(as[r].rank().module(), r < 2 ? "vision" : "language");
    EXPECT_EQ(as[r].modules_size(), 2);
  }
  EXPECT_THAT(as[3].rank().groups().at("ep").ranks(), ElementsAre(2, 3));
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(submitted.id(), v1::JOB_STATE_RUNNING);

  ASSERT_TRUE(workers[3]->Metrics(as[3], 2, 5.5).ok());
  ASSERT_TRUE(workers[2]->Metrics(as[2], 2, 5.5).ok());  // Same step: recorded once.
  absl::SleepFor(absl::Milliseconds(30));
  ASSERT_TRUE(workers[3]->Metrics(as[3], 5, 4.25).ok());
  v1::Job running = Get(submitted.id());
  EXPECT_EQ(running.progress().step(), 5);
  EXPECT_EQ(running.progress().total_steps(), 10);
  EXPECT_DOUBLE_EQ(running.progress().percent(), 50);
  EXPECT_TRUE(running.progress().has_eta());
  EXPECT_DOUBLE_EQ(running.last_metrics().loss(), 4.25);

  ASSERT_TRUE(workers[0]->Logs(as[0], {"vision says hello", "vision step 1"}).ok());
  ASSERT_TRUE(workers[3]->Logs(as[3], {"language says hello"}).ok());
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  const v1::Job done = AwaitState(submitted.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_DOUBLE_EQ(done.progress().percent(), 100);
  EXPECT_TRUE(done.has_end_time());
  watcher.join();
  EXPECT_THAT(watched, ElementsAre("JOB_STATE_PENDING", "JOB_STATE_SCHEDULED", "JOB_STATE_RUNNING",
                                   "metrics@2", "metrics@5", "JOB_STATE_SUCCEEDED"));

  // Logs stay readable after the job ended.
  v1::StreamLogsRequest logs;
  logs.set_job_id(submitted.id());
  auto context = Context();
  auto reader = jobs_->StreamLogs(context.get(), logs);
  std::vector<std::string> lines;
  v1::StreamLogsResponse chunk;
  while (reader->Read(&chunk)) {
    for (const v1::LogLine& l : chunk.lines())
      lines.push_back(absl::StrCat(l.rank(), ":", l.text()));
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_THAT(lines,
              ElementsAre("0:vision says hello", "0:vision step 1", "3:language says hello"));

  // Cancelling a finished job is refused.
  v1::CancelJobRequest cancel;
  cancel.set_job_id(submitted.id());
  v1::CancelJobResponse cancelled;
  const grpc::Status status = jobs_->CancelJob(Context().get(), cancel, &cancelled);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("already SUCCEEDED"));
}

TEST_F(LifecycleTest, FollowedLogsArriveWhileTheJobRuns) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_TRUE(workers[1]->Logs(as[1], {"old line"}).ok());
  std::vector<std::string> followed;
  std::thread follower([&] {
    v1::StreamLogsRequest request;
    request.set_job_id(job.id());
    request.set_rank(1);
    request.set_follow(true);
    request.set_tail_lines(1);
    auto context = Context("", absl::Seconds(20));
    auto reader = jobs_->StreamLogs(context.get(), request);
    v1::StreamLogsResponse chunk;
    while (reader->Read(&chunk)) {
      for (const v1::LogLine& l : chunk.lines()) followed.push_back(l.text());
    }
    EXPECT_TRUE(reader->Finish().ok());
  });
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(workers[1]->Logs(as[1], {"new line 1", "new line 2"}).ok());
  ASSERT_TRUE(workers[2]->Logs(as[2], {"other rank"}).ok());
  absl::SleepFor(absl::Milliseconds(100));
  for (int r = 0; r < 4; ++r)
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  follower.join();  // The stream ends with the job.
  EXPECT_THAT(followed, ElementsAre("old line", "new line 1", "new line 2"));
}

TEST_F(LifecycleTest, CancelPendingJobAtOnce) {
  const v1::Job job = Submit(SmallSpec());
  v1::CancelJobRequest request;
  request.set_job_id(job.id());
  request.set_reason("not needed");
  v1::CancelJobResponse response;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), request, &response).ok());
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(response.job().state_reason(), "not needed");
  EXPECT_THAT(StateHistory(job.id()), ElementsAre());  // Finished: current state only.
}

TEST_F(LifecycleTest, CancelRunningJobStopsItsWorkers) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CancelJobRequest request;
  request.set_job_id(job.id());
  v1::CancelJobResponse response;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), request, &response).ok());
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_CANCELLING);
  for (int r = 0; r < 4; ++r)
    EXPECT_EQ(workers[r]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_CANCELLING);  // Rank 3 has not confirmed.
  ASSERT_TRUE(workers[3]->Report(as[3], v1::WORKER_STATE_STOPPED).ok());
  AwaitState(job.id(), v1::JOB_STATE_CANCELLED);
  // The workers are free again: a new job gets them.
  const v1::Job next = Submit(SmallSpec("next"));
  AwaitState(next.id(), v1::JOB_STATE_SCHEDULED);
}

// SmallSpec saving checkpoints into /ckpt (nothing is written: the workers are fakes).
v1::JobSpec CheckpointingSpec(int max_restarts = 0) {
  v1::JobSpec spec = SmallSpec();
  spec.mutable_checkpointing()->set_dir("/ckpt");
  spec.set_max_restarts(max_restarts);
  return spec;
}

TEST_F(LifecycleTest, CheckpointRequestsReachTheRanksThroughTheirHeartbeats) {
  const v1::Job job = Submit(CheckpointingSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  EXPECT_FALSE(workers[0]->Beat().has_checkpoint_request());
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  EXPECT_FALSE(workers[0]->Beat().has_checkpoint_request());
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), false, "before the upgrade", &response).ok());
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(response.job().checkpoint_request().sequence(), 1);
  EXPECT_FALSE(response.job().checkpoint_request().stop());
  EXPECT_EQ(Get(job.id()).checkpoint_request().reason(), "before the upgrade");
  ASSERT_TRUE(Checkpoint(job.id(), false, "", &response).ok());
  for (int r = 0; r < 4; ++r) {
    const v1::HeartbeatResponse beat = workers[r]->Beat();
    EXPECT_EQ(beat.command(), v1::HeartbeatResponse::COMMAND_CONTINUE);
    EXPECT_EQ(beat.checkpoint_request().sequence(), 2) << r;
    // Naming the attempt and rank it is for: a late answer cannot reach the worker's next job.
    EXPECT_EQ(beat.checkpoint_request_for().job_id(), job.id());
    EXPECT_EQ(beat.checkpoint_request_for().attempt(), 1);
    EXPECT_EQ(beat.checkpoint_request_for().rank(), r);
  }
  v1::ListJobEventsRequest events;
  events.set_job_id(job.id());
  v1::ListJobEventsResponse history;
  ASSERT_TRUE(jobs_->ListJobEvents(Context().get(), events, &history).ok());
  std::vector<std::string> notes;
  for (const v1::JobEvent& e : history.events()) {
    if (!e.has_state() && !e.has_metrics()) notes.push_back(e.message());
  }
  EXPECT_THAT(notes,
              ElementsAre("checkpoint requested: before the upgrade", "checkpoint requested"));
  // Saving goes on as the job does: it still succeeds.
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(LifecycleTest, CheckpointAndStopCancelsTheJobOnceRankZeroHasCommitted) {
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/2));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), true, "time limit in 5 minutes", &response).ok());
  EXPECT_TRUE(response.job().checkpoint_request().stop());
  // A second request changes nothing: the job is stopping.
  ASSERT_TRUE(Checkpoint(job.id(), false, "", &response).ok());
  EXPECT_EQ(response.job().checkpoint_request().sequence(), 1);
  EXPECT_TRUE(workers[2]->Beat().checkpoint_request().stop());
  // The ranks stop on their own; rank 0 last, once the checkpoint is committed.
  const std::string saved = "stopped after saving checkpoint /ckpt/iter_0000007 as requested";
  for (int r = 1; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED, 0, saved, true).ok());
  }
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);  // Not a failure, not restarted.
  ASSERT_TRUE(workers[0]->Report(as[0], v1::WORKER_STATE_STOPPED, 0, saved, true).ok());
  const v1::Job stopped = AwaitState(job.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(stopped.state_reason(), absl::StrCat(saved, ": time limit in 5 minutes"));
  EXPECT_EQ(stopped.attempt(), 1);
  EXPECT_FALSE(stopped.has_failure());
  // The workers are free again.
  const v1::Job next = Submit(SmallSpec("next"));
  AwaitState(next.id(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, AJobAskedToStopIsNotRestartedAfterAFailure) {
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/2));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), true, "", &response).ok());
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_STOPPED, 0, "saved", true).ok());
  // Rank 0 could not commit the checkpoint.
  ASSERT_TRUE(workers[0]->Report(as[0], v1::WORKER_STATE_FAILED, 1, "disk full").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.attempt(), 1);
  EXPECT_THAT(failed.failure().message(), HasSubstr("rank 0 failed (exit code 1): disk full"));
}

TEST_F(LifecycleTest, ARankStoppingForAnotherReasonWhileAStopIsPendingEndsTheAttempt) {
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/2));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), true, "drain", &response).ok());
  // Its worker got SIGTERM before the save: not the stop that was asked for.
  ASSERT_TRUE(workers[0]->Report(as[0], v1::WORKER_STATE_STOPPED, 0, "SIGTERM").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.failure().reason(), "WORKER_STOPPED");
  EXPECT_EQ(failed.attempt(), 1);  // Asked to stop: not restarted.
  EXPECT_EQ(workers[1]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, ACoordinatorRestartWhileAJobStopsAfterACheckpointEndsItCancelled) {
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/2));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), true, "time limit", &response).ok());
  // Ranks 1-3 wrote their part and are free; rank 0 is committing when the coordinator restarts.
  for (int r = 1; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED, 0, "saved", true).ok());
  }
  StopServer();
  StartServer(options_);
  v1::RunningAssignment resume;
  resume.set_job_id(job.id());
  resume.set_attempt(1);
  resume.set_rank(0);
  FakeWorker back(Channel(), "h", 0, v1::DEVICE_KIND_CPU, resume);
  const v1::Job stopped = AwaitState(job.id(), v1::JOB_STATE_CANCELLED, absl::Seconds(5), {&back});
  EXPECT_THAT(stopped.state_reason(),
              AllOf(HasSubstr("stopped after a checkpoint request (time limit)"),
                    HasSubstr("ranks 1, 2, 3 did not re-register"), HasSubstr("unconfirmed")));
  EXPECT_EQ(stopped.attempt(), 1);
  EXPECT_FALSE(stopped.has_failure());
}

TEST_F(LifecycleTest, AJobThatSavedForADrainedWorkerRestartsWithoutUsingARestart) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.join_timeout = absl::Milliseconds(200);
  StopServer();
  StartServer(options);
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/1));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  // Rank 2's worker got SIGTERM: every rank saved after the same step and stopped, and that
  // worker leaves.
  const std::string saved = "stopped after saving checkpoint /ckpt/iter_0000004 as requested";
  for (int r = 1; r < 4; ++r) {
    const std::string message = r == 2 ? saved + " (the worker received SIGTERM)" : saved;
    ASSERT_TRUE(workers[r]
                    ->Report(as[r], v1::WORKER_STATE_STOPPED, 0, message,
                             /*stopped_after_checkpoint=*/true, /*leaving=*/r == 2)
                    .ok());
  }
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);  // Rank 0 commits last.
  ASSERT_TRUE(workers[0]->Report(as[0], v1::WORKER_STATE_STOPPED, 0, saved, true).ok());
  // The next attempt waits for a fourth worker: the leaving one gets no rank, and the wait
  // for its replacement has no join timeout.
  AwaitState(job.id(), v1::JOB_STATE_PENDING);
  KeepBeating(Ptrs(workers), absl::Milliseconds(600));
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  workers[2] = std::make_unique<FakeWorker>(Channel(), "h", 2);  // Its replacement.
  const v1::Job restarted =
      AwaitState(job.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(5), Ptrs(workers));
  EXPECT_EQ(restarted.attempt(), 2);
  EXPECT_EQ(restarted.preemptions(), 1);
  EXPECT_THAT(StateEvents(job.id()),
              ::testing::Contains(
                  AllOf(StartsWith("PENDING: attempt 1 ended for a drained worker (" + saved + ")"),
                        HasSubstr("restarting from that checkpoint as attempt 2"))));
  // The attempts after it still have the spec's one restart for real failures.
  std::vector<v1::Assignment> second = Assignments(workers);
  ASSERT_EQ(second[0].attempt(), 2);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(workers[r]->Report(second[r], v1::WORKER_STATE_STOPPED).ok());
  }
  ASSERT_TRUE(workers[3]->Report(second[3], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  const v1::Job third =
      AwaitState(job.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(5), Ptrs(workers));
  EXPECT_EQ(third.attempt(), 3);
  EXPECT_THAT(StateEvents(job.id()),
              ::testing::Contains(HasSubstr("restarting as attempt 3 of 3")));
  std::vector<v1::Assignment> last = Assignments(workers);
  ASSERT_TRUE(workers[3]->Report(last[3], v1::WORKER_STATE_FAILED, 1, "again").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.attempt(), 3);
  EXPECT_EQ(failed.failure().reason(), "WORKER_FAILED");
}

TEST_F(LifecycleTest, AnIdleWorkerThatLeavesIsForgottenAtOnce) {
  auto workers = Workers(4);
  // Stopped (SIGTERM) with no job: it says so with its last heartbeat and exits.
  workers[3]->Beat(/*leaving=*/true);
  const v1::Job job = Submit(SmallSpec());
  KeepBeating(Ptrs(workers), absl::Milliseconds(200));
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);                      // 3 of 4 workers.
  EXPECT_EQ(workers[3]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);  // Forgotten.
  workers[3] = std::make_unique<FakeWorker>(Channel(), "h", 3);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, ARestartedAttemptStartsWithoutTheEarlierAttemptsRequests) {
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/1));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), false, "", &response).ok());
  ASSERT_TRUE(workers[2]->Report(as[2], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  EXPECT_FALSE(AwaitState(job.id(), v1::JOB_STATE_PENDING).has_checkpoint_request());
  for (int r : {0, 1, 3}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
  std::vector<v1::Assignment> second = Assignments(workers);
  ASSERT_EQ(second[0].attempt(), 2);
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(second[r], v1::WORKER_STATE_RUNNING).ok());
  }
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  EXPECT_FALSE(workers[0]->Beat().has_checkpoint_request());
}

TEST_F(LifecycleTest, CheckpointRequestsNeedARunningJobThatSavesCheckpoints) {
  v1::CheckpointJobResponse response;
  const v1::Job no_dir = Submit(SmallSpec());
  grpc::Status status = Checkpoint(no_dir.id(), false, "", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("its spec has no checkpointing.dir"));
  const v1::Job pending = Submit(CheckpointingSpec());
  status = Checkpoint(pending.id(), true, "", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("is PENDING; only a running job"));
  EXPECT_FALSE(Get(pending.id()).has_checkpoint_request());
  EXPECT_EQ(Checkpoint("j-20260101-000001", false, "", &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(LifecycleTest, CancelGivesUpOnSilentWorkersAfterTheGrace) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  v1::CancelJobRequest request;
  request.set_job_id(job.id());
  v1::CancelJobResponse response;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), request, &response).ok());
  const absl::Time start = absl::Now();
  // Alive but never confirming the stop.
  const v1::Job cancelled =
      AwaitState(job.id(), v1::JOB_STATE_CANCELLED, absl::Seconds(5), Ptrs(workers));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_THAT(cancelled.state_reason(), HasSubstr("did not confirm the stop"));
}

TEST_F(LifecycleTest, WorkerFailureFailsTheJobNamingTheRank) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_TRUE(workers[2]->Report(as[2], v1::WORKER_STATE_FAILED, 137, "killed").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.failure().reason(), "WORKER_FAILED");
  EXPECT_EQ(failed.failure().rank(), 2);
  EXPECT_EQ(failed.failure().exit_code(), 137);
  EXPECT_THAT(failed.failure().message(), HasSubstr("rank 2 failed (exit code 137): killed"));
  // The other ranks are told to stop.
  EXPECT_EQ(workers[0]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, ADeadWorkerWhosePeersFailedFirstIsNamedAsTheCause) {
  // Rank 1's worker dies (no more heartbeats); rank 2 reports the broken connection before the
  // coordinator notices. Once rank 1's heartbeat timeout passes, the job names rank 1.
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  const std::vector<FakeWorker*> alive = {workers[0].get(), workers[2].get(), workers[3].get()};
  KeepBeating(alive, absl::Milliseconds(100));  // Rank 1 is silent from here on.
  ASSERT_TRUE(
      workers[2]
          ->Report(as[2], v1::WORKER_STATE_FAILED, 1, "all-gather: Connection closed by peer")
          .ok());
  EXPECT_EQ(AwaitState(job.id(), v1::JOB_STATE_FAILED).failure().rank(), 2);
  for (int r : {0, 3}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  KeepBeating(alive, absl::Milliseconds(700));  // Past the 400 ms heartbeat timeout.
  const v1::Job failed = Get(job.id());
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.failure().reason(), "HEARTBEAT_TIMEOUT");
  EXPECT_EQ(failed.failure().rank(), 1);
  EXPECT_THAT(failed.failure().message(),
              AllOf(HasSubstr("rank 1 (worker "), HasSubstr("sent no heartbeat for 400ms"),
                    HasSubstr("most likely the cause; rank 2 had reported: rank 2 failed (exit "
                              "code 1): all-gather: Connection closed by peer")));
  const std::vector<std::string> states = StateEvents(job.id());
  EXPECT_EQ(states.back().rfind("FAILED: WORKER_FAILED", 0), 0u) << states.back();
  // The note is an event of its own, after the FAILED one.
  v1::ListJobEventsRequest request;
  request.set_job_id(job.id());
  v1::ListJobEventsResponse response;
  ASSERT_TRUE(jobs_->ListJobEvents(Context().get(), request, &response).ok());
  const v1::JobEvent& last = response.events(response.events_size() - 1);
  EXPECT_FALSE(last.has_state());
  EXPECT_THAT(last.message(), HasSubstr("attempt 1: rank 1 (worker "));
}

TEST_F(LifecycleTest, AWorkerDyingAfterItsAttemptFailedIsNotBlamed) {
  // Every rank heartbeats on after rank 2's failure; rank 1's worker dies only later: the
  // failure keeps naming rank 2.
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_TRUE(workers[2]->Report(as[2], v1::WORKER_STATE_FAILED, 1, "bad data").ok());
  AwaitState(job.id(), v1::JOB_STATE_FAILED);
  KeepBeating(Ptrs(workers), absl::Milliseconds(100));
  KeepBeating({workers[0].get(), workers[2].get(), workers[3].get()}, absl::Milliseconds(700));
  const v1::Job failed = Get(job.id());
  EXPECT_EQ(failed.failure().rank(), 2);
  EXPECT_EQ(failed.failure().reason(), "WORKER_FAILED");
}

TEST_F(LifecycleTest, RankStoppingUnaskedEndsTheAttempt) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  // Its worker was shut down (SIGTERM) while the others still run.
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_STOPPED, 0, "SIGTERM").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.failure().reason(), "WORKER_STOPPED");
  EXPECT_EQ(failed.failure().rank(), 1);
  EXPECT_THAT(failed.failure().message(),
              HasSubstr("rank 1 stopped before the job ended: SIGTERM"));
  EXPECT_EQ(workers[0]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, WorkerIdsNeverRepeatAcrossRestarts) {
  auto before = Workers(2);
  StopServer();
  StartServer(options_);
  auto after = Workers(2);
  for (const auto& old_worker : before) {
    for (const auto& new_worker : after) EXPECT_NE(old_worker->id(), new_worker->id());
    // The old id is unknown to the new coordinator, so its worker registers again.
    EXPECT_EQ(old_worker->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);
  }
}

TEST_F(LifecycleTest, FailedAttemptRestartsWhenAllowed) {
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  const v1::Job job = Submit(spec);
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  v1::Job restarted = AwaitState(job.id(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(restarted.attempt(), 2);
  EXPECT_THAT(restarted.state_reason(), HasSubstr("restarting as attempt 2 of 2"));
  for (int r : {0, 2, 3}) {
    EXPECT_EQ(workers[r]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  }
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
  std::vector<v1::Assignment> second = Assignments(workers);
  EXPECT_EQ(second[0].attempt(), 2);
  ASSERT_TRUE(workers[0]->Report(second[0], v1::WORKER_STATE_FAILED, 2, "again").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.attempt(), 2);
  EXPECT_EQ(failed.failure().rank(), 0);
}

TEST_F(LifecycleTest, SilentWorkerFailsTheJobWithinTheHeartbeatTimeout) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  const absl::Time start = absl::Now();
  // Ranks 0, 1 and 3 keep beating; rank 2 falls silent.
  v1::Job job_now = Get(job.id());
  while (job_now.state() != v1::JOB_STATE_FAILED && absl::Now() - start < absl::Seconds(5)) {
    for (int r : {0, 1, 3}) workers[r]->Heartbeat();
    absl::SleepFor(absl::Milliseconds(50));
    job_now = Get(job.id());
  }
  ASSERT_EQ(job_now.state(), v1::JOB_STATE_FAILED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(job_now.failure().reason(), "HEARTBEAT_TIMEOUT");
  EXPECT_EQ(job_now.failure().rank(), 2);
  EXPECT_THAT(job_now.failure().message(), HasSubstr("rank 2 (worker"));
  EXPECT_EQ(workers[2]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);
}

TEST_F(LifecycleTest, ActiveDeadlineFailsTheJob) {
  v1::JobSpec spec = SmallSpec();
  *spec.mutable_active_deadline() = google::protobuf::util::TimeUtil::MillisecondsToDuration(150);
  const v1::Job job = Submit(spec);
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  const absl::Time start = absl::Now();
  v1::Job job_now = Get(job.id());
  while (job_now.state() != v1::JOB_STATE_FAILED && absl::Now() - start < absl::Seconds(5)) {
    for (auto& w : workers) w->Heartbeat();
    absl::SleepFor(absl::Milliseconds(20));
    job_now = Get(job.id());
  }
  EXPECT_EQ(job_now.failure().reason(), "DEADLINE_EXCEEDED");
  EXPECT_EQ(job_now.failure().rank(), -1);
}

TEST_F(LifecycleTest, RanksFollowHostThenDeviceOrder) {
  const v1::Job job = Submit(SmallSpec());
  std::vector<std::unique_ptr<FakeWorker>> workers;
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "node-b", 1));
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "node-a", 1));
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "node-b", 0));
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "node-a", 0));
  std::vector<int> rank_of(4);
  for (int i = 0; i < 4; ++i) rank_of[i] = workers[i]->Assignment(absl::Seconds(5))->rank().rank();
  EXPECT_THAT(rank_of, ElementsAre(3, 1, 2, 0));
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, GpuJobWaitsForGpuWorkers) {
  v1::JobSpec spec = SmallSpec();
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  const v1::Job job = Submit(spec);
  auto cpu = Workers(4);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  std::vector<std::unique_ptr<FakeWorker>> gpu;
  for (int i = 0; i < 4; ++i) {
    gpu.push_back(std::make_unique<FakeWorker>(Channel(), "g", i, v1::DEVICE_KIND_CUDA));
  }
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, JoinTimeoutFailsAJobTooFewWorkersJoinedNamingTheCount) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.join_timeout = absl::Milliseconds(300);
  StopServer();
  StartServer(options);
  const absl::Time start = absl::Now();
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(3);
  const v1::Job failed =
      AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(5), Ptrs(workers));
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_EQ(failed.failure().reason(), "JOIN_TIMEOUT");
  EXPECT_EQ(failed.failure().rank(), -1);
  EXPECT_EQ(failed.failure().message(),
            "only 3 of the 4 cpu workers the job needs registered within 300ms");
  // The workers that joined were never bound: a job they can hold runs on them.
  v1::JobSpec three = SmallSpec("three");
  three.mutable_modules(1)->mutable_parallelism()->set_ep(1);
  three.mutable_modules(1)->mutable_parallelism()->set_dp(1);
  three.mutable_resources()->set_workers(3);
  const v1::Job next = Submit(three);
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(5), Ptrs(workers)).state(),
            v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, JobQueuedBehindBusyWorkersIsNotAJoinTimeout) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.join_timeout = absl::Milliseconds(200);
  StopServer();
  StartServer(options);
  auto workers = Workers(4);
  const v1::Job first = Submit(SmallSpec("first"));
  std::vector<v1::Assignment> as = Assignments(workers);
  const v1::Job second = Submit(SmallSpec("second"));
  KeepBeating(Ptrs(workers), absl::Milliseconds(600));
  EXPECT_EQ(Get(second.id()).state(), v1::JOB_STATE_PENDING);
  for (size_t r = 0; r < workers.size(); ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  AwaitState(first.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(5), Ptrs(workers));
  EXPECT_EQ(
      AwaitState(second.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(5), Ptrs(workers)).state(),
      v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, RendezvousStoreIsScopedToTheAttempt) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  auto stub = v1::WorkerService::NewStub(Channel());
  std::thread waiter([&] {
    v1::WaitKeysRequest request;
    request.set_job_id(job.id());
    request.set_attempt(1);
    request.add_keys("nccl/tp/0");
    request.add_keys("nccl/tp/1");
    *request.mutable_timeout() = google::protobuf::util::TimeUtil::SecondsToDuration(5);
    v1::WaitKeysResponse response;
    ASSERT_TRUE(stub->WaitKeys(Context().get(), request, &response).ok());
    EXPECT_EQ(response.values().at("nccl/tp/1"), std::string("\x00\x01", 2));
  });
  for (int i = 0; i < 2; ++i) {
    v1::SetKeyRequest set;
    set.set_job_id(job.id());
    set.set_attempt(1);
    set.set_key(absl::StrCat("nccl/tp/", i));
    set.set_value(std::string("\x00\x01", 2));
    v1::SetKeyResponse ok;
    ASSERT_TRUE(stub->SetKey(Context().get(), set, &ok).ok());
  }
  waiter.join();
  v1::GetKeyRequest get;
  get.set_job_id(job.id());
  get.set_attempt(1);
  get.set_key("missing");
  v1::GetKeyResponse got;
  ASSERT_TRUE(stub->GetKey(Context().get(), get, &got).ok());
  EXPECT_FALSE(got.found());
  v1::WaitKeysRequest timeout;
  timeout.set_job_id(job.id());
  timeout.set_attempt(1);
  timeout.add_keys("never");
  *timeout.mutable_timeout() = google::protobuf::util::TimeUtil::MillisecondsToDuration(50);
  v1::WaitKeysResponse none;
  const grpc::Status status = stub->WaitKeys(Context().get(), timeout, &none);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), HasSubstr("never"));
  v1::SetKeyRequest stale;
  stale.set_job_id(job.id());
  stale.set_attempt(7);
  stale.set_key("k");
  v1::SetKeyResponse refused;
  EXPECT_EQ(stub->SetKey(Context().get(), stale, &refused).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(LifecycleTest, RestartKeepsJobsAndReattachesRunningWorkers) {
  const v1::Job done = Submit(SmallSpec("done"));
  v1::CancelJobRequest cancel;
  cancel.set_job_id(done.id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &cancelled).ok());
  const v1::Job job = Submit(SmallSpec("running"));
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  const v1::Job before = AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  const v1::Job done_before = Get(done.id());

  StopServer();
  StartServer(options_);
  EXPECT_EQ(Get(done.id()).DebugString(), done_before.DebugString());
  EXPECT_EQ(Get(job.id()).DebugString(), before.DebugString());
  // The old worker ids are unknown to the new coordinator.
  EXPECT_EQ(workers[0]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);
  std::vector<std::unique_ptr<FakeWorker>> again;
  for (int r = 0; r < 4; ++r) {
    v1::RunningAssignment resume;
    resume.set_job_id(job.id());
    resume.set_attempt(1);
    resume.set_rank(r);
    again.push_back(std::make_unique<FakeWorker>(Channel(), "h", r, v1::DEVICE_KIND_CPU, resume));
  }
  KeepBeating(Ptrs(again), options_.manager.reattach_grace + absl::Milliseconds(200));
  for (auto& w : again) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(again[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(LifecycleTest, RestartFailsRunningJobsWhoseWorkersDoNotComeBack) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  StopServer();
  StartServer(options_);
  v1::RunningAssignment resume;
  resume.set_job_id(job.id());
  resume.set_attempt(1);
  resume.set_rank(0);
  FakeWorker back(Channel(), "h", 0, v1::DEVICE_KIND_CPU, resume);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(5), {&back});
  EXPECT_EQ(failed.failure().reason(), "COORDINATOR_RESTARTED");
  EXPECT_THAT(failed.failure().message(), HasSubstr("ranks 1, 2, 3 did not re-register"));
  EXPECT_EQ(back.Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, CancelBeforeWorkersFetchedTheirRanksFreesThemForTheNextJob) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);  // Ranks assigned; no worker asked for its own.
  v1::CancelJobResponse response;
  ASSERT_TRUE(Cancel(job.id(), &response, "changed my mind").ok());
  // No worker started the job, so no stop needs confirming.
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(response.job().state_reason(), "changed my mind");
  for (auto& w : workers) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
  const v1::Job next = Submit(SmallSpec("next"));
  AwaitState(next.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(2), Ptrs(workers));
  for (const v1::Assignment& a : Assignments(workers)) {
    EXPECT_EQ(a.job_id(), next.id());
    EXPECT_EQ(a.attempt(), 1);
  }
}

TEST_F(LifecycleTest, FailedAttemptFreesRanksNeverFetchedAndStopsTheOthers) {
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  const v1::Job job = Submit(spec);
  auto workers = Workers(4);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
  // Workers 0-2 fetch their ranks; worker 3 has not asked yet when worker 1 fails.
  std::vector<v1::Assignment> as;
  for (int i = 0; i < 3; ++i) {
    std::optional<v1::Assignment> a = workers[i]->Assignment(absl::Seconds(5));
    ASSERT_TRUE(a.has_value());
    as.push_back(*a);
  }
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  EXPECT_EQ(AwaitState(job.id(), v1::JOB_STATE_PENDING).attempt(), 2);
  EXPECT_EQ(workers[3]->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
  for (int i : {0, 2}) {
    EXPECT_EQ(workers[i]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
    ASSERT_TRUE(workers[i]->Report(as[i], v1::WORKER_STATE_STOPPED).ok());
  }
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(2), Ptrs(workers));
  for (const v1::Assignment& a : Assignments(workers)) EXPECT_EQ(a.attempt(), 2);
}

TEST_F(LifecycleTest, SilentWorkerOfAnEndedAttemptDoesNotTouchTheNextAttempt) {
  // A long cancel grace, so that below only a wrongly counted rank can end the cancel early.
  ServerOptions options = FastOptions(db_path_);
  options.manager.cancel_grace = absl::Seconds(30);
  StopServer();
  StartServer(options);
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  const v1::Job job = Submit(spec);
  auto first = Workers(4, "a");
  std::vector<v1::Assignment> as = Assignments(first);
  ASSERT_TRUE(first[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  AwaitState(job.id(), v1::JOB_STATE_PENDING);
  // Attempt 2 runs on the failed rank's worker (free again) and three new ones.
  std::vector<std::unique_ptr<FakeWorker>> second;
  second.push_back(std::move(first[1]));
  for (auto& w : Workers(3, "b")) second.push_back(std::move(w));
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
  std::vector<v1::Assignment> bs;  // By worker, not by rank.
  for (auto& w : second) {
    std::optional<v1::Assignment> a = w->Assignment(absl::Seconds(5));
    ASSERT_TRUE(a.has_value());
    ASSERT_EQ(a->attempt(), 2);
    ASSERT_TRUE(w->Report(*a, v1::WORKER_STATE_RUNNING).ok());
    bs.push_back(*a);
  }
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);

  // Attempt 1's ranks 0, 2 and 3 were told to stop; ranks 0 and 3 vanish without confirming.
  for (int i : {0, 2, 3}) EXPECT_EQ(first[i]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
  std::vector<FakeWorker*> beating = Ptrs(second);
  beating.push_back(first[2].get());
  KeepBeating(beating, options.manager.heartbeat_timeout + absl::Milliseconds(300));
  ASSERT_EQ(first[0]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);  // Declared dead.
  ASSERT_EQ(first[3]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);
  const v1::Job still = Get(job.id());
  EXPECT_EQ(still.state(), v1::JOB_STATE_RUNNING) << still.state_reason();
  EXPECT_EQ(still.attempt(), 2);
  EXPECT_FALSE(still.has_failure());

  // Attempt 2 is cancelled: attempt 1's rank 2 vanishing is not attempt 2's rank 2 confirming.
  v1::CancelJobResponse response;
  ASSERT_TRUE(Cancel(job.id(), &response).ok());
  ASSERT_EQ(response.job().state(), v1::JOB_STATE_CANCELLING);
  int rank2 = -1;
  for (int i = 0; i < 4; ++i) {
    if (bs[i].rank().rank() == 2) {
      rank2 = i;
    } else {
      ASSERT_TRUE(second[i]->Report(bs[i], v1::WORKER_STATE_STOPPED).ok());
    }
  }
  ASSERT_NE(rank2, -1);
  KeepBeating({second[rank2].get()}, options.manager.heartbeat_timeout + absl::Milliseconds(300));
  ASSERT_EQ(first[2]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_CANCELLING);
  ASSERT_TRUE(second[rank2]->Report(bs[rank2], v1::WORKER_STATE_STOPPED).ok());
  AwaitState(job.id(), v1::JOB_STATE_CANCELLED);
}

TEST_F(LifecycleTest, DeadlineExceededIsFinalEvenWithRestartsLeft) {
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(3);
  *spec.mutable_active_deadline() = TimeUtil::MillisecondsToDuration(150);
  const v1::Job job = Submit(spec);
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  const v1::Job failed =
      AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(5), Ptrs(workers));
  EXPECT_EQ(failed.failure().reason(), "DEADLINE_EXCEEDED");
  EXPECT_EQ(failed.attempt(), 1);
  EXPECT_THAT(StateEvents(job.id()),
              ElementsAre("PENDING: submitted", "SCHEDULED: attempt 1: 4 ranks assigned",
                          StartsWith("FAILED: DEADLINE_EXCEEDED")));
  for (auto& w : workers) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, ActiveDeadlineCountsFromTheFirstStartAcrossRestarts) {
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  *spec.mutable_active_deadline() = TimeUtil::MillisecondsToDuration(1000);
  const v1::Job job = Submit(spec);
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  const v1::Job first = Get(job.id());
  ASSERT_TRUE(first.has_start_time());
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  for (int r : {0, 2, 3}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  const v1::Job second = AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
  ASSERT_EQ(second.attempt(), 2);
  EXPECT_EQ(TimeUtil::ToString(second.start_time()), TimeUtil::ToString(first.start_time()));
  const v1::Job failed =
      AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(5), Ptrs(workers));
  EXPECT_EQ(failed.failure().reason(), "DEADLINE_EXCEEDED");
  EXPECT_EQ(failed.attempt(), 2);
}

TEST_F(LifecycleTest, ActiveDeadlineAlsoCountsWhileWaitingToRestart) {
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  *spec.mutable_active_deadline() = TimeUtil::MillisecondsToDuration(300);
  const v1::Job job = Submit(spec);
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  // Ranks 0, 2 and 3 never confirm their stop, so attempt 2 never finds four free workers.
  const v1::Job failed =
      AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(5), Ptrs(workers));
  EXPECT_EQ(failed.failure().reason(), "DEADLINE_EXCEEDED");
  EXPECT_EQ(failed.attempt(), 2);
}

TEST_F(LifecycleTest, WaitKeysAnswersUnavailableWhenTheCoordinatorStops) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  auto stub = v1::WorkerService::NewStub(Channel());
  v1::GetKeyRequest get;  // Connects the channel, so the wait below starts at once.
  get.set_job_id(job.id());
  get.set_attempt(1);
  get.set_key("k");
  v1::GetKeyResponse got;
  ASSERT_TRUE(stub->GetKey(Context().get(), get, &got).ok());
  grpc::Status status;
  std::thread waiter([&] {
    v1::WaitKeysRequest request;
    request.set_job_id(job.id());
    request.set_attempt(1);
    request.add_keys("never");
    *request.mutable_timeout() = TimeUtil::SecondsToDuration(30);
    v1::WaitKeysResponse response;
    status = stub->WaitKeys(Context("", absl::Seconds(30)).get(), request, &response);
  });
  absl::SleepFor(absl::Milliseconds(300));  // The wait is under way.
  StopServer();
  waiter.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("shutting down"));
}

TEST_F(LifecycleTest, ReportStatusRejectsAnUnknownWorkerState) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (v1::WorkerState bad : {v1::WORKER_STATE_UNSPECIFIED, static_cast<v1::WorkerState>(42)}) {
    const grpc::Status status = workers[0]->Report(as[0], bad);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(status.error_message(), HasSubstr("state"));
  }
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
}

TEST_F(LifecycleTest, RestartReschedulesAScheduledJobWhoseWorkersNeverStartedIt) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);  // No worker asks for its rank.
  StopServer();
  StartServer(options_);
  // The same workers register again, with nothing to resume.
  auto again = Workers(4);
  KeepBeating(Ptrs(again), options_.manager.reattach_grace + absl::Milliseconds(300));
  const v1::Job rescheduled =
      AwaitState(job.id(), v1::JOB_STATE_SCHEDULED, absl::Seconds(2), Ptrs(again));
  EXPECT_EQ(rescheduled.attempt(), 1);
  EXPECT_FALSE(rescheduled.has_failure());
  EXPECT_THAT(StateEvents(job.id()),
              ElementsAre("PENDING: submitted", "SCHEDULED: attempt 1: 4 ranks assigned",
                          AllOf(StartsWith("PENDING: "), HasSubstr("coordinator restarted"),
                                HasSubstr("attempt 1")),
                          "SCHEDULED: attempt 1: 4 ranks assigned"));
  std::vector<v1::Assignment> as = Assignments(again);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(as[r].job_id(), job.id());
    EXPECT_EQ(as[r].attempt(), 1);
    ASSERT_TRUE(again[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  }
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
}

TEST_F(LifecycleTest, ReattachedWorkersMoveAScheduledJobToRunning) {
  const v1::Job job = Submit(SmallSpec());
  auto workers = Workers(4);
  std::vector<v1::Assignment> as = Assignments(workers);
  // Ranks 0 and 1 report running; the coordinator restarts before ranks 2 and 3 do.
  for (int r : {0, 1}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_SCHEDULED);
  StopServer();
  StartServer(options_);
  std::vector<std::unique_ptr<FakeWorker>> again;
  for (int r = 0; r < 4; ++r) {
    v1::RunningAssignment resume;
    resume.set_job_id(job.id());
    resume.set_attempt(1);
    resume.set_rank(r);
    again.push_back(std::make_unique<FakeWorker>(Channel(), "h", r, v1::DEVICE_KIND_CPU, resume));
  }
  // Every rank is back and running: no further report is needed to say so.
  const v1::Job running =
      AwaitState(job.id(), v1::JOB_STATE_RUNNING, absl::Seconds(2), Ptrs(again));
  EXPECT_THAT(running.state_reason(), HasSubstr("re-attached"));
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(again[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
}

}  // namespace
}  // namespace mimo::coordinator::testing
