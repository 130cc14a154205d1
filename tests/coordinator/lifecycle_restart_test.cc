// Restarts of the coordinator through the real server: jobs kept, workers reattached or their
// jobs failed, scheduled jobs rescheduled, waits answered when it stops.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <functional>
#include <string>
#include <thread>

#include "coordinator/job_store.h"
#include "google/protobuf/util/time_util.h"
#include "tests/coordinator/lifecycle_fixture.h"

namespace mimo::coordinator::testing {
namespace {

using google::protobuf::util::TimeUtil;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST_F(LifecycleTest, RestartKeepsJobsAndReattachesRunningWorkers) {
  const v1::Job done = Submit(SmallSpec("done"));
  v1::CancelJobRequest cancel;
  cancel.set_job_id(done.id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &cancelled).ok());
  const v1::Job job = Submit(SmallSpec("running"));
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  const v1::Job before = AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  const v1::Job done_before = Get(done.id());

  beats.Clear();  // None beats while the server is down.
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
    beats.Add(again.back().get());
  }
  // At least past the reattach grace (longer only means more ticks past it).
  absl::SleepFor(options_.manager.reattach_grace + absl::Milliseconds(200));
  for (auto& w : again) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(again[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(LifecycleTest, RestartDoesNotWaitForRanksThatHadSucceeded) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  // Ranks 2 and 0 finish first: their workers are free again and do not come back.
  for (int r : {2, 0}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  EXPECT_THAT(Get(job.id()).succeeded_ranks(), ElementsAre(2, 0));
  beats.Clear();  // None beats while the server is down.
  StopServer();
  StartServer(options_);
  std::vector<std::unique_ptr<FakeWorker>> again;
  for (int r : {1, 3}) {
    v1::RunningAssignment resume;
    resume.set_job_id(job.id());
    resume.set_attempt(1);
    resume.set_rank(r);
    again.push_back(std::make_unique<FakeWorker>(Channel(), "h", r, v1::DEVICE_KIND_CPU, resume));
    beats.Add(again.back().get());
  }
  // At least past the reattach grace (longer only means more ticks past it).
  absl::SleepFor(options_.manager.reattach_grace + absl::Milliseconds(200));
  for (auto& w : again) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
  ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(again[0]->Report(as[1], v1::WORKER_STATE_SUCCEEDED).ok());
  ASSERT_TRUE(again[1]->Report(as[3], v1::WORKER_STATE_SUCCEEDED).ok());
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_THAT(done.succeeded_ranks(), ElementsAre(2, 0, 1, 3));
  EXPECT_EQ(done.progress().percent(), 100);
}

TEST_F(LifecycleTest, AJobWhoseRanksAllSucceededBeforeARestartSucceedsAfterIt) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  for (int r = 0; r < 3; ++r)
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  beats.Clear();  // None beats while the server is down.
  StopServer();
  {
    // As if the coordinator had stopped between storing the last rank's success and the job's.
    auto store = JobStore::Open({.path = db_path_});
    ASSERT_TRUE(store.ok()) << store.status();
    absl::StatusOr<v1::Job> stored = (*store)->GetJob(job.id());
    ASSERT_TRUE(stored.ok());
    ASSERT_EQ(stored->state(), v1::JOB_STATE_RUNNING);
    stored->add_succeeded_ranks(3);
    ASSERT_TRUE((*store)->SaveJob(*stored).ok());
  }
  StartServer(options_);
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.state_reason(), "all 4 ranks succeeded");
}

// Runs `fn` while another connection holds the database's write lock: the coordinator's writes
// meanwhile fail after the store's busy timeout.
void WhileAnotherProcessLocksTheDatabase(const std::string& db_path,
                                         const std::function<void()>& fn) {
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  fn();
  EXPECT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
}

// The store's writes fail only after its busy timeout, which the manager's lock waits out,
// heartbeats included; here that stall (1.5 s) is longer than the heartbeat timeout (400 ms).
// Live workers beat from a thread throughout (every 100 ms, so the ticks, every 20 ms, see each
// round's stamps) and must not be dropped for it: a beat that waited for the lock counts from its
// answer (stamped on arrival, the waiting beats were 1.5 s old when answered, and the next tick
// dropped every worker).
ServerOptions StallingLongerThanTheHeartbeatTimeout(const std::string& db_path) {
  ServerOptions options = FastOptions(db_path);
  options.db_busy_timeout = absl::Milliseconds(1500);
  return options;
}
constexpr absl::Duration kBeatPeriodThroughStalls = absl::Milliseconds(100);

// A worker that registers while the manager's lock waits out a store stall (a submit here) is
// stamped when it is answered, not when it asked: stamped before the wait, it looked silent for
// the stall once answered and the next tick dropped it (COMMAND_REGISTER).
TEST_F(LifecycleTest, ARegistrationThatWaitedOutAStallIsNotDropped) {
  StopServer();
  StartServer(StallingLongerThanTheHeartbeatTimeout(db_path_));
  BackgroundHeartbeats beats({}, kBeatPeriodThroughStalls);
  std::unique_ptr<FakeWorker> worker;
  WhileAnotherProcessLocksTheDatabase(db_path_, [&] {
    std::thread submit([&] {
      v1::SubmitJobRequest request;
      *request.mutable_spec() = SmallSpec();
      v1::SubmitJobResponse response;
      EXPECT_FALSE(jobs_->SubmitJob(Context("", absl::Seconds(10)).get(), request, &response).ok());
    });
    // At least this long: the submit holds the lock by then (if not, the registration is answered
    // at once and the test checks less, never wrongly).
    absl::SleepFor(absl::Milliseconds(200));
    worker = std::make_unique<FakeWorker>(Channel(), "h", 0);
    beats.Add(worker.get());
    submit.join();
  });
  // Not dropped by the ticks after the stall (at least this long of them).
  absl::SleepFor(StallingLongerThanTheHeartbeatTimeout(db_path_).manager.heartbeat_timeout);
  beats.Clear();
  EXPECT_EQ(worker->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
}

TEST_F(LifecycleTest, ASuccessTheStoreCouldNotTakeIsStoredAtALaterTick) {
  StopServer();
  StartServer(StallingLongerThanTheHeartbeatTimeout(db_path_));
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats({}, kBeatPeriodThroughStalls);
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  for (int r = 0; r < 3; ++r)
    ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  // The last rank's report cannot be stored.
  WhileAnotherProcessLocksTheDatabase(
      db_path_, [&] { EXPECT_FALSE(workers[3]->Report(as[3], v1::WORKER_STATE_SUCCEEDED).ok()); });
  // Every rank succeeded in memory: a tick stores the job's success once the store takes writes.
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.state_reason(), "all 4 ranks succeeded");
  // None is dropped for the stall, by the ticks after it (at least this long of them).
  absl::SleepFor(StallingLongerThanTheHeartbeatTimeout(db_path_).manager.heartbeat_timeout);
  for (auto& w : workers) EXPECT_EQ(w->Heartbeat(), v1::HeartbeatResponse::COMMAND_CONTINUE);
}

TEST_F(LifecycleTest, AFailureTheStoreCouldNotTakeIsStoredAtALaterTick) {
  StopServer();
  StartServer(StallingLongerThanTheHeartbeatTimeout(db_path_));
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats({}, kBeatPeriodThroughStalls);
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  WhileAnotherProcessLocksTheDatabase(
      db_path_, [&] { EXPECT_FALSE(workers[1]->Report(as[1], v1::WORKER_STATE_FAILED, 3).ok()); });
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.failure().reason(), "WORKER_FAILED");
  EXPECT_THAT(failed.failure().message(), HasSubstr("rank 1 failed (exit code 3)"));
  // The attempt's other workers are told to stop, and none is dropped for the stall by the ticks
  // after it (at least this long of them).
  absl::SleepFor(StallingLongerThanTheHeartbeatTimeout(db_path_).manager.heartbeat_timeout);
  for (int r : {0, 2, 3}) EXPECT_EQ(workers[r]->Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, RestartFailsRunningJobsWhoseWorkersDoNotComeBack) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  beats.Clear();  // None beats while the server is down.
  StopServer();
  StartServer(options_);
  v1::RunningAssignment resume;
  resume.set_job_id(job.id());
  resume.set_attempt(1);
  resume.set_rank(0);
  FakeWorker back(Channel(), "h", 0, v1::DEVICE_KIND_CPU, resume);
  beats.Add(&back);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.failure().reason(), "COORDINATOR_RESTARTED");
  EXPECT_THAT(failed.failure().message(), HasSubstr("ranks 1, 2, 3 did not re-register"));
  EXPECT_EQ(back.Heartbeat(), v1::HeartbeatResponse::COMMAND_STOP);
}

TEST_F(LifecycleTest, RestartReschedulesAScheduledJobWhoseWorkersNeverStartedIt) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  AwaitState(job.id(), v1::JOB_STATE_SCHEDULED);  // No worker asks for its rank.
  beats.Clear();                                  // None beats while the server is down.
  StopServer();
  StartServer(options_);
  // The same workers register again, with nothing to resume. Once the reattach grace has passed
  // the job goes back to PENDING and is scheduled again on them.
  auto again = Workers(4, beats);
  // Its state is SCHEDULED before and after: polled until its events show that (or 10 s pass).
  std::vector<std::string> events;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(10);
       events.size() < 4 && absl::Now() < deadline; absl::SleepFor(absl::Milliseconds(10))) {
    events = StateEvents(job.id());
  }
  EXPECT_THAT(events, ElementsAre("PENDING: submitted", "SCHEDULED: attempt 1: 4 ranks assigned",
                                  AllOf(StartsWith("PENDING: "), HasSubstr("coordinator restarted"),
                                        HasSubstr("attempt 1")),
                                  "SCHEDULED: attempt 1: 4 ranks assigned"));
  const v1::Job rescheduled = Get(job.id());
  EXPECT_EQ(rescheduled.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(rescheduled.attempt(), 1);
  EXPECT_FALSE(rescheduled.has_failure());
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
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
  std::vector<v1::Assignment> as = Assignments(workers);
  // Ranks 0 and 1 report running; the coordinator restarts before ranks 2 and 3 do.
  for (int r : {0, 1}) ASSERT_TRUE(workers[r]->Report(as[r], v1::WORKER_STATE_RUNNING).ok());
  ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_SCHEDULED);
  beats.Clear();  // None beats while the server is down.
  StopServer();
  StartServer(options_);
  std::vector<std::unique_ptr<FakeWorker>> again;
  for (int r = 0; r < 4; ++r) {
    v1::RunningAssignment resume;
    resume.set_job_id(job.id());
    resume.set_attempt(1);
    resume.set_rank(r);
    again.push_back(std::make_unique<FakeWorker>(Channel(), "h", r, v1::DEVICE_KIND_CPU, resume));
    beats.Add(again.back().get());
  }
  // Every rank is back and running: no further report is needed to say so.
  const v1::Job running = AwaitState(job.id(), v1::JOB_STATE_RUNNING);
  EXPECT_THAT(running.state_reason(), HasSubstr("re-attached"));
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(again[r]->Report(as[r], v1::WORKER_STATE_SUCCEEDED).ok());
  AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(LifecycleTest, WaitKeysAnswersUnavailableWhenTheCoordinatorStops) {
  const v1::Job job = Submit(SmallSpec());
  BackgroundHeartbeats beats;
  auto workers = Workers(4, beats);
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

}  // namespace
}  // namespace mimo::coordinator::testing
