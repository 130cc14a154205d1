// Embedded mode end to end: a coordinator that starts real mimo-worker processes runs the
// communication self-test; a worker killed with SIGKILL fails its job at once and is replaced;
// a cancel stops every worker within seconds; stopping the coordinator blames no worker; no worker
// but its own may register (its slots, and the very processes it started for them).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "tests/common/test_binaries.h"
#include "tests/coordinator/test_server.h"
#include "tools/mimoctl/spec_file.h"

namespace mimo::coordinator::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

// mimo-worker is built into the same folder as this test.
std::string WorkerBinary() { return test_binaries::BinaryBesideUs("mimo-worker"); }

// A self-test of the 4-rank layout of SmallSpec, running `iterations` rounds.
v1::JobSpec Selftest(int iterations, const std::string& name = "selftest") {
  v1::JobSpec spec = SmallSpec(name);
  spec.set_kind(v1::JobSpec::KIND_SELFTEST);
  spec.mutable_selftest()->set_iterations(iterations);
  return spec;
}

class EmbeddedTest : public CoordinatorFixture {
 protected:
  void StartWithWorkers(int count) {
    ServerOptions options = FastOptions(db_path_);
    // Real workers heartbeat on their own schedule; leave them the production margin.
    options.manager.heartbeat_interval = absl::Milliseconds(200);
    options.manager.heartbeat_timeout = absl::Seconds(5);
    options.local_workers.count = count;
    options.local_workers.worker_binary = WorkerBinary();
    options.local_workers.restart_delay = absl::Milliseconds(100);
    StartServer(options);
  }

  // A stand-in worker binary for the slots that never registers (the test registers for them, or
  // needs no worker at all); the test removes it.
  static std::string IdleWorkerScript() {
    const std::string path = absl::StrCat(::testing::TempDir(), "/idle-worker-", getpid(), ".sh");
    std::ofstream(path) << "#!/bin/sh\nexec sleep 600\n";
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    return path;
  }

  // All log text of a job.
  std::string Logs(const std::string& job_id) {
    v1::StreamLogsRequest request;
    request.set_job_id(job_id);
    auto context = Context();
    auto reader = jobs_->StreamLogs(context.get(), request);
    std::string text;
    v1::StreamLogsResponse response;
    while (reader->Read(&response)) {
      for (const v1::LogLine& line : response.lines()) {
        absl::StrAppend(&text, "[rank ", line.rank(), "] ", line.text(), "\n");
      }
    }
    EXPECT_TRUE(reader->Finish().ok());
    return text;
  }
};

TEST_F(EmbeddedTest, ExampleSelftestSucceedsOnEightLocalWorkers) {
  StartWithWorkers(8);
  std::string example = "examples/selftest-cpu.yaml";
  if (!std::filesystem::exists(example)) {
    example = (std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() /
               "examples/selftest-cpu.yaml")
                  .string();
  }
  absl::StatusOr<v1::JobSpec> spec = tools::ReadJobSpecFile(example);
  ASSERT_TRUE(spec.ok()) << spec.status();
  const v1::Job job = Submit(*spec);
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(60));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.DebugString() << Logs(job.id());
  const std::string logs = Logs(job.id());
  for (int r = 0; r < 8; ++r) {
    EXPECT_THAT(logs, HasSubstr(absl::StrCat("[rank ", r, "] selftest: passed"))) << logs;
  }
}

TEST_F(EmbeddedTest, KilledWorkerFailsItsJobAtOnceAndIsReplaced) {
  StartWithWorkers(4);
  const v1::Job job = Submit(Selftest(1000000, "soak"));
  ASSERT_EQ(AwaitState(job.id(), v1::JOB_STATE_RUNNING, absl::Seconds(30)).state(),
            v1::JOB_STATE_RUNNING);
  const pid_t victim = server_->local_workers()->pids()[2];
  ASSERT_GT(victim, 0);
  const absl::Time killed = absl::Now();
  kill(victim, SIGKILL);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(10));
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED) << failed.DebugString();
  // Found at once (by the supervisor, or by a peer whose connection broke), not by the
  // heartbeat timeout.
  EXPECT_LT(absl::Now() - killed, absl::Seconds(4));
  if (failed.failure().reason() == "WORKER_EXITED") {
    EXPECT_EQ(failed.failure().rank(), 2);
    EXPECT_EQ(failed.failure().exit_code(), 128 + SIGKILL);
    EXPECT_THAT(failed.failure().message(), HasSubstr("was killed by signal 9"));
  } else {
    EXPECT_EQ(failed.failure().reason(), "WORKER_FAILED") << failed.DebugString();
  }
  // Either way the killed rank's logs say what happened to its process.
  absl::Time until = absl::Now() + absl::Seconds(5);
  std::string logs;
  while (absl::Now() < until) {
    logs = Logs(job.id());
    if (logs.find("was killed by signal 9") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_THAT(logs, HasSubstr(absl::StrCat("[rank 2] [mimo-coordinator] the worker process (pid ",
                                           victim, ") was killed by signal 9")));
  // The other workers stopped and the pool replaced the dead one: the next job runs.
  const v1::Job next = Submit(Selftest(1, "after-kill"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(30)).state(),
            v1::JOB_STATE_SUCCEEDED)
      << Logs(next.id());
}

TEST_F(EmbeddedTest, CancelStopsEveryWorkerWithinSeconds) {
  StartWithWorkers(4);
  const v1::Job job = Submit(Selftest(1000000, "cancelled"));
  ASSERT_EQ(AwaitState(job.id(), v1::JOB_STATE_RUNNING, absl::Seconds(30)).state(),
            v1::JOB_STATE_RUNNING);
  v1::CancelJobRequest cancel;
  cancel.set_job_id(job.id());
  v1::CancelJobResponse response;
  const absl::Time start = absl::Now();
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &response).ok());
  const v1::Job cancelled = AwaitState(job.id(), v1::JOB_STATE_CANCELLED, absl::Seconds(10));
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED) << cancelled.DebugString();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  const v1::Job next = Submit(Selftest(1, "after-cancel"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(30)).state(),
            v1::JOB_STATE_SUCCEEDED)
      << Logs(next.id());
}

// The running processes of an embedded coordinator's `count` slots, once each has one (an empty
// vector if they do not within 30 s).
std::vector<pid_t> AwaitSlotPids(CoordinatorServer& server, int count) {
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30); absl::Now() < deadline;
       absl::SleepFor(absl::Milliseconds(10))) {
    const std::vector<pid_t> pids = server.local_workers()->pids();
    if (static_cast<int>(pids.size()) == count &&
        std::all_of(pids.begin(), pids.end(), [](pid_t pid) { return pid > 0; })) {
      return pids;
    }
  }
  return {};
}

// An embedded coordinator takes only its own workers: one from elsewhere would outlive its
// restart (which fails its job at once) and never be drained. The slots run a stand-in that never
// registers, so that the test registers for them.
TEST_F(EmbeddedTest, OnlyItsOwnWorkersMayRegister) {
  const std::string idle = IdleWorkerScript();
  ServerOptions options = FastOptions(db_path_);
  options.local_workers.count = 2;
  options.local_workers.worker_binary = idle;
  options.local_workers.host = "own-host";
  StartServer(options);
  const std::vector<pid_t> slot_pids = AwaitSlotPids(*server_, 2);
  ASSERT_EQ(slot_pids.size(), 2u);
  auto stub = v1::WorkerService::NewStub(Channel());
  auto register_as = [&](const std::string& host, int index, v1::DeviceKind device, pid_t pid) {
    v1::RegisterWorkerRequest request;
    request.mutable_worker()->set_host(host);
    request.mutable_worker()->set_local_index(index);
    request.mutable_worker()->set_device(device);
    request.mutable_worker()->set_pid(pid);
    v1::RegisterWorkerResponse response;
    return stub->RegisterWorker(Context().get(), request, &response);
  };
  for (const auto& [host, index, device] :
       std::vector<std::tuple<std::string, int, v1::DeviceKind>>{
           {"other-host", 0, v1::DEVICE_KIND_CPU},
           {"own-host", 2, v1::DEVICE_KIND_CPU},
           {"own-host", 1, v1::DEVICE_KIND_CUDA}}) {
    const grpc::Status refused = register_as(host, index, device, slot_pids[0]);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << host << " " << index;
    EXPECT_THAT(refused.error_message(),
                HasSubstr("this coordinator runs its own 2 CPU workers on own-host "
                          "(--cpu-workers/--gpu-workers) and takes no other worker"));
    EXPECT_THAT(refused.error_message(),
                HasSubstr("start one without them to take workers from other hosts"));
  }
  // Slot 1 with another process's pid (this test's, or slot 0's): refused naming both pids.
  for (const pid_t pid : {getpid(), slot_pids[0]}) {
    const grpc::Status refused = register_as("own-host", 1, v1::DEVICE_KIND_CPU, pid);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << pid;
    EXPECT_THAT(refused.error_message(),
                HasSubstr(absl::StrCat("slot 1 (CPU device 1 of own-host) belongs to the worker "
                                       "process this coordinator started for it, pid ",
                                       slot_pids[1], ", and this worker is pid ", pid)));
  }
  EXPECT_TRUE(register_as("own-host", 1, v1::DEVICE_KIND_CPU, slot_pids[1]).ok());
  StopServer();
  std::remove(idle.c_str());
}

// A job that needs more workers than the coordinator runs, or another device kind, could never
// start (no other worker may register): refused at submit and validate, naming the field, where it
// waited out the join timeout (10 minutes) in PENDING.
TEST_F(EmbeddedTest, AJobItsWorkersCanNeverRunIsRefused) {
  const std::string idle = IdleWorkerScript();
  ServerOptions options = FastOptions(db_path_);
  options.local_workers.count = 2;
  options.local_workers.worker_binary = idle;
  StartServer(options);
  v1::JobSpec cuda = SmallSpec();
  cuda.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  for (const auto& [spec, field, what] :
       std::vector<std::tuple<v1::JobSpec, std::string, std::string>>{
           {SmallSpec(), "resources.workers", "a job of 4 workers could never start: "},
           {cuda, "resources.device", "a job for CUDA workers could never start: "}}) {
    SCOPED_TRACE(field);
    const std::string why =
        what +
        "this coordinator runs its own 2 CPU workers (--cpu-workers/--gpu-workers) and "
        "takes no other worker";
    v1::SubmitJobRequest submit;
    *submit.mutable_spec() = spec;
    v1::SubmitJobResponse submitted;
    const grpc::Status refused = jobs_->SubmitJob(Context().get(), submit, &submitted);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(FieldViolations(refused), ElementsAre(Pair(field, why)));
    v1::ValidateJobRequest validate;
    *validate.mutable_spec() = spec;
    v1::ValidateJobResponse validated;
    const grpc::Status invalid = jobs_->ValidateJob(Context().get(), validate, &validated);
    EXPECT_EQ(invalid.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(FieldViolations(invalid), ElementsAre(Pair(field, why)));
  }
  v1::ListJobsResponse listed;
  ASSERT_TRUE(jobs_->ListJobs(Context().get(), v1::ListJobsRequest(), &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 0);  // None was stored.
  StopServer();
  std::remove(idle.c_str());
}

// A real mimo-worker started by hand for a free slot of an embedded coordinator, on its host, is
// refused (it exits with code 1 saying why) rather than taking the slot.
TEST_F(EmbeddedTest, AWorkerStartedByHandIsRefused) {
  const std::string idle = IdleWorkerScript();
  ServerOptions options = FastOptions(db_path_);
  options.local_workers.count = 2;
  options.local_workers.worker_binary = idle;
  options.local_workers.host = "own-host";
  StartServer(options);
  const std::vector<pid_t> slot_pids = AwaitSlotPids(*server_, 2);
  ASSERT_EQ(slot_pids.size(), 2u);
  // Before the check the worker registered and waited for jobs: `timeout` ends it then (124).
  const std::string command =
      absl::StrCat("timeout 60 ", WorkerBinary(), " --coordinator 127.0.0.1:", server_->port(),
                   " --host own-host --local-index 1 --device cpu 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buffer[4096];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_EQ(WEXITSTATUS(status), 1) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("slot 1 (CPU device 1 of own-host) belongs to the "
                                          "worker process this coordinator started for it, pid ",
                                          slot_pids[1], ", and this worker is pid ")));
  EXPECT_THAT(out, HasSubstr("takes no worker started by hand"));
  StopServer();
  std::remove(idle.c_str());
}

// Stopping the coordinator (SIGTERM's path) stops its workers too: their reports of being stopped
// must not fail the running job. It is left to the next start, which knows that no worker of it
// can come back (none outlives an embedded coordinator) and ends it as COORDINATOR_RESTARTED at
// once instead of after the reattach grace.
TEST_F(EmbeddedTest, StoppingTheCoordinatorDoesNotBlameItsWorkers) {
  StartWithWorkers(4);
  const v1::Job job = Submit(Selftest(1000000, "interrupted"));
  ASSERT_EQ(AwaitState(job.id(), v1::JOB_STATE_RUNNING, absl::Seconds(30)).state(),
            v1::JOB_STATE_RUNNING);
  StopServer();
  ServerOptions options = FastOptions(db_path_);
  options.manager.reattach_grace = absl::Seconds(60);
  options.local_workers.count = 4;
  options.local_workers.worker_binary = WorkerBinary();
  StartServer(options);
  const v1::Job ended = Get(job.id());
  ASSERT_EQ(ended.state(), v1::JOB_STATE_FAILED) << ended.DebugString();
  EXPECT_EQ(ended.failure().reason(), "COORDINATOR_RESTARTED");
  EXPECT_THAT(ended.failure().message(),
              HasSubstr("stopped with the previous coordinator (embedded workers)"));
}

// A training job that saves checkpoints is drained when the coordinator stops, as a preemption:
// it saves, its attempt ends without using a restart, and the next start resumes it from there.
TEST_F(EmbeddedTest, StoppingTheCoordinatorDrainsATrainingJobToACheckpoint) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/drain-ckpt-", getpid());
  std::filesystem::remove_all(dir);
  StartWithWorkers(4);
  v1::JobSpec spec = SmallSpec("drained");
  spec.mutable_training()->set_steps(1000000);
  spec.mutable_checkpointing()->set_dir(dir);
  const v1::Job job = Submit(spec);
  ASSERT_EQ(AwaitState(job.id(), v1::JOB_STATE_RUNNING, absl::Seconds(60)).state(),
            v1::JOB_STATE_RUNNING)
      << Logs(job.id());
  absl::SleepFor(absl::Seconds(1));  // Some steps.
  StopServer();
  ServerOptions options = FastOptions(db_path_);
  options.local_workers.count = 4;
  options.local_workers.worker_binary = WorkerBinary();
  options.manager.heartbeat_interval = absl::Milliseconds(200);
  options.manager.heartbeat_timeout = absl::Seconds(5);
  StartServer(options);
  const v1::Job drained = Get(job.id());
  EXPECT_EQ(drained.attempt(), 2) << drained.DebugString();
  EXPECT_EQ(drained.preemptions(), 1);
  EXPECT_FALSE(drained.has_failure());
  EXPECT_TRUE(std::filesystem::exists(dir + "/latest_checkpointed_iteration.txt"));
  const v1::Job resumed = AwaitState(job.id(), v1::JOB_STATE_RUNNING, absl::Seconds(60));
  EXPECT_EQ(resumed.attempt(), 2);
  // Rank 0's line: another rank's may come first.
  const std::string rank0_resumed = absl::StrCat("[rank 0] resumed from ", dir, "/iter_");
  std::string logs;
  for (absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;
       absl::SleepFor(absl::Milliseconds(100))) {
    logs = Logs(job.id());
    if (logs.find(rank0_resumed) != std::string::npos) break;
  }
  EXPECT_THAT(logs, HasSubstr(rank0_resumed));
  v1::CancelJobRequest cancel;
  cancel.set_job_id(job.id());
  v1::CancelJobResponse response;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &response).ok());
  AwaitState(job.id(), v1::JOB_STATE_CANCELLED, absl::Seconds(10));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mimo::coordinator::testing
