// The embedded worker pool's supervision with stand-in worker programs (shell scripts): arguments,
// restarts after an exit, stderr forwarding, and a stop that leaves no process behind.
#include "coordinator/local_workers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace mimo::coordinator {
namespace {

using ::testing::HasSubstr;

class LocalWorkersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open({.path = ":memory:"});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    manager_ = std::make_unique<JobManager>(store_.get(), JobManager::Options());
  }

  // An executable script under the test's temp folder.
  std::string Script(const std::string& name, const std::string& body) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/", name, "-", getpid(), ".sh");
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    chmod(path.c_str(), 0755);
    scripts_.push_back(path);
    return path;
  }

  LocalWorkersOptions Options(const std::string& binary, int count) {
    LocalWorkersOptions o;
    o.worker_binary = binary;
    o.count = count;
    o.coordinator_address = "127.0.0.1:1";
    o.host = "test-host";
    o.restart_delay = absl::Milliseconds(50);
    o.drain_grace = absl::Milliseconds(200);
    o.stop_grace = absl::Milliseconds(500);
    return o;
  }

  // True when this process has no child left, exited or not.
  static bool NoChildren() {
    int status;
    return waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD;
  }

  // LocalWorkers::Start from a thread blocking SIGTERM and SIGINT, as the coordinator's threads
  // do: the workers must not inherit that mask.
  absl::StatusOr<std::unique_ptr<LocalWorkers>> StartWithStopSignalsBlocked(
      const LocalWorkersOptions& options) {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &stop, &old);
    auto workers = LocalWorkers::Start(options, manager_.get());
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return workers;
  }

  // Waits (up to a generous deadline: a loaded CI machine may take long to start a shell) until
  // the `count` workers of `marker` have written their ready files (`marker`.<local index>), that
  // is, have installed their signal traps; true if they all did.
  static bool AwaitReady(const std::string& marker, int count) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (int i = 0; i < count; ++i) {
      const std::string file = absl::StrCat(marker, ".", i);
      while (!std::ifstream(file).good()) {
        if (absl::Now() > deadline) return false;
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
    return true;
  }

  // Removes the ready files of AwaitReady.
  static void RemoveReady(const std::string& marker, int count) {
    for (int i = 0; i < count; ++i) std::remove(absl::StrCat(marker, ".", i).c_str());
  }

  void TearDown() override {
    for (const std::string& path : scripts_) std::remove(path.c_str());
  }

  std::unique_ptr<JobStore> store_;
  std::unique_ptr<JobManager> manager_;
  std::vector<std::string> scripts_;
};

TEST_F(LocalWorkersTest, PassesTheCoordinatorHostSlotAndDevice) {
  const std::string out = absl::StrCat(::testing::TempDir(), "/args-", getpid());
  const std::string script =
      Script("args", absl::StrCat("echo \"$@\" >> ", out, ".$4.$6; sleep 30"));
  LocalWorkersOptions options = Options(script, 2);
  options.extra_args = {"--token-file", "/secret"};
  auto workers = LocalWorkers::Start(options, manager_.get());
  ASSERT_TRUE(workers.ok()) << workers.status();
  const std::string slot1 = absl::StrCat(out, ".test-host.1");
  for (int i = 0; i < 100 && !std::ifstream(slot1).good(); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  (*workers)->Stop();
  std::stringstream args;
  args << std::ifstream(slot1).rdbuf();
  EXPECT_EQ(args.str(),
            "--coordinator 127.0.0.1:1 --host test-host --local-index 1 --device cpu "
            "--token-file /secret\n");
  std::remove(slot1.c_str());
  std::remove(absl::StrCat(out, ".test-host.0").c_str());
  EXPECT_TRUE(NoChildren());
}

TEST_F(LocalWorkersTest, RestartsWorkersThatExit) {
  const std::string script = Script("exits", "echo \"going away\" >&2; exit 3");
  auto workers = LocalWorkers::Start(Options(script, 2), manager_.get());
  ASSERT_TRUE(workers.ok()) << workers.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*workers)->started() < 6 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GE((*workers)->started(), 6);
  (*workers)->Stop();
  EXPECT_TRUE(NoChildren());
}

TEST_F(LocalWorkersTest, StopKillsWorkersThatIgnoreSigint) {
  const std::string script = Script("stubborn", "trap '' INT TERM; while :; do sleep 1; done");
  auto workers = StartWithStopSignalsBlocked(Options(script, 3));
  ASSERT_TRUE(workers.ok()) << workers.status();
  while ((*workers)->started() < 3) absl::SleepFor(absl::Milliseconds(10));
  const absl::Time start = absl::Now();
  (*workers)->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_TRUE(NoChildren());
}

TEST_F(LocalWorkersTest, StopDrainsWorkersWithSigtermFirst) {
  // SIGTERM first, as a preemption: a mimo-worker drains on it (a training job saves a
  // checkpoint and stops) while the coordinator still serves.
  const std::string out = absl::StrCat(::testing::TempDir(), "/drained-", getpid());
  const std::string ready = absl::StrCat(out, "-ready");
  std::remove(out.c_str());
  RemoveReady(ready, 2);
  // $6 is the worker's --local-index; the ready file is written once the traps are set.
  const std::string script =
      Script("drains", absl::StrCat("trap 'echo term >> ", out, "; exit 0' TERM; trap '' INT; : > ",
                                    ready, ".$6; while :; do sleep 0.1; done"));
  LocalWorkersOptions options = Options(script, 2);
  options.drain_grace = absl::Seconds(20);
  auto workers = StartWithStopSignalsBlocked(options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  // Stopped before its trap is set, a shell would die of SIGTERM without writing.
  EXPECT_TRUE(AwaitReady(ready, 2));
  const absl::Time start = absl::Now();
  (*workers)->Stop();
  RemoveReady(ready, 2);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // They exited on SIGTERM.
  std::stringstream got;
  got << std::ifstream(out).rdbuf();
  EXPECT_EQ(got.str(), "term\nterm\n");
  std::remove(out.c_str());
  EXPECT_TRUE(NoChildren());
}

TEST_F(LocalWorkersTest, WorkersStillRunningAfterTheDrainGraceGetSigint) {
  const std::string ready = absl::StrCat(::testing::TempDir(), "/plain-", getpid(), "-ready");
  RemoveReady(ready, 2);
  const std::string script =
      Script("plain", absl::StrCat("trap 'exit 0' INT; trap '' TERM; : > ", ready,
                                   ".$6; while :; do sleep 0.1; done"));
  LocalWorkersOptions options = Options(script, 2);
  options.drain_grace = absl::Milliseconds(300);
  options.stop_grace = absl::Seconds(20);
  auto workers = StartWithStopSignalsBlocked(options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  // Stopped before its traps are set, a shell would die of SIGTERM, proving nothing.
  EXPECT_TRUE(AwaitReady(ready, 2));
  const absl::Time start = absl::Now();
  (*workers)->Stop();
  RemoveReady(ready, 2);
  // Well within the stop grace: SIGINT reached them after the drain grace (no SIGKILL needed).
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(NoChildren());
}

TEST_F(LocalWorkersTest, BadOptionsAreErrors) {
  auto missing = LocalWorkers::Start(Options("/nonexistent/mimo-worker", 1), manager_.get());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/mimo-worker"));
  auto none = LocalWorkers::Start(Options(Script("none", "exit 0"), 0), manager_.get());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mimo::coordinator
