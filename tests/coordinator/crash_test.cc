// mimo-coordinator killed with SIGKILL mid-flight and restarted loses no job or event; SIGTERM
// shuts it down gracefully.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "tests/common/test_binaries.h"
#include "tests/coordinator/test_server.h"

namespace mimo::coordinator::testing {
namespace {

// The coordinator binary, built next to this test.
std::string CoordinatorBinary() { return test_binaries::BinaryBesideUs("mimo-coordinator"); }

// A free loopback port (bound and released; the coordinator binds it right after).
int FreePort() {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.db_path = ":memory:";
  o.metrics_listen = "";
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> s = CoordinatorServer::Start(o);
  EXPECT_TRUE(s.ok());
  return (*s)->port();
}

class CoordinatorProcess {
 public:
  // `flags`: further mimo-coordinator flags.
  CoordinatorProcess(const std::string& db, int port, std::vector<std::string> flags = {})
      : port_(port) {
    const std::string log = absl::StrCat(::testing::TempDir(), "/coordinator-", port, ".log");
    std::vector<std::string> argv_text = {
        "mimo-coordinator", "--listen", absl::StrCat("127.0.0.1:", port), "--db", db,
        "--metrics-listen", ""};
    argv_text.insert(argv_text.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& arg : argv_text) argv.push_back(arg.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      freopen(log.c_str(), "a", stderr);
      execv(CoordinatorBinary().c_str(), argv.data());
      _exit(127);
    }
    // Retry the connection quickly while the child starts.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
    channel_ = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                         grpc::InsecureChannelCredentials(), args);
    EXPECT_TRUE(channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Seconds(10))))
        << "mimo-coordinator did not start; see " << log;
  }
  ~CoordinatorProcess() {
    if (pid_ > 0) Signal(SIGKILL);
  }
  // Sends `sig` and reaps the process; returns its wait status.
  int Signal(int sig) {
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  // gRPC 1.51 clients poll an idle channel only while making calls, so a test blocked in
  // waitpid would leave the server's shutdown GOAWAY unanswered for seconds: drop the channel.
  void Disconnect() { channel_.reset(); }

 private:
  int port_;
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
};

// Everything a client can read about a job, serialized: the job, its events, its logs.
struct JobRecord {
  v1::Job job;
  std::vector<std::string> events;
  std::vector<std::string> logs;
};

JobRecord ReadRecord(v1::JobService::Stub& jobs, const std::string& id) {
  JobRecord record;
  v1::GetJobRequest get;
  get.set_job_id(id);
  v1::GetJobResponse got;
  const grpc::Status status = jobs.GetJob(Context().get(), get, &got);
  EXPECT_TRUE(status.ok()) << id << ": " << status.error_message();
  record.job = got.job();
  v1::ListJobEventsRequest list;
  list.set_job_id(id);
  list.set_page_size(3);  // Several pages.
  do {
    v1::ListJobEventsResponse page;
    const grpc::Status listed = jobs.ListJobEvents(Context().get(), list, &page);
    EXPECT_TRUE(listed.ok()) << id << ": " << listed.error_message();
    for (const v1::JobEvent& e : page.events()) record.events.push_back(e.SerializeAsString());
    list.set_page_token(page.next_page_token());
  } while (!list.page_token().empty());
  v1::StreamLogsRequest logs;
  logs.set_job_id(id);
  auto context = Context();
  auto reader = jobs.StreamLogs(context.get(), logs);
  v1::StreamLogsResponse response;
  while (reader->Read(&response)) {
    for (const v1::LogLine& line : response.lines())
      record.logs.push_back(line.SerializeAsString());
  }
  EXPECT_TRUE(reader->Finish().ok()) << id;
  return record;
}

// `n` workers on `host` registered with `channel`, each resuming rank r of `job_id` attempt 1
// when `job_id` is set.
std::vector<std::unique_ptr<FakeWorker>> RegisterWorkers(std::shared_ptr<grpc::Channel> channel,
                                                         const std::string& host, int n,
                                                         const std::string& job_id = "") {
  std::vector<std::unique_ptr<FakeWorker>> workers;
  for (int r = 0; r < n; ++r) {
    v1::RunningAssignment resume;
    if (!job_id.empty()) {
      resume.set_job_id(job_id);
      resume.set_attempt(1);
      resume.set_rank(r);
    }
    workers.push_back(std::make_unique<FakeWorker>(channel, host, r, v1::DEVICE_KIND_CPU, resume));
  }
  return workers;
}

// Fetches every worker's assignment and reports it RUNNING; sorts `workers` by rank and returns
// the assignments in the same order.
std::vector<v1::Assignment> StartRunning(std::vector<std::unique_ptr<FakeWorker>>& workers) {
  std::vector<v1::Assignment> assignments(workers.size());
  std::vector<std::unique_ptr<FakeWorker>> by_rank(workers.size());
  for (auto& w : workers) {
    std::optional<v1::Assignment> a = w->Assignment(absl::Seconds(5));
    EXPECT_TRUE(a.has_value());
    if (!a) return {};
    const int rank = a->rank().rank();
    assignments[rank] = *a;
    by_rank[rank] = std::move(w);
  }
  workers = std::move(by_rank);
  for (size_t r = 0; r < workers.size(); ++r) {
    EXPECT_TRUE(workers[r]->Report(assignments[r], v1::WORKER_STATE_RUNNING).ok());
  }
  return assignments;
}

TEST(CrashTest, SigkillLosesNoJobOrEvent) {
  const std::string db = TempDbPath("crash");
  const absl::Cleanup remove_db = [&] { RemoveDb(db); };
  const int port = FreePort();
  const std::vector<std::string> flags = {"--reattach-grace", "1s"};
  std::vector<std::string> ids;
  std::string resumed_id, orphaned_id;
  std::map<std::string, JobRecord> before;
  std::vector<v1::Assignment> resumed_assignments;
  {
    CoordinatorProcess coordinator(db, port, flags);
    auto jobs = v1::JobService::NewStub(coordinator.channel());
    // Two RUNNING jobs with metrics and logs: one whose workers come back after the crash, one
    // whose workers do not.
    for (const std::string host : {"a", "b"}) {
      v1::SubmitJobRequest request;
      *request.mutable_spec() = SmallSpec(absl::StrCat("running-", host));
      v1::SubmitJobResponse response;
      ASSERT_TRUE(jobs->SubmitJob(Context().get(), request, &response).ok());
      auto workers = RegisterWorkers(coordinator.channel(), host, 4);
      std::vector<v1::Assignment> as = StartRunning(workers);
      ASSERT_EQ(as.size(), 4u);
      for (int step = 1; step <= 3; ++step) {
        ASSERT_TRUE(workers[3]->Metrics(as[3], step, 5.0 - step).ok());
      }
      ASSERT_TRUE(workers[0]->Logs(as[0], {"step 1", "step 2"}).ok());
      ASSERT_TRUE(workers[1]->Logs(as[1], {"rank 1 here"}).ok());
      (host == std::string("a") ? resumed_id : orphaned_id) = response.job().id();
      if (host == std::string("a")) resumed_assignments = as;
    }
    // Twenty more, PENDING for want of workers; every third cancelled.
    for (int i = 0; i < 20; ++i) {
      v1::SubmitJobRequest request;
      *request.mutable_spec() = SmallSpec(absl::StrCat("job-", i));
      request.set_request_id(absl::StrCat("r", i));
      v1::SubmitJobResponse response;
      ASSERT_TRUE(jobs->SubmitJob(Context().get(), request, &response).ok());
      ids.push_back(response.job().id());
      if (i % 3 == 0) {
        v1::CancelJobRequest cancel;
        cancel.set_job_id(response.job().id());
        v1::CancelJobResponse cancelled;
        ASSERT_TRUE(jobs->CancelJob(Context().get(), cancel, &cancelled).ok());
      }
    }
    for (const std::string& id : ids) before[id] = ReadRecord(*jobs, id);
    before[resumed_id] = ReadRecord(*jobs, resumed_id);
    before[orphaned_id] = ReadRecord(*jobs, orphaned_id);
    ASSERT_EQ(before[resumed_id].job.state(), v1::JOB_STATE_RUNNING);
    ASSERT_EQ(before[resumed_id].events.size(), 6u);  // PENDING SCHEDULED RUNNING, 3 metrics.
    ASSERT_EQ(before[resumed_id].logs.size(), 3u);
    const int status = coordinator.Signal(SIGKILL);
    EXPECT_TRUE(WIFSIGNALED(status));
  }

  CoordinatorProcess restarted(db, port, flags);
  auto jobs = v1::JobService::NewStub(restarted.channel());
  // The waiting and finished jobs are exactly as they were.
  for (const std::string& id : ids) {
    const JobRecord after = ReadRecord(*jobs, id);
    EXPECT_EQ(after.job.SerializeAsString(), before[id].job.SerializeAsString()) << id;
    EXPECT_EQ(after.events, before[id].events) << id;
    EXPECT_EQ(after.logs, before[id].logs) << id;
  }
  // The workers of one running job re-register, and it carries on; the other fails, saying why.
  auto back = RegisterWorkers(restarted.channel(), "a", 4, resumed_id);
  const absl::Time until = absl::Now() + absl::Seconds(10);
  v1::Job orphaned;
  while (absl::Now() < until) {
    for (auto& w : back) w->Heartbeat();
    orphaned = ReadRecord(*jobs, orphaned_id).job;
    if (orphaned.state() == v1::JOB_STATE_FAILED) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(orphaned.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(orphaned.failure().reason(), "COORDINATOR_RESTARTED");
  for (const auto& [id, expected_state] : {std::pair{resumed_id, v1::JOB_STATE_RUNNING},
                                           std::pair{orphaned_id, v1::JOB_STATE_FAILED}}) {
    const JobRecord after = ReadRecord(*jobs, id);
    EXPECT_EQ(after.job.state(), expected_state) << id;
    EXPECT_EQ(after.job.create_time().SerializeAsString(),
              before[id].job.create_time().SerializeAsString());
    EXPECT_EQ(after.job.last_metrics().SerializeAsString(),
              before[id].job.last_metrics().SerializeAsString());
    // The history before the crash is intact; reconciliation only appends to it.
    ASSERT_GE(after.events.size(), before[id].events.size()) << id;
    EXPECT_TRUE(
        std::equal(before[id].events.begin(), before[id].events.end(), after.events.begin()))
        << id;
    EXPECT_EQ(after.logs, before[id].logs) << id;
  }
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(back[r]->Report(resumed_assignments[r], v1::WORKER_STATE_SUCCEEDED).ok());
  }
  EXPECT_EQ(ReadRecord(*jobs, resumed_id).job.state(), v1::JOB_STATE_SUCCEEDED);
  // A request id from before the crash still deduplicates.
  v1::SubmitJobRequest again;
  *again.mutable_spec() = SmallSpec("job-0");
  again.set_request_id("r0");
  v1::SubmitJobResponse response;
  ASSERT_TRUE(jobs->SubmitJob(Context().get(), again, &response).ok());
  EXPECT_EQ(response.job().id(), ids[0]);
}

TEST(CrashTest, SigtermShutsDownGracefully) {
  const std::string db = TempDbPath("sigterm");
  const absl::Cleanup remove_db = [&] { RemoveDb(db); };
  const int port = FreePort();
  CoordinatorProcess coordinator(db, port);
  coordinator.Disconnect();
  const absl::Time start = absl::Now();
  const int status = coordinator.Signal(SIGTERM);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << absl::Now() - start;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace mimo::coordinator::testing
