// mimo-coordinator's command line: bad values of --gpu-workers and of the durations exit 2 with a
// message naming the flag, `--gpu-workers auto` asks the worker binary how many GPUs it can use,
// "--flag=" gives a flag the empty value ("--metrics-listen=": no metrics endpoint), and a bad
// database path or address is refused before any file is created.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/common/test_binaries.h"

namespace mimo::coordinator {
namespace {

using test_binaries::BinaryBesideUs;
using test_binaries::RunShell;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// Runs mimo-coordinator with `flags` (shell words); returns its exit code and its output.
std::pair<int, std::string> RunCoordinator(const std::string& flags) {
  const std::string db = absl::StrCat(::testing::TempDir(), "/flags-", getpid(), ".db");
  const auto result = RunShell(absl::StrCat(BinaryBesideUs("mimo-coordinator"),
                                            " --listen 127.0.0.1:0 --metrics-listen '' --db ", db,
                                            " ", flags, " 2>&1"));
  std::filesystem::remove(db);
  return result;
}

// A stand-in worker binary that prints `text` for --count-gpus.
std::string FakeWorker(const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/fake-worker-", getpid());
  std::ofstream(path) << "#!/bin/sh\necho '" << text << "'\n";
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  return path;
}

TEST(CoordinatorFlagsTest, GpuWorkersOutOfRangeExitsTwo) {
  for (const char* value : {"0", "65", "two"}) {
    const auto [code, out] = RunCoordinator(absl::StrCat("--gpu-workers ", value));
    EXPECT_EQ(code, 2) << out;
    EXPECT_THAT(out, HasSubstr(absl::StrCat("--gpu-workers: expected a number in [1, 64] or "
                                            "'auto', got '",
                                            value, "'")));
  }
}

TEST(CoordinatorFlagsTest, BadDurationsExitTwoNamingTheFlag) {
  for (const char* flag : {"--finished-job-ttl", "--join-timeout", "--heartbeat-timeout"}) {
    for (const char* value : {"0s", "-5m", "soon"}) {
      const auto [code, out] = RunCoordinator(absl::StrCat(flag, " ", value));
      EXPECT_EQ(code, 2) << out;
      EXPECT_THAT(out, HasSubstr(absl::StrCat(flag, ": expected a positive duration")));
    }
  }
}

TEST(CoordinatorFlagsTest, GpuWorkersAutoNeedsACountFromTheWorker) {
  const auto [code, out] =
      RunCoordinator(absl::StrCat("--gpu-workers auto --worker-binary ", FakeWorker("lots")));
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, HasSubstr("auto: could not count GPUs with"));
  EXPECT_THAT(out, HasSubstr("--count-gpus': lots"));
}

TEST(CoordinatorFlagsTest, GpuWorkersAutoWithNoGpuSaysSo) {
  const auto [code, out] =
      RunCoordinator(absl::StrCat("--gpu-workers auto --worker-binary ", FakeWorker("0")));
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, HasSubstr("sees no CUDA device"));
}

// Runs mimo-coordinator with `flags` (shell words) until it says that it serves (or exits), then
// stops it with SIGTERM; returns its exit code (-1 if it did not stop within 60 s) and its output
// up to the line saying that it serves, port numbers as "N" (what follows says how long the
// shutdown took).
std::pair<int, std::string> ServeAndStop(const std::string& flags) {
  const std::string db = absl::StrCat(::testing::TempDir(), "/serve-", getpid(), ".db");
  const std::string command = absl::StrCat("exec ", BinaryBesideUs("mimo-coordinator"),
                                           " --listen 127.0.0.1:0 --db ", db, " ", flags, " 2>&1");
  int out[2];
  if (pipe(out) != 0) return {-1, "pipe failed"};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    execl("/bin/sh", "sh", "-c", command.c_str(), nullptr);
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buffer[4096];
  bool signalled = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    pollfd fd = {out[0], POLLIN, 0};
    if (poll(&fd, 1, 100) <= 0) continue;
    const ssize_t n = read(out[0], buffer, sizeof(buffer));
    if (n <= 0) break;  // It exited.
    text.append(buffer, n);
    if (!signalled && text.find("serving on port") != std::string::npos &&
        text.find('\n', text.find("serving on port")) != std::string::npos) {
      kill(pid, SIGTERM);
      signalled = true;
    }
  }
  close(out[0]);
  if (absl::Now() >= deadline) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  for (const char* suffix : {"", "-wal", "-shm", ".lock"}) {
    std::filesystem::remove(absl::StrCat(db, suffix));
  }
  if (const size_t serving = text.find("serving on port"); serving != std::string::npos) {
    text.resize(text.find('\n', serving) + 1);
  }
  static const std::regex kPort("port [0-9]+");
  text = std::regex_replace(text, kPort, "port N");
  return {absl::Now() < deadline && WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

// "--metrics-listen=" (an empty value after '=') turns the metrics endpoint off as
// "--metrics-listen ''" does; CLI11 refused it ("1 required TEXT missing"), or took the next
// argument for the address.
TEST(CoordinatorFlagsTest, AnEmptyMetricsListenAfterEqualsServesNoMetrics) {
  const auto [code, out] = ServeAndStop("--metrics-listen=");
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("serving on port N (database "));
  EXPECT_THAT(out, Not(HasSubstr("metrics")));
  const auto [code_with_space, out_with_space] = ServeAndStop("--metrics-listen ''");
  EXPECT_EQ(code_with_space, 0);
  EXPECT_EQ(out_with_space, out);
  // Followed by other flags, which keep their own values.
  const auto [code_before, out_before] = ServeAndStop("--metrics-listen= --finished-job-ttl=");
  EXPECT_EQ(code_before, 0) << out_before;
  EXPECT_EQ(out_before, out);
  // An address given after '=' still serves metrics.
  const auto [code_served, out_served] = ServeAndStop("--metrics-listen=127.0.0.1:0");
  EXPECT_EQ(code_served, 0) << out_served;
  EXPECT_THAT(out_served, HasSubstr(", metrics on port N)"));
}

// Every flag with a value given as "--flag=" is "--flag ''": the same message and exit code.
TEST(CoordinatorFlagsTest, EveryFlagGivenEmptyAfterEqualsIsGivenEmpty) {
  for (const char* flag :
       {"--heartbeat-timeout", "--reattach-grace", "--cancel-grace", "--join-timeout",
        "--drain-grace", "--auth-token-file", "--tls-cert", "--tls-key", "--cpu-workers"}) {
    SCOPED_TRACE(flag);
    const auto [code, out] = RunCoordinator(absl::StrCat(flag, "="));
    const auto [code_with_space, out_with_space] = RunCoordinator(absl::StrCat(flag, " ''"));
    EXPECT_EQ(code, 2) << out;
    EXPECT_THAT(out, HasSubstr(flag));
    EXPECT_EQ(code, code_with_space);
    EXPECT_EQ(out, out_with_space);
  }
  const auto [code, out] = RunCoordinator("--cpu-workers 1 --worker-binary=");
  EXPECT_EQ(code, 1) << out;
  EXPECT_THAT(out, HasSubstr("local workers: cannot run : No such file"));
  EXPECT_EQ(RunCoordinator("--cpu-workers 1 --worker-binary ''").second, out);
  for (const char* flag : {"--finished-job-ttl", "--gpu-workers"}) {  // Empty: not set.
    SCOPED_TRACE(flag);
    const auto [served, served_out] = ServeAndStop(absl::StrCat("--metrics-listen '' ", flag, "="));
    EXPECT_EQ(served, 0) << served_out;
    EXPECT_EQ(served_out, ServeAndStop(absl::StrCat("--metrics-listen '' ", flag, " ''")).second);
  }
}

struct RunInFolder {
  int code = -1;
  std::string out;
  std::vector<std::string> left;  // What it left in its working folder.
};

// Runs mimo-coordinator with exactly `flags` (shell words) in a new empty working folder, which
// is removed after.
RunInFolder RunCoordinatorInEmptyFolder(const std::string& flags) {
  static int runs = 0;
  const std::filesystem::path folder =
      absl::StrCat(::testing::TempDir(), "/coordinator-cwd-", getpid(), "-", ++runs);
  std::filesystem::create_directories(folder);
  const std::string command = absl::StrCat("cd '", folder.string(), "' && ",
                                           BinaryBesideUs("mimo-coordinator"), " ", flags, " 2>&1");
  RunInFolder result;
  std::tie(result.code, result.out) = RunShell(command);
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    result.left.push_back(entry.path().filename().string());
  }
  std::filesystem::remove_all(folder);
  return result;
}

// An empty --db (or a folder) is refused as a usage error before the lock file is created: it
// left ".lock" in the working folder, then failed "JobStore needs a database path".
TEST(CoordinatorFlagsTest, ABadDatabasePathIsRefusedBeforeAnyFileIsCreated) {
  for (const char* db : {"--db ''", "--db="}) {
    SCOPED_TRACE(db);
    const RunInFolder run =
        RunCoordinatorInEmptyFolder(absl::StrCat("--listen 127.0.0.1:0 --metrics-listen '' ", db));
    EXPECT_EQ(run.code, 2) << run.out;
    EXPECT_THAT(run.out, StartsWith("--db: the database path is empty; give a file"));
    EXPECT_THAT(run.left, IsEmpty());
  }
  // A folder: its lock would be "<folder>.lock" beside it.
  const RunInFolder folder =
      RunCoordinatorInEmptyFolder("--listen 127.0.0.1:0 --metrics-listen '' --db .");
  EXPECT_EQ(folder.code, 2) << folder.out;
  EXPECT_THAT(folder.out,
              StartsWith("--db: '.' is a folder; give a file, e.g. ./mimo-coordinator.db"));
  EXPECT_THAT(folder.left, IsEmpty());
}

// A bad --listen or --metrics-listen is a usage error naming the flag, before the database is
// created; an empty --listen printed gRPC's raw log line ("chttp2_server.cc ... unparseable
// host:port") and 'cannot listen on  (address in use or invalid)'.
TEST(CoordinatorFlagsTest, ABadAddressIsRefusedNamingTheFlag) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--listen ''", "--listen: the address is empty; give HOST:PORT, e.g. 0.0.0.0:50051"},
      {"--listen=", "--listen: the address is empty; give HOST:PORT"},
      {"--listen localhost", "--listen: 'localhost' has no port"},
      {"--listen :50051", "--listen: ':50051' has no host"},
      {"--listen 127.0.0.1:65536",
       "--listen: '127.0.0.1:65536': the port must be a number in "
       "0-65535, got '65536'"},
      {"--listen ::1:0", "--listen: '::1:0': an IPv6 address goes in brackets"},
      {"--listen 'a b:0'", "--listen: 'a b:0': 'a b' is not a host name or IP address"},
      {"--metrics-listen 9464",
       "--metrics-listen: '9464' has no host; give :9464 or 0.0.0.0:9464 (every interface), or "
       "HOST:PORT"},
      {"--listen 50051",
       "--listen: '50051' has no host; give 0.0.0.0:50051 (every interface), or HOST:PORT"},
      {"--metrics-listen=localhost:x", "--metrics-listen: 'localhost:x': the port must be"},
  };
  for (const auto& [flags, message] : cases) {
    SCOPED_TRACE(flags);
    const RunInFolder run = RunCoordinatorInEmptyFolder(
        absl::StrCat("--db mimo.db --listen 127.0.0.1:0 --metrics-listen '' ", flags));
    EXPECT_EQ(run.code, 2) << run.out;
    EXPECT_THAT(run.out, StartsWith(message));
    EXPECT_THAT(run.out, Not(HasSubstr("chttp2")));
    EXPECT_THAT(run.left, IsEmpty());
  }
  // A host name still serves (port 0: any free one), and metrics on every interface as ':PORT'
  // (civetweb alone takes no empty host) or 0.0.0.0:PORT.
  for (const char* metrics : {"localhost:0", ":0", "0.0.0.0:0"}) {
    SCOPED_TRACE(metrics);
    const auto [code, out] = ServeAndStop(absl::StrCat("--metrics-listen ", metrics));
    EXPECT_EQ(code, 0) << out;
    EXPECT_THAT(out, HasSubstr(", metrics on port N)"));
  }
}

// Embedded mode's worker binary, and TLS with local workers, are refused before the database is
// created (they were checked once the server was serving).
TEST(CoordinatorFlagsTest, EmbeddedModeIsCheckedBeforeAnyFileIsCreated) {
  const RunInFolder run = RunCoordinatorInEmptyFolder(
      "--db mimo.db --listen 127.0.0.1:0 --metrics-listen '' --cpu-workers 1 --worker-binary "
      "./none");
  EXPECT_EQ(run.code, 1) << run.out;
  EXPECT_THAT(run.out, HasSubstr("local workers: cannot run ./none: No such file"));
  EXPECT_THAT(run.left, IsEmpty());
  // TLS with local workers (which reach it over loopback without TLS). The files need only
  // exist: they are not read.
  const std::string pem = absl::StrCat(::testing::TempDir(), "/tls-", getpid(), ".pem");
  std::ofstream(pem) << "not read\n";
  const RunInFolder tls = RunCoordinatorInEmptyFolder(absl::StrCat(
      "--db mimo.db --listen 127.0.0.1:0 --metrics-listen '' --cpu-workers 1 --tls-cert ", pem,
      " --tls-key ", pem));
  std::filesystem::remove(pem);
  EXPECT_EQ(tls.code, 1) << tls.out;
  EXPECT_THAT(tls.out, HasSubstr("local workers reach the coordinator over loopback without TLS"));
  EXPECT_THAT(tls.left, IsEmpty());
}

// A worker registers only from the pid the coordinator started for its slot, so a wrapper
// script given as --worker-binary must exec mimo-worker (not run it as its own child).
TEST(CoordinatorFlagsTest, HelpSaysAWorkerBinaryWrapperMustExec) {
  const auto [code, out] = RunCoordinator("--help");
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("a wrapper script must exec"));
}

// A number flag given an empty value is a usage error naming it (CLI11 alone read "" as 0; here
// the range said "Value  not in range 1 to 4096"). The durations are text, refused by their own
// check (EveryFlagGivenEmptyAfterEqualsIsGivenEmpty); an empty --gpu-workers or
// --finished-job-ttl is the flag's default.
TEST(CoordinatorFlagsTest, AnEmptyNumberIsAUsageError) {
  for (const char* empty : {"--cpu-workers ''", "--cpu-workers="}) {
    SCOPED_TRACE(empty);
    const auto [code, out] = RunCoordinator(empty);
    EXPECT_EQ(code, 2) << out;
    EXPECT_THAT(out, StartsWith("--cpu-workers: the value is empty; give an integer, or leave the "
                                "flag out for its default"));
  }
}

TEST(CoordinatorFlagsTest, CpuAndGpuWorkersExcludeEachOther) {
  const auto [code, out] = RunCoordinator("--cpu-workers 2 --gpu-workers 2");
  EXPECT_EQ(code, 2) << out;
  EXPECT_THAT(out, HasSubstr("excludes"));
}

}  // namespace
}  // namespace mimo::coordinator
