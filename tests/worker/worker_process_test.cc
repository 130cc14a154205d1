// mimo-worker processes against an in-process coordinator: a worker killed with SIGKILL mid-job
// fails the job naming its rank while the others stop and take the next job; SIGTERM stops the
// running job and exits 0; workers whose coordinator is gone exit on their own with code 3.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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
using ::testing::StartsWith;

class WorkerProcessTest : public CoordinatorFixture {
 protected:
  // A 1 s heartbeat timeout: short enough for fast failure paths, long enough for processes
  // on two busy cores.
  void SetUp() override {
    ServerOptions o = FastOptions(db_path_);
    o.manager.heartbeat_interval = absl::Milliseconds(100);
    o.manager.heartbeat_timeout = absl::Seconds(1);
    o.manager.cancel_grace = absl::Seconds(30);
    StartServer(o);
  }

  // mimo-worker processes on slots `indices`, each registered.
  std::vector<std::unique_ptr<WorkerProcess>> StartWorkers(const std::vector<int>& indices) {
    std::vector<std::unique_ptr<WorkerProcess>> workers;
    for (int i : indices) workers.push_back(std::make_unique<WorkerProcess>(server_->port(), i));
    for (auto& w : workers) {
      const absl::Time deadline = absl::Now() + absl::Seconds(10);
      while (!absl::StrContains(w->Log(), "registered with the coordinator") &&
             absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(20));
      }
      EXPECT_THAT(w->Log(), HasSubstr("registered with the coordinator")) << w->log_path();
    }
    return workers;
  }
};

// The exit code of a wait status; -1 if it was killed by a signal.
int ExitCode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

TEST_F(WorkerProcessTest, KilledWorkerFailsTheJobNamingItsRankAndTheOthersStop) {
  // Ranks 0-2 are processes waiting in rendezvous for rank 3, which never comes.
  auto workers = StartWorkers({0, 1, 2});
  SilentRank silent(Channel(), 3);
  const v1::Job job = Submit(LanguageOnlySpec(4, "kill-one"));
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(),
                        {"rank 0: connecting", "rank 1: connecting", "rank 2: connecting"}));
  absl::SleepFor(absl::Milliseconds(200));  // Into the rendezvous.
  const absl::Time killed = absl::Now();
  workers[1]->Signal(SIGKILL);
  const v1::Job failed = AwaitState(job.id(), v1::JOB_STATE_FAILED, absl::Seconds(5));
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  // Noticed within the 1 s heartbeat timeout (plus a tick and a heartbeat).
  EXPECT_LT(absl::Now() - killed, absl::Seconds(3));
  EXPECT_EQ(failed.failure().reason(), "HEARTBEAT_TIMEOUT");
  EXPECT_EQ(failed.failure().rank(), 1);
  EXPECT_THAT(failed.failure().message(), HasSubstr("rank 1"));
  // The others were told to stop, aborted their rendezvous and reported STOPPED.
  EXPECT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: job stopped", "rank 2: job stopped"},
                        absl::Seconds(5)));
  // Free again, they run the next job. The silent slot 3 (free too, but it never fetches work)
  // goes first: were the next job submitted before the others' STOPPED reports arrived (their
  // log lines come first), the scheduler could give it a rank and the job would wait forever.
  silent.Stop();
  absl::SleepFor(absl::Milliseconds(1500));  // Past the 1 s heartbeat timeout: it is dropped.
  const v1::Job next = Submit(LanguageOnlySpec(2, "after-kill"));
  EXPECT_EQ(AwaitState(next.id(), v1::JOB_STATE_SUCCEEDED, absl::Seconds(20)).state(),
            v1::JOB_STATE_SUCCEEDED);
  for (int i : {0, 2}) {
    workers[i]->Signal(SIGTERM);
    const std::optional<int> status = workers[i]->WaitExit(absl::Seconds(5));
    ASSERT_TRUE(status.has_value()) << "worker " << i << " ignored SIGTERM";
    EXPECT_EQ(ExitCode(*status), kExitStopped) << workers[i]->Log();
  }
}

TEST_F(WorkerProcessTest, SigtermStopsTheRunningJobAndExitsZero) {
  auto workers = StartWorkers({0});
  SilentRank silent(Channel(), 1);
  const v1::Job job = Submit(LanguageOnlySpec(2, "sigterm"));
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: connecting"}));
  absl::SleepFor(absl::Milliseconds(200));
  workers[0]->Signal(SIGTERM);
  const std::optional<int> status = workers[0]->WaitExit(absl::Seconds(5));
  ASSERT_TRUE(status.has_value()) << "the worker ignored SIGTERM";
  EXPECT_EQ(ExitCode(*status), kExitStopped) << workers[0]->Log();
  EXPECT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: job stopped: the worker received SIGTERM"}));
}

TEST_F(WorkerProcessTest, WorkersExitOnTheirOwnWhenTheCoordinatorIsGone) {
  // Slots 0-1 run ranks 0-1 of a job held in rendezvous by the silent slot 2; slot 3 is idle.
  auto workers = StartWorkers({0, 1, 3});
  auto silent = std::make_unique<SilentRank>(Channel(), 2);
  const v1::Job job = Submit(LanguageOnlySpec(3, "orphaned"));
  ASSERT_TRUE(AwaitLogs(*jobs_, job.id(), {"rank 0: connecting", "rank 1: connecting"}));
  silent.reset();
  const absl::Time gone = absl::Now();
  StopServer();
  for (auto& w : workers) {
    const std::optional<int> status = w->WaitExit(absl::Seconds(6));
    ASSERT_TRUE(status.has_value()) << "a worker did not give up: " << w->Log();
    EXPECT_EQ(ExitCode(*status), kExitUnreachable) << w->Log();
    EXPECT_THAT(w->Log(), HasSubstr("lost the coordinator"));
  }
  // The 1 s heartbeat timeout, not much more.
  EXPECT_LT(absl::Now() - gone, absl::Seconds(5));
}

TEST_F(WorkerProcessTest, UnreachableCoordinatorAtStartExitsThree) {
  WorkerProcess w(1, 0, {"--connect-timeout", "0.5"});  // Nothing listens on port 1.
  const std::optional<int> status = w.WaitExit(absl::Seconds(5));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(ExitCode(*status), kExitUnreachable) << w.Log();
  EXPECT_THAT(w.Log(), HasSubstr("cannot reach the coordinator"));
}

TEST_F(WorkerProcessTest, BadFlagsExitTwo) {
  WorkerProcess w(server_->port(), 0, {"--device", "tpu"});
  const std::optional<int> status = w.WaitExit(absl::Seconds(5));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(ExitCode(*status), kExitUsage) << w.Log();
}

// Runs `command` through the shell; returns its exit code and what it printed on stdout.
std::pair<int, std::string> RunShell(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[256];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) out += buffer;
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  return {ExitCode(status), out};
}

TEST_F(WorkerProcessTest, CountGpusPrintsTheDevicesItCanUse) {
  // The coordinator's --gpu-workers auto relies on this; no --coordinator needed.
  const auto [code, out] = RunShell(WorkerBinary() + " --count-gpus");
  EXPECT_EQ(code, 0);
  EXPECT_EQ(out, absl::StrCat(CudaDeviceCount(), "\n"));
}

// "--flag=" (nothing after '=') gives a flag the empty value, as "--flag ''" does: the same exit
// code and output. CLI11 alone refused it ("1 required ... missing") or took the next argument
// for its value.
TEST(WorkerFlagsTest, AnEmptyValueAfterEqualsIsAnEmptyValue) {
  struct Case {
    std::string flag, rest;
    bool accepted;  // Empty is the default, and the worker goes on to connect.
  };
  const std::string unreachable = " --coordinator 127.0.0.1:1 --connect-timeout 0.1";
  for (const auto& [flag, rest, accepted] : std::vector<Case>{
           // Empty: gethostname, the host name's address, no token; nothing listens on port 1.
           {"--host", unreachable, true},
           {"--listen-address", unreachable, true},
           {"--token", unreachable, true},
           // Empty: refused, naming the flag.
           {"--coordinator", "", false},
           {"--local-index", unreachable, false},
           {"--device", unreachable, false},
           {"--token-file", unreachable, false},
           {"--tls-ca", unreachable, false},
           {"--connect-timeout", " --coordinator 127.0.0.1:1", false},
       }) {
    SCOPED_TRACE(flag);
    const auto [code, out] = RunShell(absl::StrCat(WorkerBinary(), " ", flag, "=", rest, " 2>&1"));
    const auto [code_with_space, out_with_space] =
        RunShell(absl::StrCat(WorkerBinary(), " ", flag, " ''", rest, " 2>&1"));
    EXPECT_EQ(code, code_with_space);
    EXPECT_EQ(out, out_with_space);
    EXPECT_THAT(out, Not(HasSubstr("missing")));
    if (accepted) {
      EXPECT_EQ(code, kExitUnreachable) << out;
    } else {
      EXPECT_NE(code, 0) << out;
      EXPECT_THAT(out, HasSubstr(flag == "--coordinator" ? "coordinator address is empty" : flag));
    }
  }
}

// A number flag given an empty value is a usage error naming it (CLI11 alone read "" as 0).
TEST(WorkerFlagsTest, AnEmptyNumberIsAUsageError) {
  for (const auto& [flag, message] : std::vector<std::pair<std::string, std::string>>{
           {"--local-index",
            "--local-index: the value is empty; give an integer, or leave the flag out for its "
            "default"},
           {"--connect-timeout",
            "--connect-timeout: '' is not a positive number of seconds, such as 30 or 0.5\n"},
       }) {
    for (const char* empty : {" ''", "="}) {
      SCOPED_TRACE(absl::StrCat(flag, empty));
      const auto [code, out] =
          RunShell(absl::StrCat(WorkerBinary(), " --coordinator 127.0.0.1:1 --connect-timeout 0.1 ",
                                flag, empty, " 2>&1"));
      EXPECT_EQ(code, kExitUsage) << out;
      EXPECT_THAT(out, StartsWith(message));
    }
  }
}

// --connect-timeout takes a positive number of seconds; anything else is a usage error saying
// so in a line (CLI::PositiveNumber's message printed its range up to DBL_MAX in full).
TEST(WorkerFlagsTest, AConnectTimeoutThatIsNotAPositiveNumberIsAUsageError) {
  for (const char* value : {"abc", "0", "-1", "10s", "nan"}) {
    SCOPED_TRACE(value);
    const auto [code, out] = RunShell(absl::StrCat(
        WorkerBinary(), " --coordinator 127.0.0.1:1 --connect-timeout ", value, " 2>&1"));
    EXPECT_EQ(code, kExitUsage) << out;
    EXPECT_THAT(out, StartsWith(absl::StrCat("--connect-timeout: '", value,
                                             "' is not a positive number of seconds, such as 30 "
                                             "or 0.5\n")));
  }
}

// A token flag beats MIMO_TOKEN: --token-file with MIMO_TOKEN set was refused as "--token
// excludes --token-file" (CLI11 counted the environment as --token), so mimo-node with both set
// exited at once. MIMO_TOKEN alone is still the token.
TEST_F(WorkerProcessTest, ATokenFlagBeatsMimoTokenFromTheEnvironment) {
  StopServer();
  ServerOptions o = FastOptions(db_path_);
  o.auth_token = "right";
  StartServer(o);
  const std::string file = absl::StrCat(::testing::TempDir(), "/token-", getpid());
  std::ofstream(file) << "right\n";
  struct Case {
    const char* env;
    std::vector<std::string> flags;
    bool registers;
  };
  int index = 0;
  for (const auto& [env, flags, registers] : std::vector<Case>{
           {"wrong", {"--token-file", file}, true},
           {"wrong", {"--token", "right"}, true},
           {"right", {}, true},
           {"right", {"--token", "wrong"}, false},
       }) {
    SCOPED_TRACE(absl::StrCat("MIMO_TOKEN=", env, " ", absl::StrJoin(flags, " ")));
    ASSERT_EQ(setenv("MIMO_TOKEN", env, 1), 0);  // The child inherits it.
    WorkerProcess w(server_->port(), index++, flags);
    ASSERT_EQ(unsetenv("MIMO_TOKEN"), 0);
    if (registers) {
      const absl::Time deadline = absl::Now() + absl::Seconds(10);
      while (!absl::StrContains(w.Log(), "registered with the coordinator") &&
             absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(20));
      }
      EXPECT_THAT(w.Log(), HasSubstr("registered with the coordinator"));
    } else {
      const std::optional<int> status = w.WaitExit(absl::Seconds(10));
      ASSERT_TRUE(status.has_value());
      EXPECT_EQ(ExitCode(*status), kExitError) << w.Log();
      EXPECT_THAT(w.Log(), HasSubstr("invalid bearer token"));
    }
  }
}

TEST_F(WorkerProcessTest, CudaWorkerWithoutItsGpuExitsOneNamingIt) {
  WorkerProcess w(server_->port(), 63, {"--device", "cuda"});
  const std::optional<int> status = w.WaitExit(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(ExitCode(*status), kExitError) << w.Log();
  EXPECT_THAT(w.Log(), HasSubstr("CUDA device 63"));
  EXPECT_THAT(w.Log(), Not(HasSubstr("registered with the coordinator")));
}

}  // namespace
}  // namespace mimo::worker::testing
