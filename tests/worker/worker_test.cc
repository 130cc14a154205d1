// Worker objects on threads against an in-process coordinator: selftest jobs succeed with their
// logs stored, workers persist across jobs, unsupported jobs fail with a clear message, a
// cancelled job stops every worker (in rendezvous or mid-run), and a restarted coordinator
// re-attaches the running job.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tests/worker/worker_test_util.h"
#include "worker/device_info.h"

namespace mimo::worker::testing {
namespace {

using coordinator::ServerOptions;
using coordinator::testing::CoordinatorFixture;
using coordinator::testing::FastOptions;
using ::testing::HasSubstr;
using ::testing::Not;

class WorkerTest : public CoordinatorFixture {
 protected:
  void SetUp() override { StartServer(Options()); }

  // Heartbeats every 100 ms with a 2 s timeout: several Gloo ranks on two cores must not miss
  // one by accident. A cancelled job waits 30 s for its workers, so that reaching CANCELLED in
  // a few seconds shows that every worker confirmed its stop.
  ServerOptions Options() {
    ServerOptions o = FastOptions(db_path_);
    o.manager.heartbeat_interval = absl::Milliseconds(100);
    o.manager.heartbeat_timeout = absl::Seconds(2);
    o.manager.cancel_grace = absl::Seconds(30);
    o.manager.reattach_grace = absl::Seconds(3);
    return o;
  }

  // `n` registered workers on slots first..first+n-1 of host "h".
  std::vector<std::unique_ptr<WorkerThread>> StartWorkers(
      int n, int first = 0, v1::DeviceKind device = v1::DEVICE_KIND_CPU) {
    std::vector<std::unique_ptr<WorkerThread>> workers;
    for (int i = first; i < first + n; ++i) {
      WorkerOptions o = TestWorkerOptions(server_->port(), i);
      o.device = device;
      workers.push_back(std::make_unique<WorkerThread>(o));
    }
    for (auto& w : workers) w->AwaitRegistered();
    return workers;
  }

  void Cancel(const std::string& id) {
    v1::CancelJobRequest request;
    request.set_job_id(id);
    request.set_reason("test cancels");
    v1::CancelJobResponse response;
    const grpc::Status status = jobs_->CancelJob(Context().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
};

TEST_F(WorkerTest, SelftestSucceedsWithLogsAndWorkersTakeTheNextJob) {
  auto workers = StartWorkers(4);
  const v1::Job job = Submit(SelftestSpec("selftest-first"));
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();

  const std::vector<std::string> logs = ReadLogs(*jobs_, job.id());
  EXPECT_TRUE(HasLine(logs, "rank 0: selftest: group dp [0,1] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 1: selftest: seeds over dp [0,1] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 2: selftest: group dp [2,3] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 3: selftest: group ep [2,3] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 3: selftest: seeds over expt_tp_ep_pp [2,3] ok"));
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": selftest: passed"))) << "rank " << r;
    EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": job succeeded"))) << "rank " << r;
  }

  // Workers persist across jobs.
  const v1::Job second = Submit(SelftestSpec("selftest-second"));
  EXPECT_EQ(AwaitState(second.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20)).state(),
            v1::JOB_STATE_SUCCEEDED);
  for (auto& w : workers) EXPECT_TRUE(w->Join().ok());
}

TEST_F(WorkerTest, ExampleLayoutOnEightWorkersSucceeds) {
  auto workers = StartWorkers(8);
  const v1::Job job = Submit(ExampleSelftestSpec());
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(25));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();
  const std::vector<std::string> logs = ReadLogs(*jobs_, job.id());
  EXPECT_TRUE(HasLine(logs, "rank 0: selftest: group tp [0,1] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 2: selftest: group dp [2,3] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 4: selftest: group tp [4,5] ok"));
  EXPECT_TRUE(HasLine(logs, "rank 7: selftest: seeds over tp_cp_dp_pp [4,5,6,7] ok"));
  for (int r = 0; r < 8; ++r) {
    EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": selftest: passed"))) << "rank " << r;
  }
}

// A KIND_TRAIN job on CPU workers: the vision encoder (dp 2) on ranks 0-1 feeds the MoE language
// model (dp 2, ep 2) on ranks 2-3; every step is reported by the logging rank (language replica
// 0) in Megatron's line format and as metrics; the loss falls.
TEST_F(WorkerTest, TrainJobTrainsAndReportsEveryStep) {
  auto workers = StartWorkers(4);
  v1::JobSpec spec = coordinator::testing::SmallSpec("train");  // KIND_TRAIN, 10 steps.
  spec.mutable_training()->mutable_optimizer()->set_lr(3e-3);
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() / absl::StrCat("mimo-train-out-", getpid());
  std::filesystem::remove_all(out);
  spec.set_output_dir(out.string());
  const v1::Job job = Submit(spec);
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(120));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();
  EXPECT_EQ(done.progress().step(), 10);
  EXPECT_EQ(done.last_metrics().step(), 10);
  EXPECT_GT(done.last_metrics().tokens_per_second(), 0);
  EXPECT_GT(done.last_metrics().tflops_per_gpu(), 0);
  EXPECT_GT(done.last_metrics().peak_memory_bytes(), 0);
  EXPECT_EQ(done.last_metrics().values().count("expert_load_3"), 1u);
  EXPECT_EQ(done.last_metrics().values().count("expert_load_imbalance_layer_0"), 1u);
  const std::vector<std::string> logs = ReadLogs(*jobs_, job.id());
  EXPECT_TRUE(HasLine(logs, "rank 0: training module vision: ")) << absl::StrJoin(logs, "\n");
  EXPECT_TRUE(HasLine(logs, "rank 3: training module language: "));
  double first = 0, last = 0;
  int lines = 0;
  for (const std::string& line : logs) {
    const size_t at = line.find(" | lm loss: ");
    if (line.find("rank 2: ") == std::string::npos || at == std::string::npos) continue;
    ++lines;
    const double loss = std::stod(line.substr(at + 12));
    if (lines == 1) first = loss;
    last = loss;
    EXPECT_NE(line.find(absl::StrFormat("iteration %8d/      10 |", lines)), std::string::npos)
        << line;
  }
  EXPECT_EQ(lines, 10);
  EXPECT_NEAR(first, std::log(256.0), 1.0);
  EXPECT_LT(last, first - 0.5);
  EXPECT_NEAR(last, done.last_metrics().loss(), 1e-5 * last);
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": training done: 10 steps"))) << r;
  }
  // The logging rank's files: a CSV row per step, an event file, the loss curve.
  std::ifstream csv(out / "metrics.csv");
  int rows = 0;
  for (std::string line; std::getline(csv, line);) ++rows;
  EXPECT_EQ(rows, 11);
  EXPECT_TRUE(std::filesystem::exists(out / "loss.png"));
  EXPECT_FALSE(std::filesystem::is_empty(out / "tensorboard"));
  std::filesystem::remove_all(out);
  // The workers are free again.
  const v1::Job next = Submit(SelftestSpec("after-train"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20)).state(),
            v1::JOB_STATE_SUCCEEDED);
}

TEST_F(WorkerTest, CudaWorkerRunsItsJobOverNcclOrRefusesToStartWithoutItsGpu) {
  if (CudaDeviceCount() == 0) {
    // No GPU here (or a build without CUDA): a worker offering CUDA device 0 must not register.
    WorkerOptions o = TestWorkerOptions(server_->port(), 0);
    o.device = v1::DEVICE_KIND_CUDA;
    Worker worker(o);
    const absl::Status status = worker.Run();
    EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("CUDA device 0"));
    EXPECT_EQ(ExitCodeFor(status), kExitError);
    EXPECT_TRUE(worker.worker_id().empty());
    return;
  }
  // A GPU host: the worker registers its GPU and runs the one rank over NCCL on it.
  auto workers = StartWorkers(1, 0, v1::DEVICE_KIND_CUDA);
  v1::JobSpec spec = LanguageOnlySpec(1, "on-gpu");
  spec.mutable_resources()->set_device(v1::DEVICE_KIND_CUDA);
  const v1::Job job = Submit(spec);
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(30));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();
  EXPECT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: selftest: passed"}));
}

// training.deterministic: the same one-rank job twice gives the same loss and gradient norm at
// every step, bit for bit. On a GPU host the CUDA worker runs it (the timed cuBLASLt algorithms and
// the attention backward's atomics made two runs part from the first step); elsewhere a CPU
// worker does, so the flag's path through the coordinator and worker is run either way.
TEST_F(WorkerTest, ADeterministicJobRepeatsBitForBit) {
  const bool gpu = CudaDeviceCount() > 0;
  const v1::DeviceKind device = gpu ? v1::DEVICE_KIND_CUDA : v1::DEVICE_KIND_CPU;
  auto workers = StartWorkers(1, 0, device);
  std::vector<std::vector<std::string>> runs;
  for (int run = 0; run < 2; ++run) {
    v1::JobSpec spec = coordinator::testing::SmallSpec(absl::StrCat("deterministic-", run));
    v1::Module language = spec.modules(1);
    spec.clear_modules();
    language.mutable_parallelism()->set_dp(1);
    language.mutable_parallelism()->set_ep(1);
    language.mutable_parallelism()->set_rank_offset(0);
    *spec.add_modules() = language;
    spec.mutable_resources()->set_workers(1);
    spec.mutable_resources()->set_device(device);
    spec.mutable_training()->set_steps(5);
    spec.mutable_training()->set_global_batch_size(4);
    spec.mutable_training()->set_precision(gpu ? v1::PRECISION_BF16 : v1::PRECISION_FP32);
    spec.mutable_training()->set_deterministic(true);
    const v1::Job job = Submit(spec);
    const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(60));
    ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();
    std::vector<std::string>& lines = runs.emplace_back();
    for (const std::string& line : ReadLogs(*jobs_, job.id())) {
      const size_t at = line.find(" | lm loss: ");
      const size_t end = line.find(" | tokens per second: ");
      if (at != std::string::npos && end != std::string::npos) {
        lines.push_back(line.substr(at, end - at));  // The losses and the gradient norm.
      }
    }
    EXPECT_EQ(lines.size(), 5u);
    lines.push_back(absl::StrFormat("%a", done.last_metrics().loss()));
  }
  EXPECT_EQ(runs[0], runs[1]);
}

TEST_F(WorkerTest, CancelStopsEveryWorkerWithinSeconds) {
  // Ranks 0-2 are real and wait in rendezvous for rank 3, which never comes.
  auto workers = StartWorkers(3);
  SilentRank silent(Channel(), 3);
  const v1::Job job = Submit(LanguageOnlySpec(4, "held"));
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(),
                        {"rank 0: connecting", "rank 1: connecting", "rank 2: connecting"}));
  absl::SleepFor(absl::Milliseconds(200));  // Into the rendezvous.
  const absl::Time cancelled = absl::Now();
  Cancel(job.id());
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_CANCELLED, absl::Seconds(5));
  ASSERT_EQ(done.state(), v1::JOB_STATE_CANCELLED);
  // With a 30 s grace, CANCELLED this soon means that every worker reported STOPPED.
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(5));
  EXPECT_THAT(done.state_reason(), Not(HasSubstr("did not confirm")));
  const std::vector<std::string> logs = ReadLogs(*jobs_, job.id());
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": job stopped: test cancels")))
        << "rank " << r;
  }
  // The stopped workers (slots 0-2, sorted before the silent slot 3) take the next job.
  const v1::Job next = Submit(LanguageOnlySpec(3, "after-cancel"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20)).state(),
            v1::JOB_STATE_SUCCEEDED);
}

TEST_F(WorkerTest, CancelStopsALongSelftestMidRunOnEveryRankWithinTwoSeconds) {
  // A soak selftest (every rank loops over the collectives of its groups) cancelled mid-run,
  // three times over: a worker that missed the stop once would hold the job for its 20 s
  // communication timeout, which the 30 s cancel grace would hide but the clock does not.
  auto workers = StartWorkers(4);
  for (int run = 0; run < 3; ++run) {
    SCOPED_TRACE(::testing::Message() << "run " << run);
    v1::JobSpec spec = SelftestSpec(absl::StrCat("soak-", run));
    spec.mutable_selftest()->set_iterations(1000000);
    const v1::Job job = Submit(spec);
    std::vector<std::string> rounds;
    for (int r = 0; r < 4; ++r) {
      rounds.push_back(absl::StrCat("rank ", r, ": selftest: collectives round 2 of 1000000 ok"));
    }
    ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), rounds, absl::Seconds(20)));
    const absl::Time cancelled = absl::Now();
    Cancel(job.id());
    const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_CANCELLED, absl::Seconds(25));
    ASSERT_EQ(done.state(), v1::JOB_STATE_CANCELLED);
    EXPECT_LT(absl::Now() - cancelled, absl::Seconds(2));
    EXPECT_THAT(done.state_reason(), Not(HasSubstr("did not confirm")));
    // Every rank reports the stop, including those whose collectives failed first because a
    // peer that got the STOP before them closed its connections.
    const std::vector<std::string> logs = ReadLogs(*jobs_, job.id());
    for (int r = 0; r < 4; ++r) {
      EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": job stopped: test cancels")))
          << "rank " << r;
    }
  }
  // Every worker is free again.
  const v1::Job next = Submit(SelftestSpec("after-soak"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20)).state(),
            v1::JOB_STATE_SUCCEEDED);
}

// A worker started for a device another (live) worker holds waits, its registration refused and
// retried, until that one goes; then it registers and takes jobs.
TEST_F(WorkerTest, AWorkerForAHeldDeviceRegistersOnceTheHolderIsGone) {
  auto holder = std::make_unique<SilentRank>(Channel(), 0);  // Heartbeats every 50 ms.
  WorkerThread waiting(TestWorkerOptions(server_->port(), 0));
  absl::SleepFor(absl::Seconds(1));
  EXPECT_TRUE(waiting.worker().worker_id().empty()) << "registered while the device was held";
  holder.reset();  // Stops beating: dropped after two missed heartbeats (100 ms apart).
  waiting.AwaitRegistered();
  auto more = StartWorkers(3, 1);
  const v1::Job job = Submit(SelftestSpec("selftest-after-the-holder"));
  EXPECT_EQ(AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20)).state(),
            v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(waiting.Join().ok());
  for (auto& w : more) EXPECT_TRUE(w->Join().ok());
}

TEST_F(WorkerTest, WorkerExitsOnItsOwnWhenTheCoordinatorIsGone) {
  auto workers = StartWorkers(1);
  const absl::Time gone = absl::Now();
  StopServer();
  const absl::Time deadline = absl::Now() + absl::Seconds(6);
  while (!workers[0]->done() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(workers[0]->done()) << "the worker did not give up on the coordinator";
  // It waits out the 2 s heartbeat timeout, not much more.
  EXPECT_LT(absl::Now() - gone, absl::Seconds(5));
  const absl::Status status = workers[0]->Join();
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("lost the coordinator"));
  EXPECT_EQ(ExitCodeFor(status), kExitUnreachable);
}

TEST_F(WorkerTest, RestartedCoordinatorReattachesTheRunningJob) {
  // Rank 0 waits in rendezvous for rank 1 when the coordinator restarts. It re-registers naming
  // its assignment (and sets its rendezvous keys again); rank 1 (gone with the old coordinator)
  // cannot, so after the grace the job fails naming rank 1 alone: rank 0 re-attached.
  auto workers = StartWorkers(1);
  auto silent = std::make_unique<SilentRank>(Channel(), 1);
  const v1::Job job = Submit(LanguageOnlySpec(2, "across-restart"));
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: connecting"}));
  silent.reset();
  StopServer();
  StartServer(options_);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(10));
  EXPECT_EQ(failed.failure().reason(), "COORDINATOR_RESTARTED");
  EXPECT_EQ(failed.failure().rank(), 1) << failed.failure().message();
  // Told to stop, the re-attached worker reports STOPPED and takes the next job.
  const v1::Job next = Submit(LanguageOnlySpec(1, "after-restart"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(10)).state(),
            v1::JOB_STATE_SUCCEEDED);
}

// Rounds of a selftest that outlasts a coordinator restart (about 0.1 s each on two cores).
constexpr int kRestartRounds = 40;

TEST_F(WorkerTest, RunningJobSurvivesACoordinatorRestart) {
  // Every rank is mid-run (collectives need no coordinator) when the coordinator restarts: each
  // worker re-registers naming its rank, the job stays RUNNING, and its end reaches the new one.
  auto workers = StartWorkers(4);
  v1::JobSpec spec = SelftestSpec("through-restart");
  spec.mutable_selftest()->set_iterations(kRestartRounds);
  const v1::Job job = Submit(spec);
  std::vector<std::string> rounds;
  for (int r = 0; r < 4; ++r) {
    rounds.push_back(
        absl::StrCat("rank ", r, ": selftest: collectives round 2 of ", kRestartRounds, " ok"));
  }
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), rounds, absl::Seconds(20)));
  StopServer();
  StartServer(options_);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(30));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();
  EXPECT_EQ(done.attempt(), 1);
  const std::vector<std::string> logs = ReadLogs(*jobs_, job.id());
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(HasLine(logs, absl::StrCat("rank ", r, ": selftest: passed"))) << "rank " << r;
  }
}

// A restart slower than the heartbeat timeout but within the reattach grace: the workers keep
// their job through the outage (they give up only after the longer of the two) and re-attach it.
TEST_F(WorkerTest, RunningJobSurvivesAnOutageLongerThanTheHeartbeatTimeout) {
  StopServer();
  ServerOptions options = Options();
  options.manager.reattach_grace = absl::Seconds(6);
  StartServer(options);
  auto workers = StartWorkers(4);
  v1::JobSpec spec = SelftestSpec("through-outage");
  spec.mutable_selftest()->set_iterations(2 * kRestartRounds);
  const v1::Job job = Submit(spec);
  std::vector<std::string> rounds;
  for (int r = 0; r < 4; ++r) {
    rounds.push_back(
        absl::StrCat("rank ", r, ": selftest: collectives round 2 of ", 2 * kRestartRounds, " ok"));
  }
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), rounds, absl::Seconds(20)));
  StopServer();
  absl::SleepFor(options.manager.heartbeat_timeout + absl::Seconds(1));
  StartServer(options_);
  // Whether the job ends during the outage (its final reports then wait for the coordinator) or
  // after it, it ends SUCCEEDED in its first attempt; slow rounds on a loaded machine take long.
  const v1::Job done = AwaitState(job.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(90));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.state_reason();
  EXPECT_EQ(done.attempt(), 1);
  for (auto& w : workers) EXPECT_FALSE(w->done()) << "a worker gave up during the outage";
}

// Two workers re-attach their ranks after the restart (their new ids must not collide with
// each other's old ones); only the rank that never comes back is named.
TEST_F(WorkerTest, RestartedCoordinatorReattachesEveryRank) {
  auto workers = StartWorkers(2);
  auto silent = std::make_unique<SilentRank>(Channel(), 2);
  const v1::Job job = Submit(LanguageOnlySpec(3, "across-restart"));
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: connecting", "rank 1: connecting"}));
  silent.reset();
  StopServer();
  StartServer(options_);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(10));
  EXPECT_EQ(failed.failure().rank(), 2) << failed.failure().message();
  const v1::Job next = Submit(LanguageOnlySpec(2, "after-restart"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(10)).state(),
            v1::JOB_STATE_SUCCEEDED);
}

}  // namespace
}  // namespace mimo::worker::testing
