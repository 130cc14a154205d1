// The embedded worker pool's supervision with stand-in worker programs (shell scripts): arguments,
// restarts after an exit, stderr forwarding, and a stop that leaves no process behind; and its
// process handling alone: a child held until the manager knows its pid, and an exit reported
// before its pid is freed.
#include "coordinator/local_workers.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

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

// Everything `fd` gives until its end; closes it.
std::string ReadAll(int fd) {
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) text.append(buffer, n);
  }
  close(fd);
  return text;
}

// The state letter of /proc/PID/stat ('R' running, 'S' sleeping, 'Z' zombie, ...).
char ProcessState(pid_t pid) {
  std::string stat;
  std::getline(std::ifstream(absl::StrCat("/proc/", pid, "/stat")), stat);
  const size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
}

// The child waits for the end of a pipe, not a byte: one that died before the go (of a SIGTERM
// sent to the process group, say) made the byte's write raise SIGPIPE, killing the coordinator
// (nothing ignores it there with --metrics-listen ''), so that it stopped without a drain.
TEST(StartChildTest, AChildDeadBeforeItsGoSignalLeavesTheParentAlive) {
  struct sigaction default_action = {};
  default_action.sa_handler = SIG_DFL;
  struct sigaction old;
  sigaction(SIGPIPE, &default_action, &old);
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  bool dead = false;
  const absl::StatusOr<pid_t> pid =
      local_workers_internal::StartChild({"/bin/echo", "ran"}, out[1], [&](pid_t pid) {
        kill(pid, SIGKILL);
        siginfo_t info = {};  // Dead, not reaped: its end of the go pipe is closed.
        dead = waitid(P_PID, pid, &info, WEXITED | WNOWAIT) == 0 && info.si_code == CLD_KILLED;
      });
  close(out[1]);
  sigaction(SIGPIPE, &old, nullptr);  // Reached: SIGPIPE did not end this process.
  ASSERT_TRUE(pid.ok()) << pid.status();
  EXPECT_TRUE(dead);
  int code = 0;
  std::string how;
  EXPECT_TRUE(local_workers_internal::AwaitExit(*pid, /*wait=*/true, [&](int c, std::string h) {
    code = c;
    how = std::move(h);
  }));
  EXPECT_EQ(code, 128 + SIGKILL);
  EXPECT_EQ(how, "was killed by signal 9 (Killed)");
  EXPECT_EQ(ReadAll(out[0]), "");  // It never ran the program.
}

// The program runs once `started` returned, with no signal blocked and SIGPIPE not ignored, as
// the calling thread had them (the coordinator blocks SIGTERM and SIGINT; its metrics server
// ignores SIGPIPE).
TEST(StartChildTest, TheProgramRunsAfterStartedWithDefaultSignals) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigset_t old_mask;
  pthread_sigmask(SIG_BLOCK, &stop, &old_mask);
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction old_pipe;
  sigaction(SIGPIPE, &ignore, &old_pipe);
  int out[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  char state = '?';
  bool still_us = false;
  const absl::StatusOr<pid_t> pid = local_workers_internal::StartChild(
      {"/bin/sh", "-c", "exec grep -E '^Sig(Blk|Ign):' /proc/self/status"}, out[1], [&](pid_t pid) {
        // Until this returns the child waits (asleep), still this program.
        const absl::Time deadline = absl::Now() + absl::Seconds(30);
        while ((state = ProcessState(pid)) != 'S' && state != 'Z' && absl::Now() < deadline) {
          absl::SleepFor(absl::Milliseconds(1));
        }
        std::error_code error;
        still_us = std::filesystem::read_symlink(absl::StrCat("/proc/", pid, "/exe"), error) ==
                   std::filesystem::read_symlink("/proc/self/exe");
      });
  close(out[1]);
  sigaction(SIGPIPE, &old_pipe, nullptr);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ASSERT_TRUE(pid.ok()) << pid.status();
  EXPECT_EQ(state, 'S');
  EXPECT_TRUE(still_us);
  const std::string text = ReadAll(out[0]);
  int code = -1;
  EXPECT_TRUE(local_workers_internal::AwaitExit(*pid, /*wait=*/true,
                                                [&](int c, std::string) { code = c; }));
  EXPECT_EQ(code, 0) << text;
  std::istringstream lines(text);
  uint64_t blocked = ~0ull;
  uint64_t ignored = ~0ull;
  for (std::string name, mask; lines >> name >> mask;) {
    (name == "SigBlk:" ? blocked : ignored) = std::stoull(mask, nullptr, 16);
  }
  EXPECT_EQ(blocked & ((1ull << (SIGTERM - 1)) | (1ull << (SIGINT - 1))), 0u) << text;
  EXPECT_EQ(ignored & (1ull << (SIGPIPE - 1)), 0u) << text;
}

// The exit is reported while the pid is still the exited child's (a zombie): reaped first, the pid
// could be another process's by the time the manager cleared it from its slot.
TEST(AwaitExitTest, TheExitIsReportedBeforeThePidIsFreed) {
  const pid_t pid = fork();
  if (pid == 0) _exit(3);
  ASSERT_GT(pid, 0);
  bool held = false;
  int code = -1;
  std::string how;
  EXPECT_TRUE(local_workers_internal::AwaitExit(pid, /*wait=*/true, [&](int c, std::string h) {
    code = c;
    how = std::move(h);
    siginfo_t info = {};
    held = waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
  }));
  EXPECT_TRUE(held);
  EXPECT_EQ(code, 3);
  EXPECT_EQ(how, "exited with code 3");
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, WNOHANG), -1);  // Reaped once reported.
  EXPECT_EQ(errno, ECHILD);
}

TEST(AwaitExitTest, ARunningChildIsLeftRunning) {
  int hold[2];
  ASSERT_EQ(pipe2(hold, O_CLOEXEC), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    close(hold[1]);
    char byte;
    _exit(read(hold[0], &byte, 1) == 0 ? 0 : 1);  // Until the test closes its end.
  }
  ASSERT_GT(pid, 0);
  close(hold[0]);
  bool reported = false;
  EXPECT_FALSE(local_workers_internal::AwaitExit(pid, /*wait=*/false,
                                                 [&](int, std::string) { reported = true; }));
  EXPECT_FALSE(reported);
  close(hold[1]);
  int code = -1;
  EXPECT_TRUE(
      local_workers_internal::AwaitExit(pid, /*wait=*/true, [&](int c, std::string) { code = c; }));
  EXPECT_EQ(code, 0);
}

}  // namespace
}  // namespace mimo::coordinator
