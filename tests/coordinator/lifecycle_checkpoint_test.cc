// Checkpoint requests through the real server: reaching the ranks, checkpoint-and-stop, saving
// for a drained worker.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/coordinator/lifecycle_fixture.h"

namespace mimo::coordinator::testing {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST_F(LifecycleTest, CheckpointRequestsReachTheRanksThroughTheirHeartbeats) {
  const v1::Job job = Submit(CheckpointingSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  v1::CheckpointJobResponse response;
  ASSERT_TRUE(Checkpoint(job.id(), true, "time limit", &response).ok());
  // Ranks 1-3 wrote their part and are free; rank 0 is committing when the coordinator restarts.
  for (int r = 1; r < 4; ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED, 0, "saved", true).ok());
  }
  beats.Clear();  // None beats while the server is down.
  StopServer();
  StartServer(options_);
  v1::RunningAssignment resume;
  resume.set_job_id(job.id());
  resume.set_attempt(1);
  resume.set_rank(0);
  FakeWorker back(Channel(), "h", 0, v1::DEVICE_KIND_CPU, resume);
  beats.Add(&back);
  const v1::Job stopped = AwaitState(job.id(), v1::JOB_STATE_CANCELLED);
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
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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
  beats.Remove(workers[2].get());  // It exits.
  // The next attempt waits for a fourth worker: the leaving one gets no rank, and the wait
  // for its replacement has no join timeout. Not a fixed wait past it: a CUDA job, with no CUDA
  // worker registered, submitted once this one waits, fails with JOIN_TIMEOUT in a scheduling
  // pass that has seen this one waiting longer still.
  AwaitState(job.id(), v1::JOB_STATE_PENDING);
  v1::JobSpec cuda = SmallSpec("no-cuda-workers");
  cuda.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  const v1::Job probe = Submit(cuda);
  ASSERT_EQ(AwaitState(probe.id(), v1::JOB_STATE_FAILED).failure().reason(), "JOIN_TIMEOUT");
  const v1::Job waiting = Get(job.id());
  EXPECT_EQ(waiting.state(), v1::JOB_STATE_PENDING) << waiting.state_reason();
  workers[2] = std::make_unique<FakeWorker>(Channel(), "h", 2);  // Its replacement.
  beats.Add(workers[2].get());
  const v1::Job restarted = AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
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
  const v1::Job third = AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(third.attempt(), 3);
  EXPECT_THAT(StateEvents(job.id()),
              ::testing::Contains(HasSubstr("restarting as attempt 3 of 3")));
  std::vector<v1::Assignment> last = Assignments(workers);
  ASSERT_TRUE(workers[3]->Report(last[3], v1::WORKER_STATE_FAILED, 1, "again").ok());
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.attempt(), 3);
  EXPECT_EQ(failed.failure().reason(), "WORKER_FAILED");
}

TEST_F(LifecycleTest, ARestartedAttemptStartsWithoutTheEarlierAttemptsRequests) {
  const v1::Job job = Submit(CheckpointingSpec(/*max_restarts=*/1));
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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

TEST_F(LifecycleTest, AJobWaitsWhileAnotherUnfinishedJobUsesItsCheckpointFolder) {
  const v1::Job first = Submit(CheckpointingSpec());  // checkpointing.dir /ckpt
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  AwaitState(first.id(), v1::JOB_STATE_SCHEDULED);
  v1::JobSpec again = CheckpointingSpec();
  again.mutable_checkpointing()->set_dir("/ckpt/./");  // The same folder, spelled otherwise.
  const v1::Job second = Submit(again);
  v1::JobSpec other = CheckpointingSpec();
  other.mutable_checkpointing()->set_dir("/ckpt-other");
  const v1::Job third = Submit(other);
  // Free workers do not start it while the first job uses the folder; a job with a folder of its
  // own goes first.
  auto more = Workers(4, beats, "h2");
  AwaitState(third.id(), v1::JOB_STATE_SCHEDULED);
  v1::Job waiting = Get(second.id());
  EXPECT_EQ(waiting.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(waiting.state_reason(), absl::StrCat("waiting for job ", first.id(),
                                                 " (SCHEDULED) to end: both use "
                                                 "checkpointing.dir /ckpt"));
  // A third submission of the folder queues behind the second (submission order).
  const v1::Job fourth = Submit(CheckpointingSpec());
  EXPECT_EQ(Get(fourth.id()).state_reason(),
            absl::StrCat("waiting for job ", first.id(),
                         " (SCHEDULED) to end: both use checkpointing.dir /ckpt"));
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(third.id(), &cancelled).ok());
  ASSERT_TRUE(Cancel(first.id(), &cancelled).ok());
  AwaitState(second.id(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(Get(fourth.id()).state_reason(),
            absl::StrCat("waiting for job ", second.id(),
                         " (SCHEDULED) to end: both use checkpointing.dir /ckpt"));
}

TEST_F(LifecycleTest, AJobWaitsWhileAnotherUnfinishedJobUsesItsOutputFolder) {
  v1::JobSpec spec = SmallSpec();
  spec.set_output_dir("/runs/a");
  const v1::Job first = Submit(spec);
  spec.set_output_dir("/runs/b/../a/");
  const v1::Job second = Submit(spec);
  BackgroundHeartbeats beats;
  auto workers = Workers(8, beats);
  AwaitState(first.id(), v1::JOB_STATE_SCHEDULED);
  absl::SleepFor(absl::Milliseconds(100));  // At least: scheduling passes run meanwhile.
  EXPECT_EQ(Get(second.id()).state_reason(),
            absl::StrCat("waiting for job ", first.id(),
                         " (SCHEDULED) to end: both use output_dir /runs/a"));
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

}  // namespace
}  // namespace mimo::coordinator::testing
