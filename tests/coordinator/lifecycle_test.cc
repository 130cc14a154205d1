// The job lifecycle through the real server: schedule, run, metrics, logs, watch, succeed;
// cancel; placement, join timeouts, the rendezvous store.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "google/protobuf/util/time_util.h"
#include "tests/coordinator/lifecycle_fixture.h"

namespace mimo::coordinator::testing {
namespace {

using google::protobuf::util::TimeUtil;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

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

  BackgroundHeartbeats beats;
  auto workers = Workers(3, beats);
  absl::SleepFor(absl::Milliseconds(100));                        // At least: ticks run meanwhile.
  EXPECT_EQ(Get(submitted.id()).state(), v1::JOB_STATE_PENDING);  // 3 of 4 workers.
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "h", 3));
  beats.Add(workers.back().get());
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

// The follower's tail is its first line; lines written after it has that one arrive while the
// job still runs (each awaited, not slept for: a loaded machine may start the stream late).
TEST_F(LifecycleTest, FollowedLogsArriveWhileTheJobRuns) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_TRUE(workers[1]->Logs(as[1], {"old line"}).ok());
  absl::Mutex mu;
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
      absl::MutexLock lock(&mu);
      for (const v1::LogLine& l : chunk.lines()) followed.push_back(l.text());
    }
    EXPECT_TRUE(reader->Finish().ok());
  });
  // Until the follower has `n` lines (or 10 s pass).
  auto await_followed = [&](size_t n) {
    auto enough = [&] { return followed.size() >= n; };
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  };
  await_followed(1);  // The stream is under way: its tail is read.
  // EXPECT, not ASSERT, until the follower is joined.
  EXPECT_TRUE(workers[1]->Logs(as[1], {"new line 1", "new line 2"}).ok());
  EXPECT_TRUE(workers[2]->Logs(as[2], {"other rank"}).ok());
  await_followed(3);
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  follower.join();  // The stream ends with the job.
  EXPECT_THAT(followed, ElementsAre("old line", "new line 1", "new line 2"));
}

// A log longer than StreamLogs' page (10000 lines read from the store at a time) arrives whole
// and in order, followed or not. A long heartbeat timeout: each 5000 lines are stored under the
// manager's mutex, which heartbeats wait for, and on a loaded machine that took longer than the
// 400 ms timeout (the workers, beating from a thread, were then dropped as silent).
TEST_F(LifecycleTest, ALongLogStreamsWholeInPages) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.heartbeat_timeout = absl::Seconds(30);
  StopServer();
  StartServer(options);
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  constexpr int kLines = 25003;
  std::vector<std::string> lines;
  for (int i = 0; i < kLines; ++i) lines.push_back(absl::StrCat("line ", i));
  for (int at = 0; at < kLines; at += 5000) {
    ASSERT_TRUE(
        workers[0]
            ->Logs(as[0], std::vector<std::string>(lines.begin() + at,
                                                   lines.begin() + std::min(kLines, at + 5000)))
            .ok());
  }
  for (int r = 0; r < 4; ++r)
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
  for (const bool follow : {false, true}) {
    v1::StreamLogsRequest request;
    request.set_job_id(job.id());
    request.set_follow(follow);
    auto context = Context("", absl::Seconds(20));
    auto reader = jobs_->StreamLogs(context.get(), request);
    std::vector<std::string> got;
    v1::StreamLogsResponse chunk;
    while (reader->Read(&chunk)) {
      for (const v1::LogLine& l : chunk.lines()) got.push_back(l.text());
    }
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(got, lines) << "follow " << follow;
  }
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

TEST_F(LifecycleTest, FinishedJobsAreDeletedAfterTheirTtl) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.finished_job_ttl = absl::Milliseconds(300);
  StopServer();
  StartServer(options);
  const v1::Job done = Submit(SmallSpec("done"));
  const v1::Job waiting = Submit(SmallSpec("waiting"));  // PENDING: no workers.
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(done.id(), &cancelled).ok());
  ASSERT_EQ(cancelled.job().state(), v1::JOB_STATE_CANCELLED);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  grpc::Status status;
  do {
    absl::SleepFor(absl::Milliseconds(50));
    v1::GetJobRequest request;
    request.set_job_id(done.id());
    v1::GetJobResponse response;
    status = jobs_->GetJob(Context().get(), request, &response);
  } while (status.ok() && absl::Now() < deadline);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_EQ(Get(waiting.id()).state(), v1::JOB_STATE_PENDING);
}

TEST_F(LifecycleTest, CancelRunningJobStopsItsWorkers) {
  // A long cancel grace: rank 3 is waited for however slow the test (past the grace, a live rank
  // that never confirms is given up on: CancelGivesUpOnSilentWorkersAfterTheGrace).
  ServerOptions options = FastOptions(db_path_);
  options.manager.cancel_grace = absl::Seconds(30);
  StopServer();
  StartServer(options);
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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

TEST_F(LifecycleTest, CancelGivesUpOnSilentWorkersAfterTheGrace) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;  // Alive throughout, but never confirming the stop.
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  v1::CancelJobRequest request;
  request.set_job_id(job.id());
  v1::CancelJobResponse response;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), request, &response).ok());
  const absl::Time start = absl::Now();
  const v1::Job cancelled = AwaitState(job.id(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_THAT(cancelled.state_reason(), HasSubstr("did not confirm the stop"));
}

TEST_F(LifecycleTest, CancelBeforeWorkersFetchedTheirRanksFreesThemForTheNextJob) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);  // Ranks assigned; no worker asked for its own.
  v1::CancelJobResponse response;
  ASSERT_TRUE(Cancel(job.id(), &response, "changed my mind").ok());
  // No worker started the job, so no stop needs confirming.
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(response.job().state_reason(), "changed my mind");
  for (auto& w : workers) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
  const v1::Job next = Submit(SmallSpec("next"));
  AwaitState(next.id(), v1::JOB_STATE_SCHEDULED);
  for (const v1::Assignment& a : Assignments(workers)) {
    EXPECT_EQ(a.job_id(), next.id());
    EXPECT_EQ(a.attempt(), 1);
  }
}

// A long heartbeat timeout: only the leaving beat can have taken worker 3 off the record, never
// its silence (on a loaded machine that lasted past 400 ms).
TEST_F(LifecycleTest, AnIdleWorkerThatLeavesIsForgottenAtOnce) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.heartbeat_timeout = absl::Seconds(30);
  StopServer();
  StartServer(options);
  BackgroundHeartbeats beats;
  auto workers = Workers(3, beats);
  workers.push_back(std::make_unique<FakeWorker>(Channel(), "h", 3));
  // Stopped (SIGTERM) with no job: it says so with its last heartbeat and exits.
  workers[3]->Beat(/*leaving=*/true);
  const v1::Job job = Submit(SmallSpec());
  absl::SleepFor(absl::Milliseconds(200));                  // At least: ticks run meanwhile.
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);  // 3 of 4 workers.
  EXPECT_EQ(workers[3]->Heartbeat(), v1::HeartbeatResponse::COMMAND_REGISTER);  // Forgotten.
  workers[3] = std::make_unique<FakeWorker>(Channel(), "h", 3);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, RanksFollowHostThenDeviceOrder) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  std::vector<std::unique_ptr<FakeWorker>> workers;
  for (const auto& [host, index] :
       {std::pair{"node-b", 1}, {"node-a", 1}, {"node-b", 0}, {"node-a", 0}}) {
    workers.push_back(std::make_unique<FakeWorker>(Channel(), host, index));
    beats.Add(workers.back().get());
  }
  std::vector<int> rank_of(4);
  for (int i = 0; i < 4; ++i) rank_of[i] = workers[i]->Assignment(absl::Seconds(5))->rank().rank();
  EXPECT_THAT(rank_of, ElementsAre(3, 1, 2, 0));
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, GpuJobWaitsForGpuWorkers) {
  v1::JobSpec spec = SmallSpec();
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  const v1::Job job = Submit(spec);
  BackgroundHeartbeats beats;
  auto cpu = Workers(4, beats);
  absl::SleepFor(absl::Milliseconds(100));  // At least: ticks run meanwhile.
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  std::vector<std::unique_ptr<FakeWorker>> gpu;
  for (int i = 0; i < 4; ++i) {
    gpu.push_back(std::make_unique<FakeWorker>(Channel(), "g", i, v1::DEVICE_KIND_CUDA));
    beats.Add(gpu.back().get());
  }
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, APendingJobSaysWhatItWaitsFor) {
  v1::JobSpec gpu_spec = SmallSpec("gpu");
  gpu_spec.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  const v1::Job gpu = Submit(gpu_spec);
  EXPECT_EQ(gpu.state_reason(), "waiting for 4 CUDA workers: none registered");
  const v1::Job first = Submit(SmallSpec("first"));
  BackgroundHeartbeats beats;
  auto workers = Workers(2, beats);
  EXPECT_EQ(Get(first.id()).state_reason(), "waiting for 4 CPU workers: 2 registered");
  for (int i : {2, 3}) {
    workers.push_back(std::make_unique<FakeWorker>(Channel(), "h", i));
    beats.Add(workers.back().get());
  }
  AwaitState(first.id(), v1::JOB_STATE_SCHEDULED);
  // Queued behind a running job: enough workers registered, not enough idle (how many are idle
  // is not said: see APendingJobsReasonIsNotRewrittenAsWorkersComeAndGo).
  const v1::Job second = Submit(SmallSpec("second"));
  EXPECT_EQ(second.state_reason(), "waiting for 4 CPU workers: 4 registered, fewer than 4 idle");
  // Nothing changed: the reason is not stored again (no write per scheduling pass).
  const v1::Job stored = Get(second.id());
  absl::SleepFor(absl::Milliseconds(100));  // At least: scheduling passes run meanwhile.
  EXPECT_EQ(Get(second.id()).update_time().DebugString(), stored.update_time().DebugString());
  EXPECT_EQ(Get(gpu.id()).state_reason(), "waiting for 4 CUDA workers: none registered");
  // The waiting is no state change: the events are unchanged.
  EXPECT_THAT(StateEvents(second.id()), ElementsAre("PENDING: submitted"));
}

// Workers freed one by one (here as a cancelled job's ranks confirm their stop) change how many
// are idle, but not what a queued job waits for: its reason is not stored again for each (an
// fsync under the manager's mutex, for every queued job). A long cancel grace, so that ranks 2
// and 3, slow to confirm on a loaded machine, are not given up on meanwhile (that changes the
// reason: it then says they are not counted).
TEST_F(LifecycleTest, APendingJobsReasonIsNotRewrittenAsWorkersComeAndGo) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.cancel_grace = absl::Seconds(30);
  StopServer();
  StartServer(options);
  const v1::Job first = Submit(SmallSpec("first"));
  BackgroundHeartbeats beats;  // No worker times out on a loaded machine (5 registered stays).
  auto workers = Workers(5, beats);
  std::vector<std::unique_ptr<FakeWorker>> ranked;
  for (int i = 0; i < 4; ++i) ranked.push_back(std::move(workers[i]));
  std::vector<v1::Assignment> as = Assignments(ranked);
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(ranked[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  }
  const v1::Job second = Submit(SmallSpec("second"));
  EXPECT_EQ(second.state_reason(), "waiting for 4 CPU workers: 5 registered, fewer than 4 idle");
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(first.id(), &cancelled).ok());
  const v1::Job stored = Get(second.id());
  for (int r : {0, 1}) {
    ASSERT_TRUE(ranked[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
    const v1::Job now = Get(second.id());
    EXPECT_EQ(now.state_reason(), stored.state_reason());
    EXPECT_EQ(now.update_time().DebugString(), stored.update_time().DebugString());
  }
  for (int r : {2, 3}) ASSERT_TRUE(ranked[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  EXPECT_EQ(Get(first.id()).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(second.id()).state(), v1::JOB_STATE_SCHEDULED);
}

// A worker told to stop that keeps beating but never confirms (a collective hung in its process)
// stops counting once the cancel grace has passed: the restarted job that needs it fails with
// JOIN_TIMEOUT naming it instead of waiting behind it forever.
TEST_F(LifecycleTest, AWorkerThatNeverConfirmsItsStopIsNotWaitedForForever) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.join_timeout = absl::Milliseconds(300);
  StopServer();
  StartServer(options);
  v1::JobSpec spec = SmallSpec();
  spec.set_max_restarts(1);
  const v1::Job job = Submit(spec);
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  ASSERT_TRUE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 1, "boom").ok());
  AwaitState(job.id(), v1::JOB_STATE_PENDING);
  for (int r : {0, 3}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_STOPPED).ok());
  // Worker 2 beats on, told to stop, and never reports.
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED) << failed.DebugString();
  EXPECT_EQ(failed.failure().reason(), "JOIN_TIMEOUT");
  EXPECT_THAT(failed.failure().message(),
              HasSubstr(absl::StrCat("(not counting ", workers[2]->id(),
                                     " on h, device 2: told "
                                     "to stop more than 600ms ago, never confirmed)")));
}

TEST_F(LifecycleTest, JoinTimeoutFailsAJobTooFewWorkersJoinedNamingTheCount) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.join_timeout = absl::Milliseconds(300);
  StopServer();
  StartServer(options);
  const absl::Time start = absl::Now();
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;  // None times out meanwhile: 3 stay registered.
  auto workers = Workers(3, beats);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
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
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SCHEDULED).state(), v1::JOB_STATE_SCHEDULED);
}

// A job queued behind a running one has the workers it needs registered, only not idle: however
// long it waits, that is no join timeout. The workers beat from a thread from their registration
// on (one dropped for its silence on a loaded machine left 3 registered, and the join timeout
// then rightly failed the job). The wait past the join timeout is not a fixed sleep: a CUDA job,
// with no CUDA worker registered, submitted after the second, fails with JOIN_TIMEOUT in a
// scheduling pass that has seen the second waiting longer still.
TEST_F(LifecycleTest, JobQueuedBehindBusyWorkersIsNotAJoinTimeout) {
  ServerOptions options = FastOptions(db_path_);
  options.manager.join_timeout = absl::Milliseconds(200);
  StopServer();
  StartServer(options);
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  const v1::Job first = Submit(SmallSpec("first"));
  std::vector<v1::Assignment> as = Assignments(workers);
  const v1::Job second = Submit(SmallSpec("second"));
  v1::JobSpec cuda = SmallSpec("no-cuda-workers");
  cuda.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  const v1::Job probe = Submit(cuda);
  ASSERT_EQ(AwaitState(probe.id(), v1::JOB_STATE_FAILED).failure().reason(), "JOIN_TIMEOUT");
  const v1::Job queued = Get(second.id());
  EXPECT_EQ(queued.state(), v1::JOB_STATE_PENDING) << queued.state_reason();
  EXPECT_EQ(queued.state_reason(), "waiting for 4 CPU workers: 4 registered, fewer than 4 idle");
  for (size_t r = 0; r < workers.size(); ++r) {
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  AwaitState(first.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(AwaitState(second.id(), v1::JOB_STATE_SCHEDULED).state(), v1::JOB_STATE_SCHEDULED);
}

TEST_F(LifecycleTest, RendezvousStoreIsScopedToTheAttempt) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;  // The attempt lasts however slow the test.
  auto workers = Workers(4, beats);
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

TEST_F(LifecycleTest, ReportStatusRejectsAnUnknownWorkerState) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (v1::WorkerState bad : {v1::WORKER_STATE_UNSPECIFIED, static_cast<v1::WorkerState>(42)}) {
    const grpc::Status status = workers[0]->Report(as[0], bad);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(status.error_message(), HasSubstr("state"));
  }
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
}

}  // namespace
}  // namespace mimo::coordinator::testing
